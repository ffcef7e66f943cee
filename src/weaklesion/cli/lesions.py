"""The verbs that find lesions in predicted maps: ``detect`` them, ``count`` them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from weaklesion.cli.common import check_out_suffix, over_cases, refuse_bad_input
from weaklesion.cli.maps import case_name, lesion_settings, predicted_counts, read_map
from weaklesion.cli.options import Channel
from weaklesion.io import write_json

if TYPE_CHECKING:
    import numpy as np

    from weaklesion.detection import Detections
    from weaklesion.scoring import LesionSettings


@refuse_bad_input
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
    channel: Channel = None,
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
    check_out_suffix(out, (".csv", ".json"))
    settings = lesion_settings(
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
    found, affines = _detect_in_maps(maps, channel, settings, top_n, top_n_from)
    _write_detections(out, found, affines, viewers)


def _detect_in_maps(
    maps: list[Path],
    channel: int | None,
    settings: LesionSettings,
    top_n: int | None,
    top_n_from: Path | None,
) -> tuple[dict[str, Detections], dict[str, np.ndarray | None]]:
    """The detections of ``detect`` in each map, by case, and the affine of each case.

    Prints the settings first. With ``top_n_from`` (the predictions.json of
    ``weaklesion predict``) each case keeps its round(count) best peaks, shifted by the
    run's tuned count offset.
    """
    from weaklesion.attention import detect_by_count
    from weaklesion.detection import peak_detections
    from weaklesion.io import affine_spacing
    from weaklesion.scoring import find_lesions

    if top_n_from is not None and (settings.method != "peaks" or top_n is not None):
        raise ValueError("--top-n-from: needs --method peaks and no --top-n")
    typer.echo(settings.describe())
    arrays = {case_name(path): read_map(path, channel) for path in over_cases(maps, "Reading")}
    counts = None if top_n_from is None else predicted_counts(top_n_from, list(arrays))
    if counts is not None and settings.count_offset is not None:
        # detect_by_count keeps floor(count + 0.5) peaks; the tuned offset b keeps
        # floor(count + b).
        counts = {case: value + settings.count_offset - 0.5 for case, value in counts.items()}
    found: dict[str, Detections] = {}
    for case, (values, affine) in over_cases(list(arrays.items()), "Detecting"):
        if counts is not None:
            found[case] = detect_by_count(values, counts[case], size=settings.nms_size)
        elif settings.method == "peaks":
            found[case] = peak_detections(
                values, size=settings.nms_size, threshold=settings.threshold, top_n=top_n
            )
        else:
            found[case] = find_lesions(values, settings, affine_spacing(affine))
    return found, {case: affine for case, (_, affine) in arrays.items()}


def _write_detections(
    out: Path,
    found: dict[str, Detections],
    affines: dict[str, np.ndarray | None],
    viewers: Path | None,
) -> None:
    """Write the detections of each case to ``out`` (.csv or .json) with voxel and world
    coordinates, and their viewer files to the folder ``viewers`` when given."""
    from weaklesion.detection import write_detections_csv

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


@refuse_bad_input
def count(
    maps: Annotated[list[Path], typer.Argument(help="Probability maps (.nii.gz, .npy, .npz).")],
    out: Annotated[Path | None, typer.Option(help="JSON file for the distributions.")] = None,
    threshold: Annotated[float, typer.Option(help="Binarisation threshold.")] = 0.1,
    min_size: Annotated[int, typer.Option(help="Smallest region in voxels.")] = 1,
    credible: Annotated[float, typer.Option(help="Mass of the credible interval.")] = 0.95,
    channel: Channel = None,
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

    settings = None if run is None else lesion_settings(run)
    fitted = settings is not None and settings.method == "gaussians"
    results = {}
    for path in over_cases(maps, "Counting"):
        # Counting candidate regions needs no geometry; fitting lesions may (sigma in mm).
        values, affine = read_map(path, channel, geometry=fitted)
        if fitted:
            lesions = find_lesions(values, settings, affine_spacing(affine), threshold=0.0)
            distribution = lesion_count_distribution(lesions, credible)
        else:
            distribution = count_distribution(
                values, threshold=threshold, min_size=min_size, credible=credible
            )
        results[case_name(path)] = distribution.to_dict()
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
