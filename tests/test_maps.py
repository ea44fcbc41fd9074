"""The allocation maps (abs, simplex, relu): the simplex map is the true Euclidean projection, the
NumPy and torch paths of the one Python definition agree, the fused sampler runs each map as the
PyTorch reference does, a checkpoint keeps its map and refuses an unknown one, and the reward
route's KKT push is zero exactly at the water-filling optimum."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from models import make_gdm
from test_fused_core import identity_sampler

from aigxctl import core
from aigxctl.checkpoint import load_model, save_model
from aigxctl.diffusion import ALLOC_MAPS, to_allocation
from aigxctl.errors import UserError
from aigxctl.reward import kkt_push

rows_of_x = arrays(
    np.float64,
    st.tuples(st.integers(1, 6), st.integers(1, 24)),
    elements=st.floats(-3, 3, allow_nan=False, allow_subnormal=False),
)


def assert_projection(x: np.ndarray, f: np.ndarray, atol: float) -> None:
    """f is argmin ||f - x|| over the probability simplex: feasible, and the KKT conditions hold
    (one threshold theta with f_n = x_n - theta where f_n > 0 and x_n <= theta where f_n = 0)."""
    assert np.all(f >= 0)
    np.testing.assert_allclose(f.sum(axis=-1), 1.0, atol=atol)
    for xr, fr in zip(x, f, strict=True):
        on = fr > atol
        assert on.any()
        theta = np.mean(xr[on] - fr[on])
        np.testing.assert_allclose(xr[on] - fr[on], theta, atol=atol)
        assert np.all(xr[~on] <= theta + atol)


@settings(max_examples=200, deadline=None)
@given(rows_of_x)
def test_simplex_map_is_the_euclidean_projection(x):
    assert_projection(x, to_allocation(x, 1.0, "simplex"), atol=1e-9)
    t = to_allocation(torch.as_tensor(x), 1.0, "simplex").numpy()
    np.testing.assert_allclose(t, to_allocation(x, 1.0, "simplex"), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(rows_of_x)
def test_core_simplex_map_is_the_euclidean_projection(x):
    # The core's active-set search (csrc/denoise.h, simplex_map) on float32 samples, through
    # the identity sampler, whose allocation is the map of its start noise.
    x32 = x.astype(np.float32)
    sampler = identity_sampler(x.shape[1], "simplex")
    got = sampler.sample(np.ones(x.shape), 1.0, mode="ddim", noise=np.stack([x32, 0 * x32]))
    assert_projection(x32.astype(np.float64), got.astype(np.float64), atol=2e-6)


def test_projection_keeps_a_point_of_the_simplex_and_switches_channels_off():
    f = np.array([[0.5, 0.25, 0.25, 0.0]])
    np.testing.assert_allclose(to_allocation(f, 2.0, "simplex"), 2 * f, atol=1e-15)
    x = np.array([[0.9, 0.8, -0.3, 0.1]])
    np.testing.assert_allclose(to_allocation(x, 1.0, "simplex"), [[0.55, 0.45, 0.0, 0.0]])
    np.testing.assert_allclose(to_allocation(x, 1.0, "relu"), [[0.5, 0.8 / 1.8, 0.0, 0.1 / 1.8]])
    assert np.all(to_allocation(x, 1.0, "abs") > 0)


@pytest.mark.parametrize("alloc_map", ALLOC_MAPS)
def test_maps_are_feasible_and_differentiable(alloc_map):
    x = torch.randn(50, 20, dtype=torch.float64, requires_grad=True)
    p = to_allocation(x, 0.2, alloc_map)
    assert torch.all(p >= 0)
    torch.testing.assert_close(p.sum(-1), torch.full((50,), 0.2, dtype=torch.float64))
    g = torch.rand(50, 20, dtype=torch.float64) * 6 + 1
    torch.log1p(g * p).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # A simplex gradient: the same level is taken from every active channel, so the gradients
    # of a row's active channels add up to 0, and a channel switched off gets none.
    if alloc_map == "simplex":
        on = p.detach() > 0
        torch.testing.assert_close((x.grad * on).sum(-1), torch.zeros(50, dtype=torch.float64))
        assert torch.all(x.grad[~on] == 0)
    with pytest.raises(ValueError, match="unknown allocation map"):
        to_allocation(x, 0.2, "softmax")


@pytest.mark.parametrize("alloc_map", ALLOC_MAPS)
@pytest.mark.parametrize("mode", ["ddim", "ancestral"])
def test_fused_sampler_runs_each_map_as_the_reference(alloc_map, mode):
    model = make_gdm(pred="eps")
    model.alloc_map = alloc_map
    gains = np.random.default_rng(3).uniform(1, 7, (37, 20))  # 37: odd tiles
    fused = model.allocate(gains, seed=5, mode=mode, backend="fused")
    torch_ = model.allocate(gains, seed=5, mode=mode, backend="torch")
    np.testing.assert_allclose(fused, torch_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fused.sum(axis=1), 0.2, rtol=1e-5)
    if alloc_map != "abs":  # these random weights give some channels no power
        assert (fused == 0).any()


def test_checkpoint_keeps_the_map_and_refuses_an_unknown_one(tmp_path: Path):
    model = make_gdm()
    model.alloc_map = "simplex"
    save_model(model, tmp_path / "m", {"training": "test"})
    loaded = load_model(tmp_path / "m")
    assert loaded.alloc_map == "simplex"
    gains = np.random.default_rng(0).uniform(1, 7, (8, 20))
    np.testing.assert_array_equal(loaded.allocate(gains, seed=1), model.allocate(gains, seed=1))
    config = tmp_path / "m" / "config.json"
    cfg = json.loads(config.read_text())
    del cfg["alloc_map"]  # a checkpoint from before the maps: the paper's abs map
    config.write_text(json.dumps(cfg))
    assert load_model(tmp_path / "m").alloc_map == "abs"
    cfg["alloc_map"] = "softmax"
    config.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="alloc_map must be one of abs, simplex, relu") as err:
        load_model(tmp_path / "m")
    assert "\n" not in str(err.value)


def test_kkt_push_is_zero_at_the_optimum_and_wakes_a_channel_wrongly_off():
    gains = np.random.default_rng(1).uniform(1, 7, (200, 20))
    opt = core.waterfill(gains, 0.2, 1.0)
    g, p = torch.as_tensor(gains), torch.as_tensor(opt)
    assert (p == 0).any()  # T2-like gains: water-filling switches channels off
    torch.testing.assert_close(kkt_push(g, p, 0.2, 1.0), torch.zeros_like(p), atol=1e-9, rtol=0)
    # Move all of row 0's best channel's power to its worst active one: the best is now off
    # and its marginal rate beats the level, so it alone is pushed up.
    row = p[0].clone()
    best = int(torch.argmax(g[0]))
    worst = int(torch.argmin(torch.where(row > 0, g[0], torch.inf)))
    row[worst] += row[best]
    row[best] = 0
    push = kkt_push(g[:1], row[None], 0.2, 1.0)[0]
    assert push[best] > 0 and int((push > 0).sum()) == 1
