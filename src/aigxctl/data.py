"""Datasets: channel gains labelled with their exact water-filling allocation (the expert).

A dataset file is an ``.npz`` (a zip of ``.npy`` files, stored uncompressed) with

* ``gains``    [N, M] float64, the channel power gains;
* ``power``    [N, M] float64, the expert allocation in watts, each row adding up to P;
* ``sum_rate`` [N] float64, its sum rate in bits/s/Hz;
* ``meta``     a 0-d string array holding JSON: format, version, the scenario, seed, P,
  sigma^2, N, M, the aigxctl and NumPy versions and the creation time.

:func:`collect_to_file` streams: each chunk of rows is drawn, solved by the core and written at
once (the gains straight into the zip, power and sum rate through two unnamed temporary files
that are appended when the gains are done), so ten million samples need no more memory than one
chunk. The file appears under its name only when complete (:func:`aigxctl.files.atomic_path`).
:func:`load` reads with ``allow_pickle=False`` and checks everything a later command relies on.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import io
import json
import math
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from aigxctl import core
from aigxctl.errors import UserError
from aigxctl.files import TargetExists, atomic_path
from aigxctl.scenarios import CHUNK_ROWS, MAX_CHANNELS, SCALE_RANGE, Scenario, draw_chunks

__all__ = [
    "FORMAT",
    "VERSION",
    "Dataset",
    "collect",
    "collect_to_file",
    "load",
    "read_gains",
    "save",
]

FORMAT = "aigxctl-dataset"
VERSION = 1
ARRAYS = ("gains", "power", "sum_rate")
_F8 = np.dtype("<f8")  # the files' dtype whatever the machine's byte order
# Loading holds the whole dataset in memory: refuse files whose arrays would take more (50 M
# samples at M = 20). Checked on the .npy headers, before any data is read.
MAX_DATASET_BYTES = 1 << 34
# aigxctl writes datasets uncompressed; a compressed member (np.savez_compressed) may unpack to
# at most this many times its size (float gains pack to ~1x), so a zip bomb is refused unread.
MAX_EXPANSION = 100
# Characters of the metadata JSON: a scenario from the largest scenario file fits ~3 times.
MAX_META_CHARS = 1 << 22


@dataclass
class Dataset:
    """Gains, expert powers, their sum rates and the metadata of one dataset."""

    gains: np.ndarray
    power: np.ndarray
    sum_rate: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def total_power(self) -> float:
        return float(self.meta["total_power"])

    @property
    def noise(self) -> float:
        return float(self.meta["noise"])

    @property
    def m(self) -> int:
        return int(self.gains.shape[1])

    @property
    def n(self) -> int:
        return int(self.gains.shape[0])

    @property
    def scenario_name(self) -> str | None:
        """The name of the scenario the gains were drawn from, or None when the metadata does
        not say (a hand-made dataset, or one whose ``scenario`` is not a table with a name)."""
        scenario = self.meta.get("scenario")
        name = scenario.get("name") if isinstance(scenario, dict) else None
        return name if isinstance(name, str) else None


def _meta(scenario: Scenario, samples: int, seed: int) -> dict[str, Any]:
    from aigxctl import __version__

    return {
        "format": FORMAT,
        "version": VERSION,
        "scenario": scenario.to_dict(),
        "seed": int(seed),
        "total_power": scenario.total_power,
        "noise": scenario.noise,
        "samples": int(samples),
        "channels": scenario.m,
        "aigxctl_version": __version__,
        # NumPy keeps a Generator's streams stable in practice but does not promise it across
        # versions: recorded so that a seed's draws can be reproduced exactly.
        "numpy_version": np.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _ahead(items: Iterable[Any]) -> Iterator[Any]:
    """``items`` with the next one made in a helper thread while the caller uses this one.
    NumPy's random fills, the core and file writes all release the GIL, so drawing chunk i+1
    overlaps solving and writing chunk i. One ``next`` at a time, so the order is kept."""
    it = iter(items)
    done = object()
    with ThreadPoolExecutor(1, thread_name_prefix="aigxctl-draw") as pool:
        future = pool.submit(next, it, done)
        while (item := future.result()) is not done:
            future = pool.submit(next, it, done)
            yield item


def _labelled(
    scenario: Scenario, samples: int, seed: int, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(gains, expert power, sum rate) chunk by chunk."""
    if samples < 1:
        raise UserError(f"samples must be >= 1, got {samples}")
    for gains in _ahead(draw_chunks(scenario, samples, seed, chunk)):
        power = core.waterfill(gains, scenario.total_power, scenario.noise)
        yield gains, power, core.sum_rate(gains, power, scenario.noise)


