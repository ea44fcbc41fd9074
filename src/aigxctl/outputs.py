"""Output directories aigxctl writes as a whole (a model checkpoint): which files in one are
aigxctl's, the --force rule, and the swap that replaces one without ever losing the old one.

A directory is built beside its target under a name that carries the writer's pid
(``.NAME.PID.XXXXXXXX.tmp``) and swapped into place when complete, so the old one stays whole
until the new one is. Nothing that aigxctl did not write is deleted or moved: a directory that
holds anything else is refused, and a staging directory left behind by a killed process is
emptied of aigxctl's own files only.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from aigxctl import files
from aigxctl.errors import UserError

__all__ = ["Layout", "claim_dir", "commit_dir", "discard", "new_staging_dir", "remove_own"]

# What aigxctl writes in a directory: a file name -> None, or a subdirectory name -> the glob
# patterns of the files aigxctl writes in it (a pattern ending in "/" names directories, whose
# contents their own writers check).
Layout = Mapping[str, "tuple[str, ...] | None"]


def _is_ours(path: Path, layout: Layout, marker: tuple[str, str] | None) -> list[str]:
    """Entries of ``path`` that aigxctl did not write (empty when every one is its own)."""
    foreign = []
    for entry in sorted(path.iterdir()):
        kind = layout.get(entry.name, "missing")
        if kind == "missing" or entry.is_symlink():
            foreign.append(entry.name)
        elif kind is None:
            if not entry.is_file():
                foreign.append(entry.name)
        elif not entry.is_dir():
            foreign.append(entry.name)
        else:
            foreign += [f"{entry.name}/{f.name}" for f in sorted(entry.iterdir())
                        if not _matches(f, kind)]  # fmt: skip
    if marker is not None and (path / marker[0]).is_file() and not _has_format(path / marker[0],
                                                                               marker[1]):
        foreign.append(marker[0])
    return foreign


def _matches(entry: Path, patterns: tuple[str, ...]) -> bool:
    """Whether a file (or, for a pattern ending in "/", a directory) is named by ``patterns``."""
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return any(fnmatch.fnmatch(entry.name + "/", p) for p in patterns if p.endswith("/"))
    return entry.is_file() and any(fnmatch.fnmatch(entry.name, p) for p in patterns)


def _has_format(path: Path, fmt: str) -> bool:
    try:
        if path.stat().st_size > 1 << 24:
            return False
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("format") == fmt


def remove_own(path: Path, layout: Layout) -> bool:
    """Delete what aigxctl wrote in ``path`` (per ``layout``), then the directory if that left
    it empty. Returns whether the directory is gone; anything else in it stays."""
    for entry in list(path.iterdir()) if path.is_dir() else []:
        kind = layout.get(entry.name, "missing")
        if kind == "missing" or entry.is_symlink():
            continue
        if kind is None and entry.is_file():
            entry.unlink()
        elif kind is not None and entry.is_dir():
            for f in entry.iterdir():
                if f.is_file() and _matches(f, kind):
                    f.unlink()
            with contextlib.suppress(OSError):
                entry.rmdir()
    try:
        path.rmdir()
    except OSError:
        return False
    return True


def clean_stale(path: Path, layout: Layout) -> None:
    """Remove the staging directories of ``path`` whose writer is gone (killed, say)."""
    pattern = files.temp_name_pattern(path.name, "tmp|old")
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            pid = int(match.group(1)) if match else os.getpid()
            if entry.is_dir() and not entry.is_symlink() and not files.pid_alive(pid):
                remove_own(entry, layout)


def claim_dir(
    out: str | Path,
    layout: Layout,
    *,
    force: bool,
    what: str,
    marker: tuple[str, str] | None = None,
    resume: bool = False,
) -> Path:
    """Check that aigxctl may write the directory ``out`` and return its real path (a symlink's
    target, so the link is kept).

    Absent or empty: yes. Holding anything aigxctl did not write (``layout``; ``marker`` names
    a JSON file that must carry that ``format``): never. Holding a previous ``what`` of
    aigxctl's: only with ``force`` (or ``resume``, which continues it). Stale staging
    directories of killed runs are cleaned up on the way.
    """
    shown = str(out)
    path = Path(os.path.realpath(out))
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise UserError(
            f"{shown}: is the current directory or one above it; give --out a directory of "
            f"its own (aigxctl writes a whole {what} there)"
        )
    if path.exists() and not path.is_dir():
        raise UserError(f"{shown}: is a file, expected a directory for the {what}")
    if not path.parent.is_dir():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{path.parent}: cannot create the folder ({exc.strerror})") from None
    clean_stale(path, layout)
    if not path.exists() or not any(path.iterdir()):
        return path
    foreign = _is_ours(path, layout, marker)
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                           else "")  # fmt: skip
        raise UserError(
            f"{shown}: holds files aigxctl did not write ({listed}); aigxctl never replaces "
            "them: choose another --out"
        )
    if not (force or resume):
        raise UserError(f"{shown}: exists and holds a {what}; pass --force to replace it")
    return path


def new_staging_dir(path: Path) -> Path:
    """An empty directory beside ``path`` to build its replacement in (mkdir permissions)."""
    staging = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        staging.mkdir()
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot write there ({exc.strerror})") from None
    return staging


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where that is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def commit_dir(staging: Path, path: Path, layout: Layout) -> None:
    """Put the complete ``staging`` directory at ``path``. A previous directory there (already
    checked by :func:`claim_dir`) is swapped out in one step where the system can, else renamed
    aside first; then its own files are deleted."""
    if not path.exists():
        os.rename(staging, path)  # also replaces an empty directory
        return
    if not any(path.iterdir()):
        os.rename(staging, path)
        return
    if _exchange(staging, path):
        old = staging
    else:
        old = staging.with_name(staging.name[: -len(".tmp")] + ".old")
        os.rename(path, old)
        os.rename(staging, path)
    remove_own(old, layout)


def discard(staging: Path, layout: Layout) -> None:
    """Remove a staging directory that will not be committed (its own files only)."""
    with contextlib.suppress(OSError):
        remove_own(staging, layout)
