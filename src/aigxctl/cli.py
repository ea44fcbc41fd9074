"""The ``aigxctl`` command line: parse options, call the library, render the result.

Each command is a thin shell over a plain function elsewhere in the package. Mistakes in the
input or the options (``UserError``) become one red line on stderr and exit code 2; set
``AIGXCTL_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from aigxctl import __version__, report, settings, signals
from aigxctl.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="aigxctl",
    help="Generative-AI power allocation for wireless networks: exact water-filling, a "
    "conditional diffusion allocator, and the T1 -> T2 -> T3 virtuous cycle.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
)
bench_app = typer.Typer(
    help="Measure the core against its baselines, side by side in one process.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")
scenarios_app = typer.Typer(
    help="List the built-in scenarios, or show one (built-in name or TOML file).",
    invoke_without_command=True,
)
app.add_typer(scenarios_app, name="scenarios")


def user_errors(fn: F) -> F:
    """Turn UserError into one line on stderr and exit code 2 (traceback with AIGXCTL_DEBUG=1);
    Ctrl-C, SIGTERM and SIGHUP into "interrupted" and exit code 128 + the signal number, after
    the command's cleanup (temporary files) has run."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with signals.as_interrupt():
                return fn(*args, **kwargs)
        except UserError as exc:
            if os.environ.get("AIGXCTL_DEBUG"):
                raise
            report.error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            name = signals.signal_name(exc)
            report.error("interrupted" if name == "SIGINT" else f"interrupted ({name})")
            raise typer.Exit(signals.exit_code(exc)) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        report.out.print(f"aigxctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit.",
            metavar="",
        ),
    ] = False,
) -> None:
    """Generative-AI power allocation for wireless networks."""


class Method(str, Enum):
    waterfill = "waterfill"
    equal = "equal"
    gdm = "gdm"


class Backend(str, Enum):
    auto = "auto"
    fused = "fused"
    torch = "torch"


Precision = Enum("Precision", {v: v for v in settings.PRECISIONS}, type=str)
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="gdm's fused CPU sampler: f32, or bf16 (the hidden layers' products in bfloat16, "
        "on AMX or AVX-512 BF16 where the CPU has them: see 'aigxctl info'; on the trained "
        "models in the README its fraction of the optimum is within 0.01 points of f32's).",
    ),
]


class SampleMode(str, Enum):
    ddim = "ddim"
    ancestral = "ancestral"


MODEL_HELP = "A trained model directory (from [bold]aigxctl train[/])."
DEVICE_HELP = ("Where to compute: auto (a GPU when the core and torch both see one, else the "
               "CPU), cpu, cuda or cuda:N.")  # fmt: skip
# --device on every command that computes; aigxctl.core.resolve_device reads it.
DeviceOption = Annotated[
    str, typer.Option("--device", help=DEVICE_HELP, metavar="auto|cpu|cuda[:N]")
]
QUIET_HELP = "No progress display (a bar on a terminal, a line every 10 s otherwise)."


class OutputFormat(str, Enum):
    csv = "csv"
    json = "json"


