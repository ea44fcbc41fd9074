"""Datasets: collect labels gains with the exact optimum, files are deterministic, streamed and
atomic, and loading rejects anything that is not a sound aigxctl dataset."""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from reference import sum_rate as ref_sum_rate
from reference import waterfill_sorted

import aigxctl
from aigxctl import data, scenarios
from aigxctl.errors import UserError

EXAMPLE = Path(__file__).parent.parent / "examples" / "rainstorm.toml"


def test_collect_writes_the_exact_optimum(tmp_path: Path):
    out = tmp_path / "t1.npz"
    info = data.collect_to_file(scenarios.get("t1"), 3000, 1, out)
    d = data.load(out, check_optimal=True)
    assert d.gains.shape == d.power.shape == (3000, 20) and d.sum_rate.shape == (3000,)
    assert d.gains.dtype == d.power.dtype == d.sum_rate.dtype == np.float64
    assert (d.n, d.m, d.path) == (3000, 20, out)
    assert d.total_power == 0.2 and d.noise == 1.0 and d.meta["seed"] == 1
    assert d.meta["format"] == "aigxctl-dataset" and d.meta["version"] == 1
    assert (d.meta["samples"], d.meta["channels"]) == (3000, 20)
    assert d.meta["scenario"] == scenarios.get("t1").to_dict()
    assert d.meta["aigxctl_version"] == aigxctl.__version__ and d.meta["created"]
    for i in (0, 1234, 2999):  # checked independently of the core
        np.testing.assert_allclose(d.power[i], waterfill_sorted(d.gains[i], 0.2), rtol=1e-9,
                                   atol=1e-13)  # fmt: skip
    np.testing.assert_allclose(d.sum_rate, ref_sum_rate(d.gains, d.power), rtol=1e-12)
    np.testing.assert_allclose(d.power.sum(axis=1), 0.2, rtol=1e-12)
    assert info["expert_rate"] == pytest.approx(d.sum_rate.mean(), rel=1e-12)
    equal = ref_sum_rate(d.gains, np.full_like(d.gains, 0.2 / 20)).mean()
    assert info["equal_rate"] == pytest.approx(equal, rel=1e-12)
    assert info["expert_rate"] > info["equal_rate"]


