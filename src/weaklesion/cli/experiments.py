"""The verbs that run the method end to end: the built-in ``demo``, and ``bench``, which
reproduces the papers' experiments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from weaklesion.cli.common import parse_floats, refuse_bad_input


@refuse_bad_input
def demo(
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("demo-output"),
    post_processing_only: Annotated[
        bool,
        typer.Option(
            "--post-processing-only",
            help="Skip training: plant lesions in synthetic maps and score the detectors.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the phantom and the training.")] = 0,
) -> None:
    """Run the whole method on the built-in phantom and write a report folder.

    First score the detectors and counters on lesions planted in synthetic maps (a few
    seconds); then synthesise a phantom, train a heatmap model from points only, predict
    the held-out cases, fit Gaussians, count, evaluate against the planted truth and
    write metrics, detections and figures to OUT.

    Example: weaklesion demo --out demo-output
    """
    from weaklesion import demo as demos

    demos.run_post_processing_demo(seed=seed)
    if not post_processing_only:
        demos.run_demo(out, seed=seed)


BENCH_EXPERIMENTS = ("mnist", "points", "counting")
# Training seeds when --seeds is not given: one per MNIST unit (40 trainings already
# take hours), three for the phantom experiments, whose tables give mean ± std.
BENCH_DEFAULT_SEEDS = {"mnist": 1, "points": 3, "counting": 3}


def _bench_runner(experiment: str) -> Callable:
    """The ``run_<experiment>`` function, imported only when the experiment runs."""
    import importlib

    name = f"weaklesion.bench.{experiment}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        raise ValueError(f"bench {experiment}: {name} is not installed") from None
    return getattr(module, f"run_{experiment}")


@refuse_bad_input
def bench(
    experiment: Annotated[str, typer.Argument(help="mnist | points | counting.")],
    out: Annotated[Path, typer.Option(help="Results folder; rerun to resume.")],
    digits: Annotated[
        str | None,
        typer.Option(
            help="mnist: target digits, e.g. 4,7 [default: GP-Unet on all ten, the other "
            "methods on 4 and 7]."
        ),
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            help="Methods to run, comma-separated or repeated [default: mnist the paper's "
            "six, e.g. gpunet, gpunet_noresidual; also gpunet_noskip, gpunet_maxpool, "
            "gpunet_empty, gpunet_smooth (maps smoothed, the width chosen on the "
            "validation grids); others all]."
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Training seeds [default: mnist 1, others 3].")
    ] = None,
    count_gradient: Annotated[
        str | None,
        typer.Option(
            help="mnist: how the count networks learn, plain (the papers') or centred "
            "[default: plain]."
        ),
    ] = None,
    normalization: Annotated[
        str | None,
        typer.Option(
            help="mnist: normalisation inside the networks' convolution blocks, none (the "
            "papers') or batch [default: none]."
        ),
    ] = None,
    objectives: Annotated[
        str | None,
        typer.Option(
            help="mnist: training objectives, regression and/or classification, "
            "comma-separated [default: both]."
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A tiny version that runs in seconds (tests).")
    ] = False,
) -> None:
    """Reproduce a paper's experiment on public or generated data.

    mnist: MNIST grids (Dubost et al., MedIA 2020); points: points against masks on the
    phantom (MICCAI 2022); counting: Poisson-binomial counting (MIDL 2022). Writes JSON
    results (one file per trained model and evaluation, under OUT/units), markdown
    tables and PNG plots to OUT. A rerun skips finished units and resumes a stopped
    training where it stopped.

    Example: weaklesion bench mnist --digits 4,7 --methods gpunet,gradcam --out bench/mnist
    """
    from rich.console import Console

    if experiment not in BENCH_EXPERIMENTS:
        raise ValueError(
            f"EXPERIMENT: got {experiment!r}; expected one of {', '.join(BENCH_EXPERIMENTS)}"
        )
    if digits is not None and experiment != "mnist":
        raise ValueError(f"--digits: applies to bench mnist only; got bench {experiment}")
    chosen = None
    if methods:
        chosen = [name.strip() for item in methods for name in item.split(",") if name.strip()]
    seeds = BENCH_DEFAULT_SEEDS[experiment] if seeds is None else seeds
    if seeds < 1:
        raise ValueError(f"--seeds: got {seeds}; expected 1 or more")
    options = {"quick": quick, "seeds": seeds, "methods": chosen, "console": Console(stderr=True)}
    if experiment == "mnist":
        targets = parse_floats(digits, "digits")
        if targets is not None and any(value != int(value) for value in targets):
            raise ValueError(f"--digits: got {digits!r}; expected whole digits 0 to 9")
        options["digits"] = None if targets is None else [int(value) for value in targets]
        if count_gradient is not None:
            options["count_gradient"] = count_gradient
        if normalization is not None:
            options["normalization"] = normalization
        if objectives is not None:
            options["objectives"] = [o.strip() for o in objectives.split(",") if o.strip()]
    else:
        for name, value in (
            ("count-gradient", count_gradient),
            ("normalization", normalization),
            ("objectives", objectives),
        ):
            if value is not None:
                raise ValueError(f"--{name}: applies to bench mnist only; got bench {experiment}")
    _bench_runner(experiment)(out, **options)
    typer.echo(f"bench {experiment}: results in {out}")
