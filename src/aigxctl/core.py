"""The one door to the compiled core (``aigxctl._core``).

Everything that reaches C++ passes through here: inputs are validated (finite, non-negative
gains, positive power and noise), made C-contiguous in float32/float64, and dispatched to the CPU
thread pool or, for CUDA tensors, to the CUDA kernels on PyTorch's current stream. A tensor on a
GPU that the core cannot use (built without CUDA, no driver) is computed on the CPU and copied
back, so callers never need to know how the core was built. Torch is imported only when a torch
tensor is passed, which keeps the NumPy-only paths (and the CLI's start-up) light.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Any, NamedTuple

import numpy as np

from aigxctl import _core
from aigxctl.errors import InvalidGains, UserError
from aigxctl.settings import PRECISIONS

Array = Any  # a NumPy array or a torch tensor

__all__ = [
    "build_info",
    "check_gains",
    "check_level",
    "check_precision",
    "check_tensor",
    "cpu_pack",
    "fp_mode",
    "fused_sample",
    "fused_sample_cuda",
    "is_cuda_tensor",
    "is_torch",
    "isa",
    "isa_available",
    "lone_tile",
    "num_threads",
    "pack_layout",
    "philox_normals",
    "power_rows",
    "resolve_device",
    "set_isa",
    "set_lone_tile",
    "set_num_threads",
    "sum_rate",
    "waterfill",
]


def build_info() -> dict[str, Any]:
    """How the core was built and what it sees: CUDA kernels compiled, GPUs usable, threads,
    the instruction-set level its CPU loops run (``isa``) and the levels it could run, and
    whether precision bf16 has the CPU's BF16 dot products (``bf16_dot_products``) and AMX
    tiles (``amx``, used first)."""
    return {
        "cuda_built": bool(_core.cuda_built()),
        "cuda_devices": int(_core.cuda_device_count()),
        "threads": int(_core.num_threads()),
        "isa": isa(),
        "isa_available": isa_available(),
        "bf16_dot_products": bool(_core.bf16_dot_products()),
        "amx": bool(_core.amx_ready()),
    }


# --- instruction-set level of the CPU loops -----------------------------------------------------

ISA_LEVELS = ("baseline", "avx2", "avx512")


def isa() -> str:
    """The instruction-set level the core's CPU loops (fused sampler, water-filling) use now:
    ``baseline``, ``avx2`` or ``avx512``; the best one the CPU runs unless set otherwise."""
    return str(_core.isa())


def isa_available() -> list[str]:
    """The levels this build and this CPU can run, lowest first."""
    return [str(x) for x in _core.isa_available()]


def set_isa(level: str) -> None:
    """Run the CPU loops at ``level`` from the next call on (all levels give the same results
    within 1e-5 for the sampler and exactly for water-filling). UserError for an unknown or
    unavailable level."""
    if level not in ISA_LEVELS:
        raise UserError(f"unknown ISA {level!r}: expected one of {', '.join(ISA_LEVELS)}")
    if level not in isa_available():
        raise UserError(
            f"ISA {level!r} is not available on this machine (available: "
            f"{', '.join(isa_available())})"
        )
    _core.set_isa(level)


def _isa_from_environment() -> None:
    """AIGX_ISA=baseline|avx2|avx512 forces a level at import; an unavailable or unknown one
    falls back to the best level, with a warning."""
    wanted = os.environ.get("AIGX_ISA", "").strip().lower()
    if not wanted:
        return
    try:
        set_isa(wanted)
    except UserError as exc:
        warnings.warn(f"AIGX_ISA ignored: {exc}; using {isa()}", RuntimeWarning, stacklevel=2)


_isa_from_environment()


def fp_mode() -> int:
    """The calling thread's floating-point control word (MXCSR on x86, FPCR on AArch64, 0
    elsewhere). The core flushes subnormals only inside its network evaluation and restores
    each thread's mode, so this is the same before and after every call."""
    return int(_core.fp_mode())


LONE_TILE = ("auto", "shared", "alone")


def lone_tile() -> str:
    """How the fused sampler runs a lone tile (B <= 16 rows): :func:`set_lone_tile`."""
    return LONE_TILE[int(_core.lone_tile())]


