"""The fused sampler's building blocks in the compiled core: the step update (shared by the CPU
and CUDA samplers and exposed as a single-step op), the Philox normals the GPU draws, and the
step constants computed from a schedule."""

import numpy as np
import pytest

from aigxctl import core, fused

BETAS = 1.0 - np.exp(-0.1 / 6 - 0.5 * 9.9 * (2 * np.arange(1, 7) - 1) / 36)  # VP, T = 6


def reference_step(x, out, z, c, pred, mode):
    """The step update written out in float64 NumPy from the constants."""
    (sra, srm1, c1, c2, sigma, sab, inv_s1m, sabp, s1mp) = (float(v) for v in c)
    x0 = out if pred == 1 else sra * x - srm1 * out
    x0 = np.clip(x0, -1.0, 1.0)
    if mode == 0:
        return c1 * x0 + c2 * x + sigma * (0.0 if z is None else z)
    eps = (x - sab * x0) * inv_s1m
    return sabp * x0 + s1mp * eps


@pytest.mark.parametrize("pred", [0, 1])
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("step", [0, 3, 5])
def test_denoise_step_matches_formula(pred, mode, step):
    rng = np.random.default_rng(step)
    x = rng.standard_normal(1001).astype(np.float32)
    out = (2 * rng.standard_normal(1001)).astype(np.float32)
    z = rng.standard_normal(1001).astype(np.float32)
    consts = fused.step_constants(BETAS)[step]
    expected = reference_step(x.astype(np.float64), out, z, consts, pred, mode)
    got = x.copy()
    core.denoise_step(got, out, z, consts, pred, mode)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_step_constants_last_step_adds_no_noise():
    c = fused.step_constants(BETAS)
    assert c.shape == (6, 9) and c.dtype == np.float32
    assert c[0, 4] == 0.0  # sigma at i = 0
    assert np.all(c[1:, 4] > 0)


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
