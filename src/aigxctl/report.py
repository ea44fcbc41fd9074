"""Terminal output: Rich consoles (results on stdout, messages and summaries on stderr so stdout
stays pipeable), one-line errors, and the tables the commands print."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

__all__ = ["StepProgress", "duration", "err", "error", "out", "table"]


def error(message: str) -> None:
    """Print one error line to stderr (never wrapped, markup in the message shown literally)."""
    err.print("[bold red]Error:[/] ", end="")
    err.print(message, markup=False, highlight=False)


class FitTable(Table):
    """A table that never cuts a cell (a number shown as ``2.12e…`` is a wrong number): where
    the console is too narrow for it (80 columns, a pipe), each row is shown as a block of
    ``column: value`` lines instead."""

    def min_width_needed(self) -> int:
        """Numeric (right-aligned) and no-wrap columns as wide as their longest line, text
        columns as their longest word (text wraps, numbers must not), with padding, borders."""
        from rich.cells import cell_len

        need = len(self.columns) + 1
        for column in self.columns:
            cells = [str(c) for c in column.cells]
            if column.justify == "right" or column.no_wrap:
                pieces = [line for c in cells for line in c.splitlines()]
                column.min_width = max([cell_len(x) for x in pieces] or [0])  # never squeezed
            else:
                pieces = [w for c in cells for w in c.split()]
            words = str(column.header).split()
            need += max([cell_len(x) for x in pieces + words] or [0]) + 2
        return need

    def __rich_console__(self, console: Console, options: Any) -> Any:
        if self.min_width_needed() <= options.max_width:
            yield from super().__rich_console__(console, options)
            return
        from rich.text import Text

        if self.title:
            yield Text(str(self.title), style="bold")
        names = [str(c.header) for c in self.columns]
        cells = [list(c.cells) for c in self.columns]
        width = max(len(n) for n in names)
        for r in range(self.row_count):
            yield Text("")
            for name, column in zip(names, cells, strict=True):
                value = str(column[r]) if r < len(column) else ""
                for i, line in enumerate(value.splitlines()):
                    label = name.replace(chr(10), " ") if i == 0 else ""
                    yield Text(f"{label:>{width}}  {line}")


def table(
    title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], **kwargs: Any
) -> Table:
    """A Rich table; numeric columns (all but the first) are right-aligned; never cut."""
    t = FitTable(title=title, **kwargs)
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


def duration(seconds: float) -> str:
    """A wall time for people: 8 s, 2 min 05 s, 1 h 04 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def status_text(metrics: Mapping[str, Any]) -> str:
    """The training figures worth showing beside a step count."""
    parts = []
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.2e}")
    if "val_fraction" in metrics:
        parts.append(f"val {metrics['val_fraction']:.2%} of optimum")
    return "  ".join(parts)


class StepProgress:
    """Progress of a long job for a person: on a terminal, a Rich bar with the elapsed time and
    the ETA; elsewhere (a CI log, nohup, a scheduler) a plain line every ``every`` seconds and at
    the end, so a log shows the job is alive; nothing when ``quiet``. Drawn from the first
    update on, so an early error is the only thing printed."""

    def __init__(self, what: str, total: int, *, every: float = 10.0, quiet: bool = False,
                 console: Console | None = None) -> None:  # fmt: skip
        self.what, self.total, self.every, self.quiet = what, max(1, total), every, quiet
        self.console = console or err
        self.start = time.monotonic()
        self.last_line = self.start
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def line(self, done: int, status: str = "") -> str:
        """The plain progress line: what, step k/n (%), elapsed, ETA, status."""
        elapsed = time.monotonic() - self.start
        text = (f"{self.what}: {done:,}/{self.total:,} ({done / self.total:.0%}), "
                f"{duration(elapsed)} elapsed")  # fmt: skip
        if 0 < done < self.total:
            text += f", ETA {duration(elapsed / done * (self.total - done))}"
        return text + (f", {status}" if status else "")

    def update(self, done: int, metrics: Mapping[str, Any] | None = None) -> None:
        if self.quiet:
            return
        status = status_text(metrics or {})
        if self.console.is_terminal:
            self._draw(done, status)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every or done >= self.total:
            self.last_line = now
            self.console.print(self.line(done, status), markup=False, highlight=False,
                               soft_wrap=True)  # fmt: skip

    def _draw(self, done: int, status: str) -> None:
        if self.bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), "ETA",
                                TimeRemainingColumn(), "{task.fields[status]}",
                                console=self.console)  # fmt: skip
            self.task = self.bar.add_task(self.what, total=self.total, status="")
            self.bar.start()
        self.bar.update(self.task, completed=done, status=status)


class StageStatus:
    """One status line for a job made of stages (the cycle): live on a terminal; elsewhere
    printed at each new stage and every ``every`` seconds within one, so a log shows what runs,
    how far it is, the stage's ETA and the job's elapsed time; nothing when ``quiet``."""

    def __init__(self, *, every: float = 10.0, quiet: bool = False,
                 console: Console | None = None) -> None:  # fmt: skip
        self.every, self.quiet = every, quiet
        self.console = console or err
        self.stage = ""
        self.stage_start = self.last_line = time.monotonic()
        self.live: Any = None

    def __enter__(self) -> StageStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def text(self, stage: str, status: Mapping[str, Any]) -> str:
        now = time.monotonic()
        parts = [stage]
        step, steps = status.get("step"), status.get("steps")
        if step is not None and steps:
            part = f"{step:,}/{steps:,} ({step / steps:.0%})"
            if 0 < step < steps:
                part += f", ETA {duration((now - self.stage_start) / step * (steps - step))}"
            parts.append(part)
        figures = status_text(status)
        if figures:
            parts.append(figures)
        if "detail" in status:
            parts.append(str(status["detail"]))
        if "elapsed" in status:
            parts.append(f"{duration(status['elapsed'])} elapsed in all")
        return ", ".join(parts)

    def update(self, stage: str, status: Mapping[str, Any]) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        new = stage != self.stage
        if new:
            self.stage, self.stage_start = stage, now
        line = self.text(stage, status)
        if self.console.is_terminal:
            if self.live is None:
                from rich.live import Live

                self.live = Live(console=self.console, refresh_per_second=4, transient=True)
                self.live.start()
            self.live.update(line)
        elif new or now - self.last_line >= self.every:
            self.last_line = now
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