def set_lone_tile(how: str) -> None:
    """``auto`` (the default): a lone tile's layers are shared by the pool's threads or run on
    the calling thread alone, whichever has been faster lately for that model and row count
    (sharing loses when another process holds the other cores); ``shared`` or ``alone`` force
    one way, for measurements and tests (a tile whose steps' second layers would take more than
    1 MB, e.g. 80 steps of 16 rows of 256, always runs alone). The allocations are the same
    either way."""
    if how not in LONE_TILE:
        raise UserError(f"lone tile must be one of {', '.join(LONE_TILE)}, got {how!r}")
    _core.set_lone_tile(LONE_TILE.index(how))


def num_threads() -> int:
    """Threads of the core's CPU pool (the calling thread included)."""
    return int(_core.num_threads())


def set_num_threads(n: int) -> None:
    """Resize the core's CPU pool; ``n`` counts the calling thread, so 1 means no workers."""
    if n < 1:
        raise UserError(f"threads must be >= 1, got {n}")
    _core.set_num_threads(int(n))


def is_torch(x: object) -> bool:
    """True for a torch tensor (checked without importing torch)."""
    if isinstance(x, np.ndarray):  # the common case, answered first: a B = 1 call asks ~5 times
        return False
    return type(x).__module__.split(".")[0] == "torch"


def is_cuda_tensor(x: object) -> bool:
    """True for a torch tensor on a GPU that the core's CUDA kernels can use."""
    return is_torch(x) and x.is_cuda and _core.cuda_built() and _core.cuda_device_count() > 0


# --- devices, and the one door to the CUDA kernels ---------------------------------------------

