"""Small diffusion models with random weights for the tests (shared by several test files)."""

from __future__ import annotations

import numpy as np
import torch

from aigxctl.diffusion import Schedule
from aigxctl.model import GDM, Denoiser

__all__ = ["make_gdm"]


def make_gdm(m=20, hidden=64, steps=6, pred="x0", schedule="vp", seed=0) -> GDM:
    torch.manual_seed(seed)
    den = Denoiser(m, hidden)
    with torch.no_grad():  # larger weights than the default init, so every layer matters
        for p in den.parameters():
            p.mul_(2.0)
    rng = np.random.default_rng(seed)
    return GDM(denoiser=den.eval(), schedule=Schedule.create(schedule, steps), pred=pred,
               cond_mean=rng.uniform(2, 5, m), cond_std=rng.uniform(0.5, 2, m),
               total_power=0.2, noise=1.0)  # fmt: skip
