"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json``
(architecture, schedule, normalisation, M, P, sigma^2, provenance, metrics), never pickle.

A directory is written beside its target and renamed into place, so a crash never leaves half a
checkpoint. Training state for ``--resume`` (optimizer moments, step, RNG) goes in
``resume.safetensors`` + ``resume.json`` in the same directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aigxctl.diffusion import PREDICTIONS, SCHEDULES, Schedule
from aigxctl.errors import UserError
from aigxctl.model import GDM, Denoiser, MLPAllocator, Regressor

__all__ = ["FORMAT", "load_model", "read_config", "save_model"]

FORMAT = "aigxctl-model"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


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
        )
    else:
        cfg.update(hidden=model.net.hidden)
    for key, value in (model.config or {}).items():
        cfg.setdefault(key, value)
    cfg.update(extra or {})
    return cfg


def _module(model: GDM | MLPAllocator) -> torch.nn.Module:
    return model.denoiser if isinstance(model, GDM) else model.net


def save_model(
    model: GDM | MLPAllocator,
    out: str | Path,
    extra: dict[str, Any] | None = None,
    resume: dict[str, torch.Tensor] | None = None,
    resume_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the checkpoint directory atomically (replacing an existing one); returns the
    config written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model, extra)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)  # mkdtemp makes the directory 0700; give it what mkdir would
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in _module(model).state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        (tmp / WEIGHTS).chmod(0o666 & ~umask)  # safetensors writes 0600; match config.json
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        if resume is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in resume.items()},
                      str(tmp / "resume.safetensors"))  # fmt: skip
            (tmp / "resume.json").write_text(json.dumps(resume_info or {}), encoding="utf-8")
        # Keep whatever else the directory holds (metrics.jsonl, TensorBoard logs).
        if out.exists():
            for item in out.iterdir():
                if not (tmp / item.name).exists() and item.name not in (
                    "resume.safetensors", "resume.json"):  # fmt: skip
                    shutil.move(str(item), tmp / item.name)
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cfg


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory, validated; errors name the directory."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such model directory (train one with 'aigxctl train')")
    cfg_path = path / CONFIG
    if not cfg_path.exists():
        raise UserError(f"{path}: not an aigxctl model (no {CONFIG})")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{cfg_path}: damaged (not valid JSON)") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise UserError(f"{path}: not an aigxctl model ({CONFIG} has no format {FORMAT!r})")
    try:
        m = int(cfg["m"])
        if cfg["arch"] not in ("gdm", "mlp") or m < 1 or len(cfg["cond_mean"]) != m:
            raise ValueError
        std = np.asarray(cfg["cond_std"], dtype=np.float64)
        if std.shape != (m,) or not np.all(std > 0) or not np.all(np.isfinite(cfg["cond_mean"])):
            raise ValueError
        if not (float(cfg["total_power"]) > 0 and float(cfg["noise"]) > 0):
            raise ValueError
        if cfg["arch"] == "gdm" and (
            cfg["schedule"] not in SCHEDULES or cfg["pred"] not in PREDICTIONS
            or int(cfg["steps"]) < 1):  # fmt: skip
            raise ValueError
        float(cfg["total_power"]), float(cfg["noise"]), int(cfg["hidden"])
    except (KeyError, ValueError, TypeError):
        raise UserError(
            f"{cfg_path}: damaged or from another version (bad or missing keys)"
        ) from None
    return cfg


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GDM | MLPAllocator:
    """Load a checkpoint directory written by :func:`save_model`."""
    path = Path(path)
    cfg = read_config(path)
    m = int(cfg["m"])
    if cfg["arch"] == "gdm":
        module: torch.nn.Module = Denoiser(m, int(cfg["hidden"]), int(cfg.get("t_dim", 16)))
    else:
        module = Regressor(m, int(cfg["hidden"]))
    weights = path / WEIGHTS
    if not weights.exists():
        raise UserError(f"{path}: damaged (no {WEIGHTS})")
    try:
        state = load_file(str(weights))
        module.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise UserError(f"{weights}: damaged or does not match config.json ({first})") from None
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
        **common,
    )
