"""Training: the GDM (or the MLP baseline) learns gains -> expert allocation from datasets.

One loop serves every route: a fresh model, fine-tuning from ``init`` (the T3 retraining),
``resume`` of an interrupted run, and data-parallel training over ``nproc`` processes with
torch.distributed (gloo on the CPU, nccl on GPUs; the same code runs under torchrun). Rank 0
alone validates, logs and writes. Ctrl-C saves a resumable checkpoint before exiting.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aigxctl import checkpoint, core, data, metrics, outputs, signals
from aigxctl.checkpoint import load_model, save_model
from aigxctl.diffusion import Schedule, loss, rate_regret
from aigxctl.errors import UserError
from aigxctl.model import GDM, Denoiser, MLPAllocator, Regressor
from aigxctl.settings import RunSettings, TrainConfig

__all__ = [
    "RunSettings",
    "TrainConfig",
    "TrainingInterrupted",
    "interrupted_message",
    "run",
    "train",
]



Progress = Callable[[int, dict[str, float]], None]


def _device(cfg: TrainConfig, rank: int) -> torch.device:
    """Where this process trains (core.resolve_device): the CPU, the GPU ``cuda:N`` names, or
    with ``cuda``/``auto`` one GPU per process of this machine (torchrun's LOCAL_RANK)."""
    dev = core.resolve_device(cfg.device)
    if dev == "cpu" or ":" in cfg.device:
        return torch.device(dev)
    local = int(os.environ.get("LOCAL_RANK", rank))
    return torch.device("cuda", local % torch.cuda.device_count())


@dataclass
class Data:
    """The training data of a run: gains [N, M], allocation fractions x = p / P [N, M], and
    provenance (P, sigma^2, each dataset's path, size, scenario, seed and gains digest)."""

    gains: np.ndarray
    x0: np.ndarray
    prov: dict[str, Any]


def _load_data(paths: list[str]) -> Data:
    sets = [data.load(p) for p in paths]
    m = sets[0].m
    for d in sets[1:]:
        if d.m != m:
            raise UserError(f"{d.path}: has M = {d.m} channels but {sets[0].path} has M = {m}")
    gains = np.concatenate([d.gains for d in sets])
    if not (gains > 0).any():
        raise UserError(f"{', '.join(paths)}: every gain is zero, so there is nothing to learn")
    if not metrics.optimum_rate(gains, sets[0].total_power, sets[0].noise) > 0:
        raise UserError(f"{', '.join(paths)}: the optimum's sum rate is 0 on every row (gains "
                        "too small for this P and sigma^2): there is nothing to learn")  # fmt: skip
    x0 = np.concatenate([d.power / d.total_power for d in sets])
    prov = {
        "total_power": sets[0].total_power,
        "noise": sets[0].noise,
        "data": [
            {
                "path": str(d.path),
                "samples": d.n,
                "scenario": d.scenario_name,
                "seed": d.meta.get("seed"),
                # What --resume checks: the same data, wherever the file now is.
                "gains_sha256": hashlib.sha256(np.ascontiguousarray(d.gains)).hexdigest(),
            }
            for d in sets
        ],
    }
    return Data(gains, x0, prov)


# The settings that make a run what it is: --resume refuses to continue with others.
RUN_DEFINING = ("arch", "steps", "batch", "lr", "weight_decay", "seed", "hidden",
                "denoise_steps", "schedule", "pred", "rate_weight", "val_samples",
                "nproc")  # fmt: skip


def _check_resume(cfg: TrainConfig, out: Path, run_data: Data) -> tuple[int, dict]:
    """The step and tensors an interrupted run left in ``out``, after checking that this call
    continues that same run (same data and settings)."""
    if not (out / checkpoint.RESUME_INFO).exists():
        raise UserError(f"--resume: {cfg.out} holds no interrupted run to continue")
    saved = checkpoint.read_config(out)
    info, state = checkpoint.read_resume(out)
    before = saved.get("train")
    if not isinstance(before, dict) or not all(k in before for k in RUN_DEFINING):
        raise UserError(f"{out / checkpoint.CONFIG}: damaged (no record of the run's settings); "
                        "start over with --force")  # fmt: skip
    now = asdict(cfg)
    for key in RUN_DEFINING:
        if before[key] != now[key]:
            raise UserError(
                f"--resume continues the run in {cfg.out}, which had {key} = {before[key]!r}, "
                f"not {now[key]!r}; drop the option, or start a new run with --force"
            )
    digests = [d.get("gains_sha256") for d in saved.get("data", []) if isinstance(d, dict)]
    if digests != [d["gains_sha256"] for d in run_data.prov["data"]]:
        raise UserError(
            f"--resume continues the run in {cfg.out}, which trained on other data; pass the "
            "same --data, or start a new run with --force"
        )
    step = int(info["step"])
    if not 0 < step < cfg.steps:
        raise UserError(
            f"{out / checkpoint.RESUME_INFO}: step {step} is not within the run's {cfg.steps} "
            "steps (damaged); start over with --force"
        )
    return step, state


def _new_model(cfg: TrainConfig, m: int, mean: np.ndarray, std: np.ndarray, prov: dict) -> Any:
    common = {"cond_mean": mean, "cond_std": std, "total_power": prov["total_power"],
              "noise": prov["noise"]}  # fmt: skip
    if cfg.arch == "mlp":
        return MLPAllocator(net=Regressor(m, cfg.hidden), **common)
    return GDM(
        denoiser=Denoiser(m, cfg.hidden),
        schedule=Schedule.create(cfg.schedule, cfg.denoise_steps),
        pred=cfg.pred,
        **common,
    )


def validate(model: Any, gains: np.ndarray, noise: float) -> float:
    """Fraction of the water-filling optimum's mean sum rate the model reaches on ``gains``."""
    model.weights_changed()
    model.module.eval()
    power = model.allocate(gains, seed=1234)
    model.module.train()
    return metrics.mean_rate(gains, power, noise) / metrics.optimum_rate(
        gains, model.total_power, noise
    )


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Short linear warm-up, then cosine decay to 2 % of the peak."""
    warm = max(1, min(100, cfg.steps // 20))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TrainingInterrupted(signals.Interrupted):
    """Training stopped on a signal (or Ctrl-C) at a step boundary. ``checkpoint`` is the
    directory that now holds a resumable checkpoint at ``step`` of ``steps``, or None when
    nothing was written (stopped before the first step)."""

    def __init__(self, signum: int, checkpoint: Path | None, step: int, steps: int) -> None:
        super().__init__(signum)
        self.checkpoint, self.step, self.steps = checkpoint, step, steps


def interrupted_message(exc: KeyboardInterrupt, out: str | Path) -> str:
    """One line saying how a training run was interrupted and whether it can be resumed."""
    how = f"interrupted by {signals.signal_name(exc)}"
    if isinstance(exc, TrainingInterrupted):
        how += f" at step {exc.step} of {exc.steps}"
        if exc.checkpoint is not None:
            return (f"{how}; a resumable checkpoint is in {out}: continue with the same command "
                    "and --resume")  # fmt: skip
    return f"{how}; nothing was written to {out}"


def run(mode: str = "expert", progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """``aigxctl train``: the expert route (:class:`TrainConfig`, from labelled datasets) or the
    reward route (:class:`aigxctl.reward.RewardConfig`, from the sum rate alone), with the
    options given; None (or False, or an empty list) means "the route's default". An option
    the route does not take is an error, not silently ignored."""
    from aigxctl.reward import RewardConfig, train_reward

    routes: dict[str, tuple[type, Callable[..., dict[str, Any]]]] = {
        "expert": (TrainConfig, train), "reward": (RewardConfig, train_reward)}  # fmt: skip
    if mode not in routes:
        raise UserError(f"--mode must be {' or '.join(routes)}, got {mode!r}")
    cls, route = routes[mode]
    # Not given: None, an unset flag, an empty list (0 and 0.0 are values, not "not given").
    given = {k: v for k, v in options.items()
             if not (v is None or v is False or (isinstance(v, list | tuple) and not v))}
    for key in given:
        if key not in {f.name for f in fields(cls)}:
            other = [m for m, (c, _) in routes.items() if key in {f.name for f in fields(c)}]
            flag = next((f.metadata.get("flag") for c, _ in routes.values() for f in fields(c)
                         if f.name == key and (f.metadata.get("flag") or "").startswith("--")),
                        None) or f"--{key.replace('_', '-')}"  # fmt: skip
            raise UserError(f"{flag} does not apply to --mode {mode}"
                            + (f" (it is for --mode {other[0]})" if other else ""))  # fmt: skip
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in given:
            raise UserError(f"--mode {mode} needs --{f.name.replace('_', '-')}")
    return route(cls(**given), progress)


def train(cfg: TrainConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Train and write the checkpoint to ``cfg.out``; returns the final metrics.

    SIGINT, SIGTERM and SIGHUP stop the run at the end of the step in progress and save a
    resumable checkpoint as of that step, then raise :class:`TrainingInterrupted`.
    """
    start = time.perf_counter()
    cfg.check()
    out = checkpoint.claim(cfg.out, force=cfg.force, resume=cfg.resume)
    run_data = _load_data(cfg.data)
    resume = _check_resume(cfg, out, run_data) if cfg.resume else None
    rank = 0
    if cfg.nproc > 1 and "RANK" not in os.environ:
        result = _spawn(cfg, out, run_data, progress)
    elif "RANK" in os.environ:  # launched by torchrun; only rank 0 reports
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        result = _run(cfg, out, run_data, resume, rank, world, None, progress)
    else:
        result = _run(cfg, out, run_data, resume, 0, 1, None, progress)
    # The wall time of the whole run (worker start-up and data loading included), and which
    # rank this process is, so that only rank 0 reports under torchrun.
    result.update(seconds=time.perf_counter() - start, rank=rank)
    stopped = result.pop("interrupted", None)
    if stopped is not None:
        saved = Path(cfg.out) if stopped["saved"] else None
        raise TrainingInterrupted(stopped["signum"], saved, stopped["step"], cfg.steps)
    return result


def _spawn(
    cfg: TrainConfig, out: Path, run_data: Data, progress: Progress | None
) -> dict[str, Any]:
    """Run ``cfg.nproc`` data-parallel workers and wait for them, passing rank 0's progress on
    to ``progress``. A signal to this process is passed on to the workers, so they stop at the
    same step and rank 0 saves before this returns."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, steps = ctx.SimpleQueue(), ctx.SimpleQueue()
    workers: list[Any] = []

    def relay() -> None:
        while not steps.empty():
            step, metrics_now = steps.get()
            if progress is not None:
                progress(step, metrics_now)

    def forward(signum: int) -> None:
        for proc in workers:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    with signals.StopRequest(hard=False, forward=forward) as stop:
        # The workers read the (already checked) datasets themselves: a large argument would
        # be pickled into a pipe that a worker killed during start-up never reads.
        context = mp.start_processes(
            _worker, args=(cfg, out, _free_port(), queue, steps), nprocs=cfg.nproc,
            join=False, start_method="spawn",
        )  # fmt: skip
        workers += context.processes
        if stop.signum is not None:  # arrived while they were starting
            forward(stop.signum)
        try:
            while not context.join(timeout=0.2):
                relay()
            relay()
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            reports = _drain(queue)
            errors = [r["error"] for r in reports.values() if "error" in r]
            first = (str(exc).strip().splitlines() or ["no message"])[-1]
            raise UserError(errors[0] if errors else
                            f"a data-parallel worker failed ({first})") from None  # fmt: skip
    reports = _drain(queue)
    result = dict(reports[0])
    for rank, rep in reports.items():
        result[f"rank{rank}_weights_sha256"] = rep.get("weights_sha256")
    return result


def _drain(queue: Any) -> dict[int, dict[str, Any]]:
    reports = {}
    while not queue.empty():
        rank, rep = queue.get()
        reports[rank] = rep
    return reports


def _die_with_parent() -> None:
    """Linux: end this worker when the parent dies (a SIGKILLed parent must not leave workers
    training, or blocked on its pipes, for ever)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))


