"""The virtuous cycle end to end on tiny sizes, its config errors, and training from the reward
alone (no expert)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aigxctl.checkpoint import load_model
from aigxctl.cycle import CycleConfig, load_config, run_cycle
from aigxctl.errors import UserError
from aigxctl.reward import RewardConfig, train_reward

TINY = CycleConfig(samples=400, t1_steps=30, t3_steps=20, eval_samples=200, hidden=16,
                   val_every=10, sac=False, retrain="both")  # fmt: skip


@pytest.mark.slow
def test_tiny_cycle_writes_report_plot_and_checkpoints(tmp_path: Path):
    report = run_cycle(TINY, tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc == json.loads(json.dumps(report))
    assert [p["name"] for p in doc["phases"]] == ["T1", "T2", "T3"]
    for phase in doc["phases"]:
        assert {"gdm", "optimum", "equal", "mlp"} <= set(phase["methods"])
        for m in phase["methods"].values():
            assert set(m) == {"rate", "fraction_of_optimum", "gain_over_equal"}
        assert phase["methods"]["optimum"]["fraction_of_optimum"] == pytest.approx(1.0)
    assert doc["phases"][1]["eval_scenario"] == "t2"
    assert "gdm_combined" in doc["phases"][2]["methods"]
    assert doc["sac"]["status"] == "skipped"
    png = (tmp_path / "run" / "cycle.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (tmp_path / "run" / "cycle.svg").read_text().lstrip().startswith("<?xml")
    for name in ("t1_gdm", "t1_mlp", "t3_gdm", "t3_gdm_combined", "t3_mlp"):
        assert load_model(tmp_path / "run" / "models" / name).m == 20
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} >= {"T1", "T2", "T3"}


def test_tiny_cycle_with_sac_saves_the_agent_and_what_it_got(tmp_path: Path):
    pytest.importorskip("stable_baselines3")
    from dataclasses import replace

    from aigxctl.baselines.sac import SACBaseline

    cfg = replace(TINY, sac=True, sac_steps=64, mlp=False, retrain="finetune")
    doc = run_cycle(cfg, tmp_path / "run")
    assert all("sac" in p["methods"] for p in doc["phases"])
    assert doc["sac"]["status"] == "trained"
    assert [h["samples"] for h in doc["sac"]["history"]] == [64, 64]
    assert [h["scenario"] for h in doc["sac"]["history"]] == ["t1", "t2"]
    for name in ("t1_sac", "t3_sac"):
        assert SACBaseline.load(tmp_path / "run" / "models" / name).m == 20


def test_cycle_config_file_and_errors(tmp_path: Path):
    good = tmp_path / "c.toml"
    good.write_text('[cycle]\nsamples = 100\nretrain = "combined"\nt3_lr = 1\n')
    cfg = load_config(good)
    assert cfg.samples == 100 and cfg.retrain == "combined" and cfg.t3_lr == 1.0
    example = Path(__file__).parent.parent / "examples" / "cycle.toml"
    assert load_config(example) == CycleConfig()
    cases = {
        '[cycle]\ncolour = "red"\n': "cycle.colour: unknown key",
        "[cycle]\nsamples = 0\n": "samples must be >= 1",
        '[cycle]\nsamples = "many"\n': "cycle.samples: expected int",
        '[cycle]\nretrain = "never"\n': "retrain must be",
        '[cycle]\ntraining = "guess"\n': "training must be expert or reward",
        '[cycle]\ntraining = "reward"\nretrain = "both"\n': 'set retrain = "finetune"',
        "[cycle]\nt3_lr = 0\n": "t3_lr must be a finite number > 0",
        "[cycle]\nt3_rate_weight = -0.5\n": "t3_rate_weight must be a finite number >= 0",
        "[cycle]\nrate_weight = nan\n": "rate_weight must be a finite number >= 0",
        '[cycle]\nt1_scenario = "t9"\n': "unknown scenario 't9'",
        "[cycle\n": "not valid TOML",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            load_config(bad)
    with pytest.raises(UserError, match="no such cycle config"):
        load_config(tmp_path / "missing.toml")


def test_cycle_cli_quick_errors(run, tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cycle]\nsamples = -3\n")
    res = run("cycle", "--config", bad, "--out", tmp_path / "run")
    assert res.exit_code == 2 and "samples must be >= 1" in res.stderr


def test_reward_training_learns_without_an_expert(tmp_path: Path):
    res = train_reward(RewardConfig(scenario="t1", out=str(tmp_path / "rw"), steps=40, batch=64,
                                    hidden=32, val_every=20, val_samples=200))  # fmt: skip
    assert 0.8 < res["val_fraction"] <= 1.0  # equal allocation alone reaches ~0.835
    model = load_model(tmp_path / "rw")
    assert model.config["training"] == "reward"
    assert (tmp_path / "rw" / "metrics.jsonl").read_text().count("\n") == 2


def test_tiny_cycle_trains_the_gdm_from_the_reward(tmp_path: Path):
    from dataclasses import replace

    cfg = replace(TINY, training="reward", retrain="finetune", mlp=False)
    doc = run_cycle(cfg, tmp_path / "run")
    assert doc["config"]["training"] == "reward"
    t1 = load_model(tmp_path / "run" / "models" / "t1_gdm")
    t3 = load_model(tmp_path / "run" / "models" / "t3_gdm")
    assert t1.config["training"] == t3.config["training"] == "reward"
    assert t3.config["init"] == str(tmp_path / "run" / "models" / "t1_gdm")
    assert t3.config["scenario"]["name"] == "t2"
    # Fine-tuning keeps the T1 model's condition normalisation.
    assert t3.config["cond_mean"] == t1.config["cond_mean"]
    assert 0.5 < doc["phases"][2]["methods"]["gdm"]["fraction_of_optimum"] <= 1.0  # feasible


def test_reward_fine_tuning_checks_the_initial_model(tmp_path: Path):
    from aigxctl import data, scenarios
    from aigxctl.train import TrainConfig, train

    with pytest.raises(UserError, match="critic_warmup"):
        train_reward(RewardConfig(scenario="t1", out=str(tmp_path / "x"), steps=5,
                                  critic_warmup=5))  # fmt: skip
    data.collect_to_file(scenarios.get("t1"), 200, 0, tmp_path / "d.npz")
    train(TrainConfig(data=[str(tmp_path / "d.npz")], out=str(tmp_path / "mlp"), arch="mlp",
                      steps=2, hidden=8, val_every=1))  # fmt: skip
    with pytest.raises(UserError, match="cannot seed reward training"):
        train_reward(RewardConfig(scenario="t2", out=str(tmp_path / "y"), steps=5,
                                  init=str(tmp_path / "mlp")))  # fmt: skip


def test_reward_mode_cli_checks_its_options(run, tmp_path: Path):
    res = run("train", "--out", tmp_path / "m", "--mode", "reward")
    assert res.exit_code == 2 and "--scenario" in res.stderr
    res = run("train", "--out", tmp_path / "m", "--scenario", "t1")
    assert res.exit_code == 2 and "--mode reward" in res.stderr
    res = run("train", "--out", tmp_path / "r", "--mode", "reward", "--scenario", "t1",
              "--steps", "3", "--batch", "32", "--hidden", "8", "--val-every", "3")  # fmt: skip
    assert res.exit_code == 0 and "3 steps on 96 samples" in res.stderr  # --batch is used