@app.command()
@user_errors
def allocate(
    gains: Annotated[
        str,
        typer.Option(
            "--gains",
            "-g",
            help="CSV of channel gains, one instance per row, M columns, optional header (g1..gM; "
            "collect's CSV works as it is); [bold]-[/] reads stdin.",
            show_default=False,
        ),
    ],
    total_power: Annotated[
        float | None,
        typer.Option(
            "--total-power",
            "-P",
            help="Total power budget P per instance \\[default: 0.2, or the model's P with "
            "gdm].",
            show_default=False,
        ),
    ] = None,
    noise: Annotated[
        float | None,
        typer.Option(
            "--noise",
            help="Noise power sigma^2 \\[default: 1, or the model's with gdm].",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            "-m",
            help="waterfill: the exact optimum; equal: P/M each; gdm: the diffusion model "
            "(--model, or the pretrained T1 model shipped with aigxctl).",
        ),
    ] = Method.waterfill,
    model: Annotated[
        Path | None,
        typer.Option("--model", help=MODEL_HELP + " \\[default with gdm: the pretrained T1 "
                     "model]", show_default=False),
    ] = None,
    backend: Annotated[
        Backend, typer.Option("--backend", help="gdm sampler: fused core, plain PyTorch, or auto.")
    ] = Backend.auto,
    mode: Annotated[
        SampleMode | None,
        typer.Option(
            "--mode", help="gdm sampling \\[default: the model's, ddim].", show_default=False
        ),
    ] = None,
    best_of: Annotated[
        int | None,
        typer.Option(
            "--best-of", help="gdm: keep the best of K samples per row, by their sum rate at "
            "--noise \\[default: the model's, 1].", show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="gdm: fix the sampling noise.", show_default=False)
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout (atomic).")
    ] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = (
        OutputFormat.csv
    ),
    precision: PrecisionOption = Precision.f32,
    device: DeviceOption = "auto",
) -> None:
    """Allocate power for each row of a gains CSV: [bold]p1..pM,sum_rate[/] per row.

    A one-line summary goes to stderr so stdout stays pipeable.
    """
    from aigxctl import allocation, files

    if method is Method.gdm:
        _warn_if_incomplete(model)
    gdm = {"backend": backend.value, "best_of": best_of, "seed": seed,
           "mode": mode.value if mode else None,
           "precision": precision.value} if method is Method.gdm else {}  # fmt: skip
    result = allocation.run(gains, method.value, model_dir=model, total_power=total_power,
                            noise=noise, device=device, **gdm)  # fmt: skip
    text = allocation.to_csv(result) if fmt is OutputFormat.csv else allocation.to_json(result)
    if out is None:
        if sys.stdout is None:  # started with stdout closed (>&-)
            raise UserError("<stdout>: closed; give --out FILE")
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise  # the reader left (`| head`): Typer exits quietly, as pipes expect
        except OSError as exc:  # > /dev/full, a full disk, an I/O error
            _drop_stdout()
            raise UserError(f"<stdout>: cannot write ({exc.strerror or exc})") from None
    else:
        files.atomic_write_text(out, text)
    rows, m = result.power.shape
    idle = (f"; {result.idle_rows} row{'s' if result.idle_rows != 1 else ''} with every gain 0 "
            "got no power (no channel can use it)" if result.idle_rows else "")  # fmt: skip
    report.err.print(
        f"[green]✓[/] {rows} row{'s' if rows != 1 else ''} x M={m}, {escape(result.how)}, "
        f"P={result.total_power:g}, σ²={result.noise:g}: mean sum rate "
        f"[bold]{result.sum_rate.mean():.4f}[/] bit/s/Hz in {result.seconds * 1e3:.2f} ms"
        f"{' -> ' + escape(str(out)) if out else ''}{idle}"
    )


def _drop_stdout() -> None:
    """Point file descriptor 1 at /dev/null after a failed write, so that Python's own flush at
    exit does not fail a second time with a traceback ("Exception ignored ...")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def _load_model(path: Path | None) -> Any:
    from aigxctl.checkpoint import load_model

    _warn_if_incomplete(path)
    return load_model(path)


def _warn_if_incomplete(path: Path | None) -> None:
    """One line on stderr when a model is a half-trained (interrupted) checkpoint."""
    from rich.markup import escape

    from aigxctl.checkpoint import incomplete_note

    note = incomplete_note(path)
    if note:
        report.err.print(f"[yellow]Warning:[/] {escape(note)}")


@scenarios_app.callback()
@user_errors
def scenarios_list(ctx: typer.Context) -> None:
    """List the built-in scenarios (use [bold]scenarios show NAME|FILE.toml[/] for one)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.markup import escape

    from aigxctl import scenarios

    rows = [
        [
            name,
            s.m,
            f"{s.total_power:g}",
            f"{s.noise:g}",
            "\n".join(g.describe() for g in s.groups),
            escape(s.description),
        ]
        for name, s in {**scenarios.builtin(), **scenarios.families()}.items()
    ]
    t = report.table(
        "built-in scenarios",
        ["name", "M", "P", "σ²", "channel groups", "description"],
        rows,
        caption="Any scenario .toml file works too (see examples/rainstorm.toml); "
        "aigxctl scenarios show NAME|FILE.toml for one",
    )
    t.columns[4].justify = t.columns[5].justify = "left"
    t.columns[5].no_wrap = True  # a description reads whole, or in the vertical layout
    report.out.print(t)


