"""CSV flows between commands: collect's CSV feeds allocate and evaluate as it is, other
delimiters are read, headers that name anything but gains are refused in one line, and a
half-trained checkpoint is used with a warning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigxctl import data, files, scenarios
from aigxctl.errors import UserError
from aigxctl.train import TrainConfig, train


def test_collects_csv_feeds_allocate_as_it_is(run, tmp_path):
    csv = tmp_path / "held.csv"
    assert run("collect", "-s", "t1", "-n", "50", "--format", "csv", "--out", csv).exit_code == 0
    res = run("allocate", "--gains", csv)
    assert res.exit_code == 0, res.stderr
    header = res.stdout.splitlines()[0].split(",")
    assert len(header) == 21 and header[-1] == "sum_rate"  # M = 20, not 41
    expert = np.loadtxt(csv, delimiter=",", skiprows=1)
    ours = np.loadtxt(res.stdout.splitlines()[1:], delimiter=",")
    np.testing.assert_allclose(ours[:, :20], expert[:, 20:40], atol=1e-12)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_semicolon_and_tab_separated_files_are_read(write, sep):
    path = write("g.csv", f"g1{sep}g2\n1.5{sep}2\n3{sep}4\n")
    np.testing.assert_array_equal(files.read_gains_csv(path), [[1.5, 2], [3, 4]])


@pytest.mark.parametrize("header", ["a,b,c", "g1,g2,notes", "p1,p2,p3"])
def test_a_header_naming_other_columns_is_refused(run, write, header):
    res = run("allocate", "--gains", write("x.csv", f"{header}\n1,2,3\n"))
    assert res.exit_code == 2 and "not gains" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_evaluate_takes_a_csv_and_train_says_it_needs_npz(run, tmp_path):
    npz, csv = tmp_path / "t1.npz", tmp_path / "t1.csv"
    data.collect_to_file(scenarios.get("t1"), 400, 0, npz)
    data.collect_to_file(scenarios.get("t1"), 60, 1, csv, csv=True)
    model = tmp_path / "m"
    train(TrainConfig(data=[str(npz)], out=str(model), steps=4, hidden=8, val_every=2))
    res = run("evaluate", "--model", model, "--data", csv, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["samples"] == 60 and "gdm" not in doc["methods"] and "model" in doc["methods"]
    with pytest.raises(UserError, match=r"needs an \.npz dataset"):
        train(TrainConfig(data=[str(csv)], out=str(tmp_path / "x"), steps=2))


def test_a_half_trained_checkpoint_is_used_with_a_warning(run, tmp_path):
    npz = tmp_path / "t1.npz"
    data.collect_to_file(scenarios.get("t1"), 400, 0, npz)
    out = tmp_path / "half"

    def stop(step, _m):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=[str(npz)], out=str(out), steps=20, hidden=8, val_every=2), stop)
    gains = tmp_path / "g.csv"
    gains.write_text("\n".join(",".join(["3"] * 20) for _ in range(3)) + "\n")
    for args in (("allocate", "--method", "gdm", "--model", out, "--gains", gains),
                 ("evaluate", "--model", out, "--scenario", "t1", "-n", "50")):  # fmt: skip
        res = run(*args)
        assert res.exit_code == 0, res.stderr
        assert "interrupted checkpoint (3 of 20 training steps done)" in res.stderr
