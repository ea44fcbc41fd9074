"""What the commands take, as dataclasses whose fields carry their own help text, range and
choices, so each default, bound and help line is written once: the library checks a settings
object with :func:`check`, and the CLI builds its options from the same fields. Light on
purpose (no torch): the CLI reads it to draw its help.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from aigxctl.errors import UserError

__all__ = [
    "ALLOC_MAPS",
    "ARCHS",
    "DEVICES",
    "MAX_BATCH",
    "MAX_DENOISE_STEPS",
    "MAX_HIDDEN",
    "MAX_NPROC",
    "MAX_STEPS",
    "MAX_T_DIM",
    "PREDICTIONS",
    "REWARD_OBJECTIVES",
    "SAMPLING_MODES",
    "SCHEDULES",
    "RewardConfig",
    "RunSettings",
    "ServeConfig",
    "TrainConfig",
    "check",
    "describe",
    "setting",
]

# Upper bounds on the sizes a run may ask for, so a typo fails at once instead of exhausting
# memory (a batch) or running for ever (steps).
MAX_STEPS = 100_000_000
MAX_BATCH = 1 << 20
MAX_NPROC = 256
MAX_SEED = 2**32 - 1  # the run's streams derive from seed * 1000 + rank in 64 bits
MAX_LR = 1e6  # far above any learning rate that trains; much above it float32 overflows
# Model sizes (also the bounds a checkpoint's config.json is checked against).
MAX_HIDDEN = 16_384
MAX_T_DIM = 1024
MAX_DENOISE_STEPS = 1000


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field with its help text and what values it takes: ``low <= v <= high``,
    ``v > above`` (floats: also finite), or one of ``choices``. ``flag`` names it in messages
    (default ``--name-with-dashes``)."""
    meta = {"help": help, "low": low, "high": high, "above": above, "choices": choices,
            "flag": flag}  # fmt: skip
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


ARCHS = ("gdm", "mlp")
# What --device takes (cuda:N too: aigxctl.core.resolve_device reads them all).
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
SCHEDULES = ("vp", "linear", "cosine")
PREDICTIONS = ("x0", "eps")
SAMPLING_MODES = ("ddim", "ancestral")
# How a model's final sample x becomes powers (aigxctl.diffusion.to_allocation; csrc/denoise.h):
# abs P|x|/sum|x| (the paper's), simplex the Euclidean projection of x onto the probability
# simplex times P, relu P relu(x)/sum relu(x). The last two can switch a channel off exactly.
ALLOC_MAPS = ("abs", "simplex", "relu")
REWARD_OBJECTIVES = ("rate", "critic")
# The fused CPU sampler's arithmetic: f32 throughout (the default), or bf16: the layers that read
# a hidden layer take it and their weights rounded to bfloat16, sums in f32 (on AMX tiles, else
# AVX-512 BF16's dot products, else the same sums with FMAs).
PRECISIONS = ("f32", "bf16")


def _choices(choices: tuple[str, ...]) -> str:
    return " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)


