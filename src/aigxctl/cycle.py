"""The virtuous cycle (the case study the tool exists to replay): T1 collect + train, T2 the
environment changes and the T1 model drifts, T3 the network collects new data and retrains.

Built only from the library's own pieces (scenarios, data.collect_to_file, train.train,
evaluate.evaluate, the SAC baseline); this module orders them, records the curves, and writes
``report.json``, ``metrics.jsonl``, the checkpoints of each phase and ``cycle.png``/``.svg``.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigxctl import checkpoint, core, data, files, metrics, outputs, plot, scenarios, settings
from aigxctl.checkpoint import load_model
from aigxctl.errors import UserError
from aigxctl.evaluate import evaluate
from aigxctl.files import atomic_write_text
from aigxctl.reward import RewardConfig, train_reward
from aigxctl.settings import MAX_HIDDEN, MAX_STEPS, setting
from aigxctl.train import TrainConfig, train

__all__ = ["PAPER", "CycleConfig", "load_config", "run_cycle"]

RETRAIN = ("finetune", "combined", "both")
# The paper's headline gains over equal allocation (IEEE Network 2024 case study).
PAPER = {"T1": {"gdm": 0.188}, "T3": {"gdm": 0.151, "sac": 0.089}}


@dataclass
class CycleConfig:
    """The cycle's settings. Defaults replay the paper's cycle (M = 20, P = 0.2)."""

    t1_scenario: str = setting("t1", "Scenario of T1 (good weather): a built-in name or a TOML "
                               "file.")  # fmt: skip
    t2_scenario: str = setting("t2", "Scenario of T2 (the rainstorm).")
    samples: int = setting(50_000, "Expert-labelled samples collected in T1 and again in T2.",
                           low=1)  # fmt: skip
    t1_steps: int = setting(3000, "Training steps in T1.", low=1, high=MAX_STEPS)
    t3_steps: int = setting(2500, "Retraining steps in T3.", low=1, high=MAX_STEPS)
    t3_lr: float = setting(2e-3, "Peak learning rate of the T3 retraining.", above=0.0)
    # Fine-tuning starts from a model that already gets the regression right, so it can take a
    # larger regret weight than training from scratch: on the paper's T2 data, 1500 steps from
    # the T1 weights reached 99.2 % of the optimum at weight 0.01 and lr 1e-3, 99.4 % at 0.01
    # and 2e-3, and 99.6 % at 0.1 and 2e-3 (measured).
    rate_weight: float = setting(0.01, "Weight of the sum-rate regret in T1 (TrainConfig."
                                 "rate_weight), for the GDM and the MLP.", low=0.0)  # fmt: skip
    t3_rate_weight: float = setting(0.1, "The same in T3.", low=0.0)
    retrain: str = setting("finetune", "finetune: T2 data from the T1 weights; combined: T1 + "
                           "T2 data from the T1 weights; both: the two side by side (the first "
                           "is the phase's gdm).", choices=RETRAIN)  # fmt: skip
    training: str = setting("expert", "How the GDM learns: expert regresses the water-filling "
                            "labels; reward learns from the sum rate alone (aigxctl.reward) on "
                            "fresh draws, with RewardConfig's learning rate (retrain must then "
                            "be finetune). The MLP always learns from the expert data.",
                            choices=("expert", "reward"))  # fmt: skip
    eval_samples: int = setting(5000, "Fresh draws each phase is evaluated on.", low=1)
    mlp: bool = setting(True, "Train the MLP baseline too.")
    sac: bool = setting(True, "Train the SAC baseline too (needs the rl extra).")
    sac_steps: int | None = setting(None, "SAC's environment samples per phase (default: "
                                    "samples).", low=1, high=MAX_STEPS)  # fmt: skip
    seed: int = setting(0, "Seed of every draw and training run.", low=0)
    hidden: int = setting(256, "Hidden width of the GDM and the MLP.", low=2, high=MAX_HIDDEN)
    val_every: int = setting(250, "Validate every N training steps.", low=1, high=MAX_STEPS)
    robust: str = setting("", "A scenario family (a built-in name such as weather, or a TOML "
                          "file) to train one model for all weather on in T1; evaluated in "
                          "every phase beside the others and never retrained: the drop that "
                          "does not happen ('' for none).")  # fmt: skip
    robust_model: str = setting("", "An already trained model for all weather to show in "
                                "every phase instead (a model directory; not trained by the "
                                "cycle).")  # fmt: skip
    robust_samples: int = setting(200_000, "Expert-labelled samples of the robust family.",
                                  low=1)  # fmt: skip
    robust_steps: int = setting(12_000, "Training steps of the robust model.", low=1,
                                high=MAX_STEPS)  # fmt: skip
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
            robust_samples=8000,
            robust_steps=600,
        )

    def check(self) -> None:
        settings.check(self, prefix="")
        if self.training == "reward" and self.retrain != "finetune":
            raise UserError(
                'training = "reward" retrains by fine-tuning on T2 draws: set retrain = "finetune"'
            )
        if self.robust and self.robust_model:
            raise UserError("robust trains a model for all weather, robust_model names one: "
                            "give one of them")  # fmt: skip


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
    for name in (cfg.t1_scenario, cfg.t2_scenario, cfg.robust):
        if name:
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
    "data": ("t1.npz", "t2.npz", "robust.npz"),
    "models": ("t1_gdm/", "t1_mlp/", "t1_sac/", "t3_gdm/", "t3_gdm_combined/", "t3_mlp/",
               "t3_sac/", "robust_gdm/"),
    "report.json": None,
    "metrics.jsonl": None,
    "cycle.png": None,
    "cycle.svg": None,
    "state.json": None,
}


def run_cycle(
    cfg: CycleConfig,
    out: str | Path,
    display: Display | None = None,
    *,
    force: bool = False,
    resume: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Run T1 -> T2 -> T3 into ``out``; returns the report (also written as report.json).
    ``device`` (auto, cpu, cuda or cuda:N; :func:`aigxctl.core.resolve_device`): where the
    expert-route models train and every model is evaluated; the report's ``run.device`` says.

    ``out`` must be new or empty, or (with ``force``) a previous cycle's run directory, whose
    pieces are then replaced one by one; a directory holding anything else is refused. With
    ``resume`` the phases an interrupted run of the same config finished (``state.json``) are
    not run again; the report's ``run.skipped`` lists them.
    """
    cfg.check()
    dev = core.resolve_device(device)
    t1, t2 = scenarios.get(cfg.t1_scenario), scenarios.get(cfg.t2_scenario)
    if t1.m != t2.m:
        raise UserError(f"the two scenarios have different M ({t1.m} and {t2.m})")
    for key in ("samples", "eval_samples"):  # held in memory for training and evaluation
        scenarios.check_draw_size(getattr(cfg, key), t1.m, key)
    _check_robust(cfg, t1, dev)
    if resume and force:
        raise UserError("--resume continues the run that --force would replace")
    _check_previous_run(Path(out), force or resume)
    path = outputs.claim_dir(out, LAYOUT, force=force, resume=resume, what="cycle run")
    run = CycleRun(cfg, path, display, dev)
    finished = run.restore(t1, t2) if resume else set()
    for name, phase in (("T1", lambda: run.t1_good_weather(t1)),
                        ("T2", lambda: run.t2_rainstorm(t2)), ("T3", run.t3_retrain)):  # fmt: skip
        if name in finished:
            run.skipped.append(name)
            continue
        phase()
        run.save_state(name)
    return run.write_report()


