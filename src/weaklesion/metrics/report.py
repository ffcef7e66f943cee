"""The full evaluation of a study's detections: every score in one record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from weaklesion._validation import (
    ArrayLike,
    _values,
)
from weaklesion.io import json_ready
from weaklesion.metrics._common import SIZE_STRATA
from weaklesion.metrics.bootstrap import froc_auc_ci
from weaklesion.metrics.calibration import (
    expected_calibration_error,
    maximum_calibration_error,
    reliability_bins,
)
from weaklesion.metrics.froc import _scores, froc_curve, hits_by_score
from weaklesion.metrics.matching import match_points
from weaklesion.metrics.scores import detection_scores, recall_by_size


def evaluate_detections(
    predictions: Mapping[str, tuple[ArrayLike, ArrayLike]],
    truth: Mapping[str, ArrayLike],
    max_distance: float,
    threshold: float = 0.5,
    spacing: float | Sequence[float] | Mapping[str, float | Sequence[float]] | None = None,
    truth_sizes: Mapping[str, ArrayLike] | None = None,
    strata: Mapping[str, tuple[float, float]] = SIZE_STRATA,
    max_fp: float = 5.0,
    n_boot: int = 1000,
    n_bins: int = 10,
    seed: int = 0,
    ranking: Mapping[str, ArrayLike] | None = None,
) -> dict[str, Any]:
    """Score scored detections of many cases against truth points: the full report.

    Parameters
    ----------
    predictions : mapping of case name to (points (P, D), scores (P,))
        Detections per case in voxel coordinates; a case of ``truth`` missing here has
        no detections.
    truth : mapping of case name to (T, D) points
        Truth lesion centres in voxel coordinates; defines the cases evaluated.
    max_distance : float
        Largest distance of a match, in mm when ``spacing`` is given, else voxels.
    threshold : float
        Detections scoring at least this are kept for precision, recall and F1; the
        FROC curve and the calibration use every detection.
    spacing : spacing or mapping of case name to spacing, optional
        Voxel size in mm, for every case or per case.
    truth_sizes : mapping of case name to (T,) voxel counts, optional
        Size of each truth lesion, for recall per size stratum.
    strata, max_fp, n_boot, n_bins, seed
        Size strata (see :func:`recall_by_size`), FROC area limit in false positives per
        image, bootstrap resamples over cases, reliability bins, random seed.
    ranking : mapping of case name to (P,) values, optional
        The values that order each case's detections for the FROC curve, where they
        rank finer than the scores: the unclipped amplitudes of
        :func:`~weaklesion.detection.fit_gaussians`, whose scores (probabilities clipped
        to [0, 1]) tie at 1. Default the scores. The FROC sweeps every distinct value as
        a threshold, so tied detections are kept or dropped together.

    Returns
    -------
    dict
        JSON-ready: ``settings``, ``detection`` (:class:`DetectionScores` at
        ``threshold``), ``recall_by_size`` (when sizes are given), ``froc`` (curve),
        ``fauc`` (estimate and bootstrap interval), ``calibration`` (ECE, MCE and the
        bins, outcome = the detection is matched when all detections are kept) and
        ``cases``: per case, TP, FP and FN at ``threshold``, the number of truth
        lesions, and every detection's ranking value (its score unless ``ranking`` is
        given) with its :func:`hits_by_score` mark in that order, so
        that per-case statistics (paired tests, the FROC of any subset of cases) can be
        recomputed from the report alone.

    Examples
    --------
    >>> report = evaluate_detections(
    ...     {"a": ([[1.0, 1.0], [8.0, 8.0]], [0.9, 0.2])}, {"a": [[1.0, 2.0]]}, 2.0
    ... )
    >>> report["detection"]["f1"], report["cases"]["a"]
    (1.0, {'tp': 1, 'fp': 0, 'fn': 0, 'n_truth': 1, 'scores': [0.9, 0.2], 'hits': [True, False]})
    """
    extra = sorted(set(predictions) - set(truth))
    if extra:
        raise ValueError(f"predictions: case {extra[0]!r} has detections but no truth")

    def pick(value, case):
        return value[case] if isinstance(value, Mapping) else value

    kept_matches, all_scores, all_hits, n_truth, outcomes, probabilities = [], [], [], [], [], []
    per_case = {}
    for case, truth_points in truth.items():
        truth_points = np.asarray(_values(truth_points), dtype=float)
        dims = truth_points.shape[1] if truth_points.ndim == 2 else 3
        points, scores = predictions.get(case, (np.zeros((0, dims)), np.zeros(0)))
        points = np.asarray(_values(points), dtype=float).reshape(-1, dims)
        scores = np.asarray(_values(scores), dtype=float)
        case_spacing = pick(spacing, case)
        order = scores
        if ranking is not None and case in predictions:
            order = _scores(ranking[case], len(scores), f"ranking[{case!r}]")
        kept = scores >= threshold
        matches = match_points(points[kept], truth_points, max_distance, case_spacing)
        kept_matches.append(matches)
        hits = hits_by_score(points, order, truth_points, max_distance, case_spacing)
        per_case[case] = {
            "tp": matches.tp,
            "fp": matches.fp,
            "fn": matches.fn,
            "n_truth": len(truth_points),
            "scores": order,
            "hits": hits,
        }
        all_scores.append(order)
        all_hits.append(hits)
        n_truth.append(len(truth_points))
        everything = match_points(points, truth_points, max_distance, case_spacing)
        outcomes.append(everything.pred_matched)
        probabilities.append(np.clip(scores, 0.0, 1.0))

    curve = froc_curve(all_scores, all_hits, n_truth)
    fauc = froc_auc_ci(all_scores, all_hits, n_truth, max_fp, n_boot=n_boot, seed=seed)
    probabilities = np.concatenate(probabilities) if probabilities else np.zeros(0)
    outcomes = np.concatenate(outcomes) if outcomes else np.zeros(0)
    bins = reliability_bins(probabilities, outcomes, n_bins)
    report: dict[str, Any] = {
        "settings": {
            "max_distance": max_distance,
            "distance_unit": "voxel" if spacing is None else "mm",
            "threshold": threshold,
            "max_fp": max_fp,
            "n_boot": n_boot,
            "n_bins": n_bins,
            "seed": seed,
            "n_cases": len(truth),
        },
        "detection": detection_scores(kept_matches).to_dict(),
        "froc": curve.to_dict(),
        "fauc": fauc.to_dict(),
        "calibration": {
            "ece": expected_calibration_error(probabilities, outcomes, n_bins),
            "mce": maximum_calibration_error(probabilities, outcomes, n_bins),
            "bins": bins.to_dict(),
        },
        "cases": per_case,
    }
    if truth_sizes is not None:
        sizes = [np.asarray(_values(truth_sizes[case])) for case in truth]
        report["recall_by_size"] = recall_by_size(kept_matches, sizes, strata).to_dict()
        report["settings"]["strata"] = {name: list(bounds) for name, bounds in strata.items()}
    return json_ready(report)
