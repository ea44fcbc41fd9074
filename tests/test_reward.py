"""The reward route (no expert): its two objectives, the allocation map it trains, and (slow) the
figures the README quotes: >= 99 % of the optimum on T1 and at T3 (fine-tuning on T2 from the T1
policy) on held-out draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aigxctl import core, metrics, scenarios
from aigxctl.checkpoint import load_model
from aigxctl.reward import RewardConfig, train_reward


def held_out_fraction(path: Path, scenario: str, seed: int = 777) -> float:
    """The model's fraction of the optimum on 5000 fresh draws it never trained on."""
    scen = scenarios.get(scenario)
    gains = scen.sample(5000, np.random.default_rng(seed))
    model = load_model(path)
    rate = core.sum_rate(gains, model.allocate(gains, scen.total_power, seed=1), scen.noise)
    return float(rate.mean()) / metrics.optimum_rate(gains, scen.total_power, scen.noise)


def test_rate_objective_trains_the_simplex_map_and_beats_equal(tmp_path: Path):
    res = train_reward(RewardConfig(scenario="t2", out=str(tmp_path / "r"), steps=100, batch=64,
                                    hidden=64, lr=5e-3, val_every=50,
                                    val_samples=300))  # fmt: skip
    model = load_model(tmp_path / "r")
    assert model.alloc_map == "simplex" and model.config["objective"] == "rate"
    # Equal allocation reaches ~0.70 of the optimum on T2; the map switches channels off.
    assert 0.9 < res["val_fraction"] <= 1.0
    gains = scenarios.get("t2").sample(100, np.random.default_rng(0))
    assert (model.allocate(gains, seed=0) == 0).any()


def test_critic_objective_still_learns_with_any_map(tmp_path: Path):
    res = train_reward(RewardConfig(scenario="t1", out=str(tmp_path / "c"), steps=30, batch=64,
                                    hidden=32, val_every=15, val_samples=200, objective="critic",
                                    alloc_map="relu"))  # fmt: skip
    model = load_model(tmp_path / "c")
    assert model.alloc_map == "relu" and model.config["objective"] == "critic"
    assert 0.5 < res["val_fraction"] <= 1.0 and "critic_loss" in res


def test_fine_tuning_takes_the_runs_map(tmp_path: Path):
    train_reward(RewardConfig(scenario="t1", out=str(tmp_path / "a"), steps=5, batch=32,
                              hidden=16, alloc_map="abs"))  # fmt: skip
    train_reward(RewardConfig(scenario="t2", out=str(tmp_path / "b"), steps=5, batch=32,
                              init=str(tmp_path / "a")))  # fmt: skip
    assert load_model(tmp_path / "a").alloc_map == "abs"
    assert load_model(tmp_path / "b").alloc_map == "simplex"


def test_cli_map_and_objective(run, tmp_path: Path):
    res = run("train", "--mode", "reward", "--scenario", "t1", "--out", tmp_path / "m",
              "--map", "relu", "--objective", "rate", "--steps", "4", "--batch", "16",
              "--hidden", "8", "--val-every", "4")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert load_model(tmp_path / "m").alloc_map == "relu"
    res = run("train", "--mode", "reward", "--scenario", "t1", "--out", tmp_path / "n",
              "--map", "softmax")  # fmt: skip
    assert res.exit_code == 2 and "softmax" in res.stderr
    res = run("train", "--data", tmp_path / "d.npz", "--out", tmp_path / "e", "--map", "relu")
    assert res.exit_code == 2 and "--map does not apply to --mode expert" in res.stderr


@pytest.mark.slow
def test_reward_route_reaches_99_percent_on_t1_and_at_t3(tmp_path: Path):
    # The defaults, as `aigxctl train --mode reward --scenario t1` and the T3 fine-tune run them
    # (about a minute each on two CPU cores).
    t1, t3 = tmp_path / "t1", tmp_path / "t3"
    train_reward(RewardConfig(scenario="t1", out=str(t1)))
    train_reward(RewardConfig(scenario="t2", out=str(t3), init=str(t1)))
    assert held_out_fraction(t1, "t1") >= 0.99
    assert held_out_fraction(t3, "t2") >= 0.99