def _check_robust(cfg: CycleConfig, t1: scenarios.Scenario, device: str) -> None:
    """Refuse, before anything runs, a robust family or model that cannot stand beside T1."""
    if cfg.robust:
        family = scenarios.get(cfg.robust)
        if family.m != t1.m:
            raise UserError(f"robust: {cfg.robust} has M = {family.m}, T1 has M = {t1.m}")
        scenarios.check_draw_size(cfg.robust_samples, family.m, "robust_samples")
    elif cfg.robust_model:
        model = load_model(cfg.robust_model, device=device)
        if model.m != t1.m:
            raise UserError(f"robust_model: {cfg.robust_model} allocates M = {model.m} "
                            f"channels, T1 has M = {t1.m}")  # fmt: skip


def _check_previous_run(out: Path, replacing: bool) -> None:
    """Before a previous run's pieces are replaced one by one: clean what killed runs left
    (staging directories, temporary files of dead pids), and refuse at once, with nothing
    changed, if any of its model directories holds a file aigxctl did not write."""
    if not (replacing and out.is_dir()):
        return
    for name in (p.rstrip("/") for p in LAYOUT["models"] or ()):
        model = out / "models" / name
        outputs.clean_stale(model, checkpoint.LAYOUT)
        if model.is_dir():
            checkpoint.claim(model, force=True)
    for name in LAYOUT["data"] or ():
        files.remove_stale_temps(out / "data" / name)


