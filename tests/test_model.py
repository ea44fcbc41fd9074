"""The diffusion model: the fused sampler equals the plain PyTorch reference given the same noise,
every sampling mode gives feasible allocations, and checkpoints round-trip exactly and fail
clearly when damaged or foreign."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from models import make_gdm

from aigxctl import core
from aigxctl.checkpoint import load_model, save_model
from aigxctl.diffusion import loss, rate_regret, sample_reference, to_allocation
from aigxctl.errors import UserError
from aigxctl.fused import FusedSampler
from aigxctl.model import GDM, MLPAllocator, Regressor

CUDA = torch.cuda.is_available() and core.build_info()["cuda_built"]
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and a core built with CUDA")




def reference_allocation(model: GDM, gains: np.ndarray, noise: torch.Tensor, mode: str):
    g = torch.as_tensor(gains, dtype=torch.float32)
    x = sample_reference(model.denoiser, model.schedule, model.normalise(g), noise,
                         pred=model.pred, mode=mode)  # fmt: skip
    return to_allocation(x, 0.2).numpy()


CASES = [  # (M, hidden, T, batch): B = 1, a batch that leaves a partial tile, several M and T
    (20, 256, 6, 1),
    (20, 256, 6, 37),
    (7, 32, 3, 5),
    (33, 64, 10, 19),
    (1, 16, 2, 4),
]


@pytest.mark.parametrize(("m", "hidden", "steps", "batch"), CASES)
@pytest.mark.parametrize("pred", ["x0", "eps"])
@pytest.mark.parametrize("mode", ["ancestral", "ddim"])
def test_fused_equals_reference(m, hidden, steps, batch, pred, mode):
    model = make_gdm(m, hidden, steps, pred)
    rng = np.random.default_rng(batch)
    gains = rng.uniform(0.5, 8, (batch, m))
    noise = torch.randn(steps + 1, batch, m, generator=torch.Generator().manual_seed(1))
    expected = reference_allocation(model, gains, noise, mode)
    fused = FusedSampler.from_denoiser(model.denoiser, model.schedule.betas, model.cond_mean,
                                       model.cond_std, pred)  # fmt: skip
    got = fused.sample(gains, 0.2, mode=mode, noise=noise.numpy())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_fused_equals_reference_other_schedules(schedule):
    model = make_gdm(schedule=schedule, pred="eps")
    gains = np.random.default_rng(0).uniform(1, 7, (9, 20))
    noise = torch.randn(7, 9, 20)
    for mode in ("ancestral", "ddim"):
        got = model.fused_sampler().sample(gains, 0.2, mode=mode, noise=noise.numpy())
        np.testing.assert_allclose(got, reference_allocation(model, gains, noise, mode), atol=1e-5)


def test_fused_philox_noise_is_the_documented_noise():
    # Without given noise the core draws core.philox_normals; passing those explicitly gives the
    # same allocation, and a row's result does not depend on the batch it is in.
    model = make_gdm()
    gains = np.random.default_rng(2).uniform(1, 7, (21, 20))
    z = core.philox_normals(seed=9, rows=21, slots=7, m=20)
    a = model.fused_sampler().sample(gains, 0.2, mode="ancestral", seed=9)
    b = model.fused_sampler().sample(gains, 0.2, mode="ancestral", noise=z)
    np.testing.assert_array_equal(a, b)
    c = model.fused_sampler().sample(gains[:5], 0.2, mode="ancestral", seed=9)
    np.testing.assert_array_equal(a[:5], c)


@pytest.mark.parametrize("backend", ["fused", "torch"])
@pytest.mark.parametrize("mode", ["ancestral", "ddim"])
@pytest.mark.parametrize("best_of", [1, 4])
def test_allocations_are_feasible(backend, mode, best_of):
    model = make_gdm()
    gains = np.random.default_rng(3).uniform(0, 7, (50, 20))
    gains[4] = 0.0
    total = np.linspace(0.1, 2.0, 50)
    p = model.allocate(gains, total, mode=mode, best_of=best_of, seed=1, backend=backend)
    assert p.shape == (50, 20) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), total, rtol=1e-5)
    single = model.allocate(gains[0], mode=mode, seed=1, backend=backend)
    assert single.shape == (20,) and single.sum() == pytest.approx(0.2, rel=1e-5)


def test_best_of_k_never_worse_and_ddim_repeatable():
    model = make_gdm()
    gains = np.random.default_rng(4).uniform(1, 7, (200, 20))
    one = model.allocate(gains, mode="ancestral", seed=3)
    best = model.allocate(gains, mode="ancestral", best_of=8, seed=3)
    r1, r8 = core.sum_rate(gains, one), core.sum_rate(gains, best)
    assert r8.mean() >= r1.mean()
    a = model.allocate(gains, mode="ddim", seed=1)
    b = model.allocate(gains, mode="ddim", seed=1)
    np.testing.assert_array_equal(a, b)


def test_wrong_number_of_channels():
    with pytest.raises(UserError, match="trained for M = 20"):
        make_gdm().allocate(np.ones((3, 8)))


def test_checkpoint_round_trip_is_exact(tmp_path: Path):
    model = make_gdm(pred="eps", schedule="cosine")
    save_model(model, tmp_path / "ckpt", {"metrics": {"val_fraction": 0.5}})
    again = load_model(tmp_path / "ckpt")
    assert isinstance(again, GDM)
    for (k, a), (_, b) in zip(model.denoiser.state_dict().items(),
                              again.denoiser.state_dict().items(), strict=True):  # fmt: skip
        assert torch.equal(a, b), k
    assert again.pred == "eps" and again.schedule.kind == "cosine" and again.T == 6
    np.testing.assert_array_equal(again.cond_mean, model.cond_mean)
    gains = np.random.default_rng(5).uniform(1, 7, (10, 20))
    np.testing.assert_array_equal(model.allocate(gains, seed=2), again.allocate(gains, seed=2))
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["format"] == "aigxctl-model" and cfg["metrics"]["val_fraction"] == 0.5
    assert not list(tmp_path.glob(".*"))  # no temporary directories left behind


def test_mlp_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    mlp = MLPAllocator(net=Regressor(5, 16).eval(), cond_mean=np.zeros(5), cond_std=np.ones(5),
                       total_power=1.0, noise=1.0)  # fmt: skip
    save_model(mlp, tmp_path / "mlp")
    again = load_model(tmp_path / "mlp")
    gains = np.random.default_rng(0).uniform(0, 3, (4, 5))
    np.testing.assert_allclose(again.allocate(gains), mlp.allocate(gains))
    np.testing.assert_allclose(again.allocate(gains).sum(axis=1), 1.0, rtol=1e-6)


def test_damaged_and_foreign_checkpoints(tmp_path: Path):
    with pytest.raises(UserError, match="no such model directory"):
        load_model(tmp_path / "missing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="not an aigxctl model"):
        load_model(foreign)
    good = tmp_path / "good"
    save_model(make_gdm(), good)
    weights = good / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="damaged"):
        load_model(good)
    good = tmp_path / "good2"
    save_model(make_gdm(), good)
    (good / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        load_model(good)
    good = tmp_path / "good3"
    save_model(make_gdm(hidden=64), good)
    cfg = json.loads((good / "config.json").read_text())
    cfg["hidden"] = 32
    (good / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not match"):
        load_model(good)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["ancestral", "ddim"])
def test_fused_cuda_matches_cpu(mode):
    model = make_gdm(hidden=256)
    gains = np.random.default_rng(6).uniform(1, 7, (1000, 20))
    noise = np.random.default_rng(7).standard_normal((7, 1000, 20)).astype(np.float32)
    cpu = model.fused_sampler().sample(gains, 0.2, mode=mode, noise=noise)
    gpu = model.fused_sampler().sample(torch.as_tensor(gains, device="cuda"), 0.2, mode=mode,
                                       noise=torch.as_tensor(noise, device="cuda"))  # fmt: skip
    assert gpu.is_cuda
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=1e-5)
    # Philox noise drawn in the kernel equals the CPU's.
    a = model.fused_sampler().sample(gains, 0.2, mode="ancestral", seed=4)
    b = model.fused_sampler().sample(torch.as_tensor(gains, device="cuda"), 0.2,
                                     mode="ancestral", seed=4)  # fmt: skip
    np.testing.assert_allclose(b.cpu().numpy(), a, atol=1e-5)


def test_rate_regret_is_the_lost_fraction_of_the_optimum():
    gains = np.random.default_rng(8).uniform(3, 8, (64, 20))
    p_opt = core.waterfill(gains, 0.2, 1.0)
    g, x0 = torch.as_tensor(gains), torch.as_tensor(p_opt / 0.2)
    assert float(rate_regret(x0, x0, g, 0.2, 1.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(rate_regret(-3 * x0, x0, g, 0.2, 1.0)) == pytest.approx(0.0, abs=1e-12)
    flat = torch.full_like(x0, 0.05)
    expected = 1 - core.sum_rate(gains, np.full_like(gains, 0.01)) / core.sum_rate(gains, p_opt)
    assert float(rate_regret(flat, x0, g, 0.2, 1.0)) == pytest.approx(expected.mean(), rel=1e-9)
    # Its gradient pulls a switched-off channel's output to zero from either side.
    off = int(np.argmax(p_opt[0] == 0))
    for sign in (1.0, -1.0):
        x_hat = x0[:1].clone()
        x_hat[0, off] = sign * 0.01
        x_hat.requires_grad_(True)
        rate_regret(x_hat, x0[:1], g[:1], 0.2, 1.0).backward()
        assert sign * float(x_hat.grad[0, off]) > 0


def test_loss_adds_the_regret_only_when_asked():
    model = make_gdm(hidden=16)
    g = np.random.default_rng(9).uniform(3, 8, (32, 20))
    gains = torch.as_tensor(g, dtype=torch.float32)
    x0 = torch.as_tensor(core.waterfill(g, 0.2, 1.0) / 0.2, dtype=torch.float32)  # the optimum
    cond = model.normalise(gains)

    def value(**kw):
        with torch.no_grad():
            return float(loss(model.denoiser, model.schedule, x0, cond, "x0",
                              torch.Generator().manual_seed(0), **kw))  # fmt: skip

    assert value() == value(rate_weight=0.0, gains=gains)
    assert value(rate_weight=1.0, gains=gains, total_power=0.2) > value()


def test_tensor_in_tensor_out():
    model = make_gdm()
    g = torch.rand(6, 20, dtype=torch.float64) * 5
    p = model.allocate(g, seed=0)
    assert isinstance(p, torch.Tensor) and p.dtype == torch.float64 and p.shape == (6, 20)
    np.testing.assert_array_equal(p.numpy(), model.allocate(g.numpy(), seed=0))


@pytest.mark.parametrize(
    "change",
    [
        {"cond_std": [1.0] * 19},
        {"cond_std": [0.0] * 20},
        {"cond_mean": ["a"] * 20},
        {"total_power": -1},
        {"noise": "loud"},
        {"pred": "v"},
        {"steps": 0},
        {"m": 8},
    ],
)
def test_config_with_bad_values_is_damaged(tmp_path: Path, change):
    save_model(make_gdm(hidden=16), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(UserError, match="damaged"):
        load_model(tmp_path / "m")


# The fused path leaves the gains' validation to the core's row loop (no Python pass over them
# at B = 1): it must still refuse every gain the torch path refuses, naming where it is, float64
# values that round to a valid float32 (a tiny negative) or overflow it included (both paths
# compute in float32: the torch path once gave such a row the equal split).
@pytest.mark.parametrize(
    ("value", "reason"),
    [(np.nan, "finite"), (np.inf, "finite"), (-2.0, ">= 0"), (-1e-300, ">= 0"),
     (1e39, "float32")],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_allocate_refuses_invalid_gains_on_every_backend(value, reason, dtype, backend):
    if dtype == np.float32 and value in (-1e-300, 1e39):
        pytest.skip("not a float32 value")
    model = make_gdm()
    gains = np.ones((40, 20), dtype=dtype)  # three tiles: the bad row is in the second
    gains[21, 5] = value
    gains[30, 0] = -1.0  # a later bad entry: the first one is named
    with pytest.raises(UserError, match=reason) as info:
        model.allocate(gains, seed=1, backend=backend)
    assert "gains[21, 5]" in str(info.value)
    with pytest.raises(UserError, match=r"gains\[0, 5\]"):  # one vector alone
        model.allocate(gains[21], seed=1, backend=backend)


def test_a_decision_alone_equals_the_same_row_in_a_batch():
    # B = 1 runs the one-row kernel (many accumulators): the same sums in the same order as the
    # batched row blocks, at every ISA level, so a decision does not depend on its company.
    sampler = make_gdm(20, 256, 6, "eps", seed=2).fused_sampler()
    gains = np.random.default_rng(6).uniform(1, 7, (37, 20))
    z = np.random.default_rng(7).standard_normal((7, 37, 20)).astype(np.float32)
    before = core.isa()
    try:
        for level in core.isa_available():
            core.set_isa(level)
            for mode in ("ddim", "ancestral"):
                batch = sampler.sample(gains, 0.2, mode=mode, noise=z)
                for r in (0, 17, 36):
                    alone = sampler.sample(gains[r : r + 1], 0.2, mode=mode, noise=z[:, r : r + 1])
                    np.testing.assert_array_equal(alone, batch[r : r + 1])
    finally:
        core.set_isa(before)


def test_gains_in_any_layout_give_the_same_allocations():
    # The fast path for native float32 / float64 arrays must not be the only one that works:
    # byte-swapped, strided, pickled and list gains, and one vector, allocate the same.
    import pickle

    model = make_gdm(20, 64, 3, "eps", seed=4)
    gains = np.random.default_rng(8).uniform(0.5, 8, (5, 20)).astype(np.float32)
    expected = model.allocate(gains, seed=3, backend="fused")
    assert expected.dtype == np.float64
    wide = np.zeros((5, 40), np.float32)
    wide[:, ::2] = gains
    for other in (
        gains.astype(">f4"), wide[:, ::2], pickle.loads(pickle.dumps(gains)), gains.tolist(),
        gains.astype(np.float64), gains.astype(">f8"), np.asfortranarray(gains),
        np.asfortranarray(gains.astype(np.float64)), torch.from_numpy(gains),
    ):  # fmt: skip
        got = model.allocate(other, seed=3, backend="fused")
        np.testing.assert_array_equal(np.asarray(got, dtype=np.float64), expected)
    whole = np.rint(gains)  # integers and half floats are numbers too, converted by the core
    for dtype in (np.int32, np.uint8, np.int64, np.float16):
        np.testing.assert_array_equal(
            model.allocate(whole.astype(dtype), seed=3, backend="fused"),
            model.allocate(whole.astype(np.float64), seed=3, backend="fused"),
        )
    row = model.allocate(gains[2:3], seed=3, backend="fused")[0]
    np.testing.assert_array_equal(model.allocate(gains[2], seed=3, backend="fused"), row)


@pytest.mark.parametrize(
    ("gains", "message"),
    [
        (np.ones((1, 5, 20)), r"must be \[B, 20\] or one vector of 20, got shape \[1, 5, 20\]"),
        (np.array(5.0), r"got shape \[\]"),
        ([[1.0] * 20, [1.0] * 19], "gains must be an array of numbers"),
        ([["a"] * 20], "gains must be real numbers"),
        (np.ones((2, 20), complex), "gains must be real numbers, got an array of complex128"),
        (np.full((1, 20), 1e39), r"gains\[0, 0\] = 1e\+39: gains must be <= 3.4e38 \(float32\)"),
    ],
)
@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_gains_a_model_cannot_take_are_refused_in_one_line(gains, message, backend):
    with pytest.raises(UserError, match=message):
        make_gdm(20, 32, 2).allocate(gains, seed=1, backend=backend)


@pytest.mark.parametrize(
    ("p", "message"),
    [
        (1e300, "between 1e-30 and 1e\\+30 for a model"),
        (1e-300, "between 1e-30 and 1e\\+30 for a model"),
        (np.array([0.2, 1e31]), "got 1e\\+31"),
        (True, "a number > 0, got True"),
        (1 + 0j, "a number or an array of numbers"),
        (np.float32(-1), "finite and > 0, got -1.0$"),
    ],
)
def test_a_power_budget_a_model_cannot_reach_is_refused(p, message):
    # In float32, a P of 1e300 made every power inf and one of 1e-300 every power 0.
    gains = np.random.default_rng(1).uniform(1, 5, (2, 20))
    for model in (make_gdm(20, 32, 2), MLPAllocator(Regressor(20, 16), np.zeros(20), np.ones(20),
                                                      0.2, 1.0)):  # fmt: skip
        with pytest.raises(UserError, match=message):
            model.allocate(gains, p)


def test_a_bfloat16_tensor_and_an_empty_batch_with_best_of_allocate():
    model = make_gdm(20, 32, 2)
    gains = np.random.default_rng(2).uniform(1, 5, (3, 20)).astype(np.float32)
    as_bf16 = torch.from_numpy(gains).bfloat16()
    got = model.allocate(as_bf16, seed=1)
    expected = model.allocate(as_bf16.float().numpy(), seed=1)
    assert got.dtype == torch.bfloat16
    np.testing.assert_allclose(got.float().numpy(), expected, rtol=1e-2)
    assert model.allocate(np.zeros((0, 20)), best_of=3, seed=1).shape == (0, 20)


def test_best_of_ranks_the_candidates_at_the_noise_asked_for():
    # The K candidates are ranked by their sum rate at sigma^2 = noise (the model's unless
    # given): at another sigma^2 the best candidate is another one.
    model = make_gdm(20, 64, 3, seed=5)
    gains = np.random.default_rng(3).uniform(0.01, 20, (30, 20))
    tiled = np.repeat(gains, 6, axis=0)  # row r's candidates are rows 6r .. 6r + 5
    candidates = model.allocate(tiled, seed=4, mode="ancestral")
    picked = {}
    for noise in (None, 0.001):
        got = model.allocate(gains, seed=4, mode="ancestral", best_of=6, noise=noise)
        rates = core.sum_rate(tiled, candidates, noise or model.noise)
        best = candidates.reshape(30, 6, 20)[np.arange(30), rates.reshape(30, 6).argmax(1)]
        np.testing.assert_array_equal(got, best)
        picked[noise] = got
    assert not np.array_equal(picked[None], picked[0.001])


def test_best_of_gives_a_row_the_same_candidates_in_any_batch():
    # Row r's K candidates draw the noise of rows rK .. rK + K - 1: the first row of a batch
    # gets what it gets alone, and every row what it gets in a batch of any size after it.
    model = make_gdm(20, 64, 3, seed=6)
    gains = np.random.default_rng(4).uniform(0.5, 8, (5, 20))
    batch = model.allocate(gains, seed=2, mode="ancestral", best_of=4)
    np.testing.assert_array_equal(model.allocate(gains[:1], seed=2, mode="ancestral", best_of=4),
                                  batch[:1])  # fmt: skip
    np.testing.assert_array_equal(model.allocate(gains[:3], seed=2, mode="ancestral", best_of=4),
                                  batch[:3])  # fmt: skip
