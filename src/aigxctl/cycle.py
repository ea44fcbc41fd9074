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

from aigxctl import core, data, outputs, scenarios
from aigxctl.checkpoint import MAX_HIDDEN, load_model
from aigxctl.errors import UserError
from aigxctl.evaluate import evaluate
from aigxctl.files import atomic_path, atomic_write_text
from aigxctl.reward import RewardConfig, train_reward
from aigxctl.train import MAX_STEPS, TrainConfig, train

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
    opt, eq = res["optimum_rate"], res["equal_rate"]
    out = {}
    for key, value in res.items():
        if key.endswith("_rate"):
            name = "gdm" if key == "model_rate" else key[: -len("_rate")]
            out[name] = {
                "rate": value,
                "fraction_of_optimum": value / opt,
                "gain_over_equal": value / eq - 1.0,
            }
    return out


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
    for key in ("samples", "eval_samples"):  # held in memory for training and evaluation
        scenarios.check_draw_size(getattr(cfg, key), t1.m, key)
    out = outputs.claim_dir(out, LAYOUT, force=force, what="cycle run")
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    show = display or (lambda _phase, _status: None)
    if t1.m != t2.m:
        raise UserError(f"the two scenarios have different M ({t1.m} and {t2.m})")
    curve: list[dict[str, Any]] = []  # metrics.jsonl rows
    timings: dict[str, float] = {}
    offset = 0  # global step of the current phase's start

    def eval_gains(s: scenarios.Scenario, seed: int) -> tuple[np.ndarray, float]:
        """Fresh evaluation draws and their optimum's mean sum rate."""
        g = np.concatenate(list(scenarios.draw_chunks(s, cfg.eval_samples, seed)))
        opt = core.waterfill(g, s.total_power, s.noise)
        return g, float(core.sum_rate(g, opt, s.noise).mean())

    def fit(
        name: str,
        datasets: list[Path],
        steps: int,
        arch: str,
        init: Path | None,
        lr: float,
        rate_weight: float,
        phase: str,
        opt_rate: float,
    ) -> Path:
        nonlocal offset
        path = out / "models" / name
        start = offset

        def progress(step: int, m: dict[str, float]) -> None:
            status = {"method": arch, "step": step, "steps": steps, **m}
            if ("val_fraction" in m and step % cfg.val_every == 0) or step == steps:
                row = {
                    "phase": phase,
                    "method": arch,
                    "model": name,
                    "step": start + step,
                    "loss": m["loss"],
                }
                if "val_fraction" in m:
                    row["val_fraction"] = m["val_fraction"]
                    row["rate"] = m["val_fraction"] * opt_rate
                curve.append(row)
            show(phase, status)

        t0 = time.perf_counter()
        if arch == "gdm" and cfg.training == "reward":
            rc = RewardConfig(
                scenario=cfg.t1_scenario if phase == "T1" else cfg.t2_scenario,
                out=str(path),
                steps=steps,
                hidden=cfg.hidden,
                seed=cfg.seed,
                val_every=cfg.val_every,
                init=str(init) if init else None,
                force=True,  # the run directory was claimed (and --force asked) above
            )
            train_reward(rc, progress)
        else:
            tc = TrainConfig(
                data=[str(d) for d in datasets],
                out=str(path),
                arch=arch,
                steps=steps,
                lr=lr,
                rate_weight=rate_weight,
                seed=cfg.seed,
                hidden=cfg.hidden,
                init=str(init) if init else None,
                val_every=cfg.val_every,
                force=True,  # the run directory was claimed (and --force asked) above
            )
            train(tc, progress)
        timings[name] = time.perf_counter() - t0
        return path

    def phase_eval(
        name: str,
        gains: np.ndarray,
        gdm: Path,
        mlp: Path | None,
        sac: Any,
        extra: dict[str, Path] | None = None,
    ) -> dict[str, Any]:
        show(name, {"method": "evaluate"})
        others = {"mlp": load_model(mlp)} if mlp else {}
        for key, path in (extra or {}).items():
            others[key] = load_model(path)
        if sac is not None:
            others["sac"] = sac
        res = evaluate(load_model(gdm), gains, others=others, seed=cfg.seed)
        return _rates(res)

    # ---- T1: collect under good weather, train ----------------------------------------------
    show("T1", {"method": "collect"})
    d1 = out / "data" / "t1.npz"
    data.collect_to_file(t1, cfg.samples, cfg.seed, d1, overwrite=True)
    g1, opt1 = eval_gains(t1, cfg.seed + 101)
    gdm1 = fit("t1_gdm", [d1], cfg.t1_steps, "gdm", None, 2e-3, cfg.rate_weight, "T1", opt1)
    mlp1 = (
        fit("t1_mlp", [d1], cfg.t1_steps, "mlp", None, 2e-3, cfg.rate_weight, "T1", opt1)
        if cfg.mlp
        else None
    )
    sac, sac_note = _sac_start(cfg, t1, show)
    if sac is not None:
        sac.save(out / "models" / "t1_sac")
    phases = [
        {
            "name": "T1",
            "eval_scenario": t1.name,
            "train_data": [str(d1)],
            "methods": phase_eval("T1", g1, gdm1, mlp1, sac),
        }
    ]
    offset += cfg.t1_steps

    # ---- T2: the rainstorm; the T1 models drift; collect new expert data -------------------
    g2, opt2 = eval_gains(t2, cfg.seed + 202)
    t2_methods = phase_eval("T2", g2, gdm1, mlp1, sac)
    band = max(1, cfg.t3_steps // 5)  # width of the T2 segment on the plot's step axis
    curve.append(
        {
            "phase": "T2",
            "method": "gdm",
            "model": "t1_gdm",
            "step": offset,
            "rate": t2_methods["gdm"]["rate"],
        }
    )
    curve.append(
        {
            "phase": "T2",
            "method": "gdm",
            "model": "t1_gdm",
            "step": offset + band,
            "rate": t2_methods["gdm"]["rate"],
        }
    )
    offset += band
    show("T2", {"method": "collect"})
    d2 = out / "data" / "t2.npz"
    data.collect_to_file(t2, cfg.samples, cfg.seed + 1, d2, overwrite=True)
    phases.append(
        {"name": "T2", "eval_scenario": t2.name, "models_from": "T1", "methods": t2_methods}
    )

    # ---- T3: retrain on the new data --------------------------------------------------------
    extra = {}
    t3_opt = (cfg.t3_lr, cfg.t3_rate_weight)
    if cfg.retrain in ("finetune", "both"):
        gdm3 = fit("t3_gdm", [d2], cfg.t3_steps, "gdm", gdm1, *t3_opt, "T3", opt2)
    if cfg.retrain in ("combined", "both"):
        offset_before = offset
        comb = fit("t3_gdm_combined", [d1, d2], cfg.t3_steps, "gdm", gdm1, *t3_opt, "T3c", opt2)
        offset = offset_before
        if cfg.retrain == "combined":
            gdm3 = comb
        else:
            extra["gdm_combined"] = comb
    mlp3 = fit("t3_mlp", [d2], cfg.t3_steps, "mlp", mlp1, *t3_opt, "T3", opt2) if mlp1 else None
    sac = _sac_continue(sac, cfg, t2, show)
    if sac is not None:
        sac.save(out / "models" / "t3_sac")
        # What SAC got, per phase: environment samples, wall seconds, training rate.
        sac_note["history"] = sac.history
    phases.append(
        {
            "name": "T3",
            "eval_scenario": t2.name,
            "train_data": [str(d2)],
            "retrain": cfg.retrain,
            "methods": phase_eval("T3", g2, gdm3, mlp3, sac, extra),
        }
    )
    offset += cfg.t3_steps

    report = {
        "phases": phases,
        "config": asdict(cfg),
        "paper": PAPER,
        "sac": sac_note,
        "train_seconds": timings,
    }
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in curve))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    plot(report, curve, out / "cycle.png", opt_rates={"T1": opt1, "T2": opt2, "T3": opt2})
    return report


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


