"""``aigxctl serve``: the virtuous cycle as a running system.

Rows of channel gains come in (stdin CSV, or a simulated ``--timeline`` of scenarios); each
micro-batch is decided by the current model with the fused core and written out at once, one
output line per input line, in order. Behind the answers the server watches itself: a small
share of decisions is also solved exactly (the audited quality) and the incoming gains are
tested against the training distribution (:mod:`aigxctl.drift`). When either says the world
changed, it keeps the next rows with exact labels, fine-tunes a copy of the model in a
background process (``train --init``) while the current one keeps answering, validates the
candidate on held-back rows and swaps it in between two batches, only if it is better. Every
step is an event in the log; the old models stay on disk.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from aigxctl import core, drift, files, outputs, scenarios, signals
from aigxctl.errors import UserError
from aigxctl.settings import ServeConfig

__all__ = ["LAYOUT", "ModelSlot", "Segment", "ServeConfig", "read_timeline", "run"]

# What serve writes in --out (outputs.claim_dir refuses anything else there).
LAYOUT: outputs.Layout = {
    "report.json": None,
    "events.jsonl": None,
    "serve.png": None,
    "retrain": ("gen-*.npz", "gen-*/", ".gen-*.tmp/"),
}
FINAL_ROWS = 2000  # a segment's "final" fraction of the optimum: over its last rows
SERIES_BLOCK = 500  # decisions per point of the figure's curve
STATUS_EVERY = 0.25  # seconds between status-line updates
MAX_SEGMENTS = 1000
DEFAULT_RATE = 1000.0  # decisions per second of a timeline that sets no rate (nor --rate)


# ---- the simulated stream ---------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One stretch of a timeline: ``decisions`` rows drawn from ``scenario``."""

    name: str
    scenario: scenarios.Scenario
    decisions: int


