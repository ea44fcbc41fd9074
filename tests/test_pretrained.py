"""The small T1 model shipped inside the package (scripts/make_default_model.py): it loads with
``load_model()``, reaches >= 99.5 % of the optimum on fresh T1 draws, stays small, records where
it came from, and ``aigxctl info`` says so."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from aigxctl import checkpoint, data, load_model, scenarios
from aigxctl.errors import UserError
from aigxctl.evaluate import evaluate
from aigxctl.train import TrainConfig, train

SCRIPT = "scripts/make_default_model.py"
EVAL_SEED = 31337  # not a seed the script uses (data 1, weights 0, its evaluation 2024)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def text_of(stdout: str) -> str:
    """A table's text on one line, without its frame (so wrapped cells read whole)."""
    return " ".join(re.sub("[│┃┌┐└┘├┤┬┴┼─━┏┓┗┛]", " ", stdout).split())


def test_the_packaged_model_loads_and_reaches_the_optimum():
    path = checkpoint.default_model_path()
    assert path.is_dir() and (path / "model.safetensors").is_file()
    model = load_model()
    assert model.arch == "gdm" and model.m == 20
    assert model.config["weights_sha256"] == checkpoint.read_config(path)["weights_sha256"]
    gains = scenarios.draw(scenarios.get("t1"), 2000, EVAL_SEED)
    result = evaluate(model, gains, baselines=("equal",))
    assert result["fraction_of_optimum"] >= 0.995, result


def test_the_packaged_model_records_where_it_came_from():
    path = checkpoint.default_model_path()
    cfg = checkpoint.read_config(path)
    pre = cfg["pretrained"]
    assert pre["name"] == "t1" and pre["script"] == SCRIPT
    assert 0.995 <= pre["fraction_of_optimum"] <= 1.0
    assert re.fullmatch(r"[\d,]+ fresh T1 draws, seed \d+", pre["eval"])
    assert str(EVAL_SEED) not in pre["eval"]
    steps = cfg["train"]["steps"]
    assert cfg["progress"] == {"steps_done": steps, "steps_planned": steps, "complete": True}
    assert [d["scenario"] for d in cfg["data"]] == ["t1"]
    assert all("/" not in d["path"] for d in cfg["data"])  # no path of the machine it came from
    assert (Path(__file__).resolve().parents[1] / SCRIPT).is_file()


def test_the_packaged_model_is_small():
    path = checkpoint.default_model_path()
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert sum(p.stat().st_size for p in path.iterdir()) < 1 << 20


def test_a_missing_packaged_model_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL", "pretrained/none")
    with pytest.raises(UserError, match="packaged model is missing"):
        load_model()


def test_info_shows_the_packaged_models_provenance(run, monkeypatch):
    monkeypatch.setitem(os.environ, "COLUMNS", "200")
    fraction = checkpoint.read_config(checkpoint.default_model_path())["pretrained"][
        "fraction_of_optimum"]  # fmt: skip
    line = f"pretrained t1 ({SCRIPT}), {100 * fraction:.2f}% of the optimum"
    res = run("info")
    assert res.exit_code == 0, res.stderr
    assert line in text_of(res.stdout)
    assert str(checkpoint.default_model_path()) in text_of(res.stdout)
    res = run("info", "--model", checkpoint.default_model_path())
    assert res.exit_code == 0, res.stderr
    assert line in text_of(res.stdout)


def test_info_shows_a_trained_models_data_and_steps(run, tmp_path, monkeypatch):
    monkeypatch.setitem(os.environ, "COLUMNS", "200")
    dataset = tmp_path / "t1.npz"
    data.collect_to_file(scenarios.get("t1"), 300, 5, dataset)
    out = tmp_path / "m"
    train(TrainConfig(data=[str(dataset)], out=str(out), steps=10, hidden=8, batch=32,
                      val_every=5, val_samples=50))  # fmt: skip
    res = run("info", "--model", out)
    assert res.exit_code == 0, res.stderr
    text = text_of(res.stdout)
    assert "gdm hidden 8, trained on t1 (300 samples, seed 5), 10 of 10 steps" in text
    assert "pretrained" not in text
    cfg = json.loads((out / "config.json").read_text())
    cfg["progress"] = {"steps_done": 4, "steps_planned": 10, "complete": False}
    assert "4 of 10 steps, interrupted (--resume continues it)" in checkpoint.provenance(cfg)
