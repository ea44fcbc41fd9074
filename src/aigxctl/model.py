"""The allocators that learn: the conditional diffusion model (GDM) and the discriminative MLP
baseline, and the object a trained model is used through (``load_model(dir).allocate(gains)``).

The GDM's denoiser has the reference shape (docs/architecture.md, "The model"): a condition
branch Linear(M,H) Mish Linear(H,H), a sinusoidal time embedding of width 16 with Linear(16,32) Mish
Linear(32,16), and a trunk over [x, t_emb, cond_emb]: Linear(H+M+16,H) Mish Linear(H,H) Mish
Linear(H,M). Module names matter: aigxctl.fused packs the trained weights by them.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from aigxctl import core
from aigxctl.diffusion import Schedule, sample_reference, to_allocation
from aigxctl.errors import UserError

__all__ = ["BACKENDS", "GDM", "Denoiser", "MLPAllocator", "Regressor", "SinusoidalPosEmb"]

BACKENDS = ("auto", "fused", "torch")
# Candidates per row for best_of: each one is a full sampling pass over the batch (and as much
# memory), and past a few dozen the best of them hardly improves.
MAX_BEST_OF = 1024

# Fresh noise seeds for calls without one: a private Mersenne Twister (a getrandom() call per
# decision costs more than the decision's Python), seeded from the OS, and again in a forked
# child so that two processes do not draw the same noise.
_seeds = random.Random()
os.register_at_fork(after_in_child=_seeds.seed)


class SinusoidalPosEmb(nn.Module):
    """[sin(t f_j), cos(t f_j)] with f_j = 10000^(-j / (dim/2 - 1)), j < dim/2."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        f = torch.exp(
            -math.log(10000.0) / (half - 1) * torch.arange(half, device=t.device, dtype=t.dtype)
        )
        e = t[:, None] * f[None]
        return torch.cat([e.sin(), e.cos()], dim=-1)


class Denoiser(nn.Module):
    """The reference denoiser: (x [B,M], t [B] step index as float, cond [B,M]) -> [B,M]."""

    def __init__(self, m: int, hidden: int = 256, t_dim: int = 16) -> None:
        super().__init__()
        self.m, self.hidden, self.t_dim = m, hidden, t_dim
        self.cond_mlp = nn.Sequential(nn.Linear(m, hidden), nn.Mish(), nn.Linear(hidden, hidden))
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(t_dim),
            nn.Linear(t_dim, 2 * t_dim),
            nn.Mish(),
            nn.Linear(2 * t_dim, t_dim),
        )
        self.mid = nn.Sequential(
            nn.Linear(m + t_dim + hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, m),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.mid(torch.cat([x, self.time_mlp(t), self.cond_mlp(cond)], dim=-1))


class Regressor(nn.Module):
    """The discriminative baseline: gains -> allocation fraction in one pass, about the size of
    the denoiser's condition branch plus trunk."""

    def __init__(self, m: int, hidden: int = 256) -> None:
        super().__init__()
        self.m, self.hidden = m, hidden
        self.net = nn.Sequential(
            nn.Linear(m, hidden), nn.Mish(), nn.Linear(hidden, hidden), nn.Mish(),
            nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, m),
        )  # fmt: skip

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond)


def _as_gains(gains: Any, m: int, validate: bool = True) -> tuple[np.ndarray, bool]:
    """Gains as [B, M] NumPy and whether the input was one vector: float64 and validated, or,
    with ``validate`` false, numbers as given (the fused sampler converts and validates them in
    its own row loop)."""
    # A NumPy array of numbers, the common case, is taken as it is (at B = 1 a call costs).
    ready = type(gains) is np.ndarray and gains.dtype.kind in "fiub"
    g = gains if ready else core.host_array(gains)
    single = g.ndim == 1
    if not 1 <= g.ndim <= 2:
        raise UserError(f"gains must be [B, {m}] or one vector of {m}, got shape {list(g.shape)}")
    g = g.reshape(1, -1) if single else g  # np.atleast_2d: a micro-second more at B = 1
    if g.shape[1] != m:
        raise UserError(
            f"the model was trained for M = {m} channels, but the gains have {g.shape[1]} columns"
        )
    if validate:
        g = np.asarray(g, dtype=np.float64)
        core.check_gains(g, float32="the model")
    return g, single


# A model computes its powers in float32: P beyond this range would overflow or underflow them.
_MODEL_POWER_RANGE = (1e-30, 1e30)


def _check_model_power(p: float | np.ndarray) -> None:
    lo, hi = _MODEL_POWER_RANGE
    if isinstance(p, float):  # one P: no array test, which costs a micro-second at B = 1
        if lo <= p <= hi:
            return
        bad = p
    else:
        outside = (p < lo) | (p > hi)
        if not outside.any():
            return
        bad = float(p[outside.argmax()])
    raise UserError(
        f"total_power must be between {lo:g} and {hi:g} for a model (it computes its powers in "
        f"float32), got {bad!r}"
    )


