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
    "CONTENDERS",
    "bisection_waterfill",
    "collect",
    "collect_table",
    "ddim_decision",
    "decision_flops",
    "export_onnx",
    "fma_peak",
    "machine",
    "numpy_waterfill",
    "sample",
    "sample_gpu",
    "sample_notes",
    "sample_table",
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


# --- sampling: the fused core against the contenders a user could pick instead --------------

# What `bench sample` times on the CPU, in this order (JSON keys; LABELS for the tables).
CONTENDERS = ("fused", "fused_bf16", "torch", "torch_compile", "onnxruntime", "openvino")
LABELS = {"fused": "fused", "fused_bf16": "fused bf16", "torch": "torch",
          "torch_compile": "torch.compile", "onnxruntime": "onnxruntime",
          "openvino": "openvino"}  # fmt: skip
# The runtimes `pip install aigxctl[bench]` brings (the module each contender imports).
RUNTIMES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# Every contender must give the torch backend's allocations within this before it is timed.
EQUAL_ATOL = 1e-5
# ...except the fused core in bf16, which rounds on purpose: within this (P = 0.2: 1 % of P).
ATOL = {"fused_bf16": 2e-3}
# The seed of the decisions timed (its Philox start noise is the runtimes' input).
DECISION_SEED = 1
# Quiet time before each timed sample of bench sample's rounds (_rounds), longer than the
# runtimes' thread pools spin after a call (OpenMP's default spin is about a millisecond).
SETTLE_S = 0.02


def decision_flops(m: int, hidden: int, steps: int) -> int:
    """Floating-point operations of one DDIM decision as the fused core computes it (2 per
    multiply-add of its matrix products; Mish and the element-wise update not counted): the
    condition branch once (M -> H, then the folded H -> H), then per step the x part of the
    first trunk layer (M -> H), the second (H -> H) and the output layer (H -> M). The core
    also multiplies the output layer's zero padding (M rounded up to 16): not useful work, not
    counted. M = 20, H = 256, T = 6: 1.05 MFLOP (1.09 with the padding)."""
    return 2 * hidden * (m + hidden) + 2 * steps * hidden * (2 * m + hidden)


# A plain loop of independent float32 FMA chains, the widest the CPU has (512 or 256 bits), on
# N threads: what "the machine's FMA peak" means in `bench sample`. Compiled at run time with the
# system C compiler (the one torch.compile needs too); without one, library GEMMs stand in.
_FMA_LOOP_C = r"""
#include <pthread.h>
#include <immintrin.h>

#define CHAINS 24
typedef struct { long iters; int width; float sink; } job_t;

__attribute__((target("avx512f"))) static float loop512(long iters) {
  __m512 a[CHAINS], b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_set1_ps((float)i);
  for (long k = 0; k < iters; ++k)
#pragma GCC unroll 24
    for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
  float s = 0.0f;
  for (int i = 0; i < CHAINS; ++i) s += _mm512_reduce_add_ps(a[i]);
  return s;
}

__attribute__((target("avx2,fma"))) static float loop256(long iters) {
  __m256 a[CHAINS / 2], b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  float out[8], s = 0.0f;
  for (int i = 0; i < CHAINS / 2; ++i) a[i] = _mm256_set1_ps((float)i);
  for (long k = 0; k < iters; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS / 2; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  for (int i = 0; i < CHAINS / 2; ++i) {
    _mm256_storeu_ps(out, a[i]);
    for (int j = 0; j < 8; ++j) s += out[j];
  }
  return s;
}

static void* run(void* p) {
  job_t* j = (job_t*)p;
  j->sink = j->width == 512 ? loop512(j->iters) : loop256(j->iters);
  return 0;
}

/* The widest FMA this CPU has: 512, 256 or 0 (none). */
int fma_width(void) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 256;
  return 0;
}

/* FLOP done by `threads` threads each running `iters` iterations of independent FMA chains
   of `width` bits (2 FLOP per lane per FMA); the caller times the call. */
double fma_run(int threads, long iters, int width) {
  pthread_t th[256];
  job_t jobs[256];
  int lanes = width / 32, chains = width == 512 ? CHAINS : CHAINS / 2;
  if (threads > 256) threads = 256;
  for (int t = 0; t < threads; ++t) {
    jobs[t].iters = iters;
    jobs[t].width = width;
    pthread_create(&th[t], 0, run, &jobs[t]);
  }
  for (int t = 0; t < threads; ++t) pthread_join(th[t], 0);
  return 2.0 * lanes * chains * (double)iters * threads;
}
"""


