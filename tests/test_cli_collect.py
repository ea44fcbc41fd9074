"""The CLI end to end on small N: `aigxctl scenarios`, `scenarios show`, `collect`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from reference import waterfill_sorted

from aigxctl import data, scenarios

EXAMPLE = Path(__file__).parent.parent / "examples" / "rainstorm.toml"


def one_line_error(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_scenarios_lists_the_builtins(run):
    res = run("scenarios")
    assert res.exit_code == 0, res.output
    assert "t1" in res.stdout and "good weather" in res.stdout and "rainstorm" in res.stdout
    assert "10 x U[5, 8]" in res.stdout and "10 x U[3, 6]" in res.stdout
    assert "20 x U[1, 7]" in res.stdout


def test_scenarios_show(run):
    res = run("scenarios", "show", "t1", "--samples", "2000")
    assert res.exit_code == 0, res.output
    assert "optimum over equal" in res.stdout and "+19" in res.stdout  # ~ +19.8 %
    res = run("scenarios", "show", EXAMPLE, "--samples", "2000")
    assert res.exit_code == 0, res.output
    assert "rician(k_factor=4, mean=6.5), -3 dB" in res.stdout and "shadowing 2 dB" in res.stdout


def test_scenarios_show_json_and_toml(run, tmp_path: Path):
    res = run("scenarios", "show", "t2", "--json", "--samples", "1000")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["scenario"] == scenarios.get("t2").to_dict()
    assert doc["estimate"]["optimum_rate"] > doc["estimate"]["equal_rate"]
    res = run("scenarios", "show", EXAMPLE, "--toml")
    assert res.exit_code == 0, res.output
    copy = tmp_path / "copy.toml"
    copy.write_text(res.stdout)
    assert scenarios.get(copy) == scenarios.get(EXAMPLE)


def test_scenarios_show_errors(run, write):
    one_line_error(run("scenarios", "show", "nope"), "unknown scenario 'nope'")
    bad = write("rain.toml", '[[groups]]\nchannels = 2\nmodel = "foo"\n')
    one_line_error(
        run("scenarios", "show", bad),
        f"{bad}: groups[0].model: unknown model 'foo' (choose uniform, rayleigh, rician, nakagami)",
    )
    one_line_error(run("scenarios", "show", "t1", "--samples", "0"), "--samples")


def test_collect_end_to_end(run, tmp_path: Path):
    out = tmp_path / "t1.npz"
    args = ("collect", "--scenario", "t1", "--samples", "500", "--seed", "1", "--out", out)
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert "500 samples of t1" in res.stderr and "over equal" in res.stderr
    d = data.load(out, check_optimal=True)
    assert d.n == 500 and d.meta["seed"] == 1
    for i in (0, 499):  # the expert is the optimum, checked without the core
        np.testing.assert_allclose(d.power[i], waterfill_sorted(d.gains[i], 0.2), rtol=1e-9,
                                   atol=1e-13)  # fmt: skip
    before = out.read_bytes()
    res = run(*args)  # refuses to overwrite: one line, exit 2, file untouched
    one_line_error(res, str(out), "--force")
    assert out.read_bytes() == before
    res = run(*args, "--force")  # the same command again: the same arrays
    assert res.exit_code == 0, res.output
    again = data.load(out)
    for key in ("gains", "power", "sum_rate"):
        np.testing.assert_array_equal(getattr(again, key), getattr(d, key))
    res = run("collect", "-s", "t1", "-n", "500", "--seed", "2", "-o", out, "--force")
    assert res.exit_code == 0 and not np.array_equal(data.load(out).gains, d.gains)
    assert [p.name for p in tmp_path.iterdir()] == ["t1.npz"]


def test_collect_toml_scenario_power_and_csv(run, tmp_path: Path):
    out = tmp_path / "rain.npz"
    res = run("collect", "-s", EXAMPLE, "-n", "300", "-o", out, "--total-power", "1.5")
    assert res.exit_code == 0, res.output
    d = data.load(out, check_optimal=True)
    assert d.total_power == 1.5 and d.meta["scenario"]["name"] == "rainstorm"
    np.testing.assert_allclose(d.power.sum(axis=1), 1.5, rtol=1e-12)
    csv = tmp_path / "rain.csv"  # format from the suffix
    res = run("collect", "-s", EXAMPLE, "-n", "300", "-o", csv, "--total-power", "1.5")
    assert res.exit_code == 0 and "(csv)" in res.stderr
    table = np.loadtxt(csv, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, :20], d.gains)
    np.testing.assert_array_equal(table[:, 20:40], d.power)
    forced = tmp_path / "rain.txt"
    res = run("collect", "-s", "t2", "-n", "5", "-o", forced, "--format", "csv")
    assert res.exit_code == 0 and forced.read_text().startswith("g1,g2,")


def test_collect_bad_input(run, tmp_path: Path, write):
    out = tmp_path / "x.npz"
    one_line_error(run("collect", "-s", "t1", "-n", "0", "-o", out), "--samples")
    one_line_error(run("collect", "-s", "t1", "-n", "5", "-o", out, "--seed", "-1"), "--seed")
    one_line_error(run("collect", "-s", "t1", "-n", "5", "-o", out, "-P", "0"), "--total-power")
    one_line_error(run("collect", "-s", "t7", "-n", "5", "-o", out), "unknown scenario 't7'")
    bad = write(
        "bad.toml", 'channels = 4\n[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = 1\n'
    )
    one_line_error(run("collect", "-s", bad, "-n", "5", "-o", out), f"{bad}: channels: is 4")
    one_line_error(run("collect", "-s", "t1", "-n", "5", "-o", tmp_path / "no" / "x.npz"),
                   "does not exist")  # fmt: skip
    one_line_error(run("collect", "-s", "t1", "-n", "5", "-o", tmp_path), "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_bench_collect_reports_every_case(run):
    res = run("bench", "collect", "-n", "3000", "--repeats", "1", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert set(r["samples_per_s"]) == {"draw", "waterfill", "sum_rate", "collect", "collect_npz"}
    assert set(r["ratio_to_draw"]) == {"collect", "collect_npz"}
    assert all(v > 0 for v in r["samples_per_s"].values())
    one_line_error(run("bench", "collect", "-n", "0"), "--samples")


def test_collect_writes_a_csv_to_standard_output_for_a_pipe(tmp_path: Path):
    exe = Path(sys.executable).with_name("aigxctl")
    to_file = tmp_path / "d.csv"
    subprocess.run([str(exe), "collect", "-s", "t2", "-n", "40", "--seed", "3", "-o", str(to_file),
                    "-q"], check=True, capture_output=True)  # fmt: skip
    for args in (["--format", "csv"], ["--out", "-"]):
        res = subprocess.run([str(exe), "collect", "-s", "t2", "-n", "40", "--seed", "3", *args],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stdout == to_file.read_text()  # the same rows as the file
        assert "-> <stdout> (csv)" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_collect_to_standard_output_needs_csv(run):
    res = run("collect", "-s", "t1", "-n", "5", "--out", "-", "--format", "npz")
    assert res.exit_code == 2 and "npz is binary and needs a file" in res.stderr
    res = run("collect", "-s", "t1", "-n", "5")
    assert res.exit_code == 2 and "--out FILE is needed" in res.stderr