@scenarios_app.command("show")
@user_errors
def scenarios_show(
    scenario: Annotated[str, typer.Argument(help="A built-in name or a scenario TOML file.")],
    samples: Annotated[
        int, typer.Option("--samples", "-n", help="Draws for the quick estimate.")
    ] = 20000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the estimate's draws.")] = 0,
    toml: Annotated[
        bool, typer.Option("--toml", help="Print the scenario as a TOML file to edit.", metavar="")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.", metavar="")
    ] = False,
) -> None:
    """Show a scenario and what there is to win: the optimum's mean sum rate vs equal split."""
    from rich.markup import escape

    from aigxctl import scenarios

    s = scenarios.get(scenario)
    if toml:
        report.out.print(s.to_toml(), end="", markup=False, highlight=False, emoji=False)
        return
    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    scenarios.check_draw_size(samples, s.m, "--samples")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    est = scenarios.estimate(s, samples, seed)
    if json_out:
        report.out.print_json(
            data={"scenario": s.to_dict(), "estimate": {**est, "samples": samples, "seed": seed}}
        )
        return
    items = {
        "name": escape(s.name),
        "description": escape(s.description) or "-",
        "channels M": s.m,
        "total power P": f"{s.total_power:g} W",
        "noise σ²": f"{s.noise:g}",
        **{f"group {i + 1}": g.describe() for i, g in enumerate(s.groups)},
        "mean gain": f"{est['mean_gain']:.4g}",
        "optimum sum rate": f"{est['optimum_rate']:.4f} bit/s/Hz",
        "equal-split sum rate": f"{est['equal_rate']:.4f} bit/s/Hz",
        "optimum over equal": f"[bold]{est['optimum_gain_over_equal']:+.1%}[/] "
        f"(mean over {samples:,} draws, seed {seed})",
    }
    report.out.print(report.key_values(f"scenario {escape(s.name)}", items))


class DataFormat(str, Enum):
    npz = "npz"
    csv = "csv"


STDOUT = Path("/dev/stdout")


def _collect_target(out: Path | None, fmt: DataFormat | None) -> tuple[Path, DataFormat | None]:
    """(path to write, format): ``-`` or no --out with --format csv is a CSV on standard output
    (:data:`STDOUT`); an npz (binary) there is refused."""
    if out is not None and str(out) != "-":
        return out, fmt
    if fmt is DataFormat.npz:
        raise UserError("--format npz is binary and needs a file: give --out FILE, or use "
                        "--format csv to write to standard output")  # fmt: skip
    if out is None and fmt is None:
        raise UserError("--out FILE is needed (or --format csv / --out - for a CSV on standard "
                        "output)")  # fmt: skip
    return STDOUT, DataFormat.csv


@app.command()
@user_errors
def collect(
    scenario: Annotated[
        str, typer.Option("--scenario", "-s", help="Built-in name (t1, t2) or a TOML file.")
    ],
    samples: Annotated[int, typer.Option("--samples", "-n", help="Gain vectors to draw.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Dataset file to write; - for a CSV on standard output "
                     "(also the default with --format csv).", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same file contents.")] = 0,
    total_power: Annotated[
        float | None,
        typer.Option("--total-power", "-P", show_default=False,
                     help="Override the scenario's P \\[default: the scenario's]."),
    ] = None,
    fmt: Annotated[
        DataFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="npz, or csv for spreadsheets/MATLAB (default: csv for an --out ending in "
            ".csv, else npz).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing file.", metavar="")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP, metavar="")] = False,
) -> None:
    """Draw gain vectors from a scenario and label them with the exact water-filling optimum.

    Same seed, same arrays. Runs in chunks (bounded memory for any N) and writes through a
    temporary file, so an interrupted run leaves no half file.
    """
    import time

    from aigxctl import core, data, scenarios

    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if total_power is not None:
        core.check_level("--total-power", total_power)
    out, fmt = _collect_target(out, fmt)
    to_stdout = out is STDOUT
    force = force or to_stdout  # a pipe or a terminal: nothing there to keep
    s = scenarios.get(scenario)
    start = time.perf_counter()
    with report.StepProgress(f"collect {s.name}", samples, quiet=quiet or samples < 200_000) as bar:
        info = data.collect_to_file(s, samples, seed, out, total_power=total_power,
                                    csv=None if fmt is None else fmt is DataFormat.csv,
                                    progress=bar.update, overwrite=force)  # fmt: skip
    # A tiny P rounds every rate to 0: no ratio to show then.
    vs_equal = (f" ({info['expert_rate'] / info['equal_rate'] - 1:+.1%} over equal)"
                if info["equal_rate"] > 0 else "")  # fmt: skip
    kind = "csv" if (fmt is DataFormat.csv or (fmt is None and out.suffix.lower() == ".csv")) \
        else "npz"
    shown = "<stdout>" if to_stdout else escape(str(out))
    report.err.print(
        f"[green]✓[/] {samples:,} samples of {escape(s.name)} (M={s.m}, "
        f"P={info['total_power']:g}, seed {seed}) -> {shown} ({kind}) in "
        f"{time.perf_counter() - start:.2f} s; expert mean sum rate "
        f"{info['expert_rate']:.4f} bit/s/Hz{vs_equal}"
    )