_DEVICE_SPEC = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def resolve_device(spec: Any = "auto", option: str = "--device") -> str:
    """Where to compute: ``"cpu"`` or ``"cuda:N"``, from ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (or a ``torch.device``). ``auto`` is a GPU when both the core (built with CUDA, a driver and
    a device) and torch see one, else the CPU; ``cuda`` is torch's current GPU. Asking for a GPU
    that is not there is a :class:`UserError` of one line naming ``option``. Torch is imported
    only when the core sees a GPU."""
    text = str(spec if spec is not None else "auto").strip().lower()
    match = _DEVICE_SPEC.fullmatch(text)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UserError(f"{option} must be auto, cpu, cuda or cuda:N, got {str(spec)!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return "cpu"
    why = None
    if not _core.cuda_built():
        why = "the core was built without CUDA (rebuild with AIGX_CUDA=ON)"
    elif _core.cuda_device_count() == 0:
        why = "the core sees no GPU (no NVIDIA driver or device)"
    else:
        import torch

        if not torch.cuda.is_available():
            why = "torch sees no GPU (a CPU-only torch build?)"
    if why is not None:
        if kind == "auto":
            return "cpu"
        raise UserError(f"{option} {text}: no usable CUDA GPU here: {why}")
    import torch

    count = min(int(_core.cuda_device_count()), torch.cuda.device_count())
    n = torch.cuda.current_device() if index is None else int(index)
    if n >= count:
        raise UserError(f"{option} {text}: there {'is' if count == 1 else 'are'} only {count} "
                        f"GPU{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")  # fmt: skip
    return f"cuda:{n}"


def check_tensor(
    name: str, t: Any, *, device: Any, dtypes: tuple[Any, ...], shape: tuple[int | None, ...]
) -> int:
    """The one check of a tensor handed to a CUDA kernel (every CUDA entry point's tensors pass
    through it, via :func:`_launch`): a torch tensor on ``device``, of one of ``dtypes``,
    C-contiguous, of ``shape`` (a None entry takes any size). Returns its data pointer; raises
    TypeError or ValueError naming ``name`` and what is wrong. A raw pointer of the wrong kind
    would make the kernel read or write the wrong memory, so nothing is converted here."""
    if not is_torch(t) or not hasattr(t, "data_ptr"):
        raise TypeError(f"{name}: expected a torch tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name}: expected {allowed}, got {str(t.dtype).replace('torch.', '')}")
    if t.ndim != len(shape) or any(
        w is not None and w != s for w, s in zip(shape, t.shape, strict=True)
    ):
        want = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {list(t.stride())}")
    if t.device != _torch_device(device):
        raise ValueError(f"{name}: expected a tensor on {_torch_device(device)}, got {t.device}")
    return int(t.data_ptr())


def _torch_device(device: Any) -> Any:
    import torch

    d = torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if d == torch.device("cuda") else d


class _Buf(NamedTuple):
    """A tensor argument of a CUDA entry point, with what :func:`check_tensor` requires of it;
    ``tensor`` None passes a null pointer (an optional input)."""

    name: str
    tensor: Any
    dtypes: tuple[Any, ...]
    shape: tuple[int | None, ...]


def _launch(entry: str, device: Any, *args: Any, **options: Any) -> None:
    """Call ``_core.<entry>(gpu_index, *args, stream)`` on ``device`` (a CUDA torch.device), on
    PyTorch's current stream there: each :class:`_Buf` in ``args`` is checked by
    :func:`check_tensor` and passed as its data pointer. The core selects the GPU itself (it has
    its own CUDA runtime, which ``torch.cuda.device`` does not reach) and checks each launch;
    ``AIGX_CUDA_SYNC=1`` makes it wait for the kernel and report what failed there.
    ``options`` go to the entry point by name (after the stream)."""
    import torch

    if getattr(device, "type", None) != "cuda":  # every entry point runs where its gains are
        raise ValueError(f"{entry}: the CUDA kernels take CUDA tensors, got gains on {device}")
    device = _torch_device(device)

    def value(a: Any) -> Any:
        if not isinstance(a, _Buf):
            return a
        if a.tensor is None:
            return 0
        return check_tensor(a.name, a.tensor, device=device, dtypes=a.dtypes, shape=a.shape)

    values = [value(a) for a in args]
    stream = torch.cuda.current_stream(device).cuda_stream
    getattr(_core, entry)(device.index, *values, stream, **options)


def _floats() -> tuple[Any, Any]:
    import torch

    return (torch.float32, torch.float64)


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < math.inf:  # NaN fails too
        raise UserError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_level(name: str, value: float) -> float:
    """A power level (P or sigma^2) given by a person: finite and a normal float > 0. Below
    ~2.2e-308 it loses its precision and every rate rounds to 0, so it is refused up front."""
    _check_positive(name, value)
    if value < np.finfo(np.float64).tiny:
        raise UserError(
            f"{name} must be a finite number >= {np.finfo(np.float64).tiny:.4g} (a normal "
            f"float), got {value!r}"
        )
    return float(value)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_gains(gains: np.ndarray, float32: str | None = None) -> None:
    """Raise InvalidGains at the first NaN, infinite or negative entry of a 2-D array; with
    ``float32`` (what computes in float32: "the model"), also at the first beyond float32's
    range."""
    bad = ~np.isfinite(gains) | (gains < 0)
    if float32 is not None:
        with np.errstate(invalid="ignore"):
            bad |= gains > _FLOAT32_MAX
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    value = float(gains[row, col])
    if not np.isfinite(value):
        reason = "gains must be finite"
    elif value < 0:
        reason = "gains must be >= 0"
    else:
        reason = f"gains must be <= 3.4e38 (float32) for {float32}"
    raise InvalidGains(row, col, value, reason)


def _power_array(total_power: Any, rows: int, lead_shape: tuple[int, ...]) -> np.ndarray:
    """Total power as float64 [1] (one for all rows) or [rows] (one per row), validated."""
    if is_torch(total_power):
        total_power = total_power.detach().cpu().double().numpy()
    try:
        p = np.asarray(total_power, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(
            f"total_power must be a number or an array of numbers, got {total_power!r}"
        ) from None
    if p.ndim == 0 or p.size == 1:
        p = p.reshape(1)
    elif p.shape == lead_shape:
        p = np.ascontiguousarray(p.reshape(rows))
    else:
        raise UserError(
            f"total_power must be a scalar or have the gains' leading shape {lead_shape}, "
            f"got shape {p.shape}"
        )
    if not ((p > 0).all() and np.isfinite(p).all()):  # NaN fails the first test
        i = int(np.argmax(~np.isfinite(p) | ~(p > 0)))
        where = f" (row {i})" if p.size > 1 else ""
        raise UserError(f"total_power must be finite and > 0, got {float(p[i])!r}{where}")
    return p


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) == 0:
        raise UserError("gains must have at least one dimension (the channels)")
    if shape[-1] == 0:
        raise UserError("gains must have at least one channel")


def host_array(gains: Any) -> np.ndarray:
    """Gains of any kind (NumPy, a torch tensor anywhere, nested lists) as a NumPy array of real
    numbers on the host (a tensor as float64, which holds every float dtype of torch exactly,
    bfloat16 included, that NumPy lacks); neither shape nor values checked."""
    try:
        g = gains.detach().cpu().double().numpy() if is_torch(gains) else np.asarray(gains)
    except (TypeError, ValueError) as exc:  # ragged rows, objects NumPy cannot hold
        raise UserError(f"gains must be an array of numbers: {exc}") from None
    if g.dtype.kind not in "fiub":
        raise UserError(f"gains must be real numbers, got an array of {g.dtype}")
    return g


def as_host_gains(gains: Any) -> np.ndarray:
    """:func:`host_array` with the shape checked ``[..., M]``, M >= 1 (not the values:
    :func:`check_gains`)."""
    g = host_array(gains)
    _check_shape(g.shape)
    return g


def _as_rows(gains: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """View gains [..., M] as C-contiguous float32/float64 [rows, M]."""
    _check_shape(gains.shape)
    if gains.dtype not in (np.float32, np.float64):
        gains = gains.astype(np.float32 if np.issubdtype(gains.dtype, np.floating) else np.float64)
    lead = gains.shape[:-1]
    return np.ascontiguousarray(gains.reshape(-1, gains.shape[-1])), lead


def _waterfill_numpy(gains: np.ndarray, total_power: Any, noise: float) -> tuple[np.ndarray, ...]:
    rows2d, lead = _as_rows(gains)
    p = _power_array(total_power, rows2d.shape[0], lead)
    power, level = _core.waterfill(rows2d, p, noise)
    # The core validates as it goes: a row with a NaN, infinite or negative gain gets level NaN.
    if np.isnan(level).any():
        check_gains(rows2d)
    power = power.reshape(gains.shape)
    if np.issubdtype(gains.dtype, np.floating) and power.dtype != gains.dtype:
        power = power.astype(gains.dtype)  # float16 & co: computed in float32, returned as given
    return power, level.reshape(lead)


def _waterfill_torch(gains: Any, total_power: Any, noise: float) -> tuple[Any, Any]:
    import torch

    if gains.dtype not in (torch.float32, torch.float64) or not is_cuda_tensor(gains):
        host = gains.detach().cpu()
        work = (
            host.numpy() if host.dtype in (torch.float32, torch.float64) else host.double().numpy()
        )
        power, level = _waterfill_numpy(work, total_power, noise)
        out_dtype = gains.dtype if gains.dtype.is_floating_point else torch.float64
        return (
            torch.from_numpy(power).to(device=gains.device, dtype=out_dtype),
            torch.from_numpy(level).to(device=gains.device),
        )

    _check_shape(tuple(gains.shape))
    g = gains.detach().reshape(-1, gains.shape[-1]).contiguous()
    lead = tuple(gains.shape[:-1])
    rows, m = g.shape
    p = torch.from_numpy(_power_array(total_power, rows, lead)).to(g.device)
    power = torch.empty_like(g)
    level = torch.empty(rows, dtype=torch.float64, device=g.device)
    _launch("waterfill_cuda", g.device, 0 if g.dtype == torch.float32 else 1,
            _Buf("gains", g, _floats(), (rows, m)), _Buf("power", power, (g.dtype,), (rows, m)),
            _Buf("level", level, (torch.float64,), (rows,)),
            _Buf("total_power", p, (torch.float64,), (p.numel(),)), p.numel(), rows, m,
            noise)  # fmt: skip
    if bool(torch.isnan(level).any()):  # invalid gains in some row (see _waterfill_numpy)
        check_gains(g.cpu().numpy())
    return power.reshape(gains.shape), level.reshape(lead)


def waterfill(
    gains: Array, total_power: Any, noise: float = 1.0, *, return_level: bool = False
) -> Array | tuple[Array, Array]:
    """Exact water-filling power allocation.

    Args:
        gains: channel power gains ``[..., M]`` (NumPy array or torch tensor, CPU or CUDA),
            finite and >= 0. A zero gain gets zero power; an all-zero row gets all zeros.
        total_power: the power budget P > 0, a scalar or one per row (shape ``[...]``).
        noise: the noise power sigma^2 > 0.
        return_level: also return the water level mu ``[...]`` (float64).

    Returns:
        The powers ``[..., M]``, same type, dtype and device as ``gains`` (float64 for integer
        gains): ``p_n = max(0, mu - noise / g_n)`` with ``sum_n p_n = P``.
    """
    noise = _check_positive("noise", noise)
    if is_torch(gains):
        power, level = _waterfill_torch(gains, total_power, noise)
    else:
        power, level = _waterfill_numpy(np.asarray(gains), total_power, noise)
    return (power, level) if return_level else power


def sum_rate(gains: Array, power: Array, noise: float = 1.0) -> Array:
    """Sum rate ``sum_n log2(1 + g_n p_n / noise)`` in bits/s/Hz, shape ``[...]`` (float64).

    ``gains`` and ``power`` have the same shape ``[..., M]``; torch tensors give a tensor on the
    same device.
    """
    noise = _check_positive("noise", noise)
    if is_torch(gains):
        import torch

        if is_cuda_tensor(gains) and gains.dtype in (torch.float32, torch.float64):
            if tuple(power.shape) != tuple(gains.shape):
                raise UserError(f"power must have the shape of gains {tuple(gains.shape)}, got "
                                f"{tuple(power.shape)}")  # fmt: skip
            _check_shape(tuple(gains.shape))
            g = gains.detach().reshape(-1, gains.shape[-1]).contiguous()
            # Wherever power is (host, another GPU, NumPy): a copy on the gains' GPU and dtype.
            p = torch.as_tensor(power).detach().to(g.device, g.dtype).reshape(g.shape).contiguous()
            rows, m = g.shape
            rate = torch.empty(rows, dtype=torch.float64, device=g.device)
            _launch("sum_rate_cuda", g.device, 0 if g.dtype == torch.float32 else 1,
                    _Buf("gains", g, _floats(), (rows, m)), _Buf("power", p, (g.dtype,), (rows, m)),
                    _Buf("rate", rate, (torch.float64,), (rows,)), rows, m, noise)  # fmt: skip
            if bool(torch.isnan(rate).any()):
                _invalid_rate_input(g.cpu().numpy(), p.cpu().numpy(), rate.cpu().numpy())
            return rate.reshape(gains.shape[:-1])
        host = power.detach().cpu().numpy() if is_torch(power) else power
        rate = sum_rate(gains.detach().cpu().numpy(), host, noise)
        return torch.from_numpy(np.asarray(rate)).to(gains.device)

    g, lead = _as_rows(np.asarray(gains))
    p = np.asarray(power)
    if p.shape != np.asarray(gains).shape:
        raise UserError(f"power must have the shape of gains {g.shape}, got {p.shape}")
    p = np.ascontiguousarray(p.reshape(g.shape), dtype=g.dtype)
    rate = _core.sum_rate(g, p, noise)
    if np.isnan(rate).any():  # the core marks rows with an invalid gain or power
        _invalid_rate_input(g, p, rate)
    return rate.reshape(lead)


def _invalid_rate_input(g: np.ndarray, p: np.ndarray, rate: np.ndarray) -> None:
    """Raise a UserError naming the first row and column the core refused."""
    row = int(np.flatnonzero(np.isnan(rate))[0])
    for name, values in (("gains", g[row]), ("power", p[row])):
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0)))
        if bad.size:
            col = int(bad[0])
            raise UserError(
                f"sum_rate: {name}[{row}, {col}] = {float(values[col])!r}: gains and powers "
                "must be finite and >= 0"
            )
    raise UserError(f"sum_rate: row {row} could not be evaluated")  # pragma: no cover


