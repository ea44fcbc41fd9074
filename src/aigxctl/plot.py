"""Figures: the virtuous cycle's learning curves across its phases (the paper's Fig. 5, part C),
as PNG and SVG, written atomically.

One panel per learned method (GDM, MLP, SAC, then any other method the curve or the report
names), sharing the x axis of training steps with the phase bands T1 / T2 / T3 and one y axis:
each phase's sum rate as a percentage of that phase's water-filling optimum. Each panel holds
the method's validation learning curves (the T1 model, the T3 retrained one, and the model
retrained on T1 + T2 data when there is one), the T1 model's drop when the weather turns (the
T2 evaluation, a red segment with the drop in points), the final test evaluation of each phase
as a labelled marker, and the optimum and equal-split levels as references. The y range is
zoomed on the evaluations (so the drop and the equal split stay in view); learning-curve points
below it (an untrained model at step 0) leave the panel at its bottom edge, labelled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigxctl.files import atomic_path

__all__ = ["cycle_figure", "serve_figure"]

# Phase bands: (colour, label over the band).
PHASES = {
    "T1": ("#dbeafe", "T1 good weather"),
    "T2": ("#fee2e2", "T2 rain"),
    "T3": ("#dcfce7", "T3 retrained"),
}
OTHER_BAND = "#f1f5f9"
# Panel order and look of the known methods; any other method gets the next of EXTRA_COLOURS.
METHODS = {
    "gdm": ("GDM (diffusion)", "#1d4ed8"),
    "mlp": ("MLP", "#7e22ce"),
    "sac": ("SAC", "#c2410c"),
    "robust": ("GDM for all weather", "#0f766e"),
}
# Methods the cycle never retrains (the model for all weather): no "won back" mark at T3.
NOT_RETRAINED = ("robust",)
EXTRA_COLOURS = ("#a16207", "#be185d", "#4d7c0f", "#0369a1", "#57534e")
# Report entries that are reference levels, not learned methods (no panel of their own).
REFERENCES = ("optimum", "equal", "random")
COMBINED = "_combined"  # report key suffix of the model retrained on T1 + T2 data (phase T3c)
DRIFT = "#dc2626"


def cycle_figure(
    report: dict[str, Any], curve: list[dict[str, Any]], path: Path, opt_rates: dict[str, float]
) -> None:
    """Each method's learning curves across the phases as % of each phase's optimum, one panel
    per method, with the T2 drop, the final evaluations and the equal-split level (the paper's
    Fig. 5, part C), written atomically as ``path`` with suffix .png and .svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycle = _read_cycle(report, curve, opt_rates)
    names = cycle.names
    fig, axes = plt.subplots(
        len(names) or 1,
        1,
        sharex=True,
        sharey=True,
        dpi=120,
        squeeze=False,
        figsize=(10, 1.0 + 2.3 * max(1, len(names))),
    )
    axes = axes[:, 0]
    for i, ax in enumerate(axes):
        _draw_references(ax, cycle, label=i == 0)
    for ax, name in zip(axes, names, strict=False):
        label, colour = _look(name, names)
        ax.set_ylabel(f"{label}\n% of optimum", color=colour, fontweight="bold")
        runs = cycle.runs.get(name, [])
        _draw_method(ax, colour, runs, cycle.levels[name], cycle.spans, cycle.lo, cycle.hi,
                     retrained=name not in NOT_RETRAINED)  # fmt: skip
    if not names:
        _draw_no_method(axes[0])
    _draw_frame(fig, axes, cycle)
    _legend(fig, cycle.combined)
    try:
        for suffix in (".png", ".svg"):
            with atomic_path(path.with_suffix(suffix)) as tmp:
                fig.savefig(tmp, format=suffix[1:])
    finally:
        plt.close(fig)


# ---- what is drawn: read from the report and the curve --------------------------------------


