"""FROC: hits by detection score, the curve by threshold or by rank, and its
normalised area."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from weaklesion._validation import (
    ArrayLike,
    _values,
    check_finite,
    check_points,
    check_probabilities,
    check_same_shape,
)
from weaklesion.metrics._common import _Record
from weaklesion.metrics.matching import (
    _check_max_distance,
    _distance_matrix,
    _label_image,
    _labels_at,
    _point_sets,
)


def _scores(pred_scores: ArrayLike, n_pred: int, name: str = "pred_scores") -> np.ndarray:
    scores = np.asarray(_values(pred_scores), dtype=float)
    if scores.shape != (n_pred,):
        raise ValueError(f"{name}: has shape {scores.shape}; expected ({n_pred},), one per point")
    check_finite(scores, name)
    return scores


def _augment(start: int, neighbours: list[np.ndarray], owner: np.ndarray) -> bool:
    """Grow the matching ``owner`` (truth -> prediction, -1 if free) by an augmenting path.

    Depth-first search over alternating paths from prediction ``start``; on success the
    predictions along the path each take the next truth on it and ``start`` is matched.
    """
    visited = np.zeros(len(owner), dtype=bool)
    path_preds = [start]
    path_truths: list[int] = []
    pending = [iter(neighbours[start])]
    while pending:
        truth = next(pending[-1], None)
        if truth is None:
            pending.pop()
            path_preds.pop()
            if path_truths:
                path_truths.pop()
            continue
        if visited[truth]:
            continue
        visited[truth] = True
        if owner[truth] < 0:
            for pred, taken in zip(path_preds, [*path_truths, truth], strict=True):
                owner[taken] = pred
            return True
        path_truths.append(truth)
        path_preds.append(owner[truth])
        pending.append(iter(neighbours[owner[truth]]))
    return False


def hits_by_score(
    pred_points: ArrayLike,
    pred_scores: ArrayLike,
    truth_points: ArrayLike,
    max_distance: float,
    spacing: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Mark the detections that count as hits when kept in decreasing score order.

    For every score threshold ``t``, ``hits[pred_scores >= t].sum()`` is the number of
    matches :func:`match_points` finds among the detections scoring at least ``t`` —
    the matching is in effect recomputed for each kept subset. The same holds for the
    ``n`` top-ranked detections (ties kept in the given order), as used by
    :func:`froc_by_rank`.

    Parameters
    ----------
    pred_points : (P, D) array
        Detections in voxel coordinates.
    pred_scores : (P,) array
        Score of each detection; higher is more confident.
    truth_points : (T, D) array
        True lesion centres.
    max_distance : float
        Largest distance of a match (mm with ``spacing``, else voxels).
    spacing : float or sequence of D floats, optional
        Voxel size in mm.

    Returns
    -------
    (P,) bool ndarray
        True where keeping the detection makes the maximum matching one larger.

    Notes
    -----
    Common FROC code assigns greedily: down the score order, each detection claims the
    nearest unclaimed truth in range. That can undercount: a high-scoring detection
    between two lesions may claim the one that a lower-scoring detection alone could
    reach. Here the true positives at each operating point are the maximum number of
    one-to-one matches among the kept detections, as :func:`match_points` (Hungarian)
    gives. Detections are added in decreasing score order (stable for ties) and each
    one tries to grow the matching by an augmenting path (Kuhn's algorithm); a maximum
    matching grows by at most one per added detection, and this incremental search
    keeps it maximum for every prefix, so the count of hits among the first ``k`` is the
    maximum matching of the first ``k``. A hit marks a detection that enlarged the
    matching; the truth it ends up paired with may differ from the one it first took.

    Examples
    --------
    A detection between two lesions (score 0.9) and one that reaches only the left
    lesion (score 0.8): greedy assignment would give the left lesion to the first and
    miss the second; the maximum matching pairs both.

    >>> hits_by_score([[0.0, 0.9], [0.0, -1.0]], [0.9, 0.8],
    ...               [[0.0, 0.0], [0.0, 2.0]], max_distance=1.5)
    array([ True,  True])
    """
    pred, truth = _point_sets(pred_points, truth_points)
    scores = _scores(pred_scores, len(pred))
    limit = _check_max_distance(max_distance)
    hits = np.zeros(len(pred), dtype=bool)
    if len(pred) == 0 or len(truth) == 0:
        return hits
    distances = _distance_matrix(pred, truth, spacing)
    by_distance = np.argsort(distances, axis=1, kind="stable")
    in_range = np.take_along_axis(distances, by_distance, axis=1) <= limit
    neighbours = [row[keep] for row, keep in zip(by_distance, in_range, strict=True)]
    owner = np.full(len(truth), -1, dtype=np.int64)
    matched = 0
    for pred_index in np.argsort(-scores, kind="stable"):
        if matched == len(truth):
            break
        if neighbours[pred_index].size and _augment(pred_index, neighbours, owner):
            hits[pred_index] = True
            matched += 1
    return hits


