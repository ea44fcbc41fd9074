"""aigxctl serve: the drift detector (no false alarm on a stationary stream, detection on a
weather change), the model swap (never a half-loaded model), one output line per input line in
order under micro-batching, and a clean stop on SIGTERM."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from aigxctl import core, drift, scenarios, serve
from aigxctl.checkpoint import default_model_path, load_model
from aigxctl.errors import UserError
from aigxctl.settings import PRECISIONS, ServeConfig

M = 20


@pytest.fixture(scope="module")
def pretrained():
    return load_model()


def _reference(model) -> drift.Reference:
    return drift.Reference(np.asarray(model.cond_mean, float), np.asarray(model.cond_std, float))


def _rates(model, gains):
    power = model.allocate(gains, seed=3)
    opt = core.sum_rate(gains, core.waterfill(gains, model.total_power, model.noise), model.noise)
    return core.sum_rate(gains, power, model.noise), opt


# ---- the detector ---------------------------------------------------------------------------


def test_no_false_alarm_on_a_stationary_stream_of_50000_decisions(pretrained):
    cfg = ServeConfig()
    gains = scenarios.draw(scenarios.get("t1"), 50_000, 11)
    got, opt = _rates(pretrained, gains)
    test = drift.DistributionTest(_reference(pretrained), cfg.drift_window, cfg.drift_threshold)
    quality = drift.QualityWindow(cfg.quality_window)
    rng = np.random.default_rng(0)
    scores, audits = [], 0
    for a in range(0, len(gains), cfg.batch):
        b = min(a + cfg.batch, len(gains))
        test.add(gains[a:b])
        audited = rng.random(b - a) < cfg.audit
        quality.add(got[a:b][audited], opt[a:b][audited])
        audits += int(audited.sum())
        assert not quality.below(cfg.min_quality), (a, quality.fraction)
        scores.append(test.score())
        assert not test.fired(), (a, test.last_score)
    assert audits > 800 and max(scores) > 0  # the signals were really computed


def test_no_false_alarm_on_heavy_tailed_rain_against_its_own_data():
    """Shadowed Nakagami channels have heavy tails: the variance test must not fire on them
    once the reference is data of the same weather (what serve uses after a retraining)."""
    rain = scenarios.get(str(Path(__file__).parents[1] / "examples" / "rainstorm.toml"))
    ref = drift.Reference.of(scenarios.draw(rain, 7168, 1))
    test = drift.DistributionTest(ref, 512, ServeConfig().drift_threshold)
    gains = scenarios.draw(rain, 50_000, 12)
    for a in range(0, len(gains), 64):
        test.add(gains[a : a + 64])
        assert not test.fired(), (a, test.last_score)


def test_a_weather_change_is_detected_within_1000_decisions_by_both_signals(pretrained):
    cfg = ServeConfig()
    t1 = scenarios.draw(scenarios.get("t1"), 2048, 21)
    t2 = scenarios.draw(scenarios.get("t2"), 2048, 22)
    test = drift.DistributionTest(_reference(pretrained), cfg.drift_window, cfg.drift_threshold)
    quality = drift.QualityWindow(cfg.quality_window)
    for a in range(0, len(t1), 64):
        test.add(t1[a : a + 64])
    assert not test.fired()
    fired_at = None
    for a in range(0, 1000, 64):
        test.add(t2[a : a + 64])
        if test.fired():
            fired_at = a + 64
            break
    assert fired_at is not None and fired_at <= 1000
    got, opt = _rates(pretrained, t2[:20])  # the first 20 audits already say it
    quality.add(got, opt)
    assert quality.below(cfg.min_quality) and quality.fraction < 0.95


def test_the_quality_window_needs_enough_audits_and_forgets_on_reset():
    q = drift.QualityWindow(100)
    q.add(np.full(drift.QUALITY_MIN_AUDITS - 1, 0.5), np.ones(drift.QUALITY_MIN_AUDITS - 1))
    assert q.fraction == pytest.approx(0.5) and not q.below(0.99)
    q.add(np.array([0.5]), np.array([1.0]))
    assert q.below(0.99)
    q.reset()
    assert q.fraction is None and not q.below(0.99)


# ---- the swap -------------------------------------------------------------------------------


def test_a_swap_offers_only_a_whole_model_and_a_broken_one_changes_nothing(tmp_path, monkeypatch):
    first = serve.ModelSlot.ready(default_model_path(), 0)
    slot = serve.ModelSlot(first)
    assert slot.take() is None  # nothing pending
    # A broken candidate: its weights do not match the config.
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in default_model_path().iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = next(p for p in broken.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    slot.load(broken)
    slot.loading.join()
    taken = slot.take()
    assert isinstance(taken, str) and slot.current is first

    # While a load is in progress, the serving side sees the old model, never a part-built one.
    release = threading.Event()
    real_ready = serve.ModelSlot.ready

    def slow_ready(path, generation):
        release.wait(10)
        return real_ready(path, generation)

    monkeypatch.setattr(serve.ModelSlot, "ready", staticmethod(slow_ready))
    slot.load(default_model_path())
    for _ in range(5):
        assert slot.take() is None and slot.current is first
        time.sleep(0.01)
    release.set()
    slot.loading.join()
    taken = slot.take()
    assert isinstance(taken, serve.Served) and slot.current is taken
    assert taken.generation == 1 and taken.model.fused_sampler() is not None
    assert taken.model._fused is not None  # packed before it was offered


# ---- ordering, micro-batching, bad lines ----------------------------------------------------


class _Fake:
    """A model whose answer is a known function of its row (p proportional to g), so the
    output can be matched to its input line exactly."""

    arch = "gdm"
    m, total_power, noise = 3, 0.2, 1.0
    cond_mean, cond_std = np.ones(3), np.ones(3)
    module = None

    precisions: ClassVar[list] = []  # every precision asked, across instances

    def allocate(self, gains, seed=None, precision="f32"):
        self.precisions.append(precision)
        g = np.asarray(gains, float)
        return 0.2 * g / g.sum(axis=1, keepdims=True)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    def ready(path, gen):
        return serve.Served(_Fake(), Path(path), gen)

    monkeypatch.setattr(serve.ModelSlot, "ready", staticmethod(ready))
    return tmp_path


class _Lines(io.StringIO):
    """stdout that records when each line arrived."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def write(self, s):
        self.times += [time.perf_counter()] * s.count("\n")
        return super().write(s)