def _fma_loop(threads: int, rounds: int, seconds: float = 0.1) -> dict[str, Any] | None:
    """FLOP/s of :data:`_FMA_LOOP_C` on ``threads`` threads (best of ``rounds`` runs of about
    ``seconds`` each), or None where it cannot be compiled or the CPU has no FMA."""
    import ctypes
    import shutil
    import subprocess
    import tempfile

    cc = shutil.which(os.environ.get("CC") or "cc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory(prefix="aigxctl-fma-") as tmp:
        src, lib = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma.so")
        with open(src, "w") as f:
            f.write(_FMA_LOOP_C)
        try:
            subprocess.run([cc, "-O2", "-shared", "-fPIC", src, "-o", lib, "-lpthread"],
                           check=True, capture_output=True, timeout=120)  # fmt: skip
            dll = ctypes.CDLL(lib)
        except (OSError, subprocess.SubprocessError):
            return None
    dll.fma_run.restype = ctypes.c_double
    dll.fma_run.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]
    width = int(dll.fma_width())
    if width == 0:
        return None
    start = time.perf_counter()
    flop = dll.fma_run(threads, 200_000, width)
    iters = max(1000, int(200_000 * seconds / max(time.perf_counter() - start, 1e-6)))
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        flop = dll.fma_run(threads, iters, width)
        rates.append(flop / (time.perf_counter() - start))
    return {"flop_per_s": max(rates), "width_bits": width, "compiler": cc}


def _gemm_peak(threads: int, rounds: int = 3, n: int = 2048) -> dict[str, float]:
    """FLOP/s of an ``n`` x ``n`` x ``n`` float32 matrix product (2 n^3 FLOP) on ``threads``
    threads, best of ``rounds``, with torch.mm (MKL), oneDNN (torch's mkldnn linear) and
    numpy.matmul (its BLAS)."""
    import warnings

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tc, c = torch.empty(n, n), np.empty((n, n), np.float32)
        fns: dict[str, Callable[[], object]] = {
            "torch.mm": lambda: torch.mm(ta, tb, out=tc),
            "numpy.matmul": lambda: np.matmul(a, b, out=c),
        }
        if torch.backends.mkldnn.is_available():
            with warnings.catch_warnings():  # its TorchScript module is deprecated, not gone
                warnings.simplefilter("ignore")
                from torch.utils import mkldnn

                dnn = mkldnn.to_mkldnn(torch.nn.Linear(n, n, bias=False).eval())
            xd = ta.to_mkldnn()
            fns["onednn"] = lambda: dnn(xd)
        best = {}
        with torch.no_grad():
            for name, fn in fns.items():
                fn()
                times = []
                for _ in range(rounds):
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
                best[name] = 2.0 * n**3 / min(times)
    finally:
        torch.set_num_threads(before)
    return best


def fma_peak(threads: int, rounds: int = 5, gemm: bool = True) -> dict[str, Any]:
    """The machine's float32 FMA peak as measured here, on ``threads`` threads: a plain loop of
    independent FMA chains at the widest vector width the CPU has (:data:`_FMA_LOOP_C`, compiled
    with the system C compiler), best of ``rounds`` runs of 0.1 s. Where that cannot run, the
    best float32 GEMM of torch (MKL), oneDNN and NumPy instead: a lower bound, and a loose one
    on some CPUs (MKL takes its AVX2 path on AMD). Both are in the result (the GEMMs only with
    ``gemm`` or without the loop)."""
    loop = _fma_loop(threads, rounds)
    gemms = _gemm_peak(threads) if gemm or loop is None else {}
    if loop is not None:
        peak, by = loop["flop_per_s"], f"{loop['width_bits']}-bit FMA loop"
        what = (f"a loop of independent {loop['width_bits']}-bit float32 FMA chains on "
                f"{threads} threads, best of {rounds} runs of 0.1 s")  # fmt: skip
    else:
        by = max(gemms, key=lambda k: gemms[k])
        peak = gemms[by]
        what = (f"no FMA loop here (no C compiler): the best float32 2048^3 GEMM ({by}) on "
                f"{threads} threads, best of 3, a lower bound of the FMA peak")  # fmt: skip
    return {"flop_per_s": peak, "by": by, "what": what, "threads": threads,
            "fma_loop": loop, "gemm": gemms}  # fmt: skip


