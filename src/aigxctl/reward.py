"""Training without an expert: the diffusion policy learns from the sum-rate reward alone,
through a learned double critic (the reference's "solution evaluation network" route, for
problems with no cheap optimum).

Episodes are one step long (see aigxctl.envs): a state is a gain vector, an action the policy's
allocation, the reward its sum rate. Each step the two critics regress the observed reward of the
policy's (slightly perturbed) actions, and the policy, sampled with gradients through all T
denoising steps, climbs min(Q1, Q2). The water-filling optimum is used only to report progress.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aigxctl import core, metrics, scenarios
from aigxctl.checkpoint import claim, load_model, save_model
from aigxctl.diffusion import Schedule, reverse_process, to_allocation
from aigxctl.errors import UserError
from aigxctl.model import GDM, Denoiser
from aigxctl.settings import RewardConfig

__all__ = ["RewardConfig", "train_reward"]


class Critic(nn.Module):
    """Q(state, action fraction) -> predicted sum rate."""

    def __init__(self, m: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * m, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, 1),
        )

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], dim=-1)).squeeze(-1)


def _sum_rate(gains: torch.Tensor, power: torch.Tensor, noise: float) -> torch.Tensor:
    return torch.log2(1 + gains * power / noise).sum(dim=-1)


def train_reward(
    cfg: RewardConfig, progress: Callable[[int, dict[str, float]], None] | None = None
) -> dict[str, Any]:
    """Train a GDM policy from rewards only and write its checkpoint; returns final metrics."""
    cfg.check()
    claim(cfg.out, force=cfg.force)
    torch.manual_seed(cfg.seed)
    scen = scenarios.get(cfg.scenario)
    rng = np.random.default_rng(cfg.seed)
    learner = _ActorCritic(cfg, scen, _initial_model(cfg, scen, rng))
    model = learner.model
    val = scen.sample(cfg.val_samples, rng)
    val_opt = metrics.optimum_rate(val, scen.total_power, scen.noise)
    t0 = time.perf_counter()
    last: dict[str, Any] = {}
    lines = []
    for step in range(cfg.steps):
        g = torch.as_tensor(scen.sample(cfg.batch, rng), dtype=torch.float32)
        critic_loss = learner.step(g, acting=step >= cfg.warmup_steps)
        done = step + 1
        if done % cfg.val_every == 0 or done == cfg.steps:
            last = {
                "step": done,
                "critic_loss": float(critic_loss.detach()),
                "val_fraction": _validation_rate(model, val, scen.noise) / val_opt,
                "seconds": time.perf_counter() - t0,
            }
            lines.append(last)
        if progress is not None:
            progress(
                done,
                {
                    "loss": float(critic_loss.detach()),
                    **{k: v for k, v in last.items() if k == "val_fraction"},
                },
            )
    model.denoiser.eval()
    _save(cfg, scen, model, last, lines)
    return {**last, "seconds": time.perf_counter() - t0, "samples": cfg.steps * cfg.batch}


class _ActorCritic:
    """The policy (the actor), its two critics and their optimisers, trained a step at a time."""

    def __init__(self, cfg: RewardConfig, scen: scenarios.Scenario, model: GDM) -> None:
        self.model = model
        self.power, self.noise = scen.total_power, scen.noise
        self.exploration = cfg.exploration
        model.denoiser.train()
        hidden = model.denoiser.hidden
        self.critics = [Critic(scen.m, hidden), Critic(scen.m, hidden)]
        self.actor_opt = torch.optim.AdamW(model.denoiser.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.AdamW(
            [p for c in self.critics for p in c.parameters()], lr=cfg.critic_lr
        )

    def step(self, g: torch.Tensor, acting: bool) -> torch.Tensor:
        """One step on the gains ``g``: the critics learn, and the policy too when ``acting``
        (not during the critics' warm-up). Returns the critics' loss."""
        model = self.model
        state = model.normalise(g)
        z = torch.randn(model.T + 1, *g.shape)
        with torch.set_grad_enabled(acting):  # no graph while only the critics learn
            frac = to_allocation(
                reverse_process(
                    model.denoiser, model.schedule, state, z, pred=model.pred, mode="ancestral"
                ),
                1.0,
            )
        critic_loss = self._fit_critics(g, state, frac)
        if acting:
            self._climb(state, frac)
        return critic_loss

    def _fit_critics(
        self, g: torch.Tensor, state: torch.Tensor, frac: torch.Tensor
    ) -> torch.Tensor:
        """Critics: regress the reward of perturbed copies of the policy's actions."""
        explore = to_allocation(frac.detach() + self.exploration * torch.randn_like(frac), 1.0)
        reward = _sum_rate(g, self.power * explore, self.noise)
        loss = sum(nn.functional.mse_loss(c(state, explore), reward) for c in self.critics)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return loss

    def _climb(self, state: torch.Tensor, frac: torch.Tensor) -> None:
        """Actor: climb the pessimistic critic, min(Q1, Q2)."""
        q = torch.min(self.critics[0](state, frac), self.critics[1](state, frac))
        actor_loss = -q.mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()


def _validation_rate(model: GDM, val: np.ndarray, noise: float) -> float:
    """The policy's mean sum rate on the validation gains (evaluated in eval mode)."""
    model.weights_changed()
    model.denoiser.eval()
    rate = float(core.sum_rate(val, model.allocate(val, seed=1), noise).mean())
    model.denoiser.train()
    return rate


def _save(
    cfg: RewardConfig,
    scen: scenarios.Scenario,
    model: GDM,
    last: dict[str, Any],
    lines: list[dict[str, Any]],
) -> None:
    """Write the trained policy's checkpoint, with the validation rows as its metrics."""
    save_model(
        model,
        Path(cfg.out),
        {
            "training": "reward",
            "scenario": scen.to_dict(),
            "seed": cfg.seed,
            "init": cfg.init,
            "metrics": last,
            "progress": {"steps_done": cfg.steps, "steps_planned": cfg.steps, "complete": True},
        },
        metrics=[json.dumps(x) for x in lines],
    )


def _initial_model(cfg: RewardConfig, scen: scenarios.Scenario, rng: np.random.Generator) -> GDM:
    """A fresh GDM normalised to the scenario's gains, or the ``init`` checkpoint."""
    if cfg.init is None:
        probe = scen.sample(20000, rng)
        return GDM(
            denoiser=Denoiser(scen.m, cfg.hidden),
            schedule=Schedule.create("vp", cfg.denoise_steps),
            pred="x0",
            cond_mean=probe.mean(axis=0),
            cond_std=probe.std(axis=0) + 1e-8,
            total_power=scen.total_power,
            noise=scen.noise,
        )
    model = load_model(cfg.init)
    if not isinstance(model, GDM):
        raise UserError(f"--init {cfg.init}: a {model.arch} model cannot seed reward training")
    if model.m != scen.m:
        raise UserError(
            f"--init {cfg.init}: the model has M = {model.m}, scenario {scen.name!r} M = {scen.m}"
        )
    # The policy maps to the scenario's budget; keep the checkpoint's normalisation.
    model.total_power, model.noise = float(scen.total_power), float(scen.noise)
    return model