def _equal_rate_sum(gains: np.ndarray, total_power: float, noise: float) -> float:
    """Sum over rows of the equal split's sum rate. It only feeds a summary line, so it takes
    one log per row: log2 of the product of (1 + g P / (M sigma^2)), which is exact to rounding
    while the product stays finite (rates below ~1000 bit/s/Hz), and the core otherwise."""
    f = gains * (total_power / (gains.shape[1] * noise))
    f += 1.0
    with np.errstate(over="ignore"):  # overflow is detected below and handled
        prod = f.prod(axis=1)
    if np.isfinite(prod).all():
        return float(np.log2(prod).sum())
    equal = np.full_like(gains, total_power / gains.shape[1])
    return float(core.sum_rate(gains, equal, noise).sum())


def collect(
    scenario: Scenario,
    samples: int,
    seed: int,
    total_power: float | None = None,
    chunk: int = CHUNK_ROWS,
) -> Dataset:
    """Draw ``samples`` gain vectors and label them, in memory (small N, tests, benchmarks).

    The arrays equal those :func:`collect_to_file` writes for the same arguments, whatever
    ``chunk`` (rows solved at a time) is.
    """
    if samples < 1:
        raise UserError(f"samples must be >= 1, got {samples}")
    if total_power is not None:
        scenario = scenario.with_power(total_power)
    gains = np.empty((samples, scenario.m))
    power = np.empty_like(gains)
    rate = np.empty(samples)
    done = 0
    for g, p, r in _labelled(scenario, samples, seed, chunk):
        rows = slice(done, done + len(g))
        gains[rows], power[rows], rate[rows] = g, p, r
        done += len(g)
    return Dataset(gains, power, rate, _meta(scenario, samples, seed))


def _npy_header(f: BinaryIO, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(_F8), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)


def _raw(a: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(a, dtype=_F8)).cast("B")


def _meta_npy(meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(meta)), allow_pickle=False)
    return buf.getvalue()


class _Stream:
    """Only ``write``: zipfile then writes a stream (sizes after each entry), which a FIFO or a
    device needs; given /dev/null itself it would seek, and fail on the offsets it reads."""

    def __init__(self, f: BinaryIO) -> None:
        self.write, self.flush = f.write, f.flush


def _write_npz(
    target: Path, labelled: Iterator[tuple[np.ndarray, ...]], shape: tuple[int, int],
    meta: dict[str, Any], on_chunk: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
) -> None:  # fmt: skip
    """Stream the arrays into ``target``. A zip entry must be written in one go, so the gains
    go straight into theirs while power and sum rate wait in unnamed temporary files (beside the
    target: same disk, and nothing left behind even if the process is killed)."""
    n, m = shape
    regular = target.is_file()
    with contextlib.ExitStack() as stack:
        if regular:
            zf = stack.enter_context(
                zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True)
            )
        else:  # a FIFO or device written in place: a stream, with no seeking back
            stream = stack.enter_context(target.open("wb"))
            zf = stack.enter_context(
                zipfile.ZipFile(_Stream(stream), "w", zipfile.ZIP_STORED, allowZip64=True)
            )
        # Not beside /dev/null or a FIFO: in the system's temporary folder then.
        spill = target.parent if regular else None
        power_f = stack.enter_context(tempfile.TemporaryFile(dir=spill))
        rate_f = stack.enter_context(tempfile.TemporaryFile(dir=spill))
        _npy_header(power_f, (n, m))
        _npy_header(rate_f, (n,))
        with (
            zf.open("gains.npy", "w", force_zip64=True) as gains_f,
            ThreadPoolExecutor(1, thread_name_prefix="aigxctl-write") as writer,
        ):
            _npy_header(gains_f, (n, m))

            def write(gains: np.ndarray, power: np.ndarray, rate: np.ndarray) -> None:
                gains_f.write(_raw(gains))
                power_f.write(_raw(power))
                rate_f.write(_raw(rate))

            # Writes run in one helper thread (in order) while the next chunk is solved; at
            # most one chunk waits, which bounds the memory.
            pending: collections.deque[Any] = collections.deque()
            for gains, power, rate in labelled:
                pending.append(writer.submit(write, gains, power, rate))
                on_chunk(gains, power, rate)
                while len(pending) > 1 or (pending and pending[0].done()):
                    pending.popleft().result()  # re-raises a failed write here
            while pending:
                pending.popleft().result()
        for name, f in (("power", power_f), ("sum_rate", rate_f)):
            f.seek(0)
            with zf.open(f"{name}.npy", "w", force_zip64=True) as dst:
                shutil.copyfileobj(f, dst, 1 << 22)
        zf.writestr("meta.npy", _meta_npy(meta))


