"""The deep-RL baseline: Stable-Baselines3's SAC learning power allocation from the sum-rate
reward alone, on ``aigxctl.envs.PowerAllocationEnv``.

It sees only what a network without an expert would see (gains, and the rate of what it
tried), with a budget counted in environment samples so that it can be given as many as the
generative model's dataset holds. ``set_scenario`` moves it to a new scenario (T1 -> T2) and
``train`` continues from where it was, replay buffer included (the reward of a gain vector and
an allocation does not change with the scenario, so old transitions stay valid).

Tuning (measured on T1, P = 0.2; see the README's cycle section): the ``relu`` action mapping
(channels with a weight <= 0 get no power, as most do at the optimum at low P) trains much
faster than a softmax; small networks with several samples per gradient step give the most
quality per CPU second, because SB3's per-step Python overhead, not arithmetic, dominates.
Observations are standardised per channel with statistics of the first scenario, kept fixed
afterwards (as the generative model keeps its condition normalisation when fine-tuned).

Stable-Baselines3 is an optional dependency (``pip install 'aigxctl[rl]'``): this module imports
without it, and everything that needs it raises ``SACUnavailable``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigxctl import core
from aigxctl.errors import UserError
from aigxctl.files import atomic_path, atomic_write_text

__all__ = [
    "INSTALL_HINT",
    "SACBaseline",
    "SACConfig",
    "SACUnavailable",
    "available",
    "require",
    "train_sac",
]

INSTALL_HINT = "install aigxctl[rl]"  # for "SAC skipped: install aigxctl[rl]"
Progress = Callable[[int, dict[str, float]], None]


class SACUnavailable(ImportError):
    """Stable-Baselines3 (or Gymnasium) is not installed: the SAC baseline cannot run."""

    def __init__(self, missing: str) -> None:
        self.missing = missing
        super().__init__(
            f"the SAC baseline needs {missing}, which is not installed: {INSTALL_HINT} "
            f"(pip install 'aigxctl[rl]')"
        )


def require() -> Any:
    """Import and return ``stable_baselines3``, or raise SACUnavailable."""
    try:
        import gymnasium  # noqa: F401
    except ImportError:
        raise SACUnavailable("gymnasium") from None
    try:
        import stable_baselines3
    except ImportError:
        raise SACUnavailable("stable-baselines3") from None
    return stable_baselines3


def available() -> bool:
    """True when the SAC baseline can run (the ``rl`` extra is installed)."""
    try:
        require()
    except SACUnavailable:
        return False
    return True


@dataclass
class SACConfig:
    """SAC's settings. Samples are environment steps (one gain vector each); with ``n_envs``
    environments SB3 collects ``n_envs`` samples per step and then takes ``gradient_steps``
    gradient steps on batches of ``batch_size`` from the replay buffer."""

    action_map: str = "relu"
    learning_rate: float = 3e-3
    batch_size: int = 256
    net: tuple[int, ...] = (64, 64)
    n_envs: int = 8
    gradient_steps: int = 1
    learning_starts: int = 1000
    buffer_size: int = 200_000
    ent_coef: str | float = "auto_0.01"  # learned, starting at 0.01 (SB3: 1.0)
    normalize: bool = True
    norm_samples: int = 10_000
    # torch CPU threads while SAC trains and acts. Its networks are tiny: one thread is fastest,
    # and on a busy machine two spin-waiting threads made each step ~20x slower (measured).
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # passed to SB3's SAC as is

    def check(self) -> None:
        from aigxctl.envs import ACTION_MAPS

        if self.action_map not in ACTION_MAPS:
            raise UserError(
                f"sac.action_map must be one of {', '.join(ACTION_MAPS)}, got {self.action_map!r}"
            )
        for name in ("batch_size", "n_envs", "gradient_steps", "buffer_size", "norm_samples",
                     "threads"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise UserError(f"sac.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_starts < 0:
            raise UserError(f"sac.learning_starts must be >= 0, got {self.learning_starts}")
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
            raise UserError(
                f"sac.learning_rate must be a finite number > 0, got {self.learning_rate}"
            )
        if not self.net or any(int(h) < 1 for h in self.net):
            raise UserError(f"sac.net must be a list of layer widths >= 1, got {list(self.net)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SACConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"sac: unknown setting(s) {', '.join(unknown)}")
        cfg = cls(**{**data, "net": tuple(data.get("net", cls.net))})
        cfg.check()
        return cfg


class SACBaseline:
    """SAC on ``PowerAllocationEnv``: ``train(samples)``, ``set_scenario``, ``allocate(gains)``.

    Args:
        scenario: where gain vectors come from (``aigxctl.scenarios.Scenario``).
        seed: seeds the gain draws, the exploration and the network initialisation.
        config: SAC's settings (``SACConfig()`` by default).
    """

    name = "sac"

    def __init__(self, scenario: Any, *, seed: int = 0, config: SACConfig | None = None) -> None:
        require()
        self.config = config or SACConfig()
        self.config.check()
        self.seed = int(seed)
        self.scenario = scenario
        if self.config.normalize:
            # A fixed, seeded draw, so the same seed gives the same agent.
            g = scenario.sample(self.config.norm_samples, np.random.default_rng([self.seed, 7]))
            self.obs_mean, self.obs_std = g.mean(axis=0), g.std(axis=0) + 1e-8
        else:
            self.obs_mean, self.obs_std = np.zeros(scenario.m), np.ones(scenario.m)
        self.vec_env = self._make_vec_env(scenario)
        self.model = self._new_model()
        self.seconds = 0.0  # wall time spent training
        self.history: list[dict[str, Any]] = []  # one entry per scenario trained on

    # --- construction ------------------------------------------------------------------------

    def _make_vec_env(self, scenario: Any) -> Any:
        from stable_baselines3.common.env_util import make_vec_env

        from aigxctl.envs import PowerAllocationEnv, StandardizedGains

        def make() -> Any:
            env = PowerAllocationEnv(scenario, action_map=self.config.action_map)
            return StandardizedGains(env, self.obs_mean, self.obs_std)

        return make_vec_env(make, n_envs=self.config.n_envs, seed=self.seed)

    def _new_model(self) -> Any:
        from stable_baselines3 import SAC

        c = self.config
        kwargs = dict(
            policy="MlpPolicy",
            env=self.vec_env,
            learning_rate=c.learning_rate,
            batch_size=c.batch_size,
            buffer_size=c.buffer_size,
            learning_starts=c.learning_starts,
            train_freq=1,
            gradient_steps=c.gradient_steps,
            ent_coef=c.ent_coef,
            # One-step episodes: every transition is terminal, so gamma never multiplies a
            # bootstrapped value; Q(s, a) is the expected reward.
            policy_kwargs={"net_arch": list(c.net)},
            seed=self.seed,
            device="cpu",
            verbose=0,
        )
        try:
            return _quiet(SAC(**{**kwargs, **c.extra}))
        except TypeError as exc:  # a misspelt setting in ``extra``
            raise UserError(f"sac.extra: {exc}") from None

    # --- properties --------------------------------------------------------------------------

    @property
    def m(self) -> int:
        return int(self.scenario.m)

    @property
    def total_power(self) -> float:
        return float(self.scenario.total_power)

    @property
    def noise(self) -> float:
        return float(self.scenario.noise)

    @property
    def samples(self) -> int:
        """Environment samples trained on so far (all scenarios)."""
        return int(self.model.num_timesteps)

    # --- training ----------------------------------------------------------------------------

    def set_scenario(self, scenario: Any) -> None:
        """Draw later training samples from ``scenario`` (same M); the agent, its optimiser
        state and its replay buffer carry over."""
        if int(scenario.m) != self.m:
            raise UserError(
                f"SAC: scenario {getattr(scenario, 'name', '?')!r} has M = {scenario.m} "
                f"channels, the agent was built for M = {self.m}"
            )
        for env in self.vec_env.envs:
            env.unwrapped.set_scenario(scenario)
        self.scenario = scenario
        # Pending observations were drawn from the old scenario: make SB3 reset them.
        self.model.set_env(self.vec_env, force_reset=True)

    def train(self, samples: int, *, progress: Progress | None = None, every: int = 1000) -> dict:
        """Train on ``samples`` more environment samples from the current scenario.

        ``progress(samples_so_far, stats)`` is called about every ``every`` samples with
        ``train_fraction_of_optimum`` (the exploring policy's mean rate over those samples / the
        optimum's) and SB3's latest ``actor_loss``, ``critic_loss`` and ``ent_coef``.
        Returns what happened: samples, seconds, and the training fraction of optimum over the
        last ``every`` samples.
        """
        if samples < 1:
            raise UserError(f"SAC: samples must be >= 1, got {samples}")
        callback = _callback(progress, every, start=self.samples)
        start = time.perf_counter()
        before = self.samples
        # log_interval: SB3 would otherwise summarise its logs every 4 episodes = 4 samples.
        with _torch_threads(self.config.threads):
            self.model.learn(
                samples, callback=callback, log_interval=10**9, reset_num_timesteps=False
            )
        seconds = time.perf_counter() - start
        self.seconds += seconds
        frac = callback.fraction()
        entry = {
            "scenario": getattr(self.scenario, "name", None),
            "samples": self.samples - before,
            "seconds": seconds,
            # None (JSON null) when the run was too short to measure it.
            "train_fraction_of_optimum": frac if np.isfinite(frac) else None,
        }
        self.history.append(entry)
        return entry

    # --- using it ----------------------------------------------------------------------------

    def allocate(self, gains: np.ndarray, total_power: float | None = None, **_: Any) -> np.ndarray:
        """Powers ``[B, M]`` (float64, rows add up to P) from the deterministic policy for gains
        ``[B, M]`` (or ``[M]`` -> ``[M]``). Extra keyword arguments (seed, mode, ...) that the
        generative model takes are accepted and ignored, so evaluation code can treat both
        alike."""
        from aigxctl.envs import action_to_power

        g = np.asarray(gains, dtype=np.float64)
        single = g.ndim == 1
        g2 = g.reshape(1, -1) if single else g
        if g2.ndim != 2 or g2.shape[1] != self.m:
            raise UserError(f"SAC: gains must have shape [B, {self.m}], got {list(g.shape)}")
        core.check_gains(g2)
        p = self.total_power if total_power is None else float(total_power)
        if not (p > 0 and np.isfinite(p)):
            raise UserError(f"total_power must be a finite number > 0, got {p!r}")
        obs = ((g2.astype(np.float32) - self.obs_mean) / self.obs_std).astype(np.float32)
        with _torch_threads(self.config.threads):
            action, _ = self.model.predict(obs, deterministic=True)
        power = action_to_power(action, p, self.config.action_map)
        return power[0] if single else power

    # --- files -------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/sac.zip`` (SB3's own format: policy, critics, optimisers; the
        replay buffer is not kept) and ``directory/sac.json`` (settings, normalisation,
        scenario, history)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "sac.zip") as tmp:
            self.model.save(tmp)
        scenario = self.scenario.to_dict() if hasattr(self.scenario, "to_dict") else None
        meta = {
            "format": "aigxctl-sac",
            "version": 1,
            "config": {**asdict(self.config), "net": list(self.config.net)},
            "seed": self.seed,
            "obs_mean": self.obs_mean.tolist(),
            "obs_std": self.obs_std.tolist(),
            "scenario": scenario,
            "samples": self.samples,
            "seconds": self.seconds,
            "history": self.history,
        }
        atomic_write_text(out / "sac.json", json.dumps(meta, indent=1) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path, scenario: Any = None) -> SACBaseline:
        """Read what ``save`` wrote. Training continues on ``scenario`` (default: the saved one)
        with an empty replay buffer."""
        require()
        from stable_baselines3 import SAC

        from aigxctl.scenarios import Scenario

        src = Path(directory)
        meta_path, zip_path = src / "sac.json", src / "sac.zip"
        for path in (meta_path, zip_path):
            if not path.is_file():
                raise UserError(f"{src}: not a SAC baseline folder (no {path.name})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{meta_path}: cannot read ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != "aigxctl-sac":
            raise UserError(f"{meta_path}: not an aigxctl SAC baseline")
        if scenario is None:
            if not meta.get("scenario"):
                raise UserError(f"{meta_path}: holds no scenario; pass one to load()")
            scenario = Scenario.from_dict(meta["scenario"], source=str(meta_path))
        self = cls.__new__(cls)
        self.config = SACConfig.from_dict(meta["config"])
        self.seed = int(meta["seed"])
        self.scenario = scenario
        self.obs_mean = np.asarray(meta["obs_mean"], dtype=np.float64)
        self.obs_std = np.asarray(meta["obs_std"], dtype=np.float64)
        if self.obs_mean.shape != (scenario.m,):
            raise UserError(
                f"{meta_path}: the agent has M = {self.obs_mean.size}, the scenario M = "
                f"{scenario.m}"
            )
        self.vec_env = self._make_vec_env(scenario)
        try:
            self.model = _quiet(SAC.load(zip_path, env=self.vec_env, device="cpu"))
        except Exception as exc:  # SB3 raises many kinds for a damaged zip
            raise UserError(f"{zip_path}: cannot load the SAC agent ({exc})") from None
        self.seconds = float(meta.get("seconds", 0.0))
        self.history = list(meta.get("history", []))
        return self


def train_sac(
    scenario: Any,
    samples: int,
    *,
    seed: int = 0,
    config: SACConfig | None = None,
    progress: Progress | None = None,
) -> SACBaseline:
    """A new SAC agent trained on ``samples`` environment samples of ``scenario``."""
    agent = SACBaseline(scenario, seed=seed, config=config)
    agent.train(samples, progress=progress)
    return agent


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, then restore the caller's setting."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def _callback(progress: Progress | None, every: int, start: int = 0) -> Any:
    """An SB3 callback that tracks the training rate against the optimum (from the env's
    ``info``) and reports it through ``progress`` about every ``every`` samples, counting the
    samples of this call (SB3's counter goes on from ``start``)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Track(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rate = self.opt = 0.0  # sums over the current window of samples
            self.count = 0
            self.last = float("nan")  # fraction of optimum over the last full window

        def _on_step(self) -> bool:
            # One-step episodes: each reward is the sum rate of one allocation.
            for reward, info in zip(self.locals["rewards"], self.locals["infos"], strict=True):
                self.rate += float(reward)
                self.opt += float(info["optimum_rate"])
                self.count += 1
            if self.count >= every:
                self.last = self.rate / self.opt
                self.rate = self.opt = 0.0
                self.count = 0
                if progress is not None:
                    values = self.model.logger.name_to_value
                    progress(
                        int(self.model.num_timesteps) - start,
                        {
                            "train_fraction_of_optimum": self.last,
                            "actor_loss": float(values.get("train/actor_loss", float("nan"))),
                            "critic_loss": float(values.get("train/critic_loss", float("nan"))),
                            "ent_coef": float(values.get("train/ent_coef", float("nan"))),
                        },
                    )
            return True

        def fraction(self) -> float:
            """The exploring policy's rate / the optimum's over the last window."""
            return self.rate / self.opt if self.count >= every // 2 else self.last

    return Track()


def _quiet(model: Any) -> Any:
    """``model`` with a logger that records values but writes nowhere: SB3's default logger
    makes an empty ``SB3-<date>`` directory in the system's temporary folder on every learn()."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))
    return model
