"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json``
(architecture, schedule, normalisation, M, P, sigma^2, provenance, metrics), never pickle.

A directory is built beside its target and swapped into place (aigxctl.outputs), so a crash
never leaves half a checkpoint and never costs the previous one; only a previous aigxctl
checkpoint is ever replaced. config.json carries the SHA-256 of the weights, checked on load,
and every key is range-checked before anything is allocated. Training state for ``--resume``
(optimizer moments, step, RNG) goes in ``resume.safetensors`` + ``resume.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

from aigxctl import files, outputs
from aigxctl.diffusion import MODES as SAMPLING_MODES
from aigxctl.diffusion import PREDICTIONS, SCHEDULES, Schedule
from aigxctl.errors import UserError
from aigxctl.model import GDM, MAX_BEST_OF, Denoiser, MLPAllocator, Regressor
from aigxctl.scenarios import MAX_CHANNELS
from aigxctl.settings import ALLOC_MAPS, MAX_DENOISE_STEPS, MAX_HIDDEN, MAX_T_DIM

__all__ = [
    "FORMAT",
    "LAYOUT",
    "CheckpointWriteError",
    "claim",
    "incomplete_note",
    "load_model",
    "read_config",
    "read_resume",
    "save_model",
]

FORMAT = "aigxctl-model"
VERSION = 2  # 2: config.json holds weights_sha256, checked on load
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
RESUME_WEIGHTS = "resume.safetensors"
RESUME_INFO = "resume.json"
METRICS = "metrics.jsonl"
# The pretrained T1 model inside the package (scripts/make_default_model.py writes it).
DEFAULT_MODEL = "pretrained/t1"
TENSORBOARD = "tensorboard"
# Everything aigxctl writes in a checkpoint directory (outputs.Layout).
LAYOUT: outputs.Layout = {
    CONFIG: None,
    WEIGHTS: None,
    RESUME_WEIGHTS: None,
    RESUME_INFO: None,
    METRICS: None,
    TENSORBOARD: ("events.out.tfevents.*",),
}
# Sanity bounds on what a config.json may ask for, so a damaged or hostile file is refused
# before it allocates anything.
MAX_CONFIG_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 4 << 30


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (full disk, I/O error); ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: cannot write the checkpoint ({reason})")