def test_every_input_line_gets_one_output_line_in_order(fake):
    rng = np.random.default_rng(1)
    rows = rng.uniform(0.5, 3, (500, 3))
    lines = ["g1,g2,g3"] + [",".join(f"{v:.6f}" for v in r) for r in rows]
    lines[101] = "1,x,2"        # not a number
    lines[202] = ""             # blank
    lines[303] = "1,2"          # too few columns
    lines[404] = "1,-2,3"       # not a valid gain
    data = ("\n".join(lines) + "\n").encode()
    out = _Lines()
    cfg = ServeConfig(batch=7, max_wait_ms=1.0, audit=0.0, model="m")
    with pytest.raises(UserError, match="3 input line"):
        serve.run(cfg, stdin=io.BytesIO(data), stdout=out)
    got = out.getvalue().split("\n")[:-1]
    assert len(got) == len(lines)
    assert got[0] == "p1,p2,p3" and got[202] == ""
    for i in (101, 303, 404):
        assert got[i] == "nan,nan,nan"
    for i, line in enumerate(lines[1:], start=1):
        if i in (101, 202, 303, 404):
            continue
        g = np.array([float(v) for v in line.split(",")])
        np.testing.assert_allclose([float(v) for v in got[i].split(",")], 0.2 * g / g.sum(),
                                   rtol=1e-8)  # fmt: skip


def test_input_rows_follow_allocates_csv_rules(fake, capsys):
    # The same delimiter detection and number syntax as `allocate --gains` (files.py).
    data = b"1;2;3\n4;1_000;6\n2;2;2\n"
    out = _Lines()
    cfg = ServeConfig(batch=4, max_wait_ms=1.0, audit=0.0, model="m")
    with pytest.raises(UserError, match="1 input line"):
        serve.run(cfg, stdin=io.BytesIO(data), stdout=out)
    got = out.getvalue().split("\n")[:-1]
    assert got[1] == "nan,nan,nan"
    np.testing.assert_allclose([float(v) for v in got[0].split(",")], [0.2 / 6, 0.4 / 6, 0.1])
    assert "row 2, column 2: '1_000' is not a number" in capsys.readouterr().err


def test_a_slow_producer_gets_answers_within_max_wait(fake):
    r, w = os.pipe()
    reader = os.fdopen(r, "rb")
    out = _Lines()
    cfg = ServeConfig(batch=64, max_wait_ms=20.0, audit=0.0, model="m")

    def produce():
        with os.fdopen(w, "wb") as f:
            for _ in range(3):
                f.write(b"1,2,3\n")
                f.flush()
                time.sleep(0.3)  # far longer than max-wait: each row must be answered alone

    writer = threading.Thread(target=produce)
    sent = time.perf_counter()
    writer.start()
    with reader:
        serve.run(cfg, stdin=reader, stdout=out)
    writer.join()
    assert len(out.times) == 3
    # Row k was written at about sent + 0.3 k and must be out well before the next one.
    for k, t in enumerate(out.times):
        assert t - (sent + 0.3 * k) < 0.25, (k, t - sent)


