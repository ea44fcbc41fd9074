"""Plain NumPy water-filling solvers the tests hold the core to: the textbook sort + prefix-sum
rule and the reference code's bisection on the level, one row at a time, in float64."""

from __future__ import annotations

import numpy as np


def waterfill_sorted(g: np.ndarray, total_power: float, noise: float = 1.0) -> np.ndarray:
    """p_n = max(0, mu - noise/g_n), mu from the largest k with (P + a_(1..k)) / k > a_(k)."""
    g = np.asarray(g, dtype=np.float64)
    p = np.zeros_like(g)
    usable = np.flatnonzero(g > 0)
    if usable.size == 0:
        return p
    a = noise / g[usable]
    s = np.sort(a)
    k = 1
    for j in range(1, len(s) + 1):
        if (total_power + s[:j].sum()) / j > s[j - 1]:
            k = j
    mu = (total_power + s[:k].sum()) / k
    p[usable] = np.maximum(mu - a, 0.0)
    return p


def waterfill_bisection(g: np.ndarray, total_power: float, noise: float = 1.0) -> np.ndarray:
    """Bisection on mu to 1e-13 relative, like the paper's reference code (tighter tolerance)."""
    g = np.asarray(g, dtype=np.float64)
    p = np.zeros_like(g)
    usable = g > 0
    if not usable.any():
        return p
    a = noise / g[usable]
    lo, hi = 0.0, float(a.min()) + total_power
    for _ in range(200):
        mu = 0.5 * (lo + hi)
        if np.maximum(mu - a, 0).sum() > total_power:
            hi = mu
        else:
            lo = mu
    p[usable] = np.maximum(0.5 * (lo + hi) - a, 0)
    return p
