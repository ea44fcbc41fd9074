"""Reading numeric CSV files with errors that point at the row and column, and writing any
file atomically (temporary file in the same folder, then rename), so that an interrupted or
failed command never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from aigxctl.core import check_gains
from aigxctl.errors import InvalidGains, UserError

__all__ = ["atomic_path", "atomic_write_text", "read_gains_csv", "read_matrix_csv"]


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_csv(source: str | Path, what: str) -> tuple[str, np.ndarray, list[int]]:
    """Parse a numeric CSV; returns (display name, float64 [rows, cols], file line of each row)."""
    name = "<stdin>" if str(source) == "-" else str(source)
    try:
        # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark, which would
        # otherwise glue itself to the first field ("\ufeff1" is not a number).
        text = sys.stdin.read() if str(source) == "-" else Path(source).read_text("utf-8-sig")
        text = text.removeprefix("\ufeff")
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, expected a CSV file") from None
    except UnicodeDecodeError:
        raise UserError(f"{name}: not a text CSV file (it is not UTF-8)") from None
    except OSError as exc:
        raise UserError(f"{name}: cannot read ({exc.strerror})") from None

    rows: list[list[float]] = []
    lines: list[int] = []
    width = None
    for line_no, raw in enumerate(csv.reader(io.StringIO(text)), start=1):
        fields = [f.strip() for f in raw]
        if not any(fields):
            continue  # blank line
        if width is None and not any(_is_number(f) for f in fields):
            width = len(fields)  # header row
            continue
        if width is None:
            width = len(fields)
        if len(fields) != width:
            raise UserError(
                f"{name}: row {line_no} has {len(fields)} columns, expected {width} "
                "(every row must have the same number of columns)"
            )
        values = []
        for col, field in enumerate(fields, start=1):
            try:
                values.append(float(field))
            except ValueError:
                shown = repr(field) if field else "an empty field"
                raise UserError(
                    f"{name}: row {line_no}, column {col}: {shown} is not a number"
                ) from None
        rows.append(values)
        lines.append(line_no)
    if not rows:
        raise UserError(f"{name}: no rows of {what} (the file is empty or has only a header)")
    return name, np.asarray(rows, dtype=np.float64), lines


def read_matrix_csv(source: str | Path, *, what: str = "values") -> np.ndarray:
    """Read a CSV of numbers into float64 ``[rows, columns]``.

    One instance per row; an optional header row (every field non-numeric) is skipped; blank
    lines are ignored; ``-`` reads standard input. Rows and columns in error messages are
    1-based and count the file's lines as an editor shows them (header included).
    """
    return _read_csv(source, what)[1]


def read_gains_csv(source: str | Path) -> np.ndarray:
    """Read a gains CSV (one instance per row, M columns) and check every gain is finite and
    >= 0, naming the file, row and column of the first one that is not."""
    name, data, lines = _read_csv(source, "gains")
    try:
        check_gains(data)
    except InvalidGains as exc:
        raise UserError(
            f"{name}: row {lines[exc.row]}, column {exc.column + 1}: {exc.value!r} is not a "
            f"valid gain ({exc.reason})"
        ) from None
    return data


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed over ``target``, on
    any error it is removed and ``target`` is left as it was."""
    target = Path(target)
    if target.parent and not target.parent.exists():
        raise UserError(f"{target}: the folder {target.parent} does not exist")
    if target.is_dir():
        raise UserError(f"{target}: is a directory, expected a file name to write")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise UserError(f"{target}: cannot write there ({exc.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)
    try:
        yield tmp_path
        try:
            os.replace(tmp_path, target)
        except OSError as exc:
            raise UserError(f"{target}: cannot write there ({exc.strerror})") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