def _base(phase: str) -> str:
    """The band a curve phase is drawn in: T3c (the model retrained on T1 + T2) is T3's."""
    return phase[:-1] if phase.endswith("c") else phase


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _report_phases(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{phase name: its methods} of the report, in its order; malformed entries left out."""
    out: dict[str, dict[str, Any]] = {}
    for p in report.get("phases") or []:
        if isinstance(p, dict) and isinstance(p.get("name"), str):
            out[p["name"]] = p.get("methods") if isinstance(p.get("methods"), dict) else {}
    return out


def _optima(phases: dict[str, dict[str, Any]], opt_rates: dict[str, float]) -> dict[str, float]:
    """Each phase's optimum rate: the cycle's own, else the report's."""
    out = {}
    for phase, methods in phases.items():
        rate = _number((methods.get("optimum") or {}).get("rate"))
        if rate:
            out[phase] = rate
    for phase, rate in (opt_rates or {}).items():
        if _number(rate):
            out[phase] = float(rate)
    return out


def _fraction(methods: dict[str, Any], key: str) -> float | None:
    """A report entry as % of its phase's optimum, or None when it is not there."""
    entry = methods.get(key)
    if not isinstance(entry, dict):
        return None
    frac = _number(entry.get("fraction_of_optimum"))
    if frac is None:
        rate, opt = _number(entry.get("rate")), _number((methods.get("optimum") or {}).get("rate"))
        frac = rate / opt if rate is not None and opt else None
    return None if frac is None else 100.0 * frac


def _row_percent(row: dict[str, Any], optima: dict[str, float]) -> float | None:
    frac = _number(row.get("val_fraction"))
    if frac is None:
        rate, opt = _number(row.get("rate")), optima.get(_base(str(row.get("phase"))))
        frac = rate / opt if rate is not None and opt else None
    return None if frac is None else 100.0 * frac


def _runs(curve: Iterable[dict[str, Any]], optima: dict[str, float]) -> dict[str, list[dict]]:
    """{method: its training runs}, each {"phase", "model", "xs", "ys"} sorted by step, in the
    curve's order."""
    runs: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for row in curve:
        if not isinstance(row, dict):
            continue
        step, pct = _number(row.get("step")), _row_percent(row, optima)
        method, phase = row.get("method"), row.get("phase")
        if step is None or pct is None or not isinstance(method, str) or not isinstance(phase, str):
            continue
        model = str(row.get("model", f"{phase}_{method}"))
        run = runs.setdefault(method, {}).setdefault(
            (phase, model), {"phase": phase, "model": model, "pts": {}}
        )
        run["pts"][step] = pct
    out: dict[str, list[dict]] = {}
    for method, by_model in runs.items():
        for run in by_model.values():
            pts = run.pop("pts")
            run["xs"] = sorted(pts)
            run["ys"] = [pts[x] for x in run["xs"]]
            out.setdefault(method, []).append(run)
    return out


def _panel_methods(phases: dict[str, dict[str, Any]], runs: dict[str, list[dict]]) -> list[str]:
    """The methods that get a panel: GDM, MLP, SAC first, then the others as they come."""
    seen: list[str] = []
    for methods in phases.values():
        for key in methods:
            name = key[: -len(COMBINED)] if key.endswith(COMBINED) else key
            if key not in REFERENCES and name not in seen:
                seen.append(name)
    for name in runs:
        if name not in REFERENCES and name not in seen:
            seen.append(name)
    known = [m for m in METHODS if m in seen]
    return known + [m for m in seen if m not in METHODS]


def _levels(phases: dict[str, dict[str, Any]], name: str, runs: list[dict]) -> dict[str, float]:
    """The method's final evaluations as % of the optimum: {phase: value}, with "T3c" for the
    model retrained on T1 + T2 beside the fine-tuned one (retrain = "both"). A phase the report
    lacks is taken from the curve: the T2 rows' mean, a training run's last point."""
    out: dict[str, float] = {}
    for phase, methods in phases.items():
        if (f := _fraction(methods, name)) is not None:
            out[phase] = f
        if (f := _fraction(methods, name + COMBINED)) is not None:
            out[phase + "c"] = f
    for run in runs:
        phase = run["phase"]
        reported = name in phases.get(_base(phase), {})
        if phase not in out and not reported and run["ys"]:
            ys = run["ys"]
            out[phase] = sum(ys) / len(ys) if _base(phase) == "T2" else ys[-1]
    return out


def _spans(
    phases: dict[str, Any], curve: list[dict[str, Any]], config: dict[str, Any]
) -> dict[str, tuple[float, float]]:
    """Each phase's band on the step axis: from the previous band's end to the phase's last
    curve step (T1 from 0); a phase with no curve rows gets the width the cycle would give it."""
    last: dict[str, float] = {}
    for row in curve:
        if not isinstance(row, dict):
            continue
        step, phase = _number(row.get("step")), row.get("phase")
        if step is not None and isinstance(phase, str):
            b = _base(phase)
            last[b] = max(last.get(b, step), step)
    order = ("T1", "T2", "T3")
    names = sorted(set(last) | set(phases), key=lambda p: (order.index(p) if p in order else 3, p))
    t1 = _number(config.get("t1_steps")) or 0.0
    t3 = _number(config.get("t3_steps")) or 0.0
    default = {"T1": t1, "T2": max(1.0, t3 // 5) if t3 else 0.0, "T3": t3}
    spans, cursor = {}, 0.0
    for phase in names:
        lo = cursor
        width = default.get(phase) or max(1.0, 0.1 * cursor)
        hi = last[phase] if phase in last and last[phase] > lo else lo + width
        spans[phase] = (lo, hi)
        cursor = hi
    return spans


def _y_range(
    levels: dict[str, dict[str, float]], equal: dict[str, float], runs: dict[str, list[dict]]
) -> tuple[float, float]:
    """A y range zoomed on what tells the story: the final evaluations, the T2 drops, the equal
    split and where each learning curve ends (early points of a curve may fall below it)."""
    values = [v for lv in levels.values() for v in lv.values()] + list(equal.values())
    values += [r["ys"][-1] for rs in runs.values() for r in rs if r["ys"]]
    if not values:
        return 0.0, 101.0
    bottom, top = min(values), max(max(values), 100.0)
    span = max(1.0, top - bottom)
    return bottom - 0.14 * span, top + 0.05 * span  # below: room for the T2 drop's label


@dataclass
class _Cycle:
    """What the figure shows, read from the report and the curve."""

    names: list[str]  # the methods with a panel, in panel order
    runs: dict[str, list[dict]]  # {method: its training runs} (T2's rows are the drop instead)
    levels: dict[str, dict[str, float]]  # {method: its final evaluations, see _levels}
    spans: dict[str, tuple[float, float]]  # {phase: its band on the step axis}
    equal: dict[str, float]  # {phase: the equal split, % of its optimum}
    lo: float  # the y range, shared by the panels
    hi: float
    x_end: float  # the last band's end
    combined: bool  # whether a model retrained on T1 + T2 data is shown (a key entry of its own)


def _read_cycle(
    report: dict[str, Any], curve: list[dict[str, Any]], opt_rates: dict[str, float]
) -> _Cycle:
    """Everything the figure draws, from the report, the curve and the phases' optima."""
    phases = _report_phases(report)
    optima = _optima(phases, opt_rates)
    spans = _spans(phases, curve, report.get("config") or {})
    runs = _runs(curve, optima)
    names = _panel_methods(phases, runs)
    levels = {name: _levels(phases, name, runs.get(name, [])) for name in names}
    # T2 trains nothing: its rows (the T1 model evaluated) are drawn as the drop, not a curve.
    runs = {m: [r for r in rs if _base(r["phase"]) != "T2"] for m, rs in runs.items()}
    equal = {p: f for p in phases if (f := _fraction(phases[p], "equal")) is not None}
    lo, hi = _y_range(levels, equal, runs)
    combined = any(r["phase"].endswith("c") for rs in runs.values() for r in rs) or any(
        k.endswith(COMBINED) for p in phases.values() for k in p
    )
    return _Cycle(
        names=names,
        runs=runs,
        levels=levels,
        spans=spans,
        equal=equal,
        lo=lo,
        hi=hi,
        x_end=max((h for _, h in spans.values()), default=1.0) or 1.0,
        combined=combined,
    )


# ---- drawing -------------------------------------------------------------------------------


def _look(name: str, names: list[str]) -> tuple[str, str]:
    if name in METHODS:
        return METHODS[name]
    extra = [n for n in names if n not in METHODS]
    return name.upper(), EXTRA_COLOURS[extra.index(name) % len(EXTRA_COLOURS)]


def _draw_bands(ax: Any, spans: dict[str, tuple[float, float]], label: bool) -> None:
    for phase, (lo, hi) in spans.items():
        colour, text = PHASES.get(phase, (OTHER_BAND, phase))
        ax.axvspan(lo, hi, color=colour, alpha=0.8, lw=0, zorder=0)
        if label:
            ax.text(
                (lo + hi) / 2,
                1.02,
                text,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=10,
                fontweight="bold",
            )


def _draw_references(ax: Any, cycle: _Cycle, label: bool) -> None:
    """What every panel has behind its method: the phase bands (named over the top panel, when
    ``label``), the optimum's 100 % line and each phase's equal split."""
    _draw_bands(ax, cycle.spans, label=label)
    ax.hlines(100.0, 0, cycle.x_end, colors="black", linestyles="--", lw=1.0, zorder=2)
    for phase, (p_lo, p_hi) in cycle.spans.items():
        if phase in cycle.equal:
            ax.hlines(
                cycle.equal[phase], p_lo, p_hi, colors="grey", linestyles=":", lw=1.5, zorder=2
            )
    ax.grid(axis="y", alpha=0.3)


def _draw_no_method(ax: Any) -> None:
    """The one panel of a cycle with no learned method: says so."""
    ax.text(
        0.5,
        0.5,
        "no learned method to show",
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="grey",
    )
    ax.set_ylabel("% of optimum")


def _draw_frame(fig: Any, axes: Any, cycle: _Cycle) -> None:
    """The shared axes' ranges, the step axis's label and the figure's title."""
    axes[0].set_ylim(cycle.lo, cycle.hi)
    axes[0].set_xlim(0, cycle.x_end * 1.12)  # room on the right for the final values' labels
    axes[-1].set_xlabel(
        "training step (the T2 band is no training: the T1 models evaluated on rainstorm data)"
        if "T2" in cycle.spans
        else "training step"
    )
    fig.suptitle(
        "AIGX virtuous cycle: T1 good weather \u2192 T2 rainstorm drift \u2192 "
        "T3 retrained \u2014 each phase's sum rate as % of its optimum",
        fontsize=11,
    )


# The labels of the values drawn (drops, final evaluations): bold on a light box, over the lines.
BOLD_LABEL = {
    "fontsize": 8,
    "fontweight": "bold",
    "textcoords": "offset points",
    "zorder": 7,
    "bbox": {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
}


def _draw_method(
    ax: Any,
    colour: str,
    runs: list[dict],
    levels: dict[str, float],
    spans: dict[str, tuple[float, float]],
    lo: float,
    hi: float,
    retrained: bool = True,
) -> None:
    """One panel: the method's learning curves, its T2 drop, its final evaluations (and, for a
    method the cycle retrains, what retraining won back)."""
    for run in runs:
        _draw_curve(ax, colour, run, lo)
    if "T2" in levels and "T2" in spans:
        _draw_drop(ax, levels, spans["T2"], hi - lo)
    # The final test evaluation of each phase that trains, and what retraining won back.
    if "T1" in levels and "T1" in spans:
        x, y = spans["T1"][1], levels["T1"]
        ax.plot([x], [y], "o", color=colour, mec="black", ms=7, zorder=7)
        ax.annotate(
            f"{y:.1f} %", (x, y), xytext=(-5, -5), ha="right", va="top", color=colour, **BOLD_LABEL
        )
    ends = [(k, levels[k]) for k in ("T3", "T3c") if k in levels and "T3" in spans]
    if ends:
        _draw_retrained(ax, colour, ends, spans["T3"], 0.08 * (hi - lo))
        if "T2" in levels and retrained:
            _draw_won_back(ax, max(y for _, y in ends), levels["T2"], spans["T3"])
    if not runs and levels:
        ax.text(
            0.01,
            0.04,
            "no learning curve recorded: final evaluations only",
            transform=ax.transAxes,
            fontsize=7.5,
            color="#6b7280",
            style="italic",
        )


def _draw_curve(ax: Any, colour: str, run: dict, lo: float) -> None:
    """One training run's validation curve (dashed for the model retrained on T1 + T2), and
    where it comes from when it starts below the panel."""
    combined = run["phase"].endswith("c")
    xs, ys = run["xs"], run["ys"]
    ax.plot(
        xs,
        ys,
        color=colour,
        lw=1.3 if combined else 1.8,
        ls="--" if combined else "-",
        marker="s" if combined else "o",
        ms=3 if combined else 2.5,
        zorder=4,
        alpha=0.85 if combined else 1.0,
    )
    below = [(x, y) for x, y in zip(xs, ys, strict=True) if y < lo]
    if below:  # the curve comes from below the zoomed range: say from where
        x, y = min(below, key=lambda p: p[1])
        ax.annotate(
            f"\u2193 {y:.1f} %",
            (x, lo),
            xytext=(3, 3),
            textcoords="offset points",
            fontsize=7,
            color=colour,
            va="bottom",
            ha="left",
        )


def _draw_drop(
    ax: Any, levels: dict[str, float], t2_span: tuple[float, float], height: float
) -> None:
    """The T2 drop: the T1 model on the rainstorm's data, beside what it got in T1. A drop too
    small for its label beside the arrow (``height``: the panel's y range) is named under the
    bar instead, clear of the T1 label."""
    t2_lo, t2_hi = t2_span
    y2, mid = levels["T2"], (t2_lo + t2_hi) / 2
    ax.hlines(y2, t2_lo, t2_hi, colors=DRIFT, lw=3.5, zorder=5)
    ax.annotate(
        f"{y2:.1f} %", (mid, y2), xytext=(0, -4), ha="center", va="top", color=DRIFT, **BOLD_LABEL
    )
    if "T1" not in levels:
        return
    y1 = levels["T1"]
    ax.annotate(
        "",
        (mid, y2),
        xytext=(mid, y1),
        zorder=6,
        arrowprops={"arrowstyle": "-|>", "color": DRIFT, "lw": 1.5, "shrinkA": 0, "shrinkB": 2},
    )
    small = abs(y1 - y2) < 0.15 * height
    ax.annotate(
        _pts("drift", y2 - y1),
        (mid, y2) if small else (t2_lo, (y1 + y2) / 2),
        xytext=(0, -17) if small else (-4, 0),
        ha="center" if small else "right",
        va="top" if small else "center",
        color=DRIFT,
        **BOLD_LABEL,
    )


def _draw_retrained(
    ax: Any,
    colour: str,
    ends: list[tuple[str, float]],
    t3_span: tuple[float, float],
    gap: float,
) -> None:
    """The T3 final evaluations (``ends``: the fine-tuned model and the one retrained on T1 + T2
    data, as there are), at the band's end, their labels at least ``gap`` apart."""
    x = t3_span[1]
    placed = _spread([y for _, y in ends], gap)
    for (key, y), ty in zip(ends, placed, strict=True):
        combined = key == "T3c"
        ax.plot(
            [x],
            [y],
            "s" if combined else "o",
            color=colour,
            mec="black",
            ms=6 if combined else 7,
            zorder=7,
        )
        ax.annotate(
            f"{y:.1f} %" + (" (T1+T2)" if combined else ""),
            (x, ty),
            xytext=(6, 0),
            va="center",
            color=colour,
            **BOLD_LABEL,
        )


def _draw_won_back(ax: Any, y3: float, y2: float, t3_span: tuple[float, float]) -> None:
    """What retraining won back: the best T3 evaluation ``y3`` over the T2 drop ``y2``."""
    t3_lo, x = t3_span
    ax.annotate(
        _pts("retrain", y3 - y2),
        ((t3_lo + x) / 2, (y3 + y2) / 2),
        xytext=(0, 0),
        ha="center",
        va="center",
        color="#15803d",
        **BOLD_LABEL,
    )


def _legend(fig: Any, combined: bool) -> None:
    """The figure's key, below the panels: what each kind of mark means (colour is the method)."""
    from matplotlib.lines import Line2D

    grey = "#4b5563"
    handles = [
        Line2D([], [], color=grey, lw=1.6, marker="o", ms=2.5, label="validation learning curve"),
        Line2D([], [], color=DRIFT, lw=3.5, label="T1 model on T2 data (drift)"),
        Line2D(
            [], [], color=grey, ls="", marker="o", ms=7, mec="black", label="final test evaluation"
        ),
        Line2D([], [], color="black", ls="--", lw=1.0, label="water-filling optimum (100 %)"),
        Line2D([], [], color="grey", ls=":", lw=1.5, label="equal split"),
    ]
    if combined:
        handles.insert(1, Line2D([], [], color=grey, lw=1.6, ls="--", marker="s", ms=4,
                                 label="retrained on T1 + T2 data"))  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    height = fig.get_figheight()
    rows = math.ceil(len(handles) / 3)
    fig.tight_layout(rect=(0, (0.12 + 0.19 * rows) / height, 1, 1))


def _pts(what: str, delta: float) -> str:
    """E.g. "drift -23.2 pts": a change in percentage points, written with a real minus sign."""
    return f"{what} {delta:+.1f} pts".replace("-", "\u2212")


def _spread(ys: list[float], gap: float) -> list[float]:
    """Label heights for values ``ys``: the values themselves, moved apart to at least ``gap``."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    out = list(ys)
    for a, b in itertools.pairwise(order):
        if out[b] - out[a] < gap:
            mid = (out[a] + out[b]) / 2
            out[a], out[b] = mid - gap / 2, mid + gap / 2
    return out


def serve_figure(report: dict[str, Any], path: Path) -> None:
    """``aigxctl serve --timeline``: the served model's fraction of the optimum over the
    decisions (exact, in blocks), with the weather changes, the drift detections and the model
    swaps marked, written atomically as ``path`` (.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report.get("series", {})
    xs, ys = series.get("decision", []), [100 * f for f in series.get("fraction", [])]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=120)
    ax.plot(xs, ys, color=METHODS["gdm"][1], lw=1.4, label="served model (exact, per block)")
    ax.axhline(99.0, color="#15803d", ls=":", lw=1, label="99 % of the optimum")
    ends = [*report.get("segment_starts", [])[1:], report.get("decisions", 0)]
    for start, end, seg in zip(report.get("segment_starts", []), ends, report["segments"],
                               strict=False):  # fmt: skip
        if start:
            ax.axvline(start, color="#475569", ls="--", lw=1)
        ax.text((start + end) / 2, 1.01, seg["scenario"], transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=9, color="#475569")  # fmt: skip
    for i, d in enumerate(report.get("detections", [])):
        ax.axvline(d["decision"], color=DRIFT, lw=1, alpha=0.8,
                   label="drift detected" if i == 0 else None)  # fmt: skip
    for i, s in enumerate(report.get("swaps", [])):
        ax.axvline(s["decision"], color="#15803d", lw=1.6,
                   label="model swapped in" if i == 0 else None)  # fmt: skip
    if ys:
        ax.set_ylim(max(0.0, min(ys) - 2), 100.5)
    ax.set_xlabel("decisions")
    ax.set_ylabel("% of the optimum")
    lat = report.get("latency_ms", {})
    if lat.get("p99") is not None:
        busy = lat.get("p99_while_training")
        ax.set_title(f"aigxctl serve: batches of {report.get('batch')}, p99 "
                     f"{lat['p99']:.2f} ms" + (f", {busy:.2f} ms while retraining"
                                               if busy is not None else ""),
                     fontsize=10, pad=16)  # fmt: skip
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