def _write_csv(
    target: Path, labelled: Iterator[tuple[np.ndarray, ...]], m: int,
    on_chunk: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
) -> None:  # fmt: skip
    header = [*(f"g{i}" for i in range(1, m + 1)), *(f"p{i}" for i in range(1, m + 1)), "sum_rate"]
    f: TextIO
    with target.open("w", encoding="utf-8", newline="") as f:
        f.write(",".join(header) + "\n")
        for gains, power, rate in labelled:
            # 17 significant digits: the CSV holds the same float64 values as the .npz.
            np.savetxt(f, np.column_stack([gains, power, rate]), fmt="%.17g", delimiter=",")
            on_chunk(gains, power, rate)


def _check_room(out: Path, size: int) -> None:
    """Refuse at once a dataset that cannot fit on its disk (a typo in --samples would fill it
    first), unless the output is a device or FIFO, which keeps nothing."""
    if out.exists() and not out.is_file():
        return
    try:
        free = shutil.disk_usage(out.parent if str(out.parent) else ".").free
    except OSError:
        return  # the write itself will say what is wrong
    if size > free and size > 1 << 30:  # small ones meet the full disk as any write would
        raise UserError(
            f"{out}: needs about {size / 2**30:,.1f} GiB and its disk has {free / 2**30:,.1f} "
            "GiB free; ask for fewer --samples"
        )


