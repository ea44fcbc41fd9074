"""The diffusion process: noise schedules, the training loss, and the plain PyTorch sampler.

``sample_reference`` is the reference implementation of the reverse process; the fused compiled
sampler (aigxctl.fused) must return the same numbers given the same noise, and the tests check
it. Noise is passed as one tensor ``z [T+1, B, M]``: ``z[0]`` is the start sample and ``z[k+1]``
the noise of the k-th step taken (step index i = T-1-k; the last step, i = 0, adds none).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np
import torch

from aigxctl.settings import ALLOC_MAPS, PREDICTIONS, SAMPLING_MODES, SCHEDULES

__all__ = [
    "ALLOC_MAPS",
    "MODES",
    "PREDICTIONS",
    "SCHEDULES",
    "Schedule",
    "loss",
    "make_betas",
    "rate_regret",
    "sample_reference",
    "to_allocation",
]

MODES = SAMPLING_MODES

Array = TypeVar("Array", np.ndarray, torch.Tensor)

# The fused sampler's per-step constants, in the order of StepConsts (csrc/denoise.h).
STEP_CONSTANTS = (
    "sqrt_recip_abar", "sqrt_recipm1_abar", "c1", "c2", "sigma",
    "sqrt_abar", "inv_sqrt_1m_abar", "sqrt_abar_prev", "sqrt_1m_abar_prev",
)  # fmt: skip


def make_betas(kind: str, steps: int) -> np.ndarray:
    """beta_1..beta_T in float64. ``vp`` is the reference's (b_min 0.1, b_max 10)."""
    t = np.arange(1, steps + 1, dtype=np.float64)
    if kind == "vp":
        b_min, b_max = 0.1, 10.0
        return 1.0 - np.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
    if kind == "linear":
        return np.linspace(1e-4, 2e-2, steps) if steps > 1 else np.array([2e-2])
    if kind == "cosine":
        s = 0.008
        x = np.linspace(0, steps, steps + 1)
        abar = np.cos(((x / steps) + s) / (1 + s) * np.pi * 0.5) ** 2
        abar = abar / abar[0]
        return np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
    raise ValueError(f"unknown schedule {kind!r}; choose from {', '.join(SCHEDULES)}")


@dataclass
class Schedule:
    """Per-step constants of a schedule as float32 tensors ``[T]`` (computed in float64)."""

    kind: str
    betas: np.ndarray  # float64, the source of truth
    sqrt_abar: torch.Tensor
    sqrt_1m_abar: torch.Tensor
    sqrt_recip_abar: torch.Tensor
    sqrt_recipm1_abar: torch.Tensor
    c1: torch.Tensor
    c2: torch.Tensor
    sigma: torch.Tensor
    sqrt_abar_prev: torch.Tensor
    sqrt_1m_abar_prev: torch.Tensor

    @classmethod
    def create(cls, kind: str, steps: int) -> Schedule:
        return cls.from_betas(make_betas(kind, steps), kind)

    @classmethod
    def from_betas(cls, betas: np.ndarray, kind: str = "custom") -> Schedule:
        """The schedule of the given betas ``[T]``; ``kind`` only names it."""
        betas = np.asarray(betas, dtype=np.float64)
        values = _step_values(betas)
        tensors = {
            f.name: torch.from_numpy(values[f.name].astype(np.float32))
            for f in fields(cls)
            if f.name not in ("kind", "betas")
        }
        return cls(kind=kind, betas=betas, **tensors)

    def step_constants(self) -> np.ndarray:
        """The fused sampler's table: float32 ``[T, 9]``, one row per step index i in the order
        of ``STEP_CONSTANTS``, rounded once from float64."""
        values = _step_values(self.betas)
        # The last step (i = 0) adds no noise: the reference skips it, the table says sigma = 0.
        values["sigma"][0] = 0.0
        return np.stack([values[k] for k in STEP_CONSTANTS], axis=1).astype(np.float32)

    @property
    def steps(self) -> int:
        return len(self.betas)