def _check_seed(seed: Any) -> int:
    """``seed`` as the core's Philox key: an integer >= 0 and < 2**64."""
    if type(seed) is int and 0 <= seed < 2**64:  # the common case, first
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise UserError(f"seed must be an integer >= 0 and < 2**64, got {seed!r}")
    return int(seed)


def _like(gains: Any, power: np.ndarray) -> Any:
    """``power`` as the same kind of array as ``gains``: a torch tensor (same device, float
    dtype) for tensor input, NumPy float64 otherwise."""
    if not core.is_torch(gains):
        return power
    dtype = gains.dtype if gains.dtype.is_floating_point else torch.float32
    return torch.as_tensor(power, dtype=dtype, device=gains.device)


def _on_gpu(gains: Any, weights: torch.Tensor) -> torch.device | None:
    """The GPU to allocate on, or None for the CPU path: where CUDA-tensor gains are, else the
    device of the model's weights (a parameter of them: ``weights``) when it is a GPU
    (``load_model(dir, device="cuda")``)."""
    if core.is_torch(gains) and gains.is_cuda:
        return gains.device
    return weights.device if weights.is_cuda else None


def _gains_on(gains: Any, m: int, dev: torch.device) -> tuple[torch.Tensor, bool]:
    """Gains as float32 [B, M] on ``dev`` (validated there: one host copy only when a gain is
    invalid, to name it) and whether the input was one vector."""
    g = torch.as_tensor(gains).detach()
    single = g.ndim == 1
    if not 1 <= g.ndim <= 2:
        raise UserError(f"gains must be [B, {m}] or one vector of {m}, got shape {list(g.shape)}")
    g = g.reshape(1, -1) if single else g
    if g.shape[1] != m:
        raise UserError(
            f"the model was trained for M = {m} channels, but the gains have {g.shape[1]} columns"
        )
    g = g.to(dev, torch.float64 if not g.dtype.is_floating_point else g.dtype)
    if not bool((torch.isfinite(g) & (g >= 0)).all()):
        core.check_gains(g.double().cpu().numpy())
    return g.to(torch.float32), single


def _out_like(gains: Any, power: torch.Tensor) -> Any:
    """An allocation computed on a GPU, as the same kind of array as ``gains``: a tensor on
    the gains' device (their float dtype, else float32), NumPy float64 for anything else."""
    if not core.is_torch(gains):
        return power.double().cpu().numpy()
    dtype = gains.dtype if gains.dtype.is_floating_point else torch.float32
    return power.to(gains.device, dtype)


