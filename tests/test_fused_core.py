"""The fused sampler's building blocks in the compiled core: the Philox normals the GPU draws, the
step constants computed from a schedule, and the final map from a sample to an allocation (the
step update itself is checked through the samplers against the PyTorch reference)."""

import numpy as np
import pytest
from models import make_gdm

from aigxctl import _core, core, fused
from aigxctl.diffusion import ALLOC_MAPS, STEP_CONSTANTS, Schedule, to_allocation

BETAS = 1.0 - np.exp(-0.1 / 6 - 0.5 * 9.9 * (2 * np.arange(1, 7) - 1) / 36)  # VP, T = 6


def test_step_constants_last_step_adds_no_noise():
    c = fused.step_constants(BETAS)
    assert c.shape == (6, 9) and c.dtype == np.float32
    assert c[0, 4] == 0.0  # sigma at i = 0
    assert np.all(c[1:, 4] > 0)


def test_step_constants_are_the_schedules_own():
    schedule = Schedule.create("cosine", 8)
    table = schedule.step_constants()
    np.testing.assert_array_equal(table, fused.step_constants(schedule.betas))
    for j, name in enumerate(STEP_CONSTANTS):
        if name == "inv_sqrt_1m_abar":  # the table's alone: the reference divides instead
            continue
        column = getattr(schedule, name).numpy().copy()
        if name == "sigma":
            column[0] = 0.0
        np.testing.assert_array_equal(table[:, j], column)


def identity_sampler(m: int, alloc_map: str = "abs") -> fused.FusedSampler:
    """One DDIM step that returns its start sample unchanged, so sampling gives the core's
    allocation map of the given noise: all weights 0 (the network predicts x0 = 0), and
    sqrt_abar_prev = 0, inv_sqrt_1m_abar = sqrt_1m_abar_prev = 1 make the update x <- x."""
    hidden = 16
    layout = core.pack_layout(m, hidden, 1)
    pack = np.zeros(layout["total"], dtype=np.float32)
    pack[layout["cond_std"] : layout["cond_std"] + m] = 1.0
    for name in ("inv_sqrt_1m_abar", "sqrt_1m_abar_prev"):
        pack[layout["consts"] + STEP_CONSTANTS.index(name)] = 1.0
    return fused.FusedSampler(pack=pack, m=m, hidden=hidden, steps=1, pred="x0",
                              alloc_map=alloc_map)  # fmt: skip


@pytest.mark.parametrize("alloc_map", ALLOC_MAPS)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_core_allocation_map_is_to_allocation(device, alloc_map):
    # csrc/denoise.h's to_allocation (the fused samplers' last step) against the one Python
    # definition of each map, on rows of zeros, negatives, a NaN and subnormals.
    m, rows = 13, 64
    rng = np.random.default_rng(5)
    x = rng.standard_normal((rows, m)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = 0.0
    x[0] = 0.0
    x[1] = -0.0
    x[2] = -np.abs(x[2])
    x[3] = 0.0
    x[3, 4] = -0.5
    x[4, 7] = np.nan
    x[5] = 1e-40  # subnormal in float32; the core sums in double
    noise = np.stack([x, np.zeros_like(x)])  # [T + 1, B, M]: the start sample, then no noise
    gains = np.ones((rows, m))
    sampler = identity_sampler(m, alloc_map)
    if device == "cuda":
        import torch

        gains, noise = torch.as_tensor(gains, device="cuda"), torch.as_tensor(noise, device="cuda")
    for total_power in (0.2, rng.uniform(0.1, 5.0, rows)):
        got = sampler.sample(gains, total_power, mode="ddim", noise=noise)
        got = got.cpu().numpy() if device == "cuda" else got
        expected = to_allocation(x.astype(np.float64), total_power, alloc_map)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        equal = np.broadcast_to(total_power, (rows,))[[0, 1, 4], None] / m
        np.testing.assert_allclose(got[[0, 1, 4]], np.broadcast_to(equal, (3, m)), rtol=1e-6)


def test_philox_normals_are_standard_normal_and_reproducible():
    z = core.philox_normals(seed=7, rows=4000, slots=7, m=20)
    assert z.shape == (7, 4000, 20) and z.dtype == np.float32
    # 560k draws: the standard errors of the mean and std are ~0.0013 and ~0.001.
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.std()) - 1.0) < 0.01
    assert abs(float((z > 1.96).mean()) - 0.025) < 0.002
    np.testing.assert_array_equal(z, core.philox_normals(7, 4000, 7, 20))
    other = core.philox_normals(8, 4000, 7, 20)
    assert abs(np.corrcoef(z.ravel(), other.ravel())[0, 1]) < 0.01


def test_philox_normals_do_not_depend_on_batch_size():
    # Sample r's noise is a function of (seed, r, slot, element) alone, so a row draws the same
    # numbers whatever batch it is in: the GPU's tiling cannot change a decision.
    small = core.philox_normals(3, 5, 2, 11)
    large = core.philox_normals(3, 50, 2, 11)
    np.testing.assert_array_equal(small, large[:, :5])


def test_pack_layout_is_contiguous_and_padded():
    layout = core.pack_layout(20, 256, 6)
    assert layout["m_pad"] == 32
    offsets = sorted(v for k, v in layout.items() if k not in ("total", "m_pad"))
    assert offsets[0] == 0 and layout["total"] > offsets[-1]
    assert layout["consts"] + 6 * 9 == layout["total"]


def test_core_gives_float64_allocations_and_takes_p_as_a_float_or_rows():
    # The allocate path asks the core for float64 (no NumPy conversion per decision) and hands
    # it one P as a Python float: the same allocations as float32 out and P as an array.
    sampler = make_gdm(20, 64, 3, "eps", seed=9).fused_sampler()
    pack = sampler.cpu_pack()
    gains = np.random.default_rng(5).uniform(0.5, 8, (37, 20))
    rows_p = np.random.default_rng(6).uniform(0.1, 2.0, 37)
    for p, as_array in ((0.7, np.array([0.7])), (rows_p, rows_p)):
        f32 = core.fused_sample(pack, 0, gains, as_array, None, 3, 1)
        f64 = core.fused_sample(pack, 0, gains, p, None, 3, 1, float64=True)
        assert f32.dtype == np.float32 and f64.dtype == np.float64
        np.testing.assert_array_equal(f64, f32.astype(np.float64))
    with pytest.raises(ValueError, match="1 or rows values"):
        _core.fused_sample(pack, 0, gains.astype(np.float32), np.ones(3), None, 3, 1, 0, True)
