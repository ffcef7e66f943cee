"""The dataset verbs: ``check`` a dataset, ``synth phantom`` to write one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from weaklesion.cli.common import EXIT_BAD_INPUT, parse_floats, refuse_bad_input
from weaklesion.cli.options import Overwrite


@refuse_bad_input
def check(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder or JSON datalist.")],
) -> None:
    """Validate a dataset before training and report every problem at once.

    Exits with status 2, as for any bad input, when there are problems.

    Example: weaklesion check data/phantom
    """
    from weaklesion.data import check_dataset

    problems = check_dataset(dataset, progress=sys.stderr.isatty())
    # "." or ".." says nothing of which dataset was checked; its full path does.
    name = dataset.resolve() if dataset.name in ("", "..") else dataset
    for problem in problems:
        typer.echo(problem)
    if problems:
        typer.echo(f"{name}: {len(problems)} problem(s) found", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    typer.echo(f"{name}: no problems found")


@refuse_bad_input
def synth_phantom(
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    cases: Annotated[int, typer.Option(help="Number of cases.")] = 48,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    shape: Annotated[str, typer.Option(help="Volume shape z,y,x in voxels.")] = "32,64,64",
    spacing: Annotated[str, typer.Option(help="Voxel size z,y,x in mm.")] = "1,1,1",
    overwrite: Overwrite = False,
) -> None:
    """Write a deterministic synthetic 3D lesion dataset (images, masks, points, counts).

    OUT appears complete or not at all; a folder that holds files is refused unless
    --overwrite replaces it.

    Example: weaklesion synth phantom --out data/phantom --cases 48 --seed 0
    """
    from weaklesion.data import write_phantom_dataset

    size = tuple(int(value) for value in parse_floats(shape, "shape"))
    root = write_phantom_dataset(
        out,
        n_cases=cases,
        seed=seed,
        shape=size,
        spacing=parse_floats(spacing, "spacing"),
        progress=sys.stderr.isatty(),
        overwrite=overwrite,
    )
    typer.echo(f"wrote {cases} cases to {root}")