# --- fused diffusion sampling (see aigxctl.fused for the packing) ---------------------------


def pack_layout(m: int, hidden: int, steps: int) -> dict[str, int]:
    """Offsets (in floats) of each tensor in a packed fused-sampler buffer, plus ``total``."""
    return dict(_core.pack_layout(m, hidden, steps))


def power_budget(total_power: Any, rows: int) -> float | np.ndarray:
    """The power budget, validated (> 0, finite): a Python number stays a float (one P for all
    rows, without the array checks: at B = 1 they cost more than the decision), anything else
    becomes float64 ``[rows]``."""
    if type(total_power) is float and 0.0 < total_power < math.inf:  # the common case, first
        return total_power
    if isinstance(total_power, (float, int)) and not isinstance(total_power, bool):
        return _check_positive("total_power", total_power)
    if isinstance(total_power, (bool, np.bool_)):
        raise UserError(f"total_power must be a number > 0, got {total_power!r}")
    p = _power_array(total_power, rows, (rows,))
    return np.full(rows, p[0]) if p.size == 1 else p.copy()


def power_rows(total_power: Any, rows: int) -> np.ndarray:
    """The power budget of each of ``rows`` rows, float64 ``[rows]``, validated (> 0, finite)."""
    p = power_budget(total_power, rows)
    return np.full(rows, p) if isinstance(p, float) else p


