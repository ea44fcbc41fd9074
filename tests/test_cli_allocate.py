"""`aigxctl allocate` end to end (typer's CliRunner, plus two runs of the real program): outputs,
formats and options, and one clear line on stderr (exit 2, no traceback) for every kind of bad
input, with an existing output file left untouched and no temporary file left behind. Also
`--version`, `info` and the help pages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import reference

import aigxctl

GAINS = "g1,g2,g3\n1.0,2.0,3.0\n0.5,4.0,0.0\n0.01,0.02,7\n"
G = np.array([[1.0, 2.0, 3.0], [0.5, 4.0, 0.0], [0.01, 0.02, 7.0]])


def parse_csv(text: str) -> tuple[list[str], np.ndarray]:
    lines = text.strip().splitlines()
    return lines[0].split(","), np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])


# --- what a good run gives ------------------------------------------------------------------


def test_csv_output_is_the_optimum(run, write):
    res = run("allocate", "--gains", write("g.csv", GAINS))
    assert res.exit_code == 0, res.output
    header, table = parse_csv(res.stdout)
    assert header == ["p1", "p2", "p3", "sum_rate"]
    assert table.shape == (3, 4)
    expected = aigxctl.waterfill(G, 0.2)  # defaults: P = 0.2, noise = 1
    np.testing.assert_allclose(table[:, :3], expected, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(table[:, 3], reference.sum_rate(G, expected), rtol=1e-9)
    np.testing.assert_allclose(table[:, :3].sum(axis=1), 0.2, rtol=1e-9)
    # the summary goes to stderr, so stdout is nothing but the CSV
    assert "mean sum rate" in res.stderr and "3 rows" in res.stderr
    assert "p1" not in res.stderr and "✓" not in res.stdout


def test_options_reach_the_solver(run, write):
    res = run("allocate", "-g", write("g.csv", GAINS), "-P", "3.5", "--noise", "0.25")
    assert res.exit_code == 0, res.output
    _, table = parse_csv(res.stdout)
    expected = aigxctl.waterfill(G, 3.5, 0.25)
    np.testing.assert_allclose(table[:, :3], expected, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(table[:, 3], reference.sum_rate(G, expected, 0.25), rtol=1e-9)


def test_json_output(run, write):
    res = run("allocate", "--gains", write("g.csv", GAINS), "--total-power", "2", "--noise",
              "0.5", "--format", "json")  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc) == {"method", "total_power", "noise", "allocations", "sum_rate"}
    assert doc["method"] == "waterfill" and doc["total_power"] == 2.0 and doc["noise"] == 0.5
    expected = aigxctl.waterfill(G, 2.0, 0.5)
    np.testing.assert_allclose(doc["allocations"], expected, rtol=1e-15)  # JSON keeps all digits
    np.testing.assert_allclose(doc["sum_rate"], reference.sum_rate(G, expected, 0.5), rtol=1e-12)


def test_json_defaults(run, write):
    doc = json.loads(run("allocate", "-g", write("g.csv", "1,2\n"), "-f", "json").stdout)
    assert doc["total_power"] == 0.2 and doc["noise"] == 1.0
    assert len(doc["allocations"]) == 1 and len(doc["sum_rate"]) == 1


@pytest.mark.parametrize(
    "text",
    [
        "1.0,2.0,3.0\n0.5,4.0,0.0\n0.01,0.02,7\n",  # no header
        "g1,g2,g3\n1.0,2.0,3.0\n0.5,4.0,0.0\n0.01,0.02,7\n",  # header
        "\n1.0, 2.0, 3.0\n\n0.5 ,4.0,0.0\n0.01,0.02,7",  # blank lines, spaces, no final newline
        "gain 1,gain 2,gain 3\r\n1.0,2.0,3.0\r\n0.5,4.0,0.0\r\n0.01,0.02,7\r\n",  # Windows
        "\ufeffg1,g2,g3\n1.0,2.0,3.0\n0.5,4.0,0.0\n0.01,0.02,7\n",  # byte-order mark + header
        "\ufeff1.0,2.0,3.0\n0.5,4.0,0.0\n0.01,0.02,7\n",  # byte-order mark, no header
        "1e0,2E0,3.\n.5,4,0\n1e-2,2e-2,7.000\n",  # other ways to write the same numbers
    ],
)
def test_header_row_and_formatting_are_optional(run, write, text):
    res = run("allocate", "--gains", write("g.csv", text.encode("utf-8")))
    assert res.exit_code == 0, res.output
    assert res.stdout == run("allocate", "--gains", write("plain.csv", GAINS)).stdout


def test_stdin(run, write):
    from_file = run("allocate", "--gains", write("g.csv", GAINS)).stdout
    res = run("allocate", "--gains", "-", input=GAINS)
    assert res.exit_code == 0, res.output
    assert res.stdout == from_file


def test_equal_method(run):
    res = run("allocate", "--gains", "-", "--method", "equal", "-f", "json", input=GAINS)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["method"] == "equal"
    np.testing.assert_allclose(doc["allocations"], np.full((3, 3), 0.2 / 3), rtol=1e-15)
    np.testing.assert_allclose(doc["sum_rate"], reference.sum_rate(G, np.full((3, 3), 0.2 / 3)))
    csv = run("allocate", "--gains", "-", "-m", "equal", "-P", "4", input="1,2,3,4\n")
    _, table = parse_csv(csv.stdout)
    np.testing.assert_allclose(table[0, :4], 1.0)


def test_waterfill_beats_equal(run):
    def rates(method: str) -> np.ndarray:
        res = run("allocate", "-g", "-", "-m", method, "-f", "json", input=GAINS)
        return np.array(json.loads(res.stdout)["sum_rate"])

    best, equal = rates("waterfill"), rates("equal")
    assert np.all(best >= equal) and np.any(best > equal)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_out_writes_the_file_and_stdout_stays_empty(run, write, tmp_path, fmt):
    gains = write("g.csv", GAINS)
    out = tmp_path / f"alloc.{fmt}"
    out.write_text("old content\n")  # replaced on success
    res = run("allocate", "--gains", gains, "--out", out, "--format", fmt)
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert out.read_text() == run("allocate", "--gains", gains, "--format", fmt).stdout
    assert str(out) in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["g.csv", out.name])


def test_real_program_on_a_bigger_file(tmp_path):
    # The installed program in a fresh process (no CliRunner), on enough rows for the core to
    # split the work over its threads: CSV on stdout, the summary on stderr.
    g = np.random.default_rng(0).uniform(1, 7, (3000, 20))
    path = tmp_path / "big.csv"
    np.savetxt(path, g, delimiter=",", fmt="%.17g")
    res = subprocess.run(
        [sys.executable, "-c", "from aigxctl.cli import main; main()", "allocate", "-g", path],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    header, table = parse_csv(res.stdout)
    assert header[0] == "p1" and header[-1] == "sum_rate" and table.shape == (3000, 21)
    np.testing.assert_allclose(table[:, :20], aigxctl.waterfill(g, 0.2), rtol=1e-9, atol=1e-15)
    assert len(res.stderr.strip().splitlines()) == 1 and "3000 rows" in res.stderr


# --- bad input: exit 2, one line naming the file and where (or the option), nothing written ----

BAD_FILES = {
    "nan": ("1,2,3\n4,nan,6\n", ["row 2, column 2", "nan"]),
    "inf": ("1,2,3\n4,5,inf\n", ["row 2, column 3", "inf"]),
    "-inf": ("1,2,3\n-inf,5,6\n", ["row 2, column 1", "inf"]),
    "negative": ("g1,g2\n1,2\n-3,4\n", ["row 3, column 1", "-3"]),
    "tiny negative": ("1,2\n3,-1e-300\n", ["row 2, column 2"]),
    "text": ("1,2,3\n4,abc,6\n", ["row 2, column 2", "abc"]),
    "digit grouping": ("1,2,3\n4,1_000,6\n", ["row 2, column 2", "'1_000' is not a number"]),
    "empty field": ("1,2,3\n4,,6\n", ["row 2, column 2"]),
    "text in first row": ("1,x,3\n4,5,6\n", ["row 1, column 2", "'x'"]),
    "row count after blank": ("1,2\n\n3,nan\n", ["row 3, column 2"]),
    "ragged short": ("1,2,3\n4,5\n", ["row 2 has 2 columns, expected 3"]),
    "ragged long": ("g1,g2\n1,2\n3,4,5\n", ["row 3 has 3 columns, expected 2"]),
    "empty": ("", ["no rows"]),
    "blank lines only": ("\n\n  \n", ["no rows"]),
    "header only": ("g1,g2\n", ["no rows"]),
    "not text": (b"\xff\xfe\x00\x01binary", ["not a text CSV"]),
}


def check_one_line_error(res, *fragments: str) -> str:
    """Exit code 2, nothing on stdout, one line on stderr holding every fragment, no traceback."""
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)  # a handled error, not a crash
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in res.output
    return lines[0]


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_gains_file(run, write, tmp_path, case):
    text, fragments = BAD_FILES[case]
    path = write("bad.csv", text)
    out = tmp_path / "keep.csv"
    out.write_text("precious\n")
    res = run("allocate", "--gains", path, "--out", out)
    check_one_line_error(res, str(path), *fragments)
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "keep.csv"]


@pytest.mark.parametrize("case", ["nan", "text", "ragged short", "empty"])
def test_bad_stdin(run, case):
    text, fragments = BAD_FILES[case]
    check_one_line_error(run("allocate", "--gains", "-", input=text), "<stdin>", *fragments)


def test_missing_file(run, tmp_path):
    out = tmp_path / "keep.csv"
    out.write_text("precious\n")
    missing = tmp_path / "nope.csv"
    res = run("allocate", "--gains", missing, "--out", out)
    check_one_line_error(res, f"{missing}: no such file")
    assert out.read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]


def test_folder_instead_of_a_file(run, tmp_path):
    check_one_line_error(run("allocate", "--gains", tmp_path), str(tmp_path), "directory")


@pytest.mark.parametrize(
    ("option", "value"),
    [("--total-power", "0"), ("--total-power", "-1"), ("--total-power", "nan"),
     ("--total-power", "inf"), ("-P", "-0.5"), ("--noise", "0"), ("--noise", "-2"),
     ("--noise", "nan")],
)  # fmt: skip
def test_bad_numeric_options(run, write, tmp_path, option, value):
    out = tmp_path / "keep.csv"
    out.write_text("precious\n")
    res = run("allocate", "--gains", write("g.csv", GAINS), option, value, "--out", out)
    name = "--total-power" if option == "-P" else option
    check_one_line_error(res, name, "> 0")
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.csv", "keep.csv"]


def test_unparsable_option_value_is_refused(run, write):
    # Typer's own parser answers this one (in its boxed style): exit 2, naming the option.
    res = run("allocate", "--gains", write("g.csv", GAINS), "--total-power", "abc")
    assert res.exit_code == 2
    assert "--total-power" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_unwritable_out(run, write, tmp_path, where):
    out = tmp_path / "no" / "such" / "dir" / "a.csv" if where == "missing folder" else tmp_path
    res = run("allocate", "--gains", write("g.csv", GAINS), "--out", out)
    check_one_line_error(res, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.csv"]


def test_gdm_without_a_model_uses_the_pretrained_t1_model(run, write):
    # The pretrained model is for M = 20: three gains per row are refused in one line.
    check_one_line_error(run("allocate", "-g", write("g.csv", GAINS), "-m", "gdm"),
                         "pretrained t1", "M = 20")  # fmt: skip


def test_real_program_reports_bad_input_in_one_line(tmp_path):
    # Outside CliRunner: a real terminal-less process, a long path that must not be wrapped.
    folder = tmp_path / ("a-rather-long-folder-name-" * 4)
    folder.mkdir()
    path = folder / "gains.csv"
    path.write_text("1,2,3\n4,5,nan\n")
    res = subprocess.run(
        [sys.executable, "-c", "from aigxctl.cli import main; main()", "allocate", "-g", path],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert str(path) in lines[0] and "row 2, column 3" in lines[0]


# --- version, info, help ------------------------------------------------------------------


def test_version(run):
    res = run("--version")
    assert res.exit_code == 0 and aigxctl.__version__ in res.stdout


def test_info(run):
    res = run("info")
    assert res.exit_code == 0, res.output
    assert "CUDA" in res.stdout and aigxctl.__version__ in res.stdout and "torch" in res.stdout


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["allocate", "--help"], ["info", "--help"]])
def test_help(run, args):
    res = run(*args)
    assert res.exit_code == 0 and "Usage" in res.stdout


def test_allocate_help_names_every_option(run):
    text = run("allocate", "--help").stdout
    for option in ("--gains", "--total-power", "--noise", "--method", "--out", "--format"):
        assert option in text
    for choice in ("waterfill", "equal", "csv", "json"):
        assert choice in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["allocate", "--gains", "g.csv", "--total-power", "abc"],
            "Invalid value for '--total-power'",
        ),
        (["allocate"], "Missing option '--gains'"),
        (["allocate", "--gains", "g.csv", "--bogus"], "No such option: --bogus"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_option_mistakes_get_one_line_and_exit_code_2(tmp_path, args, expected):
    # Through the console-script entry point, as a user meets it (not Typer's test runner).
    (tmp_path / "g.csv").write_text("1,2\n")
    res = subprocess.run(
        [sys.executable, "-c", "from aigxctl.cli import main; main()", *args],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "--help" in lines[0], res.stderr


def test_the_equal_split_takes_any_gains_and_a_power_per_row():
    import torch

    from aigxctl import allocation
    from aigxctl.errors import UserError

    rows_p = np.array([0.2, 1.0])
    for gains in ([[1.0, 2.0, 3.0], [0.5, 0.0, 4.0]], torch.ones(2, 3), np.ones((2, 3), int)):
        result = allocation.allocate(gains, "equal", rows_p)
        np.testing.assert_allclose(result.power, [[0.2 / 3] * 3, [1 / 3] * 3])
    with pytest.raises(UserError, match="at least one dimension"):
        allocation.allocate(np.array(1.0), "equal")
    with pytest.raises(UserError, match="gains must be an array of numbers"):
        allocation.allocate([[1.0, 2.0], [1.0]], "equal")
