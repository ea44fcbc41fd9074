"""`aigxctl allocate` end to end: outputs, formats, and one clear line (exit 2) for every kind
of bad input, with any existing output file left untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

import aigxctl

GAINS = "g1,g2,g3\n1.0,2.0,3.0\n0.5,4.0,0.0\n"


def parse_csv(text: str) -> tuple[list[str], np.ndarray]:
    lines = text.strip().splitlines()
    return lines[0].split(","), np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])


def test_csv_output_is_the_optimum(run, write):
    res = run("allocate", "--gains", write("g.csv", GAINS))
    assert res.exit_code == 0, res.output
    header, table = parse_csv(res.stdout)
    assert header == ["p1", "p2", "p3", "sum_rate"]
    g = np.array([[1.0, 2.0, 3.0], [0.5, 4.0, 0.0]])
    expected = aigxctl.waterfill(g, 0.2)
    np.testing.assert_allclose(table[:, :3], expected, rtol=1e-9)
    np.testing.assert_allclose(table[:, 3], aigxctl.sum_rate(g, expected), rtol=1e-9)
    assert "mean sum rate" in res.stderr and "p1" not in res.stderr


def test_json_output_and_options(run, write):
    res = run("allocate", "-g", write("g.csv", "1,2\n3,4\n"), "-P", "2", "--noise", "0.5",
              "--format", "json")  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["method"] == "waterfill" and doc["total_power"] == 2 and doc["noise"] == 0.5
    p = np.array(doc["allocations"])
    np.testing.assert_allclose(p.sum(axis=1), 2.0)
    assert len(doc["sum_rate"]) == 2


def test_stdin_and_equal_method(run):
    res = run("allocate", "--gains", "-", "--method", "equal", input="1,2,3,4\n")
    assert res.exit_code == 0, res.output
    _, table = parse_csv(res.stdout)
    np.testing.assert_allclose(table[0, :4], 0.05)


def test_out_file_is_written_and_stdout_stays_empty(run, write, tmp_path):
    out = tmp_path / "alloc.csv"
    res = run("allocate", "--gains", write("g.csv", GAINS), "--out", out)
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert out.read_text().startswith("p1,p2,p3,sum_rate\n")


BAD = {
    "nan": ("1,2,3\n4,nan,6\n", "row 2, column 2"),
    "inf": ("1,2,3\n4,5,inf\n", "row 2, column 3"),
    "negative": ("g1,g2\n1,2\n-3,4\n", "row 3, column 1"),
    "text": ("1,2,3\n4,abc,6\n", "row 2, column 2"),
    "empty field": ("1,2,3\n4,,6\n", "row 2, column 2"),
    "ragged": ("1,2,3\n4,5\n", "row 2 has 2 columns, expected 3"),
    "empty": ("", "no rows"),
    "header only": ("g1,g2\n", "no rows"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_gains_files(run, write, tmp_path, case):
    text, where = BAD[case]
    path = write("bad.csv", text)
    out = tmp_path / "keep.csv"
    out.write_text("precious\n")
    res = run("allocate", "--gains", path, "--out", out)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert str(path) in lines[0] and where in lines[0]
    assert "Traceback" not in res.output
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "keep.csv"]


def test_missing_file(run, tmp_path):
    res = run("allocate", "--gains", tmp_path / "nope.csv")
    assert res.exit_code == 2
    assert "nope.csv: no such file" in res.stderr


@pytest.mark.parametrize(("option", "value"), [("--total-power", "0"), ("--total-power", "-1"),
                                               ("--noise", "0"), ("--noise", "-2")])  # fmt: skip
def test_bad_numeric_options(run, write, option, value):
    res = run("allocate", "--gains", write("g.csv", GAINS), option, value)
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert option in res.stderr


def test_gdm_needs_a_model(run, write):
    res = run("allocate", "--gains", write("g.csv", GAINS), "--method", "gdm")
    assert res.exit_code == 2 and "--model" in res.stderr


def test_version_info_and_help(run):
    assert aigxctl.__version__ in run("--version").stdout
    info = run("info")
    assert info.exit_code == 0 and "CUDA" in info.stdout
    for args in (["--help"], ["allocate", "--help"], ["-h"]):
        res = run(*args)
        assert res.exit_code == 0 and "Usage" in res.stdout
