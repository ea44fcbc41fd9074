"""Every instruction-set level the core compiled and this CPU runs (baseline, AVX2, AVX-512)
gives the same allocations: the fused sampler within the reference tests' 1e-5 of the plain
PyTorch sampler, water-filling to the last bits; and no core call leaves the caller's
floating-point mode (MXCSR / FPCR) changed, exceptions included."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from models import make_gdm

from aigxctl import _core, core
from aigxctl.diffusion import sample_reference, to_allocation
from aigxctl.errors import UserError
from aigxctl.fused import FusedSampler

LEVELS = core.isa_available()


pytestmark = pytest.mark.usefixtures("restore_isa")




def test_levels_and_build_info():
    assert LEVELS[0] == "baseline" and set(LEVELS) <= set(core.ISA_LEVELS)
    info = core.build_info()
    forced = os.environ.get("AIGX_ISA", "").strip().lower()  # a run of every level's tests
    expected = forced if forced in LEVELS else LEVELS[-1]  # the best level unless told otherwise
    assert info["isa"] == core.isa() == expected
    assert info["isa_available"] == LEVELS


def test_unknown_or_unavailable_level_is_refused():
    with pytest.raises(UserError, match="unknown ISA"):
        core.set_isa("sse9")
    with pytest.raises(ValueError, match="unknown ISA"):
        _core.set_isa("sse9")
    before = core.isa()
    for level in set(core.ISA_LEVELS) - set(LEVELS):
        with pytest.raises(UserError, match="not available"):
            core.set_isa(level)
        assert core.isa() == before


@pytest.mark.parametrize(("value", "expected"), [("baseline", "baseline"), ("nonsense", None)])
def test_environment_variable(value, expected):
    code = "from aigxctl import core; print(core.isa())"
    run = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                         text=True, env={**__import__("os").environ, "AIGX_ISA": value},
                         check=True)  # fmt: skip
    assert run.stdout.strip() == (expected or LEVELS[-1])
    if expected is None:  # falls back to the best level, with a note
        assert "AIGX_ISA ignored" in run.stderr


# B = 1, a partial tile, several row-block remainders, hidden widths that are not a multiple of
# the widest vector block (16, 48, 100: one-vector blocks and scalar columns), M = 1 and M > 32.
CASES = [(20, 256, 6, 1), (20, 256, 6, 37), (7, 48, 3, 23), (33, 100, 4, 19), (1, 16, 2, 9)]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(("m", "hidden", "steps", "batch"), CASES)
@pytest.mark.parametrize("mode", ["ancestral", "ddim"])
def test_fused_sampler_equals_reference_at_every_level(level, m, hidden, steps, batch, mode):
    model = make_gdm(m, hidden, steps, "eps")
    rng = np.random.default_rng(batch)
    gains = rng.uniform(0.5, 8, (batch, m))
    noise = torch.randn(steps + 1, batch, m, generator=torch.Generator().manual_seed(1))
    x = sample_reference(model.denoiser, model.schedule, model.normalise(torch.as_tensor(
        gains, dtype=torch.float32)), noise, pred="eps", mode=mode)  # fmt: skip
    expected = to_allocation(x, 0.2).numpy()
    sampler = FusedSampler.from_denoiser(model.denoiser, model.schedule.betas, model.cond_mean,
                                         model.cond_std, "eps")  # fmt: skip
    core.set_isa(level)
    got = sampler.sample(gains, 0.2, mode=mode, noise=noise.numpy())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_levels_agree_with_each_other_and_rows_do_not_depend_on_the_batch():
    model = make_gdm(20, 256, 6, "x0", seed=3)
    sampler = model.fused_sampler()
    gains = np.random.default_rng(3).exponential(4.0, (300, 20))
    results = {}
    for level in LEVELS:
        core.set_isa(level)
        results[level] = sampler.sample(gains, 0.2, mode="ancestral", seed=5)
        # A row's decision is the same in any batch (the micro-kernel's row blocks and the
        # tile's remainder rows compute the same sums in the same order).
        z = np.random.default_rng(4).standard_normal((7, 13, 20)).astype(np.float32)
        alone = sampler.sample(gains[7:12], 0.2, noise=z[:, 7:12])
        np.testing.assert_array_equal(alone, sampler.sample(gains[:13], 0.2, noise=z)[7:12])
    for level in LEVELS[1:]:
        np.testing.assert_allclose(results[level], results[LEVELS[0]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_waterfill_is_the_same_at_every_level(dtype):
    rng = np.random.default_rng(11)
    gains = rng.exponential(1.0, (4099, 20)).astype(dtype)  # not a multiple of 8 rows
    gains[5, 3] = 0.0
    gains[17] = 0.0  # an all-zero row inside a lane block
    total = rng.uniform(0.1, 10.0, 4099)
    results = {}
    for level in LEVELS:
        core.set_isa(level)
        results[level] = core.waterfill(gains, total, 0.5, return_level=True)
    power0, level0 = results[LEVELS[0]]
    for level in LEVELS[1:]:  # one implementation with no product to fuse: the same bits
        power, mu = results[level]
        np.testing.assert_array_equal(power, power0)
        np.testing.assert_array_equal(mu, level0)
    usable = np.arange(len(total)) != 17
    np.testing.assert_allclose(power0.sum(axis=1)[usable], total[usable],
                               rtol=1e-5 if dtype == np.float32 else 1e-12)  # fmt: skip


@pytest.mark.parametrize("level", LEVELS)
def test_waterfill_m_1024_adds_up_to_p_at_every_level(level):
    # Many inactive channels and a small P: the level's sums must not cancel (they did without
    # FMA, at 1e-8 of P).
    core.set_isa(level)
    rng = np.random.default_rng(2)
    gains = rng.uniform(0.01, 10, (9, 1024))
    total = np.array([1e-3, 5.0, 1e3, 1e-6, 0.2, 50.0, 1e-3, 2e-3, 7.0])
    power = core.waterfill(gains, total, 1.0)
    np.testing.assert_allclose(power.sum(axis=1), total, rtol=1e-12)


def _sampler():
    model = make_gdm(20, 64, 6, "eps", seed=1)
    return model.fused_sampler()


@pytest.mark.parametrize("level", LEVELS)
def test_caller_floating_point_mode_is_restored(level):
    core.set_isa(level)
    sampler = _sampler()
    gains = np.random.default_rng(0).uniform(0.5, 8, (2000, 20))  # split across the pool
    before = core.fp_mode()
    sampler.sample(gains, 0.2, seed=1)
    sampler.sample(gains[:1], 0.2, seed=1)  # runs inline on the caller
    core.waterfill(gains, 1.0)
    assert core.fp_mode() == before
    # After a call that fails, in the bindings and in Python's validation after the core.
    with pytest.raises(ValueError):
        _core.fused_sample(sampler.cpu_pack(), 0, gains.astype(np.float32)[:, :5],
                           np.array([0.2]), None, 0, 0)  # fmt: skip
    bad = gains.copy()
    bad[3, 4] = np.nan
    with pytest.raises(UserError):
        sampler.sample(bad, 0.2, seed=1)
    assert core.fp_mode() == before


def test_caller_mode_with_flush_bits_already_set_is_kept():
    mxcsr_x86 = core.fp_mode() & 0x1F80 == 0x1F80  # all exceptions masked: x86's default MXCSR
    if not mxcsr_x86:
        pytest.skip("MXCSR layout only")
    sampler = _sampler()
    gains = np.random.default_rng(0).uniform(0.5, 8, (500, 20))
    before = core.fp_mode()
    plain = sampler.sample(gains, 0.2, seed=1)
    try:
        _core.set_fp_mode(before | 0x8040)  # the caller runs with FTZ | DAZ itself
        flushed = sampler.sample(gains, 0.2, seed=1)
        assert core.fp_mode() == before | 0x8040
    finally:
        _core.set_fp_mode(before)
    assert core.fp_mode() == before
    np.testing.assert_array_equal(flushed, plain)  # the network runs flushed either way


def test_subnormal_samples_keep_their_value():
    # The network runs with subnormals flushed, the step update and the allocation map in the
    # caller's mode: a start sample of subnormals keeps its proportions (identity network).
    from tests.test_fused_core import identity_sampler

    m = 13
    x = np.full((4, m), 1e-40, dtype=np.float32)
    x[:, 0] = 3e-40
    noise = np.stack([x, np.zeros_like(x)])
    for level in LEVELS:
        core.set_isa(level)
        got = identity_sampler(m).sample(np.ones((4, m)), 1.0, mode="ddim", noise=noise)
        np.testing.assert_allclose(got, to_allocation(x.astype(np.float64), 1.0), rtol=1e-6)
