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
from typing import TYPE_CHECKING, Any

import numpy as np

from aigxctl import core
from aigxctl.errors import UserError
from aigxctl.scenarios import MAX_CHANNELS, check_draw_size

if TYPE_CHECKING:  # torch is imported only when a sampling benchmark runs (seconds)
    import torch

    from aigxctl.model import GDM

__all__ = [
    "bisection_waterfill",
    "collect",
    "collect_table",
    "machine",
    "numpy_waterfill",
    "timeit",
    "waterfill",
]

# Timed repeats per case: the median settles long before this.
MAX_REPEATS = 100
# Sizes per list option (--batches, --channels): each is a case timed in turn.
MAX_CASES = 16


def _check_repeats(repeats: int) -> None:
    if isinstance(repeats, bool) or not 1 <= repeats <= MAX_REPEATS:
        raise UserError(f"--repeats must be >= 1 and <= {MAX_REPEATS}, got {repeats}")


def _check_batches(batches: list[int], m: int, option: str = "--batches") -> None:
    """Each batch of ``m`` float64 gains must fit one in-memory draw (scenarios' limit)."""
    if not 1 <= len(batches) <= MAX_CASES:
        raise UserError(f"{option} must list 1 to {MAX_CASES} sizes, got {len(batches)}")
    for b in batches:
        if b < 1:
            raise UserError(f"{option} must list integers >= 1, got {b}")
        check_draw_size(b, m, option)


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
    _check_repeats(repeats)
    if not 1 <= len(channels) <= MAX_CASES:
        raise UserError(f"--channels must list 1 to {MAX_CASES} sizes, got {len(channels)}")
    for m in channels:
        if not 1 <= m <= MAX_CHANNELS:
            raise UserError(f"--channels must list integers >= 1 and <= {MAX_CHANNELS}, got {m}")
        _check_batches(batches, m)
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


def sample(
    batches: list[int],
    repeats: int = 5,
    m: int = 20,
    hidden: int = 256,
    steps: int = 6,
    compile_torch: bool = True,
    seed: int = 0,
    model_dir: str | None = None,
) -> dict[str, Any]:
    """Allocations/s of the fused sampler vs the plain PyTorch sampler (and ``torch.compile`` of
    it, when that works here), same weights (reference denoiser shape, random init), same mode
    (ancestral DDPM, noise drawn by each), T = ``steps``, M = ``m``.

    With ``model_dir``, a trained checkpoint is timed the way a user calls it instead:
    ``model.allocate(gains, backend="fused")`` against ``backend="torch"`` (its own M, size, T and
    decision mode; validation and conversions included; no torch.compile).
    """
    _check_repeats(repeats)  # before importing torch (seconds): mistakes fail fast
    if model_dir is not None:
        return _sample_api(model_dir, batches, repeats, seed)
    if not 1 <= m <= MAX_CHANNELS:
        raise UserError(f"m must be >= 1 and <= {MAX_CHANNELS}, got {m}")
    _check_batches(batches, m)

    import torch

    samplers = _Samplers(m, hidden, steps, seed, compile_torch)
    rng = np.random.default_rng(seed)
    cases = [
        samplers.time_batch(rng.uniform(1.0, 7.0, (b, m)).astype(np.float32), repeats)
        for b in batches
    ]
    return {
        "benchmark": "sample",
        "model": {"m": m, "hidden": hidden, "steps": steps, "schedule": "vp", "mode": "ancestral"},
        "torch_threads": torch.get_num_threads(),
        "torch_compile_error": samplers.compile_error,
        "machine": machine(),
        "cases": cases,
    }


