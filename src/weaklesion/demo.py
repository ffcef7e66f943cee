"""Demonstrations on built-in synthetic data.

:func:`run_post_processing_demo` needs no training: it plants lesions in synthetic maps
of the kind a network predicts, runs every detector and the counting on them, and scores
the results against the planted truth. :func:`run_demo` goes end to end (see there).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from weaklesion.counting import count_distribution
from weaklesion.data import load_dataset, write_phantom_dataset, zscore
from weaklesion.data.truth import lesion_truth
from weaklesion.detection import (
    Detections,
    component_detections,
    fit_gaussians,
    peak_detections,
    write_detections_csv,
)
from weaklesion.inference import predict_images
from weaklesion.io import write_json
from weaklesion.metrics import detection_scores, evaluate_detections, match_points
from weaklesion.report import plot_froc, plot_reliability, plot_slices
from weaklesion.report.html import evaluation_outcomes, write_report
from weaklesion.scoring import find_lesions, lesion_count_distribution, settings_for_config
from weaklesion.targets import gaussian_heatmap
from weaklesion.training import load_config, load_run, train


@dataclass(frozen=True)
class PlantedMaps:
    """Synthetic maps of one case with the lesions planted in them.

    Attributes
    ----------
    points : (K, 3) float array
        Planted lesion centres, voxels.
    existence : (K,) float array
        Planted existence probability of each lesion (its heatmap mass).
    heatmap : (Z, Y, X) float array
        Mass-1 Gaussians of the lesions scaled by their existence, plus faint decoys
        (mass < 0.2) and noise: what a heatmap network predicts.
    probability : (Z, Y, X) float array
        Voxel probabilities of the lesions (blobs whose peak is the existence
        probability), plus faint decoys and noise: what a segmentation network predicts.
    """

    points: np.ndarray
    existence: np.ndarray
    heatmap: np.ndarray
    probability: np.ndarray


def plant_lesions(
    seed: int, shape: tuple[int, int, int] = (32, 96, 96), sigma: float = 1.5
) -> PlantedMaps:
    """Plant 2–14 lesions (some touching pairs) and 0–4 decoys in synthetic maps.

    Parameters
    ----------
    seed : int
        Random seed; the same seed gives the same maps.
    shape : tuple of 3 ints
        Map shape in voxels.
    sigma : float
        Width of the heatmap Gaussians in voxels.

    Returns
    -------
    PlantedMaps
    """
    rng = np.random.default_rng(seed)
    n_lesions, n_decoys = int(rng.integers(2, 15)), int(rng.integers(0, 5))
    margin = np.array([2.0, 2.0, 2.0])
    centres: list[np.ndarray] = []
    while len(centres) < n_lesions + n_decoys:
        if centres and len(centres) < n_lesions and rng.random() < 0.25:
            # A touching pair: two sigma from the previous lesion.
            direction = rng.normal(size=3)
            candidate = centres[-1] + 2 * sigma * direction / np.linalg.norm(direction)
        else:
            candidate = rng.uniform(margin, np.asarray(shape) - 1 - margin)
        inside = np.all((candidate >= 0) & (candidate <= np.asarray(shape) - 1))
        if inside and all(np.linalg.norm(candidate - c) >= 2 * sigma - 1e-9 for c in centres):
            centres.append(candidate)
    centres_array = np.asarray(centres)
    mass = np.concatenate([rng.uniform(0.6, 1.0, n_lesions), rng.uniform(0.05, 0.2, n_decoys)])
    heatmap = np.zeros(shape)
    probability = np.zeros(shape)
    unit_peak = (2 * np.pi * sigma**2) ** -1.5
    for centre, weight in zip(centres_array, mass, strict=True):
        blob = gaussian_heatmap(centre[None], shape, sigma, dtype=np.float64)
        heatmap += weight * blob
        probability = np.maximum(probability, weight * blob / unit_peak)
    heatmap += rng.normal(0.0, 2e-4, shape)
    probability = np.clip(probability + rng.normal(0.0, 0.01, shape), 0.0, 1.0)
    return PlantedMaps(centres_array[:n_lesions], mass[:n_lesions], heatmap, probability)


def count_probability_maps(
    seed: int = 0, n_cases: int = 40, shape: tuple[int, int, int] = (32, 64, 64)
) -> dict[str, dict[str, float]]:
    """Count lesions in probability maps by thresholded components and by the exact pmf.

    Each map holds 1–12 separated lesion blobs whose peak probability p is drawn
    uniformly in [0.2, 1]; each lesion truly exists with probability p, so a calibrated
    counter's interval covers the true count about as often as it claims.

    Parameters
    ----------
    seed : int
        Random seed.
    n_cases : int
        Number of maps.
    shape : tuple of 3 ints
        Map shape in voxels.

    Returns
    -------
    dict
        For "components at 0.5" and "Poisson-binomial": count accuracy, mean absolute
        error, and (Poisson-binomial only) the coverage of the 95 % credible interval.
    """
    rng = np.random.default_rng(seed)
    sigma = 1.5
    unit_peak = (2 * np.pi * sigma**2) ** -1.5
    truth, components, modes, covered = [], [], [], []
    for _ in range(n_cases):
        n_blobs = int(rng.integers(1, 13))
        centres: list[np.ndarray] = []
        while len(centres) < n_blobs:
            candidate = rng.uniform(3, np.asarray(shape) - 4)
            if all(np.linalg.norm(candidate - c) >= 8 for c in centres):
                centres.append(candidate)
        peaks = rng.uniform(0.2, 1.0, n_blobs)
        probability = np.zeros(shape)
        for centre, peak in zip(centres, peaks, strict=True):
            blob = gaussian_heatmap(centre[None], shape, sigma, dtype=np.float64) / unit_peak
            probability = np.maximum(probability, peak * blob)
        count = int((rng.random(n_blobs) < peaks).sum())
        distribution = count_distribution(probability, threshold=0.1)
        truth.append(count)
        components.append(len(component_detections(probability, 0.5)))
        modes.append(distribution.mode)
        covered.append(distribution.interval[0] <= count <= distribution.interval[1])
    truth_array = np.asarray(truth)
    return {
        "components at 0.5": {
            "accuracy": float(np.mean(np.asarray(components) == truth_array)),
            "mae": float(np.mean(np.abs(np.asarray(components) - truth_array))),
        },
        "Poisson-binomial": {
            "accuracy": float(np.mean(np.asarray(modes) == truth_array)),
            "mae": float(np.mean(np.abs(np.asarray(modes) - truth_array))),
            "coverage": float(np.mean(covered)),
        },
    }


def run_post_processing_demo(
    seed: int = 0, n_cases: int = 8, sigma: float = 1.5, console: Console | None = None
) -> dict[str, dict[str, float]]:
    """Detect and count planted lesions with every detector and print the scores.

    Parameters
    ----------
    seed : int
        Seed of the first case; case ``i`` uses ``seed + i``.
    n_cases : int
        Number of synthetic cases.
    sigma : float
        Heatmap width in voxels.
    console : rich Console, optional
        Where to print; standard output by default.

    Returns
    -------
    dict
        Per detector: precision, recall, F1 and mean centre error (voxels); and for the
        counting, the fraction of cases whose count is right.
    """
    console = console or Console()
    cases = [plant_lesions(seed + i, sigma=sigma) for i in range(n_cases)]
    unit_peak = (2 * np.pi * sigma**2) ** -1.5
    detectors = {
        "Gaussian fitting (heatmap)": lambda c: fit_gaussians(c.heatmap, sigma).above(0.4),
        "peaks, size 6 (heatmap)": lambda c: peak_detections(
            c.heatmap, size=6, threshold=0.4 * unit_peak
        ),
        "components at 0.4 (heatmap)": lambda c: component_detections(
            c.heatmap / unit_peak, 0.4, location="center_of_mass"
        ),
        "components at 0.5 (probability)": lambda c: component_detections(c.probability, 0.5),
    }
    results: dict[str, dict[str, float]] = {}
    table = Table(title=f"Planted lesions in {n_cases} synthetic 32×96×96 maps (σ = {sigma})")
    for column in ("detector", "planted", "found", "TP", "FP", "FN", "F1", "centre error"):
        table.add_column(column, justify="left" if column == "detector" else "right")
    for name, detect in detectors.items():
        found: list[Detections] = [detect(case) for case in cases]
        matches = [match_points(f.points, c.points, 3.0) for f, c in zip(found, cases, strict=True)]
        scores = detection_scores(matches)
        errors = np.concatenate([m.distances for m in matches])
        centre_error = float(errors.mean()) if errors.size else float("nan")
        results[name] = {
            "precision": scores.precision,
            "recall": scores.recall,
            "f1": scores.f1,
            "centre_error": centre_error,
        }
        table.add_row(
            name,
            str(sum(len(c.points) for c in cases)),
            str(sum(len(f) for f in found)),
            str(scores.tp),
            str(scores.fp),
            str(scores.fn),
            f"{scores.f1:.3f}",
            f"{centre_error:.3f} vox",
        )
    console.print(table)

    counting = count_probability_maps(seed, n_cases=5 * n_cases)
    counts = Table(
        title=(
            f"Lesion counts in {5 * n_cases} probability maps whose lesions exist with their "
            "peak probability"
        )
    )
    for column in ("counter", "accuracy", "mean abs. error", "95 % interval coverage"):
        counts.add_column(column, justify="left" if column == "counter" else "right")
    for name, row in counting.items():
        coverage = row.get("coverage")
        counts.add_row(
            name,
            f"{row['accuracy']:.3f}",
            f"{row['mae']:.3f}",
            "—" if coverage is None else f"{coverage:.3f}",
        )
    console.print(counts)
    results.update(counting)
    return results


DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.toml"
"""Training recipe of the end-to-end demo (heatmap regression from points)."""

DEMO_SPLITS = (36, 12, 24)
"""Phantom cases of the end-to-end demo: training, validation and held-out test cases.