def region_hits_by_score(
    pred_points: ArrayLike, pred_scores: ArrayLike, region_labels: ArrayLike
) -> np.ndarray:
    """Mark the detections that hit a region first, in decreasing score order.

    The region counterpart of :func:`hits_by_score`: a detection is a hit when it lies
    inside a labelled region that no higher-scoring detection (or earlier one of equal
    score) lies in, so each region counts once at every threshold.

    Parameters
    ----------
    pred_points : (P, D) array
        Detections in voxel coordinates, inside the image.
    pred_scores : (P,) array
        Score of each detection.
    region_labels : (Z, Y, X) or (Y, X) int array
        0 for background, a positive label per region.

    Returns
    -------
    (P,) bool ndarray
        True for the best-scoring detection in each region.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 2]])
    >>> region_hits_by_score([[0, 0], [0, 1], [0, 2], [0, 3]], [0.2, 0.7, 0.9, 0.1], labels)
    array([False,  True, False,  True])
    """
    labels = _label_image(region_labels, "region_labels")
    pred = check_points(pred_points, labels.shape, "pred_points")
    scores = _scores(pred_scores, len(pred))
    under = _labels_at(labels, pred)
    order = np.argsort(-scores, kind="stable")
    _, first = np.unique(under[order], return_index=True)
    chosen = order[first]
    hits = np.zeros(len(pred), dtype=bool)
    hits[chosen[under[chosen] > 0]] = True
    return hits


@dataclass(frozen=True, eq=False)
class FROCCurve(_Record):
    """Operating points of a free-response ROC curve.

    Attributes
    ----------
    thresholds : (K,) ndarray
        For :func:`froc_curve`, the score threshold (detections scoring at least it are
        kept), decreasing from ``inf`` (nothing kept); for :func:`froc_by_rank`, the
        number ``n`` of top-ranked detections kept per image, 0, 1, 2, ...
    fp_per_image : (K,) float ndarray
        Mean number of false positives per image, non-decreasing.
    sensitivity : (K,) float ndarray
        Fraction of all truth lesions detected, non-decreasing.
    """

    thresholds: np.ndarray
    fp_per_image: np.ndarray
    sensitivity: np.ndarray


