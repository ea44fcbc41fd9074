"""Figures: the virtuous cycle's learning curves across its phases (the paper's Fig. 5, part C),
as PNG and SVG, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aigxctl.files import atomic_path

__all__ = ["cycle_figure"]

# The reference levels drawn over each phase: (method, colour, line style, width, legend).
LEVELS = (
    ("optimum", "black", "--", 1.2, "water-filling optimum"),
    ("equal", "grey", ":", 1.5, "equal allocation"),
)


def cycle_figure(
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
