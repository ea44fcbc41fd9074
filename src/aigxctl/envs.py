"""A Gymnasium environment for power allocation, so off-the-shelf deep RL (the SAC baseline) can
learn it from the sum-rate reward alone.

One step per episode (a contextual bandit): ``reset`` draws a gain vector from the scenario and
shows it as the observation; the action is a vector of allocation weights that
``action_to_power`` maps to a feasible allocation (p >= 0, sum p = P); the reward is that
allocation's sum rate (``core.sum_rate``) and the episode ends. ``info`` carries the
water-filling optimum's and the equal split's rates for the same gains, so callers can report
the % of the optimum without recomputing anything.

The scenario can be swapped between episodes (``set_scenario``), which is how the T1 -> T2
drift reaches an agent that keeps training.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from aigxctl import core, metrics
from aigxctl.errors import UserError

__all__ = ["ACTION_MAPS", "PowerAllocationEnv", "StandardizedGains", "action_to_power"]

# How an action a in [-1, 1]^M becomes an allocation (see action_to_power).
ACTION_MAPS = ("softmax", "relu", "abs", "linear")
SOFTMAX_SCALE = 5.0  # a in [-1, 1] -> logits in [-5, 5]: weights can differ by e^10 ~ 2e4


def action_to_power(action: np.ndarray, total_power: float, mapping: str = "softmax") -> np.ndarray:
    """Map actions ``[..., M]`` in [-1, 1] to powers ``[..., M]`` >= 0 adding up to
    ``total_power`` (float64).

    * ``softmax``: p = P softmax(5 a), every channel keeps a little power;
    * ``relu``: p = P max(a, 0) / sum max(a, 0), channels with a <= 0 get nothing (the optimum
      at low P switches most channels off); all a <= 0 gives the equal split;
    * ``abs``: p = P |a| / sum |a|, the GDM's own mapping; all zero gives the equal split;
    * ``linear``: p = P (a + 1) / sum (a + 1); all -1 gives the equal split.
    """
    # Imported here: diffusion imports torch, which importing this module does not.
    from aigxctl.diffusion import to_allocation

    a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    if mapping in ("relu", "abs"):  # the GDM's allocation maps of the same names
        return to_allocation(a, total_power, mapping)
    if mapping == "softmax":
        z = SOFTMAX_SCALE * a
        w = np.exp(z - z.max(axis=-1, keepdims=True))
    elif mapping == "linear":
        w = a + 1.0
    else:
        raise UserError(f"unknown action mapping {mapping!r}; choose from {', '.join(ACTION_MAPS)}")
    # w >= 0, so P |w| / sum |w| is P w / sum w; a row with no weight at all (possible for
    # linear, and for relu/abs above) gets the equal split.
    return to_allocation(w, total_power)


class PowerAllocationEnv(gym.Env):
    """One-step power allocation episodes drawn from a scenario (see the module docstring).

    Args:
        scenario: anything with ``m``, ``total_power``, ``noise`` and ``sample(n, rng)``
            (an ``aigxctl.scenarios.Scenario``).
        seed: seeds the gain draws (as ``reset(seed=...)`` would).
        action_map: how actions become allocations, one of ``ACTION_MAPS``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, scenario: Any, *, seed: int | None = None, action_map: str = "softmax"):
        super().__init__()
        if action_map not in ACTION_MAPS:
            raise UserError(
                f"unknown action mapping {action_map!r}; choose from {', '.join(ACTION_MAPS)}"
            )
        self.scenario = scenario
        self.action_map = action_map
        m = int(scenario.m)
        # Gains are unbounded above (Rayleigh fading); the largest float32 says so without the
        # infinite bound that Gymnasium's checker warns about.
        high = np.finfo(np.float32).max
        self.observation_space = gym.spaces.Box(0.0, high, shape=(m,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(m,), dtype=np.float32)
        self._gains: np.ndarray | None = None
        if seed is not None:
            self.reset(seed=seed)

    def set_scenario(self, scenario: Any) -> None:
        """Draw later episodes from ``scenario`` (same number of channels)."""
        if int(scenario.m) != self.observation_space.shape[0]:
            raise UserError(
                f"scenario {getattr(scenario, 'name', '?')!r} has {scenario.m} channels, "
                f"the environment has {self.observation_space.shape[0]}"
            )
        self.scenario = scenario
        self._gains = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs = self.scenario.sample(1, self.np_random)[0].astype(np.float32)
        # The agent sees float32 gains; the reward is computed on exactly those gains.
        self._gains = obs.astype(np.float64)
        return obs, {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._gains is None:
            raise RuntimeError("call reset() before step()")
        g = self._gains
        p, s2 = float(self.scenario.total_power), float(self.scenario.noise)
        power = action_to_power(action, p, self.action_map)
        rate = float(core.sum_rate(g, power, s2))
        info = {
            "power": power,
            "optimum_rate": metrics.optimum_rate(g, p, s2),
            "equal_rate": metrics.equal_rate(g, p, s2),
        }
        obs = g.astype(np.float32)  # the episode is over; the final observation is unused
        self._gains = None
        return obs, rate, True, False, info


class StandardizedGains(gym.ObservationWrapper):
    """Shows the agent ``(gains - mean) / std`` (per channel, float32), as the generative model
    normalises its condition; the reward and ``info`` are unchanged."""

    def __init__(self, env: gym.Env, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__(env)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        shape = env.observation_space.shape
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return (observation - self.mean) / self.std