def option(
    cls: type, name: str, *decls: str, default: str | bool | None = None, **kwargs: Any
) -> Any:
    """A Typer option whose help text comes from the settings field ``cls.name`` (one source
    for the library and the CLI); a boolean is a plain flag. ``default``: the default to show
    (True: the field's) for an option the CLI leaves at None, so the route applies its own."""
    from rich.markup import escape

    info = settings.describe(cls, name)
    text = info["help"]
    if isinstance(info["default"], bool):
        kwargs.setdefault("metavar", "")
    elif default is not None:
        value = info["default"] if default is True else default
        text += f" [default: {value:g}]" if isinstance(value, float) else f" [default: {value}]"
    return typer.Option(*(decls or ("--" + name.replace("_", "-"),)), help=escape(text),
                        **kwargs)  # fmt: skip


def choices(cls: type, name: str) -> Any:
    """An Enum of the choices of the settings field ``cls.name``, so --help lists them."""
    values = settings.describe(cls, name)["choices"]
    return Enum(name.title().replace("_", ""), {v: v for v in values}, type=str)


def _scenario_names(incomplete: str) -> list[str]:
    from aigxctl import scenarios

    names = {**scenarios.builtin(), **scenarios.families()}
    return [name for name in names if name.startswith(incomplete)]


_TC, _RC = settings.TrainConfig, settings.RewardConfig
TrainMode = Enum("TrainMode", {"expert": "expert", "reward": "reward"}, type=str)
Arch, Pred, Schedule = (choices(_TC, n) for n in ("arch", "pred", "schedule"))
Objective, AllocMap = (choices(_RC, n) for n in ("objective", "alloc_map"))


