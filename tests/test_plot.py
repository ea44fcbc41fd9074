"""The cycle figure (plot.cycle_figure): written as valid PNG and SVG for every shape of cycle the
report and the curve can describe, and telling its story: a panel per method, each method's T2
drop, SAC's learning curve when the curve has one."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from aigxctl import plot

matplotlib.use("Agg")

OPT = {"T1": 1.85, "T2": 1.61, "T3": 1.61}
EQUAL = {"T1": 0.835, "T2": 0.70, "T3": 0.70}
# Final fraction of the optimum per method: T1, T2 (the T1 model on the rainstorm), T3.
FINAL = {"gdm": (0.996, 0.865, 0.995), "mlp": (0.995, 0.86, 0.994), "sac": (0.95, 0.69, 0.80)}


def cycle(
    *,
    mlp: bool = True,
    sac: bool = True,
    sac_curve: bool = False,
    retrain: str = "finetune",
    step0: bool = False,
    training: str = "expert",
    t1: int = 300,
    t3: int = 150,
    every: int = 50,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, float]]:
    """A report, curve and optima shaped as CycleRun writes them (with the rows the cycle may
    add: step-0 validation rows, SAC learning-curve rows, T3c rows of the combined retrain)."""
    names = ["gdm"] + (["mlp"] if mlp else []) + (["sac"] if sac else [])

    def methods(phase: str, i: int) -> dict[str, Any]:
        out = {
            "optimum": {"rate": OPT[phase], "fraction_of_optimum": 1.0, "gain_over_equal": 0.2},
            "equal": {"rate": EQUAL[phase] * OPT[phase], "fraction_of_optimum": EQUAL[phase]},
            "random": {"rate": 0.69 * OPT[phase], "fraction_of_optimum": 0.69},
        }
        for n in names:
            out[n] = {"rate": FINAL[n][i] * OPT[phase], "fraction_of_optimum": FINAL[n][i]}
        if phase == "T3" and retrain == "both":
            out["gdm_combined"] = {"rate": 0.99 * OPT[phase], "fraction_of_optimum": 0.99}
        return out

    report = {
        "phases": [{"name": p, "methods": methods(p, i)} for i, p in enumerate(OPT)],
        "config": {"t1_steps": t1, "t3_steps": t3, "retrain": retrain, "training": training},
        "sac": {"status": "trained"} if sac else {"status": "skipped", "reason": "disabled"},
    }
    curve: list[dict[str, Any]] = []

    def run(phase: str, method: str, model: str, start: int, steps: int, f0: float, f1: float):
        for s in range(0 if step0 else every, steps + 1, every):
            f = f1 - (f1 - f0) * math.exp(-5 * s / steps)
            row = {"phase": phase, "method": method, "model": model, "step": start + s}
            if method != "sac":
                row["loss"] = 0.01
            row.update(val_fraction=f, rate=f * OPT[phase.rstrip("c")])
            curve.append(row)

    band = max(1, t3 // 5)
    trained = [n for n in names if n != "sac" or sac_curve]
    for n in trained:
        run("T1", n, f"t1_{n}", 0, t1, 0.62, FINAL[n][0])
    for step in (t1, t1 + band):
        curve.append({"phase": "T2", "method": "gdm", "model": "t1_gdm", "step": step,
                      "rate": FINAL["gdm"][1] * OPT["T2"]})  # fmt: skip
    for n in trained:
        if n == "gdm" and retrain == "combined":
            run("T3c", n, "t3_gdm_combined", t1 + band, t3, FINAL[n][1], FINAL[n][2])
            continue
        run("T3", n, f"t3_{n}", t1 + band, t3, FINAL[n][1], FINAL[n][2])
        if n == "gdm" and retrain == "both":
            run("T3c", n, "t3_gdm_combined", t1 + band, t3, FINAL[n][1], 0.99)
    return report, curve, dict(OPT)


def draw(tmp_path: Path, report, curve, opt) -> str:
    """Draw the figure; check both files are valid and alone in the folder; return the SVG's
    text, drawn with its text as text (not paths) so that tests can read the labels."""
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        plot.cycle_figure(report, curve, tmp_path / "cycle.png", opt_rates=opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cycle.png", "cycle.svg"]
    png = (tmp_path / "cycle.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(tmp_path / "cycle.png")
    assert image.shape[0] > 300 and image.shape[1] > 800
    svg = (tmp_path / "cycle.svg").read_text()
    assert ET.fromstring(svg).tag.endswith("svg")
    assert not plt.get_fignums()  # the figure was closed
    return svg


def panels(svg: str) -> list[str]:
    """The methods with a panel, from their y-axis labels."""
    labels = {"GDM (diffusion)": "gdm", "MLP": "mlp", "SAC": "sac"}
    return [m for label, m in labels.items() if f">{label}<" in svg.replace("\n", "<")]


def drift(value: float) -> str:
    return f"drift {value:+.1f} pts".replace("-", "\u2212")


def test_full_cycle_has_a_panel_and_a_drop_per_method(tmp_path: Path) -> None:
    report, curve, opt = cycle()
    svg = draw(tmp_path, report, curve, opt)
    assert panels(svg) == ["gdm", "mlp", "sac"]
    for n in ("gdm", "mlp", "sac"):
        assert drift(100 * (FINAL[n][1] - FINAL[n][0])) in svg  # every method's T2 drop
        assert f"{100 * FINAL[n][1]:.1f} %" in svg
        assert f"{100 * FINAL[n][2]:.1f} %" in svg  # the final T3 evaluation
    # SAC has no learning curve in this cycle: the panel says so rather than draw a flat line.
    assert "no learning curve recorded" in svg


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"mlp": False}, ["gdm", "sac"]),
        ({"sac": False}, ["gdm", "mlp"]),
        ({"mlp": False, "sac": False}, ["gdm"]),
    ],
)
def test_without_mlp_or_sac(tmp_path: Path, kwargs: dict, expected: list[str]) -> None:
    report, curve, opt = cycle(**kwargs)
    svg = draw(tmp_path, report, curve, opt)
    assert panels(svg) == expected


@pytest.mark.parametrize("retrain", ["both", "combined"])
def test_combined_retrain_rows(tmp_path: Path, retrain: str) -> None:
    report, curve, opt = cycle(retrain=retrain)
    assert any(r["phase"] == "T3c" for r in curve)
    svg = draw(tmp_path, report, curve, opt)
    assert "retrained on T1 + T2 data" in svg  # its line style is in the key
    assert panels(svg) == ["gdm", "mlp", "sac"]  # no panel of its own: drawn in the GDM's
    if retrain == "both":
        assert "99.0 % (T1+T2)" in svg


def test_step_zero_rows_and_a_sac_learning_curve(tmp_path: Path) -> None:
    report, curve, opt = cycle(step0=True, sac_curve=True, t1=3000, t3=2500, every=250)
    assert {r["model"] for r in curve if r["method"] == "sac"} == {"t1_sac", "t3_sac"}
    svg = draw(tmp_path, report, curve, opt)
    assert panels(svg) == ["gdm", "mlp", "sac"]
    assert "no learning curve recorded" not in svg
    # The untrained models at step 0 lie below the zoomed range: the panel says from where.
    assert "\u2193 62.0 %" in svg


def test_curves_start_at_step_zero_and_sac_is_a_curve() -> None:
    report, curve, opt = cycle(step0=True, sac_curve=True)
    runs = plot._runs(curve, plot._optima(plot._report_phases(report), opt))
    assert [r["model"] for r in runs["sac"]] == ["t1_sac", "t3_sac"]
    assert runs["gdm"][0]["xs"][0] == 0
    assert runs["sac"][0]["ys"][0] == pytest.approx(62.0)
    # The phase bands follow the curve: T1 from 0, T2 the drift band, T3 to the last step.
    spans = plot._spans(plot._report_phases(report), curve, report["config"])
    assert spans == {"T1": (0.0, 300.0), "T2": (300.0, 330.0), "T3": (330.0, 480.0)}
    lo, hi = plot._y_range(
        {n: plot._levels(plot._report_phases(report), n, []) for n in ("gdm", "mlp", "sac")},
        {"T1": 83.5, "T2": 70.0},
        runs,
    )
    assert lo < 69.0 and 100.0 < hi < 103.0  # zoomed, every drop and the equal split in view


def test_reward_training(tmp_path: Path) -> None:
    report, curve, opt = cycle(training="reward", mlp=False, sac=False)
    for row in curve:  # reward rows: the same shape, without a regression loss
        row.pop("loss", None)
    assert panels(draw(tmp_path, report, curve, opt)) == ["gdm"]


def test_rows_without_val_fraction_use_the_phase_optimum(tmp_path: Path) -> None:
    report, curve, opt = cycle()
    for row in curve:
        row.pop("val_fraction", None)
    runs = plot._runs(curve, opt)
    last = [r for r in curve if r["model"] == "t1_gdm" and r["phase"] == "T1"][-1]
    assert runs["gdm"][0]["ys"][-1] == pytest.approx(100 * last["rate"] / OPT["T1"])
    assert runs["gdm"][1]["phase"] == "T2"  # the T1 model on T2: rate over T2's optimum
    assert runs["gdm"][1]["ys"] == pytest.approx([100 * FINAL["gdm"][1]] * 2)
    draw(tmp_path, report, curve, opt)


@pytest.mark.parametrize("missing", ["T1", "T2", "T3"])
def test_a_phase_missing_from_the_report(tmp_path: Path, missing: str) -> None:
    """A report without one of the phases (a cycle cut short) still draws."""
    report, curve, opt = cycle(sac_curve=True)
    report["phases"] = [p for p in report["phases"] if p["name"] != missing]
    svg = draw(tmp_path, report, curve, opt)
    assert panels(svg) == ["gdm", "mlp", "sac"]
    if missing == "T2":  # the GDM's drop is still in the curve's T2 rows
        assert drift(100 * (FINAL["gdm"][1] - FINAL["gdm"][0])) in svg


@pytest.mark.parametrize("missing", ["T1", "T2", "T3"])
def test_a_phase_missing_from_the_curve(tmp_path: Path, missing: str) -> None:
    report, curve, opt = cycle(sac_curve=True, step0=True)
    curve = [r for r in curve if r["phase"].rstrip("c") != missing]
    del opt[missing]
    svg = draw(tmp_path, report, curve, opt)
    assert panels(svg) == ["gdm", "mlp", "sac"]
    # The band of the missing phase is still drawn, as wide as the cycle would make it.
    spans = plot._spans(plot._report_phases(report), curve, report["config"])
    assert list(spans) == ["T1", "T2", "T3"]
    assert all(hi > lo for lo, hi in spans.values())


@pytest.mark.parametrize(
    ("report", "curve"),
    [
        ({}, []),
        ({"phases": []}, []),
        ({"phases": [{"name": "T1", "methods": {"gdm": {"rate": 1.0}}}]}, []),
        ({"phases": [{"name": "T1"}, "junk"]}, [{"phase": "T1", "method": "gdm", "step": 5}]),
        ({"phases": [{"name": "T9", "methods": {"x": {"rate": 1}}}]}, ["junk", {"phase": 3}]),
        (
            {"phases": [{"name": "T1", "methods": {"gdm": {"fraction_of_optimum": float("nan")}}}]},
            [{"phase": "T1", "method": "gdm", "step": 0, "val_fraction": float("nan")}],
        ),
    ],
)
def test_degenerate_inputs_still_draw(tmp_path: Path, report: dict, curve: list) -> None:
    draw(tmp_path, report, curve, {})


def test_any_other_method_gets_a_panel(tmp_path: Path) -> None:
    report, curve, opt = cycle(sac=False)
    curve += [
        {"phase": "T1", "method": "ppo", "model": "t1_ppo", "step": s, "val_fraction": 0.9}
        for s in (0, 100, 200, 300)
    ]
    assert plot._panel_methods(plot._report_phases(report), plot._runs(curve, opt)) == [
        "gdm",
        "mlp",
        "ppo",
    ]
    svg = draw(tmp_path, report, curve, opt)
    assert ">PPO<" in svg.replace("\n", "<")
