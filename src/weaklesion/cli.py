"""The ``weaklesion`` command.

Each verb wraps one Python function of the package, so everything the command does can
also be done from Python. Bad input ends the command with a one-line ``error:`` message
and exit status 2, never a traceback, and never a half-written output file.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from typer.core import TyperCommand

from weaklesion.io import write_json

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

EXIT_BAD_INPUT = 2


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


class _TrainCommand(TyperCommand):
    """``train``, whose help ends with the named choices of the registries (read lazily,
    so that ``weaklesion --help`` does not import torch)."""

    @property
    def epilog(self) -> str:
        from weaklesion.training.choices import choices_help

        return "Choices (--set KEY=NAME):\n" + choices_help()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass


def _refuse_bad_input(command: Callable) -> Callable:
    """Turn the errors a user can cause into one line on stderr and exit status 2; set
    torch's threads first (:mod:`weaklesion.threads`, imported here and not at the top
    so that ``--help`` does not wait for torch)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            from weaklesion.threads import apply_thread_policy

            apply_thread_policy()
            return command(*args, **kwargs)
        except (ValueError, OSError, KeyError) as error:
            message = str(error) or error.__class__.__name__
            if isinstance(error, KeyError):
                message = message.strip("'\"")
            if isinstance(error, OSError) and error.filename and error.strerror:
                message = f"{error.filename}: {error.strerror}"
            typer.echo(f"error: {message.splitlines()[0]}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt as error:
            # Temporaries are already removed; outputs hold their previous state.
            number = getattr(error, "signal_number", signal.SIGINT)
            name = signal.Signals(number).name
            typer.echo(f"interrupted ({name}); files being written were discarded", err=True)
            raise typer.Exit(128 + number) from None

    return wrapper


def _over_cases(items: list, description: str) -> Iterable:
    """``items``, with a progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=description, console=Console(stderr=True))


def _parse_floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--{name}: got {text!r}; expected numbers separated by commas") from None


def _case_name(path: Path) -> str:
    """Case name of a map file: its name less the suffix and the ``_<kind>`` (or
    ``_<attention method>``) that ``weaklesion predict`` appends (``case_001_heatmap.nii.gz``
    and ``case_001_gradcam.nii.gz`` are case ``case_001``)."""
    from weaklesion.attention import METHODS
    from weaklesion.config import TARGETS

    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy", ".npz", ".tif", ".tiff", ".png"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for kind in (*TARGETS, *METHODS):
        if name.endswith(f"_{kind}"):
            return name[: -len(kind) - 1]
    return name


def _read_map(
    path: Path, channel: int | None, geometry: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a map file: NIfTI, .npy, TIFF, PNG, or an nnU-Net ``.npz`` of probabilities.

    Returns the spatial map and its voxel-to-world affine (None for an nnU-Net file
    whose geometry is unknown, allowed only without ``geometry``). A multi-channel map
    (C, ...) gives channel ``channel`` (default 1, the first foreground class of nnU-Net).
    """
    from weaklesion._validation import check_finite
    from weaklesion.io import read_image, read_nnunet_probabilities

    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.name.endswith(".npz"):
        values, affine = read_nnunet_probabilities(path, require_geometry=geometry)
    else:
        values, affine = read_image(path)
    if affine is None or values.ndim == affine.shape[0]:
        index = 1 if channel is None else channel
        if not 0 <= index < values.shape[0]:
            raise ValueError(
                f"{path}: has {values.shape[0]} channels; --channel {index} does not exist"
            )
        values = values[index]
    elif channel not in (None, 0):
        raise ValueError(f"{path}: has one channel; --channel {channel} does not exist")
    check_finite(values, str(path))
    # Float maps keep their precision (float32 maps are fitted as validation fits them).
    values = np.asarray(values)
    return (values if values.dtype.kind == "f" else values.astype(np.float64)), affine


def _predicted_counts(path: Path, cases: list[str]) -> dict[str, float]:
    """The predicted count of each case from the ``predictions.json`` of ``predict``."""
    import json

    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("cases")
    except (json.JSONDecodeError, AttributeError):
        entries = None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected the predictions.json of `weaklesion predict`")
    counts = {}
    for case in cases:
        entry = entries.get(case)
        count = entry.get("count") if isinstance(entry, dict) else None
        if not isinstance(count, int | float) or isinstance(count, bool):
            raise ValueError(
                f"{path}: case {case!r} has no predicted count; expected one for every map "
                "(a presence classifier predicts none)"
            )
        counts[case] = float(count)
    return counts


def _lesion_settings(run: Path | None, **options):
    """The lesion settings of ``run`` (the defaults without one), with the options given
    (those not None) over them, each recorded as coming from the command line."""
    from weaklesion.scoring import LesionSettings
    from weaklesion.tuning import run_settings

    settings = LesionSettings() if run is None else run_settings(run)
    given = {name: value for name, value in options.items() if value is not None}
    return settings.replace("option", **given) if given else settings


@app.command()
@_refuse_bad_input
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


@app.command()
@_refuse_bad_input
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


@synth_app.command("phantom")
@_refuse_bad_input
def synth_phantom(
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    cases: Annotated[int, typer.Option(help="Number of cases.")] = 48,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    shape: Annotated[str, typer.Option(help="Volume shape z,y,x in voxels.")] = "32,64,64",
    spacing: Annotated[str, typer.Option(help="Voxel size z,y,x in mm.")] = "1,1,1",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it holds files (as a whole).")
    ] = False,
) -> None:
    """Write a deterministic synthetic 3D lesion dataset (images, masks, points, counts).

    OUT appears complete or not at all; a folder that holds files is refused unless
    --overwrite replaces it.

    Example: weaklesion synth phantom --out data/phantom --cases 48 --seed 0
    """
    from weaklesion.data import write_phantom_dataset

    size = tuple(int(value) for value in _parse_floats(shape, "shape"))
    root = write_phantom_dataset(
        out,
        n_cases=cases,
        seed=seed,
        shape=size,
        spacing=_parse_floats(spacing, "spacing"),
        progress=sys.stderr.isatty(),
        overwrite=overwrite,
    )
    typer.echo(f"wrote {cases} cases to {root}")