@dataclass
class GDM:
    """A trained conditional diffusion allocator."""

    denoiser: Denoiser
    schedule: Schedule
    pred: str
    cond_mean: np.ndarray
    cond_std: np.ndarray
    total_power: float
    noise: float
    config: dict[str, Any] = field(default_factory=dict)
    mode: str = "ddim"
    best_of: int = 1
    alloc_map: str = "abs"  # settings.ALLOC_MAPS: how the final sample becomes powers
    _fused: Any = None
    _fused_reason: str | None = None
    # One parameter of the denoiser, telling where its weights are (weights_device); not an
    # init field, so dataclasses.replace with another denoiser does not carry it over.
    _probe: Any = field(default=None, init=False, repr=False, compare=False)

    arch = "gdm"

    @property
    def m(self) -> int:
        return self.denoiser.m

    @property
    def T(self) -> int:
        return self.schedule.steps

    @property
    def module(self) -> nn.Module:
        """The network that learns (the denoiser)."""
        return self.denoiser

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (``load_model(dir, device=...)``)."""
        return next(self.denoiser.parameters()).device

    def weights_changed(self) -> None:
        """Say the denoiser's weights were changed in place (training): the fused sampler is
        packed again from them on its next use."""
        self._fused, self._fused_reason, self._probe = None, None, None

    def weights_device(self) -> torch.device:
        """Where the denoiser's weights are, as :attr:`device`, without walking the module tree
        on every call (at B = 1 that walk costs a tenth of a decision): a parameter's device
        follows the module's ``.to()``, which moves parameters in place (code that replaces
        parameter objects calls :meth:`weights_changed`, as training does)."""
        return self.weights_probe().device

    def weights_probe(self) -> torch.Tensor:
        """A parameter of the denoiser, whose ``device`` is :meth:`weights_device`."""
        if self._probe is None:
            self._probe = next(self.denoiser.parameters())
        return self._probe

    def normalise(self, gains: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.cond_mean, dtype=gains.dtype, device=gains.device)
        std = torch.as_tensor(self.cond_std, dtype=gains.dtype, device=gains.device)
        return (gains - mean) / std

    def fused_sampler(self) -> Any:
        """The packed fused sampler, or None with ``fused_reason`` saying why it cannot run."""
        if self._fused is None and self._fused_reason is None:
            from aigxctl import fused

            reason = fused.supports(self.denoiser)
            if reason is None:
                self._fused = fused.FusedSampler.from_denoiser(
                    self.denoiser, self.schedule.betas, self.cond_mean, self.cond_std, self.pred,
                    self.alloc_map,
                )
            self._fused_reason = reason
        return self._fused

    def backend_for(self, backend: str = "auto") -> tuple[str, str]:
        """(backend that will run, why)."""
        if backend not in BACKENDS:
            raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "torch":
            return "torch", "asked for the plain PyTorch sampler"
        sampler = self.fused_sampler()
        if sampler is not None:
            return "fused", "the denoiser has the reference MLP shape the compiled core runs"
        if backend == "fused":
            raise UserError(f"the fused sampler cannot run this model: {self._fused_reason}")
        return "torch", f"fused sampler unavailable: {self._fused_reason}"

    def sample_torch(
        self, gains: Any, total_power: float | np.ndarray, noise: torch.Tensor, mode: str
    ) -> Any:
        """Allocations [B, M] with the plain PyTorch sampler and the given noise, on the
        denoiser's device: NumPy out for NumPy gains, a tensor on the gains' device for a
        tensor."""
        dev = next(self.denoiser.parameters()).device
        g = torch.as_tensor(gains, dtype=torch.float32, device=dev)
        x = sample_reference(
            self.denoiser,
            self.schedule,
            self.normalise(g),
            noise.to(dev),
            pred=self.pred,
            mode=mode,
        )
        p = to_allocation(
            x, torch.as_tensor(total_power, dtype=torch.float32, device=dev), self.alloc_map
        )
        return p.to(gains.device) if core.is_torch(gains) else p.cpu().numpy()

    def _sample(
        self, which: str, gk: Any, pk: Any, mode: str, seed: int, precision: str = "f32"
    ) -> Any:
        """Allocations for the rows ``gk`` with the backend ``which`` (same kind of array out)."""
        if which == "fused":
            return self.fused_sampler().sample(
                gk, pk, mode=mode, seed=seed, precision=precision, float64=True
            )
        return self.sample_torch(gk, pk, torch.from_numpy(self.noise_for(seed, len(gk))), mode)

    def noise_for(self, seed: int, rows: int) -> np.ndarray:
        """The noise ``[T+1, rows, M]`` every backend uses for ``seed``: the core's Philox
        normals (:func:`aigxctl.core.philox_normals`), the ones the fused samplers draw for
        themselves on the CPU and the GPU, so one seed gives one allocation on every backend
        (within 1e-5). Row r's noise does not depend on the batch it is in."""
        return core.philox_normals(seed, rows, self.T + 1, self.m)

    def allocate(
        self,
        gains: Any,
        total_power: float | np.ndarray | None = None,
        *,
        mode: str | None = None,
        best_of: int | None = None,
        seed: int | None = None,
        backend: str = "auto",
        precision: str = "f32",
        noise: float | None = None,
    ) -> np.ndarray:
        """Powers ``[B, M]`` (or ``[M]`` for one vector) for gains ``[B, M]``: feasible, each row
        adds up to P (the model's own P unless ``total_power`` is given).

        ``mode`` ``ddim`` (deterministic, the default) or ``ancestral``; ``best_of`` K draws K
        candidates per row and keeps the one with the highest sum rate at noise power ``noise``
        (sigma^2, the model's unless given); ``seed`` fixes the noise,
        the same Philox normals on every backend (:meth:`noise_for`).
        A torch tensor in gives a tensor out (same device), NumPy gives NumPy. CUDA tensors, or
        any gains given to a model on a GPU (``load_model(dir, device="cuda")``), stay on the GPU
        end to end: the weights packed there once, the fused CUDA sampler, the CUDA sum rate
        for ``best_of``. ``precision`` ``bf16`` (fused CPU sampler only) runs the hidden layers'
        products in bfloat16 (``settings.PRECISIONS``).
        """
        mode = self.mode if mode is None else mode
        k = self.best_of if best_of is None else best_of
        if mode not in ("ddim", "ancestral"):
            raise UserError(f"mode must be ddim or ancestral, got {mode!r}")
        if type(k) is not int and (isinstance(k, bool) or not isinstance(k, (int, np.integer))):
            raise UserError(f"best_of must be an integer >= 1 and <= {MAX_BEST_OF}, got {k!r}")
        if not 1 <= k <= MAX_BEST_OF:
            raise UserError(f"best_of must be an integer >= 1 and <= {MAX_BEST_OF}, got {k!r}")
        budget = self.total_power if total_power is None else total_power
        seed = _seeds.getrandbits(63) if seed is None else _check_seed(seed)
        sigma2 = self.noise if noise is None else core.check_level("noise", noise)
        core.check_precision(precision)
        dev = _on_gpu(gains, self.weights_probe())
        if dev is not None:
            if precision != "f32":
                raise UserError(f"precision {precision} runs on the CPU only, not on {dev}")
            return self._allocate_on(dev, gains, budget, mode, int(k), seed, backend, sigma2)
        which, _ = self.backend_for(backend)
        if precision != "f32" and which != "fused":
            raise UserError(f"precision {precision} needs the fused sampler (backend {which})")
        g, single = _as_gains(gains, self.m, validate=which != "fused")
        b = g.shape[0]
        pk = core.power_budget(budget, b)
        _check_model_power(pk)
        if k > 1 and isinstance(pk, np.ndarray):
            pk = np.repeat(pk, k)
        # K candidates per row, side by side (row r's are rows rK .. rK + K - 1, so they draw
        # the same noise whatever the batch's size), then the best per row.
        gk = np.repeat(g, k, axis=0) if k > 1 else g
        out = self._sample(which, gk, pk, mode, seed, precision)
        if which != "fused":  # the fused sampler hands back float64 already
            out = out.astype(np.float64)
        if k > 1:
            best = core.sum_rate(gk, out, sigma2).reshape(b, k).argmax(axis=1)
            out = out.reshape(b, k, self.m)[np.arange(b), best]
        return _like(gains, out[0] if single else out)

    def _allocate_on(
        self, dev: torch.device, gains: Any, budget: Any, mode: str, k: int, seed: int,
        backend: str, sigma2: float,
    ) -> Any:  # fmt: skip
        """:meth:`allocate` on the GPU ``dev``: the same steps as the CPU path, on tensors."""
        g, single = _gains_on(gains, self.m, dev)
        b = g.shape[0]
        which, _ = self.backend_for(backend)
        pk = core.power_budget(budget, b)
        _check_model_power(pk)
        if isinstance(pk, np.ndarray) and k > 1:
            pk = np.repeat(pk, k)
        gk = g.repeat_interleave(k, dim=0) if k > 1 else g
        out = self._sample(which, gk, pk, mode, seed)
        if k > 1:
            best = core.sum_rate(gk, out, sigma2).reshape(b, k).argmax(dim=1)
            out = out.reshape(b, k, self.m)[torch.arange(b, device=out.device), best]
        return _out_like(gains, out[0] if single else out)


