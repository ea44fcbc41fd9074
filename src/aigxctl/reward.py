"""Training without an expert: the diffusion policy learns from the sum-rate reward alone, on
fresh draws of the scenario every step. The water-filling optimum is used only to report
progress. Two objectives (``RewardConfig.objective``):

``rate`` (the default) uses that the reward is a known, differentiable function: the policy's
decision, the deterministic DDIM sample from a fresh start noise, is mapped to powers by the
model's allocation map and the sum rate is back-propagated through the map and all T denoising
steps to the denoiser (a direct policy gradient, no critic). With a map that switches channels
off (simplex, relu), a channel at zero power gets no gradient through the map, so a channel
wrongly switched off would stay off: for those channels the objective adds the KKT violation of
water-filling, max(0, dC/dp_n - lambda) (lambda: the mean marginal rate of the channels that have
power), as a push on their sample. It is zero at the optimum, where no switched-off channel's
marginal rate beats the level.

``critic`` is the reference's "solution evaluation network" route, for a reward one cannot
differentiate: episodes are one step long (see aigxctl.envs), and each step two critics regress
the observed reward of the policy's (slightly perturbed) ancestral actions while the policy,
sampled with gradients through all T steps, climbs min(Q1, Q2).
"""

from __future__ import annotations

import json
import math
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

__all__ = ["RewardConfig", "kkt_push", "train_reward"]


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


# Torch threads while training. The steps are small matrix products (batch 256, width 256): on
# the 2-core CPU under load a second thread made a step 5x slower (0.26 s against 0.049 s,
# medians of 3 alternated runs), and idle it gains little.
TRAIN_THREADS = 1


def train_reward(
    cfg: RewardConfig, progress: Callable[[int, dict[str, float]], None] | None = None
) -> dict[str, Any]:
    """Train a GDM policy from rewards only and write its checkpoint; returns final metrics."""
    cfg.check()
    claim(cfg.out, force=cfg.force)
    before = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return _train(cfg, progress)
    finally:
        torch.set_num_threads(before)


def _train(
    cfg: RewardConfig, progress: Callable[[int, dict[str, float]], None] | None
) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    scen = scenarios.get(cfg.scenario)
    rng = np.random.default_rng(cfg.seed)
    model = _initial_model(cfg, scen, rng)
    learner: _RateAscent | _ActorCritic = (
        _RateAscent(cfg, scen, model) if cfg.objective == "rate" else _ActorCritic(cfg, scen, model)
    )
    val = scen.sample(cfg.val_samples, rng)
    val_opt = metrics.optimum_rate(val, scen.total_power, scen.noise)
    t0 = time.perf_counter()
    last: dict[str, Any] = {}
    lines = []
    for step in range(cfg.steps):
        g = torch.as_tensor(scen.sample(cfg.batch, rng), dtype=torch.float32)
        loss = learner.step(g, step)
        done = step + 1
        if done % cfg.val_every == 0 or done == cfg.steps:
            last = {
                "step": done,
                learner.loss_name: loss,
                "val_fraction": _validation_rate(model, val, scen.noise) / val_opt,
                "seconds": time.perf_counter() - t0,
            }
            lines.append(last)
        if progress is not None:
            progress(
                done,
                {"loss": loss, **{k: v for k, v in last.items() if k == "val_fraction"}},
            )
    model.denoiser.eval()
    _save(cfg, scen, model, last, lines)
    return {**last, "seconds": time.perf_counter() - t0, "samples": cfg.steps * cfg.batch}


def _sum_rate(gains: torch.Tensor, power: torch.Tensor, noise: float) -> torch.Tensor:
    return torch.log2(1 + gains * power / noise).sum(dim=-1)