class _Samplers:
    """What :func:`sample` times, on one model (reference denoiser shape, random init): the
    fused sampler, the plain PyTorch one, and ``torch.compile`` of the plain one while it
    works (its error, once it fails, is kept in ``compile_error``)."""

    def __init__(self, m: int, hidden: int, steps: int, seed: int, compile_torch: bool) -> None:
        import torch

        from aigxctl.diffusion import Schedule
        from aigxctl.model import GDM, Denoiser

        torch.manual_seed(seed)
        self.model = GDM(
            denoiser=Denoiser(m, hidden).eval(),
            schedule=Schedule.create("vp", steps),
            pred="eps",
            cond_mean=np.full(m, 4.0),
            cond_std=np.full(m, 1.7),
            total_power=0.2,
            noise=1.0,
        )
        self.fused = self.model.fused_sampler()
        self.plain = _plain_sampler(self.model, steps)
        self.compiled: Any = None
        self.compile_error: str | None = None
        if compile_torch:
            try:
                self.compiled = torch.compile(self.model.denoiser, dynamic=False)
            except Exception as exc:  # torch.compile is optional here: report, don't fail
                self.compile_error = f"{type(exc).__name__}: {exc}"

    def time_batch(self, g: np.ndarray, repeats: int) -> dict[str, Any]:
        """One case: allocations/s of each sampler on the float32 gains ``g`` and the ratios."""
        import torch

        b = len(g)
        model, plain, fused = self.model, self.plain, self.fused
        gt = torch.from_numpy(g)
        t_plain = timeit(lambda gt=gt: plain(gt, model.denoiser), repeats, 0.2)
        t_fused = timeit(lambda g=g: fused.sample(g, 0.2, mode="ancestral", seed=1), repeats, 0.2)
        case: dict[str, Any] = {
            "batch": b,
            "allocations_per_s": {"fused": b / t_fused, "torch": b / t_plain},
            "speedup_vs_torch": t_plain / t_fused,
        }
        if self.compiled is not None:
            try:
                t_comp = timeit(lambda gt=gt, c=self.compiled: plain(gt, c), repeats, 0.2)
                case["allocations_per_s"]["torch_compile"] = b / t_comp
                case["speedup_vs_torch_compile"] = t_comp / t_fused
            except Exception as exc:  # compile failures surface at the first call
                self.compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                self.compiled = None
        return case


