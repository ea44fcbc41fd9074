"""The one door to the compiled core (``aigxctl._core``).

Everything that reaches C++ passes through here: inputs are validated (finite, non-negative
gains, positive power and noise), made C-contiguous in float32/float64, and dispatched to the CPU
thread pool or, for CUDA tensors, to the CUDA kernels on PyTorch's current stream. A tensor on a
GPU that the core cannot use (built without CUDA, no driver) is computed on the CPU and copied
back, so callers never need to know how the core was built. Torch is imported only when a torch
tensor is passed, which keeps the NumPy-only paths (and the CLI's start-up) light.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aigxctl import _core
from aigxctl.errors import InvalidGains, UserError

Array = Any  # a NumPy array or a torch tensor

__all__ = [
    "build_info",
    "check_gains",
    "check_level",
    "denoise_step",
    "fused_sample",
    "fused_sample_cuda",
    "is_cuda_tensor",
    "is_torch",
    "num_threads",
    "pack_layout",
    "philox_normals",
    "power_rows",
    "set_num_threads",
    "sum_rate",
    "waterfill",
]


def build_info() -> dict[str, Any]:
    """How the core was built and what it sees: CUDA kernels compiled, GPUs usable, threads."""
    return {
        "cuda_built": bool(_core.cuda_built()),
        "cuda_devices": int(_core.cuda_device_count()),
        "threads": int(_core.num_threads()),
    }


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
    return type(x).__module__.split(".")[0] == "torch"


def is_cuda_tensor(x: object) -> bool:
    """True for a torch tensor on a GPU that the core's CUDA kernels can use."""
    return is_torch(x) and x.is_cuda and _core.cuda_built() and _core.cuda_device_count() > 0


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
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


def check_gains(gains: np.ndarray) -> None:
    """Raise InvalidGains at the first NaN, infinite or negative entry of a 2-D array."""
    bad = ~np.isfinite(gains) | (gains < 0)
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    value = float(gains[row, col])
    reason = "gains must be finite" if not np.isfinite(value) else "gains must be >= 0"
    raise InvalidGains(row, col, value, reason)


def _power_array(total_power: Any, rows: int, lead_shape: tuple[int, ...]) -> np.ndarray:
    """Total power as float64 [1] (one for all rows) or [rows] (one per row), validated."""
    if is_torch(total_power):
        total_power = total_power.detach().cpu().numpy()
    p = np.asarray(total_power, dtype=np.float64)
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
        raise UserError(f"total_power must be finite and > 0, got {p[i]!r} (row {i})")
    return p


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) == 0:
        raise UserError("gains must have at least one dimension (the channels)")
    if shape[-1] == 0:
        raise UserError("gains must have at least one channel")


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
    p = torch.from_numpy(_power_array(total_power, g.shape[0], lead)).to(g.device)
    power = torch.empty_like(g)
    level = torch.empty(g.shape[0], dtype=torch.float64, device=g.device)
    with torch.cuda.device(g.device):
        _core.waterfill_cuda(
            0 if g.dtype == torch.float32 else 1,
            g.data_ptr(),
            power.data_ptr(),
            level.data_ptr(),
            p.data_ptr(),
            p.numel() != 1,
            g.shape[0],
            g.shape[1],
            noise,
            torch.cuda.current_stream(g.device).cuda_stream,
        )
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
            g = gains.detach().reshape(-1, gains.shape[-1]).contiguous()
            p = power.detach().to(g.dtype).reshape(g.shape).contiguous()
            rate = torch.empty(g.shape[0], dtype=torch.float64, device=g.device)
            with torch.cuda.device(g.device):
                _core.sum_rate_cuda(
                    0 if g.dtype == torch.float32 else 1,
                    g.data_ptr(),
                    p.data_ptr(),
                    rate.data_ptr(),
                    g.shape[0],
                    g.shape[1],
                    noise,
                    torch.cuda.current_stream(g.device).cuda_stream,
                )
            if bool(torch.isnan(rate).any()):
                _invalid_rate_input(g.cpu().numpy(), p.cpu().numpy(), rate.cpu().numpy())
            return rate.reshape(gains.shape[:-1])
        rate = sum_rate(gains.detach().cpu().numpy(), power.detach().cpu().numpy(), noise)
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
    if isinstance(total_power, (float, int)) and not isinstance(total_power, bool):
        return _check_positive("total_power", total_power)
    p = _power_array(total_power, rows, (rows,))
    return np.full(rows, p[0]) if p.size == 1 else p.copy()


