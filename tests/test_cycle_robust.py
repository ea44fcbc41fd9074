"""The cycle's robust row: one model for all weather, trained in T1 (or given), evaluated in
every phase and never retrained."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from aigxctl.checkpoint import load_model
from aigxctl.cycle import CycleConfig, load_config, run_cycle
from aigxctl.errors import UserError

TINY = CycleConfig(samples=400, t1_steps=30, t3_steps=20, eval_samples=200, hidden=16,
                   val_every=10, sac=False, mlp=False, robust="weather", robust_samples=600,
                   robust_steps=60)  # fmt: skip


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("robust") / "run"
    return out, run_cycle(TINY, out)


def test_the_family_model_is_trained_once_and_shown_in_every_phase(robust_run):
    out, report = robust_run
    assert [p["name"] for p in report["phases"]] == ["T1", "T2", "T3"]
    for phase in report["phases"]:
        assert {"gdm", "robust", "optimum", "equal"} <= set(phase["methods"])
        assert 0.5 < phase["methods"]["robust"]["fraction_of_optimum"] <= 1.0
    # T2 and T3 are evaluated on the same draws and the robust model is never retrained.
    t2, t3 = (report["phases"][i]["methods"]["robust"] for i in (1, 2))
    assert t2 == t3
    assert load_model(out / "models" / "robust_gdm").m == 20
    assert not (out / "models" / "t3_robust").exists()
    assert "robust_gdm" in report["train_seconds"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    robust = [r for r in rows if r["method"] == "robust" and r["phase"] == "T1"]
    # Its 60 steps are drawn across T1's 30-step band, ending where T1 ends.
    assert robust and max(r["step"] for r in robust) == TINY.t1_steps
    assert {r["phase"] for r in rows if r["method"] == "robust"} == {"T1", "T2"}
    assert (out / "cycle.png").read_bytes()[:4] == b"\x89PNG"


def test_a_given_model_for_all_weather_is_evaluated_not_trained(robust_run, tmp_path: Path):
    out, first = robust_run
    cfg = replace(TINY, robust="", robust_model=str(out / "models" / "robust_gdm"))
    report = run_cycle(cfg, tmp_path / "again")
    assert not (tmp_path / "again" / "models" / "robust_gdm").exists()
    # Same model, same evaluation draws, same seed: the same figures.
    for mine, theirs in zip(report["phases"], first["phases"], strict=True):
        assert mine["methods"]["robust"] == theirs["methods"]["robust"]


def test_robust_settings_are_checked_before_anything_runs(tmp_path: Path):
    both = tmp_path / "both.toml"
    both.write_text('[cycle]\nrobust = "weather"\nrobust_model = "m"\n')
    with pytest.raises(UserError, match="give one of them"):
        load_config(both)
    bad = tmp_path / "bad.toml"
    bad.write_text('[cycle]\nrobust = "nowhere.toml"\n')
    with pytest.raises(UserError, match=r"nowhere\.toml"):
        load_config(bad)
    small = tmp_path / "m8.toml"
    small.write_text('name = "m8"\nchannels = 8\ntotal_power = 0.2\nnoise = 1.0\n[[groups]]\n'
                     'channels = 8\nmodel = "uniform"\nlow = 1.0\nhigh = 2.0\n')  # fmt: skip
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"robust: .* has M = 8, T1 has M = 20"):
        run_cycle(replace(TINY, robust=str(small)), out)
    with pytest.raises(UserError, match="missing-model"):
        run_cycle(replace(TINY, robust="", robust_model=str(tmp_path / "missing-model")), out)
    assert not out.exists()
