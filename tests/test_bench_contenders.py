"""One seed gives one noise on every backend, and `bench sample` times honest contenders: the
exported DDIM decision equals the torch backend, the runtimes (when installed) give the same
allocations, and the report has every figure it promises (FMA peak, spread, fractions)."""

from __future__ import annotations

import functools
import io
import json
import re

import models
import numpy as np
import pytest
import torch
from rich.console import Console

from aigxctl import bench, core
from aigxctl.errors import UserError

# These tests run the eps-predicting model unless they say otherwise.
make_gdm = functools.partial(models.make_gdm, pred="eps")


def gains(b, m=20, seed=3):
    return np.random.default_rng(seed).uniform(0.5, 8, (b, m))


# --- one seed, one noise ---------------------------------------------------------------------


@pytest.mark.parametrize("pred", ["eps", "x0"])
@pytest.mark.parametrize("mode", ["ddim", "ancestral"])
@pytest.mark.parametrize("best_of", [1, 3])
def test_one_seed_gives_one_allocation_on_every_backend(pred, mode, best_of):
    model = make_gdm(pred=pred)
    g = gains(37)
    fused = model.allocate(g, mode=mode, best_of=best_of, seed=11, backend="fused")
    plain = model.allocate(g, mode=mode, best_of=best_of, seed=11, backend="torch")
    np.testing.assert_allclose(plain, fused, atol=1e-5, rtol=0)
    other = model.allocate(g, mode=mode, best_of=best_of, seed=12, backend="torch")
    assert np.abs(other - plain).max() > 1e-4  # the seed does choose the noise


def test_the_torch_backend_uses_the_cores_philox_normals():
    model = make_gdm()
    g = gains(9)
    z = model.noise_for(5, 9)
    np.testing.assert_array_equal(z, core.philox_normals(5, 9, model.T + 1, model.m))
    given = model.sample_torch(g, 0.2, torch.from_numpy(z), "ancestral")
    np.testing.assert_array_equal(
        model.allocate(g, mode="ancestral", seed=5, backend="torch"), given.astype(np.float64)
    )
    # A row's noise does not depend on the batch it is in: nor does its allocation.
    few = model.allocate(g[:4], mode="ancestral", seed=5, backend="torch")
    np.testing.assert_allclose(few, given[:4], atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "3"])
def test_a_seed_outside_the_philox_key_is_a_user_error(seed):
    with pytest.raises(UserError, match="seed must be an integer >= 0 and < 2\\*\\*64"):
        make_gdm().allocate(gains(2), seed=seed)


def test_largest_seed_is_accepted_on_both_backends():
    model = make_gdm()
    a = model.allocate(gains(3), seed=2**64 - 1, backend="fused")
    b = model.allocate(gains(3), seed=np.uint64(2**64 - 1), backend="torch")
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# --- the contenders ----------------------------------------------------------------------------


def test_decision_flops_of_the_reference_model():
    # Condition branch once (20->256, 256->256), then 6 steps of 20->256, 256->256, 256->20.
    assert bench.decision_flops(20, 256, 6) == 2 * 256 * 276 + 6 * 2 * 256 * 296 == 1_050_624


@pytest.mark.parametrize("pred", ["eps", "x0"])
def test_the_exported_decision_equals_the_torch_backend(pred):
    model = make_gdm(m=7, hidden=32, steps=4, pred=pred)
    g = gains(13, m=7)
    z0 = model.noise_for(bench.DECISION_SEED, 13)[0]
    with torch.no_grad():
        got = bench.ddim_decision(model)(torch.from_numpy(g.astype(np.float32)),
                                         torch.from_numpy(z0)).numpy()  # fmt: skip
    ref = model.allocate(g, mode="ddim", seed=bench.DECISION_SEED, backend="torch")
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.sum(axis=1), 0.2, rtol=1e-5)


def test_the_equality_check_leaves_out_a_wrong_contender(tmp_path):
    contest = bench._Contenders(make_gdm(), ["fused", "torch"], 1, str(tmp_path))
    g = gains(5).astype(np.float32)
    right = contest.calls(g)
    contest.calls = lambda g: {**right, "openvino": lambda: right["torch"]() * 1.01}
    fns = contest.checked(g)
    assert set(fns) == {"fused", "torch"}
    assert "differs from the torch backend" in contest.errors["openvino"]
    assert contest.last_diff["fused"] <= 1e-5 and contest.last_diff["torch"] == 0


def test_rounds_alternate_and_give_one_sample_per_round(monkeypatch):
    calls, sleeps = [], []
    monkeypatch.setattr(bench.time, "sleep", sleeps.append)
    fns = {n: (lambda n=n: calls.append(n)) for n in ("a", "b", "c")}
    samples = bench._rounds(fns, 3, 0.0)
    assert {n: len(s) for n, s in samples.items()} == {"a": 3, "b": 3, "c": 3}
    timed = calls[6:]  # after two warm-up calls each
    # Each sample: a quiet pause, one untimed call, then the timed one; the order rotates.
    assert timed == [n for n in "abcbcacab" for _ in range(2)]
    assert sleeps == [bench.SETTLE_S] * 9