# The reference levels drawn over each phase: (method, colour, line style, width, legend).
LEVELS = (
    ("optimum", "black", "--", 1.2, "water-filling optimum"),
    ("equal", "grey", ":", 1.5, "equal allocation"),
)


def plot(
    report: dict[str, Any], curve: list[dict[str, Any]], path: Path, opt_rates: dict[str, float]
) -> None:
    """Test sum rate over training steps across the phases, with phase bands and the optimum
    and equal-split levels of each phase (the paper's Fig. 5, part C), as PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=120)
    colours = {"T1": "#dbeafe", "T2": "#fee2e2", "T3": "#dcfce7"}
    spans: dict[str, list[float]] = {}
    for row in curve:
        phase = row["phase"].rstrip("c")
        lo, hi = spans.get(phase, [row["step"], row["step"]])
        spans[phase] = [min(lo, row["step"]), max(hi, row["step"])]
    t1_end = spans.get("T1", [0, 0])[1]
    spans["T1"][0] = 0
    if "T2" in spans:
        spans["T2"][0] = t1_end
        spans["T3"][0] = spans["T2"][1]
    by_phase = {p["name"]: p["methods"] for p in report["phases"]}
    for phase, (lo, hi) in spans.items():
        ax.axvspan(lo, hi, color=colours.get(phase, "#eee"), alpha=0.7, lw=0)
        ax.text(
            (lo + hi) / 2,
            1.0,
            phase,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=11,
            fontweight="bold",
        )
        methods = by_phase.get(phase, {})
        for key, colour, style, lw, label in LEVELS:
            if key in methods:
                ax.hlines(methods[key]["rate"], lo, hi, colors=colour, linestyles=style, lw=lw,
                          label=label if phase == "T1" else None)  # fmt: skip
    styles = {
        ("gdm", "T1"): ("GDM", "#1d4ed8"),
        ("gdm", "T2"): ("GDM (T1 model on T2)", "#b91c1c"),
        ("gdm", "T3"): ("GDM retrained (T3)", "#15803d"),
        ("gdm", "T3c"): ("GDM retrained on T1+T2", "#65a30d"),
        ("mlp", "T1"): ("MLP", "#a855f7"),
        ("mlp", "T3"): ("MLP retrained", "#a855f7"),
    }
    for (method, phase), (label, colour) in styles.items():
        pts = [
            (r["step"], r["rate"])
            for r in curve
            if r["method"] == method and r["phase"] == phase and "rate" in r
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(
                xs,
                ys,
                color=colour,
                lw=2 if method == "gdm" else 1.2,
                ls="-" if method == "gdm" else "-.",
                label=label,
                marker="o",
                ms=2.5,
            )
    if "sac" in by_phase.get("T1", {}):
        for phase in ("T1", "T3"):
            lo, hi = spans[phase]
            ax.hlines(
                by_phase[phase]["sac"]["rate"],
                lo,
                hi,
                colors="#ea580c",
                lw=1.5,
                label="SAC (final)" if phase == "T1" else None,
            )
    ax.set_xlabel("training step")
    ax.set_ylabel("test sum rate (bit/s/Hz)")
    ax.set_title("AIGX virtuous cycle: T1 good weather -> T2 rainstorm -> T3 retrained", pad=18)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        with atomic_path(path.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:])
    plt.close(fig)