class _RateAscent:
    """The ``rate`` objective: gradient ascent on the known sum rate of the policy's DDIM
    decisions, the learning rate decaying on a cosine to 0 over the run."""

    loss_name = "neg_rate"

    def __init__(self, cfg: RewardConfig, scen: scenarios.Scenario, model: GDM) -> None:
        self.model, self.steps = model, cfg.steps
        self.power, self.noise = scen.total_power, scen.noise
        model.denoiser.train()
        self.opt = torch.optim.AdamW(model.denoiser.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, self.steps) / self.steps))
        )

    def step(self, g: torch.Tensor, step: int) -> float:
        """One ascent step on the gains ``g``; returns minus the mean sum rate (bit/s/Hz)."""
        model = self.model
        z = torch.randn(model.T + 1, *g.shape)  # only z[0] matters: DDIM adds no noise
        x = reverse_process(
            model.denoiser, model.schedule, model.normalise(g), z, pred=model.pred, mode="ddim"
        )
        p = to_allocation(x, self.power, model.alloc_map)
        rate = _sum_rate(g, p, self.noise)
        loss = -(rate + (kkt_push(g, p, self.power, self.noise) * x).sum(dim=-1)).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return -float(rate.detach().mean())


def kkt_push(gains: torch.Tensor, power: torch.Tensor, total_power: float, noise: float
             ) -> torch.Tensor:  # fmt: skip
    """The gradient (no graph) that wakes channels an allocation map has switched off: for a
    channel at zero power, P max(0, dC/dp_n - lambda), with dC/dp_n = g_n / (ln 2 (sigma^2 +
    g_n p_n)) and lambda the mean of it over the channels with power (their common level at the
    optimum); 0 for channels with power, which the map's own gradient serves. All zeros at the
    water-filling optimum (its KKT conditions) and for the abs map (no channel is ever off)."""
    with torch.no_grad():
        marginal = gains / (math.log(2.0) * (noise + gains * power))
        on = power > 0
        level = (marginal * on).sum(-1, keepdim=True) / on.sum(-1, keepdim=True).clamp_min(1)
        return torch.clamp(marginal - level, min=0) * (~on) * total_power


class _ActorCritic:
    """The ``critic`` objective: the policy (the actor), its two critics and their optimisers,
    trained a step at a time."""

    loss_name = "critic_loss"

    def __init__(self, cfg: RewardConfig, scen: scenarios.Scenario, model: GDM) -> None:
        self.model = model
        self.power, self.noise = scen.total_power, scen.noise
        self.exploration = cfg.exploration
        self.warmup = cfg.warmup_steps
        model.denoiser.train()
        hidden = model.denoiser.hidden
        self.critics = [Critic(scen.m, hidden), Critic(scen.m, hidden)]
        self.actor_opt = torch.optim.AdamW(model.denoiser.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.AdamW(
            [p for c in self.critics for p in c.parameters()], lr=cfg.critic_lr
        )

    def step(self, g: torch.Tensor, step: int) -> float:
        """One step on the gains ``g``: the critics learn, and the policy too after the
        critics' warm-up. Returns the critics' loss."""
        model = self.model
        acting = step >= self.warmup
        state = model.normalise(g)
        z = torch.randn(model.T + 1, *g.shape)
        with torch.set_grad_enabled(acting):  # no graph while only the critics learn
            frac = to_allocation(
                reverse_process(
                    model.denoiser, model.schedule, state, z, pred=model.pred, mode="ancestral"
                ),
                1.0,
                model.alloc_map,
            )
        critic_loss = self._fit_critics(g, state, frac)
        if acting:
            self._climb(state, frac)
        return float(critic_loss.detach())

    def _fit_critics(
        self, g: torch.Tensor, state: torch.Tensor, frac: torch.Tensor
    ) -> torch.Tensor:
        """Critics: regress the reward of perturbed copies of the policy's actions."""
        explore = to_allocation(
            frac.detach() + self.exploration * torch.randn_like(frac), 1.0, self.model.alloc_map
        )
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
            "objective": cfg.objective,
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
            alloc_map=cfg.alloc_map,
        )
    model = load_model(cfg.init)
    if not isinstance(model, GDM):
        raise UserError(f"--init {cfg.init}: a {model.arch} model cannot seed reward training")
    if model.m != scen.m:
        raise UserError(
            f"--init {cfg.init}: the model has M = {model.m}, scenario {scen.name!r} M = {scen.m}"
        )
    # The policy maps to the scenario's budget with the run's map; keep the checkpoint's
    # normalisation.
    model.total_power, model.noise = float(scen.total_power), float(scen.noise)
    model.alloc_map = cfg.alloc_map
    model.weights_changed()
    return model
