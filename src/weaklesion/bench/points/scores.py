"""How one model of experiment 2 is scored: its detectors, their threshold, its certainty.

A row of Table 1 is a detector on a model's maps (:func:`row_detector`) whose threshold
is chosen on the validation cases and scored on the test cases (:func:`tune_and_test`);
the detectors that score every candidate (:func:`scored_detections`: fitted lesions,
attention peaks on the scale of :func:`attention_levels`) also give a FROC curve and
its area (:func:`detection_froc`). Table 2 scores the existence probabilities of the
fitted lesions (:func:`existence_calibration`) and the accuracy of the most certain
detections (:func:`certainty_curve`). Arrays in, plain numbers and lists out: the units
of :mod:`~weaklesion.bench.points.units` store what these return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from weaklesion.bench.points.design import (
    CALIBRATION_BINS,
    CERTAINTY_FRACTIONS,
    DETECTORS,
    FAUC_RESAMPLES,
    FIT_STOP,
    MAX_FP,
    MAX_LESIONS,
    THRESHOLDS,
)
from weaklesion.detection import Detections, component_detections, fit_gaussians
from weaklesion.metrics import (
    accuracy_by_certainty,
    detection_scores,
    expected_calibration_error,
    froc_auc_ci,
    froc_curve,
    hits_by_score,
    match_points,
    recall_by_size,
    reliability_bins,
)
from weaklesion.scoring import LesionSettings, find_lesions
from weaklesion.tuning import choose_operating_point, detector_sweep, metric_curve

# A count run's detector as ``weaklesion detect --run`` applies it: the peaks of the
# attention map after the package's non-maximum suppression box.
COUNT_PEAKS = LesionSettings(method="peaks")


def row_detector(
    detector: str,
    maps: Sequence[np.ndarray],
    sigma: Sequence[float] | float = 1.0,
    peak_scale: float = 1.0,
) -> Callable[[float, int], np.ndarray]:
    """Detections of each map at a threshold, as a function ``(threshold, case) -> points``.

    Parameters
    ----------
    detector : {"components", "components_centre", "fit", "peaks"}
        Connected components of ``map * peak_scale`` above the threshold, one detection
        at each component's maximum or at its centre of mass (weighted by the map); or
        the scored candidates of :func:`scored_detections` (fitted lesions, or the peaks
        of ``map * peak_scale``) whose score is at least the threshold.
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
    >>> attention = np.zeros((9, 9, 9))
    >>> attention[1, 1, 1], attention[7, 7, 7] = 40.0, 10.0
    >>> row_detector("peaks", [attention], peak_scale=1 / 40)(0.5, 0)
    array([[1., 1., 1.]])
    """

    if detector not in DETECTORS:
        raise ValueError(f"detector: got {detector!r}; expected one of {', '.join(DETECTORS)}")
    if detector in ("fit", "peaks"):
        return fitted_detector(scored_detections(detector, maps, sigma, peak_scale))
    location = "center_of_mass" if detector == "components_centre" else "max"
    scaled = [np.asarray(m) * peak_scale for m in maps]
    return lambda threshold, case: (
        component_detections(scaled[case], threshold, location=location).points
    )


def scored_detections(
    detector: str,
    maps: Sequence[np.ndarray],
    sigma: Sequence[float] | float = 1.0,
    peak_scale: float = 1.0,
) -> list[Detections]:
    """Every candidate lesion of each map with its score, for the detectors that score them.

    Parameters
    ----------
    detector : {"fit", "peaks"}
        Iterative Gaussian fitting of a mass-1 heatmap (up to :data:`MAX_LESIONS`
        lesions, stopping at amplitude :data:`FIT_STOP`), scored by the fitted
        amplitude; or the local maxima of ``map * peak_scale`` after non-maximum
        suppression (:data:`COUNT_PEAKS`, as ``weaklesion detect`` finds a count run's
        lesions), scored by the scaled map's value there.
    maps : sequence of (Z, Y, X) arrays
        One predicted map per case.
    sigma : float or (D,) floats
        Heatmap width in voxels (``"fit"`` only).
    peak_scale : float
        Positive factor of the map (``"peaks"`` only); it changes the scores, not their
        order.

    Returns
    -------
    list of Detections
        One per map, highest score first.

    Examples
    --------
    >>> attention = np.zeros((9, 9, 9))
    >>> attention[1, 1, 1], attention[7, 7, 7] = 40.0, 10.0
    >>> found = scored_detections("peaks", [attention], peak_scale=1 / 40)[0]
    >>> found.points, found.scores
    (array([[1., 1., 1.],
           [7., 7., 7.]]), array([1.  , 0.25]))
    """
    if detector == "fit":
        return [
            fit_gaussians(heatmap, sigma, stop=FIT_STOP, max_lesions=MAX_LESIONS)
            for heatmap in maps
        ]
    if detector != "peaks":
        raise ValueError(f"detector: got {detector!r}; expected fit or peaks")
    return [find_lesions(np.asarray(m) * peak_scale, COUNT_PEAKS) for m in maps]


def attention_levels(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """Background and top level of attention maps: their median voxel and largest value.

    An attention map holds densities (a GP-Unet's class activation map averages to the
    predicted count) on its model's own scale, and a linear output may add any constant
    to it. ``(map - low) / (high - low)`` puts the background (most voxels: lesions are
    few and small) near 0 and the strongest peak at 1, a scale on which a common grid of
    thresholds can be tuned; it keeps the ranking of the map's values.

    Parameters
    ----------
    maps : sequence of (Z, Y, X) arrays
        A model's maps of the validation cases, all voxels taken together.

    Returns
    -------
    (low, high) : floats
        The median and the largest value; ``high = low + 1`` for constant maps.

    Examples
    --------
    >>> attention_levels([np.array([[2.0, 2.0, 2.0]]), np.array([[2.0, 6.0]])])
    (2.0, 6.0)
    >>> attention_levels([np.full((2, 2), 3.0)])
    (3.0, 4.0)
    """
    values = np.concatenate([np.ravel(m) for m in maps])
    low, high = float(np.median(values)), float(np.max(values))
    return low, (high if high > low else low + 1.0)


def fitted_detector(fits: Sequence[Any]) -> Callable[[float, int], np.ndarray]:
    """``(threshold, case) -> points`` of scored detections whose score is at least the threshold.

    Parameters
    ----------
    fits : sequence of Detections
        Each case's scored candidates: lesions from
        :func:`~weaklesion.detection.fit_gaussians`, or any of :func:`scored_detections`.
    """
    return lambda threshold, case: fits[case].points[fits[case].scores >= threshold]


def detection_froc(
    found: Sequence[Detections],
    truth: Sequence[np.ndarray],
    match_distance: float,
    max_fp: float = MAX_FP,
    n_boot: int = FAUC_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """FROC of scored detections on the test cases and its normalised area (FAUC).

    Every detection is ranked by its score: the curve sweeps a threshold common to all
    cases over every distinct score (:func:`~weaklesion.metrics.froc_curve`), a hit
    being a detection that enlarges the one-to-one matching within ``match_distance``
    (:func:`~weaklesion.metrics.hits_by_score`).

    Parameters
    ----------
    found : sequence of Detections
        Each case's every candidate with its score.
    truth : sequence of (T, D) arrays
        True lesion centres, voxels.
    match_distance : float
        Largest distance of a match, voxels.
    max_fp : float
        Upper end of the area, false positives per case.
    n_boot, seed
        Bootstrap resamples of the cases for the area's 95 % interval, and their seed.

    Returns
    -------
    dict
        ``fauc`` (``estimate``, ``low``, ``high``: a fraction of the area), the same
        for the FROC by rank (``fauc_by_rank``: the ``n`` best detections of every case,
        the GP-Unet papers' protocol), ``max_fp``, and ``froc``: ``fp_per_image`` and
        ``sensitivity`` of the curve by threshold up to its first point beyond
        ``max_fp``.

    Examples
    --------
    A hit scoring 0.9 and a false positive scoring 0.5: every lesion found before any
    false positive.

    >>> found = Detections([[2.0, 2.0, 2.0], [8.0, 8.0, 8.0]], [0.9, 0.5])
    >>> result = detection_froc([found], [np.array([[2.0, 2.0, 2.0]])], 3.0, n_boot=10)
    >>> result["fauc"]["estimate"], result["froc"]["sensitivity"]
    (1.0, [0.0, 1.0, 1.0])
    """
    scores = [case.scores for case in found]
    hits = [
        hits_by_score(case.points, case.scores, points, match_distance)
        for case, points in zip(found, truth, strict=True)
    ]
    n_truth = [len(points) for points in truth]
    options = {"n_boot": n_boot, "seed": seed}
    curve = froc_curve(scores, hits, n_truth)
    beyond = np.flatnonzero(curve.fp_per_image > max_fp)
    end = beyond[0] + 1 if len(beyond) else len(curve.fp_per_image)
    return {
        "fauc": froc_auc_ci(scores, hits, n_truth, max_fp, **options).to_dict(),
        "fauc_by_rank": froc_auc_ci(
            scores, hits, n_truth, max_fp, by_rank=True, **options
        ).to_dict(),
        "max_fp": max_fp,
        "froc": {
            "fp_per_image": curve.fp_per_image[:end].tolist(),
            "sensitivity": curve.sensitivity[:end].tolist(),
        },
    }


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