def collect_to_file(
    scenario: Scenario,
    samples: int,
    seed: int,
    out: str | Path,
    *,
    total_power: float | None = None,
    progress: Callable[[int], None] | None = None,
    csv: bool | None = False,
    chunk: int = CHUNK_ROWS,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Draw, label and write a dataset chunk by chunk; ``progress(rows_done)`` after each chunk.

    With ``csv`` (None: when ``out`` ends in .csv) the file is a CSV (header
    ``g1..gM,p1..pM,sum_rate``, one sample per row) for spreadsheets and MATLAB. An existing
    ``out`` is replaced; with ``overwrite=False`` it is not, even one that appears while this
    runs (:class:`aigxctl.files.TargetExists`). Returns
    the metadata plus the mean sum rates of the expert and of the equal split. Write errors (a
    full disk) are one UserError line naming ``out``.
    """
    if samples < 1:
        raise UserError(f"samples must be >= 1, got {samples}")
    if total_power is not None:
        core.check_level("total power", total_power)
        scenario = scenario.with_power(total_power)
    core.check_level("total power", scenario.total_power)
    core.check_level("noise power", scenario.noise)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory, expected a file name")
    if not overwrite and out.exists():  # checked again as the file gets its name
        raise TargetExists(f"{out} exists; pass --force to overwrite it")
    if csv is None:
        csv = out.suffix.lower() == ".csv"
    _check_room(out, samples * (2 * scenario.m + 1) * (25 if csv else 8))
    meta = _meta(scenario, samples, seed)
    sums = {"expert": 0.0, "equal": 0.0, "done": 0}

    def on_chunk(gains: np.ndarray, power: np.ndarray, rate: np.ndarray) -> None:
        sums["expert"] += float(rate.sum())
        sums["equal"] += _equal_rate_sum(gains, scenario.total_power, scenario.noise)
        sums["done"] += len(gains)
        if progress is not None:
            progress(int(sums["done"]))

    labelled = _labelled(scenario, samples, seed, chunk)
    with atomic_path(out, replace=overwrite) as target:
        if csv:
            _write_csv(target, labelled, scenario.m, on_chunk)
        else:
            _write_npz(target, labelled, (samples, scenario.m), meta, on_chunk)
    return {
        **meta,
        "expert_rate": sums["expert"] / samples,
        "equal_rate": sums["equal"] / samples,
    }


def save(dataset: Dataset, out: str | Path) -> None:
    """Write an in-memory dataset atomically (same layout as :func:`collect_to_file`)."""
    with atomic_path(out) as target, target.open("wb") as f:
        np.savez(
            f,
            gains=dataset.gains,
            power=dataset.power,
            sum_rate=dataset.sum_rate,
            meta=np.array(json.dumps(dataset.meta)),
        )


def _member_header(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive_bytes: int, name: str, key: str
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one ``.npy`` member from its header alone, after checking that the
    member's declared size is possible and agrees with the header. Nothing else is read."""
    if info.header_offset + info.compress_size > archive_bytes:
        raise UserError(f"{name}: {key} runs past the end of the file (a truncated download?)")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise UserError(f"{name}: {key} declares {info.file_size:,} bytes but stores "
                            f"{info.compress_size:,}")  # fmt: skip
    elif info.file_size > MAX_EXPANSION * info.compress_size + (1 << 20):
        raise UserError(
            f"{name}: {key} unpacks to {info.file_size:,} bytes from {info.compress_size:,} "
            f"(more than {MAX_EXPANSION}-fold: not a dataset, aigxctl writes them uncompressed)"
        )
    if info.file_size > MAX_DATASET_BYTES:
        raise UserError(
            f"{name}: {key} is {info.file_size / 2**30:.1f} GiB, more than this aigxctl loads "
            f"({MAX_DATASET_BYTES >> 30} GiB)"
        )
    with zf.open(info) as f:
        # Fortran or C order (the header's middle field) read back alike, in the same bytes.
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # 3.0 only adds UTF-8 field names, which no array of a dataset has
            raise UserError(f"{name}: {key} is an .npy of version {version}, expected 1.0 or 2.0")
        header = f.tell()
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise UserError(f"{name}: {key} must be a plain array, got dtype {dtype}")
    if header + math.prod(shape) * dtype.itemsize != info.file_size:
        raise UserError(
            f"{name}: {key} has shape {shape} of {dtype} but holds "
            f"{info.file_size - header:,} bytes of data"
        )
    return shape, dtype


def _check_headers(name: str, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """The arrays' shapes and dtypes against each other and the limits, before any is read."""
    for key in ARRAYS:
        dtype = headers[key][1]
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise UserError(f"{name}: {key} must hold floats (float32 or float64), got {dtype}")
    gains, power, rate = (headers[k][0] for k in ARRAYS)
    if len(gains) != 2 or gains[0] == 0 or gains[1] == 0:
        raise UserError(f"{name}: gains must be a non-empty [N, M] array, got {gains}")
    if gains[1] > MAX_CHANNELS:
        raise UserError(f"{name}: gains have {gains[1]:,} channels, more than {MAX_CHANNELS:,}")
    if power != gains or rate != gains[:1]:
        raise UserError(f"{name}: shapes disagree: gains {gains}, power {power}, sum_rate {rate}")
    total = sum(math.prod(headers[k][0]) * headers[k][1].itemsize for k in ARRAYS)
    if total > MAX_DATASET_BYTES:
        raise UserError(
            f"{name}: its arrays take {total / 2**30:.1f} GiB, more than this aigxctl loads "
            f"({MAX_DATASET_BYTES >> 30} GiB)"
        )
    meta_shape, meta_dtype = headers["meta"]
    if meta_shape != () or meta_dtype.kind != "U":
        raise UserError(f"{name}: its metadata is not a JSON string")
    if meta_dtype.itemsize // 4 > MAX_META_CHARS:
        raise UserError(
            f"{name}: its metadata is {meta_dtype.itemsize // 4:,} characters long, more than "
            f"{MAX_META_CHARS:,}"
        )


def _read(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The arrays and the metadata of an .npz. The zip's declared sizes and the .npy headers
    are checked first (:func:`_member_header`, :func:`_check_headers`), so a forged header or a
    zip bomb is refused before any data is read."""
    name = str(path)
    if not path.exists():
        raise UserError(f"{name}: no such dataset file")
    if path.is_dir():
        raise UserError(f"{name}: is a directory, expected a dataset .npz file")
    if not path.is_file():  # a device or FIFO (/dev/zero): reading it would never end
        raise UserError(f"{name}: not a regular file, expected a dataset .npz file")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{name}: not an .npz dataset (not a zip archive, or a truncated one); "
            "make one with 'aigxctl collect'"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            # np.savez names members "key.npy"; np.load also takes a bare "key".
            members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
            missing = [k for k in (*ARRAYS, "meta") if k not in members]
            if missing:
                raise UserError(
                    f"{name}: not an aigxctl dataset (missing {', '.join(missing)}); "
                    "make one with 'aigxctl collect'"
                )
            size = path.stat().st_size
            headers = {k: _member_header(zf, members[k], size, name, k) for k in (*ARRAYS, "meta")}
            _check_headers(name, headers)
            arrays = {}
            for key in (*ARRAYS, "meta"):
                with zf.open(members[key]) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
            meta = arrays.pop("meta")
            return arrays, meta
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{name}: too big to load into this machine's memory") from None
    except (
        zipfile.BadZipFile, OSError, ValueError, EOFError, TypeError, KeyError, RuntimeError,
        NotImplementedError,  # an unknown compression method; RuntimeError: encrypted
    ) as exc:  # fmt: skip
        raise UserError(f"{name}: not a readable .npz dataset ({exc})") from None


def load(path: str | Path, *, check_optimal: bool = False) -> Dataset:
    """Load and validate a dataset. Errors name the file and what is wrong.

    Always checked: the keys, the metadata, shapes, dtypes, finiteness, gains >= 0, power >= 0
    and each power row adding up to P. With ``check_optimal`` the powers are also compared with
    a fresh water-filling solution of the gains.
    """
    path = Path(path)
    name = str(path)
    if path.suffix.lower() == ".csv":
        raise UserError(
            f"{name}: training needs an .npz dataset (it records P and sigma^2 beside the "
            "labels); write one with 'aigxctl collect --format npz'"
        )
    arrays, meta_raw = _read(path)  # shapes, dtypes and sizes are checked there
    try:
        meta = json.loads(str(meta_raw[()]))
    except ValueError:
        raise UserError(f"{name}: its metadata is not a JSON string") from None
    except RecursionError:  # json parses nested arrays recursively
        raise UserError(f"{name}: its metadata is not a JSON object (nested too deep)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{name}: not an aigxctl dataset (metadata format is not {FORMAT!r})")
    version = meta.get("version", VERSION)
    if not isinstance(version, int) or version > VERSION:
        raise UserError(
            f"{name}: dataset format version {version!r} is newer than this aigxctl reads "
            f"({VERSION}); upgrade aigxctl"
        )
    lo, hi = SCALE_RANGE
    for key in ("total_power", "noise"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise UserError(f"{name}: metadata {key} must be a number > 0, got {value!r}")
        if not np.isfinite(value):
            raise UserError(f"{name}: metadata {key} must be finite, got {value!r}")
        if not lo <= value <= hi:
            raise UserError(f"{name}: metadata {key} must be in [{lo:g}, {hi:g}], got {value!r}")
    gains, power, rate = arrays["gains"], arrays["power"], arrays["sum_rate"]
    for key, arr in arrays.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = [int(i) for i in np.argwhere(bad)[0]]
            raise UserError(f"{name}: {key}{idx} is not finite")
    for key in ("gains", "power"):
        neg = arrays[key] < 0
        if neg.any():
            idx = [int(i) for i in np.argwhere(neg)[0]]
            raise UserError(f"{name}: {key}{idx} is negative")
    p = float(meta["total_power"])
    sums = power.sum(axis=1)
    usable = gains.max(axis=1) > 0  # a row with no usable channel gets no power
    off = np.abs(sums - np.where(usable, p, 0.0)) > 1e-6 * p
    if off.any():
        row = int(np.argmax(off))
        raise UserError(
            f"{name}: power row {row} adds up to {sums[row]:.9g}, not the total power {p:g}"
        )
    if check_optimal:
        expert = core.waterfill(gains, p, float(meta["noise"]))
        worst = float(np.abs(expert - power).max())
        if worst > 1e-6 * p:
            raise UserError(f"{name}: powers differ from water-filling by up to {worst:.3g}")
    return Dataset(gains, power, rate, meta, path)


def read_gains(path: str | Path, float32: str | None = None) -> np.ndarray:
    """The gains [N, M] of a dataset: an .npz from collect, or a CSV (collect's, whose g1..gM
    columns are taken, or a plain gains CSV), so either works wherever gains are evaluated.
    ``float32``: what the gains are for, when it computes in float32 (a CSV's gains beyond its
    range are refused with their row and column; :func:`aigxctl.files.read_gains_csv`)."""
    from aigxctl import files

    if Path(path).suffix.lower() == ".csv" or str(path) == "-":
        return files.read_gains_csv(path, float32)
    return load(path).gains
