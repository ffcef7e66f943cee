"""The verbs that make a run and apply it: ``train``, ``finetune``, ``predict``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from weaklesion.cli.common import parse_floats, refuse_bad_input
from weaklesion.cli.options import Device, Overrides, Overwrite, Resume


class TrainCommand(TyperCommand):
    """``train``, whose help ends with the named choices of the registries (read lazily,
    so that ``weaklesion --help`` does not import torch)."""

    @property
    def epilog(self) -> str:
        from weaklesion.training.choices import choices_help

        # "\b" keeps click from rewrapping the table into one paragraph.
        return "Choices (--set KEY=NAME):\n\n\b\n" + choices_help()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass


@refuse_bad_input
def train(
    data: Annotated[Path, typer.Argument(help="Dataset folder or JSON datalist.")],
    out: Annotated[Path, typer.Option(help="Run folder for checkpoints and logs.")],
    labels: Annotated[
        str | None, typer.Option(help="points | counts | masks | masks+counts.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file.")] = None,
    set_: Overrides = None,
    resume: Resume = False,
    nproc: Annotated[int, typer.Option(help="Processes for distributed training.")] = 1,
) -> None:
    """Train a model from weak labels: points, counts, masks or masks+counts.

    Every key of the configuration (see TrainConfig) can be set in the TOML file or with
    --set; the command line wins. The named choices are listed below. A terminal shows a
    progress bar; a log (stderr not a terminal) gets one line per epoch.

    Example: weaklesion train data/phantom --labels points --out runs/heatmap
    --set epochs=20 --set sigma=1.5
    """
    from weaklesion.training import load_config
    from weaklesion.training import train as train_model
    from weaklesion.training.distributed import torchrun_command

    overrides = list(set_ or [])
    if labels is not None:
        overrides.insert(0, f'labels="{labels}"')
    settings = load_config(config, overrides)
    if nproc > 1:
        command = torchrun_command(config or "-", data, out, nproc, overrides, resume)
        raise typer.Exit(subprocess.call(command))
    terminal = sys.stderr.isatty()
    result = train_model(
        settings, data, out, resume=resume, progress=terminal, log=None if terminal else sys.stderr
    )
    typer.echo(f"trained {out}: {result.summary() if hasattr(result, 'summary') else result}")


@refuse_bad_input
def finetune(
    data: Annotated[Path, typer.Argument(help="Dataset folder or datalist with masks.")],
    from_run: Annotated[
        Path, typer.Option("--from", help="Run folder of a heatmap or distance-map model.")
    ],
    out: Annotated[Path, typer.Option(help="Run folder for the segmentation model.")],
    mask_fraction: Annotated[
        float, typer.Option(help="Fraction of the training cases whose masks are used.")
    ] = 0.01,
    decoder_only: Annotated[
        bool, typer.Option("--decoder-only", help="Freeze the encoder; train the decoder.")
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="Epochs; default the source run's.")] = None,
    which: Annotated[str, typer.Option(help="Source checkpoint: best | last | a path.")] = "best",
    set_: Overrides = None,
    resume: Resume = False,
) -> None:
    """Fine-tune a model trained from points into a segmentation model on a few masks.

    The network starts from the source run's weights and trains with the segmentation
    loss on a seeded random fraction of the training cases' masks (at least one case).

    Example: weaklesion finetune data/phantom --from runs/heatmap --mask-fraction 0.01
    --out runs/transfer
    """
    from weaklesion.training.finetune import finetune as finetune_model

    result = finetune_model(
        from_run,
        data,
        out,
        mask_fraction=mask_fraction,
        part="decoder" if decoder_only else "all",
        epochs=epochs,
        which=which,
        overrides=list(set_ or []),
        resume=resume,
        progress=sys.stderr.isatty(),
        log=None if sys.stderr.isatty() else sys.stderr,
    )
    typer.echo(f"fine-tuned {out}: {result.summary()}")


@refuse_bad_input
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Dataset folder, datalist or images.")],
    run: Annotated[Path, typer.Option(help="Run folder of a trained model.")],
    out: Annotated[Path, typer.Option(help="Folder for the predicted maps.")],
    which: Annotated[str, typer.Option(help="Checkpoint: best | last | a path.")] = "best",
    patch_size: Annotated[
        str | None, typer.Option(help="Sliding-window size z,y,x; whole image if unset.")
    ] = None,
    overlap: Annotated[float, typer.Option(help="Overlap of sliding windows.")] = 0.25,
    mc_samples: Annotated[int, typer.Option(help="MC-dropout samples (0: none).")] = 0,
    device: Device = "auto",
    attention: Annotated[
        str | None,
        typer.Option(
            help="Count runs: write this attention map, cam | gradcam | grad | guided | "
            "intensity, as CASE_<method> (default: the signed CAM as CASE_count)."
        ),
    ] = None,
    attention_reference: Annotated[
        str | None,
        typer.Option(
            help="With --attention: 'empty' subtracts the map of each case's empty image "
            "(every channel at its minimum), removing what every image's map shares."
        ),
    ] = None,
    attention_smooth: Annotated[
        float,
        typer.Option(
            help="With --attention: standard deviation (voxels) of a Gaussian applied to the "
            "map, so that one object gives one peak (0: none)."
        ),
    ] = 0.0,
    split: Annotated[
        str | None,
        typer.Option(help="Predict only this split of the dataset, e.g. test [default: all]."),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Predict maps (heatmap, probabilities or attention) with the input's affine.

    OUT appears complete or not at all; a folder that holds files is refused unless
    --overwrite replaces it.

    Example: weaklesion predict data/phantom --split test --run runs/heatmap
    --out predictions
    """
    from weaklesion.inference import predict_cases

    window = parse_floats(patch_size, "patch-size")
    written = predict_cases(
        run,
        [str(path) for path in inputs] if len(inputs) > 1 else inputs[0],
        out,
        which=which,
        patch_size=None if window is None else tuple(int(v) for v in window),
        overlap=overlap,
        mc_samples=mc_samples,
        device=device,
        progress=sys.stderr.isatty(),
        attention=attention,
        attention_reference=attention_reference,
        attention_smooth=attention_smooth,
        split=split,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {len(written)} file(s) to {out}")