def model_config(model: GDM | MLPAllocator, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config.json content of a model (``extra`` adds provenance and metrics)."""
    from aigxctl import __version__

    cfg: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "m": model.m,
        "total_power": model.total_power,
        "noise": model.noise,
        "cond_mean": [float(v) for v in model.cond_mean],
        "cond_std": [float(v) for v in model.cond_std],
        "aigxctl_version": __version__,
    }
    if isinstance(model, GDM):
        cfg.update(
            hidden=model.denoiser.hidden,
            t_dim=model.denoiser.t_dim,
            steps=model.T,
            schedule=model.schedule.kind,
            pred=model.pred,
            mode=model.mode,
            best_of=model.best_of,
            alloc_map=model.alloc_map,
        )
    else:
        cfg.update(hidden=model.net.hidden)
    for key, value in (model.config or {}).items():
        cfg.setdefault(key, value)
    cfg.update(extra or {})
    cfg["format"], cfg["version"] = FORMAT, VERSION
    return cfg


def claim(out: str | Path, *, force: bool, resume: bool = False) -> Path:
    """Check that a checkpoint may be written at ``out`` (see outputs.claim_dir): absent or
    empty, or a previous aigxctl checkpoint with ``force`` (``resume`` continues one)."""
    return outputs.claim_dir(out, LAYOUT, force=force, resume=resume, what="model checkpoint",
                             marker=(CONFIG, FORMAT))  # fmt: skip


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a file of the staging directory and flush it to disk before the swap."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_model(
    model: GDM | MLPAllocator,
    out: str | Path,
    extra: dict[str, Any] | None = None,
    resume: dict[str, torch.Tensor] | None = None,
    resume_info: dict[str, Any] | None = None,
    *,
    metrics: list[str] | None = None,
    staging: Path | None = None,
    force: bool = True,
    replaces: bool = False,
) -> dict[str, Any]:
    """Write a complete checkpoint directory and swap it in at ``out``; returns the config.

    An existing directory at ``out`` is replaced only when it is an aigxctl checkpoint and
    ``force`` (the user's --force) or ``replaces`` (the run being resumed) allows it, checked
    again here because another run may have written ``out`` since it started; the old one
    stays whole until the new one is, and its permissions carry over. ``metrics`` are the lines
    of metrics.jsonl; ``staging`` is a directory already made by
    :func:`outputs.new_staging_dir` (holding the run's TensorBoard logs, say); it is removed if
    anything fails. Raises CheckpointWriteError, with nothing changed at ``out``, when the disk
    refuses, and UserError when ``out`` may not be replaced.
    """
    umask = os.umask(0)
    os.umask(umask)
    try:
        path = claim(out, force=force, resume=replaces)
        if staging is None:
            staging = outputs.new_staging_dir(path)
        if path.is_dir():  # a replaced checkpoint keeps its permissions (a private one stays so)
            staging.chmod(path.stat().st_mode & 0o7777)

        def mode(name: str) -> int:
            old = path / name
            return old.stat().st_mode & 0o777 if old.is_file() else 0o666 & ~umask

        state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
        blob = safetensors.torch.save(state)
        cfg = model_config(model, {**(extra or {}),
                                   "weights_sha256": hashlib.sha256(blob).hexdigest()})  # fmt: skip
        _write(staging / WEIGHTS, blob, mode(WEIGHTS))
        if resume is not None:
            resume_blob = safetensors.torch.save(
                {k: v.detach().cpu().contiguous() for k, v in resume.items()})  # fmt: skip
            # The resume state is checksummed too: a flipped bit would resume a different run.
            resume_info = {**(resume_info or {}),
                           "sha256": hashlib.sha256(resume_blob).hexdigest()}  # fmt: skip
            _write(staging / RESUME_WEIGHTS, resume_blob, mode(RESUME_WEIGHTS))
            _write(staging / RESUME_INFO, json.dumps(resume_info).encode(), mode(RESUME_INFO))
            cfg["resume"] = resume_info
        if metrics:
            _write(staging / METRICS, ("\n".join(metrics) + "\n").encode(), mode(METRICS))
        _write(staging / CONFIG, (json.dumps(cfg, indent=2) + "\n").encode(), mode(CONFIG))
        outputs.commit_dir(staging, path, LAYOUT)
    except OSError as exc:
        if staging is not None:
            outputs.discard(staging, LAYOUT)
        raise CheckpointWriteError(Path(out), exc.strerror or str(exc)) from None
    except BaseException:
        if staging is not None:
            outputs.discard(staging, LAYOUT)
        raise
    return cfg


def _regular_file(path: Path, what: str, limit: int) -> None:
    """Refuse a missing, special (FIFO, device: reading one can hang) or oversized file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the {what} is incomplete") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: not a regular file; the {what} is damaged")
    if st.st_size > limit:
        raise UserError(f"{path}: {st.st_size:,} bytes, more than the {limit:,} a {what} holds")


def _read_json(path: Path, what: str) -> Any:
    _regular_file(path, what, MAX_CONFIG_BYTES)
    try:
        with files.reading(str(path), f"{what} file"):
            return json.loads(path.read_text(encoding="utf-8"))
    except UserError:  # a ValueError too, but already the right message
        raise
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: damaged (not valid JSON)") from None
    except RecursionError:
        raise UserError(f"{path}: damaged (nested too deeply)") from None


def _int(cfg: dict[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _positive(cfg: dict[str, Any], key: str) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_config(cfg: Any) -> None:
    """Raise ValueError naming the first key that is missing, of the wrong type or off range."""
    version = cfg.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    if cfg.get("arch") not in ("gdm", "mlp"):
        raise ValueError(f"arch must be gdm or mlp, got {cfg.get('arch')!r}")
    m = _int(cfg, "m", 1, MAX_CHANNELS)
    for key in ("cond_mean", "cond_std"):
        v = cfg.get(key)
        if not (isinstance(v, list) and len(v) == m and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in v)):  # fmt: skip
            raise ValueError(f"{key} must be a list of {m} finite numbers")
    if not all(x > 0 for x in cfg["cond_std"]):
        raise ValueError("cond_std must be > 0")
    _positive(cfg, "total_power")
    _positive(cfg, "noise")
    _int(cfg, "hidden", 1, MAX_HIDDEN)
    if cfg["arch"] == "gdm":
        t_dim = _int(cfg, "t_dim", 4, MAX_T_DIM, default=16)
        if t_dim % 2:
            raise ValueError(f"t_dim must be even, got {t_dim}")
        _int(cfg, "steps", 1, MAX_DENOISE_STEPS)
        _int(cfg, "best_of", 1, MAX_BEST_OF, default=1)
        # A checkpoint from before allocation maps has none: it used the abs map.
        defaults = {"mode": "ddim", "alloc_map": "abs"}
        for key, allowed in (("schedule", SCHEDULES), ("pred", PREDICTIONS),
                             ("mode", SAMPLING_MODES), ("alloc_map", ALLOC_MAPS)):  # fmt: skip
            value = cfg.get(key, defaults.get(key))
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    digest = cfg.get("weights_sha256")
    if version >= 2 and not (isinstance(digest, str) and len(digest) == 64):
        raise ValueError("weights_sha256 is missing")


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory, validated; errors name the directory."""
    path = Path(path)
    if path.is_file():
        raise UserError(
            f"{path}: is a file, not a model directory (a model directory holds {CONFIG} and "
            f"{WEIGHTS}, as written by 'aigxctl train')"
        )
    if not path.is_dir():
        raise UserError(f"{path}: no such model directory (train one with 'aigxctl train')")
    cfg_path = path / CONFIG
    if not cfg_path.exists():
        raise UserError(f"{path}: not an aigxctl model (no {CONFIG})")
    cfg = _read_json(cfg_path, "model")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise UserError(f"{path}: not an aigxctl model ({CONFIG} has no format {FORMAT!r})")
    version = cfg.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise UserError(
            f"{cfg_path}: model format version {version} is newer than this aigxctl reads "
            f"({VERSION}); upgrade aigxctl"
        )
    try:
        _check_config(cfg)
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{cfg_path}: damaged or from another version ({exc})") from None
    return cfg


def _read_weights(path: Path, cfg: dict[str, Any], module: torch.nn.Module) -> None:
    """Load model.safetensors into ``module`` after checking its checksum, names, shapes,
    dtype (float32) and that every weight is finite."""
    weights = path / WEIGHTS
    if not weights.exists():
        raise UserError(f"{path}: damaged (no {WEIGHTS})")
    _regular_file(weights, "model", MAX_WEIGHTS_BYTES)
    blob = weights.read_bytes()
    expected = cfg.get("weights_sha256")
    if expected is not None and hashlib.sha256(blob).hexdigest() != expected:
        raise UserError(
            f"{weights}: does not match the checksum in {CONFIG} (damaged or changed since it "
            "was written)"
        )
    try:
        state = safetensors.torch.load(blob)
    except (SafetensorError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(f"{weights}: damaged ({first})") from None
    wanted = module.state_dict()
    if set(state) != set(wanted):
        raise UserError(f"{weights}: does not match {CONFIG} (other layer names)")
    for key, tensor in state.items():
        if tensor.dtype != torch.float32 or tensor.shape != wanted[key].shape:
            raise UserError(
                f"{weights}: {key} is {tensor.dtype} {list(tensor.shape)}, expected float32 "
                f"{list(wanted[key].shape)} (does not match {CONFIG})"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{weights}: {key} holds NaN or infinite values")
    module.load_state_dict(state)


def read_resume(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The training state an interrupted run left in ``path``: (resume.json, tensors), checked;
    errors say the state is damaged and how to go on."""
    path = Path(path)
    hint = "start over with --force instead of --resume"
    info = _read_json(path / RESUME_INFO, "resume state")
    step = info.get("step") if isinstance(info, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{path / RESUME_INFO}: damaged (no valid step); {hint}")
    _regular_file(path / RESUME_WEIGHTS, "resume state", MAX_WEIGHTS_BYTES)
    try:
        state = safetensors.torch.load((path / RESUME_WEIGHTS).read_bytes())
    except (SafetensorError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(f"{path / RESUME_WEIGHTS}: damaged ({first}); {hint}") from None
    digest = info.get("sha256")
    if digest is not None and hashlib.sha256(
        (path / RESUME_WEIGHTS).read_bytes()
    ).hexdigest() != digest:
        raise UserError(f"{path / RESUME_WEIGHTS}: does not match its checksum (damaged); {hint}")
    saved = read_config(path).get("resume")
    if isinstance(saved, dict) and saved != info:
        raise UserError(f"{path / RESUME_INFO}: does not match {CONFIG} (damaged); {hint}")
    rng = state.get("rng")
    if rng is None or rng.dtype != torch.uint8 or rng.ndim != 1:
        raise UserError(f"{path / RESUME_WEIGHTS}: damaged (no random-generator state); {hint}")
    return info, state


def incomplete_note(path: str | Path | None) -> str | None:
    """A one-line warning when the checkpoint at ``path`` is an interrupted, half-trained one
    (its config.json says how far it got), else None; nothing is checked beyond that."""
    if path is None:
        return None
    try:
        progress = _read_json(Path(path) / CONFIG, "model")["progress"]
        if progress["complete"]:
            return None
        done, planned = int(progress["steps_done"]), int(progress["steps_planned"])
    except (UserError, ValueError, KeyError, TypeError):  # not ours to judge here: load does
        return None
    return (f"{path} is an interrupted checkpoint ({done:,} of {planned:,} training steps "
            "done); finish it with 'aigxctl train ... --resume'")  # fmt: skip


def default_model_path() -> Path:
    """The checkpoint directory of the small T1 model shipped inside the package (trained by
    scripts/make_default_model.py): what ``load_model()`` and ``--method gdm`` use when no
    model is given."""
    from importlib.resources import files

    where = files("aigxctl") / DEFAULT_MODEL
    if not isinstance(where, Path):  # e.g. imported from a zip: no directory to read
        raise UserError(f"the packaged model {where} is not a directory on disk; give a model")
    if not (where / CONFIG).is_file():
        raise UserError(
            f"{where}: the packaged model is missing from this install; give a model, or "
            "create it with 'python scripts/make_default_model.py' in a source tree"
        )
    return where


def provenance(cfg: dict[str, Any]) -> str:
    """One line saying where a model (its config.json) came from: the packaged model's script
    and fraction of the optimum, or another model's data, training and steps done."""
    pre = cfg.get("pretrained")
    if isinstance(pre, dict):
        line = f"pretrained {pre.get('name', '?')} ({pre.get('script', '?')})"
        fraction = pre.get("fraction_of_optimum")
        if isinstance(fraction, (int, float)) and not isinstance(fraction, bool):
            line += f", {100 * fraction:.2f}% of the optimum"
        return line
    parts = [f"{cfg.get('arch')} hidden {cfg.get('hidden')}"]
    sets = [d for d in cfg.get("data") or [] if isinstance(d, dict)]
    scenario = cfg.get("scenario")
    if sets:
        parts.append("trained on " + " + ".join(
            f"{d.get('scenario') or d.get('path')} ({d.get('samples', 0):,} samples, "
            f"seed {d.get('seed')})" for d in sets))  # fmt: skip
    elif cfg.get("training") == "reward" and isinstance(scenario, dict):
        parts.append(f"trained from rewards on {scenario.get('name')}")
    if cfg.get("init"):
        parts.append(f"fine-tuned from {cfg['init']}")
    progress = cfg.get("progress")
    if isinstance(progress, dict):
        done, planned = progress.get("steps_done"), progress.get("steps_planned")
        if isinstance(done, int) and isinstance(planned, int):
            parts.append(f"{done:,} of {planned:,} steps")
        if progress.get("complete") is False:
            parts.append("interrupted (--resume continues it)")
    fraction = (cfg.get("metrics") or {}).get("val_fraction")
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool):
        parts.append(f"{100 * fraction:.2f}% of the optimum on its validation split")
    return ", ".join(parts)


def _check_weights_size(path: Path, cfg: dict[str, Any]) -> None:
    """Refuse a config.json whose network the weights file is too small to hold, before the
    network is built (a tampered hidden width would otherwise allocate gigabytes first)."""
    m, h = int(cfg["m"]), int(cfg["hidden"])
    if cfg["arch"] == "gdm":
        t = int(cfg.get("t_dim", 16))
        count = (m * h + h + h * h + h) + (t * 2 * t + 2 * t + 2 * t * t + t) + (
            (h + m + t) * h + h + h * h + h + h * m + m)  # fmt: skip
    else:
        count = m * h + h + 2 * (h * h + h) + h * m + m
    weights = path / WEIGHTS
    if weights.is_file() and weights.stat().st_size < 4 * count:
        raise UserError(
            f"{weights}: {weights.stat().st_size:,} bytes, too small for the network "
            f"{CONFIG} describes ({4 * count:,} bytes of weights): damaged or does not match"
        )


def load_model(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> GDM | MLPAllocator:
    """Load a checkpoint directory written by :func:`save_model`; with no ``path``, the small
    T1 model shipped inside the package (:func:`default_model_path`). ``device``: ``cpu``,
    ``cuda``, ``cuda:N`` or ``auto`` (:func:`aigxctl.core.resolve_device`); on a GPU the model
    allocates there end to end, whatever kind of array it is given."""
    from aigxctl.core import resolve_device

    device = resolve_device(device, option="device")
    path = default_model_path() if path is None else Path(path)
    cfg = read_config(path)
    m = int(cfg["m"])
    _check_weights_size(path, cfg)
    if cfg["arch"] == "gdm":
        module: torch.nn.Module = Denoiser(m, int(cfg["hidden"]), int(cfg.get("t_dim", 16)))
    else:
        module = Regressor(m, int(cfg["hidden"]))
    _read_weights(path, cfg, module)
    module.to(device).eval()
    common = {
        "cond_mean": np.asarray(cfg["cond_mean"], dtype=np.float64),
        "cond_std": np.asarray(cfg["cond_std"], dtype=np.float64),
        "total_power": float(cfg["total_power"]),
        "noise": float(cfg["noise"]),
        "config": cfg,
    }
    if cfg["arch"] == "mlp":
        return MLPAllocator(net=module, **common)  # type: ignore[arg-type]
    return GDM(
        denoiser=module,  # type: ignore[arg-type]
        schedule=Schedule.create(cfg["schedule"], int(cfg["steps"])),
        pred=cfg["pred"],
        mode=cfg.get("mode", "ddim"),
        best_of=int(cfg.get("best_of", 1)),
        alloc_map=cfg.get("alloc_map", "abs"),
        **common,
    )
