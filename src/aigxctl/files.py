"""Reading numeric CSV files with errors that point at the row and column, and writing any
file atomically (temporary file in the same folder, then rename), so that an interrupted or
failed command never leaves a half-written output behind.

CSV input is streamed with bounded memory (about 8 bytes per value) and refused, in one line,
beyond :data:`MAX_LINE_BYTES`, :data:`MAX_COLUMNS` or :data:`MAX_VALUES`. Outputs that are not
regular files (``/dev/null``, a FIFO) are written in place, ``/dev/stdout`` through the file
already open; a symbolic link is kept and the file it points to replaced; a replaced file keeps
its permission bits; temporary files a killed run left are removed by the next; write errors (a
full disk, an I/O error) become one line naming the file, with the old file intact.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import itertools
import os
import re
import secrets
import stat
import sys
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

from aigxctl.core import check_gains
from aigxctl.errors import InvalidGains, UserError

__all__ = [
    "MAX_COLUMNS",
    "MAX_LINE_BYTES",
    "MAX_VALUES",
    "TargetExists",
    "atomic_path",
    "atomic_write_text",
    "read_gains_csv",
    "read_matrix_csv",
    "source_name",
]

MAX_LINE_BYTES = 1 << 20
"""Longest CSV row, in bytes (a file without newlines, such as ``/dev/zero``, stops here)."""
MAX_COLUMNS = 1_000_000
"""Most columns a CSV row may have."""
MAX_VALUES = 1 << 28
"""Most numbers a CSV file may hold in all (2 GiB as float64)."""
_BLOCK_VALUES = 1 << 16  # numbers parsed into one float64 block before the next is started


def parse_number(field: str) -> float:
    """A CSV field as a number. Python's float() also takes digit grouping ("1_000"), which no
    CSV writer produces and which is more likely a damaged field: refused like any other."""
    if "_" in field:
        raise ValueError(field)
    return float(field)


def is_number(field: str) -> bool:
    try:
        parse_number(field)
    except ValueError:
        return False
    return True


def source_name(source: str | Path) -> str:
    """How messages name a CSV source: ``<stdin>`` for ``-``, else the path as given."""
    return "<stdin>" if str(source) == "-" else str(source)


def _text_lines(f: BinaryIO, name: str, row_bytes: list[int]) -> Iterator[str]:
    """The lines of ``f`` decoded as UTF-8, each read with a bounded ``readline`` so that a file
    with no newline cannot fill the memory. ``row_bytes[0]`` adds up the bytes since the caller
    last reset it, which bounds a row that quotes span over several lines too."""
    line_no = 0
    while raw := f.readline(MAX_LINE_BYTES + 1):
        line_no += 1
        if b"\0" in raw:  # /dev/zero, images, archives: never a CSV
            raise UserError(f"{name}: not a text CSV file (line {line_no} holds NUL bytes)")
        row_bytes[0] += len(raw)
        if row_bytes[0] > MAX_LINE_BYTES:
            raise UserError(
                f"{name}: line {line_no} is longer than the limit of {MAX_LINE_BYTES >> 20} MiB "
                "for one row (is it a text CSV file?)"
            )
        if line_no == 1:
            # Spreadsheet programs often start a CSV with a byte-order mark, which would
            # otherwise glue itself to the first field ("\ufeff1" is not a number).
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(
                f"{name}: not a text CSV file (line {line_no} is not UTF-8)"
            ) from None
        yield text


def _delimited(lines: Iterator[str]) -> tuple[Iterator[str], str]:
    """The lines again, and their delimiter: a comma, or a semicolon or tab where the first
    non-blank line has those and no comma (spreadsheets in many locales write them)."""
    first: list[str] = []
    for line in lines:
        first.append(line)
        if line.strip():
            break
    return itertools.chain(first, lines), delimiter_of(first[-1] if first else "")


def delimiter_of(line: str) -> str:
    """The delimiter of a CSV whose first non-blank line is ``line``: a comma, or ``;`` or a
    tab when the line has exactly one of those and no comma."""
    if "," in line:
        return ","
    found = [d for d in (";", "\t") if d in line]
    return found[0] if len(found) == 1 else ","


class _Columns:
    """The columns every row must have, fixed by the first non-blank row (and its fields when
    that row is a header), and the careful reading of the rows the fast path refused."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.width: int | None = None
        self.header: list[str] | None = None

    def row(self, raw: list[str], line_no: int) -> list[float] | None:
        """A row's numbers from its stripped fields; None for a blank line or the header."""
        fields = [f.strip() for f in raw]
        if not any(fields):
            return None  # blank line
        if self.width is None:
            if len(fields) > MAX_COLUMNS:
                raise UserError(
                    f"{self.name}: row {line_no} has {len(fields):,} columns, more than the "
                    f"limit of {MAX_COLUMNS:,}"
                )
            self.width = len(fields)
            if not any(is_number(f) for f in fields):
                self.header = fields
                return None
        if len(fields) != self.width:
            raise UserError(
                f"{self.name}: row {line_no} has {len(fields)} columns, expected {self.width} "
                "(every row must have the same number of columns)"
            )
        return _row_numbers(fields, self.name, line_no)