@app.command()
@user_errors
def train(
    out: Annotated[Path, option(_TC, "out", "--out", "-o")],
    datasets: Annotated[list[Path] | None, option(_TC, "data", "--data", "-d",
                                                   metavar="FILE")] = None,
    mode: Annotated[
        TrainMode,
        typer.Option(
            "--mode",
            help="expert: learn the water-filling labels in --data; reward: learn from the sum "
            "rate alone (no expert), on fresh draws of --scenario.",
        ),
    ] = TrainMode.expert,
    scenario: Annotated[str | None, option(_RC, "scenario", "--scenario", "-s",
                                           autocompletion=_scenario_names)] = None,
    objective: Annotated[Objective | None, option(_RC, "objective", default=True)] = None,
    alloc_map: Annotated[AllocMap | None, option(_RC, "alloc_map", "--map",
                                                 default=True)] = None,
    arch: Annotated[Arch | None, option(_TC, "arch", default=True)] = None,
    steps: Annotated[int | None, option(_TC, "steps", default=f"{_TC.steps}; with --mode "
                                        f"reward {_RC.steps}")] = None,
    batch: Annotated[int | None, option(_TC, "batch", default=f"{_TC.batch}; with --mode "
                                        f"reward {_RC.batch}")] = None,
    lr: Annotated[float | None, option(_TC, "lr", default=f"{_TC.lr:g}; with --mode "
                                       f"reward {_RC.lr:g}")] = None,
    seed: Annotated[int, option(_TC, "seed")] = _TC.seed,
    init: Annotated[Path | None, option(_TC, "init")] = None,
    resume: Annotated[bool, option(_TC, "resume")] = False,
    force: Annotated[bool, option(_TC, "force")] = False,
    device: Annotated[str | None, option(_TC, "device", default=True,
                                         metavar="auto|cpu|cuda[:N]")] = None,
    nproc: Annotated[int | None, option(_TC, "nproc", default=True)] = None,
    pred: Annotated[Pred | None, option(_TC, "pred", default=True)] = None,
    rate_weight: Annotated[float | None, option(_TC, "rate_weight", default=True)] = None,
    schedule: Annotated[Schedule | None, option(_TC, "schedule", default=True)] = None,
    denoise_steps: Annotated[int, option(_TC, "denoise_steps")] = _TC.denoise_steps,
    hidden: Annotated[int, option(_TC, "hidden")] = _TC.hidden,
    val_every: Annotated[int, option(_TC, "val_every")] = _TC.val_every,
    tensorboard: Annotated[bool, option(_TC, "tensorboard")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP, metavar="")] = False,
) -> None:
    """Train the diffusion model (or the MLP baseline) on expert-labelled datasets, or from the
    sum rate alone ([bold]--mode reward[/])."""
    from aigxctl import train as training

    options = {
        "out": str(out), "data": [str(d) for d in datasets or []], "scenario": scenario,
        "objective": objective, "alloc_map": alloc_map, "arch": arch, "steps": steps,
        "batch": batch, "lr": lr, "seed": seed,
        "init": str(init) if init else None, "resume": resume, "force": force,
        "device": device, "nproc": nproc, "pred": pred, "rate_weight": rate_weight,
        "schedule": schedule, "denoise_steps": denoise_steps, "hidden": hidden,
        "val_every": val_every, "tensorboard": tensorboard,
    }  # fmt: skip
    options = {k: v.value if isinstance(v, Enum) else v for k, v in options.items()}
    what = f"train {options['arch'] or _TC.arch}"
    planned = steps or (_RC.steps if mode == TrainMode.reward else _TC.steps)
    with report.StepProgress(what, planned, quiet=quiet) as bar:
        try:
            result = training.run(mode.value, bar.update, **options)
        except KeyboardInterrupt as exc:
            bar.stop()
            report.error(training.interrupted_message(exc, out))
            raise typer.Exit(signals.exit_code(exc)) from None
    if result.get("rank", 0) != 0:
        return  # under torchrun only rank 0 reports
    frac = result.get("val_fraction")
    report.err.print(
        f"[green]✓[/] {what} -> {out}: {result['step']} steps on {result['samples']:,} samples "
        f"in {result['seconds']:.1f} s on {result.get('device', 'cpu')}"
        + (f", validation [bold]{frac:.2%}[/] of the optimum" if frac is not None else "")
    )


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, typer.Option("--model", help=MODEL_HELP)],
    dataset: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Evaluate on this dataset's gains (.npz or CSV)."),
    ] = None,
    scenario: Annotated[
        str | None,
        typer.Option("--scenario", "-s", help="...or on fresh draws of a scenario (a built-in "
                     "name or a TOML file).", autocompletion=_scenario_names),
    ] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", help="Draws with --scenario.")] = 10000,
    seed: Annotated[int, typer.Option("--seed", help="Draws and sampling noise.")] = 12345,
    baselines: Annotated[
        str,
        typer.Option("--baselines", help="Comma-separated: equal, random, mlp:DIR, gdm:DIR."),
    ] = "equal,random",
    backend: Annotated[Backend, typer.Option("--backend", help="gdm sampler.")] = Backend.auto,
    mode: Annotated[
        SampleMode | None,
        typer.Option("--mode", help="gdm sampling \\[default: the model's, ddim].",
                     show_default=False),
    ] = None,
    best_of: Annotated[
        int | None,
        typer.Option("--best-of", help="gdm: keep the best of K samples per row \\[default: "
                     "the model's, 1].", show_default=False),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.", metavar="")
    ] = False,
    precision: PrecisionOption = Precision.f32,
    device: DeviceOption = "auto",
) -> None:
    """Mean sum rate of a model vs the optimum and baselines, % of optimum, gain over equal."""
    from aigxctl import evaluate as evaluation

    _warn_if_incomplete(model)
    res = evaluation.run(model, data=dataset, scenario=scenario, samples=samples, seed=seed,
                         baselines=baselines, backend=backend.value,
                         mode=mode.value if mode else None, best_of=best_of,
                         precision=precision.value, device=device)  # fmt: skip
    if json_out:
        report.out.print_json(data=res)
        return
    rows = [[f"{res['arch']} (this model)" if name == "model" else name, f"{m['rate']:.4f}",
             f"{m['fraction_of_optimum']:.2%}", f"{m['gain_over_equal']:+.1%}"]
            for name, m in res["methods"].items()]  # fmt: skip
    report.out.print(report.table(
        f"{res['model']} on {res['data']}: P={res['total_power']:g}, σ²={res['noise']:g}",
        ["method", "sum rate (bit/s/Hz)", "of optimum", "vs equal"], rows))  # fmt: skip
    report.out.print(f"{res['decisions_per_s']:,.0f} decisions/s ({res['backend']} backend on "
                     f"{res['device']}, {res['samples']:,} samples)")  # fmt: skip


