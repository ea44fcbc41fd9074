"""Bounded inputs: every size, range and nesting a user can give is checked against a named
limit before anything is allocated, and a violation is one line naming the file, key or option
and the allowed range (never a MemoryError, RecursionError, overflow or hang)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from aigxctl import bench, core, data, scenarios
from aigxctl.allocation import equal_split
from aigxctl.checkpoint import save_model
from aigxctl.cycle import load_config
from aigxctl.diffusion import Schedule
from aigxctl.errors import UserError
from aigxctl.evaluate import evaluate
from aigxctl.model import GDM, MAX_BEST_OF, Denoiser, MLPAllocator, Regressor
from aigxctl.reward import RewardConfig
from aigxctl.scenarios import Group, Scenario

GROUP = '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = 1\n'


def group(**params: object) -> str:
    """A rayleigh group TOML with ``params`` added or replaced."""
    fields = {"channels": 2, "model": '"rayleigh"', "mean": 1, **params}
    return "[[groups]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items())


def one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(exc.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)


# --- scenario files -------------------------------------------------------------------------

OUT_OF_RANGE = {
    "a billion channels": (group(channels=1_000_000_000), "groups[0].channels",
                           "must be an integer >= 1 and <= 65536"),
    "attenuation 1e6 dB": (group(attenuation_db="1e6"), "groups[0].attenuation_db",
                           "must be >= -100 and <= 300"),
    "attenuation -4000 dB": (group(attenuation_db=-4000), "groups[0].attenuation_db",
                             "must be >= -100 and <= 300"),
    "shadowing 1e5 dB": (group(shadowing_db="1e5"), "groups[0].shadowing_db",
                         "must be >= 0 and <= 30"),
    "huge mean": (group(mean="1e300"), "groups[0].mean", "<= 1e+30"),
    "subnormal mean": (group(mean="1e-320"), "groups[0].mean", ">= 1e-30"),
    "huge K": ('[[groups]]\nchannels = 2\nmodel = "rician"\nk_factor = 1e300\nmean = 1\n',
               "groups[0].k_factor", "must be >= 0 and <= 1e+06"),
    "huge m": ('[[groups]]\nchannels = 2\nmodel = "nakagami"\nm = 1e300\nmean = 1\n',
               "groups[0].m", "must be >= 0.5 and <= 1e+06"),
    "huge high": ('[[groups]]\nchannels = 2\nmodel = "uniform"\nlow = 1\nhigh = 1e300\n',
                  "groups[0].high", "<= 1e+30"),
    "integer past float64": (group(mean="9" * 400), "groups[0].mean", "must be finite"),
    "huge power": ("total_power = 1e300\n" + GROUP, "total_power", "<= 1e+30"),
    "subnormal noise": ("noise = 1e-320\n" + GROUP, "noise", ">= 1e-30"),
    "groups add up past the limit": (
        group(channels=40_000) + group(channels=40_000), "groups", "add up to 80,000 channels"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_scenario_values_out_of_range_name_file_key_and_range(tmp_path: Path, case):
    text, key, message = OUT_OF_RANGE[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        scenarios.get(path)
    one_line(info, f"{path}: {key}: ", message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = " + "[" * 10_000 + "]" * 10_000 + "\n", "nested too deep"),
        ("a = " + "{b = " * 10_000 + "1" + "}" * 10_000 + "\n", "nested too deep"),
        # Parsed, but deeper than any scenario can be: refused before anything reads it.
        ("a = " + "[" * 50 + "]" * 50 + "\n" + GROUP, "nested more than 16 deep"),
    ],
)
def test_nesting_bombs_are_one_line(tmp_path: Path, text, message):
    path = tmp_path / "deep.toml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        scenarios.get(path)
    one_line(info, f"{path}: ", message)


def test_scenario_file_size_is_bounded(tmp_path: Path):
    path = tmp_path / "big.toml"
    path.write_text(GROUP + "#" * scenarios.MAX_TOML_BYTES + "\n")
    with pytest.raises(UserError) as info:
        scenarios.get(path)
    one_line(info, f"{path}: too big for a scenario file (more than 1024 KiB)")


def test_the_corners_of_the_ranges_draw_finite_gains_and_rates():
    lo, hi = scenarios.SCALE_RANGE
    att_lo, att_hi = scenarios.ATTENUATION_DB_RANGE
    shadow = scenarios.SHADOWING_DB_RANGE[1]
    for mean, att, p, s2 in ((hi, att_lo, hi, lo), (lo, att_hi, lo, hi)):
        s = Scenario("corner", (
            Group(3, "rayleigh", {"mean": mean}, attenuation_db=att, shadowing_db=shadow),
            Group(3, "rician", {"k_factor": 1e6, "mean": mean}, attenuation_db=att),
            Group(3, "nakagami", {"m": 1e6, "mean": mean}, shadowing_db=shadow),
        ), total_power=p, noise=s2)  # fmt: skip
        g = scenarios.draw(s, 2000, 0)
        assert np.isfinite(g).all() and (g >= np.finfo(float).tiny).all()
        rate = core.sum_rate(g, core.waterfill(g, p, s2), s2)
        assert np.isfinite(rate).all()


# --- in-memory draw sizes, and bounded chunks for any M --------------------------------------


def test_in_memory_draws_are_bounded():
    s = scenarios.get("t1")
    most = scenarios.MAX_DRAW_BYTES // (8 * 20)
    for call in (
        lambda: scenarios.draw(s, 10**12, 0),
        lambda: scenarios.estimate(s, 10**12, 0),
        lambda: s.sample(10**12, np.random.default_rng(0)),
    ):
        with pytest.raises(UserError) as info:
            call()
        one_line(info, f"samples must be <= {most:,} for M = 20 channels", "2 GiB")


def test_draws_in_parts_give_the_same_rows(monkeypatch):
    s = Scenario("every stream", (
        Group(2, "uniform", {"low": 1.0, "high": 2.0}),
        Group(3, "rayleigh", {"mean": 2.0}, shadowing_db=3.0),
        Group(2, "rician", {"k_factor": 2.0, "mean": 2.0}, attenuation_db=1.0),
        Group(3, "nakagami", {"m": 0.7, "mean": 2.0}, shadowing_db=1.0),
    ))  # fmt: skip
    alone = Scenario("one group", (Group(4, "rician", {"k_factor": 1.0, "mean": 1.0},
                                         shadowing_db=2.0),))  # fmt: skip
    n = scenarios.CHUNK_ROWS + 3000  # two generator blocks
    whole = {sc.name: scenarios.draw(sc, n, 7) for sc in (s, alone)}
    for rows in (7, 1000):  # parts of 7 and 1000 rows, the last one short
        monkeypatch.setattr(scenarios, "CHUNK_BYTES", 8 * 10 * rows)
        for sc in (s, alone):
            np.testing.assert_array_equal(scenarios.draw(sc, n, 7), whole[sc.name])


def test_chunks_stay_bounded_in_bytes_at_the_largest_m():
    s = Scenario("wide", (Group(scenarios.MAX_CHANNELS, "uniform", {"low": 1.0, "high": 2.0}),))
    rows = scenarios.CHUNK_BYTES // (8 * scenarios.MAX_CHANNELS)
    parts = list(scenarios.draw_chunks(s, 2 * rows + 5, 3, chunk=10**9))
    assert [len(p) for p in parts] == [rows, rows, 5]
    assert max(p.nbytes for p in parts) <= scenarios.CHUNK_BYTES
    np.testing.assert_array_equal(parts[0][:3], next(scenarios.draw_chunks(s, 3, 3)))


# --- CLI sizes -------------------------------------------------------------------------------


def cli_error(res, *parts: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for part in parts:
        assert part in res.stderr, (part, res.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("scenarios", "show", "t1", "-n", "1000000000000"), "--samples must be <= 13,421,772"),
        (("evaluate", "--model", "nowhere", "--scenario", "t1", "-n", "1000000000000"),
         "--samples must be <= 13,421,772"),
        (("evaluate", "--model", "nowhere", "--scenario", "t1", "--best-of", "1000000000"),
         f"--best-of must be >= 1 and <= {MAX_BEST_OF}"),
        (("evaluate", "--model", "nowhere", "--scenario", "t1", "--best-of", "0"),
         "--best-of must be >= 1"),
        (("bench", "collect", "-n", "1000000000000"), "--samples must be <= 13,421,772"),
        (("bench", "collect", "--repeats", "1000000000"), "--repeats must be >= 1 and <= 100"),
        (("bench", "waterfill", "--batches", "inf"), "--batches must list integers >= 1, got"),
        (("bench", "waterfill", "--batches", "nan"), "--batches must list integers >= 1"),
        (("bench", "waterfill", "--batches", "2.5"), "--batches must list integers >= 1"),
        (("bench", "waterfill", "--batches", "1e12"), "--batches must be <= 13,421,772"),
        (("bench", "waterfill", "--batches", "9" * 400), "--batches must be <= "),
        (("bench", "waterfill", "--channels", "1000000"),
         "--channels must list integers >= 1 and <= 65536"),
        (("bench", "waterfill", "--batches", ",".join(["1"] * 17)),
         "--batches must list 1 to 16 sizes"),
        (("bench", "waterfill", "--repeats", "1000000000"), "--repeats must be >= 1 and <= 100"),
        (("bench", "sample", "--batches", "1e12"), "--batches must be <= 13,421,772"),
        (("bench", "sample", "--repeats", "0"), "--repeats must be >= 1 and <= 100"),
    ],
)  # fmt: skip
def test_cli_sizes_are_bounded(run, args, message):
    cli_error(run(*args), message)


def test_bench_library_checks_its_sizes():
    with pytest.raises(UserError, match="--batches must be <= "):
        bench.waterfill([10**12], [20])
    with pytest.raises(UserError, match="--channels must list integers >= 1 and <= 65536"):
        bench.waterfill([1], [10**6])
    with pytest.raises(UserError, match="--samples must be <= "):
        bench.collect(10**12, 1)
    with pytest.raises(UserError, match="--repeats must be >= 1 and <= 100"):
        bench.collect(10, 10**9)


# --- datasets --------------------------------------------------------------------------------


def good_arrays() -> dict[str, np.ndarray]:
    d = data.collect(scenarios.get("t1"), 20, 0)
    return {"gains": d.gains, "power": d.power, "sum_rate": d.sum_rate,
            "meta": np.array(json.dumps(d.meta))}  # fmt: skip


def npy_bytes(a: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    """``a`` as .npy bytes, its header declaring ``shape`` (default: its own)."""
    import io

    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
              "shape": a.shape if shape is None else shape}  # fmt: skip
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(np.ascontiguousarray(a).tobytes())
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, blob in members.items():
            zf.writestr(f"{name}.npy", blob)
    return path


def test_a_forged_header_is_refused_before_reading(tmp_path: Path):
    arrays = good_arrays()
    members = {k: npy_bytes(v) for k, v in arrays.items()}
    members["gains"] = npy_bytes(arrays["gains"], (10**12, 20))  # 20 rows inside
    path = write_zip(tmp_path / "forged.npz", members)
    with pytest.raises(UserError) as info:
        data.load(path)
    one_line(info, f"{path}: gains has shape (1000000000000, 20) of float64 but holds 3,200 bytes")


def test_a_zip_bomb_is_refused_unread(tmp_path: Path):
    n = 30_000  # 4.8 MB of zeros per array, a few kB packed
    meta = json.loads(str(good_arrays()["meta"][()]))
    members = {
        "gains": npy_bytes(np.zeros((n, 20))),
        "power": npy_bytes(np.zeros((n, 20))),
        "sum_rate": npy_bytes(np.zeros(n)),
        "meta": npy_bytes(np.array(json.dumps(meta))),
    }
    path = write_zip(tmp_path / "bomb.npz", members, zipfile.ZIP_DEFLATED)
    with pytest.raises(UserError) as info:
        data.load(path)
    one_line(info, f"{path}: gains unpacks to 4,800,128 bytes", "more than 100-fold")
    # An honest compressed dataset (floats pack ~1x) still loads.
    ok = tmp_path / "ok.npz"
    np.savez_compressed(ok, **good_arrays())
    assert data.load(ok).n == 20


@pytest.mark.parametrize(
    ("limit", "value", "message"),
    [
        ("MAX_DATASET_BYTES", 6000, "its arrays take 0.0 GiB, more than this aigxctl loads"),
        ("MAX_CHANNELS", 10, "gains have 20 channels, more than 10"),
        ("MAX_META_CHARS", 100, "its metadata is"),
    ],
)
def test_dataset_limits_are_checked_on_the_headers(tmp_path: Path, monkeypatch, limit, value,
                                                   message):  # fmt: skip
    path = tmp_path / "d.npz"
    np.savez(path, **good_arrays())
    monkeypatch.setattr(data, limit, value)
    with pytest.raises(UserError) as info:
        data.load(path)
    one_line(info, f"{path}: {message}")


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "its metadata is not a JSON object (nested too deep)"),
        (None, "metadata total_power must be in [1e-30, 1e+30]"),
    ],
)
def test_bad_metadata_is_one_line(tmp_path: Path, meta, message):
    arrays = good_arrays()
    if meta is None:
        doc = json.loads(str(arrays["meta"][()]))
        meta = json.dumps({**doc, "total_power": 1e300})
    arrays["meta"] = np.array(meta)
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError) as info:
        data.load(path)
    one_line(info, f"{path}: {message}")


def test_scenario_name_is_safe_whatever_the_metadata(tmp_path: Path):
    arrays = good_arrays()
    doc = json.loads(str(arrays["meta"][()]))
    path = tmp_path / "x.npz"
    np.savez(path, **{**arrays, "meta": np.array(json.dumps({**doc, "scenario": "x"}))})
    assert data.load(path).scenario_name is None
    np.savez(path, **arrays)
    assert data.load(path).scenario_name == "t1"
    for meta in ({}, {"scenario": {"name": 5}}, {"scenario": [1]}):
        assert data.Dataset(arrays["gains"], arrays["power"], arrays["sum_rate"],
                            meta).scenario_name is None  # fmt: skip


# --- evaluate --------------------------------------------------------------------------------


class Equal:
    """A stand-in model that splits the power equally."""

    arch, m, total_power, noise = "equal", 20, 0.2, 1.0

    def allocate(self, gains, **_):
        return equal_split(gains, self.total_power)

    def backend_for(self, backend="auto"):
        return "none", "a fixed rule"


def test_evaluate_refuses_all_zero_gains_and_takes_some():
    with pytest.raises(UserError) as info:
        evaluate(Equal(), np.zeros((5, 20)))
    one_line(info, "all 5 gain vectors are zero: nothing to allocate")
    # Gains so small that every rate rounds to 0: no ratio to report either.
    with pytest.raises(UserError) as info:
        evaluate(Equal(), np.full((5, 20), 1e-300))
    one_line(info, "too small for a nonzero sum rate")
    g = scenarios.get("t1").sample(10, np.random.default_rng(0))
    g[::2] = 0.0  # half the rows have nothing to allocate
    res = evaluate(Equal(), g)
    assert res["equal_rate"] == pytest.approx(res["model_rate"])
    assert 0 < res["fraction_of_optimum"] < 1 and np.isfinite(res["gain_over_equal"])


def test_cli_evaluate_on_all_zero_gains_is_one_line(run, tmp_path: Path):
    torch.manual_seed(0)
    mlp = MLPAllocator(net=Regressor(20, 8).eval(), cond_mean=np.zeros(20),
                       cond_std=np.ones(20), total_power=0.2, noise=1.0)  # fmt: skip
    save_model(mlp, tmp_path / "mlp")
    zeros = tmp_path / "zeros.npz"
    data.save(data.Dataset(np.zeros((4, 20)), np.zeros((4, 20)), np.zeros(4),
                           {"format": "aigxctl-dataset", "total_power": 0.2, "noise": 1.0}),
              zeros)  # fmt: skip
    cli_error(run("evaluate", "--model", tmp_path / "mlp", "--data", zeros),
              "all 4 gain vectors are zero")  # fmt: skip


# --- best_of, reward settings, cycle configs -------------------------------------------------


def test_best_of_is_bounded_in_the_library():
    torch.manual_seed(0)
    model = GDM(denoiser=Denoiser(4, 8).eval(), schedule=Schedule.create("vp", 3), pred="x0",
                cond_mean=np.zeros(4), cond_std=np.ones(4), total_power=0.2,
                noise=1.0)  # fmt: skip
    g = np.ones((2, 4))
    for k in (10**9, MAX_BEST_OF + 1, 0, -3):
        with pytest.raises(UserError) as info:
            model.allocate(g, best_of=k, seed=0)
        one_line(info, f"best_of must be an integer >= 1 and <= {MAX_BEST_OF}, got {k}")
    assert model.allocate(g, best_of=2, seed=0).shape == (2, 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": -1.0}, "--lr must be a finite number > 0, got -1.0"),
        ({"lr": float("nan")}, "--lr must be a finite number > 0"),
        ({"critic_lr": 0.0}, "critic_lr must be a finite number > 0"),
        ({"exploration": -0.1}, "exploration must be a finite number >= 0"),
    ],
)
def test_reward_config_checks_its_rates(change, message):
    with pytest.raises(UserError, match=message):
        RewardConfig(scenario="t1", out="unused", **change).check()
    RewardConfig(scenario="t1", out="unused").check()


def test_cli_train_reward_refuses_a_negative_lr(run, tmp_path: Path):
    res = run("train", "--mode", "reward", "--scenario", "t1", "--out", tmp_path / "m",
              "--lr", "-1", "--steps", "2")  # fmt: skip
    cli_error(res, "--lr must be a finite number > 0")
    assert not (tmp_path / "m").exists()


CYCLE_BAD = {
    "a table beside [cycle]": ("[cycle]\nsamples = 100\n[other]\nx = 1\n",
                               "other: unknown top-level key (settings go in the [cycle] table)"),
    "a key beside [cycle]": ("samples = 5\n[cycle]\nt1_steps = 10\n",
                             "samples: unknown top-level key"),
    "cycle not a table": ("cycle = 5\n", "cycle: must be a [cycle] table, got 5"),
    "unknown top-level key": ("colour = 1\n", "colour: unknown key"),
    "nesting bomb": ("a = " + "[" * 10_000 + "]" * 10_000 + "\n", "nested too deep"),
    "too big": ("#" * (scenarios.MAX_TOML_BYTES + 1), "too big for a cycle config file"),
    "not UTF-8": (b"\xff\xfe[cycle]", "not UTF-8"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CYCLE_BAD))
def test_cycle_config_mistakes_are_one_line(tmp_path: Path, case):
    text, message = CYCLE_BAD[case]
    path = tmp_path / "c.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError) as info:
        load_config(path)
    one_line(info, f"{path}: ", message)


def test_cycle_config_takes_top_level_keys_and_refuses_a_directory(run, tmp_path: Path):
    path = tmp_path / "flat.toml"
    path.write_text("samples = 100\nt1_steps = 10\n")
    cfg = load_config(path)
    assert cfg.samples == 100 and cfg.t1_steps == 10
    with pytest.raises(UserError) as info:
        load_config(tmp_path)
    one_line(info, f"{tmp_path}: is a directory, expected a cycle config .toml file")
    cli_error(run("cycle", "--config", tmp_path, "--out", tmp_path / "run"), "is a directory")
