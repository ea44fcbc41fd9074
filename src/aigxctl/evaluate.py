"""Evaluation: a model's mean sum rate beside the water-filling optimum and the baselines
(equal split, random split, other trained models), its fraction of the optimum, its gain over
equal allocation and its decisions per second. Every report shows the optimum's own gain over
equal too, so nobody mistakes a gap to the optimum for a win.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from aigxctl import metrics
from aigxctl.errors import UserError

__all__ = ["BASELINES", "evaluate", "random_split", "run"]

BASELINES = ("equal", "random")


def random_split(gains: np.ndarray, total_power: float, seed: int = 0) -> np.ndarray:
    """Uniform random weights per channel, scaled to add up to P."""
    w = np.random.default_rng(seed).random(gains.shape)
    return total_power * w / w.sum(axis=1, keepdims=True)


def evaluate(
    model: Any,
    gains: np.ndarray,
    *,
    baselines: tuple[str, ...] = BASELINES,
    others: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    **allocate_kwargs: Any,
) -> dict[str, Any]:
    """Mean sum rates on ``gains`` [N, M] at the model's P and sigma^2. With ``device`` a GPU
    (``cuda:N``), the model's allocations, the optimum's water-filling and their sum rates are
    computed there (the gains copied once); the baselines stay on the CPU.

    ``others`` maps a name to another trained model (e.g. ``"mlp"``) evaluated beside it;
    ``allocate_kwargs`` go to ``model.allocate`` (mode, best_of, backend). Rows of zero gains
    are fine (every method scores 0 there); gains that are all zero are refused, as there is
    nothing to allocate and no fraction of the optimum to report.
    """
    if gains.ndim != 2 or len(gains) == 0:
        raise UserError(f"the gains must be a non-empty [N, M] array, got shape {gains.shape}")
    if gains.shape[1] != model.m:
        raise UserError(
            f"the model was trained for M = {model.m} channels, the gains have {gains.shape[1]}"
        )
    if not gains.any():
        raise UserError(
            f"all {len(gains):,} gain vectors are zero: nothing to allocate, every method "
            "scores 0 bit/s/Hz"
        )
    p, s2 = model.total_power, model.noise
    work = gains
    if device != "cpu":
        import torch

        work = torch.as_tensor(gains, device=device)
    model.allocate(work[:1], seed=seed, **allocate_kwargs)  # warm-up (packs the fused sampler)
    start = time.perf_counter()
    power = model.allocate(work, seed=seed, **allocate_kwargs)
    if device != "cpu":
        torch.cuda.synchronize(device)  # the GPU's work done, as on the CPU
    seconds = time.perf_counter() - start

    def rate(alloc: np.ndarray) -> float:
        return metrics.mean_rate(gains, alloc, s2)

    optimum = metrics.optimum_rate(work, p, s2)
    rates = {"model": metrics.mean_rate(work, power, s2), "optimum": optimum}
    for name in baselines:
        if name == "equal":
            rates["equal"] = metrics.equal_rate(gains, p, s2)
        elif name == "random":
            rates["random"] = rate(random_split(gains, p, seed))
        else:
            raise UserError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    for name, other in (others or {}).items():
        rates[name] = rate(other.allocate(gains, seed=seed))  # reproducible, like the model
    equal = rates.get("equal") or metrics.equal_rate(gains, p, s2)
    if not (optimum > 0 and equal > 0):  # the ratios below divide by both
        raise UserError(
            f"the gains are too small for a nonzero sum rate at P = {p:g}, sigma^2 = {s2:g} "
            f"(optimum {optimum:g}, equal split {equal:g} bit/s/Hz): nothing to compare"
        )
    result: dict[str, Any] = {f"{k}_rate": v for k, v in rates.items()}
    model_vs = metrics.compare(rates["model"], optimum, equal)
    result.update(
        {
            "equal_rate": equal,
            "fraction_of_optimum": model_vs["fraction_of_optimum"],
            "gain_over_equal": model_vs["gain_over_equal"],
            "optimum_gain_over_equal": metrics.compare(optimum, optimum, equal)["gain_over_equal"],
            "decisions_per_s": len(gains) / seconds if seconds > 0 else float("inf"),
            "samples": len(gains),
            "channels": int(gains.shape[1]),
            "total_power": p,
            "noise": s2,
            "arch": model.arch,
            "backend": model.backend_for(allocate_kwargs.get("backend", "auto"))[0],
            "device": device,
        }
    )
    for name in others or {}:
        vs = metrics.compare(rates[name], optimum, equal)
        result[f"{name}_fraction_of_optimum"] = vs["fraction_of_optimum"]
        result[f"{name}_gain_over_equal"] = vs["gain_over_equal"]
    return result


def run(
    model_dir: str | Path | None,
    *,
    data: str | Path | None = None,
    scenario: str | None = None,
    samples: int = 10_000,
    seed: int = 12345,
    baselines: str = "equal,random",
    device: str = "auto",
    **allocate_kwargs: Any,
) -> dict[str, Any]:
    """``aigxctl evaluate``: the model in ``model_dir`` on a dataset's gains (``.npz`` or CSV)
    or on fresh draws of a scenario, beside the baselines named in ``baselines``
    ("equal,random,mlp:DIR,gdm:DIR"). The result is :func:`evaluate`'s, plus ``model``,
    ``data`` (what was evaluated on) and ``methods``: per method its rate, fraction of the
    optimum and gain over equal (metrics.compare). ``device``: auto, cpu, cuda or cuda:N
    (:func:`aigxctl.core.resolve_device`), for the model and the other trained models."""
    from aigxctl import core, scenarios
    from aigxctl import data as datasets
    from aigxctl.checkpoint import load_model
    from aigxctl.model import MAX_BEST_OF

    if (data is None) == (scenario is None):
        raise UserError("give exactly one of --data FILE (.npz or .csv) or --scenario NAME")
    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    best_of = allocate_kwargs.get("best_of")
    if best_of is not None and not 1 <= best_of <= MAX_BEST_OF:
        raise UserError(f"--best-of must be >= 1 and <= {MAX_BEST_OF}, got {best_of}")
    dev = core.resolve_device(device)
    if data is None:  # before loading the model: a bad scenario or size fails fast
        s = scenarios.get(scenario)
        scenarios.check_draw_size(samples, s.m, "--samples")
    model = load_model(model_dir, device=dev)
    if data is not None:
        gains, source = datasets.read_gains(data, float32="the model"), str(data)
    else:
        gains = scenarios.draw(s, samples, seed)
        source = f"{s.name} ({samples:,} fresh draws, seed {seed})"
    simple, others = [], {}
    for item in (b.strip() for b in baselines.split(",") if b.strip()):
        if ":" in item:
            name, path = item.split(":", 1)
            others[name] = load_model(path, device=dev)
        else:
            simple.append(item)
    res = evaluate(model, gains, baselines=tuple(simple), others=others, seed=seed, device=dev,
                   **allocate_kwargs)  # fmt: skip
    res["methods"] = {
        key[: -len("_rate")]: metrics.compare(value, res["optimum_rate"], res["equal_rate"])
        for key, value in res.items()
        if key.endswith("_rate")
    }
    res.update(model=str(model_dir) if model_dir else "the pretrained t1 model", data=source)
    return res