def check(obj: Any, prefix: str = "--") -> None:
    """Raise UserError for the first setting of ``obj`` outside what its field allows (None is
    always allowed: it means "the default of the route"). Messages name a setting
    ``--name-with-dashes`` (a CLI option), or by its plain name with ``prefix=""`` (a key of a
    config file)."""
    for f in fields(obj):
        meta, value = f.metadata, getattr(obj, f.name)
        if "help" not in meta or value is None:
            continue
        name = f.metadata.get("flag") or (prefix + f.name.replace("_", "-") if prefix else f.name)
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                raise UserError(f"{name} must be {_choices(meta['choices'])}, got {value!r}")
            continue
        low, above, high = meta["low"], meta["above"], meta["high"]
        if above is not None or (isinstance(value, float) and low is not None):
            bound = f"> {above:g}" if above is not None else f">= {low:g}"
            if not (math.isfinite(value) and (value > above if above is not None
                                              else value >= low)):  # fmt: skip
                raise UserError(f"{name} must be a finite number {bound}, got {value}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
        elif low is not None and value < low:
            raise UserError(f"{name} must be >= {low:g}, got {value}")
        if high is not None and value > high:
            raise UserError(f"{name} must be <= {high:,}, got {value}")


def describe(cls: type, name: str) -> dict[str, Any]:
    """What the CLI needs of one setting: help text, default, choices, bounds."""
    f = next(f for f in fields(cls) if f.name == name)
    return {"default": f.default, **f.metadata}


# ---- the settings of the commands -----------------------------------------------------------


@dataclass(kw_only=True)
class RunSettings:
    """The settings both training routes take (expert labels: TrainConfig; rewards alone:
    aigxctl.reward.RewardConfig)."""

    out: str = setting(help="Checkpoint directory to write.")
    steps: int = setting(3000, "Optimizer steps.", low=1, high=MAX_STEPS)
    seed: int = setting(0, "Seed of the initial weights, the batches and the noise.", low=0,
                        high=MAX_SEED)
    hidden: int = setting(256, "Hidden width of the networks.", low=2, high=MAX_HIDDEN)
    denoise_steps: int = setting(6, "Denoising steps T of the diffusion model.", low=1,
                                 high=MAX_DENOISE_STEPS)  # fmt: skip
    val_every: int = setting(250, "Validate (and log) every N steps.", low=1, high=MAX_STEPS)
    val_samples: int = setting(2000, "Held-out gain vectors to validate on.", low=1,
                               high=MAX_BATCH, flag="val_samples")  # fmt: skip
    init: str | None = setting(None, "Fine-tune from this model (the T3 retraining).")
    force: bool = setting(False, "Replace the model checkpoint already in --out (never a "
                          "directory holding other files).")  # fmt: skip


@dataclass(kw_only=True)
class TrainConfig(RunSettings):
    """Everything ``aigxctl train`` takes on the expert route. Defaults reach >= 99.5 % of the
    optimum on T1 from 50k samples in about a minute on two CPU cores (see the README)."""

    data: list[str] = setting(help="Dataset(s) from 'aigxctl collect' (repeatable).",
                              default_factory=list)  # fmt: skip
    arch: str = setting("gdm", "gdm: the diffusion model; mlp: the discriminative baseline.",
                        choices=ARCHS)  # fmt: skip
    batch: int = setting(512, "Batch size, all processes together.", low=1, high=MAX_BATCH)
    lr: float = setting(2e-3, "Peak learning rate of AdamW (short warm-up, cosine decay).",
                        above=0.0, high=MAX_LR)  # fmt: skip
    weight_decay: float = setting(1e-4, "AdamW weight decay.", low=0.0)
    schedule: str = setting("vp", "Noise schedule of the diffusion.", choices=SCHEDULES)
    pred: str = setting("x0", "What the denoiser predicts: the clean sample or the noise.",
                        choices=PREDICTIONS)  # fmt: skip
    # 0.01 took T1 from 99.65 % to 99.87 % of the optimum at 3000 steps; 0.1 was worse than
    # none (98.9 %): the regret's L1-like pull then drowns the regression.
    rate_weight: float = setting(0.01, "Weight of the sum-rate regret beside the MSE (0: MSE "
                                 "alone, as in the paper).", low=0.0)  # fmt: skip
    resume: bool = setting(False, "Continue the interrupted run saved in --out.")
    device: str = setting("auto", "Where to train: auto (a GPU when the core and torch see one, "
                          "else the CPU), cpu, cuda or cuda:N.")  # fmt: skip
    nproc: int = setting(1, "Data-parallel processes (DDP).", low=1, high=MAX_NPROC)
    tensorboard: bool = setting(False, "Also log to TensorBoard (in --out/tensorboard).")
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        check(self)
        if not self.data:
            raise UserError("--data: give at least one dataset (.npz from 'aigxctl collect')")
        from aigxctl.core import resolve_device  # the compiled core; torch only with a GPU

        if resolve_device(self.device) != "cpu" and ":" in self.device and self.nproc > 1:
            raise UserError(f"--device {self.device} names one GPU; with --nproc > 1 use "
                            "--device cuda (one GPU per process)")  # fmt: skip
        if self.resume and self.init:
            raise UserError("--resume and --init exclude each other")
        if self.resume and self.force:
            raise UserError("--resume continues the checkpoint that --force would replace")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard")


@dataclass(kw_only=True)
class RewardConfig(RunSettings):
    """Settings of ``aigxctl train --mode reward``."""

    scenario: str = setting(help="Where to draw the gains: a built-in name or a TOML file.")
    # Fresh draws make every step new data; 1000 steps reach 99.9 % on T1 and at T3 (README).
    steps: int = setting(1000, "Optimizer steps.", low=1, high=MAX_STEPS)
    objective: str = setting("rate", "With --mode reward, what the policy climbs: rate, the "
                             "known sum rate itself, back-propagated through the deterministic "
                             "DDIM decision; critic, a learned double critic only (for a reward "
                             "one cannot differentiate).", choices=REWARD_OBJECTIVES)  # fmt: skip
    alloc_map: str = setting("simplex", "With --mode reward, how the final sample becomes "
                             "powers: abs P|x|/sum|x| (the paper's), simplex (the projection onto "
                             "the scaled simplex) or relu; simplex and relu can switch channels "
                             "off.", choices=ALLOC_MAPS, flag="--map")  # fmt: skip
    batch: int = setting(256, "Fresh draws per step.", low=1, high=MAX_BATCH)
    lr: float = setting(1e-3, "Learning rate of the policy (AdamW; with --objective rate it "
                        "decays on a cosine to 0).", above=0.0, high=MAX_LR)  # fmt: skip
    critic_lr: float = setting(2e-3, "Learning rate of the critics.", above=0.0, high=MAX_LR,
                               flag="critic_lr")  # fmt: skip
    exploration: float = setting(0.05, "Std of the noise added to the fraction the critics "
                                 "see (--objective critic).", low=0.0,
                                 flag="exploration")  # fmt: skip
    # Fresh critics next to a trained policy give it meaningless gradients, so fine-tuning lets
    # them catch up first.
    critic_warmup: int | None = setting(None, "Steps in which only the critics learn "
                                        "(--objective critic); default min(200, steps / 5) "
                                        "with --init, else 0.", low=0,
                                        flag="critic_warmup")  # fmt: skip

    def check(self) -> None:
        check(self)
        if self.critic_warmup is not None and not self.critic_warmup < self.steps:
            raise UserError(
                f"critic_warmup must be in [0, steps = {self.steps}), got {self.critic_warmup}"
            )

    @property
    def warmup_steps(self) -> int:
        """The critic warm-up actually used (see ``critic_warmup``)."""
        if self.critic_warmup is not None:
            return self.critic_warmup
        return min(200, self.steps // 5) if self.init else 0


@dataclass(kw_only=True)
class ServeConfig:
    """Everything ``aigxctl serve`` takes. The retraining defaults were measured on this
    2-core CPU: fine-tuning the pretrained T1 model on 7,168 exactly-labelled T2 rows for 4,000
    steps at 3e-3 reaches 99.4 % of the optimum on fresh T2 draws in about 22 s on one thread
    (2,000 steps: 98.4 %; from 4,096 rows and 3,000 steps: 99.0 %)."""

    model: str | None = setting(None, "Model directory to serve (default: the pretrained T1 "
                                "model).")  # fmt: skip
    timeline: str | None = setting(None, "A simulated stream instead of stdin: a TOML list of "
                                   "[[segment]] scenario = ..., decisions = N.")  # fmt: skip
    out: str | None = setting(None, "Directory for report.json, events.jsonl, serve.png and the "
                              "retrained models (without it they live in a temporary folder "
                              "removed at exit).")  # fmt: skip
    log: str | None = setting(None, "Events log, one JSON object a line (default: "
                              "OUT/events.jsonl with --out).")  # fmt: skip
    batch: int = setting(64, "Rows decided together (micro-batch).", low=1, high=MAX_BATCH)
    max_wait_ms: float = setting(5.0, "Longest a row read from stdin waits for its batch to "
                                 "fill, in ms.", low=0.0, high=60_000.0,
                                 flag="--max-wait")  # fmt: skip
    audit: float = setting(0.02, "Fraction of decisions also solved exactly: the quality "
                           "signal.", low=0.0, high=1.0)  # fmt: skip
    min_quality: float = setting(0.99, "Retrain when the audited fraction of the optimum falls "
                                 "below this.", low=0.0, high=1.0)  # fmt: skip
    quality_window: int = setting(100, "Audited decisions the quality is measured over.",
                                  low=1, high=MAX_BATCH)  # fmt: skip
    drift_window: int = setting(512, "Recent gain vectors the label-free distribution test "
                                "compares with the training distribution.", low=16,
                                high=MAX_BATCH)  # fmt: skip
    drift_threshold: float = setting(8.0, "z-score (largest over channels, mean and variance) "
                                     "at which the distribution test fires.",
                                     above=0.0)  # fmt: skip
    collect: int = setting(8192, "Rows kept after drift (exactly labelled) to retrain and "
                           "validate on.", low=64, high=MAX_BATCH)  # fmt: skip
    holdout: float = setting(0.125, "Share of the collected rows held back to validate the "
                             "candidate model.", above=0.0, high=0.5)  # fmt: skip
    retrain_steps: int = setting(4000, "Fine-tuning steps of a retraining.", low=1,
                                 high=MAX_STEPS)  # fmt: skip
    retrain_lr: float = setting(3e-3, "Peak learning rate of a retraining.", above=0.0,
                                high=MAX_LR)  # fmt: skip
    train_threads: int = setting(1, "Threads of the background retraining process.", low=1,
                                 high=MAX_NPROC)  # fmt: skip
    threads: int = setting(1, "Threads of the serving core.", low=1, high=MAX_NPROC)
    precision: str = setting("f32", "Arithmetic of the served decisions (and of the scoring of a "
                             "retrained candidate against the current model): f32, or bf16 "
                             "(see allocate --precision).", choices=PRECISIONS)
    rate: float | None = setting(None, "Decisions per second of a simulated stream (default: "
                                 "the timeline's rate, else 1000).", above=0.0,
                                 high=1e9)  # fmt: skip
    seed: int = setting(0, "Seed of the timeline's draws, the audit choice and the sampler.",
                        low=0, high=MAX_SEED)  # fmt: skip
    force: bool = setting(False, "Replace serve's own earlier output in --out / --log.")

    def check(self) -> None:
        check(self)
