"""Long jobs a person can follow: progress lines with elapsed time and ETA when the output is
not a terminal, a cycle that resumes from its last finished phase, help that shows defaults and
choices, and a report that says what made it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aigxctl import data, report, scenarios
from aigxctl.cycle import CycleConfig, run_cycle

TINY = CycleConfig(samples=300, t1_steps=6, t3_steps=4, eval_samples=100, hidden=8,
                   val_every=2, sac=False, mlp=False)  # fmt: skip


def test_duration_reads_like_a_person_would_write_it():
    assert [report.duration(s) for s in (0.4, 59, 61, 3599, 3725)] == [
        "0 s", "59 s", "1 min 01 s", "59 min 59 s", "1 h 02 min"]  # fmt: skip


def test_step_progress_prints_plain_lines_with_eta_when_piped(monkeypatch):
    lines: list[str] = []
    bar = report.StepProgress("train gdm", 100, every=0.0)
    monkeypatch.setattr(bar.console, "print", lambda text, **_: lines.append(text))
    monkeypatch.setattr(type(bar.console), "is_terminal", property(lambda _: False))
    bar.update(25, {"loss": 0.01, "val_fraction": 0.995})
    bar.update(100, {"loss": 0.001})
    assert lines[0].startswith("train gdm: 25/100 (25%), ") and "elapsed, ETA " in lines[0]
    assert "val 99.50% of optimum" in lines[0]
    assert lines[1].startswith("train gdm: 100/100 (100%)") and "ETA" not in lines[1]
    quiet = report.StepProgress("x", 10, quiet=True)
    quiet.update(5)
    assert quiet.bar is None


def test_train_piped_shows_progress_lines(tmp_path):
    d = tmp_path / "t1.npz"
    data.collect_to_file(scenarios.get("t1"), 400, 0, d)
    exe = Path(sys.executable).with_name("aigxctl")
    res = subprocess.run([str(exe), "train", "--data", str(d), "--out", str(tmp_path / "m"),
                          "--steps", "30", "--hidden", "8", "--val-every", "10"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("train gdm: ")]
    assert progress and progress[-1].startswith("train gdm: 30/30 (100%)")
    assert "elapsed" in progress[-1]


def test_an_interrupted_cycle_resumes_from_its_last_finished_phase(tmp_path):
    out = tmp_path / "run"

    def stop_in_t2(stage: str, _status: dict) -> None:
        if " T2 collect" in stage:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cycle(TINY, out, stop_in_t2)
    t1_model = out / "models" / "t1_gdm" / "model.safetensors"
    before = t1_model.stat().st_mtime_ns
    stages: list[str] = []
    doc = run_cycle(TINY, out, lambda stage, _s: stages.append(stage), resume=True)
    assert doc["run"]["skipped"] == ["T1"]
    assert t1_model.stat().st_mtime_ns == before  # T1 was not trained again
    assert not any(" T1 " in s for s in stages)
    assert [p["name"] for p in doc["phases"]] == ["T1", "T2", "T3"]
    straight = run_cycle(TINY, tmp_path / "straight")
    for a, b in zip(doc["phases"], straight["phases"], strict=True):
        assert a["methods"]["gdm"]["rate"] == pytest.approx(b["methods"]["gdm"]["rate"])
    with pytest.raises(Exception, match="other settings"):
        run_cycle(CycleConfig(**{**TINY.__dict__, "t3_steps": 5}), out, resume=True)


def test_report_says_what_made_it(tmp_path):
    doc = run_cycle(TINY, tmp_path / "run")
    run = doc["run"]
    for key in ("aigxctl", "command", "wall_seconds", "host", "cpu", "python", "torch"):
        assert run[key] not in (None, "")
    assert Path(run["directory"]).is_absolute()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["step"] == 0 and "val_fraction" in r for r in rows)  # curves start at step 0
    assert {r["method"] for r in rows if r["phase"] == "T2"} == {"gdm"}


@pytest.mark.parametrize("command", ["train", "allocate", "collect", "evaluate", "cycle"])
def test_help_shows_defaults_and_no_bool_metavars(run, command):
    res = run(command, "--help")
    assert res.exit_code == 0
    text = " ".join(res.stdout.replace("│", " ").split())  # unwrapped, without the frame
    assert "<bool>" not in text.replace("--help -h <bool>", "")
    if command == "train":
        for shown in ("[default: gdm]", "<gdm|mlp>", "<vp|linear|cosine>",
                      "[default: 3000; with --mode reward 1000]", "512; with --mode reward 256",
                      "<abs|simplex|relu>", "[default: simplex]"):  # fmt: skip
            assert shown in text, shown


def test_cycle_cli_resume_and_quiet(run, tmp_path, monkeypatch):
    monkeypatch.setitem(os.environ, "COLUMNS", "120")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[cycle]\nsamples = 300\nt1_steps = 4\nt3_steps = 2\neval_samples = 100\n"
                   "hidden = 8\nval_every = 2\nsac = false\nmlp = false\n")  # fmt: skip
    res = run("cycle", "--config", cfg, "--out", tmp_path / "r", "--quiet")
    assert res.exit_code == 0, res.stderr
    assert "[1/" not in res.stderr
    res = run("cycle", "--config", cfg, "--out", tmp_path / "r", "--resume")
    assert res.exit_code == 0, res.stderr
    assert "T1, T2, T3 were done already" in res.stderr


@pytest.mark.parametrize("width", [40, 80, 200])
def test_tables_never_cut_a_number(width):
    from rich.console import Console

    rows = [[f"{10**i:,}", "20", f"{1.2345e7 * i:.6e}", f"{i * 1234.5:.1f}x"] for i in range(4)]
    t = report.table("bench", ["B", "M", "core rows/s", "speed-up vs numpy"], rows)
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(t)
    text = console.export_text()
    assert "…" not in text
    for row in rows:
        for cell in row:
            assert cell in text, (width, cell)


@pytest.mark.slow
def test_ddp_training_reports_rank_0_progress_and_the_real_wall_time(tmp_path):
    d = tmp_path / "t1.npz"
    data.collect_to_file(scenarios.get("t1"), 400, 0, d)
    exe = Path(sys.executable).with_name("aigxctl")
    res = subprocess.run([str(exe), "train", "--data", str(d), "--out", str(tmp_path / "m"),
                          "--steps", "20", "--hidden", "8", "--val-every", "10", "--nproc", "2"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert any(ln.startswith("train gdm: 20/20 (100%)") for ln in lines), res.stderr
    summary = next(ln for ln in lines if "20 steps on" in ln)
    seconds = float(summary.split(" in ")[1].split(" s")[0])
    assert seconds > 1.0  # spawning two workers alone takes longer than that
