"""The numbers every report is made of: the mean sum rate of an allocation, of the water-filling
optimum and of the equal split, and a method's fraction of the optimum and gain over equal.
Every command, the training loops and the cycle compute them here and nowhere else.
"""

from __future__ import annotations

import numpy as np

from aigxctl import core
from aigxctl.allocation import equal_split

__all__ = ["compare", "equal_rate", "mean_rate", "optimum_rate"]


def mean_rate(gains: np.ndarray, power: np.ndarray, noise: float) -> float:
    """Mean sum rate (bit/s/Hz) of the allocations ``power`` [N, M] for ``gains`` [N, M]."""
    return float(core.sum_rate(gains, power, noise).mean())


def optimum_rate(gains: np.ndarray, total_power: float, noise: float) -> float:
    """Mean sum rate of the exact water-filling optimum."""
    return mean_rate(gains, core.waterfill(gains, total_power, noise), noise)


def equal_rate(gains: np.ndarray, total_power: float, noise: float) -> float:
    """Mean sum rate of the equal split P/M (the paper's "average" allocation)."""
    return mean_rate(gains, equal_split(gains, total_power), noise)


def compare(rate: float, optimum: float, equal: float) -> dict[str, float]:
    """``rate`` beside the optimum's and the equal split's: {rate, fraction_of_optimum,
    gain_over_equal}."""
    return {
        "rate": rate,
        "fraction_of_optimum": rate / optimum,
        "gain_over_equal": rate / equal - 1.0,
    }