def cpu_pack(pack: np.ndarray, m: int, hidden: int, steps: int, precision: str = "f32") -> Any:
    """The CPU sampler's copy of ``pack`` (``pack_layout(m, hidden, steps)``), its weights laid
    out for the kernels in ``precision`` (f32, or bf16: weights and activations rounded to
    bfloat16 for the matrix products, sums in f32). Build it once per model."""
    flat = np.ascontiguousarray(pack, dtype=np.float32)
    return _core.CpuPack(flat, m, hidden, steps, PRECISIONS.index(check_precision(precision)))


def check_precision(precision: str) -> str:
    """``precision`` when it is one of ``settings.PRECISIONS``, else UserError."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def fused_sample(
    pack: Any,
    pred: int,
    gains: np.ndarray,
    total_power: Any,
    noise: np.ndarray | None,
    seed: int,
    mode: int,
    alloc_map: int = 0,
    float64: bool = False,
) -> np.ndarray:
    """CPU fused reverse diffusion over a :func:`cpu_pack`: raw gains ``[B, M]`` -> allocations
    float32 ``[B, M]`` (float64 with ``float64``; each row sums to its P). ``noise`` is
    ``[T+1, B, M]``, or None to draw Philox normals from ``seed`` (the same numbers the CUDA
    kernel draws). The gains (any numbers and layout: native C-contiguous float32 are read in
    place, the rest converted by the core, checked before rounding) are validated by the core
    as it goes, InvalidGains naming the first bad one, so callers need not check them
    first: at B = 1 a check costs as much as the rest of the Python path. ``alloc_map`` is the
    index of the allocation map in ``settings.ALLOC_MAPS``."""
    m = pack.m
    g = gains if type(gains) is np.ndarray else np.asarray(gains)
    # Any dtype and layout: the core reads native C-contiguous float32 in place and converts
    # the rest itself (at B = 1 a NumPy conversion here costs more than the check).
    if g.ndim != 2 or g.shape[1] != m:
        raise UserError(f"gains must have shape [B, {m}], got {list(g.shape)}")
    p = power_budget(total_power, g.shape[0])
    z = None if noise is None else np.ascontiguousarray(noise, dtype=np.float32)
    power, invalid = _core.fused_sample(pack, pred, g, p, z, int(seed), mode, alloc_map, float64)
    if invalid:  # the core counts (and NaNs) the rows with an invalid gain: name the first
        check_gains(g, float32="the fused sampler")
    return power


def fused_sample_cuda(
    pack: Any,
    m: int,
    hidden: int,
    steps: int,
    pred: int,
    gains: Any,
    total_power: Any,
    noise: Any,
    seed: int,
    mode: int,
    alloc_map: int = 0,
) -> Any:
    """CUDA fused reverse diffusion on torch tensors: ``gains`` ``[B, M]`` on a GPU, ``pack``
    float32 on the same GPU, on PyTorch's current stream there; ``noise`` (``[T+1, B, M]``,
    copied to the GPU as float32 if it is not) None draws Philox normals from ``seed`` in the
    kernel."""
    import torch

    if not is_torch(gains):
        raise TypeError(f"gains: expected a CUDA torch tensor, got {type(gains).__name__}")
    g = gains.detach().to(torch.float32).contiguous()
    if g.ndim != 2 or g.shape[1] != m:
        raise UserError(f"gains must have shape [B, {m}], got {list(g.shape)}")
    rows = g.shape[0]
    p = torch.from_numpy(power_rows(total_power, rows)).to(g.device)
    z = None if noise is None else torch.as_tensor(noise).detach().to(g.device, torch.float32)
    z = None if z is None else z.contiguous()
    out = torch.empty_like(g)
    total = int(_core.pack_layout(m, hidden, steps)["total"])
    f32 = (torch.float32,)
    _launch("fused_sample_cuda", g.device, _Buf("pack", pack, f32, (total,)), total, m, hidden,
            steps, pred, _Buf("gains", g, f32, (rows, m)), rows,
            _Buf("total_power", p, (torch.float64,), (rows,)), rows,
            _Buf("noise", z, f32, (steps + 1, rows, m)), [steps + 1, rows, m], int(seed), mode,
            _Buf("power", out, f32, (rows, m)), alloc_map=alloc_map)  # fmt: skip
    if bool(torch.isnan(out).any()):  # the kernel flags rows with invalid gains
        check_gains(g.cpu().numpy())
    return out


def philox_normals(seed: int, rows: int, slots: int, m: int) -> np.ndarray:
    """The standard normals the CUDA sampler draws without given noise, ``[slots, rows, M]``
    (computed on the CPU by the same code, so CPU tests cover the GPU's RNG)."""
    return _core.philox_normals(int(seed), int(rows), int(slots), int(m))