def test_file_is_a_plain_npz(tmp_path: Path):
    out = tmp_path / "t2.npz"
    data.collect_to_file(scenarios.get("t2"), 100, 0, out)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["gains.npy", "meta.npy", "power.npy", "sum_rate.npy"]
        assert zf.testzip() is None  # CRCs right
    with np.load(out, allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["samples"] == 100
        assert z["gains"].shape == (100, 20)


def test_same_seed_same_arrays_other_seed_other_draws(tmp_path: Path):
    s = scenarios.get(EXAMPLE)
    n = scenarios.CHUNK_ROWS + 4000  # spans two draw chunks
    a, b, c = (tmp_path / f"{name}.npz" for name in "abc")
    data.collect_to_file(s, n, 3, a)
    data.collect_to_file(s, n, 3, b, chunk=10_000)
    data.collect_to_file(s, n, 4, c)
    da, db, dc = data.load(a), data.load(b), data.load(c)
    for key in ("gains", "power", "sum_rate"):
        np.testing.assert_array_equal(getattr(da, key), getattr(db, key))
    assert not np.array_equal(da.gains, dc.gains)
    mem = data.collect(s, n, 3, chunk=777)
    for key in ("gains", "power", "sum_rate"):
        np.testing.assert_array_equal(getattr(mem, key), getattr(da, key))
    np.testing.assert_array_equal(data.collect(s, 500, 3).gains, da.gains[:500])


def test_streaming_keeps_memory_bounded(tmp_path: Path, monkeypatch):
    # Small blocks so that N = 400 000 is many of them: one [N, 20] float64 array is 64 MB; the
    # streamed run holds a few blocks and a 4 MB copy buffer (~10 MB here, ~70 MB with the real
    # 65536-row blocks, whatever N is).
    monkeypatch.setattr(scenarios, "CHUNK_ROWS", 4096)
    n = 400_000
    tracemalloc.start()
    try:
        data.collect_to_file(scenarios.get("t1"), n, 0, tmp_path / "big.npz", chunk=4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * n * 20 * 8
    assert data.load(tmp_path / "big.npz").n == n


def test_total_power_override_and_csv(tmp_path: Path):
    out = tmp_path / "t.csv"
    info = data.collect_to_file(scenarios.get("t1"), 10, 0, out, total_power=1.5, csv=True)
    assert info["total_power"] == 1.5 and info["scenario"]["total_power"] == 1.5
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(
        [*(f"g{i}" for i in range(1, 21)), *(f"p{i}" for i in range(1, 21)), "sum_rate"]
    )
    assert len(lines) == 11
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    mem = data.collect(scenarios.get("t1"), 10, 0, total_power=1.5)
    np.testing.assert_array_equal(table[:, :20], mem.gains)  # the same float64 values
    np.testing.assert_array_equal(table[:, 20:40], mem.power)
    np.testing.assert_array_equal(table[:, 40], mem.sum_rate)
    np.testing.assert_allclose(table[:, 20:40].sum(axis=1), 1.5, rtol=1e-12)


def test_equal_rate_summary_matches_the_core_even_when_huge():
    rng = np.random.default_rng(0)
    for gains, p in ((rng.uniform(1, 7, (50, 20)), 0.2), (rng.uniform(1e5, 1e6, (5, 300)), 300.0)):
        want = ref_sum_rate(gains, np.full_like(gains, p / gains.shape[1])).sum()
        assert data._equal_rate_sum(gains, p, 1.0) == pytest.approx(want, rel=1e-12)


def test_collect_refuses_bad_arguments(tmp_path: Path):
    s = scenarios.get("t1")
    with pytest.raises(UserError, match="samples must be >= 1"):
        data.collect_to_file(s, 0, 0, tmp_path / "x.npz")
    with pytest.raises(UserError, match="seed must be an integer >= 0"):
        data.collect_to_file(s, 10, -3, tmp_path / "x.npz")
    with pytest.raises(UserError, match="total power"):
        data.collect(s, 10, 0, total_power=-1.0)
    with pytest.raises(UserError, match="samples must be >= 1"):
        data.collect(s, -1, 0)
    with pytest.raises(UserError, match="does not exist"):
        data.collect_to_file(s, 10, 0, tmp_path / "nowhere" / "x.npz")
    with pytest.raises(UserError, match="is a directory"):
        data.collect_to_file(s, 10, 0, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temporary files left behind


def test_a_failed_run_leaves_the_old_file(tmp_path: Path):
    out = tmp_path / "t1.npz"
    data.collect_to_file(scenarios.get("t1"), 100, 0, out)
    before = out.read_bytes()

    def boom(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data.collect_to_file(scenarios.get("t1"), 100_000, 0, out, progress=boom)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t1.npz"]


def save_npz(path: Path, **arrays) -> Path:
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def good_arrays() -> dict:
    d = data.collect(scenarios.get("t1"), 20, 0)
    return {"gains": d.gains, "power": d.power, "sum_rate": d.sum_rate,
            "meta": np.array(json.dumps(d.meta))}  # fmt: skip


def meta_with(**changes) -> np.ndarray:
    meta = data.collect(scenarios.get("t1"), 1, 0).meta
    meta.update(changes)
    return np.array(json.dumps(meta))


BROKEN = {
    "missing key": (lambda a: a.pop("power"), "missing power"),
    "extra only": (lambda a: a.pop("meta"), "missing meta"),
    "nan gain": (lambda a: a["gains"].__setitem__((3, 4), np.nan), "gains[3, 4] is not finite"),
    "inf power": (lambda a: a["power"].__setitem__((1, 2), np.inf), "power[1, 2] is not finite"),
    "power sum": (lambda a: a["power"].__setitem__(5, a["power"][5] * 1.1), "power row 5 adds up"),
    "short sum_rate": (lambda a: a.__setitem__("sum_rate", a["sum_rate"][:-1]), "shapes disagree"),
    "1-d gains": (lambda a: a.__setitem__("gains", a["gains"][0]), "gains must be a non-empty"),
    "int gains": (
        lambda a: a.__setitem__("gains", np.ones((20, 20), int)),
        "gains must hold floats",
    ),
    "negative power": (lambda a: a["power"].__setitem__((2, 0), -0.1), "power[2, 0] is negative"),
    "negative gain": (lambda a: a["gains"].__setitem__((0, 7), -1.0), "gains[0, 7] is negative"),
    "foreign meta": (
        lambda a: a.__setitem__("meta", np.array(json.dumps({"format": "other"}))),
        "not an aigxctl dataset",
    ),
    "meta not json": (lambda a: a.__setitem__("meta", np.array("{oops")), "not a JSON string"),
    "meta numeric": (lambda a: a.__setitem__("meta", np.arange(3.0)), "not a JSON string"),
    "newer version": (lambda a: a.__setitem__("meta", meta_with(version=9)), "version 9 is newer"),
    "bad power meta": (
        lambda a: a.__setitem__("meta", meta_with(total_power="lots")),
        "metadata total_power must be a number > 0",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_load_rejects_bad_datasets(tmp_path: Path, case):
    arrays = good_arrays()
    change, message = BROKEN[case]
    change(arrays)
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError) as info:
        data.load(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_load_accepts_rows_without_a_usable_channel(tmp_path: Path):
    arrays = good_arrays()
    arrays["gains"][4] = 0.0
    arrays["power"][4] = 0.0
    assert data.load(save_npz(tmp_path / "ok.npz", **arrays)).n == 20


def test_check_optimal_catches_feasible_but_wrong_powers(tmp_path: Path):
    arrays = good_arrays()
    arrays["power"][:] = 0.2 / 20  # equal split: sums to P, not the optimum
    path = save_npz(tmp_path / "equal.npz", **arrays)
    assert data.load(path).n == 20
    with pytest.raises(UserError, match="differ from water-filling"):
        data.load(path, check_optimal=True)


def test_load_rejects_truncated_and_foreign_files(tmp_path: Path):
    good = tmp_path / "good.npz"
    data.save(data.collect(scenarios.get("t1"), 50, 0), good)
    assert data.load(good).n == 50
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    npy = tmp_path / "plain.npy"
    np.save(npy, np.ones((3, 3)))
    pickled = save_npz(tmp_path / "pickled.npz", **{**good_arrays(), "gains": np.array([{}])})
    for path in (truncated, text, npy, pickled, tmp_path):
        with pytest.raises(UserError) as info:
            data.load(path)
        assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(UserError, match="no such dataset"):
        data.load(tmp_path / "missing.npz")