def test_fma_peak_without_a_compiler_falls_back_to_gemm(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    peak = bench.fma_peak(1, rounds=1)
    assert peak["fma_loop"] is None and peak["by"] in peak["gemm"]
    assert peak["flop_per_s"] == max(peak["gemm"].values()) > 0
    assert "lower bound" in peak["what"]


def test_fma_peak_with_a_compiler_runs_the_loop():
    loop = bench._fma_loop(1, rounds=1, seconds=0.01)
    if loop is None:
        pytest.skip("no C compiler or no FMA here")
    assert loop["width_bits"] in (256, 512) and loop["flop_per_s"] > 1e9


def _doc(run, *args):
    res = run("bench", "sample", "--repeats", "2", "--json", *args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_bench_sample_reports_every_figure(run):
    doc = _doc(run, "--batches", "1,3", "--contenders", "fused,torch")
    assert doc["contenders"] == ["fused", "torch"] and doc["rounds"] == 2
    assert doc["flop_per_allocation"] == bench.decision_flops(20, 256, 6)
    assert doc["fma_peak"]["flop_per_s"] > 0 and doc["fma_peak"]["what"]
    assert doc["model"]["mode"] == "ddim"
    for case in doc["cases"]:
        for name in ("fused", "torch"):
            s = case["spread"][name]
            assert s["min"] <= s["median"] <= s["max"]
            assert case["fraction_of_peak"][name] == pytest.approx(
                s["median"] * doc["flop_per_allocation"] / doc["fma_peak"]["flop_per_s"]
            )
            assert case["max_abs_diff_vs_torch"][name] <= bench.EQUAL_ATOL
        assert case["speedup_vs"]["torch"] == pytest.approx(
            case["allocations_per_s"]["fused"] / case["allocations_per_s"]["torch"]
        )


def test_bench_sample_refuses_an_unknown_contender(run):
    res = run("bench", "sample", "--contenders", "fused,tensorrt")
    assert res.exit_code == 2 and "--contenders must list names from" in res.stderr


def test_the_table_fits_80_columns():
    case = {
        "batch": 4096,
        "allocations_per_s": {n: 123456.0 for n in bench.CONTENDERS},
        "spread": {n: {"min": 99999.0, "median": 123456.0, "max": 1234567.0}
                   for n in bench.CONTENDERS},
        "speedup_vs": {n: 12.345 for n in bench.CONTENDERS[1:]},
        "fraction_of_peak": {n: 0.4321 for n in bench.CONTENDERS},
    }  # fmt: skip
    peak = {"flop_per_s": 5.5e11, "by": "512-bit FMA loop"}
    results = {
        "device": "cpu",
        "cases": [case],
        "threads": 2,
        "rounds": 5,
        "fma_peak": peak,
        "flop_per_allocation": 1_050_624,
        "model": {"m": 20, "hidden": 256, "steps": 6},
    }
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(bench.sample_table(results))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for cell in ("4,096", "torch.compile", "openvino", "123k", "100k..1.23M", "12.3x", "43.2%"):
        assert cell in text, cell
    assert re.search(r"FMA peak 550 GFLOP/s", text)


# --- the runtimes, when installed -------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtimes_give_the_torch_backends_allocations(runtime, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip(runtime)
    contest = bench._Contenders(make_gdm(), ["fused", "torch", runtime], 1, str(tmp_path))
    assert not contest.errors
    g = gains(6).astype(np.float32)
    fns = contest.checked(g)
    assert runtime in fns and not contest.errors
    assert contest.last_diff[runtime] <= 1e-5


def test_bench_sample_with_the_runtimes(run):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    doc = _doc(run, "--batches", "2", "--no-compile")
    assert doc["contenders"] == ["fused", "fused_bf16", "torch", "onnxruntime", "openvino"]
    assert doc["skipped"] == {"torch_compile": "--no-compile"} and not doc["errors"]
    assert set(doc["cases"][0]["allocations_per_s"]) == set(doc["contenders"])
    assert doc["versions"]["onnxruntime"] and doc["versions"]["openvino"]


def test_notes_say_what_was_left_out_and_when_the_machine_was_busy():
    results = {
        "skipped": {"torch_compile": "--no-compile"},
        "errors": {"openvino": "B = 6: it failed"},
        "notes": {"openvino": {"6": "SNIPPETS_MODE=DISABLE (why)"}},
        "load_average": {"before": 5.5, "after": 1.0},
        "machine": {"cpu_count": 2},
    }
    notes = bench.sample_notes(results)
    assert notes[:3] == [
        "torch.compile skipped: --no-compile",
        "openvino left out: B = 6: it failed",
        "openvino at B = 6: SNIPPETS_MODE=DISABLE (why)",
    ]
    assert "the machine was busy (load average 5.5 before, 1.0 after, on 2 CPUs)" in notes[3]
    results["load_average"] = {"before": 0.2, "after": 0.3}
    assert len(bench.sample_notes(results)) == 3


def test_notes_say_what_bf16_ran_on():
    results = {"contenders": ["fused", "fused_bf16"], "bf16_on": "AMX tiles"}
    assert bench.sample_notes(results) == [
        "fused bf16 ran on AMX tiles; its 'of peak' is of the f32 FMA peak"
    ]
    assert bench.sample_notes({"contenders": ["fused"], "bf16_on": "AMX tiles"}) == []
    assert bench.bf16_engine() in ("AMX tiles", "AVX-512 BF16 dot products", "FMAs")
    before = core.isa()
    try:
        core.set_isa("baseline")  # the BF16 instructions are the AVX-512 level's
        assert bench.bf16_engine() == "FMAs"
    finally:
        core.set_isa(before)
