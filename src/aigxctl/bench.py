"""Benchmarks behind every performance claim, measured side by side in one process.

Each case times the compiled core and its honest baselines on the same data and reports
rows (or samples) per second and the ratios; medians of several repeats, because these machines
are shared and noisy. ``aigxctl bench ... --json`` prints the raw figures.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from aigxctl import core

__all__ = ["bisection_waterfill", "machine", "numpy_waterfill", "timeit", "waterfill"]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info = core.build_info()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "core_threads": info["threads"],
        "cuda_built": info["cuda_built"],
        "cuda_devices": info["cuda_devices"],
    }


def timeit(fn: Callable[[], object], repeats: int = 7, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds, after one warm-up call. Each repeat runs ``fn``
    enough times to last ``min_seconds`` (so microsecond calls are not timer noise)."""
    fn()
    inner = 1
    if min_seconds > 0:
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-9)
        inner = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def bisection_waterfill(
    gains: np.ndarray, total_power: float, noise: float = 1.0, tol: float = 1e-6
) -> np.ndarray:
    """Water-filling as the paper's reference code does it: bisection on the level mu to
    ``tol``, one instance at a time in a Python loop. The slow baseline."""
    out = np.zeros_like(gains)
    for i, g in enumerate(gains):
        usable = g > 0
        if not usable.any():
            continue
        a = noise / g[usable]
        lo, hi = 0.0, float(a.max()) + total_power
        while hi - lo > tol:
            mu = 0.5 * (lo + hi)
            if np.maximum(mu - a, 0.0).sum() > total_power:
                hi = mu
            else:
                lo = mu
        out[i, usable] = np.maximum(lo - a, 0.0)
    return out


def numpy_waterfill(gains: np.ndarray, total_power: float, noise: float = 1.0) -> np.ndarray:
    """The best exact vectorised NumPy solver we know: sort a = noise/g per row, prefix sums,
    count the active channels, one level per row. Rows with no usable channel get zeros."""
    with np.errstate(divide="ignore"):
        a = np.where(gains > 0, noise / np.where(gains > 0, gains, 1.0), np.inf)
    s = np.sort(a, axis=1)
    levels = (total_power + np.cumsum(s, axis=1)) / np.arange(1, gains.shape[1] + 1)
    k = np.count_nonzero(levels > s, axis=1)
    mu = np.take_along_axis(levels, np.maximum(k - 1, 0)[:, None], axis=1)
    mu[k == 0] = 0.0
    return np.maximum(mu - a, 0.0)


def waterfill(
    batches: list[int],
    channels: list[int],
    repeats: int = 7,
    total_power: float = 0.2,
    bisection_rows: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Rows/s of the core vs (a) the bisection loop, (b) vectorised NumPy, (c) a plain copy.

    Gains are T2-like draws, U[1, 7], float64. The bisection loop is timed on at most
    ``bisection_rows`` rows (its cost is linear in rows) and reported as rows/s.
    """
    rng = np.random.default_rng(seed)
    cases = []
    for m in channels:
        for b in batches:
            g = rng.uniform(1.0, 7.0, size=(b, m))
            sub = g[: min(b, bisection_rows)]
            t_core = timeit(lambda g=g: core.waterfill(g, total_power), repeats, 0.05)
            t_numpy = timeit(lambda g=g: numpy_waterfill(g, total_power), repeats, 0.05)
            t_copy = timeit(g.copy, repeats, 0.05)
            t_bisect = timeit(lambda sub=sub: bisection_waterfill(sub, total_power), 3) / len(sub)
            rate = {
                "core": b / t_core,
                "numpy": b / t_numpy,
                "copy": b / t_copy,
                "bisection": 1.0 / t_bisect,
            }
            cases.append(
                {
                    "batch": b,
                    "channels": m,
                    "rows_per_s": rate,
                    "seconds": {"core": t_core, "numpy": t_numpy, "copy": t_copy},
                    "speedup_vs_bisection": rate["core"] / rate["bisection"],
                    "speedup_vs_numpy": rate["core"] / rate["numpy"],
                    "time_vs_copy": t_core / t_copy,
                    "bisection_rows_timed": len(sub),
                }
            )
    return {"benchmark": "waterfill", "dtype": "float64", "machine": machine(), "cases": cases}


def waterfill_table(results: dict[str, Any]) -> Any:
    """A Rich table of :func:`waterfill` results."""
    from aigxctl.report import table

    rows = []
    for c in results["cases"]:
        r = c["rows_per_s"]
        rows.append(
            [
                f"{c['batch']:,}",
                c["channels"],
                f"{r['core']:.3g}",
                f"{r['numpy']:.3g}",
                f"{r['bisection']:.3g}",
                f"{r['copy']:.3g}",
                f"{c['speedup_vs_bisection']:,.0f}x",
                f"{c['speedup_vs_numpy']:.1f}x",
                f"{c['time_vs_copy']:.1f}x",
            ]
        )
    m = results["machine"]
    return table(
        f"water-filling, rows/s (float64, {m['core_threads']} core threads)",
        ["B", "M", "core", "numpy", "bisection", "copy", "vs bisect", "vs numpy", "time/copy"],
        rows,
    )