def read_timeline(path: str | Path) -> tuple[list[Segment], float | None]:
    """The segments of a timeline TOML and its ``rate`` (decisions per second) if it sets one.
    Scenario paths are relative to the timeline's folder (or the working directory)."""
    raw = scenarios.read_toml(path, "timeline")
    unknown = set(raw) - {"segment", "rate"}
    if unknown:
        raise UserError(f"{path}: unknown key {sorted(unknown)[0]!r} (a timeline has [[segment]] "
                        "tables and an optional rate)")  # fmt: skip
    segs = raw.get("segment")
    if not isinstance(segs, list) or not segs or len(segs) > MAX_SEGMENTS:
        raise UserError(f"{path}: needs 1 to {MAX_SEGMENTS} [[segment]] tables")
    rate = raw.get("rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                             or not 0 < rate < math.inf):  # fmt: skip
        raise UserError(f"{path}: rate must be a number of decisions per second > 0, got {rate!r}")
    out = []
    for i, seg in enumerate(segs, start=1):
        where = f"{path}: segment {i}"
        if not isinstance(seg, dict) or set(seg) - {"scenario", "decisions"}:
            raise UserError(f"{where}: takes scenario and decisions only")
        name, n = seg.get("scenario"), seg.get("decisions")
        if not isinstance(name, str):
            raise UserError(f"{where}: scenario must be a built-in name or a .toml path")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10_000_000:
            raise UserError(f"{where}: decisions must be an integer in [1, 10,000,000], got {n!r}")
        near = Path(path).parent / name
        scenario = scenarios.get(near if name.endswith(".toml") and near.exists() else name)
        out.append(Segment(name, scenario, n))
    return out, (float(rate) if rate is not None else None)


# ---- input ------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Rows to decide together. ``slots`` (stdin) says what each input line was, in order:
    ``("row", None)``, ``("header", None)``, ``("blank", None)`` or ``("bad", message)``;
    None (a timeline) means every line is a row. ``segment``: the timeline segment."""

    rows: np.ndarray
    slots: list[tuple[str, str | None]] | None = None
    segment: int = 0
    formed: float = 0.0


class _TimelineSource:
    """Draws each segment's rows (seeded) and hands them out at ``rate`` decisions per second,
    in batches that never straddle two segments."""

    def __init__(self, segments: list[Segment], rate: float, batch: int, seed: int) -> None:
        self.segments, self.rate, self.batch, self.seed = segments, rate, batch, seed
        self.index, self.offset, self.served = 0, 0, 0
        self.rows = self._draw(0)
        self.t0: float | None = None


    def _draw(self, i: int) -> np.ndarray:
        return scenarios.draw(self.segments[i].scenario, self.segments[i].decisions,
                              self.seed + i)  # fmt: skip

    def next_batch(self, stop: Callable[[], bool]) -> Batch | None:
        if self.t0 is None:
            self.t0 = time.perf_counter()
        if self.offset >= len(self.rows):
            self.index += 1
            if self.index >= len(self.segments):
                return None
            self.rows, self.offset = self._draw(self.index), 0
        rows = self.rows[self.offset : self.offset + self.batch]
        due = self.t0 + (self.served + len(rows)) / self.rate
        while not stop() and (wait := due - time.perf_counter()) > 0:
            time.sleep(min(wait, 0.05))
        self.offset += len(rows)
        self.served += len(rows)
        return Batch(rows, None, self.index, time.perf_counter())


class _StdinSource:
    """Reads CSV lines on a thread (so a slow producer still gets answers within max-wait) and
    hands them out in batches of at most ``batch`` rows. Same rules as ``allocate --gains``:
    a delimiter from the first line, an optional header naming g1..gM (collect's p* and
    sum_rate are read past); a line that is not a row of valid gains is answered with a row of
    nan and a message naming it."""

    def __init__(self, stream: BinaryIO, m: int, batch: int, max_wait: float) -> None:
        self.m, self.batch, self.max_wait = m, batch, max_wait
        self.items: queue.Queue[tuple[str, Any, int] | None] = queue.Queue()
        self.name = "<stdin>"
        self.fatal: UserError | None = None
        self.ended = False
        self.delimiter: str | None = None
        self.columns: list[int] | None = None
        self.width: int | None = None
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: BinaryIO) -> None:
        try:
            for line_no, raw in enumerate(_raw_lines(stream), start=1):
                self.items.put(self._parse(raw, line_no))
        except UserError as exc:
            self.fatal = exc
        except (OSError, ValueError) as exc:
            self.fatal = UserError(f"{self.name}: cannot read ({exc})")
        self.items.put(None)

    def _parse(self, raw: bytes, line_no: int) -> tuple[str, Any, int]:
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return "bad", f"{self.name}: row {line_no}: not UTF-8 text", line_no
        if not text:
            return "blank", None, line_no
        if self.delimiter is None:
            self.delimiter = files.delimiter_of(text)
        fields = [f.strip() for f in next(csv.reader([text], delimiter=self.delimiter))]
        if self.columns is None:
            self.width = len(fields)
            if not any(files.is_number(f) for f in fields):
                self.columns = files.gain_columns(fields, len(fields), self.name)
                if len(self.columns) != self.m:
                    raise UserError(f"{self.name}: the header names {len(self.columns)} gain "
                                    f"columns, the model takes M = {self.m}")  # fmt: skip
                return "header", None, line_no
            self.columns = list(range(len(fields)))
        if len(fields) != self.width or len(self.columns) != self.m:
            want = self.width if len(self.columns) == self.m else self.m
            return "bad", (f"{self.name}: row {line_no} has {len(fields)} columns, expected "
                           f"{want}"), line_no  # fmt: skip
        values = []
        for col in self.columns:
            try:
                v = files.parse_number(fields[col])
            except ValueError:
                shown = repr(fields[col]) if fields[col] else "an empty field"
                return "bad", f"{self.name}: row {line_no}, column {col + 1}: {shown} is not a " \
                              "number", line_no  # fmt: skip
            if not (math.isfinite(v) and v >= 0):
                return "bad", (f"{self.name}: row {line_no}, column {col + 1}: {fields[col]!r} "
                               "is not a valid gain (must be finite and >= 0)"), line_no
            values.append(v)
        return "row", values, line_no

    def next_batch(self, stop: Callable[[], bool], poll: float = 0.05) -> Batch | None:
        """The next batch; an empty one when nothing arrived within ``poll`` s (so the caller
        can look after retraining), None at the end of the input."""
        if self.ended:
            return None
        try:
            first = self.items.get(timeout=poll)
        except queue.Empty:
            return Batch(np.empty((0, self.m)), [])
        items = [first]
        deadline = time.perf_counter() + self.max_wait
        rows = 1 if first is not None and first[0] == "row" else 0
        while first is not None and rows < self.batch:
            try:
                wait = deadline - time.perf_counter()
                item = self.items.get_nowait() if wait <= 0 else self.items.get(timeout=wait)
            except queue.Empty:
                break
            items.append(item)
            if item is None:
                break
            rows += item[0] == "row"
        if items[-1] is None:
            self.ended = True
            items.pop()
            if self.fatal is not None and not items:
                raise self.fatal
        slots = [(kind, payload if kind == "bad" else None) for kind, payload, _ in items]
        data = [payload for kind, payload, _ in items if kind == "row"]
        arr = np.asarray(data, dtype=np.float64).reshape(len(data), self.m)
        return Batch(arr, slots, 0, time.perf_counter())

    def drain(self) -> Batch | None:
        """Every line already read (at a stop: none is lost), as one batch."""
        items = []
        with contextlib.suppress(queue.Empty):
            while True:
                item = self.items.get_nowait()
                if item is None:
                    break
                items.append(item)
        if not items:
            return None
        data = [payload for kind, payload, _ in items if kind == "row"]
        slots = [(kind, payload if kind == "bad" else None) for kind, payload, _ in items]
        return Batch(np.asarray(data, dtype=np.float64).reshape(len(data), self.m), slots)


def _raw_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of ``stream``, read from its file descriptor when it has one: a daemon thread
    blocked in a buffered reader holds its lock, and interpreter shutdown (after a signal, or
    a closed stdout) then aborts on it; a thread blocked in os.read holds nothing."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        yield from stream
        return
    pending = b""
    while chunk := os.read(fd, 1 << 16):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
        if len(pending) > files.MAX_LINE_BYTES:
            raise UserError(f"<stdin>: a line longer than {files.MAX_LINE_BYTES:,} bytes")
    if pending:
        yield pending


# ---- the model being served, and its replacement ----------------------------------------------


@dataclass(frozen=True)
class Served:
    """A model ready to answer (loaded and packed for the fused core), where it is on disk, and
    its generation (0: the one serve started with)."""

    model: Any
    path: Path
    generation: int


class ModelSlot:
    """The model in service. A replacement is loaded and packed on a thread, then offered;
    the serving loop takes it between two batches (:meth:`take`), so no decision ever sees a
    half-loaded model, and a candidate that fails to load leaves the current one in place."""

    def __init__(self, served: Served) -> None:
        self.current = served
        self._lock = threading.Lock()
        self._pending: Served | str | None = None
        self.loading: threading.Thread | None = None

    @staticmethod
    def ready(path: Path, generation: int) -> Served:
        """Load ``path`` completely: weights read and checked, fused weights packed."""
        from aigxctl.checkpoint import load_model

        model = load_model(path)
        model.module.eval()
        if hasattr(model, "fused_sampler"):
            model.fused_sampler()
        return Served(model, path, generation)

    def load(self, path: Path) -> None:
        """Start loading ``path`` as the next generation in the background."""
        generation = self.current.generation + 1

        def work() -> None:
            try:
                result: Served | str = self.ready(path, generation)
            except Exception as exc:  # the reason goes into the events log
                result = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._pending = result

        self.loading = threading.Thread(target=work, daemon=True)
        self.loading.start()

    def take(self) -> Served | str | None:
        """The loaded replacement (now current), an error message (current unchanged), or
        None while nothing is ready."""
        with self._lock:
            pending, self._pending = self._pending, None
        if isinstance(pending, Served):
            self.current = pending
        return pending


# ---- background retraining --------------------------------------------------------------------


def _retrain(job: dict[str, Any], results: Any) -> None:
    """The retraining process: fine-tune ``job['init']`` on the collected rows with its own
    threads, then score the candidate and the current model on the held-back rows."""
    import torch

    from aigxctl import data, metrics
    from aigxctl.checkpoint import load_model
    from aigxctl.settings import TrainConfig
    from aigxctl.train import _die_with_parent, train

    _die_with_parent()
    torch.set_num_threads(job["threads"])
    core.set_num_threads(job["threads"])
    try:
        t0 = time.perf_counter()
        result = train(TrainConfig(data=[job["data"]], out=job["out"], init=job["init"],
                                   steps=job["steps"], lr=job["lr"], seed=job["seed"],
                                   val_every=job["steps"], force=True))  # fmt: skip
        trained = time.perf_counter() - t0
        held = data.load(job["holdout"])
        gains, noise, power = held.gains, held.noise, held.total_power
        opt = metrics.optimum_rate(gains, power, noise)
        scores = {}
        for key in ("candidate", "current"):
            model = load_model(job["out"] if key == "candidate" else job["init"])
            decided = model.allocate(gains, power, seed=1234, precision=job["precision"])
            rate = metrics.mean_rate(gains, decided, noise)
            scores[key] = rate / opt
        results.put({"ok": True, "train_seconds": trained, "steps": result.get("step"), **scores})
    except BaseException as exc:
        results.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


class _Trainer:
    """One retraining in a spawned process (its own interpreter and thread count)."""

    def __init__(self, job: dict[str, Any]) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.results = ctx.SimpleQueue()
        self.proc = ctx.Process(target=_retrain, args=(job, self.results), daemon=True)
        self.proc.start()

    def poll(self) -> dict[str, Any] | None:
        if not self.results.empty():
            result = self.results.get()
            self.proc.join(timeout=5)
            return result
        if not self.proc.is_alive():
            return {"ok": False, "error": f"the retraining process died (exit code "
                                          f"{self.proc.exitcode})"}  # fmt: skip
        return None

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()


# ---- events -----------------------------------------------------------------------------------


class _Events:
    """The events log: one JSON object a line, flushed as it happens, and kept for the report."""

    def __init__(self, path: Path | None, t0: float) -> None:
        self.t0 = t0
        self.items: list[dict[str, Any]] = []
        self.f: TextIO | None = None
        if path is not None:
            try:
                self.f = open(path, "w", encoding="utf-8")  # noqa: SIM115 - a live log
            except OSError as exc:
                raise UserError(f"{path}: cannot write the events log ({exc.strerror})") from None

    def __call__(self, event: str, decision: int, quality: float | None,
                 **extra: Any) -> dict[str, Any]:  # fmt: skip
        item = {"event": event, "decision": decision,
                "time": round(time.perf_counter() - self.t0, 4),
                "quality": None if quality is None else round(quality, 6), **extra}  # fmt: skip
        self.items.append(item)
        if self.f is not None:
            self.f.write(json.dumps(item) + "\n")
            self.f.flush()
        return item

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


# ---- the server -------------------------------------------------------------------------------


def _format_rows(power: np.ndarray) -> list[str]:
    buf = io.StringIO()
    np.savetxt(buf, power, fmt="%.9g", delimiter=",")
    return buf.getvalue().splitlines()


@dataclass
class _Stats:
    """What the report is made of: latencies, per-segment audit sums, exact per-row rates on a
    timeline."""

    latency: list[tuple[float, bool]] = field(default_factory=list)
    audit: dict[int, list[float]] = field(default_factory=dict)  # segment -> [model, optimum]
    model_rate: np.ndarray | None = None
    opt_rate: np.ndarray | None = None


class Server:
    """The serving loop's state: the model slot, the two drift signals, the collection of new
    data and the retraining in flight."""

    def __init__(self, cfg: ServeConfig, slot: ModelSlot, work: Path, events: _Events,
                 write: Callable[[str], None], status: Callable[[str, str], None],
                 total: int | None) -> None:  # fmt: skip
        self.cfg, self.slot, self.work, self.event = cfg, slot, work, events
        self.write, self.status = write, status
        model = slot.current.model
        self.m, self.power, self.noise = model.m, model.total_power, model.noise
        self.quality = drift.QualityWindow(cfg.quality_window)
        ref = drift.Reference(np.asarray(model.cond_mean, dtype=np.float64),
                              np.asarray(model.cond_std, dtype=np.float64))  # fmt: skip
        self.test = drift.DistributionTest(ref, cfg.drift_window, cfg.drift_threshold)
        self.rng = np.random.default_rng(cfg.seed)
        self.state = "serving"
        self.collected: list[np.ndarray] = []
        self.trainer: _Trainer | None = None
        self.retrain_data: np.ndarray | None = None
        self.decisions = 0
        self.batches = 0
        self.segment = 0
        self.detected_at: tuple[int, float] | None = None
        self.stats = _Stats()
        if total is not None:
            self.stats.model_rate = np.full(total, np.nan)
            self.stats.opt_rate = np.full(total, np.nan)
        self.last_status = 0.0
        self.bad_lines = 0
        self.first_bad: str | None = None

    @property
    def training(self) -> bool:
        return self.trainer is not None or self.slot.loading is not None

    # -- one batch --------------------------------------------------------------------------

    def decide(self, batch: Batch) -> None:
        """Answer ``batch`` (written and flushed before anything else is done), then learn
        from it."""
        t0 = time.perf_counter()
        rows = batch.rows
        power = None
        if len(rows):
            power = self.slot.current.model.allocate(rows, seed=self.cfg.seed + self.batches,
                                                     precision=self.cfg.precision)
        self._emit(batch, power)
        if len(rows):
            self.stats.latency.append((time.perf_counter() - t0, self.training))
        self.batches += 1
        self.segment = batch.segment
        if len(rows):
            assert power is not None
            start = self.decisions
            self.decisions += len(rows)  # events name the decisions answered so far
            self._watch(rows, power, batch.segment, start)
        self.look_after()

    def _emit(self, batch: Batch, power: np.ndarray | None) -> None:
        lines = _format_rows(power) if power is not None and len(power) else []
        if batch.slots is None:
            self.write("\n".join(lines) + "\n" if lines else "")
            return
        out, k = [], 0
        nan_row = ",".join(["nan"] * self.m)
        for kind, message in batch.slots:
            if kind == "row":
                out.append(lines[k])
                k += 1
            elif kind == "header":
                out.append(",".join(f"p{i}" for i in range(1, self.m + 1)))
            elif kind == "blank":
                out.append("")
            else:
                out.append(nan_row)
                self.bad_lines += 1
                self.first_bad = self.first_bad or message
                from aigxctl import report

                report.error(f"{message}; answered with a row of nan")
        if out:
            self.write("\n".join(out) + "\n")

    def _watch(self, rows: np.ndarray, power: np.ndarray, segment: int, start: int) -> None:
        """The two drift signals, the exact scoring of a timeline (rows from decision
        ``start``), the collection."""
        n = len(rows)
        self.test.add(rows)
        audited = self.rng.random(n) < self.cfg.audit
        stats = self.stats
        if stats.model_rate is not None:  # a timeline: every row scored exactly, for the report
            opt = core.sum_rate(rows, core.waterfill(rows, self.power, self.noise), self.noise)
            got = core.sum_rate(rows, power, self.noise)
            stats.model_rate[start : start + n] = got
            stats.opt_rate[start : start + n] = opt
            opt_a, got_a = opt[audited], got[audited]
        elif audited.any():
            g = rows[audited]
            opt_a = core.sum_rate(g, core.waterfill(g, self.power, self.noise), self.noise)
            got_a = core.sum_rate(g, power[audited], self.noise)
        else:
            opt_a = got_a = np.empty(0)
        if len(opt_a):
            self.quality.add(got_a, opt_a)
            sums = stats.audit.setdefault(segment, [0.0, 0.0])
            sums[0] += float(got_a.sum())
            sums[1] += float(opt_a.sum())
        if self.state == "serving":
            self._check_drift()
        if self.state == "collecting":
            self.collected.append(rows.copy())
            if sum(len(c) for c in self.collected) >= self.cfg.collect:
                self._start_training()

    def _check_drift(self) -> None:
        reason = None
        if self.quality.below(self.cfg.min_quality):
            reason = "quality"
        elif self.test.fired():
            reason = "distribution"
        if reason is None:
            return
        self.detected_at = (self.decisions, time.perf_counter())
        self.event("drift_detected", self.decisions, self.quality.fraction, reason=reason,
                   score=round(self.test.last_score, 3), segment=self.segment)  # fmt: skip
        self.event("collecting", self.decisions, self.quality.fraction, rows=self.cfg.collect)
        self.state, self.collected = "collecting", []

    def _start_training(self) -> None:
        from aigxctl import data

        gains = np.concatenate(self.collected)[: self.cfg.collect]
        self.collected = []
        power = core.waterfill(gains, self.power, self.noise)
        order = self.rng.permutation(len(gains))
        n_hold = max(1, round(len(gains) * self.cfg.holdout))
        hold, fit = order[:n_hold], order[n_hold:]
        gen = self.slot.current.generation + 1
        base = self.work / "retrain"
        base.mkdir(exist_ok=True)
        meta = {"format": data.FORMAT, "version": data.VERSION, "total_power": self.power,
                "noise": self.noise, "source": "aigxctl serve", "decision": self.decisions}
        paths = {}
        for key, idx in (("train", fit), ("holdout", hold)):
            g, p = gains[idx], power[idx]
            paths[key] = base / f"gen-{gen}.{key}.npz"
            data.save(data.Dataset(g, p, core.sum_rate(g, p, self.noise), meta), paths[key])
        self.retrain_data = gains[fit]
        job = {"data": str(paths["train"]), "holdout": str(paths["holdout"]),
               "out": str(base / f"gen-{gen}"), "init": str(self.slot.current.path),
               "steps": self.cfg.retrain_steps, "lr": self.cfg.retrain_lr,
               "seed": self.cfg.seed + gen, "threads": self.cfg.train_threads,
               "precision": self.cfg.precision}  # fmt: skip
        self.trainer = _Trainer(job)
        self.state = "training"
        self.event("training_started", self.decisions, self.quality.fraction, generation=gen,
                   rows=len(fit), holdout=len(hold), steps=self.cfg.retrain_steps,
                   model=job["out"])  # fmt: skip

    def look_after(self) -> None:
        """Between batches: the retraining's result, a loaded candidate to swap in, the
        status line."""
        if self.trainer is not None:
            result = self.trainer.poll()
            if result is not None:
                self.trainer = None
                self._trained(result)
        if self.slot.loading is not None:
            taken = self.slot.take()
            if taken is not None:
                self.slot.loading = None
                self._swapped(taken)
        now = time.perf_counter()
        if now - self.last_status >= STATUS_EVERY:
            self.last_status = now
            q = self.quality.fraction
            detail = (f"{self.decisions:,} decisions, gen {self.slot.current.generation}, "
                      f"audited {'-' if q is None else f'{q:.2%}'} of optimum, "
                      f"drift z {self.test.last_score:.1f}")  # fmt: skip
            self.status(self.state, detail)

    def _trained(self, result: dict[str, Any]) -> None:
        gen = self.slot.current.generation + 1
        if not result.get("ok"):
            self.event("training_failed", self.decisions, self.quality.fraction,
                       generation=gen, error=result.get("error"))  # fmt: skip
            self._back_to_serving()
            return
        self.event("training_finished", self.decisions, self.quality.fraction, generation=gen,
                   seconds=round(result["train_seconds"], 2))  # fmt: skip
        better = result["candidate"] > result["current"]
        self.event("validation", self.decisions, self.quality.fraction, generation=gen,
                   candidate=round(result["candidate"], 6), current=round(result["current"], 6),
                   accepted=better)  # fmt: skip
        if better:
            self.slot.load(self.work / "retrain" / f"gen-{gen}")
        else:
            self._back_to_serving()

    def _swapped(self, taken: Served | str) -> None:
        if isinstance(taken, str):
            self.event("swap_failed", self.decisions, self.quality.fraction, error=taken)
            self._back_to_serving()
            return
        since = None if self.detected_at is None else time.perf_counter() - self.detected_at[1]
        self.event("swap", self.decisions, self.quality.fraction, generation=taken.generation,
                   model=str(taken.path), seconds_since_detection=since and round(since, 3),
                   segment=self.segment)  # fmt: skip
        self._back_to_serving()

    def _back_to_serving(self) -> None:
        """The data collected is now the known distribution (kept or not, the model had its
        chance at it); the quality window starts afresh."""
        if self.retrain_data is not None:
            self.test.reset(drift.Reference.of(self.retrain_data))
        self.quality.reset()
        self.state, self.retrain_data, self.detected_at = "serving", None, None

    def finish_training(self, stop: Callable[[], bool]) -> None:
        """At the end of the input: let a retraining in flight finish (and swap), unless a
        signal asks to stop now."""
        while self.training and not stop():
            time.sleep(0.05)
            self.look_after()

    def abandon(self) -> None:
        if self.trainer is not None:
            self.trainer.stop()
            self.event("training_abandoned", self.decisions, self.quality.fraction)
            self.trainer = None


# ---- the report -------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1e3 if values else None


def _report(server: Server, segments: list[Segment] | None, events: list[dict],
            seconds: float) -> dict[str, Any]:  # fmt: skip
    stats = server.stats
    lat = [s for s, _ in stats.latency]
    busy = [s for s, t in stats.latency if t]
    idle = [s for s, t in stats.latency if not t]
    names = [s.name for s in segments] if segments else ["stdin"]
    sizes = [s.decisions for s in segments] if segments else [server.decisions]
    starts = np.cumsum([0, *sizes]).tolist()
    rows = []
    for i, (name, n) in enumerate(zip(names, sizes, strict=True)):
        lo, hi = starts[i], min(starts[i + 1], server.decisions)
        detect = next((e for e in events if e["event"] == "drift_detected"
                       and lo < e["decision"] <= starts[i + 1]), None)  # fmt: skip
        swap = next((e for e in events if e["event"] == "swap" and detect is not None
                     and e["time"] >= detect["time"]), None)  # fmt: skip
        audit = stats.audit.get(i)
        final = None
        if stats.model_rate is not None and hi > lo:
            a = max(lo, hi - FINAL_ROWS)
            final = float(np.sum(stats.model_rate[a:hi]) / np.sum(stats.opt_rate[a:hi]))
        rows.append({
            "scenario": name, "decisions": n,
            "time_to_detect_decisions": None if detect is None else detect["decision"] - lo,
            "recovery_seconds": None if swap is None else round(swap["time"] - detect["time"], 3),
            "fraction_of_optimum": audit[0] / audit[1] if audit and audit[1] > 0 else None,
            "final_fraction_of_optimum": final,
        })  # fmt: skip
    series: dict[str, list[float]] = {"decision": [], "fraction": []}
    if stats.model_rate is not None:
        for a in range(0, server.decisions, SERIES_BLOCK):
            b = min(server.decisions, a + SERIES_BLOCK)
            series["decision"].append(b)
            series["fraction"].append(float(np.sum(stats.model_rate[a:b]) /
                                            np.sum(stats.opt_rate[a:b])))  # fmt: skip
    return {
        "segments": rows,
        "segment_starts": starts[:-1],
        "swaps": [e for e in events if e["event"] == "swap"],
        "detections": [e for e in events if e["event"] == "drift_detected"],
        "latency_ms": {"p50": _percentile(lat, 50), "p99": _percentile(lat, 99),
                       "p50_idle": _percentile(idle, 50), "p99_idle": _percentile(idle, 99),
                       "p50_while_training": _percentile(busy, 50),
                       "p99_while_training": _percentile(busy, 99),
                       "batches": len(lat), "batches_while_training": len(busy)},
        "decisions": server.decisions,
        "batch": server.cfg.batch,
        "seconds": round(seconds, 3),
        "model": str(server.slot.current.path),
        "generation": server.slot.current.generation,
        "bad_lines": server.bad_lines,
        "series": series,
    }  # fmt: skip


# ---- the command ------------------------------------------------------------------------------


def _out_paths(cfg: ServeConfig) -> tuple[Path | None, Path | None]:
    out = None
    if cfg.out is not None:
        out = outputs.claim_dir(cfg.out, LAYOUT, force=cfg.force, what="serve run")
        if cfg.force:
            outputs.remove_own(out, LAYOUT)
        out.mkdir(parents=True, exist_ok=True)
    log = Path(cfg.log) if cfg.log else (out / "events.jsonl" if out else None)
    if cfg.log and log is not None and log.exists() and not cfg.force:
        raise UserError(f"--log {cfg.log}: exists; pass --force to replace it")
    return out, log


def run(cfg: ServeConfig, *, stdin: BinaryIO | None = None, stdout: TextIO | None = None,
        status: Callable[[str, str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Serve until the input ends (or SIGINT/SIGTERM/SIGHUP: the batch in hand and every row
    already read are answered, the report and events written, then
    :class:`aigxctl.signals.Interrupted` is raised). Returns the report."""
    cfg.check()
    from aigxctl import checkpoint

    segments, rate = (read_timeline(cfg.timeline) if cfg.timeline else (None, None))
    model_path = Path(cfg.model) if cfg.model else checkpoint.default_model_path()
    first = ModelSlot.ready(model_path, 0)
    if first.model.arch != "gdm":
        raise UserError(f"--model {model_path}: serve retrains diffusion models; this is a "
                        f"{first.model.arch} model")  # fmt: skip
    out, log = _out_paths(cfg)
    import torch

    torch.set_num_threads(cfg.threads)
    core.set_num_threads(cfg.threads)
    stdout = stdout or sys.stdout

    def write(text: str) -> None:
        if text:
            stdout.write(text)
            stdout.flush()

    t0 = time.perf_counter()
    events = _Events(log, t0)
    work = out if out is not None else Path(tempfile.mkdtemp(prefix="aigxctl-serve-"))
    total = sum(s.decisions for s in segments) if segments else None
    server = Server(cfg, ModelSlot(first), work, events, write,
                    status or (lambda stage, detail: None), total)  # fmt: skip
    if segments:
        pace = cfg.rate or rate or DEFAULT_RATE
        source: Any = _TimelineSource(segments, pace, cfg.batch, cfg.seed)
    else:
        source = _StdinSource(stdin or sys.stdin.buffer, server.m, cfg.batch,
                              cfg.max_wait_ms / 1e3)  # fmt: skip
    events("start", 0, None, model=str(model_path), timeline=cfg.timeline,
           batch=cfg.batch, audit=cfg.audit, min_quality=cfg.min_quality)  # fmt: skip
    signum = None
    try:
        with signals.StopRequest() as stop:
            stopped = lambda: stop.signum is not None  # noqa: E731
            while not stopped():
                batch = source.next_batch(stopped)
                if batch is None:
                    break
                server.decide(batch)
            if stopped() and isinstance(source, _StdinSource):
                rest = source.drain()
                if rest is not None:
                    server.decide(rest)
            server.finish_training(stopped)
            signum = stop.signum
    except BrokenPipeError:
        if stdout is sys.stdout:  # nothing left to flush into the closed pipe at exit
            sys.stdout = None  # type: ignore[assignment]
        raise UserError(f"stdout was closed after {server.decisions:,} decisions") from None
    finally:
        server.abandon()
        events("stop", server.decisions, server.quality.fraction,
               signal=signals.signal_name(signals.Interrupted(signum)) if signum else None)
        events.close()
        result = _report(server, segments, events.items, time.perf_counter() - t0)
        if out is not None:
            files.atomic_write_text(out / "report.json", json.dumps(result, indent=1) + "\n")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if out is not None and segments:
        from aigxctl import plot

        plot.serve_figure(result, out / "serve.png")
    if signum is not None:
        raise signals.Interrupted(signum)
    if server.bad_lines:
        raise UserError(f"{server.bad_lines} input line(s) were not rows of gains and were "
                        f"answered with nan (first: {server.first_bad})")  # fmt: skip
    return result
