"""Plain NumPy solvers that the tests hold aigxctl's compiled core to, written independently of
aigxctl (no import from it): the textbook sort + prefix-sum water-filling rule, a slow bisection
on the water level as the paper's reference code does it, and the sum-rate formula.

All work in float64, one row at a time, and favour clarity over speed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bisection", "sum_rate", "waterfill", "waterfill_bisection", "waterfill_sorted"]


def waterfill(
    gains: np.ndarray, total_power: float, noise: float = 1.0
) -> tuple[np.ndarray, float]:
    """Exact water-filling of one row: ``(powers [M], level mu)``.

    Sort a_n = noise / g_n ascending, take the largest k with (P + a_(1) + ... + a_(k)) / k >
    a_(k), then mu = (P + a_(1) + ... + a_(k)) / k and p_n = max(0, mu - a_n). A zero gain never
    gets power; a row without a positive gain gets zeros and level 0.

    The powers are formed as p_n = (P + sum_{j active} (a_j - a_n)) / k rather than mu - a_n: the
    two are equal, but the first does not lose P's digits when mu is far larger than P (tiny
    gains, tiny P), which keeps the reference at least as accurate as the code under test.
    """
    g = np.asarray(gains, dtype=np.float64)
    p = np.zeros_like(g)
    usable = np.flatnonzero(g > 0)
    if usable.size == 0:
        return p, 0.0
    a = noise / g[usable]
    order = np.argsort(a, kind="stable")
    s = a[order]
    k = 1
    for j in range(1, len(s) + 1):
        if (total_power + s[:j].sum()) / j > s[j - 1]:
            k = j
    active = order[:k]
    mu = (total_power + s[:k].sum()) / k
    a_act = a[active]
    p_act = (total_power + (a_act[None, :] - a_act[:, None]).sum(axis=1)) / k
    p[usable[active]] = np.maximum(p_act, 0.0)
    return p, float(mu)


def bisection(
    gains: np.ndarray, total_power: float, noise: float = 1.0, iterations: int = 200
) -> tuple[np.ndarray, float]:
    """Water-filling by bisection on the level mu, one row: ``(powers [M], mu)``.

    The paper's reference code does this to a 1e-6 tolerance; here it runs until the bracket
    stops shrinking, so mu is resolved to its last bits and p_n = max(0, mu - a_n) to ulp(mu).
    """
    g = np.asarray(gains, dtype=np.float64)
    p = np.zeros_like(g)
    usable = g > 0
    if not usable.any():
        return p, 0.0
    a = noise / g[usable]
    lo, hi = float(a.min()), float(a.min()) + total_power  # the level lies in [a_min, a_min + P]
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if np.maximum(mid - a, 0.0).sum() > total_power:
            hi = mid
        else:
            lo = mid
    mu = 0.5 * (lo + hi)
    p[usable] = np.maximum(mu - a, 0.0)
    return p, mu


def sum_rate(gains: np.ndarray, power: np.ndarray, noise: float = 1.0) -> np.ndarray:
    """sum_n log2(1 + g_n p_n / noise) over the last axis, in float64."""
    g = np.asarray(gains, dtype=np.float64)
    p = np.asarray(power, dtype=np.float64)
    return np.log2(1.0 + g * p / noise).sum(axis=-1)


def waterfill_sorted(gains: np.ndarray, total_power: float, noise: float = 1.0) -> np.ndarray:
    """The powers of :func:`waterfill` alone (kept for tests that only need those)."""
    return waterfill(gains, total_power, noise)[0]


def waterfill_bisection(gains: np.ndarray, total_power: float, noise: float = 1.0) -> np.ndarray:
    """The powers of :func:`bisection` alone."""
    return bisection(gains, total_power, noise)[0]