@app.command(cls=_TrainCommand)
@_refuse_bad_input
def train(
    data: Annotated[Path, typer.Argument(help="Dataset folder or JSON datalist.")],
    out: Annotated[Path, typer.Option(help="Run folder for checkpoints and logs.")],
    labels: Annotated[
        str | None, typer.Option(help="points | counts | masks | masks+counts.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a configuration key: KEY=VALUE (repeatable)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue a stopped run from last.pt.")] = False,
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


@app.command()
@_refuse_bad_input
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
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a configuration key: KEY=VALUE (repeatable)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue a stopped run from last.pt.")] = False,
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


@app.command()
@_refuse_bad_input
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
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    attention: Annotated[
        str | None,
        typer.Option(
            help="Count runs: write this attention map, cam | gradcam | grad | guided | "
            "intensity, as CASE_<method> (default: the signed CAM as CASE_count)."
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Predict only this split of the dataset, e.g. test [default: all]."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it holds files (as a whole).")
    ] = False,
) -> None:
    """Predict maps (heatmap, probabilities or attention) with the input's affine.

    OUT appears complete or not at all; a folder that holds files is refused unless
    --overwrite replaces it.

    Example: weaklesion predict data/phantom --split test --run runs/heatmap
    --out predictions
    """
    from weaklesion.inference import predict_cases

    window = _parse_floats(patch_size, "patch-size")
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
        split=split,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {len(written)} file(s) to {out}")


