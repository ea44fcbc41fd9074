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
    "sample_gpu",
    "timeit",
    "torch_waterfill",
    "waterfill",
    "waterfill_gpu",
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
    device: str = "cpu",
) -> dict[str, Any]:
    """Rows/s of the core vs (a) the bisection loop, (b) vectorised NumPy, (c) a plain copy.

    Gains are T2-like draws, U[1, 7], float64. The bisection loop is timed on at most
    ``bisection_rows`` rows (its cost is linear in rows) and reported as rows/s. ``device``
    (core.resolve_device) a GPU: :func:`waterfill_gpu` instead.
    """
    _check_repeats(repeats)
    dev = core.resolve_device(device)
    if dev != "cpu":
        return waterfill_gpu(batches, channels, repeats, dev, total_power, seed)
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
    return {"benchmark": "waterfill", "dtype": "float64", "device": "cpu", "machine": machine(),
            "cases": cases}  # fmt: skip


def waterfill_table(results: dict[str, Any]) -> Any:
    """A Rich table of :func:`waterfill` results."""
    from aigxctl.report import table

    if results.get("device", "cpu") != "cpu":
        return _waterfill_gpu_table(results)

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
        f"water-filling on cpu, rows/s (float64, {m['core_threads']} core threads)",
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
    device: str = "cpu",
) -> dict[str, Any]:
    """Allocations/s of the fused sampler vs the plain PyTorch sampler (and ``torch.compile`` of
    it, when that works here), same weights (reference denoiser shape, random init), same mode
    (ancestral DDPM, noise drawn by each), T = ``steps``, M = ``m``.

    With ``model_dir``, a trained checkpoint is timed the way a user calls it instead:
    ``model.allocate(gains, backend="fused")`` against ``backend="torch"`` (its own M, size, T and
    decision mode; validation and conversions included; no torch.compile). ``device``
    (core.resolve_device) a GPU: the model there, or :func:`sample_gpu`.
    """
    _check_repeats(repeats)  # before importing torch (seconds): mistakes fail fast
    dev = core.resolve_device(device)
    if model_dir is not None:
        return _sample_api(model_dir, batches, repeats, seed, dev)
    if dev != "cpu":
        return sample_gpu(batches, repeats, dev, m, hidden, steps, compile_torch, seed)
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
        "device": "cpu",
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


def _sample_api(
    model_dir: str, batches: list[int], repeats: int, seed: int, device: str = "cpu"
) -> dict[str, Any]:
    """:func:`sample` with ``model_dir``: a checkpoint's ``allocate``, fused vs torch, with the
    model on ``device`` (NumPy gains in and out, as a user calls it)."""
    import torch

    from aigxctl.checkpoint import load_model
    from aigxctl.model import GDM

    model = load_model(model_dir, device=device)
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
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "torch_compile_error": None,
        "machine": machine(),
        "cases": cases,
    }


def sample_table(results: dict[str, Any]) -> Any:
    """A Rich table of :func:`sample` results."""
    from aigxctl.report import table

    if results.get("device", "cpu") != "cpu" and "path" not in results["model"]:
        return _sample_gpu_table(results)

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
        f"{mdl['mode']}, on {results.get('device', 'cpu')}, {results['machine']['core_threads']} "
        "threads)",
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


# --- on a GPU (``--device cuda``): run only where core.resolve_device gives one -------------


def torch_waterfill(gains: torch.Tensor, total_power: float, noise: float = 1.0) -> torch.Tensor:
    """:func:`numpy_waterfill` in batched PyTorch, on any device: sort a = noise/g per row,
    prefix sums, count the active channels, one level per row. The GPU's exact baseline."""
    import torch

    inf = torch.tensor(float("inf"), dtype=gains.dtype, device=gains.device)
    a = torch.where(gains > 0, noise / torch.where(gains > 0, gains, 1.0), inf)
    s = torch.sort(a, dim=1).values
    steps = torch.arange(1, gains.shape[1] + 1, dtype=gains.dtype, device=gains.device)
    levels = (total_power + torch.cumsum(s, dim=1)) / steps
    k = (levels > s).sum(dim=1)
    mu = torch.gather(levels, 1, (k - 1).clamp(min=0)[:, None])
    mu = torch.where(k[:, None] == 0, torch.zeros_like(mu), mu)
    return (mu - a).clamp(min=0)


def _gpu_timeit(fn: Callable[[], object], device: str, repeats: int) -> float:
    """:func:`timeit` of ``fn`` on a GPU: each call waits for the device to finish."""
    import torch

    def call() -> None:
        fn()
        torch.cuda.synchronize(device)

    return timeit(call, repeats, 0.1)