@app.command()
@user_errors
def cycle(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Cycle config TOML (a \\[cycle] table; see examples/cycle.toml)."
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: a smoke test in about 20 s.", metavar="")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a previous cycle's results in --out (never a directory holding "
            "other files).",
            metavar="",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the interrupted cycle in --out from its last finished phase (same "
            "config).",
            metavar="",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP, metavar="")] = False,
    device: DeviceOption = "auto",
) -> None:
    """Replay the virtuous cycle: T1 train, T2 rainstorm drift, T3 retrain, with baselines."""
    from aigxctl.cycle import load_config, run_cycle

    cfg = load_config(config, quick=quick)
    with report.StageStatus(quiet=quiet) as status:
        result = run_cycle(cfg, out, status.update, force=force, resume=resume, device=device)
    if result["run"]["skipped"]:
        report.err.print(f"resumed: {', '.join(result['run']['skipped'])} were done already "
                         "and not run again", markup=False)  # fmt: skip
    report.out.print(cycle_table(result))
    sac = result["sac"]
    if sac["status"] != "trained":
        report.err.print(f"SAC skipped: {sac['reason']}", markup=False)
    report.err.print(f"[green]✓[/] report, metrics, checkpoints and cycle.png in {out} "
                     f"({report.duration(result['run']['wall_seconds'])} on "
                     f"{result['run']['device']})")  # fmt: skip


_SC = settings.ServeConfig


@app.command()
@user_errors
def serve(
    model: Annotated[Path | None, option(_SC, "model", "--model", "-m")] = None,
    timeline: Annotated[Path | None, option(_SC, "timeline")] = None,
    out: Annotated[Path | None, option(_SC, "out", "--out", "-o")] = None,
    log: Annotated[Path | None, option(_SC, "log")] = None,
    batch: Annotated[int, option(_SC, "batch")] = _SC.batch,
    max_wait: Annotated[float, option(_SC, "max_wait_ms", "--max-wait", metavar="MS")] = (
        _SC.max_wait_ms),
    audit: Annotated[float, option(_SC, "audit")] = _SC.audit,
    min_quality: Annotated[float, option(_SC, "min_quality")] = _SC.min_quality,
    quality_window: Annotated[int, option(_SC, "quality_window")] = _SC.quality_window,
    drift_window: Annotated[int, option(_SC, "drift_window")] = _SC.drift_window,
    drift_threshold: Annotated[float, option(_SC, "drift_threshold")] = _SC.drift_threshold,
    collect: Annotated[int, option(_SC, "collect")] = _SC.collect,
    holdout: Annotated[float, option(_SC, "holdout")] = _SC.holdout,
    retrain_steps: Annotated[int, option(_SC, "retrain_steps")] = _SC.retrain_steps,
    retrain_lr: Annotated[float, option(_SC, "retrain_lr")] = _SC.retrain_lr,
    train_threads: Annotated[int, option(_SC, "train_threads")] = _SC.train_threads,
    threads: Annotated[int, option(_SC, "threads")] = _SC.threads,
    precision: Annotated[Precision, option(_SC, "precision")] = Precision.f32,
    rate: Annotated[float | None, option(_SC, "rate")] = None,
    seed: Annotated[int, option(_SC, "seed")] = _SC.seed,
    force: Annotated[bool, option(_SC, "force")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No status line.",
                                        metavar="")] = False,
) -> None:
    """Serve allocations for gains read from stdin (or a simulated [bold]--timeline[/]), one
    CSV line out per line in, while watching the model's quality, detecting drift, retraining
    in the background and swapping the better model in without stopping."""
    from aigxctl import serve as serving

    cfg = settings.ServeConfig(
        model=str(model) if model else None, timeline=str(timeline) if timeline else None,
        out=str(out) if out else None, log=str(log) if log else None, batch=batch,
        max_wait_ms=max_wait, audit=audit, min_quality=min_quality,
        quality_window=quality_window, drift_window=drift_window,
        drift_threshold=drift_threshold, collect=collect, holdout=holdout,
        retrain_steps=retrain_steps, retrain_lr=retrain_lr, train_threads=train_threads,
        threads=threads, precision=precision.value, rate=rate, seed=seed, force=force,
    )  # fmt: skip
    with report.StageStatus(quiet=quiet) as status:
        result = serving.run(cfg, status=lambda stage, detail: status.update(
            stage, {"detail": detail}))  # fmt: skip
    lat = result["latency_ms"]
    p99 = "-" if lat["p99"] is None else f"{lat['p99']:.2f} ms"
    busy = lat["p99_while_training"]
    # Without --out, retrained models live in a temporary folder removed at exit.
    kept = out is not None or not result["swaps"]
    where = escape(result["model"]) if kept else "retrained models not kept: no --out"
    report.err.print(
        f"[green]✓[/] {result['decisions']:,} decision{'s' if result['decisions'] != 1 else ''} "
        f"in {result['seconds']:.1f} s, "
        f"{len(result['swaps'])} swap(s), serving generation {result['generation']} "
        f"({where}); p99 {p99} per batch"
        + (f", {busy:.2f} ms while retraining" if busy is not None else "")
        + (f"; report in {escape(str(out))}" if out else "")
    )