@app.command()
@_refuse_bad_input
def detect(
    maps: Annotated[list[Path], typer.Argument(help="Map files (.nii.gz, .npy, .npz, ...).")],
    out: Annotated[Path, typer.Option(help="Detections file (.csv or .json).")],
    method: Annotated[
        str | None,
        typer.Option(help="gaussians | components | peaks [default: the run's, else gaussians]."),
    ] = None,
    sigma: Annotated[
        float | None,
        typer.Option(
            help="Width of the fitted Gaussians (gaussians) [default: the run's fit sigma, else 1]."
        ),
    ] = None,
    spacing_mm: Annotated[
        bool,
        typer.Option(
            "--mm", help="sigma in mm, using the map's voxel size [default: the run's unit]."
        ),
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Keep detections scoring at least this [default: the run's, else all; "
            "components 0.5]."
        ),
    ] = None,
    location: Annotated[
        str | None,
        typer.Option(
            help="Where a component is detected: max (its first maximum voxel) | "
            "center_of_mass [default: the run's: center_of_mass for segmentation, "
            "else max]."
        ),
    ] = None,
    max_lesions: Annotated[
        int | None,
        typer.Option(help="Most lesions fitted per map (gaussians) [default: 1000]."),
    ] = None,
    stop: Annotated[
        float | None, typer.Option(help="Stop level of the Gaussian fitting [default: 0.01].")
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Non-maximum suppression size (peaks) [default: 6].")
    ] = None,
    top_n: Annotated[int | None, typer.Option(help="Keep the n best peaks.")] = None,
    top_n_from: Annotated[
        Path | None,
        typer.Option(
            help="predictions.json of `weaklesion predict`: keep the round(count) best "
            "peaks of each case."
        ),
    ] = None,
    channel: Annotated[int | None, typer.Option(help="Channel of a multi-channel map.")] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            help="Run folder: its detector, fit sigma, component location, threshold (or "
            "count offset with --top-n-from) are the defaults."
        ),
    ] = None,
    viewers: Annotated[
        Path | None,
        typer.Option(
            help="Folder for viewer files of each case: CASE.mrk.json (3D Slicer) and "
            "CASE_points.csv (napari)."
        ),
    ] = None,
) -> None:
    """Detect lesions in predicted maps and write them with voxel and world coordinates.

    With --run, every setting not given comes from the run: its detector, fit sigma and
    component location from its configuration, and the threshold `weaklesion tune`
    chose, else the one training chose on its validation cases. The settings used and
    where each came from are printed.

    Example: weaklesion detect predictions/*_heatmap.nii.gz --run runs/heatmap
    --out lesions.csv

    Example: weaklesion detect maps/*_gradcam.nii.gz --method peaks --top-n-from
    maps/predictions.json --out lesions.csv
    """
    from weaklesion.detection import Detections, peak_detections, write_detections_csv
    from weaklesion.io import affine_spacing
    from weaklesion.scoring import find_lesions

    if out.suffix not in (".csv", ".json"):
        raise ValueError(f"--out: {out} has suffix {out.suffix!r}; expected .csv or .json")
    settings = _lesion_settings(
        run,
        method=method,
        sigma=sigma,
        units="mm" if spacing_mm else None,
        threshold=threshold,
        location=location,
        max_lesions=max_lesions,
        stop=stop,
        nms_size=size,
    )
    if top_n_from is not None and (settings.method != "peaks" or top_n is not None):
        raise ValueError("--top-n-from: needs --method peaks and no --top-n")
    typer.echo(settings.describe())
    arrays = {_case_name(path): _read_map(path, channel) for path in _over_cases(maps, "Reading")}
    counts = None if top_n_from is None else _predicted_counts(top_n_from, list(arrays))
    if counts is not None and settings.count_offset is not None:
        # detect_by_count keeps floor(count + 0.5) peaks; the tuned offset b keeps
        # floor(count + b).
        counts = {case: value + settings.count_offset - 0.5 for case, value in counts.items()}
    found: dict[str, Detections] = {}
    for case, (values, affine) in _over_cases(list(arrays.items()), "Detecting"):
        if counts is not None:
            from weaklesion.attention import detect_by_count

            found[case] = detect_by_count(values, counts[case], size=settings.nms_size)
        elif settings.method == "peaks":
            found[case] = peak_detections(
                values, size=settings.nms_size, threshold=settings.threshold, top_n=top_n
            )
        else:
            found[case] = find_lesions(values, settings, affine_spacing(affine))
    affines = {case: affine for case, (_, affine) in arrays.items()}
    if out.suffix == ".csv":
        write_detections_csv(out, found, affine=affines)
    else:
        write_json(
            out,
            {
                case: {
                    "points": lesions.points.tolist(),
                    "points_mm": lesions.to_world(affines[case]).tolist(),
                    "scores": lesions.scores.tolist(),
                    "extras": {k: v.tolist() for k, v in lesions.extras.items()},
                }
                for case, lesions in found.items()
            },
        )
    total = sum(len(lesions) for lesions in found.values())
    typer.echo(f"wrote {total} detection(s) in {len(found)} case(s) to {out}")
    if viewers is not None:
        from weaklesion.report.viewers import write_detection_viewer_files

        pairs = {case: (lesions.points, lesions.scores) for case, lesions in found.items()}
        write_detection_viewer_files(viewers, pairs, affines)
        typer.echo(f"wrote viewer files of {len(found)} case(s) to {viewers}")


