"""The verbs that score and compare: ``evaluate`` detections against the truth, ``report``
an evaluation as a page, ``tune`` a run's operating point, ``compare`` evaluations."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from weaklesion.cli.common import check_out_suffix, refuse_bad_input
from weaklesion.cli.maps import lesion_settings, predicted_counts
from weaklesion.cli.options import Device
from weaklesion.io import write_json

if TYPE_CHECKING:
    import numpy as np

    from weaklesion.scoring import LesionSettings


@refuse_bad_input
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
    settings = lesion_settings(
        run,
        match_distance=max_distance,
        units="mm" if mm else None,
        threshold=threshold,
    )
    if settings.threshold is None:
        settings = settings.replace("default", threshold=0.5)
    report, pairs, points, spacings = _score_detections(
        detections, truth, split, counts, run, settings
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

        outcomes = evaluation_outcomes(report, pairs, points, spacings)
        page = write_dataset_report(out.with_suffix(".html"), report, outcomes, truth, run)
        typer.echo(f"wrote {out} and {page}")
    if viewers is not None:
        from weaklesion.report.viewers import write_evaluation_viewer_files

        write_evaluation_viewer_files(
            viewers,
            {case: pairs[case] for case in points if case in pairs},
            truth,
            points,
            settings.match_distance,
            settings.threshold,
            spacings if settings.units == "mm" else None,
            progress=sys.stderr.isatty(),
        )
        typer.echo(f"wrote viewer files of {len(points)} case(s) to {viewers}")


def _score_detections(
    detections: Path,
    truth: Path,
    split: str | None,
    counts: Path | None,
    run: Path | None,
    settings: LesionSettings,
) -> tuple[dict, dict[str, tuple], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The report of ``evaluate``: the detections CSV scored against the truth points.

    Returns the report, with the predicted and true count of each case and the settings,
    data and run it was computed with; the (points, scores) of each case of the CSV; and
    the truth points and voxel size (mm) of each case scored: those of ``split``, else
    those of the CSV.
    """
    from weaklesion.compare import count_section
    from weaklesion.data import load_dataset
    from weaklesion.data.truth import lesion_truth
    from weaklesion.detection import read_detections_csv
    from weaklesion.metrics import evaluate_detections

    found = read_detections_csv(detections)
    if split is None:
        cases = list(found)
    else:
        cases = [case.id for case in load_dataset(truth).split_cases(split)]
    points, sizes, spacings = lesion_truth(truth, cases=cases, progress=sys.stderr.isatty())
    pairs = {case: (lesions.points, lesions.scores) for case, lesions in found.items()}
    scored = [case for case in cases if case in found]
    ranked = scored if all("amplitude" in found[case].extras for case in scored) else []
    report = evaluate_detections(
        {case: pairs[case] for case in scored},
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
        predicted = predicted_counts(counts, cases)
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
    return report, pairs, points, spacings


@refuse_bad_input
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


@refuse_bad_input
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
    device: Device = "auto",
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


@refuse_bad_input
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

    if out is not None:
        check_out_suffix(out, (".json", ".md"))
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