def _worker(rank: int, cfg: TrainConfig, out: Path, port: int, queue: Any,
            steps: Any) -> None:  # fmt: skip
    _die_with_parent()
    # A worker's own mistakes reach the parent as one line, not as a traceback per process.
    try:
        run_data = _load_data(cfg.data)
        resume = _check_resume(cfg, out, run_data) if cfg.resume else None
        progress = (lambda step, m: steps.put((step, m))) if rank == 0 else None
        queue.put((rank, _run(cfg, out, run_data, resume, rank, cfg.nproc, port, progress)))
    except UserError as exc:
        queue.put((rank, {"error": str(exc)}))
        sys.exit(2)


def _run(
    cfg: TrainConfig, out: Path, run_data: Data, resume: tuple[int, dict] | None, rank: int,
    world: int, port: int | None, progress: Progress | None,
) -> dict[str, Any]:  # fmt: skip
    import torch.distributed as dist

    device = _device(cfg, rank)
    distributed = world > 1
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        init = f"tcp://127.0.0.1:{port}" if port is not None else "env://"
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        with signals.StopRequest(hard=not distributed) as stop:
            result = _loop(cfg, out, run_data, resume, rank, world, device, progress, stop)
            return {**result, "device": str(device)}
    finally:
        if distributed:
            # The DDP wrapper sits in reference cycles that hold the gloo process group; left
            # to interpreter shutdown, its threads are torn down unjoined and the worker
            # aborts ("terminate called without an active exception").
            gc.collect()
            dist.destroy_process_group()