@app.command()
@_refuse_bad_input
def count(
    maps: Annotated[list[Path], typer.Argument(help="Probability maps (.nii.gz, .npy, .npz).")],
    out: Annotated[Path | None, typer.Option(help="JSON file for the distributions.")] = None,
    threshold: Annotated[float, typer.Option(help="Binarisation threshold.")] = 0.1,
    min_size: Annotated[int, typer.Option(help="Smallest region in voxels.")] = 1,
    credible: Annotated[float, typer.Option(help="Mass of the credible interval.")] = 0.95,
    channel: Annotated[int | None, typer.Option(help="Channel of a multi-channel map.")] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            help="Run folder of the maps: a heatmap run's maps are counted from their "
            "fitted lesions, with the run's fit sigma."
        ),
    ] = None,
) -> None:
    """Count lesions in any probability map: exact Poisson-binomial distribution.

    Reads NIfTI, .npy, and the .npz probabilities nnU-Net writes with
    --save_probabilities (channel 1 by default). A probability map's candidate regions
    (above --threshold) each exist with their maximum probability; a heatmap run's
    fitted lesions (--run) each with their clipped amplitude.

    Example: weaklesion count nnunet_out/case_001.npz --out counts.json
    """
    from weaklesion.counting import count_distribution
    from weaklesion.io import affine_spacing
    from weaklesion.scoring import find_lesions, lesion_count_distribution

    settings = None if run is None else _lesion_settings(run)
    fitted = settings is not None and settings.method == "gaussians"
    results = {}
    for path in _over_cases(maps, "Counting"):
        # Counting candidate regions needs no geometry; fitting lesions may (sigma in mm).
        values, affine = _read_map(path, channel, geometry=fitted)
        if fitted:
            lesions = find_lesions(values, settings, affine_spacing(affine), threshold=0.0)
            distribution = lesion_count_distribution(lesions, credible)
        else:
            distribution = count_distribution(
                values, threshold=threshold, min_size=min_size, credible=credible
            )
        results[_case_name(path)] = distribution.to_dict()
    for case, result in results.items():
        low, high = result["interval"]
        typer.echo(
            f"{case}: mean {result['mean']:.2f}, mode {result['mode']}, "
            f"{credible:.0%} interval [{low}, {high}]"
        )
    if out is not None:
        if fitted:
            used = {"count": "fitted lesions", **settings.to_dict()}
        else:
            used = {"count": "candidate regions", "threshold": threshold, "min_size": min_size}
        write_json(out, {"settings": used, **results})


