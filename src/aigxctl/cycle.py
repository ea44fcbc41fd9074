"""The virtuous cycle (the case study the tool exists to replay): T1 collect + train, T2 the
environment changes and the T1 model drifts, T3 the network collects new data and retrains.

Built only from the library's own pieces (scenarios, data.collect_to_file, train.train,
evaluate.evaluate, the SAC baseline); this module orders them, records the curves, and writes
``report.json``, ``metrics.jsonl``, the checkpoints of each phase and ``cycle.png``/``.svg``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigxctl import data, metrics, outputs, plot, scenarios
from aigxctl.checkpoint import load_model
from aigxctl.errors import UserError
from aigxctl.evaluate import evaluate
from aigxctl.files import atomic_write_text
from aigxctl.reward import RewardConfig, train_reward
from aigxctl.settings import MAX_HIDDEN, MAX_STEPS
from aigxctl.train import TrainConfig, train

__all__ = ["PAPER", "CycleConfig", "load_config", "run_cycle"]

# The paper's headline gains over equal allocation (IEEE Network 2024 case study).
PAPER = {"T1": {"gdm": 0.188}, "T3": {"gdm": 0.151, "sac": 0.089}}


@dataclass
class CycleConfig:
    """The cycle's settings. Defaults replay the paper's cycle (M = 20, P = 0.2)."""

    t1_scenario: str = "t1"
    t2_scenario: str = "t2"
    samples: int = 50_000  # expert-labelled samples collected in T1 and again in T2
    t1_steps: int = 3000
    t3_steps: int = 2500
    t3_lr: float = 2e-3
    # Weight of the sum-rate regret in the loss (TrainConfig.rate_weight), for the GDM and the
    # MLP alike (expert training; with training = "reward", t3_lr and both weights are unused).
    # Fine-tuning starts from a model that already gets the regression right, so it can take a
    # larger weight than training from scratch: on the paper's T2 data, 1500 steps from the T1
    # weights reached 99.2 % of the optimum at weight 0.01 and lr 1e-3, 99.4 % at 0.01 and
    # 2e-3, and 99.6 % at 0.1 and 2e-3 (measured).
    rate_weight: float = 0.01
    t3_rate_weight: float = 0.1
    # finetune (T2 data, from the T1 weights) | combined (T1 + T2 data, from the T1 weights) |
    # both (the two, reported side by side; the first is the phase's "gdm")
    retrain: str = "finetune"
    # How the GDM learns: "expert" regresses the water-filling labels of the collected data;
    # "reward" learns from the sum rate alone through a learned double critic (aigxctl.reward),
    # on fresh draws of the phase's scenario, t1_steps / t3_steps steps, with RewardConfig's
    # learning rate; retrain must then be "finetune". The MLP always learns from the expert data.
    training: str = "expert"
    eval_samples: int = 5000
    mlp: bool = True
    sac: bool = True
    sac_steps: int | None = None  # environment samples per phase; None = the GDM's sample count
    seed: int = 0
    hidden: int = 256
    val_every: int = 250
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> CycleConfig:
        """A smoke-test cycle: three phases on small sizes, about 20 s on two cores. SAC gets
        2000 samples, so it takes gradient steps after its 1000 learning_starts ones."""
        return cls(
            samples=4000,
            t1_steps=300,
            t3_steps=150,
            eval_samples=1000,
            hidden=64,
            val_every=50,
            retrain="finetune",
            sac_steps=2000,
        )

    def check(self) -> None:
        if self.retrain not in ("finetune", "combined", "both"):
            raise UserError(f"retrain must be finetune, combined or both, got {self.retrain!r}")
        if self.training not in ("expert", "reward"):
            raise UserError(f"training must be expert or reward, got {self.training!r}")
        if self.training == "reward" and self.retrain != "finetune":
            raise UserError(
                'training = "reward" retrains by fine-tuning on T2 draws: set retrain = "finetune"'
            )
        for key, high in (("samples", None), ("t1_steps", MAX_STEPS), ("t3_steps", MAX_STEPS),
                          ("eval_samples", None), ("hidden", MAX_HIDDEN),
                          ("val_every", MAX_STEPS), ("sac_steps", MAX_STEPS)):  # fmt: skip
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"{key} must be >= 1, got {value}")
            if value is not None and high is not None and value > high:
                raise UserError(f"{key} must be <= {high:,}, got {value}")
        if not (self.t3_lr > 0 and math.isfinite(self.t3_lr)):
            raise UserError(f"t3_lr must be a finite number > 0, got {self.t3_lr}")
        for key in ("rate_weight", "t3_rate_weight"):
            if not (getattr(self, key) >= 0 and math.isfinite(getattr(self, key))):
                raise UserError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")


def load_config(path: str | Path | None, quick: bool = False) -> CycleConfig:
    """Defaults (or the quick ones), overridden by the keys of a TOML file's [cycle] table."""
    cfg = CycleConfig.quick() if quick else CycleConfig()
    if path is None:
        cfg.check()
        return cfg
    path = Path(path)
    raw = scenarios.read_toml(path, "cycle config")
    # The settings sit in a [cycle] table or at the top level, never both: anything beside a
    # [cycle] table would be silently ignored.
    if "cycle" in raw:
        table, prefix = raw["cycle"], "cycle."
        if not isinstance(table, dict):
            raise UserError(f"{path}: cycle: must be a [cycle] table, got {table!r:.40}")
        for key in raw:
            if key != "cycle":
                raise UserError(
                    f"{path}: {key}: unknown top-level key (settings go in the [cycle] table)"
                )
    else:
        table, prefix = raw, ""
    known = {f for f in CycleConfig.__dataclass_fields__ if f != "extra"}
    for key, value in table.items():
        if key not in known:
            raise UserError(
                f"{path}: {prefix}{key}: unknown key (expected {', '.join(sorted(known))})"
            )
        expected = type(getattr(cfg, key))
        if key == "sac_steps":
            expected = int
        if expected is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise UserError(
                f"{path}: {prefix}{key}: expected {expected.__name__}, got {value!r:.40}"
            )
        setattr(cfg, key, value)
    try:
        cfg.check()
    except UserError as exc:
        raise UserError(f"{path}: cycle.{exc}") from None
    for name in (cfg.t1_scenario, cfg.t2_scenario):
        scenarios.get(name)  # fail early on a bad scenario
    return cfg


