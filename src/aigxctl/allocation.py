"""Allocating power for a batch of gain vectors with a chosen method, and writing the result.

This is what ``aigxctl allocate`` runs; the methods are the exact optimum (water-filling), the
equal split, and (with a trained model) the generative model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigxctl import core
from aigxctl.errors import UserError

__all__ = ["METHODS", "Allocation", "allocate", "equal_split", "run", "to_csv", "to_json"]

METHODS = ("waterfill", "equal", "gdm")
# P and sigma^2 when neither the user nor a model says: the paper's case study (P = 0.2).
DEFAULT_TOTAL_POWER = 0.2
DEFAULT_NOISE = 1.0


@dataclass
class Allocation:
    """Powers ``[B, M]`` (watts, each row adds up to P) and their sum rates ``[B]``."""

    method: str
    total_power: float
    noise: float
    power: np.ndarray
    sum_rate: np.ndarray
    seconds: float
    how: str = ""  # the method as said to a person: "gdm (fused, models/t1) on cuda:0"
    device: str = "cpu"  # where it was computed

    @property
    def idle_rows(self) -> int:
        """Rows whose gains are all zero: no channel can use power, so none is allocated."""
        return int((self.power.sum(axis=1) == 0).sum())


def equal_split(gains: np.ndarray, total_power: float | np.ndarray) -> np.ndarray:
    """The paper's "average" baseline: P / M on every channel (P one for all rows, or one per
    row of ``gains`` [..., M])."""
    g = np.asarray(gains)
    m = g.shape[-1]
    p = core.power_rows(total_power, g.size // m if m else 0)
    dtype = g.dtype if np.issubdtype(g.dtype, np.floating) else np.float64
    return np.repeat(p / m, m).reshape(g.shape).astype(dtype, copy=False)


def allocate(
    gains: np.ndarray,
    method: str = "waterfill",
    total_power: float = 0.2,
    noise: float = 1.0,
    *,
    model: Any = None,
    device: str = "cpu",
    **model_kwargs: Any,
) -> Allocation:
    """Allocate ``total_power`` over the channels of each row of ``gains`` [B, M]; ``gdm`` uses
    ``model`` (from ``load_model``) with ``model_kwargs`` (mode, best_of, seed, backend).
    ``device`` (``cpu`` or ``cuda:N``, from :func:`aigxctl.core.resolve_device`): where the
    water-filling runs (a gdm model runs where it was loaded); the result is on the host."""
    start = time.perf_counter()
    if method == "waterfill":
        power = core.waterfill(_on(gains, device), total_power, noise)
    elif method == "equal":
        g = core.as_host_gains(gains)
        core.check_gains(g.reshape(-1, g.shape[-1]))
        power = equal_split(g, total_power)
    elif method == "gdm":
        if model is None:
            raise UserError("--method gdm needs a model (from load_model)")
        power = model.allocate(gains, total_power, noise=noise, **model_kwargs)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    power = power.cpu().numpy() if core.is_torch(power) else power
    seconds = time.perf_counter() - start
    rate = core.sum_rate(gains, power, noise)
    return Allocation(method, total_power, noise, power, rate, seconds, device=device)


def _on(gains: np.ndarray, device: str) -> Any:
    """``gains`` where they are computed on: as they are for the CPU, a tensor on a GPU."""
    if device == "cpu":
        return gains
    import torch

    return torch.as_tensor(gains, device=device)


def run(
    gains_source: str | Path,
    method: str = "waterfill",
    *,
    model_dir: str | Path | None = None,
    total_power: float | None = None,
    noise: float | None = None,
    device: str = "auto",
    **model_kwargs: Any,
) -> Allocation:
    """``aigxctl allocate``: the gains CSV at ``gains_source`` (``-``: stdin) allocated with
    ``method``. ``gdm`` uses the model in ``model_dir``, or the pretrained T1 model shipped
    with aigxctl. P and sigma^2: as given, else the model's with gdm, else 0.2 and 1.
    ``device``: auto, cpu, cuda or cuda:N (:func:`aigxctl.core.resolve_device`)."""
    from aigxctl import files

    dev = core.resolve_device(device)
    model = None
    if method == "gdm":
        from aigxctl.checkpoint import load_model

        model = load_model(model_dir, device=dev)
    elif model_dir is not None:
        raise UserError(f"--model is only used with --method gdm (not {method})")
    p = core.check_level("--total-power", total_power if total_power is not None else
                         (model.total_power if model else DEFAULT_TOTAL_POWER))  # fmt: skip
    s2 = core.check_level("--noise", noise if noise is not None else
                          (model.noise if model else DEFAULT_NOISE))  # fmt: skip
    gains = files.read_gains_csv(gains_source, float32="the model" if model else None)
    if model is not None and gains.shape[1] != model.m:
        raise UserError(
            f"{files.source_name(gains_source)}: rows have {gains.shape[1]} gains but the model "
            f"{model_dir or '(pretrained t1)'} was trained for M = {model.m} channels"
        )
    result = allocate(gains, method, p, s2, model=model, device=dev, **model_kwargs)
    result.how = method
    if model is not None:
        which = model.backend_for(model_kwargs.get("backend", "auto"))[0]
        if model_kwargs.get("precision", "f32") != "f32":
            which += f" {model_kwargs['precision']}"
        result.how = f"gdm ({which}, {model_dir or 'pretrained t1 model'})"
    result.how += f" on {dev}"
    return result


def to_csv(result: Allocation) -> str:
    """CSV text: header ``p1..pM,sum_rate`` and one row per instance."""
    m = result.power.shape[1]
    header = ",".join([*(f"p{i}" for i in range(1, m + 1)), "sum_rate"])
    table = np.column_stack([result.power, result.sum_rate])
    body = "\n".join(",".join(f"{v:.10g}" for v in row) for row in table)
    return f"{header}\n{body}\n"


def _finite_or_null(values: np.ndarray) -> list[Any]:
    # JSON has no Infinity or NaN (json.dumps would write them, and strict readers refuse the
    # file): a non-finite number, such as an overflowing sum rate, becomes null.
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if finite.all():
        return values.tolist()
    return np.where(finite, values, None).tolist()


def to_json(result: Allocation) -> str:
    """JSON text with the method, P, sigma^2, the allocations and their sum rates; a number
    that is not finite (a sum rate that overflows) is written as null."""
    return (
        json.dumps(
            {
                "method": result.method,
                "total_power": _finite_or_null(np.float64(result.total_power)),
                "noise": _finite_or_null(np.float64(result.noise)),
                "allocations": _finite_or_null(result.power),
                "sum_rate": _finite_or_null(result.sum_rate),
            },
            allow_nan=False,
        )
        + "\n"
    )