@app.command()
@_refuse_bad_input
def evaluate(
    detections: Annotated[Path, typer.Argument(help="Detections CSV from `detect`.")],
    truth: Annotated[Path, typer.Option(help="Dataset folder or datalist with points.")],
    out: Annotated[Path | None, typer.Option(help="JSON file for the report.")] = None,
    max_distance: Annotated[
        float | None,
        typer.Option(help="Largest match distance [default: the run's, else 3]."),
    ] = None,
    mm: Annotated[
        bool,
        typer.Option("--mm", help="max-distance in mm (voxel size) [default: the run's unit]."),
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option(help="Score threshold for F1 [default: the run's with --run, else 0.5]."),
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(help="Run folder whose threshold and matching distance are the defaults."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Score every case of this split of --truth (a case without detections "
            "counts as all missed); default: the cases in the detections file."
        ),
    ] = None,
    counts: Annotated[
        Path | None,
        typer.Option(help="predictions.json of `weaklesion predict`: score its counts."),
    ] = None,
    viewers: Annotated[
        Path | None,
        typer.Option(
            help="Folder for viewer files of each case's hits, false positives and misses: "
            "CASE_outcomes.mrk.json (3D Slicer), CASE_outcomes.csv (napari) and "
            "CASE_outcomes.nii.gz (label map: 1 hit, 2 false positive, 3 miss)."
        ),
    ] = None,
) -> None:
    """Score detections against the truth points: F1, size strata, FROC, calibration.

    The report holds per-case results for `weaklesion compare`, the predicted and true
    count of each case (the detections kept, or --counts), and the settings, run and data
    it was computed with; beside it goes the same as an HTML page (see `weaklesion
    report`).

    Example: weaklesion evaluate lesions.csv --truth data/phantom --split test
    --run runs/heatmap --out metrics.json
    """
    from weaklesion.compare import count_section
    from weaklesion.data import load_dataset
    from weaklesion.data.truth import lesion_truth
    from weaklesion.detection import read_detections_csv
    from weaklesion.metrics import evaluate_detections

    settings = _lesion_settings(
        run,
        match_distance=max_distance,
        units="mm" if mm else None,
        threshold=threshold,
    )
    if settings.threshold is None:
        settings = settings.replace("default", threshold=0.5)
    found = read_detections_csv(detections)
    if split is None:
        cases = list(found)
    else:
        cases = [case.id for case in load_dataset(truth).split_cases(split)]
    points, sizes, spacings = lesion_truth(truth, cases=cases, progress=sys.stderr.isatty())
    scored = [case for case in cases if case in found]
    ranked = scored if all("amplitude" in found[case].extras for case in scored) else []
    report = evaluate_detections(
        {case: (found[case].points, found[case].scores) for case in scored},
        points,
        settings.match_distance,
        threshold=settings.threshold,
        spacing=spacings if settings.units == "mm" else None,
        truth_sizes=sizes,
        # Fitted lesions rank by their unclipped amplitude: their scores tie at 1.
        ranking={case: found[case].extras["amplitude"] for case in ranked} or None,
    )
    per_case = report["cases"]
    if counts is None:
        predicted = {case: per_case[case]["tp"] + per_case[case]["fp"] for case in cases}
    else:
        predicted = _predicted_counts(counts, cases)
    report["counts"] = count_section(predicted, {case: len(points[case]) for case in cases})
    report["settings"].update(
        {
            "detections": str(detections),
            "truth": str(truth),
            "split": split,
            "run": None if run is None else str(run),
            "ranking": "amplitude" if ranked else "score",
            "sources": {
                name: settings.sources.get(name, "default")
                for name in ("match_distance", "units", "threshold")
            },
            "counts": "detections kept" if counts is None else str(counts),
        }
    )
    scores = report["detection"]
    typer.echo(
        f"{scores['n_cases']} case(s): F1 {scores['f1']:.3f}, precision "
        f"{scores['precision']:.3f}, recall {scores['recall']:.3f}, "
        f"FAUC {report['fauc']['estimate']:.3f}"
    )
    if out is not None:
        write_json(out, report)
        from weaklesion.report.html import evaluation_outcomes, write_dataset_report

        pairs = {case: (found[case].points, found[case].scores) for case in found}
        outcomes = evaluation_outcomes(report, pairs, points, spacings)
        page = write_dataset_report(out.with_suffix(".html"), report, outcomes, truth, run)
        typer.echo(f"wrote {out} and {page}")
    if viewers is not None:
        from weaklesion.report.viewers import write_evaluation_viewer_files

        write_evaluation_viewer_files(
            viewers,
            {case: (found[case].points, found[case].scores) for case in cases if case in found},
            truth,
            points,
            settings.match_distance,
            settings.threshold,
            spacings if settings.units == "mm" else None,
            progress=sys.stderr.isatty(),
        )
        typer.echo(f"wrote viewer files of {len(cases)} case(s) to {viewers}")


@app.command()
@_refuse_bad_input
def report(
    result: Annotated[Path, typer.Argument(help="Result file of `evaluate --out`.")],
    out: Annotated[Path | None, typer.Option(help="HTML file [default: RESULT as .html].")] = None,
    run: Annotated[
        Path | None, typer.Option(help="Run folder [default: the one the result names].")
    ] = None,
    detections: Annotated[
        Path | None, typer.Option(help="Detections CSV [default: the one the result names].")
    ] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Dataset [default: the one the result names].")
    ] = None,
    cases: Annotated[int, typer.Option(help="Cases in the gallery, worst first.")] = 16,
) -> None:
    """Write one self-contained HTML page of an evaluation, to open offline.

    The page has the settings, the metrics with 95 % intervals, the FROC and calibration
    plots, the counts, the training curves of the run, and the slices through every
    detection and miss of the worst cases, hits, false positives and misses marked.
    `weaklesion evaluate --out X.json` writes the same page as X.html.

    Example: weaklesion report metrics.json --out report.html
    """
    from weaklesion.report.html import report_from_evaluation

    page = report_from_evaluation(
        result,
        out or result.with_suffix(".html"),
        run=run,
        detections=detections,
        truth=truth,
        max_cases=cases,
    )
    typer.echo(f"wrote {page}")