Display = Callable[[str, dict[str, Any]], None]


def _rates(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per method of an evaluate() result: rate, fraction of the optimum, gain over equal."""
    return {
        ("gdm" if key == "model_rate" else key[: -len("_rate")]): metrics.compare(
            value, res["optimum_rate"], res["equal_rate"]
        )
        for key, value in res.items()
        if key.endswith("_rate")
    }


# What a cycle writes in its run directory (outputs.Layout); each piece is written by its own
# safe writer (dataset files, checkpoint directories), which never replaces anything else.
LAYOUT: outputs.Layout = {
    "data": ("t1.npz", "t2.npz"),
    "models": ("t1_gdm/", "t1_mlp/", "t1_sac/", "t3_gdm/", "t3_gdm_combined/", "t3_mlp/",
               "t3_sac/"),
    "report.json": None,
    "metrics.jsonl": None,
    "cycle.png": None,
    "cycle.svg": None,
}


def run_cycle(
    cfg: CycleConfig, out: str | Path, display: Display | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Run T1 -> T2 -> T3 into ``out``; returns the report (also written as report.json).

    ``out`` must be new or empty, or (with ``force``) a previous cycle's run directory, whose
    pieces are then replaced one by one; a directory holding anything else is refused.
    """
    cfg.check()
    t1, t2 = scenarios.get(cfg.t1_scenario), scenarios.get(cfg.t2_scenario)
    if t1.m != t2.m:
        raise UserError(f"the two scenarios have different M ({t1.m} and {t2.m})")
    for key in ("samples", "eval_samples"):  # held in memory for training and evaluation
        scenarios.check_draw_size(getattr(cfg, key), t1.m, key)
    run = CycleRun(cfg, outputs.claim_dir(out, LAYOUT, force=force, what="cycle run"), display)
    run.t1_good_weather(t1)
    run.t2_rainstorm(t2)
    run.t3_retrain()
    return run.write_report()


class CycleRun:
    """One cycle in its run directory. The phases (the paper's Fig. 5) are its methods; they
    share the models trained so far, the learning curve (``metrics.jsonl``), the training times
    and the step at which the current phase starts on the figure's axis."""

    def __init__(self, cfg: CycleConfig, out: Path, display: Display | None) -> None:
        self.cfg, self.out = cfg, out
        self.show = display or (lambda _phase, _status: None)
        self.curve: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.offset = 0
        self.phases: list[dict[str, Any]] = []
        self.opt_rates: dict[str, float] = {}
        self.sac: Any = None
        self.sac_note: dict[str, Any] = {}
        for sub in ("data", "models"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    # ---- the phases ---------------------------------------------------------------------------

    def t1_good_weather(self, t1: scenarios.Scenario) -> None:
        """T1: collect expert-labelled data under good weather, train every method on it."""
        cfg = self.cfg
        self.show("T1", {"method": "collect"})
        self.d1 = self.collect(t1, "t1.npz", cfg.seed)
        gains = self.eval_gains("T1", t1, cfg.seed + 101)
        self.gdm1 = self.fit("t1_gdm", [self.d1], "gdm", "T1", cfg.t1_steps)
        self.mlp1 = self.fit("t1_mlp", [self.d1], "mlp", "T1", cfg.t1_steps) if cfg.mlp else None
        self.sac, self.sac_note = _sac_start(cfg, t1, self.show)
        if self.sac is not None:
            self.sac.save(self.out / "models" / "t1_sac")
        methods = self.evaluate("T1", gains, self.gdm1, self.mlp1)
        self.phases.append({"name": "T1", "eval_scenario": t1.name,
                            "train_data": [str(self.d1)], "methods": methods})  # fmt: skip
        self.offset += cfg.t1_steps

    def t2_rainstorm(self, t2: scenarios.Scenario) -> None:
        """T2: the weather turns; the T1 models drift. The network collects new expert data."""
        cfg = self.cfg
        self.t2 = t2
        self.g2 = self.eval_gains("T2", t2, cfg.seed + 202)
        self.opt_rates["T3"] = self.opt_rates["T2"]
        methods = self.evaluate("T2", self.g2, self.gdm1, self.mlp1)
        band = max(1, cfg.t3_steps // 5)  # width of the T2 segment on the figure's step axis
        for step in (self.offset, self.offset + band):
            self.curve.append({"phase": "T2", "method": "gdm", "model": "t1_gdm", "step": step,
                               "rate": methods["gdm"]["rate"]})  # fmt: skip
        self.offset += band
        self.show("T2", {"method": "collect"})
        self.d2 = self.collect(t2, "t2.npz", cfg.seed + 1)
        self.phases.append({"name": "T2", "eval_scenario": t2.name, "models_from": "T1",
                            "methods": methods})  # fmt: skip

    def t3_retrain(self) -> None:
        """T3: retrain on the new data (fine-tune, on T1 + T2 data, or both side by side)."""
        cfg = self.cfg
        extra: dict[str, Path] = {}
        if cfg.retrain in ("finetune", "both"):
            gdm3 = self.fit("t3_gdm", [self.d2], "gdm", "T3", cfg.t3_steps, init=self.gdm1)
        if cfg.retrain in ("combined", "both"):
            # Drawn over the same steps as the fine-tuning, beside it.
            start = self.offset
            combined = self.fit("t3_gdm_combined", [self.d1, self.d2], "gdm", "T3c",
                                cfg.t3_steps, init=self.gdm1)  # fmt: skip
            self.offset = start
            if cfg.retrain == "combined":
                gdm3 = combined
            else:
                extra["gdm_combined"] = combined
        mlp3 = (self.fit("t3_mlp", [self.d2], "mlp", "T3", cfg.t3_steps, init=self.mlp1)
                if self.mlp1 else None)  # fmt: skip
        self.sac = _sac_continue(self.sac, cfg, self.t2, self.show)
        if self.sac is not None:
            self.sac.save(self.out / "models" / "t3_sac")
            # What SAC got, per phase: environment samples, wall seconds, training rate.
            self.sac_note["history"] = self.sac.history
        methods = self.evaluate("T3", self.g2, gdm3, mlp3, extra)
        self.phases.append({"name": "T3", "eval_scenario": self.t2.name,
                            "train_data": [str(self.d2)], "retrain": cfg.retrain,
                            "methods": methods})  # fmt: skip
        self.offset += cfg.t3_steps

    def write_report(self) -> dict[str, Any]:
        """report.json, metrics.jsonl and the figure; returns the report."""
        report = {"phases": self.phases, "config": asdict(self.cfg), "paper": PAPER,
                  "sac": self.sac_note, "train_seconds": self.timings}  # fmt: skip
        atomic_write_text(self.out / "metrics.jsonl",
                          "".join(json.dumps(r) + "\n" for r in self.curve))  # fmt: skip
        atomic_write_text(self.out / "report.json", json.dumps(report, indent=2) + "\n")
        plot.cycle_figure(report, self.curve, self.out / "cycle.png", opt_rates=self.opt_rates)
        return report

    # ---- the pieces the phases are made of ----------------------------------------------------

    def collect(self, scenario: scenarios.Scenario, name: str, seed: int) -> Path:
        path = self.out / "data" / name
        data.collect_to_file(scenario, self.cfg.samples, seed, path, overwrite=True)
        return path

    def eval_gains(self, phase: str, scenario: scenarios.Scenario, seed: int) -> np.ndarray:
        """Fresh evaluation draws of the phase; remembers their optimum's mean sum rate."""
        gains = scenarios.draw(scenario, self.cfg.eval_samples, seed)
        self.opt_rates[phase] = metrics.optimum_rate(gains, scenario.total_power, scenario.noise)
        return gains

    def fit(self, name: str, datasets: list[Path], arch: str, phase: str, steps: int,
            init: Path | None = None) -> Path:  # fmt: skip
        """Train one model of the phase into models/NAME, recording its learning curve."""
        cfg = self.cfg
        path = self.out / "models" / name
        start, opt_rate = self.offset, self.opt_rates[phase.rstrip("c")]
        if phase == "T1":
            lr, rate_weight = TrainConfig.lr, cfg.rate_weight
        else:
            lr, rate_weight = cfg.t3_lr, cfg.t3_rate_weight

        def progress(step: int, m: dict[str, float]) -> None:
            if ("val_fraction" in m and step % cfg.val_every == 0) or step == steps:
                row = {"phase": phase, "method": arch, "model": name, "step": start + step,
                       "loss": m["loss"]}  # fmt: skip
                if "val_fraction" in m:
                    row.update(val_fraction=m["val_fraction"], rate=m["val_fraction"] * opt_rate)
                self.curve.append(row)
            self.show(phase, {"method": arch, "step": step, "steps": steps, **m})

        t0 = time.perf_counter()
        # The run directory was claimed (with the user's --force) as a whole: each model may
        # replace the one a previous run left under its name.
        if arch == "gdm" and cfg.training == "reward":
            train_reward(RewardConfig(
                scenario=cfg.t1_scenario if phase == "T1" else cfg.t2_scenario, out=str(path),
                steps=steps, hidden=cfg.hidden, seed=cfg.seed, val_every=cfg.val_every,
                init=str(init) if init else None, force=True), progress)  # fmt: skip
        else:
            train(TrainConfig(
                data=[str(d) for d in datasets], out=str(path), arch=arch, steps=steps, lr=lr,
                rate_weight=rate_weight, seed=cfg.seed, hidden=cfg.hidden,
                init=str(init) if init else None, val_every=cfg.val_every, force=True),
                progress)  # fmt: skip
        self.timings[name] = time.perf_counter() - t0
        return path

    def evaluate(self, phase: str, gains: np.ndarray, gdm: Path, mlp: Path | None,
                 extra: dict[str, Path] | None = None) -> dict[str, Any]:  # fmt: skip
        """Every method of the phase on its evaluation draws (see :func:`_rates`)."""
        self.show(phase, {"method": "evaluate"})
        others = {"mlp": load_model(mlp)} if mlp else {}
        for key, path in (extra or {}).items():
            others[key] = load_model(path)
        if self.sac is not None:
            others["sac"] = self.sac
        return _rates(evaluate(load_model(gdm), gains, others=others, seed=self.cfg.seed))


def _sac_start(cfg: CycleConfig, scenario: Any, show: Display) -> tuple[Any, dict[str, Any]]:
    """Train the SAC baseline on the T1 environment, or say why it was skipped."""
    if not cfg.sac:
        return None, {"status": "skipped", "reason": "disabled in the cycle config"}
    from aigxctl.baselines import sac as sac_mod

    steps = cfg.sac_steps or cfg.samples

    def progress(done: int, m: dict[str, float]) -> None:
        show("T1", {"method": "sac", "step": done, "steps": steps, **m})

    try:
        agent = sac_mod.train_sac(scenario, steps, seed=cfg.seed, progress=progress)
    except sac_mod.SACUnavailable as exc:
        return None, {"status": "skipped", "reason": str(exc)}
    return agent, {"status": "trained", "env_samples_per_phase": steps}


def _sac_continue(agent: Any, cfg: CycleConfig, scenario: Any, show: Display) -> Any:
    """Move the SAC agent to the new scenario and give it the same budget again."""
    if agent is None:
        return None
    steps = cfg.sac_steps or cfg.samples

    def progress(done: int, m: dict[str, float]) -> None:
        show("T3", {"method": "sac", "step": done, "steps": steps, **m})

    agent.set_scenario(scenario)
    agent.train(steps, progress=progress)
    return agent