def _row_numbers(fields: list[str], name: str, line_no: int) -> list[float]:
    """The fields as numbers, or an error naming the row and column of the first that is not."""
    values = []
    for col, field in enumerate(fields, start=1):
        try:
            values.append(parse_number(field))
        except ValueError:
            shown = repr(field) if field else "an empty field"
            raise UserError(
                f"{name}: row {line_no}, column {col}: {shown} is not a number"
            ) from None
    return values


def _too_many_values(name: str, line_no: int) -> NoReturn:
    """Refuse a file holding more than :data:`MAX_VALUES` numbers, at the row that passes it."""
    raise UserError(
        f"{name}: more than the limit of {MAX_VALUES:,} numbers "
        f"({MAX_VALUES * 8 >> 30} GiB as float64) at row {line_no}; split the file"
    )


def _parse_csv(
    f: BinaryIO, name: str, what: str
) -> tuple[np.ndarray, array[int], list[str] | None]:
    # Rows go into float64 blocks as they are read, so the memory is the numbers' 8 bytes each
    # plus one block, never Python objects for the whole file. The loop is the hot path of
    # every CSV read: a plain row of numbers is parsed and stored inline, no helper call per row.
    row_bytes = [0]
    text, delimiter = _delimited(_text_lines(f, name, row_bytes))
    # strict: a quote left open at the end of the file is an error, not a field to the end.
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    columns = _Columns(name)
    blocks: list[np.ndarray] = []
    block = np.empty((0, 0))
    filled = total = 0
    lines: array[int] = array("q")  # the file line of each row, for later messages
    width = None
    line_no = 0
    try:
        for raw in reader:
            row_bytes[0] = 0
            if reader.line_num > line_no + 1:  # a quoted field went on past its line
                raise UserError(
                    f"{name}: row {line_no + 1}: a quote opened on this line is not closed on it"
                )
            line_no = reader.line_num
            values = None
            if len(raw) == width:
                with contextlib.suppress(ValueError):
                    values = list(map(float, raw))  # fast path: a plain row of numbers
                if values is not None and "_" in "".join(raw):
                    values = None  # digit grouping: the checked path below refuses it
            if values is None:
                values = columns.row(raw, line_no)
                if values is None:
                    continue  # a blank line or the header
                width = len(values)
            total += width
            if total > MAX_VALUES:
                _too_many_values(name, line_no)
            if filled == len(block):
                if filled:
                    blocks.append(block)
                block = np.empty((max(1, _BLOCK_VALUES // width), width))
                filled = 0
            block[filled] = values
            filled += 1
            lines.append(line_no)
    except csv.Error as exc:  # named at the line its row starts on (an open quote: the file's end)
        raise UserError(f"{name}: line {line_no + 1}: not a valid CSV row ({exc})") from None
    if not lines:
        raise UserError(f"{name}: no rows of {what} (the file is empty or has only a header)")
    assert width is not None
    blocks.append(block[:filled])
    return _stacked(blocks, len(lines), width), lines, columns.header


def _stacked(blocks: list[np.ndarray], rows: int, width: int) -> np.ndarray:
    """The blocks as one ``[rows, width]`` array, emptying ``blocks``."""
    data = np.empty((rows, width))
    # Copied block by block, each freed at once: the result's pages are touched only as they
    # are filled, so the peak stays near one copy of the numbers.
    blocks.reverse()
    start = 0
    while blocks:
        b = blocks.pop()
        data[start : start + len(b)] = b
        start += len(b)
    return data


@contextlib.contextmanager
def reading(name: str, what: str, missing: str | None = None) -> Iterator[None]:
    """Turn the OS errors of reading an input file (a ``what``) into one line naming it and
    why; ``missing`` replaces "no such WHAT"."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"{name}: {missing or 'no such ' + what}") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, expected a {what}") from None
    except OSError as exc:
        raise UserError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _read_csv(
    source: str | Path, what: str
) -> tuple[str, np.ndarray, array[int], list[str] | None]:
    """Parse a numeric CSV; returns (display name, float64 [rows, cols], file line of each row,
    the header's fields or None)."""
    name = source_name(source)
    with reading(name, "CSV file", missing="no such file"):
        if str(source) == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            if stdin is None:  # a text-only stand-in for stdin (no bytes underneath)
                stdin = io.BytesIO(sys.stdin.read().encode("utf-8"))
            return name, *_parse_csv(stdin, name, what)
        with open(source, "rb") as f:
            return name, *_parse_csv(f, name, what)


def read_matrix_csv(source: str | Path, *, what: str = "values") -> np.ndarray:
    """Read a CSV of numbers into float64 ``[rows, columns]``.

    One instance per row; an optional header row (every field non-numeric) is skipped; blank
    lines are ignored; ``-`` reads standard input. Rows and columns in error messages are
    1-based and count the file's lines as an editor shows them (header included).
    """
    return _read_csv(source, what)[1]


# Columns of a gains CSV's header: gains g1..gM; collect's labels p1..pM and sum_rate are read
# past, so its CSV flows into allocate and evaluate as it is.
_GAIN = re.compile(r"g(ain)?[ _]?\d+", re.IGNORECASE)
_LABEL = re.compile(r"(p(ower)?[ _]?\d+|sum[ _]rate)", re.IGNORECASE)


def gain_columns(header: list[str] | None, width: int, name: str) -> list[int]:
    """The 0-based columns that hold gains: all of them without a header, else the ``g*``
    columns in the order of their numbers (g1 first, wherever it is); a header naming anything
    else (it is not a gains file), or gains that are not g1..gM each once, is refused."""
    if header is None:
        return list(range(width))
    gains = [i for i, h in enumerate(header) if _GAIN.fullmatch(h)]
    others = [h for h in header if not _GAIN.fullmatch(h) and not _LABEL.fullmatch(h)]
    if others or not gains:
        listed = ", ".join(repr(h) for h in (others or header)[:3])
        raise UserError(
            f"{name}: the header names columns that are not gains ({listed}); a gains CSV "
            "has columns g1..gM (collect's p1..pM and sum_rate are skipped), or no header"
        )
    numbers = [int(re.search(r"\d+", header[i]).group()) for i in gains]
    if sorted(numbers) != list(range(1, len(gains) + 1)):
        listed = ", ".join(header[i] for i in gains[:6]) + (", ..." if len(gains) > 6 else "")
        raise UserError(
            f"{name}: the header's gain columns must be g1..g{len(gains)}, each once; got {listed}"
        )
    return [i for _, i in sorted(zip(numbers, gains, strict=True))]


def read_gains_csv(source: str | Path, float32: str | None = None) -> np.ndarray:
    """Read a gains CSV (one instance per row, M columns, or collect's CSV, whose g1..gM
    columns are taken) and check every gain is finite and >= 0 (and within float32's range
    for ``float32``, what computes in it: "the model"), naming the file, row and column of the
    first one that is not."""
    name, data, lines, header = _read_csv(source, "gains")
    columns = gain_columns(header, data.shape[1], name)
    if columns != list(range(data.shape[1])):
        data = np.ascontiguousarray(data[:, columns])
    try:
        check_gains(data, float32)
    except InvalidGains as exc:
        raise UserError(
            f"{name}: row {lines[exc.row]}, column {columns[exc.column] + 1}: {exc.value!r} is "
            f"not a valid gain ({exc.reason})"
        ) from None
    return data


class TargetExists(UserError):
    """``atomic_path(target, replace=False)`` found ``target`` already there (perhaps written
    meanwhile by another run); it was left as it was."""


@contextlib.contextmanager
def _write_errors(shown: Path) -> Iterator[None]:
    """A failed write (full disk, quota, I/O error, read-only file system) as one line."""
    try:
        yield
    except BrokenPipeError:
        raise  # the reader left (`| head`): the CLI exits quietly, as pipes expect
    except OSError as exc:
        raise UserError(f"{shown}: cannot write ({exc.strerror or exc})") from None


_FD_PATH = re.compile(r"/proc/(self|thread-self|\d+)/fd/(\d+)|/dev/fd/(\d+)")
_STD_PATHS = {"/dev/stdout": 1, "/dev/stderr": 2}


def _open_file_alias(path: Path) -> tuple[bool, int | None]:
    """Whether ``path`` (or a link it leads through) is a name under /proc or /dev/fd, such as
    /dev/stdout: the name of an already open file, and which of this process's file descriptors
    it is (None when another process's)."""
    p = os.path.abspath(path)
    for _ in range(40):  # the kernel gives up on longer chains of links too (ELOOP)
        if p in _STD_PATHS:
            return True, _STD_PATHS[p]
        m = _FD_PATH.fullmatch(p)
        if m:
            pid, fd = m.group(1), m.group(2) or m.group(3)
            own = pid in (None, "self", "thread-self") or int(pid) == os.getpid()
            return True, int(fd) if own else None
        if p.startswith(("/proc/", "/dev/fd/")):
            return True, None
        if not os.path.islink(p):
            return False, None
        p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
    return False, None


def _copy_to_fd(src: BinaryIO, fd: int) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout closed: None
        sys.stdout.flush()  # what Python buffered for fd 1 comes first
    with open(os.dup(fd), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)


def temp_name_pattern(name: str, suffixes: str = "tmp") -> re.Pattern[str]:
    """What aigxctl names the temporary files (and staging directories) it writes beside
    ``name``: ``.NAME.PID.XXXXXXXX.tmp``; group 1 is the writer's pid. ``suffixes``: a regex
    alternative of the endings."""
    return re.compile(rf"\.{re.escape(name)}\.(\d{{1,10}})\.[0-9a-f]{{8}}\.({suffixes})")


def pid_alive(pid: int) -> bool:
    """Whether the process that wrote a temporary file may still be writing it."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: another user's process, alive
        return True
    return True


def remove_stale_temps(real: Path) -> None:
    """Remove the temporary files an earlier, killed run left for this same target: only names
    of exactly the form ``_make_temp`` gives, whose process is gone."""
    pattern = temp_name_pattern(real.name)
    with contextlib.suppress(OSError), os.scandir(real.parent) as entries:
        for entry in entries:
            m = pattern.fullmatch(entry.name)
            if m and not pid_alive(int(m.group(1))) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _make_temp(real: Path, mode: int) -> Path:
    # The pid in the name tells a later run whether the writer is still alive (see above).
    for _ in range(100):
        tmp = real.parent / f".{real.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(real.parent))


def _fsync(path: Path) -> None:
    # Before the rename: a crash must not leave an empty file where the old one was, and some
    # file systems (NFS, quotas) report a full disk only here.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_new(tmp: Path, real: Path, shown: Path) -> None:
    """Give ``tmp`` the name ``real`` only if nothing has that name yet (no check-then-rename
    race with a second run)."""
    try:
        os.link(tmp, real)
    except FileExistsError:
        raise TargetExists(f"{shown} exists; pass --force to overwrite it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # A file system without hard links (FAT, some network mounts): check, then rename.
        # Racy, but the best such a file system allows.
        if os.path.lexists(real):
            raise TargetExists(f"{shown} exists; pass --force to overwrite it") from None
        os.replace(tmp, real)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(target: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a path to write ``target``'s new contents to.

    For a regular file (or a new name) that is a temporary file beside it, renamed over
    ``target`` on success and removed on any error, ``target`` left as it was; a replaced file
    keeps its permission bits. A symbolic link is kept: the file it points to is the one
    replaced. Something that is not a regular file (``/dev/null``, a FIFO, a terminal) is
    yielded itself, to be written in place. For ``/dev/stdout``, ``/dev/fd/N`` and the like the
    path is a spool whose contents go to that open file once complete. With ``replace=False``
    an existing ``target`` is never replaced, even one that appears while writing:
    :class:`TargetExists` is raised instead. Any OSError while writing becomes one UserError
    line ``target: cannot write (reason)``.
    """
    shown = Path(target)
    alias, fd = _open_file_alias(shown)
    if alias and not replace and os.path.exists(shown):
        raise TargetExists(f"{shown} exists")
    if fd is not None:
        # /dev/stdout and the like: reopening it by name would truncate the file the shell
        # opened (losing what `>>` appends to); the same open file is written instead, from a
        # spool in the temporary folder, once the output is complete.
        with _spooled_to_fd(shown, fd) as tmp:
            yield tmp
        return
    st = _existing_target(shown)
    if st is not None and not replace:
        raise TargetExists(f"{shown} exists")
    if (st is not None and not stat.S_ISREG(st.st_mode)) or alias:
        # A device, FIFO or socket has no contents to keep and cannot be renamed over (the
        # rename would put a regular file where /dev/null was); nor can another process's
        # open file.
        with _write_errors(shown):
            yield shown
        return
    with _renamed_into_place(shown, st, replace) as tmp:
        yield tmp


@contextlib.contextmanager
def _spooled_to_fd(shown: Path, fd: int) -> Iterator[Path]:
    """A private temporary file, copied to this process's open file ``fd`` once written."""
    spool = Path(tempfile.gettempdir()) / "aigxctl-spool"
    remove_stale_temps(spool)
    try:
        tmp = _make_temp(spool, 0o600)
    except OSError as exc:
        raise UserError(f"{shown}: cannot spool the output ({exc.strerror})") from None
    try:
        with _write_errors(shown):
            yield tmp
            with tmp.open("rb") as src:
                _copy_to_fd(src, fd)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _existing_target(shown: Path) -> os.stat_result | None:
    """What ``shown`` names now, links followed (None: nothing yet); refused when its folder is
    missing or it is a directory."""
    if not shown.parent.is_dir():
        raise UserError(f"{shown}: the folder {shown.parent} does not exist")
    try:
        st = os.stat(shown)  # follows links
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{shown}: cannot write there ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{shown}: is a directory, expected a file name to write")
    return st


@contextlib.contextmanager
def _renamed_into_place(shown: Path, st: os.stat_result | None, replace: bool) -> Iterator[Path]:
    """A temporary file beside the file ``shown`` names (links followed), given that name once
    written (over the file ``st`` describes, or only if the name is still free when not
    ``replace``) and removed on any error."""
    real = Path(os.path.realpath(shown))
    if not real.parent.is_dir():
        raise UserError(f"{shown}: links to {real}, in a folder that does not exist")
    remove_stale_temps(real)
    try:
        # Private while being written when it replaces a file (which may be a secret 0600 one);
        # a new file gets what a plain open() gives: 0666 less the umask.
        tmp = _make_temp(real, 0o600 if st is not None else 0o666)
    except OSError as exc:
        raise UserError(f"{shown}: cannot write there ({exc.strerror})") from None
    try:
        with _write_errors(shown):
            yield tmp
            if st is not None:
                _keep_owner_and_mode(tmp, st)
            _fsync(tmp)
            if replace:
                os.replace(tmp, real)
            else:
                _link_new(tmp, real, shown)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _keep_owner_and_mode(tmp: Path, st: os.stat_result) -> None:
    """Give the new file the owner (where allowed) and permission bits of the one it replaces."""
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        with contextlib.suppress(OSError):  # allowed to root only, mostly
            os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, stat.S_IMODE(st.st_mode))


def atomic_write_text(target: str | Path, text: str, *, replace: bool = True) -> None:
    """Write ``text`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target, replace=replace) as tmp:
        tmp.write_text(text, encoding="utf-8")