@app.command()
@_refuse_bad_input
def tune(
    run: Annotated[Path, typer.Option(help="Run folder of a trained model.")],
    data: Annotated[Path, typer.Option(help="Dataset folder or datalist to tune on.")],
    metric: Annotated[
        str,
        typer.Option(help="f1 | recall@fp<=X | precision@recall>=X | count_accuracy | count_mae."),
    ] = "f1",
    split: Annotated[str, typer.Option(help="Split of --data to tune on.")] = "validation",
    max_distance: Annotated[
        float | None, typer.Option(help="Largest match distance [default: the run's].")
    ] = None,
    max_lesions: Annotated[
        int | None,
        typer.Option(
            help="Most lesions Gaussian fitting extracts per case (heatmap) [default: 1000]."
        ),
    ] = None,
    location: Annotated[
        str | None,
        typer.Option(
            help="Where a component is detected: max | center_of_mass [default: the run's: "
            "center_of_mass for segmentation, else max]."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Choose the detector's operating point on validation cases and store it in the run.

    Sweeps the run's detector setting (existence threshold, component threshold, or
    count offset), keeps the best by --metric (ties: the most conservative), and writes
    RUN/operating_point.json and RUN/report/operating_point.png. load_run, `detect --run`
    and `evaluate --run` then use it by default, with the detector settings it was tuned
    with (--max-lesions, --location, --max-distance).

    Example: weaklesion tune --run runs/heatmap --data data/phantom --metric f1
    """
    from weaklesion.training.distributed import device_for
    from weaklesion.tuning import FIGURE_FILE, OPERATING_POINT_FILE, tune_operating_point

    record = tune_operating_point(
        run,
        data,
        metric,
        split,
        max_distance=max_distance,
        max_lesions=max_lesions,
        location=location,
        device=device_for(device),
        progress=sys.stderr.isatty(),
    )

    def number(value) -> str:
        return "—" if value is None else f"{value:.3f}"

    typer.echo(
        f"{record['parameter'].replace('_', ' ')} {record['value']:g}: {metric} "
        f"{number(record['metric_value'])} on {len(record['data']['cases'])} {split} case(s) "
        f"(default {record['default']:g}: {number(record['default_metric_value'])})"
    )
    typer.echo(f"wrote {run / OPERATING_POINT_FILE} and {run / FIGURE_FILE}")


@app.command()
@_refuse_bad_input
def compare(
    results: Annotated[
        list[Path], typer.Argument(help="Result files of `evaluate --out`, two or more.")
    ],
    out: Annotated[Path | None, typer.Option(help="Write the table (.json or .md).")] = None,
    all_pairs: Annotated[
        bool, typer.Option("--all-pairs", help="Compare every pair, not each with the first.")
    ] = False,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the resampling.")] = 0,
    max_fp: Annotated[
        float | None, typer.Option(help="FAUC limit, FPs per image [default: the first's].")
    ] = None,
) -> None:
    """Paired comparison of methods evaluated on the same test cases.

    Each result is compared with the first (B − A): F1, FAUC and count accuracy with a
    95 % paired-bootstrap interval and p-value (cases resampled together for both), and
    Wilcoxon signed-rank p-values for false positives, false negatives and sensitivity
    per image. Results computed on different cases or truth are refused.

    Example: weaklesion compare baseline.json heatmap.json --out comparison.md
    """
    from weaklesion.compare import compare_results, comparison_table, read_result
    from weaklesion.io import atomic_write

    if out is not None and out.suffix not in (".json", ".md"):
        raise ValueError(f"--out: {out} has suffix {out.suffix!r}; expected .json or .md")
    reports = {str(path): read_result(path) for path in results}
    if len(reports) < 2:
        raise ValueError(f"RESULTS: got {len(reports)} distinct file(s); expected two or more")
    pairs = "all" if all_pairs else "first"
    rows = compare_results(reports, pairs=pairs, n_boot=n_boot, seed=seed, max_fp=max_fp)
    table = comparison_table(rows)
    typer.echo(table)
    if out is None:
        return
    if out.suffix == ".json":
        settings = {"n_boot": n_boot, "seed": seed, "pairs": pairs, "max_fp": max_fp}
        write_json(out, {"results": list(reports), "settings": settings, "rows": rows})
    else:
        with atomic_write(out, "w", encoding="utf-8") as handle:
            handle.write(table + "\n")


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


@app.command()
@_refuse_bad_input
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
        typer.Option(help="Methods to run, comma-separated or repeated [default: all]."),
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
        targets = _parse_floats(digits, "digits")
        if targets is not None and any(value != int(value) for value in targets):
            raise ValueError(f"--digits: got {digits!r}; expected whole digits 0 to 9")
        options["digits"] = None if targets is None else [int(value) for value in targets]
        if count_gradient is not None:
            options["count_gradient"] = count_gradient
    elif count_gradient is not None:
        raise ValueError(f"--count-gradient: applies to bench mnist only; got bench {experiment}")
    _bench_runner(experiment)(out, **options)
    typer.echo(f"bench {experiment}: results in {out}")


def main() -> None:
    """Entry point of the console script."""
    from weaklesion.writing import raise_on_termination

    raise_on_termination()
    app()


if __name__ == "__main__":
    main()