The 12 validation cases (about 70 lesions) choose the best epoch and the existence
threshold; the 24 test cases (about 160 lesions) make the reported F1 vary by a few
points between phantoms, where 6 cases let it vary by ten."""


def run_demo(
    out: str | os.PathLike = "demo-output",
    seed: int = 0,
    splits: Sequence[int] = DEMO_SPLITS,
    console: Console | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Synthesise, train from points, predict, fit Gaussians, count, evaluate, report.

    The phantom (see :func:`weaklesion.data.write_phantom_dataset`) is split into
    training, validation and held-out test cases. A heatmap U-Net is trained on the
    training cases' points only (recipe: ``configs/demo.toml``); the existence threshold
    on the fitted amplitudes is tuned on the validation cases during training; the test
    cases are scored against their planted lesions.

    Parameters
    ----------
    out : path
        Report folder: ``report.html`` (the page of :mod:`weaklesion.report.html`),
        ``metrics.json``, ``detections.csv``, ``slices_*.png``, ``froc.png``,
        ``calibration.png``; also the phantom (``data/``) and the
        training run (``run/``), both replaced if present.
    seed : int
        Seed of the phantom and the training.
    splits : sequence of 3 ints
        Training, validation and test cases of the phantom, in this order.
    console : rich Console, optional
        Where to print.
    overrides : sequence of "key=value"
        Changes to the demo's training configuration (e.g. ``epochs=2`` for a smoke run).

    Returns
    -------
    dict
        The test-set report written to ``metrics.json``: detection scores at the tuned
        threshold, recall per size stratum, FROC and FAUC, calibration, per-case count
        distributions, and the time of each stage in seconds.
    """

    console = console or Console()
    out = Path(out)
    config = load_config(DEMO_CONFIG, [f"seed={seed}", *overrides])
    timings: dict[str, float] = {}
    started = time.perf_counter()
    n_cases = sum(splits)
    data = write_phantom_dataset(
        out / "data", n_cases=n_cases, seed=seed, splits=splits, overwrite=True
    )
    timings["synthesise"] = time.perf_counter() - started
    console.print(f"phantom: {n_cases} cases in {data} ({'/'.join(map(str, splits))} split)")

    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    clock = time.perf_counter()
    terminal = console.is_terminal
    log = None if terminal or console.quiet else console.file
    train(config, data, run_dir, progress=terminal, log=log)
    timings["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    model, config, info = load_run(run_dir)
    threshold = float(info["threshold"]) if info.get("threshold") is not None else 0.5
    settings = settings_for_config(config)
    test_cases = load_dataset(data).split_cases("test")
    truth, sizes, spacing = lesion_truth(data, [case.id for case in test_cases])
    found, maps, counts = {}, {}, {}
    images = [case.load().image for case in test_cases]
    predictions = predict_images(
        model, [zscore(image) for image in images], config.target, scale=info["heatmap_scale"]
    )
    for case, image, prediction in zip(test_cases, images, predictions, strict=True):
        fitted = find_lesions(prediction.map, settings, spacing[case.id])
        found[case.id] = fitted
        maps[case.id] = (image[0], prediction.map)
        # The fitted amplitudes are existence probabilities, so the lesion count is
        # their Poisson-binomial variable.
        distribution = lesion_count_distribution(fitted)
        counts[case.id] = {"truth": len(truth[case.id]), **distribution.to_dict()}
    timings["predict_and_detect"] = time.perf_counter() - clock

    report = evaluate_detections(
        {case: (lesions.points, lesions.scores) for case, lesions in found.items()},
        truth,
        settings.match_distance,
        threshold=threshold,
        spacing=spacing if settings.units == "mm" else None,
        truth_sizes=sizes,
        ranking={case: lesions.extras["amplitude"] for case, lesions in found.items()},
    )
    report["settings"].update(
        {"data": str(data), "run": str(run_dir), "sigma": config.sigma, "seed": seed}
    )
    report["counts"] = counts
    _write_figures(out, report, found, threshold, maps, truth)
    timings["total"] = time.perf_counter() - started
    report["timings_s"] = timings
    write_json(out / "metrics.json", report)
    pairs = {case: (lesions.points, lesions.scores) for case, lesions in found.items()}
    write_report(
        out / "report.html",
        report,
        evaluation_outcomes(report, pairs, truth, spacing),
        lambda case: maps[case][0],
        run_dir,
        title="weaklesion demo: heatmap regression from points, held-out phantom cases",
    )
    _print_summary(console, report, out)
    return report


def _write_figures(out: Path, report: dict, found: dict, threshold: float, maps, truth) -> None:
    write_detections_csv(
        out / "detections.csv", {case: d.above(threshold) for case, d in found.items()}
    )
    froc = report["froc"]
    plot_froc(
        {"heatmap + Gaussian fitting": (froc["fp_per_image"], froc["sensitivity"])},
        out / "froc.png",
    )
    plot_reliability({"fitted amplitude": report["calibration"]["bins"]}, out / "calibration.png")
    for case in list(found)[:2]:
        image, heatmap = maps[case]
        plot_slices(
            image,
            out / f"slices_{case}.png",
            detections=found[case].above(threshold).points,
            truth=truth[case],
            heatmap=heatmap,
            title=case,
        )


def _print_summary(console: Console, report: dict, out: Path) -> None:
    detection = report["detection"]
    table = Table(title=f"Held-out phantom cases ({detection['n_cases']}): detection from points")
    for column in ("F1", "precision", "recall", "FAUC (95 % CI)", "ECE", "count MAE"):
        table.add_column(column, justify="right")
    fauc = report["fauc"]
    errors = [abs(c["mode"] - c["truth"]) for c in report["counts"].values()]
    table.add_row(
        f"{detection['f1']:.3f}",
        f"{detection['precision']:.3f}",
        f"{detection['recall']:.3f}",
        f"{fauc['estimate']:.3f} ({fauc['low']:.3f}–{fauc['high']:.3f})",
        f"{report['calibration']['ece']:.3f}",
        f"{np.mean(errors):.2f}",
    )
    console.print(table)
    if "recall_by_size" in report:
        strata = report["recall_by_size"]
        console.print(
            "recall by lesion size: "
            + ", ".join(
                f"{name} {strata['recall'][name]:.2f} (n={strata['n_truth'][name]})"
                for name in strata["recall"]
            )
        )
    timings = ", ".join(
        f"{stage} {seconds:.0f} s" for stage, seconds in report["timings_s"].items()
    )
    console.print(f"time: {timings}")
    console.print(f"report written to {out.resolve()}; open {(out / 'report.html').resolve()}")
