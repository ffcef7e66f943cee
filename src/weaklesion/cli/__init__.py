"""The ``weaklesion`` command.

Each verb wraps one Python function of the package, so everything the command does can
also be done from Python. Bad input ends the command with a one-line ``error:`` message
and exit status 2, never a traceback, and never a half-written output file.

The verbs live by what they work on: :mod:`~weaklesion.cli.data` (datasets),
:mod:`~weaklesion.cli.runs` (training and prediction), :mod:`~weaklesion.cli.lesions`
(maps to lesions and counts), :mod:`~weaklesion.cli.evaluation` (scores, reports,
comparisons) and :mod:`~weaklesion.cli.experiments` (demo and benchmarks). They import
the package inside their functions, so that ``weaklesion --help`` does not wait for torch;
this module registers them, in the order ``--help`` lists them.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from weaklesion.cli.common import EXIT_BAD_INPUT
from weaklesion.cli.data import check, synth_phantom
from weaklesion.cli.evaluation import compare, evaluate, report, tune
from weaklesion.cli.experiments import BENCH_DEFAULT_SEEDS, BENCH_EXPERIMENTS, bench, demo
from weaklesion.cli.lesions import count, detect
from weaklesion.cli.runs import TrainCommand, finetune, predict, train

__all__ = [
    "BENCH_DEFAULT_SEEDS",
    "BENCH_EXPERIMENTS",
    "EXIT_BAD_INPUT",
    "app",
    "bench",
    "check",
    "compare",
    "count",
    "demo",
    "detect",
    "evaluate",
    "finetune",
    "main",
    "predict",
    "report",
    "synth_app",
    "synth_phantom",
    "train",
    "tune",
]

# Help text is plain text: rich markup would swallow every "[default: ...]".
app = typer.Typer(
    help="Find and count lesions in 2D and 3D images from weak labels.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)
synth_app = typer.Typer(
    help="Write synthetic datasets.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(synth_app, name="synth")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"weaklesion {version('weaklesion')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads for torch's operations, for this command and the processes it "
            "starts (sets WEAKLESION_NUM_THREADS). Default: WEAKLESION_NUM_THREADS, "
            "OMP_NUM_THREADS, else the cores the machine's load leaves free.",
        ),
    ] = None,
) -> None:
    """Find and count lesions in 2D and 3D images from weak labels."""
    if threads is not None:
        os.environ["WEAKLESION_NUM_THREADS"] = str(threads)


app.command()(demo)
app.command()(check)
synth_app.command("phantom")(synth_phantom)
app.command(cls=TrainCommand)(train)
app.command()(finetune)
app.command()(predict)
app.command()(detect)
app.command()(count)
app.command()(evaluate)
app.command()(report)
app.command()(tune)
app.command()(compare)
app.command()(bench)


def main() -> None:
    """Entry point of the console script."""
    from weaklesion.writing import raise_on_termination

    raise_on_termination()
    app()
