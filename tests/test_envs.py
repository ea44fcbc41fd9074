"""The Gymnasium power-allocation environment and the SAC baseline on it."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aigxctl import core, scenarios
from aigxctl.envs import ACTION_MAPS, PowerAllocationEnv, action_to_power
from aigxctl.errors import UserError


def tiny_scenario(total_power: float = 0.2) -> scenarios.Scenario:
    """Two channels, one far better: the optimum puts all the power on channel 0."""
    return scenarios.Scenario.from_dict(
        {
            "name": "tiny",
            "total_power": total_power,
            "groups": [
                {"channels": 1, "model": "uniform", "low": 5.0, "high": 8.0},
                {"channels": 1, "model": "uniform", "low": 0.1, "high": 0.2},
            ],
        }
    )


@pytest.mark.parametrize("mapping", ACTION_MAPS)
def test_env_passes_gymnasium_checker(mapping):
    check_env(PowerAllocationEnv(scenarios.get("t1"), action_map=mapping), skip_render_check=True)


@pytest.mark.parametrize("mapping", ACTION_MAPS)
@settings(max_examples=50, deadline=None)
@given(action=arrays(np.float32, 20, elements=st.floats(-1, 1, width=32)))
def test_mapped_actions_are_feasible(mapping, action):
    for a in (action, np.full(20, -1.0), np.zeros(20), np.ones(20)):
        p = action_to_power(a, 0.2, mapping)
        assert p.shape == (20,)
        assert (p >= 0).all()
        assert p.sum() == pytest.approx(0.2, rel=1e-12)


def test_mappings_reach_sparse_allocations():
    a = np.array([[0.5, -0.3, 0.5, -1.0], [-1, -1, -1, -1]])
    p = action_to_power(a, 1.0, "relu")
    np.testing.assert_allclose(p, [[0.5, 0, 0.5, 0], [0.25] * 4])
    np.testing.assert_allclose(
        action_to_power(a[:1], 1.0, "abs"), [[0.5 / 2.3, 0.3 / 2.3, 0.5 / 2.3, 1 / 2.3]]
    )
    # Out-of-range actions are clipped to the action space first.
    np.testing.assert_allclose(action_to_power([[5.0, 0.0]], 1.0, "linear"), [[2 / 3, 1 / 3]])
    with pytest.raises(UserError, match="action mapping"):
        action_to_power(a, 1.0, "bogus")


@pytest.mark.parametrize("mapping", ACTION_MAPS)
def test_reward_is_the_sum_rate_and_info_has_the_optimum(mapping):
    env = PowerAllocationEnv(scenarios.get("t1"), seed=3, action_map=mapping)
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs, _ = env.reset()
        action = rng.uniform(-1, 1, 20).astype(np.float32)
        _, reward, terminated, truncated, info = env.step(action)
        g = obs.astype(np.float64)
        power = action_to_power(action, 0.2, mapping)
        np.testing.assert_array_equal(info["power"], power)
        assert reward == pytest.approx(float(core.sum_rate(g, power)), rel=1e-12)
        opt = float(core.sum_rate(g, core.waterfill(g, 0.2)))
        assert info["optimum_rate"] == pytest.approx(opt, rel=1e-12)
        assert info["equal_rate"] == pytest.approx(float(core.sum_rate(g, np.full(20, 0.01))))
        assert reward <= info["optimum_rate"] + 1e-12
        assert terminated and not truncated


def test_seeding_and_scenario_swap():
    t1, t2 = scenarios.get("t1"), scenarios.get("t2")
    a = PowerAllocationEnv(t1, seed=5)
    b = PowerAllocationEnv(t1)
    np.testing.assert_array_equal(a.reset(seed=5)[0], b.reset(seed=5)[0])
    first = np.array([a.reset()[0] for _ in range(200)])
    assert first[:, :10].min() >= 5  # T1: g1..g10 ~ U[5, 8]
    a.set_scenario(t2)
    after = np.array([a.reset()[0] for _ in range(200)])
    assert after[:, :10].min() < 3  # T2: all ~ U[1, 7]
    with pytest.raises(UserError, match="2 channels"):
        a.set_scenario(tiny_scenario())
    with pytest.raises(RuntimeError, match="reset"):
        PowerAllocationEnv(t1).step(np.zeros(20, np.float32))


def test_env_uses_the_scenario_power_and_noise():
    sc = scenarios.get("t1").with_power(1.5)
    env = PowerAllocationEnv(sc, seed=0)
    _, _, _, _, info = env.step(np.zeros(20, np.float32))
    assert info["power"].sum() == pytest.approx(1.5)


# --- SAC --------------------------------------------------------------------------------------


def test_sac_skips_cleanly_without_stable_baselines3(monkeypatch):
    # Simulate a machine without the rl extra: importing stable_baselines3 fails.
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    monkeypatch.delitem(sys.modules, "aigxctl.baselines.sac", raising=False)
    sac = importlib.import_module("aigxctl.baselines.sac")  # imports fine without it
    assert not sac.available()
    with pytest.raises(sac.SACUnavailable, match=r"stable-baselines3.*aigxctl\[rl\]") as exc:
        sac.SACBaseline(scenarios.get("t1"))
    assert isinstance(exc.value, ImportError)
    assert exc.value.missing == "stable-baselines3"
    with pytest.raises(sac.SACUnavailable):
        sac.train_sac(scenarios.get("t1"), 10)


def test_sac_config_errors():
    from aigxctl.baselines.sac import SACConfig

    with pytest.raises(UserError, match="action_map"):
        SACConfig.from_dict({"action_map": "nope"})
    with pytest.raises(UserError, match="unknown setting"):
        SACConfig.from_dict({"lr": 1e-3})
    with pytest.raises(UserError, match="batch_size"):
        SACConfig.from_dict({"batch_size": 0})
    assert SACConfig.from_dict({"net": [8, 8]}).net == (8, 8)


@pytest.mark.slow
def test_sac_trains_continues_and_round_trips(tmp_path):
    pytest.importorskip("stable_baselines3")
    from aigxctl.baselines.sac import SACBaseline, SACConfig

    sc = tiny_scenario()
    cfg = SACConfig(net=(32, 32), n_envs=4, batch_size=64, learning_starts=100)
    reports = []
    agent = SACBaseline(sc, seed=1, config=cfg)
    info = agent.train(800, progress=lambda n, s: reports.append((n, s)), every=200)
    assert agent.samples == info["samples"] == 800
    assert 0 < info["train_fraction_of_optimum"] <= 1
    assert [n for n, _ in reports] == [200, 400, 600, 800]
    assert set(reports[-1][1]) == {"train_fraction_of_optimum", "actor_loss", "critic_loss",
                                   "ent_coef"}  # fmt: skip

    gains = sc.sample(500, np.random.default_rng(9))
    power = agent.allocate(gains)
    assert power.shape == gains.shape
    assert (power >= 0).all()
    np.testing.assert_allclose(power.sum(axis=1), 0.2)
    np.testing.assert_allclose(agent.allocate(gains[0]), power[0])
    # It learned something: better than the equal split, which gives the bad channel half.
    rate = core.sum_rate(gains, power).mean()
    equal = core.sum_rate(gains, np.full_like(gains, 0.1)).mean()
    optimum = core.sum_rate(gains, core.waterfill(gains, 0.2)).mean()
    assert rate > equal + 0.9 * (optimum - equal)

    # Continue on another scenario with the same M.
    agent.set_scenario(tiny_scenario(total_power=0.4))
    assert agent.train(200)["samples"] == 200 and agent.samples == 1000
    np.testing.assert_allclose(agent.allocate(gains).sum(axis=1), 0.4)
    with pytest.raises(UserError, match="M = 20"):
        agent.set_scenario(scenarios.get("t1"))
    with pytest.raises(UserError, match=r"shape \[B, 2\]"):
        agent.allocate(np.ones((3, 5)))
    with pytest.raises(UserError, match="finite"):
        agent.allocate(np.array([[1.0, np.nan]]))

    agent.save(tmp_path / "sac")
    again = SACBaseline.load(tmp_path / "sac")
    np.testing.assert_array_equal(again.allocate(gains), agent.allocate(gains))
    assert again.total_power == 0.4 and again.samples == 1000
    again.train(100)  # training continues after loading
    with pytest.raises(UserError, match="not a SAC baseline"):
        SACBaseline.load(tmp_path)
    with pytest.raises(UserError, match=r"sac\.extra.*bogus"):
        SACBaseline(sc, config=SACConfig(extra={"bogus": 1}))
