"""The allocators that learn: the conditional diffusion model (GDM) and the discriminative MLP
baseline, and the object a trained model is used through (``load_model(dir).allocate(gains)``).

The GDM's denoiser has the reference shape (docs/architecture.md, "The model"): a condition
branch Linear(M,H) Mish Linear(H,H), a sinusoidal time embedding of width 16 with Linear(16,32) Mish
Linear(32,16), and a trunk over [x, t_emb, cond_emb]: Linear(H+M+16,H) Mish Linear(H,H) Mish
Linear(H,M). Module names matter: aigxctl.fused packs the trained weights by them.
"""

from __future__ import annotations

import math
import secrets
import time
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


def _as_gains(gains: Any, m: int) -> tuple[np.ndarray, bool]:
    """Gains as float32 [B, M] NumPy (validated) and whether the input was one vector."""
    g = gains.detach().cpu().numpy() if core.is_torch(gains) else np.asarray(gains)
    single = g.ndim == 1
    g = np.atleast_2d(g)
    if g.ndim != 2 or g.shape[1] != m:
        raise UserError(
            f"the model was trained for M = {m} channels, but the gains have "
            f"{g.shape[-1] if g.ndim else 0} columns"
        )
    g = np.asarray(g, dtype=np.float64)
    core.check_gains(g)
    return g, single


def _like(gains: Any, power: np.ndarray) -> Any:
    """``power`` as the same kind of array as ``gains``: a torch tensor (same device, float
    dtype) for tensor input, NumPy float64 otherwise."""
    if not core.is_torch(gains):
        return power
    dtype = gains.dtype if gains.dtype.is_floating_point else torch.float32
    return torch.as_tensor(power, dtype=dtype, device=gains.device)


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
    _fused: Any = None
    _fused_reason: str | None = None

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

    def weights_changed(self) -> None:
        """Say the denoiser's weights were changed in place (training): the fused sampler is
        packed again from them on its next use."""
        self._fused, self._fused_reason = None, None

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
                    self.denoiser, self.schedule.betas, self.cond_mean, self.cond_std, self.pred
                )
            self._fused_reason = reason
        return self._fused

    def backend_for(self, backend: str = "auto") -> tuple[str, str]:
        """(backend that will run, why)."""
        if backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "torch":
            return "torch", "asked for the plain PyTorch sampler"
        sampler = self.fused_sampler()
        if sampler is not None:
            return "fused", "the denoiser has the reference MLP shape the compiled core runs"
        if backend == "fused":
            raise UserError(f"the fused sampler cannot run this model: {self._fused_reason}")
        return "torch", f"fused sampler unavailable: {self._fused_reason}"

    def sample_torch(
        self, gains: np.ndarray, total_power: float | np.ndarray, noise: torch.Tensor, mode: str
    ) -> np.ndarray:
        """Allocations [B, M] with the plain PyTorch sampler and the given noise."""
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
        p = to_allocation(x, torch.as_tensor(total_power, dtype=torch.float32, device=dev))
        return p.cpu().numpy()

    def allocate(
        self,
        gains: Any,
        total_power: float | np.ndarray | None = None,
        *,
        mode: str | None = None,
        best_of: int | None = None,
        seed: int | None = None,
        backend: str = "auto",
    ) -> np.ndarray:
        """Powers ``[B, M]`` (or ``[M]`` for one vector) for gains ``[B, M]``: feasible, each row
        adds up to P (the model's own P unless ``total_power`` is given).

        ``mode`` ``ddim`` (deterministic, the default) or ``ancestral``; ``best_of`` K draws K
        candidates per row and keeps the one with the highest sum rate; ``seed`` fixes the noise.
        A torch tensor in gives a tensor out (same device), NumPy gives NumPy.
        """
        mode = mode or self.mode
        k = self.best_of if best_of is None else best_of
        if mode not in ("ddim", "ancestral"):
            raise UserError(f"mode must be ddim or ancestral, got {mode!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_BEST_OF:
            raise UserError(f"best_of must be an integer >= 1 and <= {MAX_BEST_OF}, got {k!r}")
        g, single = _as_gains(gains, self.m)
        b = g.shape[0]
        budget = self.total_power if total_power is None else total_power
        which, _ = self.backend_for(backend)
        if seed is None:
            seed = secrets.randbits(63)
        pk = core.power_budget(budget, b)
        if isinstance(pk, np.ndarray) and k > 1:
            pk = np.tile(pk, k)
        # K candidates per row: repeat the batch K times, pick the best per row.
        gk = np.tile(g, (k, 1)) if k > 1 else g
        if which == "fused":
            out = self.fused_sampler().sample(gk, pk, mode=mode, seed=seed)
        else:
            gen = torch.Generator().manual_seed(seed)
            z = torch.randn((self.T + 1, *gk.shape), generator=gen)
            out = self.sample_torch(gk, pk, z, mode)
        out = np.asarray(out, dtype=np.float64)
        if k > 1:
            rates = core.sum_rate(gk, out, self.noise).reshape(k, b)
            best = rates.argmax(axis=0)
            out = out.reshape(k, b, -1)[best, np.arange(b)]
        return _like(gains, out[0] if single else out)


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

    def backend_for(self, backend: str = "auto") -> tuple[str, str]:
        return "torch", "the MLP baseline runs in PyTorch"

    def allocate(
        self, gains: Any, total_power: float | np.ndarray | None = None, **_: Any
    ) -> np.ndarray:
        g, single = _as_gains(gains, self.m)
        b = g.shape[0]
        p_rows = core.power_rows(self.total_power if total_power is None else total_power, b)
        dev = next(self.net.parameters()).device
        with torch.no_grad():
            gt = torch.as_tensor(g, dtype=torch.float32, device=dev)
            mean = torch.as_tensor(self.cond_mean, dtype=torch.float32, device=dev)
            std = torch.as_tensor(self.cond_std, dtype=torch.float32, device=dev)
            y = self.net((gt - mean) / std)
            p = to_allocation(y, torch.as_tensor(p_rows, dtype=torch.float32, device=dev))
        out = p.cpu().numpy().astype(np.float64)
        return _like(gains, out[0] if single else out)


def timed_allocate(
    model: GDM | MLPAllocator, gains: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, float]:
    """Allocate and return (powers, seconds)."""
    start = time.perf_counter()
    out = model.allocate(gains, **kwargs)
    return out, time.perf_counter() - start