def _step_values(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-step constant of the reverse process, float64 ``[T]``, from the betas."""
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "sqrt_abar": np.sqrt(abar),
        "sqrt_1m_abar": np.sqrt(1.0 - abar),
        "inv_sqrt_1m_abar": 1.0 / np.sqrt(1.0 - abar),
        "sqrt_recip_abar": np.sqrt(1.0 / abar),
        "sqrt_recipm1_abar": np.sqrt(1.0 / abar - 1.0),
        "c1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "c2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        "sigma": np.exp(0.5 * np.log(np.maximum(post_var, 1e-20))),
        "sqrt_abar_prev": np.sqrt(abar_prev),
        "sqrt_1m_abar_prev": np.sqrt(1.0 - abar_prev),
    }


def loss(
    denoiser: torch.nn.Module,
    schedule: Schedule,
    x0: torch.Tensor,
    cond: torch.Tensor,
    pred: str,
    generator: torch.Generator | None = None,
    *,
    rate_weight: float = 0.0,
    gains: torch.Tensor | None = None,
    total_power: float = 1.0,
    noise: float = 1.0,
) -> torch.Tensor:
    """Loss of one training step: noise the expert sample ``x0 [B, M]`` to a random step and
    regress the output on the clean sample (``x0``) or on the added noise (``eps``), MSE.

    With ``rate_weight`` > 0 and the raw ``gains [B, M]`` (with P and sigma^2), add
    ``rate_weight`` times the :func:`rate_regret` of the clean sample the output implies.
    """
    b = x0.shape[0]
    t = torch.randint(0, schedule.steps, (b,), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    sa = schedule.sqrt_abar.to(x0.device)[t, None]
    s1m = schedule.sqrt_1m_abar.to(x0.device)[t, None]
    xt = sa * x0 + s1m * eps
    out = denoiser(xt, t.to(x0.dtype), cond)
    value = torch.nn.functional.mse_loss(out, x0 if pred == "x0" else eps)
    if rate_weight > 0 and gains is not None:
        x0_hat = out if pred == "x0" else (xt - s1m * out) / sa
        regret = rate_regret(x0_hat.clamp(-1.0, 1.0), x0, gains, total_power, noise)
        value = value + rate_weight * regret
    return value


def rate_regret(
    x_hat: torch.Tensor,
    x0: torch.Tensor,
    gains: torch.Tensor,
    total_power: float = 1.0,
    noise: float = 1.0,
) -> torch.Tensor:
    """Mean relative sum-rate loss of the allocation ``P |x_hat| / sum |x_hat|`` (what sampling
    turns a sample into) against the expert's ``P x0``: 1 - its fraction of the optimum.

    Why train on it: MSE spends its effort evenly over the channels, but the rate is lost almost
    only on the channels water-filling switches off. An output of +-0.003 on such a channel
    becomes wasted power after ``|x|``, while the same error on an active channel costs next to
    nothing (the rate is flat at its optimum). On T1 a model trained on MSE alone loses 0.35 %
    of the optimum, 0.3 % of it on those channels. This term weighs errors by what they cost,
    and its gradient through ``|x|`` pulls the outputs of switched-off channels to zero.
    """
    a = x_hat.abs()
    frac = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    snr = gains * (total_power / noise)
    rate = torch.log1p(snr * frac).sum(dim=-1)
    best = torch.log1p(snr * x0).sum(dim=-1)
    return ((best - rate) / best.clamp_min(1e-12)).mean()


@torch.no_grad()
def sample_reference(
    denoiser: torch.nn.Module,
    schedule: Schedule,
    cond: torch.Tensor,
    noise: torch.Tensor,
    *,
    pred: str,
    mode: str,
) -> torch.Tensor:
    """The reverse process in plain PyTorch: normalised condition ``[B, M]`` and noise
    ``[T+1, B, M]`` -> the sample x ``[B, M]`` (an allocation fraction up to sign and scale)."""
    return reverse_process(denoiser, schedule, cond, noise, pred=pred, mode=mode)


def reverse_process(
    denoiser: torch.nn.Module,
    schedule: Schedule,
    cond: torch.Tensor,
    noise: torch.Tensor,
    *,
    pred: str,
    mode: str,
) -> torch.Tensor:
    """:func:`sample_reference` with autograd on: training against a critic (``train --mode
    reward``) back-propagates through all T steps."""
    steps = schedule.steps
    if noise.shape[0] != steps + 1:
        raise ValueError(f"noise must be [T+1, B, M] with T = {steps}, got {list(noise.shape)}")
    dev = cond.device
    s = {k: getattr(schedule, k).to(dev) for k in (
        "sqrt_recip_abar", "sqrt_recipm1_abar", "c1", "c2", "sigma", "sqrt_abar",
        "sqrt_1m_abar", "sqrt_abar_prev", "sqrt_1m_abar_prev")}  # fmt: skip
    x = noise[0]
    b = x.shape[0]
    for k, i in enumerate(reversed(range(steps))):
        out = denoiser(x, torch.full((b,), float(i), device=dev), cond)
        x0 = out if pred == "x0" else s["sqrt_recip_abar"][i] * x - s["sqrt_recipm1_abar"][i] * out
        x0 = x0.clamp(-1.0, 1.0)
        if mode == "ancestral":
            mean = s["c1"][i] * x0 + s["c2"][i] * x
            x = mean + s["sigma"][i] * noise[k + 1] if i > 0 else mean
        else:  # DDIM, eta = 0: eps recomputed from the clamped x0
            eps = (x - s["sqrt_abar"][i] * x0) / s["sqrt_1m_abar"][i]
            x = s["sqrt_abar_prev"][i] * x0 + s["sqrt_1m_abar_prev"][i] * eps
    return x


def to_allocation(x: Array, total_power: Array | float, alloc_map: str = "abs") -> Array:
    """The sample ``x [..., M]`` -> feasible powers (each row adds up to P), by the allocation
    map ``alloc_map`` (one of ``ALLOC_MAPS``):

    - ``abs``: p = P |x| / sum |x| (the paper's; never exactly zero);
    - ``simplex``: p = P proj(x), the Euclidean projection of x onto the probability simplex
      {f >= 0, sum f = 1}: f = max(x - theta, 0) with the threshold theta that makes it add up
      to 1 (a water-filling-like level; exact zeros, differentiable almost everywhere);
    - ``relu``: p = P relu(x) / sum relu(x).

    A row the map cannot place (|x| or relu(x) summing to 0, a NaN) gets the equal split. The one
    definition of these maps, for NumPy arrays and torch tensors alike (the environment's action
    maps use it too); the compiled core's ``to_allocation`` (csrc/denoise.h) is tested against
    it."""
    if alloc_map == "simplex":
        frac = _simplex_projection(x)
    elif alloc_map in ("abs", "relu"):
        where = torch.where if isinstance(x, torch.Tensor) else np.where
        a = abs(x) if alloc_map == "abs" else where(x > 0, x, 0 * x)
        s = a.sum(-1, keepdims=True)
        ok = s > 0
        # The inner where keeps 0 / 0 out of the division (a NumPy warning, a NaN gradient).
        frac = where(ok, a / where(ok, s, 1), 1 / x.shape[-1])
    else:
        raise ValueError(f"unknown allocation map {alloc_map!r}; choose from "
                         f"{', '.join(ALLOC_MAPS)}")  # fmt: skip
    if getattr(total_power, "ndim", 0) == 1:
        total_power = total_power[:, None]
    return frac * total_power


def _simplex_projection(x: Array) -> Array:
    """argmin_f ||f - x|| over {f >= 0, sum f = 1}, per row, by sorting (Held et al. 1974;
    Duchi et al. 2008): with u sorted descending, the active set is the longest prefix with
    u_k > (sum_{j<=k} u_j - 1) / k, and theta is that prefix's (sum - 1) / size. Rows that are not
    finite get the equal split."""
    m = x.shape[-1]
    if isinstance(x, torch.Tensor):
        u = torch.sort(x, dim=-1, descending=True).values
        css = torch.cumsum(u, dim=-1) - 1
        k = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
        rho = (u - css / k > 0).sum(dim=-1, keepdim=True).clamp_min(1)
        theta = torch.gather(css, -1, rho - 1) / rho.to(x.dtype)
        f = torch.clamp(x - theta, min=0)
        ok = torch.isfinite(x).all(dim=-1, keepdim=True)
        return torch.where(ok, f, torch.full_like(f, 1 / m))
    u = -np.sort(-x, axis=-1)
    css = np.cumsum(u, axis=-1) - 1
    k = np.arange(1, m + 1, dtype=x.dtype)
    with np.errstate(invalid="ignore"):
        rho = np.maximum((u - css / k > 0).sum(axis=-1, keepdims=True), 1)
        theta = np.take_along_axis(css, rho - 1, axis=-1) / rho
        f = np.maximum(x - theta, 0)
    ok = np.isfinite(x).all(axis=-1, keepdims=True)
    return np.where(ok, f, np.asarray(1 / m, dtype=f.dtype))