def _stop_agreed(stop: signals.StopRequest, world: int, device: torch.device) -> bool:
    """Whether to stop before the next step. Data-parallel ranks decide together (a rank that
    stopped alone would leave the others waiting in their next all-reduce)."""
    if world == 1:
        return stop.signum is not None
    import torch.distributed as dist

    flag = torch.tensor([0 if stop.signum is None else stop.signum], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and stop.signum is None:
        stop.signum = int(flag.item())
    return bool(flag.item())


def _split(cfg: TrainConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, training rows) of the data: a seeded permutation, the validation
    split first (at most val_samples, at most a tenth)."""
    order = np.random.default_rng(cfg.seed).permutation(n)
    n_val = min(cfg.val_samples, max(1, n // 10)) if n > 1 else 0
    val_idx, train_idx = order[:n_val], order[n_val:] if n > 1 else order
    if len(train_idx) == 0:
        raise UserError("the datasets hold too few samples to train on")
    return val_idx, train_idx


def _start_model(
    cfg: TrainConfig, out: Path, run_data: Data, resume: tuple[int, dict] | None,
    train_gains: np.ndarray,
) -> tuple[Any, str | None]:  # fmt: skip
    """The model the run starts from: the interrupted one (resume), the --init one, or a
    fresh one normalised to the training gains; and the init it descends from."""
    m, prov = run_data.gains.shape[1], run_data.prov
    if resume is not None:
        model = load_model(out)
        init = model.config.get("init")
    elif cfg.init:
        model, init = load_model(cfg.init), cfg.init
        if model.m != m:
            raise UserError(f"--init {cfg.init}: the model has M = {model.m}, the data M = {m}")
        if model.arch != cfg.arch:
            raise UserError(
                f"--init {cfg.init}: a {model.arch} model cannot seed --arch {cfg.arch}"
            )
        # Keep the initial model's normalisation, so its weights still mean what they learned.
    else:
        mean, std = train_gains.mean(axis=0), train_gains.std(axis=0) + 1e-8
        model, init = _new_model(cfg, m, mean, std, prov), None
    model.total_power, model.noise = prov["total_power"], prov["noise"]
    return model, init


def _previous_metrics(out: Path) -> list[str]:
    """The metrics.jsonl lines of the interrupted run being resumed."""
    path = out / checkpoint.METRICS
    if not path.is_file():
        return []
    try:
        if path.stat().st_size > checkpoint.MAX_CONFIG_BYTES * 4:
            raise ValueError("too large")
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: damaged ({exc}); start over with --force") from None


class _Steps:
    """The optimisation itself: the training rows as tensors on the device, the optimizer, the
    random stream of batches and noise, and one step of the loss."""

    def __init__(self, cfg: TrainConfig, model: Any, gains: np.ndarray, x0: np.ndarray,
                 rank: int, world: int, device: torch.device) -> None:  # fmt: skip
        self.cfg, self.model, self.device = cfg, model, device
        self.module = model.module.to(device)
        self.module.train()
        self.net: torch.nn.Module = self.module
        if world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)  # fmt: skip
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
        mean = torch.as_tensor(model.cond_mean, dtype=torch.float32)
        std = torch.as_tensor(model.cond_std, dtype=torch.float32)
        raw = torch.as_tensor(gains, dtype=torch.float32)
        self.cond, self.raw = ((raw - mean) / std).to(device), raw.to(device)
        self.target = torch.as_tensor(x0, dtype=torch.float32).to(device)
        self.per_rank = max(1, cfg.batch // world)
        self.rate_args = {"total_power": model.total_power, "noise": model.noise}

    def restore(self, state: dict[str, torch.Tensor], out: Path, rank: int, step: int) -> None:
        _restore(self.opt, self.module, state, self.gen, out)
        if rank > 0:
            # The saved stream is rank 0's (only rank 0 writes). The other ranks must not draw
            # the same batches as rank 0, so each starts a stream of its own for the rest.
            self.gen.manual_seed((self.cfg.seed * 1000 + rank) * 1_000_003 + step)

    def step(self, step: int) -> torch.Tensor:
        """One optimizer step (batch, then noise, from the run's stream); returns its loss."""
        cfg, model = self.cfg, self.model
        for group in self.opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        idx = torch.randint(0, len(self.cond), (self.per_rank,), generator=self.gen)
        idx = idx.to(self.device)
        cond, target, raw = self.cond[idx], self.target[idx], self.raw[idx]
        if isinstance(model, GDM):
            value = loss(self.net, model.schedule, target, cond, model.pred, generator=self.gen,
                         rate_weight=cfg.rate_weight, gains=raw, **self.rate_args)  # fmt: skip
        else:
            y = self.net(cond)
            value = torch.nn.functional.mse_loss(y, target)
            if cfg.rate_weight > 0:  # the same objective as the GDM's, for a fair comparison
                value = value + cfg.rate_weight * rate_regret(y, target, raw, **self.rate_args)
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        self.opt.step()
        return value


def _loop(
    cfg: TrainConfig, out: Path, run_data: Data, resume: tuple[int, dict] | None, rank: int,
    world: int, device: torch.device, progress: Progress | None, stop: signals.StopRequest,
) -> dict[str, Any]:  # fmt: skip
    torch.manual_seed(cfg.seed)
    val_idx, train_idx = _split(cfg, len(run_data.gains))
    model, init = _start_model(cfg, out, run_data, resume, run_data.gains[train_idx])
    steps = _Steps(cfg, model, run_data.gains[train_idx], run_data.x0[train_idx], rank, world,
                   device)  # fmt: skip
    start_step = 0
    if resume is not None:
        start_step = resume[0]
        steps.restore(resume[1], out, rank, start_step)
    previous_lines = _previous_metrics(out) if resume is not None else []
    # Rank 0 builds the new checkpoint directory beside `out` from the start (TensorBoard logs
    # go there) and swaps it in when it saves; until then `out` is untouched.
    staging = outputs.new_staging_dir(out) if rank == 0 else None
    saver = _Saver(model, cfg, run_data.prov, init, steps.opt, steps.gen, out, staging)
    log = _Log(cfg, model, run_data.gains[val_idx], progress if rank == 0 else None, rank == 0)
    log.last["step"] = completed = start_step
    saver.lines = previous_lines  # an interrupted run's lines carry on
    try:
        if rank == 0:
            log.start(saver, out if resume is not None else None, start_step)
        for step in range(start_step, cfg.steps):
            if _stop_agreed(stop, world, device):
                break
            value = steps.step(step)
            completed = step + 1
            log.after_step(completed, value, saver.lines)
    except KeyboardInterrupt:
        # Raised by code, not by a signal (those only set `stop`), so the state is that of the
        # last completed step; a second signal (stop.signum set) cut a step short: no save.
        if rank == 0 and stop.signum is None and completed > start_step:
            saver.save(completed, log.last, interrupted=True)
        else:
            saver.discard()
        raise
    except BaseException:
        saver.discard()
        raise
    finally:
        log.close()
    return _finish(cfg, saver, log, steps.module, stop, rank, world, start_step, completed,
                   resume is not None, len(run_data.gains))  # fmt: skip


class _Log:
    """What a run reports: validation and metrics at each checkpoint step (rank 0 only),
    TensorBoard, the progress callback, and the divergence check (every rank)."""

    def __init__(self, cfg: TrainConfig, model: Any, val_gains: np.ndarray,
                 progress: Progress | None, rank0: bool) -> None:  # fmt: skip
        self.cfg, self.model, self.val_gains, self.progress = cfg, model, val_gains, progress
        self.rank0 = rank0
        self.last: dict[str, Any] = {}
        self.writer: Any = None
        self.t0 = time.perf_counter()

    def start(self, saver: _Saver, previous: Path | None, start_step: int) -> None:
        if self.cfg.tensorboard:
            self.writer = _tensorboard(previous, saver.staging)
        if self.progress is not None and start_step == 0 and len(self.val_gains):
            # Where the curve starts: the fresh (or --init) model before any step.
            self.progress(0, {"val_fraction": self.validate()})

    def validate(self) -> float:
        return validate(self.model, self.val_gains, self.model.noise)

    def after_step(self, done: int, value: torch.Tensor, lines: list[str]) -> None:
        cfg = self.cfg
        checkpoint_now = done % cfg.val_every == 0 or done == cfg.steps
        if checkpoint_now:
            loss_now = float(value.detach())
            if not math.isfinite(loss_now):
                # Every rank sees it: NaN weights are the same on all of them after the
                # all-reduce.
                raise UserError(
                    f"training diverged: the loss is {loss_now} at step {done}; "
                    f"nothing was saved; try a smaller --lr (this run: {cfg.lr})"
                )
            if self.rank0:
                self._checkpoint(done, loss_now, lines)
        if self.progress is not None:
            self.progress(done, {"loss": float(value.detach()), **{
                k: v for k, v in self.last.items() if k == "val_fraction"}})  # fmt: skip

    def _checkpoint(self, done: int, loss_now: float, lines: list[str]) -> None:
        self.last = {"step": done, "loss": loss_now, "lr": _lr_at(self.cfg, done - 1),
                     "seconds": time.perf_counter() - self.t0}  # fmt: skip
        if len(self.val_gains):
            self.last["val_fraction"] = self.validate()
        lines.append(json.dumps(self.last))
        if self.writer is not None:
            for k in ("loss", "val_fraction"):
                if k in self.last:
                    self.writer.add_scalar(k, self.last[k], done)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _finish(cfg: TrainConfig, saver: _Saver, log: _Log, module: torch.nn.Module,
            stop: signals.StopRequest, rank: int, world: int, start_step: int, completed: int,
            resumed: bool, samples: int) -> dict[str, Any]:  # fmt: skip
    """Save the final checkpoint (or, after a signal, the resumable one) and say how it went."""
    digest = _weights_digest(module)
    if stop.signum is not None:
        saved = False
        if rank == 0 and completed > start_step:
            saver.save(completed, log.last, interrupted=True)
            saved = True
        elif rank == 0:
            saver.discard()
            saved = resumed  # the checkpoint being resumed is still there, unchanged
        return {"interrupted": {"signum": stop.signum, "saved": saved, "step": completed},
                "weights_sha256": digest}  # fmt: skip
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0:
        saver.save(cfg.steps, log.last, interrupted=False)
    return {**log.last, "seconds": time.perf_counter() - log.t0, "samples": samples,
            "weights_sha256": digest}  # fmt: skip


def _weights_digest(module: torch.nn.Module) -> str:
    """A digest of the weights, so data-parallel ranks can be checked to agree bit for bit."""
    import hashlib

    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Saver:
    """Rank 0's writer of the run's checkpoint, into the staging directory and swapped in."""

    def __init__(self, model: Any, cfg: TrainConfig, prov: dict, init: str | None, opt: Any,
                 gen: torch.Generator, out: Path, staging: Path | None) -> None:  # fmt: skip
        self.model, self.cfg, self.prov, self.init = model, cfg, prov, init
        self.opt, self.gen, self.out, self.staging = opt, gen, out, staging
        self.lines: list[str] = []
        self.saved = False  # this run wrote `out` already (so it may replace it)

    def discard(self) -> None:
        if self.staging is not None:
            outputs.discard(self.staging, checkpoint.LAYOUT)

    def save(self, step: int, last: dict, interrupted: bool) -> None:
        cfg = self.cfg
        extra = {
            **self.prov,
            "seed": cfg.seed,
            "train": {k: v for k, v in asdict(cfg).items()
                      if k not in ("extra", "out", "force", "resume")},
            "metrics": last,
            "init": self.init,
            # Half-trained checkpoints say so: steps done of planned.
            "progress": {"steps_done": step, "steps_planned": cfg.steps,
                         "complete": not interrupted},
            **cfg.extra,
        }
        resume = resume_info = None
        if interrupted:
            resume, resume_info = _optimizer_state(self.opt, self.gen), {"step": step}
        module = self.model.module
        was = module.training
        module.eval()
        try:
            save_model(self.model, self.out, extra, resume=resume, resume_info=resume_info,
                       metrics=self.lines, staging=self.staging, force=cfg.force,
                       replaces=cfg.resume or self.saved)  # fmt: skip
            self.saved = True
        except UserError as exc:  # a full disk, or --out taken meanwhile: keep the weights
            raise UserError(f"{exc}; {_rescue(self.model, extra, resume, resume_info)}") from None
        finally:
            self.staging = None
            module.train(was)


def _rescue(model: Any, extra: dict, resume: Any, resume_info: Any) -> str:
    """Save the trained weights in the system's temporary folder when the output could not be
    written, and say where (or that this failed too)."""
    import tempfile

    try:
        where = Path(tempfile.mkdtemp(prefix="aigxctl-rescue-")) / "model"
        save_model(model, where, extra, resume=resume, resume_info=resume_info)
    except (OSError, UserError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        return f"the trained weights could not be saved anywhere else either ({reason})"
    return f"the trained weights were saved to {where} instead"


def _optimizer_state(opt: torch.optim.Optimizer, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """AdamW's moments and step counts as flat tensors (safetensors holds no pickles)."""
    state: dict[str, torch.Tensor] = {"rng": gen.get_state()}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        s = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in s:
                state[f"{i}.{key}"] = torch.as_tensor(s[key]).detach().cpu().float()
    return state


def _restore(opt: torch.optim.Optimizer, module: torch.nn.Module, state: dict[str, torch.Tensor],
             gen: torch.Generator, out: Path) -> None:  # fmt: skip
    damaged = f"{out / checkpoint.RESUME_WEIGHTS}: damaged (%s); start over with --force"
    try:
        gen.set_state(state["rng"])
    except RuntimeError:
        raise UserError(damaged % "bad random-generator state") from None
    for i, p in enumerate(opt.param_groups[0]["params"]):
        keys = [f"{i}.exp_avg", f"{i}.exp_avg_sq", f"{i}.step"]
        if not any(k in state for k in keys):
            continue
        if not all(k in state for k in keys) or any(
            state[k].shape != p.shape for k in keys[:2]
        ) or state[keys[2]].numel() != 1:
            raise UserError(damaged % f"optimizer state {i} does not match the model")
        opt.state[p] = {
            "exp_avg": state[keys[0]].to(p.device),
            "exp_avg_sq": state[keys[1]].to(p.device),
            "step": state[keys[2]].clone(),
        }


def _tensorboard(previous: Path | None, staging: Path | None) -> Any:
    """A TensorBoard writer into the staging directory, which first gets a copy of the logs of
    the run being resumed (``previous``), so they stay in the checkpoint."""
    from torch.utils.tensorboard import SummaryWriter

    assert staging is not None
    logs = staging / checkpoint.TENSORBOARD
    logs.mkdir(exist_ok=True)
    if previous is not None and (previous / checkpoint.TENSORBOARD).is_dir():
        for f in (previous / checkpoint.TENSORBOARD).glob("events.out.tfevents.*"):
            shutil.copy2(f, logs / f.name)
    return SummaryWriter(str(logs))
