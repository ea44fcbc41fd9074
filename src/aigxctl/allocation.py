"""Allocating power for a batch of gain vectors with a chosen method, and writing the result.

This is what ``aigxctl allocate`` runs; the methods are the exact optimum (water-filling), the
equal split, and (with a trained model) the generative model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from aigxctl import core
from aigxctl.errors import UserError

__all__ = ["METHODS", "Allocation", "allocate", "equal_split", "to_csv", "to_json"]

METHODS = ("waterfill", "equal", "gdm")


@dataclass
class Allocation:
    """Powers ``[B, M]`` (watts, each row adds up to P) and their sum rates ``[B]``."""

    method: str
    total_power: float
    noise: float
    power: np.ndarray
    sum_rate: np.ndarray
    seconds: float


def equal_split(gains: np.ndarray, total_power: float) -> np.ndarray:
    """The paper's "average" baseline: P / M on every channel."""
    return np.full(gains.shape, total_power / gains.shape[-1], dtype=gains.dtype)


def allocate(
    gains: np.ndarray,
    method: str = "waterfill",
    total_power: float = 0.2,
    noise: float = 1.0,
    *,
    model: Any = None,
    **model_kwargs: Any,
) -> Allocation:
    """Allocate ``total_power`` over the channels of each row of ``gains`` [B, M]; ``gdm`` uses
    ``model`` (from ``load_model``) with ``model_kwargs`` (mode, best_of, seed, backend)."""
    start = time.perf_counter()
    if method == "waterfill":
        power = core.waterfill(gains, total_power, noise)
    elif method == "equal":
        core.check_gains(np.asarray(gains).reshape(-1, gains.shape[-1]))
        power = equal_split(gains, total_power)
    elif method == "gdm":
        if model is None:
            raise UserError("--method gdm needs --model DIR (a model from 'aigxctl train')")
        power = model.allocate(gains, total_power, **model_kwargs)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    seconds = time.perf_counter() - start
    rate = core.sum_rate(gains, power, noise)
    return Allocation(method, total_power, noise, power, rate, seconds)


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