def _plain_sampler(
    model: GDM, steps: int
) -> Callable[[torch.Tensor, torch.nn.Module], torch.Tensor]:
    """The plain PyTorch sampler of ``model`` (ancestral DDPM, T = ``steps``), run through the
    denoiser it is given (the model's own or a compiled one)."""
    import torch

    from aigxctl.diffusion import sample_reference, to_allocation

    def plain(g: torch.Tensor, den: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            z = torch.randn(steps + 1, *g.shape)
            x = sample_reference(den, model.schedule, model.normalise(g), z, pred="eps",
                                 mode="ancestral")  # fmt: skip
            return to_allocation(x, 0.2)

    return plain


def _sample_api(model_dir: str, batches: list[int], repeats: int, seed: int) -> dict[str, Any]:
    """:func:`sample` with ``model_dir``: a checkpoint's ``allocate``, fused vs torch."""
    import torch

    from aigxctl.checkpoint import load_model
    from aigxctl.model import GDM

    model = load_model(model_dir)
    if not isinstance(model, GDM):
        raise UserError(f"{model_dir}: bench sample times a gdm model, this one is {model.arch}")
    model.backend_for("fused")  # a clear error if the compiled sampler cannot run this model
    _check_batches(batches, model.m)
    rng = np.random.default_rng(seed)
    cases = []
    for b in batches:
        g = rng.uniform(1.0, 7.0, (b, model.m))
        times = {
            backend: timeit(
                lambda be=backend, g=g: model.allocate(g, backend=be, seed=1), repeats, 0.2
            )
            for backend in ("fused", "torch")
        }
        cases.append({
            "batch": b,
            "allocations_per_s": {k: b / t for k, t in times.items()},
            "speedup_vs_torch": times["torch"] / times["fused"],
        })  # fmt: skip
    return {
        "benchmark": "sample",
        "model": {
            "path": str(model_dir),
            "m": model.m,
            "hidden": int(model.config["hidden"]),
            "steps": model.T,
            "schedule": model.schedule.kind,
            "mode": model.mode,
            "api": "allocate",
        },
        "torch_threads": torch.get_num_threads(),
        "torch_compile_error": None,
        "machine": machine(),
        "cases": cases,
    }


def sample_table(results: dict[str, Any]) -> Any:
    """A Rich table of :func:`sample` results."""
    from aigxctl.report import table

    has_compile = any("torch_compile" in c["allocations_per_s"] for c in results["cases"])
    cols = ["B", "fused", "torch"] + (["torch.compile"] if has_compile else [])
    cols += ["fused / torch"] + (["fused / compile"] if has_compile else [])
    rows = []
    for c in results["cases"]:
        r = c["allocations_per_s"]
        row = [f"{c['batch']:,}", f"{r['fused']:.3g}", f"{r['torch']:.3g}"]
        if has_compile:
            row.append(f"{r['torch_compile']:.3g}" if "torch_compile" in r else "-")
        row.append(f"{c['speedup_vs_torch']:.1f}x")
        if has_compile:
            row.append(f"{c['speedup_vs_torch_compile']:.1f}x" if "speedup_vs_torch_compile" in c
                       else "-")  # fmt: skip
        rows.append(row)
    mdl = results["model"]
    what = f"{mdl['path']}.allocate" if "path" in mdl else "sampling"
    return table(
        f"{what}, allocations/s (M={mdl['m']}, hidden {mdl['hidden']}, T={mdl['steps']}, "
        f"{mdl['mode']}, {results['machine']['core_threads']} threads)",
        cols,
        rows,
    )


def collect(
    samples: int = 1_000_000, repeats: int = 3, seed: int = 0, scenario: str = "t1"
) -> dict[str, Any]:
    """Samples/s of collecting vs only drawing the same gains with NumPy.

    Cases, same scenario, seed and N: ``draw`` (the gains into one [N, M] array: the floor),
    ``waterfill`` and ``sum_rate`` (the core's labelling alone, on those gains), ``collect``
    (draw + label in memory, :func:`aigxctl.data.collect`) and ``collect_npz`` (the CLI path:
    streamed into an .npz in a temporary folder, :func:`aigxctl.data.collect_to_file`).
    """
    import tempfile
    from pathlib import Path

    from aigxctl import data, scenarios

    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    _check_repeats(repeats)
    s = scenarios.get(scenario)
    # Every case holds the N x M gains in memory (collect: with the powers beside them).
    check_draw_size(samples, s.m, "--samples")

    def label_only() -> dict[str, float]:  # its arrays are freed before the next cases
        gains = scenarios.draw(s, samples, seed)
        power = core.waterfill(gains, s.total_power, s.noise)
        return {
            "waterfill": timeit(lambda: core.waterfill(gains, s.total_power, s.noise), repeats),
            "sum_rate": timeit(lambda: core.sum_rate(gains, power, s.noise), repeats),
        }

    times = {"draw": timeit(lambda: scenarios.draw(s, samples, seed), repeats), **label_only()}
    times["collect"] = timeit(lambda: data.collect(s, samples, seed), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.npz"
        times["collect_npz"] = timeit(lambda: data.collect_to_file(s, samples, seed, out), repeats)
    return {
        "benchmark": "collect",
        "scenario": s.name,
        "samples": samples,
        "channels": s.m,
        "repeats": repeats,
        "seconds": times,
        "samples_per_s": {k: samples / t for k, t in times.items()},
        "ratio_to_draw": {
            "collect": times["draw"] / times["collect"],
            "collect_npz": times["draw"] / times["collect_npz"],
        },
        "machine": machine(),
    }


def collect_table(results: dict[str, Any]) -> Any:
    """A Rich table of :func:`collect` results."""
    from aigxctl.report import table

    rate, ratio = results["samples_per_s"], results["ratio_to_draw"]
    what = {
        "draw": "draw gains only (NumPy)",
        "waterfill": "core water-filling only",
        "sum_rate": "core sum rate only",
        "collect": "collect, in memory",
        "collect_npz": "collect to .npz (CLI path)",
    }
    rows = [
        [label, f"{rate[key]:.3g}", f"{ratio[key]:.2f}" if key in ratio else "-"]
        for key, label in what.items()
    ]
    return table(
        f"collect, samples/s ({results['scenario']}, M={results['channels']}, "
        f"N={results['samples']:,}, median of {results['repeats']}, "
        f"{results['machine']['core_threads']} core threads)",
        ["case", "samples/s", "vs draw"],
        rows,
    )
