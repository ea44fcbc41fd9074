"""Datasets: channel gains labelled with their exact water-filling allocation (the expert).

A dataset file is an ``.npz`` with ``gains`` [N, M], ``power`` [N, M] (watts, each row adds up
to P), ``sum_rate`` [N] (bits/s/Hz) and ``meta``, a JSON string (format, scenario, seed, P,
sigma^2, package version, creation time). :func:`collect_to_file` streams chunk by chunk through
temporary ``.npy`` files, so ten million samples fit in bounded memory, and renames the finished
file into place; :func:`load` checks everything and reads with ``allow_pickle=False``.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigxctl import core
from aigxctl.errors import UserError
from aigxctl.files import atomic_path
from aigxctl.scenarios import CHUNK_ROWS, Scenario, draw_chunks

__all__ = ["FORMAT", "Dataset", "collect", "collect_to_file", "load", "save"]

FORMAT = "aigxctl-dataset"
VERSION = 1
ARRAYS = ("gains", "power", "sum_rate")


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
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _label(scenario: Scenario, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    power = core.waterfill(gains, scenario.total_power, scenario.noise)
    return power, core.sum_rate(gains, power, scenario.noise)


def collect(
    scenario: Scenario, samples: int, seed: int, total_power: float | None = None
) -> Dataset:
    """Draw ``samples`` gain vectors and label them, in memory (for small N and tests)."""
    if total_power is not None:
        scenario = scenario.with_power(total_power)
    gains = np.concatenate(list(draw_chunks(scenario, samples, seed)), axis=0)
    power, rate = _label(scenario, gains)
    return Dataset(gains, power, rate, _meta(scenario, samples, seed))


def _write_npz(target: Path, arrays: dict[str, Path], meta: dict[str, Any], tmp: Path) -> None:
    """Pack .npy files and the metadata into ``target`` (stored, not compressed: the gains are
    random floats, compression buys nothing and costs minutes at 10M samples)."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, path in arrays.items():
            with path.open("rb") as src, zf.open(f"{name}.npy", "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        meta_path = tmp / "meta.npy"
        np.save(meta_path, np.array(json.dumps(meta)), allow_pickle=False)
        zf.write(meta_path, "meta.npy")


def collect_to_file(
    scenario: Scenario,
    samples: int,
    seed: int,
    out: str | Path,
    *,
    total_power: float | None = None,
    progress: Callable[[int], None] | None = None,
    csv: bool = False,
) -> dict[str, Any]:
    """Draw, label and write a dataset chunk by chunk; ``progress(rows_done)`` after each chunk.
    With ``csv`` the file is a CSV (``g1..gM,p1..pM,sum_rate``) for spreadsheets and MATLAB.
    Returns the metadata plus the mean sum rates of the expert and of equal allocation."""
    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    if total_power is not None:
        scenario = scenario.with_power(total_power)
    m = scenario.m
    meta = _meta(scenario, samples, seed)
    rate_sum = equal_sum = 0.0
    with tempfile.TemporaryDirectory(dir=Path(out).parent or ".") as tmp:
        paths = {name: Path(tmp) / f"{name}.npy" for name in ARRAYS}
        gains_f = np.lib.format.open_memmap(paths["gains"], "w+", np.float64, (samples, m))
        power_f = np.lib.format.open_memmap(paths["power"], "w+", np.float64, (samples, m))
        rate_f = np.lib.format.open_memmap(paths["sum_rate"], "w+", np.float64, (samples,))
        done = 0
        for chunk in draw_chunks(scenario, samples, seed):
            power, rate = _label(scenario, chunk)
            rows = slice(done, done + len(chunk))
            gains_f[rows], power_f[rows], rate_f[rows] = chunk, power, rate
            rate_sum += float(rate.sum())
            equal = np.full_like(chunk, scenario.total_power / m)
            equal_sum += float(core.sum_rate(chunk, equal, scenario.noise).sum())
            done += len(chunk)
            if progress is not None:
                progress(done)
        for mm in (gains_f, power_f, rate_f):
            mm.flush()
        del gains_f, power_f, rate_f
        with atomic_path(out) as target:
            if csv:
                _write_csv(target, paths)
            else:
                _write_npz(target, paths, meta, Path(tmp))
    return {**meta, "expert_rate": rate_sum / samples, "equal_rate": equal_sum / samples}


def _write_csv(target: Path, arrays: dict[str, Path]) -> None:
    gains = np.load(arrays["gains"], mmap_mode="r")
    power = np.load(arrays["power"], mmap_mode="r")
    rate = np.load(arrays["sum_rate"], mmap_mode="r")
    m = gains.shape[1]
    header = [*(f"g{i}" for i in range(1, m + 1)), *(f"p{i}" for i in range(1, m + 1)), "sum_rate"]
    with target.open("w", encoding="utf-8") as f:
        f.write(",".join(header) + "\n")
        for start in range(0, gains.shape[0], CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            block = np.column_stack([gains[rows], power[rows], rate[rows]])
            np.savetxt(f, block, fmt="%.10g", delimiter=",")


def save(dataset: Dataset, out: str | Path) -> None:
    """Write an in-memory dataset atomically."""
    with atomic_path(out) as target, target.open("wb") as f:
        np.savez(
            f,
            gains=dataset.gains,
            power=dataset.power,
            sum_rate=dataset.sum_rate,
            meta=np.array(json.dumps(dataset.meta)),
        )


def load(path: str | Path, *, check_optimal: bool = False) -> Dataset:
    """Load and validate a dataset. Errors name the file and what is wrong.

    Always checked: the keys, shapes, dtypes, finiteness, gains >= 0, power >= 0 and each power
    row adding up to P. With ``check_optimal`` the powers are also compared with a fresh
    water-filling solution of the gains.
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise UserError(f"{name}: no such dataset file")
    try:
        # Our own handle, so it closes even when NumPy gives up on the file half-way.
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
            missing = [k for k in (*ARRAYS, "meta") if k not in z.files]
            if missing:
                raise UserError(
                    f"{name}: not an aigxctl dataset (missing {', '.join(missing)}); "
                    "make one with 'aigxctl collect'"
                )
            arrays = {k: z[k] for k in ARRAYS}
            meta_raw = z["meta"]
    except UserError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, TypeError) as exc:
        raise UserError(f"{name}: not a readable .npz dataset ({exc})") from None
    try:
        meta = json.loads(str(meta_raw[()]))
    except (ValueError, TypeError):
        raise UserError(f"{name}: its metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{name}: not an aigxctl dataset (metadata format is not {FORMAT!r})")
    for key in ("total_power", "noise"):
        if not isinstance(meta.get(key), (int, float)) or not meta[key] > 0:
            raise UserError(f"{name}: metadata {key} must be a number > 0")
    gains, power, rate = arrays["gains"], arrays["power"], arrays["sum_rate"]
    if gains.ndim != 2 or gains.shape[0] == 0 or gains.shape[1] == 0:
        raise UserError(f"{name}: gains must be a non-empty [N, M] array, got {gains.shape}")
    if power.shape != gains.shape or rate.shape != gains.shape[:1]:
        raise UserError(
            f"{name}: shapes disagree: gains {gains.shape}, power {power.shape}, "
            f"sum_rate {rate.shape}"
        )
    for key, arr in arrays.items():
        if not np.issubdtype(arr.dtype, np.floating):
            raise UserError(f"{name}: {key} must hold floats, got {arr.dtype}")
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise UserError(f"{name}: {key}{list(idx)} is not finite")
    for key in ("gains", "power"):
        if (arrays[key] < 0).any():
            idx = tuple(int(i) for i in np.argwhere(arrays[key] < 0)[0])
            raise UserError(f"{name}: {key}{list(idx)} is negative")
    p = float(meta["total_power"])
    sums = power.sum(axis=1)
    usable = gains.max(axis=1) > 0
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