def power_rows(total_power: Any, rows: int) -> np.ndarray:
    """The power budget of each of ``rows`` rows, float64 ``[rows]``, validated (> 0, finite)."""
    p = power_budget(total_power, rows)
    return np.full(rows, p) if isinstance(p, float) else p


def fused_sample(
    pack: np.ndarray,
    m: int,
    hidden: int,
    steps: int,
    pred: int,
    gains: np.ndarray,
    total_power: Any,
    noise: np.ndarray | None,
    seed: int,
    mode: int,
) -> np.ndarray:
    """CPU fused reverse diffusion: raw gains ``[B, M]`` -> allocations float32 ``[B, M]``
    (each row sums to its P). ``noise`` is ``[T+1, B, M]``, or None to draw Philox normals from
    ``seed`` (the same numbers the CUDA kernel draws)."""
    g = np.ascontiguousarray(gains, dtype=np.float32)
    if g.ndim != 2 or g.shape[1] != m:
        raise UserError(f"gains must have shape [B, {m}], got {list(g.shape)}")
    p = power_rows(total_power, g.shape[0])
    z = None if noise is None else np.ascontiguousarray(noise, dtype=np.float32)
    power = _core.fused_sample(pack, m, hidden, steps, pred, g, p, z, int(seed), mode)
    if np.isnan(power).any():  # the core flags rows with invalid gains
        check_gains(g)
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
) -> Any:
    """CUDA fused reverse diffusion on torch tensors (same device as ``pack``), on PyTorch's
    current stream; ``noise`` None draws Philox normals from ``seed`` in the kernel."""
    import torch

    g = gains.detach().to(torch.float32).contiguous()
    if g.ndim != 2 or g.shape[1] != m:
        raise UserError(f"gains must have shape [B, {m}], got {list(g.shape)}")
    rows = g.shape[0]
    p = torch.from_numpy(power_rows(total_power, rows)).to(g.device)
    z = None if noise is None else noise.detach().to(g.device, torch.float32).contiguous()
    out = torch.empty_like(g)
    with torch.cuda.device(g.device):
        _core.fused_sample_cuda(
            pack.data_ptr(), m, hidden, steps, pred, g.data_ptr(), rows, p.data_ptr(),
            p.numel() != 1, 0 if z is None else z.data_ptr(), int(seed), mode, out.data_ptr(),
            torch.cuda.current_stream(g.device).cuda_stream,
        )  # fmt: skip
    if bool(torch.isnan(out).any()):  # the kernel flags rows with invalid gains
        check_gains(g.cpu().numpy())
    return out


def denoise_step(x: Any, out: Any, z: Any, consts: np.ndarray, pred: int, mode: int) -> None:
    """One reverse step in place, ``x <- update(x, out, z)``, for any denoiser's output (float32
    NumPy arrays, or torch tensors on the CPU or a GPU). ``z`` may be None (no noise)."""
    consts = np.ascontiguousarray(consts, dtype=np.float32).reshape(9)
    if is_cuda_tensor(x):
        import torch

        c = torch.from_numpy(consts).to(x.device)
        with torch.cuda.device(x.device):
            _core.denoise_step_cuda(
                x.data_ptr(), out.contiguous().data_ptr(), 0 if z is None else z.data_ptr(),
                c.data_ptr(), x.numel(), pred, mode,
                torch.cuda.current_stream(x.device).cuda_stream,
            )  # fmt: skip
        return
    xs = x.numpy() if is_torch(x) else x
    outs = out.detach().numpy() if is_torch(out) else out
    zs = z.numpy() if is_torch(z) else z
    _core.denoise_step(xs.reshape(-1), outs.reshape(-1), None if zs is None else zs.reshape(-1),
                       consts, pred, mode)  # fmt: skip


def philox_normals(seed: int, rows: int, slots: int, m: int) -> np.ndarray:
    """The standard normals the CUDA sampler draws without given noise, ``[slots, rows, M]``
    (computed on the CPU by the same code, so CPU tests cover the GPU's RNG)."""
    return _core.philox_normals(int(seed), int(rows), int(slots), int(m))
