"""Terminal output: Rich consoles (results on stdout, messages and summaries on stderr so stdout
stays pipeable), one-line errors, and the tables the commands print."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

__all__ = ["err", "error", "out", "table"]


def error(message: str) -> None:
    """Print one error line to stderr (never wrapped, markup in the message shown literally)."""
    err.print("[bold red]Error:[/] ", end="")
    err.print(message, markup=False, highlight=False)


def table(
    title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], **kwargs: Any
) -> Table:
    """A Rich table; numeric columns (all but the first) are right-aligned."""
    t = Table(title=title, **kwargs)
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*(str(v) for v in row))
    return t


def key_values(title: str, items: Mapping[str, Any]) -> Table:
    """A two-column table of names and values."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in items.items():
        t.add_row(k, str(v))
    return t
