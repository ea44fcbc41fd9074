"""Datasets: collect labels gains with the exact optimum, files are deterministic and atomic, and
loading rejects anything that is not a sound aigxctl dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference import waterfill_sorted

import aigxctl
from aigxctl import data, scenarios
from aigxctl.errors import UserError


def test_collect_writes_the_exact_optimum(tmp_path: Path):
    out = tmp_path / "t1.npz"
    info = data.collect_to_file(scenarios.get("t1"), 3000, 1, out)
    d = data.load(out, check_optimal=True)
    assert d.gains.shape == d.power.shape == (3000, 20) and d.sum_rate.shape == (3000,)
    assert d.total_power == 0.2 and d.noise == 1.0 and d.meta["seed"] == 1
    assert d.meta["scenario"]["name"] == "t1" and d.meta["aigxctl_version"] == aigxctl.__version__
    for i in (0, 1234, 2999):  # checked independently of the core
        np.testing.assert_allclose(d.power[i], waterfill_sorted(d.gains[i], 0.2), rtol=1e-9,
                                   atol=1e-13)  # fmt: skip
    np.testing.assert_allclose(d.sum_rate, aigxctl.sum_rate(d.gains, d.power))
    assert info["expert_rate"] > info["equal_rate"]


def test_same_seed_same_arrays_other_seed_other_draws(tmp_path: Path):
    s = scenarios.get("t2")
    a, b, c = (tmp_path / f"{n}.npz" for n in "abc")
    data.collect_to_file(s, 70_000, 3, a)  # spans two draw chunks
    data.collect_to_file(s, 70_000, 3, b)
    data.collect_to_file(s, 70_000, 4, c)
    da, db, dc = data.load(a), data.load(b), data.load(c)
    for key in ("gains", "power", "sum_rate"):
        np.testing.assert_array_equal(getattr(da, key), getattr(db, key))
    assert not np.array_equal(da.gains, dc.gains)
    mem = data.collect(s, 70_000, 3)
    np.testing.assert_array_equal(mem.gains, da.gains)


def test_total_power_override_and_csv(tmp_path: Path):
    out = tmp_path / "t.csv"
    data.collect_to_file(scenarios.get("t1"), 10, 0, out, total_power=1.5, csv=True)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("g1,") and lines[0].endswith(",sum_rate") and len(lines) == 11
    row = np.array([float(v) for v in lines[1].split(",")])
    assert row[20:40].sum() == pytest.approx(1.5, rel=1e-8)


def save_npz(path: Path, **arrays) -> Path:
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def good_arrays() -> dict:
    d = data.collect(scenarios.get("t1"), 20, 0)
    return {"gains": d.gains, "power": d.power, "sum_rate": d.sum_rate,
            "meta": np.array(json.dumps(d.meta))}  # fmt: skip


def broken(case: str) -> dict:
    a = good_arrays()
    if case == "missing key":
        del a["power"]
    elif case == "nan":
        a["gains"][3, 4] = np.nan
    elif case == "power sum":
        a["power"][5] *= 1.1
    elif case == "shape":
        a["sum_rate"] = a["sum_rate"][:-1]
    elif case == "foreign meta":
        a["meta"] = np.array(json.dumps({"format": "other"}))
    elif case == "negative power":
        a["power"][2, 0] = -0.1
    return a


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing key", "missing power"),
        ("nan", "gains[3, 4] is not finite"),
        ("power sum", "power row 5 adds up to"),
        ("shape", "shapes disagree"),
        ("foreign meta", "not an aigxctl dataset"),
        ("negative power", "power[2, 0] is negative"),
    ],
)
def test_load_rejects_bad_datasets(tmp_path: Path, case, message):
    path = save_npz(tmp_path / "bad.npz", **broken(case))
    with pytest.raises(UserError) as info:
        data.load(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_load_rejects_truncated_and_foreign_files(tmp_path: Path):
    good = tmp_path / "good.npz"
    data.save(data.collect(scenarios.get("t1"), 50, 0), good)
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    for path in (truncated, text):
        with pytest.raises(UserError, match=str(path)):
            data.load(path)
    with pytest.raises(UserError, match="no such dataset"):
        data.load(tmp_path / "missing.npz")


def test_cli_collect(run, tmp_path: Path):
    out = tmp_path / "t1.npz"
    res = run("collect", "--scenario", "t1", "--samples", "500", "--seed", "1", "--out", out)
    assert res.exit_code == 0, res.output
    assert "500 samples of t1" in res.stderr and "over equal" in res.stderr
    assert data.load(out).n == 500
    before = out.read_bytes()
    res = run("collect", "--scenario", "t1", "--samples", "10", "--out", out)
    assert res.exit_code == 2 and "--force" in res.stderr and out.read_bytes() == before
    res = run("collect", "--scenario", "t1", "--samples", "10", "--out", out, "--force")
    assert res.exit_code == 0 and data.load(out).n == 10
    res = run("collect", "--scenario", "t1", "--samples", "0", "--out", tmp_path / "x.npz")
    assert res.exit_code == 2 and "--samples" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.npz"]