def _gpu_machine(device: str) -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(device)
    return {**machine(), "device": device, "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "torch_cuda": torch.version.cuda}  # fmt: skip


def waterfill_gpu(
    batches: list[int],
    channels: list[int],
    repeats: int,
    device: str,
    total_power: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`waterfill` on the GPU ``device``: rows/s of the core's CUDA water-filling vs a
    device copy of the gains (the memory-bandwidth bound: read B x M, write B x M, as the
    water-filling does) and :func:`torch_waterfill` (batched sort + cumsum), float32 gains
    U[1, 7] drawn on the device. A case whose torch solver would not fit in the GPU's free
    memory (it holds about 8 copies of the gains) reports it as None."""
    import torch

    if not 1 <= len(channels) <= MAX_CASES or not 1 <= len(batches) <= MAX_CASES:
        raise UserError(f"--batches and --channels must list 1 to {MAX_CASES} sizes each")
    for m in channels:
        if not 1 <= m <= MAX_CHANNELS:
            raise UserError(f"--channels must list integers >= 1 and <= {MAX_CHANNELS}, got {m}")
    free = torch.cuda.mem_get_info(device)[0]
    gen = torch.Generator(device=device).manual_seed(seed)
    cases = []
    for m in channels:
        for b in batches:
            size = 4 * b * m
            if 3 * size > 0.9 * free:
                raise UserError(f"--batches {b} x --channels {m}: {size / 2**30:.1f} GiB of "
                                f"gains do not fit 3 times in the GPU's free memory")  # fmt: skip
            g = torch.rand((b, m), generator=gen, device=device) * 6.0 + 1.0
            t = {
                "core": _gpu_timeit(lambda g=g: core.waterfill(g, total_power), device, repeats),
                "copy": _gpu_timeit(g.clone, device, repeats),
            }
            if 8 * size < 0.9 * free:
                t["torch_sort"] = _gpu_timeit(
                    lambda g=g: torch_waterfill(g, total_power), device, repeats
                )
            rate = {k: b / v for k, v in t.items()}
            cases.append({
                "batch": b, "channels": m, "rows_per_s": rate, "seconds": t,
                "bandwidth_gb_per_s": {k: 2 * size / v / 1e9 for k, v in t.items()},
                "fraction_of_copy": t["copy"] / t["core"],
                "speedup_vs_torch_sort": t["torch_sort"] / t["core"] if "torch_sort" in t
                else None,
            })  # fmt: skip
            del g
    return {"benchmark": "waterfill", "dtype": "float32", "device": device,
            "machine": _gpu_machine(device), "cases": cases}  # fmt: skip


def _waterfill_gpu_table(results: dict[str, Any]) -> Any:
    from aigxctl.report import table

    rows = []
    for c in results["cases"]:
        r, bw = c["rows_per_s"], c["bandwidth_gb_per_s"]
        rows.append([
            f"{c['batch']:,}", c["channels"], f"{r['core']:.3g}", f"{r['copy']:.3g}",
            f"{r['torch_sort']:.3g}" if "torch_sort" in r else "-",
            f"{bw['core']:.0f} / {bw['copy']:.0f}", f"{c['fraction_of_copy']:.0%}",
            f"{c['speedup_vs_torch_sort']:.1f}x" if c["speedup_vs_torch_sort"] else "-",
        ])  # fmt: skip
    mc = results["machine"]
    return table(
        f"water-filling on {results['device']} ({mc['gpu']}), rows/s (float32)",
        ["B", "M", "core", "copy", "torch sort", "GB/s core / copy", "of copy", "vs torch"],
        rows,
    )


class _GpuSamplers:
    """What :func:`sample_gpu` times on one GPU, same weights: the fused CUDA sampler, the
    plain PyTorch sampler (eager), the same captured in a CUDA graph (per batch size), and
    ``torch.compile`` of the denoiser while it works."""

    def __init__(self, m: int, hidden: int, steps: int, seed: int, device: str,
                 compile_torch: bool) -> None:  # fmt: skip
        import dataclasses

        import torch

        samplers = _Samplers(m, hidden, steps, seed, compile_torch=False)
        self.model, self.fused, self.steps = samplers.model, samplers.fused, steps
        self.device = device
        self.model.denoiser.to(device)
        # Everything the plain sampler reads, on the GPU already: a CUDA graph captures no copy
        # from the host.
        sch = self.model.schedule
        self.schedule = dataclasses.replace(sch, **{
            f.name: getattr(sch, f.name).to(device) for f in dataclasses.fields(sch)
            if isinstance(getattr(sch, f.name), torch.Tensor)})  # fmt: skip
        self.mean = torch.as_tensor(self.model.cond_mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(self.model.cond_std, dtype=torch.float32, device=device)
        self.compiled: Any = None
        self.compile_error: str | None = None
        if compile_torch:
            try:
                self.compiled = torch.compile(self.model.denoiser, dynamic=False)
            except Exception as exc:  # optional: report, don't fail
                self.compile_error = f"{type(exc).__name__}: {exc}"

    def plain(self, g: torch.Tensor, den: torch.nn.Module) -> torch.Tensor:
        import torch

        from aigxctl.diffusion import sample_reference, to_allocation

        with torch.no_grad():
            z = torch.randn(self.steps + 1, *g.shape, device=g.device)
            x = sample_reference(den, self.schedule, (g - self.mean) / self.std, z, pred="eps",
                                 mode="ancestral")  # fmt: skip
            return to_allocation(x, 0.2)

    def graphed(self, g: torch.Tensor) -> Callable[[], object]:
        """The plain sampler on ``g`` captured once in a CUDA graph; returns its replay."""
        import torch

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up (cuBLAS handles, allocator) outside the capture
                self.plain(g, self.model.denoiser)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.plain(g, self.model.denoiser)
        return graph.replay

    def time_batch(self, b: int, m: int, repeats: int) -> dict[str, Any]:
        import torch

        dev = self.device
        g = torch.rand((b, m), device=dev) * 6.0 + 1.0
        t = {
            "fused": _gpu_timeit(lambda: self.fused.sample(g, 0.2, mode="ancestral", seed=1),
                                 dev, repeats),
            "torch": _gpu_timeit(lambda: self.plain(g, self.model.denoiser), dev, repeats),
        }  # fmt: skip
        errors = {}
        try:
            t["torch_cuda_graph"] = _gpu_timeit(self.graphed(g), dev, repeats)
        except Exception as exc:  # a capture that fails is reported, not fatal
            errors["torch_cuda_graph"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if self.compiled is not None:
            try:
                t["torch_compile"] = _gpu_timeit(lambda: self.plain(g, self.compiled), dev,
                                                 repeats)  # fmt: skip
            except Exception as exc:
                self.compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                self.compiled = None
        return {
            "batch": b,
            "allocations_per_s": {k: b / v for k, v in t.items()},
            "speedup_vs": {k: v / t["fused"] for k, v in t.items() if k != "fused"},
            "errors": errors,
        }


def sample_gpu(
    batches: list[int], repeats: int, device: str, m: int = 20, hidden: int = 256,
    steps: int = 6, compile_torch: bool = True, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """:func:`sample` on the GPU ``device``: allocations/s of the fused CUDA sampler vs plain
    PyTorch on the GPU (eager, in a CUDA graph, torch.compile), same weights, ancestral, gains
    drawn on the device."""
    import torch

    if not 1 <= len(batches) <= MAX_CASES:
        raise UserError(f"--batches must list 1 to {MAX_CASES} sizes, got {len(batches)}")
    samplers = _GpuSamplers(m, hidden, steps, seed, device, compile_torch)
    cases = [samplers.time_batch(b, m, repeats) for b in batches]
    return {
        "benchmark": "sample",
        "device": device,
        "model": {"m": m, "hidden": hidden, "steps": steps, "schedule": "vp", "mode": "ancestral"},
        "torch_compile_error": samplers.compile_error,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "machine": _gpu_machine(device),
        "cases": cases,
    }


def _sample_gpu_table(results: dict[str, Any]) -> Any:
    from aigxctl.report import table

    names = ["fused", "torch", "torch_cuda_graph", "torch_compile"]
    present = [n for n in names if any(n in c["allocations_per_s"] for c in results["cases"])]
    rows = []
    for c in results["cases"]:
        r, s = c["allocations_per_s"], c["speedup_vs"]
        rows.append([f"{c['batch']:,}", *(f"{r[n]:.3g}" if n in r else "-" for n in present),
                     *(f"{s[n]:.1f}x" if n in s else "-" for n in present[1:])])  # fmt: skip
    mdl, mc = results["model"], results["machine"]
    return table(
        f"sampling on {results['device']} ({mc['gpu']}), allocations/s (M={mdl['m']}, hidden "
        f"{mdl['hidden']}, T={mdl['steps']}, {mdl['mode']})",
        ["B", *present, *(f"fused / {n}" for n in present[1:])],
        rows,
    )