@dataclass
class MLPAllocator:
    """The trained discriminative baseline, used like a GDM."""

    net: Regressor
    cond_mean: np.ndarray
    cond_std: np.ndarray
    total_power: float
    noise: float
    config: dict[str, Any] = field(default_factory=dict)

    arch = "mlp"

    @property
    def m(self) -> int:
        return self.net.m

    @property
    def module(self) -> nn.Module:
        """The network that learns."""
        return self.net

    def weights_changed(self) -> None:
        """Nothing is derived from the weights: the network is used as it is."""

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (``load_model(dir, device=...)``)."""
        return next(self.net.parameters()).device

    def backend_for(self, backend: str = "auto") -> tuple[str, str]:
        return "torch", "the MLP baseline runs in PyTorch"

    def _forward(self, g: torch.Tensor, p_rows: np.ndarray) -> torch.Tensor:
        """Allocations for float32 gains ``g`` [B, M] on the network's device."""
        dev = self.device
        with torch.no_grad():
            mean = torch.as_tensor(self.cond_mean, dtype=torch.float32, device=dev)
            std = torch.as_tensor(self.cond_std, dtype=torch.float32, device=dev)
            y = self.net((g - mean) / std)
            return to_allocation(y, torch.as_tensor(p_rows, dtype=torch.float32, device=dev))

    def allocate(
        self, gains: Any, total_power: float | np.ndarray | None = None, **_: Any
    ) -> np.ndarray:
        budget = self.total_power if total_power is None else total_power
        dev = _on_gpu(gains, next(self.net.parameters()))
        if dev is not None:  # tensors all the way (run where the network is)
            g, single = _gains_on(gains, self.m, dev)
            p_rows = core.power_rows(budget, g.shape[0])
            _check_model_power(p_rows)
            p = self._forward(g.to(self.device), p_rows)
            return _out_like(gains, p[0] if single else p)
        g, single = _as_gains(gains, self.m)
        p_rows = core.power_rows(budget, g.shape[0])
        _check_model_power(p_rows)
        gt = torch.as_tensor(g, dtype=torch.float32, device=self.device)
        out = self._forward(gt, p_rows).cpu().numpy().astype(np.float64)
        return _like(gains, out[0] if single else out)
