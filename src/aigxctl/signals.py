"""SIGTERM and SIGHUP handled like Ctrl-C, so that ``kill``, a closed terminal or a job
scheduler's stop unwinds the same way: ``finally`` blocks and context managers run (temporary
files are removed, checkpoints saved) and the CLI exits with 128 + the signal number.

Usage (the CLI's ``user_errors`` does this for every command)::

    from aigxctl import signals

    try:
        with signals.as_interrupt():
            long_running_work()
    except KeyboardInterrupt as exc:  # Ctrl-C, or signals.Interrupted for SIGTERM/SIGHUP
        cleanup()
        sys.exit(signals.exit_code(exc))  # 130, 143 or 129
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["HANDLED", "Interrupted", "StopRequest", "as_interrupt", "exit_code", "signal_name"]

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A SIGTERM or SIGHUP turned into an exception; ``signum`` says which. A subclass of
    KeyboardInterrupt, so every ``except KeyboardInterrupt`` handles it like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_code(exc: BaseException) -> int:
    """The conventional exit status for an interruption: 128 + the signal number (130 for a
    plain KeyboardInterrupt, which is SIGINT)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def signal_name(exc: BaseException) -> str:
    """``SIGTERM``, ``SIGHUP`` or ``SIGINT`` for an interruption, for messages."""
    return signal.Signals(exit_code(exc) - 128).name


@contextlib.contextmanager
def as_interrupt(signums: tuple[int, ...] = HANDLED) -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread.

    The first such signal raises; later ones are ignored until the block exits, so the cleanup
    the first one started is not cut short (SIGKILL still stops everything). A signal that was
    ignored when the block began (``nohup`` ignores SIGHUP) stays ignored. The previous
    handlers are restored on exit. In any thread but the main one (where Python cannot install
    handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Interrupted(signum)

    previous: dict[int, object] = {}
    for signum in signums:
        if signal.getsignal(signum) == signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            # None: a handler set outside Python, which cannot be put back; the default is
            # the closest.
            signal.signal(signum, signal.SIG_DFL if old is None else old)  # type: ignore[arg-type]


class StopRequest:
    """Within ``with StopRequest() as stop:``, SIGINT, SIGTERM and SIGHUP only record themselves
    in ``stop.signum``, so a loop can finish the step it is in and stop at a clean point (a
    training step cut in half would leave weights, optimizer and random state out of step).

    ``hard=True``: a second signal raises :class:`Interrupted` at once, for a user who does not
    want to wait. ``forward(signum)`` is called on the first signal (a parent passes it on to
    its workers). Main thread only; elsewhere it records nothing and changes no handler.
    """

    def __init__(self, *, hard: bool = True, forward: Callable[[int], None] | None = None):
        self.signum: int | None = None
        self.hard = hard
        self.forward = forward
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = int(signum)
            if self.forward is not None:
                self.forward(signum)
        elif self.hard:
            raise Interrupted(signum)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, *HANDLED):
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, old in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)
        self._previous.clear()