def cycle_table(result: dict[str, Any]) -> Any:
    """Per phase and method: sum rate, % of optimum, gain over equal, and the paper's figure."""
    rows = []
    paper = result["paper"]
    for phase in result["phases"]:
        for name, m in phase["methods"].items():
            ref = paper.get(phase["name"], {}).get(name)
            first = name == next(iter(phase["methods"]))
            rows.append(
                [
                    phase["name"] if first else "",
                    name,
                    f"{m['rate']:.4f}",
                    f"{m['fraction_of_optimum']:.2%}",
                    f"{m['gain_over_equal']:+.1%}",
                    f"{ref:+.1%}" if ref is not None else "",
                ]
            )
    return report.table(
        "virtuous cycle: T1 good weather -> T2 rainstorm -> T3 retrained",
        ["phase", "method", "sum rate", "of optimum", "vs equal", "paper vs equal"],
        rows,
    )


@app.command()
@user_errors
def info(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Also say where this model came from (data, steps done of planned) and which "
            "sampler it uses, and why.",
        ),
    ] = None,
) -> None:
    """Show the version, how the core was built, the GPUs it sees and its thread count, and
    the packaged model that --method gdm uses without --model."""
    import platform

    import torch

    from aigxctl import bench, checkpoint, core

    build = core.build_info()
    torch_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    items = {
        "aigxctl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "core built with CUDA": "yes" if build["cuda_built"] else "no",
        "GPUs seen by the core": build["cuda_devices"],
        "GPUs seen by torch": torch_gpus,
        "core CPU threads": build["threads"],
        "core CPU level": f"{build['isa']} (this CPU runs {', '.join(build['isa_available'])})",
        "--precision bf16 on": bench.bf16_engine(),
        "torch CPU threads": torch.get_num_threads(),
    }
    if model is not None:
        loaded = _load_model(model)
        which, why = loaded.backend_for("auto")
        items[f"{model} from"] = checkpoint.provenance(loaded.config or {})
        items[f"sampler for {model}"] = f"{which}: {why}"
    else:
        try:
            default = checkpoint.default_model_path()
            items["default model"] = str(default)
            items["default model from"] = checkpoint.provenance(checkpoint.read_config(default))
        except UserError as exc:
            items["default model"] = f"none ({exc})"
    report.out.print(report.key_values("aigxctl info", items))