def _case_arrays(
    scores: Sequence[ArrayLike], hits: Sequence[ArrayLike], n_truth: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate per-case scores and hits; also return each detection's case index."""
    n_truth = np.asarray(_values(n_truth), dtype=float).ravel()
    if not len(scores) == len(hits) == len(n_truth):
        raise ValueError(
            f"scores, hits and n_truth have {len(scores)}, {len(hits)} and {len(n_truth)} "
            "entries; expected one per case in each"
        )
    check_finite(n_truth, "n_truth")
    if np.any(n_truth < 0) or np.any(n_truth != np.round(n_truth)):
        raise ValueError("n_truth: expected whole numbers of truth lesions >= 0")
    all_scores, all_hits = [], []
    for case, (case_scores, case_hits) in enumerate(zip(scores, hits, strict=True)):
        values = np.asarray(_values(case_scores), dtype=float).ravel()
        check_finite(values, f"scores[{case}]")
        marks = _values(case_hits)
        check_same_shape(marks.ravel(), values, f"hits[{case}]", f"scores[{case}]")
        if not np.isin(marks, (0, 1)).all():
            raise ValueError(f"hits[{case}]: expected booleans or 0/1 values")
        marks = marks.astype(bool).ravel()
        if marks.sum() > n_truth[case]:
            raise ValueError(
                f"hits[{case}]: marks {int(marks.sum())} hits but n_truth[{case}] is "
                f"{int(n_truth[case])}; expected at most one hit per truth lesion"
            )
        all_scores.append(values)
        all_hits.append(marks)
    cases = np.repeat(np.arange(len(scores)), [len(values) for values in all_scores])
    if not all_scores:
        return np.zeros(0), np.zeros(0, dtype=bool), cases, n_truth
    return np.concatenate(all_scores), np.concatenate(all_hits), cases, n_truth


def _ranks(scores: np.ndarray, cases: np.ndarray) -> np.ndarray:
    """Rank of each detection within its case by decreasing score (0 = best; stable)."""
    order = np.lexsort((-scores, cases))
    starts = np.searchsorted(cases[order], cases[order], side="left")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(len(scores)) - starts
    return ranks


def _operating_points(
    keys: np.ndarray,
    hits: np.ndarray,
    cases: np.ndarray,
    n_truth: np.ndarray,
    weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FROC points for each row of case ``weights`` (bootstrap multiplicities).

    Operating point ``j`` keeps the detections whose key is at most the ``j``-th
    distinct key; a leading point keeps nothing. Returns fp per image and sensitivity,
    both ``(B, K + 1)``, and the ``K`` distinct keys.
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    ends = np.flatnonzero(np.append(sorted_keys[1:] != sorted_keys[:-1], True))
    if len(keys) == 0:
        ends = ends[:0]
    per_detection = weights[:, cases[order]]
    kept = np.cumsum(per_detection, axis=1)[:, ends]
    tp = np.cumsum(per_detection * hits[order], axis=1)[:, ends]
    zero = np.zeros((len(weights), 1))
    kept = np.concatenate([zero, kept], axis=1)
    tp = np.concatenate([zero, tp], axis=1)
    n_images = weights.sum(axis=1, keepdims=True)
    truth_total = weights @ n_truth
    sensitivity = np.ones_like(tp)
    found = truth_total > 0
    sensitivity[found] = tp[found] / truth_total[found, None]
    return (kept - tp) / n_images, sensitivity, sorted_keys[ends]


def _empty_curve() -> FROCCurve:
    return FROCCurve(np.zeros(0), np.zeros(0), np.zeros(0))


def froc_curve(
    scores: Sequence[ArrayLike], hits: Sequence[ArrayLike], n_truth: ArrayLike
) -> FROCCurve:
    """FROC curve from sweeping a score threshold over all distinct detection scores.

    Parameters
    ----------
    scores : sequence of (P_c,) arrays
        Per case, the score of each detection.
    hits : sequence of (P_c,) bool arrays
        Per case, which detections are hits, from :func:`hits_by_score` (distance rule)
        or :func:`region_hits_by_score` (inside-a-region rule), so that the matching is
        in effect recomputed for the detections kept at each threshold.
    n_truth : (C,) array
        Number of truth lesions per case (for regions, the number of labels present).

    Returns
    -------
    FROCCurve
        One operating point per distinct score, after a first point that keeps nothing
        (threshold ``inf``, 0 FPs): detections of equal score are kept or dropped
        together, never ranked among themselves. Sensitivity is hits / all truth lesions (1 when
        there is none); FPs per image are kept non-hits / number of cases. No cases
        give an empty curve.

    Examples
    --------
    Two images, one lesion each; the first image has detections scoring 0.9 (hit) and
    0.6 (FP), the second 0.8 (FP) and 0.6 (hit):

    >>> curve = froc_curve([[0.9, 0.6], [0.8, 0.6]], [[True, False], [False, True]], [1, 1])
    >>> curve.thresholds
    array([inf, 0.9, 0.8, 0.6])
    >>> curve.fp_per_image
    array([0. , 0. , 0.5, 1. ])
    >>> curve.sensitivity
    array([0. , 0.5, 0.5, 1. ])
    """
    values, marks, cases, counts = _case_arrays(scores, hits, n_truth)
    if len(counts) == 0:
        return _empty_curve()
    fp, sensitivity, keys = _operating_points(
        -values, marks, cases, counts, np.ones((1, len(counts)))
    )
    return FROCCurve(np.concatenate([[math.inf], -keys]), fp[0], sensitivity[0])


def froc_by_rank(
    scores: Sequence[ArrayLike],
    hits: Sequence[ArrayLike],
    n_truth: ArrayLike,
    max_rank: int | None = None,
) -> FROCCurve:
    """FROC curve from keeping the ``n`` top-ranked detections of every image.

    The protocol of GP-Unet's evaluation: ``n = 0, 1, 2, ...`` candidates are kept per
    image (all of them in an image with fewer), rather than those above a common score.

    Parameters
    ----------
    scores, hits, n_truth
        As for :func:`froc_curve`; ranks follow decreasing score, ties in the given
        order (the order :func:`hits_by_score` uses).
    max_rank : int, optional
        Largest ``n``; by default the largest number of detections in an image.

    Returns
    -------
    FROCCurve
        ``thresholds`` holds ``n``.

    Examples
    --------
    >>> curve = froc_by_rank([[0.9, 0.6], [0.8, 0.6]], [[True, False], [False, True]], [1, 1])
    >>> curve.thresholds
    array([0, 1, 2])
    >>> curve.fp_per_image, curve.sensitivity
    (array([0. , 0.5, 1. ]), array([0. , 0.5, 1. ]))
    """
    values, marks, cases, counts = _case_arrays(scores, hits, n_truth)
    if len(counts) == 0:
        return _empty_curve()
    fp, sensitivity, keys = _operating_points(
        _ranks(values, cases), marks, cases, counts, np.ones((1, len(counts)))
    )
    ranks = np.concatenate([[0], keys + 1])
    if max_rank is not None:
        if max_rank < 0:
            raise ValueError(f"max_rank: got {max_rank}; expected a number >= 0")
        ranks, fp, sensitivity = (
            ranks[: max_rank + 1],
            fp[:, : max_rank + 1],
            sensitivity[:, : max_rank + 1],
        )
    return FROCCurve(ranks, fp[0], sensitivity[0])


def _froc_area(
    fp_per_image: np.ndarray,
    sensitivity: np.ndarray,
    max_fp: float,
    interpolation: Literal["step", "linear"],
) -> np.ndarray:
    """Normalised area of FROC curves, one per row, each sorted by FPs from 0.

    Beyond its last point a curve keeps its last sensitivity.
    """
    last_fp, last_sensitivity = fp_per_image[:, -1], sensitivity[:, -1]
    tail = np.clip(max_fp - last_fp, 0, None) * last_sensitivity
    if interpolation == "step":
        edges = np.clip(fp_per_image, 0, max_fp)
        area = (np.diff(edges, axis=1) * sensitivity[:, :-1]).sum(axis=1)
    else:
        left, right = fp_per_image[:, :-1], fp_per_image[:, 1:]
        low, high = sensitivity[:, :-1], sensitivity[:, 1:]
        end = np.minimum(right, max_fp)
        width = np.clip(end - left, 0, None)
        span = right - left
        fraction = np.divide(end - left, span, out=np.zeros_like(span), where=span > 0)
        area = (width * (2 * low + (high - low) * fraction) / 2).sum(axis=1)
    return (area + tail) / max_fp


def _check_froc_options(max_fp: float, interpolation: str) -> None:
    if not (math.isfinite(max_fp) and max_fp > 0):
        raise ValueError(f"max_fp: got {max_fp!r}; expected a positive finite number")
    if interpolation not in ("step", "linear"):
        raise ValueError(f"interpolation: got {interpolation!r}; expected 'step' or 'linear'")


def froc_auc(
    fp_per_image: ArrayLike,
    sensitivity: ArrayLike,
    max_fp: float = 5.0,
    interpolation: Literal["step", "linear"] = "step",
) -> float:
    """Normalised area under an FROC curve from 0 to ``max_fp`` false positives per image.

    Parameters
    ----------
    fp_per_image : (K,) array
        Mean false positives per image of each operating point.
    sensitivity : (K,) array
        Sensitivity of each operating point, in [0, 1].
    max_fp : float
        Upper end of the FP range.
    interpolation : {"step", "linear"}
        ``"step"``: between operating points the sensitivity is that of the last point
        at or below the FP rate — the best a single threshold achieves there. ``"linear"``:
        straight lines between points (what randomly mixing two thresholds achieves).

    Returns
    -------
    float
        Area divided by ``max_fp``: 1 for a detector finding every lesion with no FP, 0
        for one finding none below ``max_fp``. NaN for an empty curve.

    Notes
    -----
    The point (0, 0), keeping nothing, is always added; points are sorted by FP rate and
    the sensitivity made non-decreasing (at a given FP rate the best point counts).
    Beyond its last point the curve keeps its last sensitivity: keeping more detections
    never loses a hit.

    Examples
    --------
    Sensitivity 0.5 up to 1 FP per image, then 1: (0.5 + 1.5) / 2 with steps;
    with lines the rise from 0.5 to 1 between 0.5 and 1 FP adds 0.125 / 2:

    >>> froc_auc([0.0, 0.5, 1.0], [0.5, 0.5, 1.0], max_fp=2.0)
    0.75
    >>> froc_auc([0.0, 0.5, 1.0], [0.5, 0.5, 1.0], max_fp=2.0, interpolation="linear")
    0.8125
    """
    _check_froc_options(max_fp, interpolation)
    fp = np.asarray(_values(fp_per_image), dtype=float).ravel()
    found = np.asarray(_values(sensitivity), dtype=float).ravel()
    check_same_shape(fp, found, "fp_per_image", "sensitivity")
    check_finite(fp, "fp_per_image")
    check_probabilities(found, "sensitivity")
    if np.any(fp < 0):
        raise ValueError("fp_per_image: holds negative values; expected rates >= 0")
    if fp.size == 0:
        return math.nan
    fp, found = np.append(0.0, fp), np.append(0.0, found)
    order = np.lexsort((found, fp))
    fp, found = fp[order], np.maximum.accumulate(found[order])
    return float(_froc_area(fp[None], found[None], max_fp, interpolation)[0])
