"""aigxctl.waterfill and aigxctl.sum_rate: optimality (the KKT conditions) as hypothesis
properties, agreement with a plain NumPy solver and a slow bisection (tests/reference.py), edge
cases, types and devices, errors, threading, and CUDA (skipped without a GPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import reference
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import aigxctl
from aigxctl import core
from aigxctl.errors import InvalidGains, UserError

EPS64 = np.finfo(np.float64).eps

# --- strategies: gains over 16 decades with exact zeros and ties, P and noise over decades ----


def gains_from_exponents(e: np.ndarray) -> np.ndarray:
    """Map draws in [-9, 9] to gains: [-9, -8) -> 0 (unusable channel), [8, 9] -> 1, 2 or 3
    (exact ties between channels), otherwise 10**e (16 decades). Drawing plain floats and mapping
    the whole array is several times faster, per example, than an element-wise one_of/map."""
    ties = np.floor((e - 8.0) * 3.0).clip(0, 2) + 1.0
    return np.where(e < -8, 0.0, np.where(e >= 8, ties, 10.0**e))


decades = st.floats(-6, 6).map(lambda e: 10.0**e)


@st.composite
def problems(draw, max_m: int = 48):
    """(gains [B, M] float64, total power (scalar or [B]), noise)."""
    m = draw(st.integers(1, max_m))
    b = draw(st.integers(1, 9))  # > 4 rows so that both CPU routes (4-row lanes, single rows) run
    g = gains_from_exponents(draw(arrays(np.float64, (b, m), elements=st.floats(-9, 9))))
    if draw(st.booleans()):
        total = draw(decades)
    else:
        total = 10.0 ** draw(arrays(np.float64, (b,), elements=st.floats(-6, 6)))
    noise = draw(st.floats(-3, 3).map(lambda e: 10.0**e))
    return g, total, noise


def check_optimal(g, p, mu, total, noise, *, sum_rtol: float, level_rtol: float) -> None:
    """The KKT conditions, checked in float64 on the gains as given: p >= 0, sum p = P, every
    active channel at one level mu (p_n + noise/g_n = mu), every idle usable channel at or above
    it (noise/g_n >= mu), zero gains idle; a row with no usable channel gets zeros and mu = 0.
    Arrays are [B, M] (p, g) and [B] (mu, total or a scalar total)."""
    g = np.asarray(g, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)[:, None]
    totals = np.broadcast_to(np.asarray(total, dtype=np.float64), g.shape[:-1])
    usable = g > 0
    rows = usable.any(axis=1)
    active = p > 0
    a = np.where(usable, noise / np.where(usable, g, 1.0), np.inf)
    tol = level_rtol * mu

    def first(bad: np.ndarray) -> str:
        r = int(np.argwhere(bad)[0][0])
        return f"row {r}: g={g[r].tolist()} p={p[r].tolist()} mu={mu[r, 0]!r} P={totals[r]!r}"

    assert np.all(p >= 0), first(p < 0)
    assert np.all(p[~usable] == 0), first(~usable & (p != 0))
    assert np.all(mu[~rows] == 0), first(~rows & (mu[:, 0] != 0))
    bad_sum = rows & (np.abs(p.sum(axis=1) - totals) > sum_rtol * totals)
    assert not bad_sum.any(), first(bad_sum)
    assert np.all(active.any(axis=1)[rows]), first(rows & ~active.any(axis=1))
    off_level = active & (np.abs(p + a - mu) > tol)
    assert not off_level.any(), first(off_level)
    below_level = usable & ~active & (a < mu - tol)
    assert not below_level.any(), first(below_level)


# --- optimality and agreement (hypothesis) -----------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(problems())
def test_optimal_float64(problem):
    g, total, noise = problem
    p, mu = aigxctl.waterfill(g, total, noise, return_level=True)
    assert p.dtype == np.float64 and p.shape == g.shape
    assert mu.dtype == np.float64 and mu.shape == g.shape[:-1]
    check_optimal(g, p, mu, total, noise, sum_rtol=1e-6, level_rtol=1e-12)


@settings(max_examples=150, deadline=None)
@given(problems())
def test_optimal_float32(problem):
    g, total, noise = problem
    g32 = g.astype(np.float32)
    p, mu = aigxctl.waterfill(g32, total, noise, return_level=True)
    assert p.dtype == np.float32 and p.shape == g.shape and mu.dtype == np.float64
    check_optimal(g32, p, mu, total, noise, sum_rtol=1e-5, level_rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_agrees_with_reference_and_bisection(problem):
    g, total, noise = problem
    p, mu = aigxctl.waterfill(g, total, noise, return_level=True)
    totals = np.broadcast_to(total, g.shape[:-1])
    for row, prow, level, t in zip(g, p, mu, totals, strict=True):
        for solve in (reference.waterfill, reference.bisection):
            p_ref, mu_ref = solve(row, t, noise)
            # p_n = mu - noise/g_n is resolved to a few ulps of mu, not of P: when mu >> P (tiny
            # gains, tiny P) the absolute error bound is set by mu.
            atol = 1e-12 * t + 1e-13 * mu_ref
            np.testing.assert_allclose(prow, p_ref, rtol=1e-9, atol=atol)
            assert level == pytest.approx(mu_ref, rel=1e-12, abs=1e-300)


def test_moderate_rows_agree_to_the_last_digits():
    # The paper's range (gains of a few units, P ~ 0.1-5): here mu ~ P, so every power must match
    # the reference to ~1e-12 relative to P.
    rng = np.random.default_rng(0)
    g = rng.uniform(0.1, 9, (203, 20))
    g[rng.random(g.shape) < 0.1] = 0.0
    total = rng.uniform(0.05, 5, 203)
    p, mu = aigxctl.waterfill(g, total, 0.7, return_level=True)
    for row, prow, level, t in zip(g, p, mu, total, strict=True):
        p_ref, mu_ref = reference.waterfill(row, t, 0.7)
        np.testing.assert_allclose(prow, p_ref, rtol=1e-11, atol=1e-13 * t)
        assert level == pytest.approx(mu_ref, rel=1e-13)


def test_float32_powers_are_accurate_relative_to_p():
    g = np.float32(1e-4) * (1 + np.arange(4, dtype=np.float32) * np.float32(1.2e-7))
    p32 = aigxctl.waterfill(g, 1e-3)
    expected, _ = reference.waterfill(g.astype(np.float64), 1e-3)
    np.testing.assert_allclose(p32, expected, rtol=0, atol=1e-5 * 1e-3)


# --- edge cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gains", "total", "expected"),
    [
        ([3.0], 0.7, [0.7]),  # M = 1
        ([1e-8], 1e-9, [1e-9]),  # M = 1, tiny gain, tiny P
        ([0.0, 2.0, 0.0], 1.0, [0.0, 1.0, 0.0]),  # one nonzero gain takes everything
        ([0.0, 0.0, 0.0, 5.0], 1e9, [0.0, 0.0, 0.0, 1e9]),
        ([0.0, 0.0], 1.0, [0.0, 0.0]),  # all-zero row
        ([1.0, -0.0], 1.0, [1.0, 0.0]),  # -0.0 is a zero gain, not a negative one
        ([1.0, 2.0], 1.0, [0.25, 0.75]),  # a = (1, 0.5): mu = (1 + 1 + 0.5) / 2 = 1.25
        ([1.0, 1.0, 1.0, 1.0], 2.0, [0.5, 0.5, 0.5, 0.5]),  # ties share equally
        ([4.0, 1.0], 0.5, [0.5, 0.0]),  # a = (0.25, 1): P too small to reach the second
        ([4.0, 1.0], 0.75, [0.75, 0.0]),  # exactly at the threshold: still one channel
    ],
)
def test_small_cases(gains, total, expected):
    p, mu = aigxctl.waterfill(np.array(gains), total, return_level=True)
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=0)
    _, mu_ref = reference.waterfill(np.array(gains), total)
    assert mu == pytest.approx(mu_ref, rel=1e-12)


def test_all_zero_rows_inside_a_batch():
    # Zero rows among ordinary ones, in a block of four (vector lanes) and in the leftovers.
    g = np.random.default_rng(1).uniform(0.5, 5, (11, 6))
    g[[1, 6, 10]] = 0.0
    p, mu = aigxctl.waterfill(g, 0.3, return_level=True)
    assert np.all(p[[1, 6, 10]] == 0) and np.all(mu[[1, 6, 10]] == 0)
    np.testing.assert_allclose(np.delete(p, [1, 6, 10], axis=0).sum(axis=1), 0.3, rtol=1e-12)


def test_m_1024():
    rng = np.random.default_rng(2)
    g = rng.uniform(0.01, 10, (6, 1024))
    g[1, ::2] = 0.0
    g[2, :1023] = 0.0  # one usable channel at the very end
    total = np.array([5.0, 5.0, 5.0, 1e-3, 1e3, 50.0])
    p, mu = aigxctl.waterfill(g, total, return_level=True)
    check_optimal(g, p, mu, total, 1.0, sum_rtol=1e-12, level_rtol=1e-12)
    for row, prow, t in zip(g, p, total, strict=True):
        np.testing.assert_allclose(prow, reference.waterfill(row, t)[0], rtol=1e-10, atol=1e-13)
    assert p[2, 1023] == 5.0


@pytest.mark.parametrize("total", [1e-6, 0.2, 1e8, 1e12])
def test_gains_1e_minus_8_and_1e8_in_one_row(total):
    g = np.array([1e-8, 1e8, 1.0, 0.0, 3e-8, 7e7])
    p, mu = aigxctl.waterfill(g, total, return_level=True)
    p_ref, mu_ref = reference.waterfill(g, total)
    np.testing.assert_allclose(p, p_ref, rtol=1e-9, atol=1e-13 * mu_ref)
    assert mu == pytest.approx(mu_ref, rel=1e-12)
    assert p.sum() == pytest.approx(total, rel=1e-12)
    if total < 1:  # only the two strong channels are worth anything
        assert np.all(p[[0, 2, 3, 4]] == 0)


@pytest.mark.parametrize("total", [1e-12, 1e-6, 1e6, 1e12])
def test_tiny_and_huge_power(total):
    g = np.random.default_rng(3).uniform(1e-3, 10, (13, 24))
    p, mu = aigxctl.waterfill(g, total, return_level=True)
    np.testing.assert_allclose(p.sum(axis=1), total, rtol=1e-12)
    check_optimal(g, p, mu, total, 1.0, sum_rtol=1e-12, level_rtol=1e-12)
    for row, prow, level in zip(g, p, mu, strict=True):
        np.testing.assert_allclose(
            prow, reference.waterfill(row, total)[0], rtol=1e-9, atol=1e-13 * level
        )
    if total >= 1e6:  # with a huge budget every channel is on, at nearly equal powers
        assert np.all(p > 0)
        assert p.max() / p.min() < 1.01
    if total <= 1e-12:  # with a tiny one only the best channel is
        assert np.all((p > 0).sum(axis=1) == 1)
        assert np.all(p.argmax(axis=1) == g.argmax(axis=1))


def test_tiny_nearly_equal_gains_keep_relative_accuracy():
    # a_n ~ 1e8 apart by ~0.1: the split of P = 1e-3 must still be right relative to P.
    g = 1e-8 * (1 + 1e-9 * np.arange(8))[None, :].repeat(3, axis=0)
    p = aigxctl.waterfill(g, 1e-3)
    np.testing.assert_allclose(p.sum(axis=1), 1e-3, rtol=1e-9)
    np.testing.assert_allclose(p[0], reference.waterfill(g[0], 1e-3)[0], rtol=1e-6, atol=1e-12)


def test_per_row_power():
    g = np.random.default_rng(4).uniform(0, 5, (9, 7))
    total = np.linspace(0.01, 100, 9)
    p = aigxctl.waterfill(g, total)
    np.testing.assert_allclose(p.sum(axis=1), total, rtol=1e-12)
    for i in range(9):
        np.testing.assert_array_equal(p[i], aigxctl.waterfill(g[i], total[i]))
    # a one-element P is a scalar for every row; a list works like an array
    np.testing.assert_array_equal(aigxctl.waterfill(g, [2.0]), aigxctl.waterfill(g, 2.0))
    np.testing.assert_array_equal(aigxctl.waterfill(g, list(total)), p)


def test_nd_input():
    rng = np.random.default_rng(5)
    g = rng.uniform(0, 5, (2, 3, 4, 6))
    total = rng.uniform(0.1, 2, (2, 3, 4))
    p, mu = aigxctl.waterfill(g, total, 0.5, return_level=True)
    assert p.shape == g.shape and mu.shape == (2, 3, 4)
    flat, flat_mu = aigxctl.waterfill(g.reshape(-1, 6), total.reshape(-1), 0.5, return_level=True)
    np.testing.assert_array_equal(p.reshape(-1, 6), flat)
    np.testing.assert_array_equal(mu.reshape(-1), flat_mu)
    # one vector [M] -> one vector and a 0-d level
    p1, mu1 = aigxctl.waterfill(g[1, 2, 3], 1.5, return_level=True)
    assert p1.shape == (6,) and np.shape(mu1) == ()


def test_empty_batch():
    p, mu = aigxctl.waterfill(np.zeros((0, 5)), 1.0, return_level=True)
    assert p.shape == (0, 5) and mu.shape == (0,)


def test_layout_does_not_matter():
    g = np.random.default_rng(6).uniform(0, 5, (40, 12))
    expected = aigxctl.waterfill(g, 0.4)
    np.testing.assert_array_equal(aigxctl.waterfill(np.asfortranarray(g), 0.4), expected)
    np.testing.assert_array_equal(aigxctl.waterfill(g.T.copy().T, 0.4), expected)
    wide = np.zeros((40, 24))
    wide[:, ::2] = g
    np.testing.assert_array_equal(aigxctl.waterfill(wide[:, ::2], 0.4), expected)
    np.testing.assert_array_equal(aigxctl.waterfill(g.tolist(), 0.4), expected)


def test_batch_and_single_rows_give_identical_bits():
    # The CPU runs four rows per vector and the leftovers one by one: both must agree exactly.
    rng = np.random.default_rng(7)
    g = rng.uniform(0, 7, (1003, 20))
    g[5] = 0
    g[7, 3] = 0
    total = rng.uniform(0.01, 5, 1003)
    for dtype in (np.float64, np.float32):
        batch = aigxctl.waterfill(g.astype(dtype), total)
        rows = np.stack([aigxctl.waterfill(g[i].astype(dtype), total[i]) for i in range(len(g))])
        np.testing.assert_array_equal(batch, rows)


# --- types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_dtype_is_kept(dtype):
    g = np.array([[1.0, 2.0, 0.5]], dtype=dtype)
    p, mu = aigxctl.waterfill(g, 1.0, return_level=True)
    assert p.dtype == dtype and mu.dtype == np.float64
    np.testing.assert_allclose(p.astype(np.float64).sum(), 1.0, rtol=1e-3)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, bool])
def test_integer_gains_give_float64(dtype):
    p = aigxctl.waterfill(np.array([[1, 2, 3]], dtype=dtype), 1.0)
    assert p.dtype == np.float64
    assert p.sum() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_cpu_tensors(dtype):
    g = torch.rand(10, 7, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 5
    p, mu = aigxctl.waterfill(g, 0.5, return_level=True)
    assert isinstance(p, torch.Tensor) and p.dtype == dtype and p.device == g.device
    assert isinstance(mu, torch.Tensor) and mu.dtype == torch.float64 and mu.shape == (10,)
    np.testing.assert_array_equal(p.numpy(), aigxctl.waterfill(g.numpy(), 0.5))
    r = aigxctl.sum_rate(g, p)
    assert isinstance(r, torch.Tensor) and r.shape == (10,) and r.device == g.device
    np.testing.assert_allclose(r.numpy(), reference.sum_rate(g.numpy(), p.numpy()), rtol=1e-12)


def test_torch_other_inputs():
    g = torch.tensor([[1, 2, 3], [0, 0, 4]])
    p = aigxctl.waterfill(g, torch.tensor([1.0, 2.0]))  # int tensor, per-row P as a tensor
    assert p.dtype == torch.float64
    np.testing.assert_allclose(p.numpy(), aigxctl.waterfill(g.numpy(), [1.0, 2.0]))
    leaf = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    assert not aigxctl.waterfill(leaf, 1.0).requires_grad
    half = aigxctl.waterfill(torch.tensor([1.0, 2.0], dtype=torch.float16), 1.0)
    assert half.dtype == torch.float16
    nd = torch.rand(2, 3, 5, dtype=torch.float64)
    np.testing.assert_array_equal(aigxctl.waterfill(nd, 1.0).numpy(),
                                  aigxctl.waterfill(nd.numpy(), 1.0))  # fmt: skip
    t = torch.rand(6, 4, dtype=torch.float64).T  # not contiguous
    np.testing.assert_array_equal(aigxctl.waterfill(t, 1.0).numpy(),
                                  aigxctl.waterfill(t.contiguous().numpy(), 1.0))  # fmt: skip


# --- sum rate --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_rate_matches_formula(dtype):
    rng = np.random.default_rng(8)
    g = rng.uniform(0, 9, (31, 11)).astype(dtype)
    p = rng.uniform(0, 1, (31, 11)).astype(dtype)
    rate = aigxctl.sum_rate(g, p, 0.5)
    assert rate.shape == (31,) and rate.dtype == np.float64
    np.testing.assert_allclose(rate, reference.sum_rate(g, p, 0.5), rtol=1e-12)
    nd = aigxctl.sum_rate(g.reshape(31, 1, 11), p.reshape(31, 1, 11), 0.5)
    assert nd.shape == (31, 1)
    assert aigxctl.sum_rate(g[0], p[0], 0.5) == pytest.approx(rate[0], rel=1e-15)


def test_sum_rate_of_the_optimum_beats_other_allocations():
    rng = np.random.default_rng(9)
    g = rng.uniform(1, 7, (50, 20))
    best = aigxctl.sum_rate(g, aigxctl.waterfill(g, 0.2))
    equal = aigxctl.sum_rate(g, np.full_like(g, 0.2 / 20))
    assert np.all(best >= equal)
    for _ in range(5):  # random feasible allocations never do better
        x = rng.dirichlet(np.ones(20), 50) * 0.2
        assert np.all(best >= aigxctl.sum_rate(g, x) - 1e-12)


def test_sum_rate_errors():
    with pytest.raises(UserError, match="shape"):
        aigxctl.sum_rate(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(UserError, match="noise"):
        aigxctl.sum_rate(np.ones((2, 3)), np.ones((2, 3)), 0.0)


@pytest.mark.parametrize("which", ["gains", "power"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -0.5])
@pytest.mark.parametrize("kind", ["float64", "float32", "torch"])
def test_sum_rate_names_an_invalid_gain_or_power(which, value, kind):
    g, p = np.ones((6, 4)), np.full((6, 4), 0.25)
    (g if which == "gains" else p)[4, 2] = value
    if kind == "float32":
        g, p = g.astype(np.float32), p.astype(np.float32)
    elif kind == "torch":
        g, p = torch.from_numpy(g), torch.from_numpy(p)
    with pytest.raises(UserError, match=rf"sum_rate: {which}\[4, 2\] = .*>= 0"):
        aigxctl.sum_rate(g, p)
    # Zero is valid for both, and a zero-power channel adds exactly nothing.
    assert aigxctl.sum_rate(np.array([0.0, 2.0]), np.array([1.0, 0.0])) == 0.0


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [(np.nan, "finite"), (np.inf, "finite"), (-np.inf, "finite"), (-1.0, ">= 0"),
     (-1e-300, ">= 0")],
)  # fmt: skip
@pytest.mark.parametrize("kind", ["float64", "float32", "torch"])
def test_invalid_gains_name_row_and_column(value, reason, kind):
    g = np.ones((9, 5))
    g[6, 3] = value
    g[8, 0] = value  # a later bad entry: the first one is reported
    if kind == "float32":
        g = g.astype(np.float32)
        if value == -1e-300:
            g[6, 3] = -1e-30
    elif kind == "torch":
        g = torch.from_numpy(g)
    with pytest.raises(InvalidGains, match=reason) as info:
        aigxctl.waterfill(g, 1.0)
    assert (info.value.row, info.value.column) == (6, 3)
    assert "gains[6, 3]" in str(info.value)
    assert isinstance(info.value, UserError)


@pytest.mark.parametrize("total", [0.0, -1.0, -0.0, np.nan, np.inf, -np.inf])
def test_bad_power(total):
    with pytest.raises(UserError, match="total_power"):
        aigxctl.waterfill(np.ones((2, 3)), total)
    with pytest.raises(UserError, match="total_power"):
        aigxctl.waterfill(np.ones((2, 3)), [1.0, total])  # one bad row of a per-row P


def test_bad_power_shape():
    with pytest.raises(UserError, match="total_power"):
        aigxctl.waterfill(np.ones((2, 3)), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("noise", [0.0, -2.0, np.nan, np.inf])
def test_bad_noise(noise):
    with pytest.raises(UserError, match="noise"):
        aigxctl.waterfill(np.ones((2, 3)), 1.0, noise)


@pytest.mark.parametrize("gains", [np.float64(3.0), np.ones((2, 0)), torch.tensor(3.0)])
def test_bad_shapes(gains):
    with pytest.raises(UserError, match="gains"):
        aigxctl.waterfill(gains, 1.0)


# --- failure modes of the compiled core that only Python can see -----------------------------


@pytest.mark.parametrize(
    ("gains", "dtype", "noise", "expected"),
    [([1e-320], np.float64, 1.0, [1.0]),
     ([5e-321, 0.0, 1e-320], np.float64, 1.0, [0.0, 0.0, 1.0]),
     ([1e-30, 0.0], np.float32, 1e10, [1.0, 0.0])],
)  # fmt: skip
def test_gains_whose_noise_ratio_overflows_still_get_the_budget(gains, dtype, noise, expected):
    p = aigxctl.waterfill(np.array(gains, dtype=dtype), 1.0, noise)
    np.testing.assert_allclose(p, expected, rtol=1e-6)


# --- threading ------------------------------------------------------------------------------


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(10)
    g = rng.uniform(0, 7, (20011, 20))
    g[rng.random(g.shape) < 0.05] = 0.0
    total = rng.uniform(0.05, 3, 20011)
    before = core.num_threads()
    try:
        out = {}
        for n in (1, 2):
            core.set_num_threads(n)
            assert core.num_threads() == n
            p, mu = aigxctl.waterfill(g, total, return_level=True)
            out[n] = [p, mu, aigxctl.waterfill(g.astype(np.float32), 0.2), aigxctl.sum_rate(g, p)]
    finally:
        core.set_num_threads(before)
    for one, two in zip(out[1], out[2], strict=True):
        np.testing.assert_array_equal(one, two)
    p, mu = out[2][0][:300], out[2][1][:300]
    check_optimal(g[:300], p, mu, total[:300], 1.0, sum_rtol=1e-12, level_rtol=1e-12)


def test_bad_thread_count():
    with pytest.raises(UserError, match="threads"):
        core.set_num_threads(0)


def test_first_parallel_call_in_a_fresh_process_returns():
    # Regression: the pool is built inside the first parallel call (and rebuilt by
    # set_num_threads); a worker that read the job counter only once it ran missed the job
    # posted right after its start, and the caller waited forever. Run in a fresh process, with
    # a timeout, so that a hang fails this test instead of blocking the suite.
    code = textwrap.dedent(
        """
        import numpy as np, aigxctl
        from aigxctl import core
        g = np.random.default_rng(0).uniform(0, 7, (5000, 20))
        first = aigxctl.waterfill(g, 0.2)
        assert abs(first.sum() - 1000.0) < 1e-6
        for _ in range(20):
            core.set_num_threads(1)
            core.set_num_threads(2)
            assert (aigxctl.waterfill(g, 0.2) == first).all()
        print("done")
        """
    )
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("water-filling in a fresh process hung (thread pool start-up)")
    assert res.returncode == 0 and "done" in res.stdout, res.stderr


# --- CUDA (skipped unless torch sees a GPU and the core was built with CUDA) ------------------


def cuda_problem(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    g = torch.rand(4099, 20, generator=gen, dtype=torch.float64) * 7
    g[torch.rand(g.shape, generator=gen) < 0.05] = 0.0
    g[17] = 0.0
    g[18, 1:] = 0.0
    total = torch.rand(4099, generator=gen, dtype=torch.float64) * 3 + 0.01
    return g.to(dtype), total


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    # Same per-row code on both sides, but nvcc may contract a*b + c into an FMA: not bit-equal.
    return (
        {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    )


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    g, total = cuda_problem(dtype)
    dev = torch.device("cuda")
    p_gpu, mu_gpu = aigxctl.waterfill(g.to(dev), total.to(dev), return_level=True)
    assert p_gpu.device.type == "cuda" and p_gpu.dtype == dtype and p_gpu.shape == g.shape
    assert mu_gpu.device.type == "cuda" and mu_gpu.dtype == torch.float64
    p_cpu, mu_cpu = aigxctl.waterfill(g, total, return_level=True)
    torch.testing.assert_close(p_gpu.cpu(), p_cpu, **tolerance(dtype))
    torch.testing.assert_close(mu_gpu.cpu(), mu_cpu, rtol=1e-12, atol=0.0)
    assert torch.all(p_gpu[17] == 0) and float(mu_gpu[17]) == 0.0
    check_optimal(g.double().numpy(), p_gpu.cpu().double().numpy(), mu_gpu.cpu().numpy(),
                  total.numpy(), 1.0, sum_rtol=1e-5, level_rtol=1e-6)  # fmt: skip
    r_gpu = aigxctl.sum_rate(g.to(dev), p_gpu)
    assert r_gpu.device.type == "cuda"
    torch.testing.assert_close(r_gpu.cpu(), aigxctl.sum_rate(g, p_cpu), rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_scalar_power_nd_noncontiguous_and_stream(dtype):
    g, _ = cuda_problem(dtype)
    dev = torch.device("cuda")
    nd = g[:4096].reshape(16, 256, 20)
    p = aigxctl.waterfill(nd.to(dev), 0.2, 0.5)
    assert p.shape == nd.shape and p.device.type == "cuda"
    torch.testing.assert_close(p.cpu(), aigxctl.waterfill(nd, 0.2, 0.5), **tolerance(dtype))
    strided = g.T.contiguous().to(dev).T  # [B, M], not contiguous
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        aigxctl.waterfill(strided, 0.2).cpu(), aigxctl.waterfill(g, 0.2), **tolerance(dtype)
    )
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        gs = g.to(dev, non_blocking=True)
        ps = aigxctl.waterfill(gs, 0.2)
    stream.synchronize()
    torch.testing.assert_close(ps.cpu(), aigxctl.waterfill(g, 0.2), **tolerance(dtype))


@pytest.mark.cuda
def test_cuda_other_inputs_stay_on_the_device():
    dev = torch.device("cuda")
    ints = aigxctl.waterfill(torch.tensor([[1, 2, 3]], device=dev), 1.0)
    assert ints.device.type == "cuda" and ints.dtype == torch.float64
    empty, mu = aigxctl.waterfill(torch.zeros(0, 5, device=dev), 1.0, return_level=True)
    assert empty.shape == (0, 5) and empty.device.type == "cuda" and mu.device.type == "cuda"


@pytest.mark.cuda
def test_cuda_invalid_gains_are_reported():
    g = torch.ones(300, 4, device="cuda")
    g[201, 2] = float("nan")
    with pytest.raises(InvalidGains) as info:
        aigxctl.waterfill(g, 1.0)
    assert (info.value.row, info.value.column) == (201, 2)
    with pytest.raises(UserError, match="channel"):
        aigxctl.waterfill(torch.ones(3, 0, device="cuda"), 1.0)