class CycleRun:
    """One cycle in its run directory. The phases (the paper's Fig. 5) are its methods; they
    share the models trained so far, the learning curve (``metrics.jsonl``), the training times,
    the step at which the current phase starts on the figure's axis, and the stage counter the
    progress display shows. After each phase ``state.json`` records what is done, so an
    interrupted run resumes at the next phase."""

    def __init__(self, cfg: CycleConfig, out: Path, display: Display | None,
                 device: str = "cpu") -> None:  # fmt: skip
        self.cfg, self.out, self.device = cfg, out, device
        self.show = display or (lambda _stage, _status: None)
        self.curve: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.offset = 0
        self.phases: list[dict[str, Any]] = []
        self.opt_rates: dict[str, float] = {}
        self.sac: Any = None
        self.sac_note: dict[str, Any] = {}
        self.robust: Path | None = Path(cfg.robust_model) if cfg.robust_model else None
        self.skipped: list[str] = []
        self.started = time.time()
        self.stages = _stages(cfg)
        self.stage = 0
        for sub in ("data", "models"):
            try:
                (out / sub).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"{out / sub}: cannot write there ({exc.strerror})") from None

    # ---- the phases ---------------------------------------------------------------------------

    def t1_good_weather(self, t1: scenarios.Scenario) -> None:
        """T1: collect expert-labelled data under good weather, train every method on it."""
        cfg = self.cfg
        self.d1 = self.collect("T1", t1, "t1.npz", cfg.seed)
        gains = self.eval_gains("T1", t1, cfg.seed + 101)
        self.gdm1 = self.fit("t1_gdm", [self.d1], "gdm", "T1", cfg.t1_steps)
        self.mlp1 = self.fit("t1_mlp", [self.d1], "mlp", "T1", cfg.t1_steps) if cfg.mlp else None
        self.sac_train("T1", t1)
        if cfg.robust:
            self.robust = self.fit_robust(scenarios.get(cfg.robust))
        methods = self.evaluate("T1", gains, self.gdm1, self.mlp1)
        self.phases.append({"name": "T1", "eval_scenario": t1.name,
                            "train_data": [str(self.d1)], "methods": methods})  # fmt: skip
        self.offset += cfg.t1_steps

    def t2_rainstorm(self, t2: scenarios.Scenario) -> None:
        """T2: the weather turns; the T1 models drift. The network collects new expert data."""
        cfg = self.cfg
        self.t2 = t2
        self.g2 = self.eval_gains("T2", t2, cfg.seed + 202)
        methods = self.evaluate("T2", self.g2, self.gdm1, self.mlp1)
        band = max(1, cfg.t3_steps // 5)  # width of the T2 segment on the figure's step axis
        for name, m in methods.items():
            if name in ("optimum", "equal", "random"):
                continue
            for step in (self.offset, self.offset + band):
                self.curve.append({"phase": "T2", "method": name, "model": f"t1_{name}",
                                   "step": step, "val_fraction": m["fraction_of_optimum"],
                                   "rate": m["rate"]})  # fmt: skip
        self.offset += band
        self.d2 = self.collect("T2", t2, "t2.npz", cfg.seed + 1)
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
            combined = self.fit("t3_gdm_combined", [self.d1, self.d2], "gdm", "T3c",
                                cfg.t3_steps, init=self.gdm1)  # fmt: skip
            if cfg.retrain == "combined":
                gdm3 = combined
            else:
                extra["gdm_combined"] = combined
        mlp3 = (self.fit("t3_mlp", [self.d2], "mlp", "T3", cfg.t3_steps, init=self.mlp1)
                if self.mlp1 else None)  # fmt: skip
        self.sac_train("T3", self.t2)
        methods = self.evaluate("T3", self.g2, gdm3, mlp3, extra)
        self.phases.append({"name": "T3", "eval_scenario": self.t2.name,
                            "train_data": [str(self.d2)], "retrain": cfg.retrain,
                            "methods": methods})  # fmt: skip
        self.offset += cfg.t3_steps

    def write_report(self) -> dict[str, Any]:
        """report.json, metrics.jsonl and the figure; returns the report."""
        report = {"phases": self.phases, "config": asdict(self.cfg), "paper": PAPER,
                  "sac": self.sac_note, "train_seconds": self.timings,
                  "run": self._provenance()}  # fmt: skip
        atomic_write_text(self.out / "metrics.jsonl",
                          "".join(json.dumps(r) + "\n" for r in self.curve))  # fmt: skip
        atomic_write_text(self.out / "report.json", json.dumps(report, indent=2) + "\n")
        plot.cycle_figure(report, self.curve, self.out / "cycle.png", opt_rates=self.opt_rates)
        return report

    # ---- resuming -----------------------------------------------------------------------------

    def save_state(self, phase: str) -> None:
        """Record that ``phase`` is done, with everything a resumed run needs to go on."""
        done = [p["name"] for p in self.phases]
        state = {"format": STATE_FORMAT, "config": asdict(self.cfg), "done": done,
                 "phases": self.phases, "curve": self.curve, "timings": self.timings,
                 "offset": self.offset, "opt_rates": self.opt_rates, "sac": self.sac_note,
                 "seconds": time.time() - self.started}  # fmt: skip
        atomic_write_text(self.out / STATE, json.dumps(state) + "\n")

    def restore(self, t1: scenarios.Scenario, t2: scenarios.Scenario) -> set[str]:
        """Load what an interrupted run of the same config finished; returns its phases."""
        path = self.out / STATE
        if not path.is_file():
            return set()
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            done = set(state["done"])
            if state.get("format") != STATE_FORMAT or not done <= {"T1", "T2", "T3"}:
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            raise UserError(f"{path}: damaged; start the cycle over with --force") from None
        if state["config"] != json.loads(json.dumps(asdict(self.cfg))):
            changed = sorted(k for k, v in asdict(self.cfg).items()
                             if state["config"].get(k) != v)  # fmt: skip
            raise UserError(
                f"--resume continues the cycle in {self.out}, which ran with other settings "
                f"({', '.join(changed)}); use the same config, or start over with --force"
            )
        self.phases, self.curve, self.timings = state["phases"], state["curve"], state["timings"]
        self.offset, self.opt_rates, self.sac_note = (state["offset"], state["opt_rates"],
                                                      state["sac"])  # fmt: skip
        self.started -= float(state.get("seconds", 0.0))
        models, cfg = self.out / "models", self.cfg
        self.d1, self.gdm1 = self.out / "data" / "t1.npz", models / "t1_gdm"
        self.mlp1 = models / "t1_mlp" if cfg.mlp else None
        if cfg.robust:
            self.robust = models / "robust_gdm"
        if "T1" in done and "T3" not in done and self.sac_note.get("status") == "trained":
            from aigxctl.baselines.sac import SACBaseline

            self.sac = SACBaseline.load(models / "t1_sac", t1)
        self.stage = sum(1 for s in self.stages if s[0] in done)
        if "T2" in done:
            self.t2, self.d2 = t2, self.out / "data" / "t2.npz"
            self.g2 = scenarios.draw(t2, cfg.eval_samples, cfg.seed + 202)
        return done

    # ---- the pieces the phases are made of ----------------------------------------------------

    def next_stage(self, phase: str, what: str) -> None:
        """Move the progress display to the next stage of the cycle (k of n)."""
        self.stage += 1
        self.show(f"[{self.stage}/{len(self.stages)}] {phase} {what}", {"elapsed":
                  time.time() - self.started})  # fmt: skip

    def collect(self, phase: str, scenario: scenarios.Scenario, name: str, seed: int,
                samples: int | None = None) -> Path:  # fmt: skip
        samples = samples or self.cfg.samples
        self.next_stage(phase, f"collect {samples:,} samples of {scenario.name}")
        path = self.out / "data" / name
        data.collect_to_file(scenario, samples, seed, path, overwrite=True)
        return path

    def fit_robust(self, family: scenarios.Scenario) -> Path:
        """T1: one model for all weather, trained on the family's draws; never retrained. Its
        curve is drawn across the T1 band, however many steps it takes."""
        cfg = self.cfg
        d = self.collect("T1", family, "robust.npz", cfg.seed + 3, cfg.robust_samples)
        return self.fit("robust_gdm", [d], "gdm", "T1", cfg.robust_steps, method="robust",
                        axis=cfg.t1_steps / cfg.robust_steps)  # fmt: skip

    def eval_gains(self, phase: str, scenario: scenarios.Scenario, seed: int) -> np.ndarray:
        """Fresh evaluation draws of the phase; remembers their optimum's mean sum rate."""
        gains = scenarios.draw(scenario, self.cfg.eval_samples, seed)
        self.opt_rates[phase] = metrics.optimum_rate(gains, scenario.total_power, scenario.noise)
        if phase == "T2":
            self.opt_rates["T3"] = self.opt_rates["T2"]  # T3 is evaluated on T2's draws
        return gains

    def fit(self, name: str, datasets: list[Path], arch: str, phase: str, steps: int,
            init: Path | None = None, method: str | None = None,
            axis: float = 1.0) -> Path:  # fmt: skip
        """Train one model of the phase into models/NAME, recording its learning curve as
        ``method`` (default: the architecture), ``axis`` figure steps per training step."""
        method = method or arch
        cfg = self.cfg
        path = self.out / "models" / name
        start, opt_rate = self.offset, self.opt_rates[phase.rstrip("c")]
        if phase == "T1":
            lr, rate_weight = TrainConfig.lr, cfg.rate_weight
        else:
            lr, rate_weight = cfg.t3_lr, cfg.t3_rate_weight
        what = "robust" if method == "robust" else name[3:]
        label = f"[{self.stage + 1}/{len(self.stages)}] {phase.rstrip('c')} train {what}"
        self.next_stage(phase.rstrip("c"), f"train {what}")

        def progress(step: int, m: dict[str, float]) -> None:
            if ("val_fraction" in m and step % cfg.val_every == 0) or step == steps:
                row = {"phase": phase, "method": method, "model": name,
                       "step": start + round(step * axis)}  # fmt: skip
                if "loss" in m:
                    row["loss"] = m["loss"]
                if "val_fraction" in m:
                    row.update(val_fraction=m["val_fraction"], rate=m["val_fraction"] * opt_rate)
                self.curve.append(row)
            self.show(label, {"step": step, "steps": steps,
                              "elapsed": time.time() - self.started, **m})  # fmt: skip

        t0 = time.perf_counter()
        # The run directory was claimed (with the user's --force) as a whole: each model may
        # replace the one a previous run left under its name.
        if method == "gdm" and cfg.training == "reward":
            train_reward(RewardConfig(
                scenario=cfg.t1_scenario if phase == "T1" else cfg.t2_scenario, out=str(path),
                steps=steps, hidden=cfg.hidden, seed=cfg.seed, val_every=cfg.val_every,
                init=str(init) if init else None, force=True), progress)  # fmt: skip
        else:
            train(TrainConfig(
                data=[str(d) for d in datasets], out=str(path), arch=arch, steps=steps, lr=lr,
                rate_weight=rate_weight, seed=cfg.seed, hidden=cfg.hidden,
                init=str(init) if init else None, val_every=cfg.val_every, force=True,
                device=self.device), progress)  # fmt: skip
        self.timings[name] = time.perf_counter() - t0
        return path

    def sac_train(self, phase: str, scenario: scenarios.Scenario) -> None:
        """T1: train the SAC baseline (or say why it is skipped); T3: move it to the new
        scenario and give it the same budget again. Its curve (the training policy's fraction
        of the optimum) is spread over the phase's steps on the figure."""
        cfg = self.cfg
        if phase == "T1":
            if not cfg.sac:
                self.sac_note = {"status": "skipped", "reason": "disabled in the cycle config"}
                return
        elif self.sac is None:
            return
        from aigxctl.baselines import sac as sac_mod

        steps = cfg.sac_steps or cfg.samples
        span = cfg.t1_steps if phase == "T1" else cfg.t3_steps
        label = f"[{self.stage + 1}/{len(self.stages)}] {phase} train sac"
        self.next_stage(phase, "train sac")

        def progress(done: int, m: dict[str, float]) -> None:
            frac = m.get("train_fraction_of_optimum")
            if frac is not None and np.isfinite(frac):
                self.curve.append({"phase": phase, "method": "sac",
                                   "model": f"{phase.lower()}_sac",
                                   "step": self.offset + round(span * done / steps),
                                   "val_fraction": frac,
                                   "rate": frac * self.opt_rates[phase]})  # fmt: skip
            self.show(label, {"step": done, "steps": steps,
                              "elapsed": time.time() - self.started,
                              **({"val_fraction": frac} if frac is not None else {})})  # fmt: skip

        t0 = time.perf_counter()
        try:
            if phase == "T1":
                self.sac = sac_mod.train_sac(scenario, steps, seed=cfg.seed, progress=progress)
                self.sac_note = {"status": "trained", "env_samples_per_phase": steps}
            else:
                self.sac.set_scenario(scenario)
                self.sac.train(steps, progress=progress)
        except sac_mod.SACUnavailable as exc:
            self.sac_note = {"status": "skipped", "reason": str(exc)}
            return
        self.timings[f"{phase.lower()}_sac"] = time.perf_counter() - t0
        self.sac.save(self.out / "models" / f"{phase.lower()}_sac")
        # What SAC got, per phase: environment samples, wall seconds, training rate.
        self.sac_note["history"] = self.sac.history

    def evaluate(self, phase: str, gains: np.ndarray, gdm: Path, mlp: Path | None,
                 extra: dict[str, Path] | None = None) -> dict[str, Any]:  # fmt: skip
        """Every method of the phase on its evaluation draws (see :func:`_rates`)."""
        self.next_stage(phase, f"evaluate on {len(gains):,} fresh draws")
        dev = self.device
        others = {"mlp": load_model(mlp, device=dev)} if mlp else {}
        for key, path in (extra or {}).items():
            others[key] = load_model(path, device=dev)
        if self.sac is not None:
            others["sac"] = self.sac
        if self.robust is not None:
            others["robust"] = load_model(self.robust, device=dev)
        return _rates(evaluate(load_model(gdm, device=dev), gains, others=others,
                               seed=self.cfg.seed, device=dev))  # fmt: skip

    def _provenance(self) -> dict[str, Any]:
        """What made this report: version, command, wall time, machine, libraries."""
        import platform

        import torch

        from aigxctl import __version__

        return {
            "aigxctl": __version__, "command": " ".join(["aigxctl", *sys.argv[1:]]),
            "directory": str(self.out.resolve()), "wall_seconds": time.time() - self.started,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "skipped": self.skipped, "host": platform.node(), "cpu": _cpu_name(),
            "device": self.device,
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__,
        }  # fmt: skip


STATE = "state.json"
STATE_FORMAT = "aigxctl-cycle-state"


def _stages(cfg: CycleConfig) -> list[tuple[str, str]]:
    """The cycle's stages in order, (phase, what), for "stage k of n"."""
    t1 = [("T1", "collect"), ("T1", "train gdm")] + [("T1", "train mlp")] * cfg.mlp
    t1 += [("T1", "train sac")] * cfg.sac
    t1 += [("T1", "collect robust"), ("T1", "train robust")] * bool(cfg.robust)
    t1 += [("T1", "evaluate")]
    t2 = [("T2", "evaluate"), ("T2", "collect")]
    gdm3 = 2 if cfg.retrain == "both" else 1
    t3 = [("T3", "train gdm")] * gdm3 + [("T3", "train mlp")] * cfg.mlp
    t3 += [("T3", "train sac")] * cfg.sac + [("T3", "evaluate")]
    return t1 + t2 + t3


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
