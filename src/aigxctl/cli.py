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

from aigxctl import __version__, report
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


def user_errors(fn: F) -> F:
    """Turn UserError into one line on stderr and exit code 2 (traceback with AIGXCTL_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if os.environ.get("AIGXCTL_DEBUG"):
                raise
            report.error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            report.error("interrupted")
            raise typer.Exit(130) from None

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
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Generative-AI power allocation for wireless networks."""


def positive(name: str, value: float) -> float:
    """Check a numeric option is finite and > 0, naming the option otherwise."""
    if not (value > 0 and value != float("inf")):
        raise UserError(f"{name} must be a finite number > 0, got {value}")
    return value


class Method(str, Enum):
    waterfill = "waterfill"
    equal = "equal"


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
            help="CSV of channel gains, one instance per row, M columns, optional header; "
            "[bold]-[/] reads stdin.",
            show_default=False,
        ),
    ],
    total_power: Annotated[
        float, typer.Option("--total-power", "-P", help="Total power budget P per instance.")
    ] = 0.2,
    noise: Annotated[float, typer.Option("--noise", help="Noise power sigma^2.")] = 1.0,
    method: Annotated[
        Method, typer.Option("--method", "-m", help="waterfill = exact optimum, equal = P/M each.")
    ] = Method.waterfill,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout (atomic).")
    ] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = (
        OutputFormat.csv
    ),
) -> None:
    """Allocate power for each row of a gains CSV: [bold]p1..pM,sum_rate[/] per row.

    A one-line summary goes to stderr so stdout stays pipeable.
    """
    from aigxctl import allocation, files

    positive("--total-power", total_power)
    positive("--noise", noise)
    g = files.read_gains_csv(gains)
    result = allocation.allocate(g, method.value, total_power, noise)
    text = allocation.to_csv(result) if fmt is OutputFormat.csv else allocation.to_json(result)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        files.atomic_write_text(out, text)
    rows, m = result.power.shape
    where = f" -> {out}" if out else ""
    report.err.print(
        f"[green]✓[/] {rows} row{'s' if rows != 1 else ''} x M={m}, {method.value}, "
        f"P={total_power:g}, σ²={noise:g}: mean sum rate "
        f"[bold]{result.sum_rate.mean():.4f}[/] bit/s/Hz in {result.seconds * 1e3:.2f} ms{where}"
    )


@app.command()
@user_errors
def info() -> None:
    """Show the version, how the core was built, the GPUs it sees and its thread count."""
    import platform

    import torch

    from aigxctl import core

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
        "torch CPU threads": torch.get_num_threads(),
    }
    report.out.print(report.key_values("aigxctl info", items))


@bench_app.command("waterfill")
@user_errors
def bench_waterfill(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    batches: Annotated[
        str, typer.Option("--batches", help="Comma-separated batch sizes B.")
    ] = "1,1000,100000",
    channels: Annotated[str, typer.Option("--channels", help="Comma-separated M.")] = "20,256",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repeats per case (median).")] = 7,
) -> None:
    """Rows/s of the core's water-filling vs a bisection loop, vectorised NumPy and a copy."""
    from aigxctl import bench

    sizes = _int_list("--batches", batches)
    ms = _int_list("--channels", channels)
    if repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {repeats}")
    results = bench.waterfill(sizes, ms, repeats=repeats)
    if json_out:
        report.out.print_json(data=results)
    else:
        report.out.print(bench.waterfill_table(results))


def _int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{option} must list integers >= 1, got {text!r}")
    return values


def main() -> None:
    """Console-script entry point."""
    app()
