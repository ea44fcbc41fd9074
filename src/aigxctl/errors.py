"""Errors that are the user's to fix (a bad file, a bad option).

The CLI prints them as one line and exits with code 2; everything else is a bug and keeps its
traceback. Library callers get ordinary ValueError subclasses.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the input or the options; the message alone tells the user what to fix."""


class InvalidGains(UserError):
    """A gain that is NaN, infinite or negative, located by 0-based row and column."""

    def __init__(self, row: int, column: int, value: float, reason: str) -> None:
        self.row, self.column, self.value, self.reason = row, column, value, reason
        super().__init__(f"gains[{row}, {column}] = {value!r}: {reason}")
