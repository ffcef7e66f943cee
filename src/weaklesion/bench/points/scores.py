"""How one model of experiment 2 is scored: its detectors, their threshold, its certainty.

A row of Table 1 is a detector on a model's maps (:func:`row_detector`) whose threshold
is chosen on the validation cases and scored on the test cases (:func:`tune_and_test`);
Table 2 scores the existence probabilities of the fitted lesions
(:func:`existence_calibration`) and the accuracy of the most certain detections
(:func:`certainty_curve`). Arrays in, plain numbers and lists out: the units of
:mod:`~weaklesion.bench.points.units` store what these return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from weaklesion.bench.points.design import (
    CALIBRATION_BINS,
    CERTAINTY_FRACTIONS,
    DETECTORS,
    FIT_STOP,
    MAX_LESIONS,
    THRESHOLDS,
)
from weaklesion.detection import component_detections, fit_gaussians
from weaklesion.metrics import (
    accuracy_by_certainty,
    detection_scores,
    expected_calibration_error,
    hits_by_score,
    match_points,
    recall_by_size,
    reliability_bins,
)
from weaklesion.tuning import choose_operating_point, detector_sweep, metric_curve


def row_detector(
    detector: str,
    maps: Sequence[np.ndarray],
    sigma: Sequence[float] | float = 1.0,
    peak_scale: float = 1.0,
) -> Callable[[float, int], np.ndarray]:
    """Detections of each map at a threshold, as a function ``(threshold, case) -> points``.

    Parameters
    ----------
    detector : {"components", "components_centre", "fit"}
        Connected components of ``map * peak_scale`` above the threshold, one detection
        at each component's maximum or at its centre of mass (weighted by the map); or
        iterative Gaussian fitting of the map (once per map, up to :data:`MAX_LESIONS`
        lesions), keeping the lesions whose amplitude is at least the threshold.
    maps : sequence of (Z, Y, X) arrays
        One predicted map per case; mass-1 heatmaps for ``"fit"``.
    sigma : float or (D,) floats
        Heatmap width in voxels (``"fit"`` only).
    peak_scale : float
        Factor that puts the map on the scale of the thresholds: the heatmap scale of
        :func:`weaklesion.training.data.heatmap_scale` for a mass-1 heatmap cut into
        components, else 1.

    Returns
    -------
    callable ``(threshold, case index) -> (P, D) float array``
        Detected centres in voxels.

    Examples
    --------
    >>> heatmap = np.zeros((9, 9, 9))
    >>> heatmap[4, 4, 4], heatmap[4, 4, 5] = 1.0, 0.6
    >>> detect = row_detector("components", [heatmap])
    >>> detect(0.5, 0), detect(0.7, 0)
    (array([[4., 4., 4.]]), array([[4., 4., 4.]]))
    >>> row_detector("components_centre", [heatmap])(0.5, 0).round(3)
    array([[4.   , 4.   , 4.375]])
    """

    if detector not in DETECTORS:
        raise ValueError(f"detector: got {detector!r}; expected one of {', '.join(DETECTORS)}")
    if detector == "fit":
        fits = [
            fit_gaussians(heatmap, sigma, stop=FIT_STOP, max_lesions=MAX_LESIONS)
            for heatmap in maps
        ]
        return fitted_detector(fits)
    location = "center_of_mass" if detector == "components_centre" else "max"
    scaled = [np.asarray(m) * peak_scale for m in maps]
    return lambda threshold, case: (
        component_detections(scaled[case], threshold, location=location).points
    )


def fitted_detector(fits: Sequence[Any]) -> Callable[[float, int], np.ndarray]:
    """``(threshold, case) -> points`` of fitted lesions whose amplitude is at least the threshold.

    Parameters
    ----------
    fits : sequence of Detections
        Each case's lesions from :func:`~weaklesion.detection.fit_gaussians`.
    """
    return lambda threshold, case: fits[case].points[fits[case].scores >= threshold]


def tune_and_test(
    detect_validation: Callable[[float, int], np.ndarray],
    validation_truth: Sequence[np.ndarray],
    detect_test: Callable[[float, int], np.ndarray],
    test_truth: Sequence[np.ndarray],
    test_sizes: Sequence[np.ndarray] | None,
    match_distance: float,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, Any]:
    """Choose a detector's threshold by F1 on validation cases and score it on test cases.

    Parameters
    ----------
    detect_validation, detect_test : callable ``(threshold, case index) -> (P, D) points``
        The detector on the validation and the test cases (see :func:`row_detector`).
    validation_truth, test_truth : sequence of (T, D) arrays
        True lesion centres of each case, voxels.
    test_sizes : sequence of (T,) arrays, or None
        Size in voxels of each true test lesion, for the recall per size stratum.
    match_distance : float
        Largest distance of a match, voxels.
    thresholds : sequence of float
        Candidate thresholds; ties go to the highest.

    Returns
    -------
    dict
        ``threshold``, ``validation_f1``; on the test cases ``f1``, ``precision``,
        ``recall``, ``tp``, ``fp``, ``fn``, and ``recall_by_size`` (recall, truth and
        detected lesions per stratum, and the lesions in no stratum: under 3 voxels, or
        whose centre lies outside the mask) when sizes are given.

    Examples
    --------
    >>> truth = [np.array([[2.0, 2.0, 2.0]])]
    >>> def detect(threshold, case):  # one true and one weak false detection
    ...     return np.array([[2.0, 2.0, 2.0], [8.0, 8.0, 8.0]])[: 1 if threshold > 0.3 else 2]
    >>> result = tune_and_test(detect, truth, detect, truth, None, 3.0)
    >>> result["threshold"], result["f1"], result["fp"]
    (0.99, 1.0, 0)
    """

    curve = detector_sweep(
        detect_validation, len(validation_truth), validation_truth, match_distance, thresholds
    )
    best = choose_operating_point(curve, "f1")
    threshold = float(curve.values[best])
    matches = [
        match_points(detect_test(threshold, case), truth, match_distance)
        for case, truth in enumerate(test_truth)
    ]
    scores = detection_scores(matches)
    result = {
        "threshold": threshold,
        "validation_f1": float(metric_curve(curve, "f1")[0][best]),
        "f1": scores.f1,
        "precision": scores.precision,
        "recall": scores.recall,
        "tp": scores.tp,
        "fp": scores.fp,
        "fn": scores.fn,
        "n_cases": len(matches),
    }
    if test_sizes is not None:
        strata = recall_by_size(matches, list(test_sizes))
        result["recall_by_size"] = {
            "recall": strata.recall,
            "n_truth": strata.n_truth,
            "n_detected": strata.n_detected,
            "excluded": strata.excluded,
        }
    return result


# ---------------------------------------------------------------- calibration, certainty


def existence_calibration(
    fits: Sequence[Any],
    peak_maps: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    match_distance: float,
    n_bins: int = CALIBRATION_BINS,
) -> dict[str, Any]:
    """Calibration of fitted and unfitted existence probabilities of fitted lesions.

    Parameters
    ----------
    fits : sequence of Detections
        Every lesion :func:`~weaklesion.detection.fit_gaussians` found in each case; the
        scores are the fitted amplitudes clipped to [0, 1].
    peak_maps : sequence of (Z, Y, X) arrays
        Each case's heatmap on the peak-1 scale (an isolated lesion peaks at 1).
    truth : sequence of (T, D) arrays
        True lesion centres, voxels.
    match_distance : float
        Largest distance of a match, voxels.
    n_bins : int
        Bins of the reliability diagram and of the ECE.

    Returns
    -------
    dict
        ``outcomes`` (1 where the lesion is a hit in decreasing amplitude order), and for
        ``"fitted"`` (amplitudes) and ``"unfitted"`` (the peak-1 map at the lesion's
        nearest voxel, clipped to [0, 1]): ``probabilities``, ``ece`` and the
        reliability ``bins``.

    Examples
    --------
    >>> from weaklesion.detection import Detections
    >>> peak = np.zeros((5, 5, 5))
    >>> peak[2, 2, 2], peak[0, 0, 0] = 0.5, 0.25
    >>> found = Detections([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]], [1.0, 0.0])
    >>> result = existence_calibration([found], [peak], [np.array([[2.0, 2.0, 2.0]])], 1.0)
    >>> result["outcomes"], result["fitted"]["ece"], result["unfitted"]["ece"]
    ([1, 0], 0.0, 0.375)
    """

    outcomes, fitted, unfitted = [], [], []
    for found, peak_map, points in zip(fits, peak_maps, truth, strict=True):
        outcomes.append(hits_by_score(found.points, found.scores, points, match_distance))
        fitted.append(found.scores)
        voxels = np.clip(np.rint(found.points).astype(int), 0, np.array(peak_map.shape) - 1)
        unfitted.append(np.clip(peak_map[tuple(voxels.T)], 0.0, 1.0))
    hits = np.concatenate(outcomes).astype(int) if outcomes else np.zeros(0, int)
    result: dict[str, Any] = {"outcomes": hits.tolist(), "n_detections": len(hits)}
    for name, values in (("fitted", fitted), ("unfitted", unfitted)):
        probabilities = np.concatenate(values) if values else np.zeros(0)
        result[name] = {
            "probabilities": probabilities.tolist(),
            "ece": expected_calibration_error(probabilities, hits, n_bins),
            "bins": reliability_bins(probabilities, hits, n_bins).to_dict(),
        }
    return result


def certainty_curve(
    correct: Sequence[np.ndarray],
    uncertainty: Sequence[np.ndarray],
    fractions: Sequence[float] = CERTAINTY_FRACTIONS,
) -> dict[str, Any]:
    """Accuracy of the most certain detections, pooled over cases.

    Parameters
    ----------
    correct : sequence of (P,) bool arrays
        Per case, whether each detection is a true lesion.
    uncertainty : sequence of (P,) arrays
        Per case, each detection's uncertainty (lower is more certain).
    fractions : sequence of float
        Fractions of the detections kept, most certain first.

    Returns
    -------
    dict
        ``n_detections``, ``fraction`` and ``accuracy`` (one per fraction; empty without
        detections).

    Examples
    --------
    >>> certainty_curve([np.array([True, False]), np.array([True])],
    ...                 [np.array([0.1, 0.9]), np.array([0.2])], [0.5, 1.0])["accuracy"]
    [1.0, 0.6666666666666666]
    """

    hits = np.concatenate([np.asarray(c, dtype=bool) for c in correct]) if correct else []
    values = np.concatenate([np.asarray(u, dtype=float) for u in uncertainty]) if correct else []
    curve = accuracy_by_certainty(np.asarray(hits, bool), np.asarray(values, float), fractions)
    return {
        "n_detections": len(hits),
        "fraction": [float(f) for f in fractions] if len(hits) else [],
        "accuracy": curve.accuracy.tolist(),
    }
