"""Demonstrations on built-in synthetic data.

:func:`run_post_processing_demo` needs no training: it plants lesions in synthetic maps
of the kind a network predicts, runs every detector and the counting on them, and scores
the results against the planted truth. :func:`run_demo` goes end to end (see there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from weaklesion.counting import count_distribution
from weaklesion.detection import Detections, component_detections, fit_gaussians, peak_detections
from weaklesion.metrics import detection_scores, match_points
from weaklesion.targets import gaussian_heatmap


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