def _reference_gdm(m: int, hidden: int, steps: int, seed: int) -> GDM:
    """A GDM of the reference denoiser shape, random init (eps prediction, vp schedule)."""
    import torch

    from aigxctl.diffusion import Schedule
    from aigxctl.model import GDM, Denoiser

    torch.manual_seed(seed)
    return GDM(
        denoiser=Denoiser(m, hidden).eval(),
        schedule=Schedule.create("vp", steps),
        pred="eps",
        cond_mean=np.full(m, 4.0),
        cond_std=np.full(m, 1.7),
        total_power=0.2,
        noise=1.0,
    )


def ddim_decision(model: GDM) -> torch.nn.Module:
    """The model's whole DDIM decision (eta = 0, deterministic given its start noise) as one
    PyTorch module, for torch.compile and the ONNX export: ``(gains [B, M] float32, z0 [B, M]
    float32) -> powers [B, M]`` at the model's P. It has the fused core's hoisting, with the
    core's own packed weights (aigxctl.fused): the condition branch once, its second layer
    folded into the first trunk layer, the time branch a per-step bias; the T steps unrolled
    with the schedule's constants. Equals ``model.allocate(gains, mode="ddim",
    backend="torch")`` with that start noise (bench checks it within 1e-5 before timing)."""
    import torch
    import torch.nn.functional as F

    sampler = model.fused_sampler()
    if sampler is None:
        raise UserError(f"the fused sampler cannot run this model: {model._fused_reason}")
    m, hidden, steps = sampler.m, sampler.hidden, sampler.steps
    layout = core.pack_layout(m, hidden, steps)

    def part(name: str, *shape: int) -> torch.Tensor:
        size = int(np.prod(shape))
        return torch.from_numpy(sampler.pack[layout[name] : layout[name] + size].reshape(shape))

    sch = model.schedule
    consts = [
        (float(sch.sqrt_recip_abar[i]), float(sch.sqrt_recipm1_abar[i]), float(sch.sqrt_abar[i]),
         float(sch.sqrt_1m_abar[i]), float(sch.sqrt_abar_prev[i]),
         float(sch.sqrt_1m_abar_prev[i]))
        for i in reversed(range(steps))
    ]  # fmt: skip
    x0_pred, total_power = model.pred == "x0", float(model.total_power)

    class Decision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # nn.Linear's layout [out, in]: the pack stores the transposes.
            weights = {
                "mean": part("cond_mean", m), "std": part("cond_std", m),
                "w_c1": part("w_c1", m, hidden).T, "b_c1": part("b_c1", hidden),
                "w_cc": part("w_cc", hidden, hidden).T, "b_cc": part("b_cc", hidden),
                "w_x": part("w_x", m, hidden).T, "step_bias": part("step_bias", steps, hidden),
                "w_2": part("w_2", hidden, hidden).T, "b_2": part("b_2", hidden),
                "w_3": part("w_3", hidden, layout["m_pad"])[:, :m].T,
                "b_3": part("b_3", layout["m_pad"])[:m],
            }  # fmt: skip
            for name, value in weights.items():
                self.register_buffer(name, value.contiguous().clone())

        def forward(self, gains: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
            c = (gains - self.mean) / self.std
            cc = F.linear(F.mish(F.linear(c, self.w_c1, self.b_c1)), self.w_cc, self.b_cc)
            x = z0
            for k, (a, b, sa, s1m, sap, s1mp) in enumerate(consts):
                h1 = F.mish(F.linear(x, self.w_x, self.step_bias[steps - 1 - k]) + cc)
                out = F.linear(F.mish(F.linear(h1, self.w_2, self.b_2)), self.w_3, self.b_3)
                x0 = (out if x0_pred else a * x - b * out).clamp(-1.0, 1.0)
                x = sap * x0 + s1mp * ((x - sa * x0) / s1m)
            mag = x.abs()
            total = mag.sum(-1, keepdim=True)
            ok = total > 0
            frac = torch.where(ok, mag / torch.where(ok, total, torch.ones_like(total)),
                               torch.full_like(mag, 1.0 / m))  # fmt: skip
            return frac * total_power

    return Decision().eval()


def export_onnx(decision: torch.nn.Module, m: int, path: str) -> None:
    """Export :func:`ddim_decision` to ONNX at ``path`` (inputs ``gains``, ``z0``; output
    ``power``; the batch dimension dynamic), with torch.onnx's TorchScript exporter."""
    import warnings

    import torch

    z = torch.zeros(2, m)
    with warnings.catch_warnings():  # the exporter's notes on the legacy path are not ours
        warnings.simplefilter("ignore")
        torch.onnx.export(decision, (z + 1.0, z), path, dynamo=False, opset_version=18,
                          input_names=["gains", "z0"], output_names=["power"],
                          dynamic_axes={n: {0: "B"} for n in ("gains", "z0", "power")})  # fmt: skip


class _Contenders:
    """What :func:`sample` times on the CPU for one model, each giving the DDIM decision for
    float32 gains and the start noise of seed :data:`DECISION_SEED`:

    - ``fused``: ``model.allocate(gains, mode="ddim", best_of=1, seed=...)`` as a user calls
      it (validation, float64 out, the core draws its Philox noise), backend fused;
    - ``fused_bf16``: the same call with precision bf16;
    - ``torch``: the same call with backend torch (the plain sampler, its Philox noise drawn);
    - ``torch_compile``: torch.compile of :func:`ddim_decision` (fullgraph, static shapes,
      Inductor freezing), given the start noise;
    - ``onnxruntime`` / ``openvino``: its ONNX export (f32, CPU), given the start noise.

    All on ``threads`` threads. A contender that cannot run, or does not equal the torch
    backend within :data:`EQUAL_ATOL` (:data:`ATOL` for bf16), is left out with its reason in
    ``errors``."""

    def __init__(self, model: GDM, names: list[str], threads: int, workdir: str) -> None:
        self.model, self.names, self.threads = model, list(names), threads
        self.errors: dict[str, str] = {}
        self.notes: dict[str, dict[str, str]] = {}
        self.versions: dict[str, str] = {}
        self.compiled: Any = None
        self.ort_session: Any = None
        self.ov_core: Any = None
        self.onnx_path = os.path.join(workdir, "decision.onnx")
        wants_export = any(n in ("torch_compile", *RUNTIMES) for n in names)
        self.decision = ddim_decision(model) if wants_export else None
        if any(n in RUNTIMES for n in names):
            self._try("export", lambda: export_onnx(self.decision, model.m, self.onnx_path))
        if "torch_compile" in names:
            self._try("torch_compile", self._compile)
        if "onnxruntime" in names and "export" not in self.errors:
            self._try("onnxruntime", self._ort)
        if "openvino" in names and "export" not in self.errors:
            self._try("openvino", self._ov)
        if "export" in self.errors:
            for n in RUNTIMES:
                if n in names:
                    self.errors[n] = f"ONNX export failed: {self.errors['export']}"
        self.errors.pop("export", None)

    def _try(self, name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:  # an optional contender: report it, time the others
            self.errors[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"

    def _compile(self) -> None:
        import torch

        self.versions["torch"] = torch.__version__
        self.compiled = torch.compile(self.decision, dynamic=False, fullgraph=True,
                                      options={"freezing": True})  # fmt: skip

    def _ort(self) -> None:
        import onnxruntime as ort

        self.versions["onnxruntime"] = ort.__version__
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = self.threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.ort_session = ort.InferenceSession(self.onnx_path, opts,
                                                providers=["CPUExecutionProvider"])  # fmt: skip

    def _ov(self) -> None:
        import openvino as ov

        self.versions["openvino"] = ov.get_version()
        self.ov_core = ov.Core()
        self.ov_model = self.ov_core.read_model(self.onnx_path)

    def _ov_request(self, b: int) -> Any:
        """An OpenVINO infer request of the decision compiled for batch ``b`` (static shapes),
        f32, ``threads`` threads, latency hint. Where the CPU plugin's subgraph fusion
        ("snippets") fails to compile it (OpenVINO 2026.4 does for some small batches: "Supported
        precisions set is not available for Mish operation"), compiled again without it, and
        that is noted in ``notes``."""
        model = self.ov_model.clone()
        model.reshape({"gains": [b, self.model.m], "z0": [b, self.model.m]})
        config = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32",
                  "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
        try:
            compiled = self.ov_core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            compiled = self.ov_core.compile_model(
                model, "CPU", {**config, "SNIPPETS_MODE": "DISABLE"}
            )
            why = str(exc).strip().splitlines()[-1][:160]
            self.notes.setdefault("openvino", {})[str(b)] = f"SNIPPETS_MODE=DISABLE ({why})"
        return compiled.create_infer_request()

    def calls(self, g: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
        """One decision per contender on the gains ``g`` (float32 [B, M])."""
        import torch

        model, seed = self.model, DECISION_SEED
        z0 = np.ascontiguousarray(model.noise_for(seed, len(g))[0])
        gt, zt = torch.from_numpy(g), torch.from_numpy(z0)
        fns: dict[str, Callable[[], np.ndarray]] = {}

        def api(backend: str, precision: str = "f32") -> Callable[[], np.ndarray]:
            return lambda: model.allocate(g, mode="ddim", best_of=1, seed=seed, backend=backend,
                                          precision=precision)  # fmt: skip

        fns["fused"], fns["torch"] = api("fused"), api("torch")
        fns["fused_bf16"] = api("fused", "bf16")
        if self.compiled is not None:

            def compiled() -> np.ndarray:
                with torch.no_grad():
                    return self.compiled(gt, zt).numpy()

            fns["torch_compile"] = compiled
        if self.ort_session is not None:
            sess, feed = self.ort_session, {"gains": g, "z0": z0}
            fns["onnxruntime"] = lambda: sess.run(None, feed)[0]
        if self.ov_core is not None:
            try:
                request = self._ov_request(len(g))
            except RuntimeError as exc:  # cannot compile this batch size: report, time others
                self.errors["openvino"] = f"B = {len(g)}: {str(exc).strip()[:200]}"
            else:
                feed = {"gains": g, "z0": z0}

                def openvino() -> np.ndarray:
                    request.infer(feed, share_inputs=True)
                    return request.get_output_tensor(0).data

                fns["openvino"] = openvino
        return {n: fns[n] for n in self.names if n in fns}

    def checked(self, g: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
        """:meth:`calls` of the contenders that equal the torch backend on ``g`` within
        :data:`EQUAL_ATOL` (each run once here, which also compiles what compiles lazily); the
        others go to ``errors``. Records the largest difference of each in ``last_diff``."""
        ref = self.model.allocate(g, mode="ddim", best_of=1, seed=DECISION_SEED,
                                  backend="torch")  # fmt: skip
        self.last_diff: dict[str, float] = {}
        fns = {}
        for name, fn in self.calls(g).items():
            try:
                diff = float(np.max(np.abs(np.asarray(fn(), np.float64) - ref)))
            except Exception as exc:  # a compile that fails surfaces at the first call
                self.errors[name] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                continue
            self.last_diff[name] = diff
            atol = ATOL.get(name, EQUAL_ATOL)
            if not diff <= atol:
                self.errors[name] = (f"B = {len(g)}: differs from the torch backend by "
                                     f"{diff:.2e} > {atol:g}; not timed")  # fmt: skip
                continue
            fns[name] = fn
        return fns


def _rounds(fns: dict[str, Callable[[], object]], rounds: int, min_seconds: float
            ) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per call of each function, one sample per round: each sample times enough calls
    to last ``min_seconds``, and the functions alternate round by round (the order rotated each
    round), so a slow spell of a shared machine falls on all of them. Before each sample the
    machine is left alone for ``SETTLE_S`` (the previous contender's threads spin a while after
    their last call: OpenMP's, ONNX Runtime's, OpenVINO's and the core's own) and the function
    is called once untimed, so each contender is timed as a pipeline calling it alone would
    see it."""
    inner = {}
    for name, fn in fns.items():
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        inner[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-9)))
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, count = fns[name], inner[name]
            time.sleep(SETTLE_S)
            fn()
            start = time.perf_counter()
            for _ in range(count):
                fn()
            samples[name].append((time.perf_counter() - start) / count)
    return samples


def _contender_names(contenders: list[str] | None, compile_torch: bool) -> tuple[list[str], dict]:
    """The contenders to time and those skipped with why: ``contenders`` as asked (an unknown
    name, or a runtime that is not installed, is an error), or all of them, less torch.compile
    without ``compile_torch`` and less the runtimes that are not installed."""
    import importlib.util

    asked = contenders is not None
    names = list(CONTENDERS) if contenders is None else list(dict.fromkeys(contenders))
    for n in names:
        if n not in CONTENDERS:
            raise UserError(f"--contenders must list names from {', '.join(CONTENDERS)}, "
                            f"got {n!r}")  # fmt: skip
    for n in ("fused", "torch"):  # the subject and the reference of the equality check
        if n not in names:
            names.insert(CONTENDERS.index(n), n)
    skipped = {}
    if not compile_torch and "torch_compile" in names:
        names.remove("torch_compile")
        skipped["torch_compile"] = "--no-compile"
    for n, module in RUNTIMES.items():
        if n in names and importlib.util.find_spec(module) is None:
            if asked:
                raise UserError(f"--contenders {n}: {module} is not installed here "
                                "(pip install 'aigxctl[bench]')")  # fmt: skip
            names.remove(n)
            skipped[n] = "not installed (pip install 'aigxctl[bench]')"
    return names, skipped


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
    contenders: list[str] | None = None,
) -> dict[str, Any]:
    """Allocations/s of the fused core's DDIM decision against the contenders of
    :class:`_Contenders` (plain PyTorch, torch.compile, ONNX Runtime and OpenVINO when
    installed), in one process, same weights, each checked equal to the torch backend before
    it is timed; ``repeats`` rounds with the contenders alternating, min / median / max; the
    machine's FMA peak (:func:`fma_peak`) and the fraction of it each reaches
    (:func:`decision_flops` per allocation).

    The model: the checkpoint in ``model_dir`` (timed as a user calls it: ``load_model(DIR)
    .allocate``), or else the reference denoiser shape with random init, M = ``m``, hidden
    ``hidden``, T = ``steps``. ``contenders`` (names of :data:`CONTENDERS`) limits what runs;
    by default all that are installed. ``device`` (core.resolve_device) a GPU: the checkpoint's
    allocate there (fused vs torch), or :func:`sample_gpu`.
    """
    _check_repeats(repeats)  # before importing torch (seconds): mistakes fail fast
    dev = core.resolve_device(device)
    names, skipped = _contender_names(contenders, compile_torch)
    if model_dir is not None and dev != "cpu":
        return _sample_api(model_dir, batches, repeats, seed, dev)
    if dev != "cpu":
        return sample_gpu(batches, repeats, dev, m, hidden, steps, compile_torch, seed)
    if model_dir is None:
        if not 1 <= m <= MAX_CHANNELS:
            raise UserError(f"m must be >= 1 and <= {MAX_CHANNELS}, got {m}")
        _check_batches(batches, m)
    import tempfile

    import torch

    from aigxctl.checkpoint import load_model
    from aigxctl.model import GDM

    if model_dir is not None:
        model = load_model(model_dir)
        if not isinstance(model, GDM):
            raise UserError(f"{model_dir}: bench sample times a gdm model, this one is "
                            f"{model.arch}")  # fmt: skip
        model.backend_for("fused")  # a clear error if the compiled sampler cannot run it
        _check_batches(batches, model.m)
        about = {"path": str(model_dir), "api": "allocate", "hidden": int(model.config["hidden"])}
    else:
        model = _reference_gdm(m, hidden, steps, seed)
        about = {"hidden": hidden}
    threads = core.num_threads()
    flop = decision_flops(model.m, about["hidden"], model.T)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # every contender on the core's threads
    load = [os.getloadavg()[0]]
    try:
        peak = fma_peak(threads)
        with tempfile.TemporaryDirectory(prefix="aigxctl-bench-") as tmp:
            contest = _Contenders(model, names, threads, tmp)
            rng = np.random.default_rng(seed)
            timed = []
            for b in batches:
                g = rng.uniform(1.0, 7.0, (b, model.m)).astype(np.float32)
                fns = contest.checked(g)
                timed.append((b, _rounds(fns, repeats, 0.2), dict(contest.last_diff)))
        # Measured again after the cases: on a shared machine the better of the two is the
        # closer to the peak (both kept).
        after = fma_peak(threads, gemm=False)
        if after["flop_per_s"] > peak["flop_per_s"]:
            after, peak = peak, after
        peak["other_measurement"] = after["flop_per_s"]
    finally:
        torch.set_num_threads(before)
    load.append(os.getloadavg()[0])
    cases = [_case(b, samples, diff, flop, peak["flop_per_s"]) for b, samples, diff in timed]
    about.update(m=model.m, steps=model.T, schedule=model.schedule.kind, pred=model.pred,
                 mode="ddim", best_of=1)  # fmt: skip
    return {
        "benchmark": "sample",
        "device": "cpu",
        "model": about,
        "threads": threads,
        "torch_threads": threads,
        "rounds": repeats,
        "load_average": {"before": load[0], "after": load[1]},
        "flop_per_allocation": flop,
        "fma_peak": peak,
        "bf16_on": bf16_engine(),
        "contenders": names,
        "skipped": skipped,
        "errors": contest.errors,
        "notes": contest.notes,
        "versions": contest.versions,
        "torch_compile_error": contest.errors.get("torch_compile"),
        "machine": machine(),
        "cases": cases,
    }


def _case(b: int, samples: dict[str, list[float]], diff: dict[str, float], flop: int,
          peak: float) -> dict[str, Any]:  # fmt: skip
    """One batch size's figures from the seconds per call of each contender."""
    rate = {n: b / statistics.median(s) for n, s in samples.items()}
    spread = {n: {"min": b / max(s), "median": rate[n], "max": b / min(s)} for n, s in
              samples.items()}  # fmt: skip
    return {
        "batch": b,
        "allocations_per_s": rate,
        "spread": spread,
        "speedup_vs": {n: rate["fused"] / r for n, r in rate.items() if n != "fused"},
        "speedup_vs_torch": rate["fused"] / rate["torch"],
        "fraction_of_peak": {n: r * flop / peak for n, r in rate.items()},
        "max_abs_diff_vs_torch": {n: diff[n] for n in samples if n in diff},
    }


def _sample_api(
    model_dir: str, batches: list[int], repeats: int, seed: int, device: str
) -> dict[str, Any]:
    """:func:`sample` with ``model_dir`` on a GPU: a checkpoint's ``allocate``, fused vs torch,
    with the model on ``device`` (NumPy gains in and out, as a user calls it)."""
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


def _si(x: float) -> str:
    """A rate in 3 significant digits with an SI suffix: 912, 36.9k, 1.85M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale * 0.9995:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _times(ratio: float) -> str:
    """A ratio in 3 significant digits, whole above 100: 2.71x, 19.3x, 1,560x."""
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def sample_table(results: dict[str, Any]) -> Any:
    """A Rich table of :func:`sample` results: on the CPU one row per batch size and contender
    (median allocations/s, min..max over the rounds, how many times faster the fused core is,
    the fraction of the FMA peak), narrow enough for 80 columns."""
    from aigxctl.report import table

    if results.get("device", "cpu") != "cpu":
        if "path" not in results["model"]:
            return _sample_gpu_table(results)
        return _sample_api_table(results)
    rows = []
    for c in results["cases"]:
        for n, r in c["allocations_per_s"].items():
            s = c["spread"][n]
            rows.append([
                f"{c['batch']:,}" if n == "fused" else "", LABELS[n], _si(r),
                f"{_si(s['min'])}..{_si(s['max'])}",
                "" if n == "fused" else _times(c["speedup_vs"][n]),
                f"{c['fraction_of_peak'][n]:.1%}",
            ])  # fmt: skip
    mdl, peak = results["model"], results["fma_peak"]
    what = f"{mdl['path']}.allocate" if "path" in mdl else "random-init model"
    return table(
        f"DDIM decisions/s, {what} (M={mdl['m']}, hidden {mdl['hidden']}, T={mdl['steps']}), "
        f"{results['threads']} threads, median of {results['rounds']} rounds; FMA peak "
        f"{peak['flop_per_s'] / 1e9:.0f} GFLOP/s ({peak['by']}), "
        f"{results['flop_per_allocation'] / 1e6:.2f} MFLOP per decision",
        ["B", "contender", "alloc/s", "min..max", "fused is", "of peak"],
        rows,
    )


def bf16_engine() -> str:
    """What precision bf16 runs on here, at the active ISA level: AMX tiles, AVX-512 BF16 dot
    products, or FMAs."""
    from aigxctl import core

    info = core.build_info()
    if info["isa"] != "avx512":
        return "FMAs"
    if info["amx"]:
        return "AMX tiles"
    return "AVX-512 BF16 dot products" if info["bf16_dot_products"] else "FMAs"


def sample_notes(results: dict[str, Any]) -> list[str]:
    """Lines for stderr under the table: contenders skipped or left out, and why, and what
    bf16 ran on."""
    lines = [f"{LABELS.get(n, n)} skipped: {why}" for n, why in results.get("skipped", {}).items()]
    lines += [f"{LABELS.get(n, n)} left out: {why}" for n, why in results.get("errors", {}).items()]
    lines += [
        f"{LABELS.get(n, n)} at B = {b}: {how}"
        for n, by_batch in results.get("notes", {}).items()
        for b, how in by_batch.items()
    ]
    if "fused_bf16" in results.get("contenders", ()) and results.get("bf16_on"):
        lines.append(f"fused bf16 ran on {results['bf16_on']}; its 'of peak' is of the f32 FMA "
                     "peak")  # fmt: skip
    load, cpus = results.get("load_average"), results.get("machine", {}).get("cpu_count")
    if load and cpus and max(load.values()) > 0.75 * cpus:
        lines.append(f"the machine was busy (load average {load['before']:.1f} before, "
                     f"{load['after']:.1f} after, on {cpus} CPUs): the figures are noisy, the "
                     "peak and the contenders on OpenMP threads the most")  # fmt: skip
    if not lines and results.get("torch_compile_error"):
        lines.append(f"torch.compile unavailable: {results['torch_compile_error']}")
    return lines


def _sample_api_table(results: dict[str, Any]) -> Any:
    """The table of :func:`_sample_api` (a checkpoint's allocate on a GPU, fused vs torch)."""
    from aigxctl.report import table

    rows = [[f"{c['batch']:,}", _si(c["allocations_per_s"]["fused"]),
             _si(c["allocations_per_s"]["torch"]), f"{c['speedup_vs_torch']:.1f}x"]
            for c in results["cases"]]  # fmt: skip
    mdl = results["model"]
    return table(
        f"{mdl['path']}.allocate, allocations/s (M={mdl['m']}, hidden {mdl['hidden']}, "
        f"T={mdl['steps']}, {mdl['mode']}, on {results['device']})",
        ["B", "fused", "torch", "fused / torch"],
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

        self.model = _reference_gdm(m, hidden, steps, seed)
        self.fused, self.steps = self.model.fused_sampler(), steps
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
