"""aigxctl.waterfill and aigxctl.sum_rate: optimality (KKT conditions) as properties, agreement
with plain NumPy solvers, edge cases, types and devices, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference import waterfill_bisection, waterfill_sorted

import aigxctl
from aigxctl import core
from aigxctl.errors import InvalidGains, UserError

CUDA = torch.cuda.is_available() and core.build_info()["cuda_built"]
cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and a core built with CUDA")

gain_rows = st.integers(1, 40).flatmap(
    lambda m: arrays(
        np.float64,
        st.tuples(st.integers(1, 8), st.just(m)),
        elements=st.one_of(
            st.just(0.0), st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False)
        ),
    )
)
powers = st.floats(1e-4, 1e3)
noises = st.floats(1e-3, 1e2)


def check_kkt(
    g: np.ndarray, p: np.ndarray, mu: np.ndarray, total: float, noise: float, rtol: float
):
    """Feasible, one shared level on active channels, inactive channels above the level."""
    for row, prow, level in zip(g, p, mu, strict=True):
        assert np.all(prow >= 0)
        if not (row > 0).any():
            assert np.all(prow == 0) and level == 0
            continue
        assert prow.sum() == pytest.approx(total, rel=rtol)
        a = noise / row[row > 0]
        pa = prow[row > 0]
        active = pa > 0
        assert active.any()
        np.testing.assert_allclose(pa[active] + a[active], level, rtol=rtol * 10, atol=total * rtol)
        assert np.all(a[~active] >= level * (1 - rtol * 10))
        assert np.all(prow[row == 0] == 0)


@settings(max_examples=150, deadline=None)
@given(gain_rows, powers, noises)
def test_kkt_float64(g, total, noise):
    p, mu = aigxctl.waterfill(g, total, noise, return_level=True)
    assert p.dtype == np.float64 and p.shape == g.shape
    check_kkt(g, p, mu, total, noise, 1e-9)


@settings(max_examples=100, deadline=None)
@given(gain_rows, powers)
def test_kkt_float32(g, total):
    g32 = g.astype(np.float32)
    p, mu = aigxctl.waterfill(g32, total, return_level=True)
    assert p.dtype == np.float32
    check_kkt(g32.astype(np.float64), p.astype(np.float64), mu, total, 1.0, 1e-5)


@settings(max_examples=100, deadline=None)
@given(gain_rows, powers, noises)
def test_agrees_with_sorted_and_bisection_references(g, total, noise):
    p = aigxctl.waterfill(g, total, noise)
    for row, prow in zip(g, p, strict=True):
        np.testing.assert_allclose(prow, waterfill_sorted(row, total, noise), rtol=1e-9,
                                   atol=total * 1e-12)  # fmt: skip
        # Bisection works on the absolute level, so it resolves p only to the level's ulps.
        level = total + (noise / row[row > 0]).max() if (row > 0).any() else total
        np.testing.assert_allclose(prow, waterfill_bisection(row, total, noise), rtol=1e-6,
                                   atol=level * 1e-12)  # fmt: skip


def test_batch_and_single_rows_give_identical_bits():
    # The CPU runs four rows per vector, leftovers one by one: both routes must agree exactly.
    rng = np.random.default_rng(0)
    g = rng.uniform(0, 7, (1003, 20))
    g[5] = 0
    g[7, 3] = 0
    total = rng.uniform(0.01, 5, 1003)
    batch = aigxctl.waterfill(g, total)
    one_by_one = np.stack([aigxctl.waterfill(g[i], total[i]) for i in range(len(g))])
    np.testing.assert_array_equal(batch, one_by_one)


@pytest.mark.parametrize(
    ("gains", "total", "expected"),
    [
        ([3.0], 0.7, [0.7]),  # M = 1
        ([0.0, 2.0, 0.0], 1.0, [0.0, 1.0, 0.0]),  # one usable channel
        ([0.0, 0.0], 1.0, [0.0, 0.0]),  # nothing usable
        ([1.0, 2.0], 1.0, [0.25, 0.75]),  # hand solution: mu = 1.25
        ([1.0, 1.0, 1.0, 1.0], 2.0, [0.5, 0.5, 0.5, 0.5]),  # ties share equally
    ],
)
def test_small_cases(gains, total, expected):
    np.testing.assert_allclose(aigxctl.waterfill(np.array(gains), total), expected, rtol=1e-12)


def test_extreme_gains_in_one_row():
    g = np.array([1e-8, 1e8, 1.0, 0.0])
    p = aigxctl.waterfill(g, 0.2)
    assert p.sum() == pytest.approx(0.2, rel=1e-12)
    assert p[1] == pytest.approx(0.2, rel=1e-12)  # all power on the 1e8 channel
    np.testing.assert_allclose(p, waterfill_sorted(g, 0.2), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("total", [1e-9, 1e-3, 1e3, 1e9])
def test_tiny_and_huge_power(total):
    g = np.random.default_rng(1).uniform(1e-3, 10, (50, 24))
    p = aigxctl.waterfill(g, total)
    np.testing.assert_allclose(p.sum(axis=1), total, rtol=1e-9)
    for row, prow in zip(g, p, strict=True):
        np.testing.assert_allclose(
            prow, waterfill_sorted(row, total), rtol=1e-7, atol=total * 1e-12
        )
    if total >= 1e9:  # with huge P every channel is active and the levels nearly equal
        assert np.all(p > 0)


def test_tiny_nearly_equal_gains_keep_relative_accuracy():
    g = np.full((3, 8), 1e-8) * (1 + 1e-9 * np.arange(8))
    p = aigxctl.waterfill(g, 1e-3)
    np.testing.assert_allclose(p.sum(axis=1), 1e-3, rtol=1e-9)


def test_wide_rows():
    g = np.random.default_rng(2).uniform(0.1, 10, (7, 1024))
    p = aigxctl.waterfill(g, 5.0)
    for row, prow in zip(g, p, strict=True):
        np.testing.assert_allclose(prow, waterfill_sorted(row, 5.0), rtol=1e-9, atol=1e-12)


def test_per_row_power_and_nd_input():
    rng = np.random.default_rng(3)
    g = rng.uniform(0, 5, (2, 3, 6))
    total = rng.uniform(0.1, 2, (2, 3))
    p, mu = aigxctl.waterfill(g, total, return_level=True)
    assert p.shape == g.shape and mu.shape == (2, 3)
    np.testing.assert_allclose(p.sum(axis=-1), total, rtol=1e-12)
    np.testing.assert_allclose(p[1, 2], waterfill_sorted(g[1, 2], total[1, 2]), rtol=1e-12)


def test_integer_gains_give_float64():
    p = aigxctl.waterfill(np.array([[1, 2, 3]]), 1.0)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p.sum(), 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_cpu_tensors(dtype):
    g = torch.rand(10, 7, dtype=dtype) * 5
    p = aigxctl.waterfill(g, 0.5)
    assert isinstance(p, torch.Tensor) and p.dtype == dtype and p.device == g.device
    np.testing.assert_allclose(p.numpy(), aigxctl.waterfill(g.numpy(), 0.5), rtol=1e-6)
    r = aigxctl.sum_rate(g, p)
    assert isinstance(r, torch.Tensor) and r.shape == (10,)


def test_sum_rate_matches_formula():
    rng = np.random.default_rng(4)
    g = rng.uniform(0, 9, (30, 11))
    p = rng.uniform(0, 1, (30, 11))
    expected = np.log2(1 + g * p / 0.5).sum(axis=1)
    np.testing.assert_allclose(aigxctl.sum_rate(g, p, 0.5), expected, rtol=1e-12)


@pytest.mark.parametrize(("value", "reason"), [(np.nan, "finite"), (np.inf, "finite"),
                                               (-1.0, ">= 0")])  # fmt: skip
def test_invalid_gains_name_row_and_column(value, reason):
    g = np.ones((4, 5))
    g[2, 3] = value
    with pytest.raises(InvalidGains, match=reason) as info:
        aigxctl.waterfill(g, 1.0)
    assert (info.value.row, info.value.column) == (2, 3)
    assert "gains[2, 3]" in str(info.value)


@pytest.mark.parametrize("total", [0.0, -1.0, np.nan, np.inf])
def test_bad_power(total):
    with pytest.raises(UserError, match="total_power"):
        aigxctl.waterfill(np.ones((2, 3)), total)


@pytest.mark.parametrize("noise", [0.0, -2.0, np.nan])
def test_bad_noise(noise):
    with pytest.raises(UserError, match="noise"):
        aigxctl.waterfill(np.ones((2, 3)), 1.0, noise)


def test_thread_count_does_not_change_results():
    g = np.random.default_rng(5).uniform(0, 7, (20011, 20))
    before = core.num_threads()
    try:
        core.set_num_threads(1)
        one = aigxctl.waterfill(g, 0.2)
        core.set_num_threads(3)
        three = aigxctl.waterfill(g, 0.2)
    finally:
        core.set_num_threads(before)
    np.testing.assert_array_equal(one, three)


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    g = torch.rand(4099, 20, dtype=dtype) * 7
    p_gpu, mu_gpu = aigxctl.waterfill(g.cuda(), 0.2, return_level=True)
    assert p_gpu.is_cuda and p_gpu.dtype == dtype
    p_cpu, mu_cpu = aigxctl.waterfill(g, 0.2, return_level=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=tol, atol=tol * 0.2)
    torch.testing.assert_close(mu_gpu.cpu(), mu_cpu, rtol=tol, atol=tol)
    r = aigxctl.sum_rate(g.cuda(), p_gpu)
    assert r.is_cuda
    torch.testing.assert_close(r.cpu(), aigxctl.sum_rate(g, p_cpu), rtol=1e-5, atol=1e-6)


@cuda
@needs_cuda
def test_cuda_invalid_gains_are_reported():
    g = torch.ones(3, 4, device="cuda")
    g[1, 2] = float("nan")
    with pytest.raises(InvalidGains):
        aigxctl.waterfill(g, 1.0)