def test_a_foreign_header_and_a_bad_timeline_are_one_line_errors(fake, tmp_path):
    cfg = ServeConfig(model="m", audit=0.0)
    with pytest.raises(UserError, match="not gains"):
        serve.run(cfg, stdin=io.BytesIO(b"a,b,c\n1,2,3\n"), stdout=io.StringIO())
    bad = tmp_path / "t.toml"
    bad.write_text('[[segment]]\nscenario = "t1"\ndecisions = 0\n')
    with pytest.raises(UserError, match="segment 1: decisions"):
        serve.read_timeline(bad)
    bad.write_text('[[segment]]\nscenario = "nowhere"\ndecisions = 5\n')
    with pytest.raises(UserError, match="unknown scenario"):
        serve.read_timeline(bad)


# ---- the whole cycle, small, and a stop on SIGTERM -------------------------------------------


@pytest.mark.slow
def test_a_small_timeline_detects_retrains_validates_and_reports(tmp_path):
    timeline = tmp_path / "w.toml"
    timeline.write_text('rate = 20000\n[[segment]]\nscenario = "t1"\ndecisions = 1500\n'
                        '[[segment]]\nscenario = "t2"\ndecisions = 3000\n')  # fmt: skip
    out = tmp_path / "run"
    cfg = ServeConfig(timeline=str(timeline), out=str(out), collect=512, retrain_steps=300,
                      audit=0.05)  # fmt: skip
    result = serve.run(cfg, stdout=io.StringIO())
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    for kind in ("drift_detected", "collecting", "training_started", "training_finished",
                 "validation"):  # fmt: skip
        assert kind in kinds, kinds
    t1, t2 = result["segments"]
    assert t1["time_to_detect_decisions"] is None
    assert t2["time_to_detect_decisions"] is not None and t2["time_to_detect_decisions"] < 1000
    assert t1["fraction_of_optimum"] > 0.99 > t2["fraction_of_optimum"]
    validation = next(e for e in events if e["event"] == "validation")
    assert validation["accepted"] == (validation["candidate"] > validation["current"])
    if validation["accepted"]:  # swapped in before the end (the input waits for it)
        assert result["swaps"] and result["generation"] == 1
        assert (out / "retrain" / "gen-1").is_dir()
    assert json.loads((out / "report.json").read_text())["decisions"] == 4500
    assert (out / "serve.png").stat().st_size > 1000
    assert result["latency_ms"]["p99"] is not None


@pytest.mark.slow
def test_sigterm_answers_every_row_read_then_saves_report_and_events(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from aigxctl.cli import main; main()", "serve", "--out",
         str(out), "--quiet", "--max-wait", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    gains = scenarios.draw(scenarios.get("t1"), 300, 5)
    text = "".join(",".join(f"{v:.5f}" for v in r) + "\n" for r in gains)
    proc.stdin.write(text.encode())
    proc.stdin.flush()
    got = []
    while len(got) < 300:  # every row written is answered while the input stays open
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode()
        got.append(line)
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert rest == b""
    assert all(len(line.split(b",")) == M for line in got)
    report = json.loads((out / "report.json").read_text())
    assert report["decisions"] == 300
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "stop" and events[-1]["signal"] == "SIGTERM"


@pytest.mark.slow
def test_a_closed_stdout_is_one_line_and_exit_2(tmp_path):
    gains = scenarios.draw(scenarios.get("t1"), 3000, 6)
    text = "".join(",".join(f"{v:.5f}" for v in r) + "\n" for r in gains)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from aigxctl.cli import main; main()", "serve", "--quiet",
         "--batch", "8"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    head, rest = text[:2000].rsplit("\n", 1)[0] + "\n", text[2000:].split("\n", 1)[1]
    proc.stdin.write(head.encode())
    proc.stdin.flush()
    assert proc.stdout.readline()
    proc.stdout.close()  # the consumer goes away (| head -1)
    _, err = proc.communicate(rest.encode(), timeout=60)
    assert proc.returncode == 2, err.decode()
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "stdout was closed" in lines[0]


def test_decisions_are_made_in_the_precision_asked(fake):
    data = ("\n".join(["1,2,3"] * 20) + "\n").encode()
    _Fake.precisions.clear()
    cfg = ServeConfig(batch=8, max_wait_ms=1.0, audit=0.0, model="m", precision="bf16")
    serve.run(cfg, stdin=io.BytesIO(data), stdout=io.StringIO())
    assert _Fake.precisions and set(_Fake.precisions) == {"bf16"}


def test_serving_the_pretrained_model_in_bf16_is_close_to_f32():
    rows = np.random.default_rng(8).uniform(1, 7, (40, 20))
    data = ("\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n").encode()
    got = {}
    for precision in PRECISIONS:
        out = io.StringIO()
        cfg = ServeConfig(batch=16, max_wait_ms=1.0, audit=0.0, precision=precision)
        serve.run(cfg, stdin=io.BytesIO(data), stdout=out)
        got[precision] = np.loadtxt(io.StringIO(out.getvalue()), delimiter=",")
    np.testing.assert_allclose(got["bf16"].sum(axis=1), 0.2, rtol=1e-5)
    assert np.abs(got["bf16"] - got["f32"]).max() < 2e-3

