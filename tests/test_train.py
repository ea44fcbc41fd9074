"""Training: the loss falls, runs are reproducible, an interrupted run resumes where it stopped,
fine-tuning starts from the given model, data-parallel ranks agree, and the CLI pipeline
(collect -> train -> evaluate -> allocate) works end to end on tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aigxctl import data, scenarios
from aigxctl.checkpoint import load_model
from aigxctl.errors import UserError
from aigxctl.train import TrainConfig, train

TINY = {"hidden": 16, "batch": 64, "val_every": 20, "val_samples": 100}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def weights(path: Path) -> list[torch.Tensor]:
    return [p.detach().clone() for p in load_model(path).denoiser.parameters()]


def test_loss_falls_and_metrics_are_logged(dataset, tmp_path):
    out = tmp_path / "m"
    first = train(TrainConfig(data=[str(dataset)], out=str(out), steps=1, lr=1e-3, **TINY))
    res = train(TrainConfig(data=[str(dataset)], out=str(out), steps=200, lr=3e-3, force=True,
                            **TINY))  # fmt: skip
    assert res["loss"] < first["loss"] / 3
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(20, 201, 20))
    assert 0 < lines[-1]["val_fraction"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"][0]["samples"] == 600 and cfg["metrics"]["step"] == 200


def test_same_seed_same_model(dataset, tmp_path):
    for name in ("a", "b"):
        train(TrainConfig(data=[str(dataset)], out=str(tmp_path / name), steps=15, seed=3, **TINY))
    for x, y in zip(weights(tmp_path / "a"), weights(tmp_path / "b"), strict=True):
        assert torch.equal(x, y)


def test_interrupted_run_resumes_from_its_step(dataset, tmp_path):
    straight = tmp_path / "straight"
    train(TrainConfig(data=[str(dataset)], out=str(straight), steps=40, **TINY))

    def stop_at_20(step, _metrics):
        if step == 20:
            raise KeyboardInterrupt

    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=[str(dataset)], out=str(broken), steps=40, **TINY), stop_at_20)
    assert json.loads((broken / "resume.json").read_text())["step"] == 20
    res = train(TrainConfig(data=[str(dataset)], out=str(broken), steps=40, resume=True, **TINY))
    assert res["step"] == 40
    assert not (broken / "resume.json").exists()
    for x, y in zip(weights(straight), weights(broken), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_fine_tune_starts_from_init_and_checks_m(dataset, tmp_path):
    base = tmp_path / "base"
    train(TrainConfig(data=[str(dataset)], out=str(base), steps=30, **TINY))
    t2 = tmp_path / "t2.npz"
    data.collect_to_file(scenarios.get("t2"), 300, 1, t2)
    tuned = tmp_path / "tuned"
    train(TrainConfig(data=[str(t2)], out=str(tuned), steps=1, lr=1e-9, init=str(base), **TINY))
    for x, y in zip(weights(base), weights(tuned), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)  # one tiny step from the init
    m8 = tmp_path / "m8.npz"
    data.save(data.Dataset(np.ones((10, 8)), np.full((10, 8), 0.025), np.zeros(10),
                           {"format": "aigxctl-dataset", "total_power": 0.2, "noise": 1.0}),
              m8)  # fmt: skip
    with pytest.raises(UserError, match="M = 20"):
        train(TrainConfig(data=[str(m8)], out=str(tmp_path / "x"), steps=1, init=str(base), **TINY))


def test_mlp_baseline_trains(dataset, tmp_path):
    res = train(TrainConfig(data=[str(dataset)], out=str(tmp_path / "mlp"), arch="mlp", steps=60,
                            **TINY))  # fmt: skip
    assert res["val_fraction"] > 0.8
    assert load_model(tmp_path / "mlp").arch == "mlp"


@pytest.mark.slow
def test_two_process_ddp_ranks_end_identical(dataset, tmp_path):
    res = train(TrainConfig(data=[str(dataset)], out=str(tmp_path / "ddp"), steps=10, nproc=2,
                            **TINY))  # fmt: skip
    assert res["rank0_weights_sha256"] == res["rank1_weights_sha256"]
    assert (tmp_path / "ddp" / "model.safetensors").exists()


def test_cli_pipeline(run, tmp_path):
    t1 = tmp_path / "t1.npz"
    assert run("collect", "-s", "t1", "-n", "400", "--out", t1).exit_code == 0
    model = tmp_path / "model"
    res = run("train", "--data", t1, "--out", model, "--steps", "40", "--hidden", "16",
              "--batch", "64", "--val-every", "20")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "of the optimum" in res.stderr
    res = run("evaluate", "--model", model, "--scenario", "t2", "--samples", "300", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for key in ("model_rate", "optimum_rate", "equal_rate", "fraction_of_optimum",
                "gain_over_equal", "decisions_per_s"):  # fmt: skip
        assert key in doc
    assert doc["optimum_rate"] >= doc["model_rate"]
    gains = tmp_path / "g.csv"
    np.savetxt(gains, scenarios.get("t1").sample(5, np.random.default_rng(0)), delimiter=",")
    res = run("allocate", "--method", "gdm", "--model", model, "--gains", gains)
    assert res.exit_code == 0, res.output
    rows = np.array([[float(v) for v in ln.split(",")] for ln in res.stdout.splitlines()[1:]])
    np.testing.assert_allclose(rows[:, :20].sum(axis=1), 0.2, rtol=1e-5)
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    res = run("allocate", "--method", "gdm", "--model", model, "--gains", bad)
    assert res.exit_code == 2 and "M = 20" in res.stderr
    res = run("info", "--model", model)
    assert res.exit_code == 0 and "fused" in res.stdout
    res = run("evaluate", "--model", tmp_path / "nope", "--scenario", "t1")
    assert res.exit_code == 2 and "no such model directory" in res.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rate_weight": -1.0}, "--rate-weight"),
        ({"rate_weight": float("nan")}, "--rate-weight"),
        ({"steps": 0}, "--steps"),
        ({"lr": 0.0}, "--lr"),
        ({"arch": "cnn"}, "--arch"),
        ({"pred": "v"}, "--pred"),
        ({"schedule": "sigmoid"}, "--schedule"),
        ({"resume": True, "init": "x"}, "exclude each other"),
        ({"data": []}, "--data"),
    ],
)
def test_options_are_checked(tmp_path, change, message):
    cfg = {"data": ["unused.npz"], "out": str(tmp_path / "m"), **TINY, **change}
    with pytest.raises(UserError, match=message):
        train(TrainConfig(**cfg))


def test_mse_only_training_is_recorded(dataset, tmp_path):
    out = tmp_path / "mse"
    train(TrainConfig(data=[str(dataset)], out=str(out), steps=5, rate_weight=0.0, **TINY))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["rate_weight"] == 0.0 and cfg["train"]["steps"] == 5


def test_a_diverging_run_stops_with_an_error_and_saves_nothing(dataset, tmp_path):
    out = tmp_path / "nan"
    cfg = TrainConfig(
        data=[str(dataset)], out=str(out), steps=40, lr=1e4, **{**TINY, "val_every": 10}
    )
    with pytest.raises(UserError, match=r"training diverged: the loss is nan at step \d+"):
        train(cfg)
    assert not out.exists()


def test_checkpoint_files_get_the_same_permissions(dataset, tmp_path):
    out = tmp_path / "perm"
    train(TrainConfig(data=[str(dataset)], out=str(out), steps=2, **TINY))
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.json"], modes


def test_bench_sample_times_a_checkpoints_allocate(run, dataset, tmp_path):
    train(TrainConfig(data=[str(dataset)], out=str(tmp_path / "g"), steps=2, **TINY))
    res = run("bench", "sample", "--model", tmp_path / "g", "--batches", "1,5", "--repeats", "1",
              "--contenders", "fused,torch", "--json")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["model"]["api"] == "allocate" and doc["model"]["hidden"] == 16
    assert [c["batch"] for c in doc["cases"]] == [1, 5]
    assert all(set(c["allocations_per_s"]) == {"fused", "torch"} for c in doc["cases"])
    train(TrainConfig(data=[str(dataset)], out=str(tmp_path / "r"), arch="mlp", steps=2, **TINY))
    res = run("bench", "sample", "--model", tmp_path / "r", "--batches", "1", "--repeats", "1")
    assert res.exit_code == 2 and "times a gdm model" in res.stderr