@bench_app.command("waterfill")
@user_errors
def bench_waterfill(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.", metavar="")
    ] = False,
    batches: Annotated[
        str, typer.Option("--batches", help="Comma-separated batch sizes B.")
    ] = "1,1000,100000",
    channels: Annotated[str, typer.Option("--channels", help="Comma-separated M.")] = "20,256",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repeats per case (median).")] = 7,
    device: DeviceOption = "auto",
) -> None:
    """Rows/s of the core's water-filling vs a bisection loop, vectorised NumPy and a copy (on a
    GPU: vs a device copy and a batched PyTorch sort + cumsum solver)."""
    from aigxctl import bench

    results = bench.waterfill(
        _int_list("--batches", batches), _int_list("--channels", channels), repeats=repeats,
        device=device,
    )  # fmt: skip
    if json_out:
        report.out.print_json(data=results)
    else:
        report.out.print(bench.waterfill_table(results))


@bench_app.command("sample")
@user_errors
def bench_sample(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.", metavar="")
    ] = False,
    batches: Annotated[str, typer.Option("--batches", help="Comma-separated B.")] = "1,64,4096",
    repeats: Annotated[
        int, typer.Option("--repeats", help="Timed rounds (min / median / max).")
    ] = 5,
    no_compile: Annotated[
        bool, typer.Option("--no-compile", help="Skip the torch.compile baseline.", metavar="")
    ] = False,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Time this checkpoint (its allocate as a user calls it) instead of a "
            "random-init model of the reference shape.",
        ),
    ] = None,
    contenders: Annotated[
        str | None,
        typer.Option(
            "--contenders",
            help="Comma-separated: fused, fused_bf16, torch, torch_compile, onnxruntime, openvino "
            "\\[default: all installed].",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """DDIM decisions/s of the fused core vs plain PyTorch, torch.compile, and ONNX Runtime and
    OpenVINO when installed (pip install 'aigxctl\\[bench]'): same weights, each checked equal
    to the torch backend first, rounds alternating; with the machine's FMA peak and the
    fraction of it each reaches. On a GPU: fused vs PyTorch (eager, CUDA graphs, compile)."""
    from aigxctl import bench

    results = bench.sample(
        _int_list("--batches", batches),
        repeats,
        compile_torch=not no_compile,
        model_dir=str(model) if model else None,
        device=device,
        contenders=[c.strip() for c in contenders.split(",")] if contenders else None,
    )
    if json_out:
        report.out.print_json(data=results)
    else:
        report.out.print(bench.sample_table(results))
        for line in bench.sample_notes(results):
            report.err.print(line, markup=False, highlight=False)


@bench_app.command("collect")
@user_errors
def bench_collect(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.", metavar="")
    ] = False,
    samples: Annotated[int, typer.Option("--samples", "-n", help="Gain vectors N.")] = 1_000_000,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repeats (median).")] = 3,
    scenario: Annotated[
        str, typer.Option("--scenario", "-s", help="Built-in name or a TOML file.")
    ] = "t1",
) -> None:
    """Collect throughput (draw + exact labels, in memory and to .npz) vs drawing the gains."""
    from aigxctl import bench

    results = bench.collect(samples, repeats, scenario=scenario)
    if json_out:
        report.out.print_json(data=results)
    else:
        report.out.print(bench.collect_table(results))


def _int_list(option: str, text: str) -> list[int]:
    """Comma-separated positive integers ("1,1e5" too); the upper limits are the library's."""
    values = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        try:
            # Digits stay exact however many; "1e5" is a fine way to write 100000.
            number = int(item) if item.isdigit() else float(item)
        except ValueError:
            number = float("nan")
        if not (number >= 1 and (isinstance(number, int) or number.is_integer())):  # nan, inf
            raise UserError(f"{option} must list integers >= 1, got {item!r}")
        values.append(int(number))
    if not values:
        raise UserError(f"{option} must list integers >= 1, got {text!r}")
    return values


def main() -> None:
    """Console-script entry point. A bad or missing option gets one line and exit code 2, like
    every other user mistake (Typer's own message is a framed box of several lines); Typer's
    other errors keep their own exit code."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        report.error("interrupted")
        sys.exit(130)
    except typer.TyperException as exc:  # the base of Typer's parse errors
        message = " ".join(exc.format_message().split())
        ctx = getattr(exc, "ctx", None)
        if message:  # empty when a bare group printed its help instead
            if ctx is not None:
                message = f"{ctx.command_path}: {message} (see '{ctx.command_path} --help')"
            report.error(message)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
