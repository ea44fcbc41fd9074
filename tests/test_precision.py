"""precision="bf16": the fused CPU sampler's hidden layers in bfloat16 (AVX-512 BF16 dot
products where the CPU has them, the same sums with FMAs on every other level). Close to f32 in
allocations and in the fraction of the optimum, the same on every level, never the default."""

import numpy as np
import pytest
from models import make_gdm
from typer.testing import CliRunner

from aigxctl import core, load_model, metrics
from aigxctl.cli import app
from aigxctl.errors import UserError

LEVELS = core.isa_available()


pytestmark = pytest.mark.usefixtures("restore_isa")


@pytest.fixture(scope="module")
def pretrained():
    return load_model()


@pytest.fixture(scope="module")
def gains():
    return np.random.default_rng(3).uniform(1, 7, (2000, 20))


def test_bf16_is_close_to_f32_and_keeps_the_fraction_of_the_optimum(pretrained, gains):
    f32 = pretrained.allocate(gains, seed=4)
    bf16 = pretrained.allocate(gains, seed=4, precision="bf16")
    assert not np.array_equal(f32, bf16)  # it did round
    np.testing.assert_allclose(bf16.sum(axis=1), pretrained.total_power, rtol=1e-5)
    assert np.abs(bf16 - f32).max() < 0.01 * pretrained.total_power
    optimum = metrics.optimum_rate(gains, pretrained.total_power, pretrained.noise)
    frac = [metrics.mean_rate(gains, p, pretrained.noise) / optimum for p in (f32, bf16)]
    assert abs(frac[0] - frac[1]) < 0.0005  # 0.05 points


# 37: an odd width (the last pair half padded, K not a multiple of the tiles' 32); M = 8: an
# output layer of 16 columns (one tile).
@pytest.mark.parametrize(("m", "hidden"), [(20, 64), (20, 37), (8, 48)])
def test_every_level_gives_bf16_allocations_alike(m, hidden):
    model = make_gdm(m, hidden, 6, "eps", seed=2)
    g = np.random.default_rng(5).uniform(0.5, 8, (300, m))
    out = {}
    for level in LEVELS:
        core.set_isa(level)
        out[level] = model.allocate(g, 1.0, seed=9, precision="bf16", backend="fused")
        # A row alone gives what it gives in a batch (its noise is keyed by its row: row 0).
        one = model.allocate(g[:1], 1.0, seed=9, precision="bf16", backend="fused")
        np.testing.assert_array_equal(one, out[level][:1])
    f32 = model.allocate(g, 1.0, seed=9, backend="fused")
    for level in LEVELS:
        # Not to the bit: the levels' Mish differs in the last bits of f32, which can tip an
        # activation's rounding to bf16 (2^-9 relative) one way or the other.
        np.testing.assert_allclose(out[level], out[LEVELS[0]], atol=5e-3)
        assert np.abs(out[level] - f32).max() < 0.02


def test_bf16_leaves_the_caller_floating_point_mode(pretrained, gains):
    before = core.fp_mode()
    pretrained.allocate(gains, seed=1, precision="bf16")
    pretrained.allocate(gains[:1], seed=1, precision="bf16")
    assert core.fp_mode() == before


def test_bf16_needs_the_fused_sampler_and_a_known_name(pretrained, gains):
    with pytest.raises(UserError, match="needs the fused sampler"):
        pretrained.allocate(gains[:3], precision="bf16", backend="torch")
    with pytest.raises(UserError, match="precision must be one of f32, bf16"):
        pretrained.allocate(gains[:3], precision="fp8")


def test_cli_precision(tmp_path):
    csv = tmp_path / "g.csv"
    np.savetxt(csv, np.random.default_rng(0).uniform(1, 7, (5, 20)), delimiter=",")
    runner = CliRunner()
    res = runner.invoke(app, ["allocate", "--method", "gdm", "--gains", str(csv), "--precision",
                              "bf16", "--seed", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = [line for line in res.stdout.splitlines() if line and not line.startswith("p1")]
    assert len(rows) == 5
    assert "fused bf16" in res.stderr
    bad = runner.invoke(app, ["allocate", "--method", "gdm", "--gains", str(csv), "--precision",
                              "bf16", "--backend", "torch"])  # fmt: skip
    assert bad.exit_code == 2 and "needs the fused sampler" in bad.output


def test_a_model_that_sampled_still_pickles(pretrained, gains):
    import copy
    import pickle

    expected = pretrained.allocate(gains[:4], seed=2, precision="bf16")  # builds the CPU packs
    for twin in (pickle.loads(pickle.dumps(pretrained)), copy.deepcopy(pretrained)):
        np.testing.assert_array_equal(twin.allocate(gains[:4], seed=2, precision="bf16"), expected)


def test_a_replaced_pack_is_the_one_sampled():
    import dataclasses

    sampler = make_gdm(5, 16, 3, "eps", seed=1).fused_sampler()
    g = np.ones((2, 5), np.float32)
    before = sampler.sample(g, 1.0, seed=1)
    zeroed = np.zeros_like(sampler.pack)
    layout = core.pack_layout(5, 16, 3)  # zero weights; keep the statistics and step constants
    for name in ("cond_mean", "cond_std"):
        zeroed[layout[name] : layout[name] + 5] = sampler.pack[layout[name] : layout[name] + 5]
    zeroed[layout["consts"] :] = sampler.pack[layout["consts"] :]
    twin = dataclasses.replace(sampler, pack=zeroed)
    assert np.isfinite(twin.sample(g, 1.0, seed=1)).all()
    assert not np.array_equal(twin.sample(g, 1.0, seed=1), before)
    sampler.pack = zeroed
    np.testing.assert_array_equal(sampler.sample(g, 1.0, seed=1), twin.sample(g, 1.0, seed=1))
