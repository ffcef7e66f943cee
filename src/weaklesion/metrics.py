"""Scores for detections, counts and probabilities.

Detections are matched to the truth one-to-one, either by distance between points
(:func:`match_points`) or by falling inside a labelled region (:func:`match_to_regions`);
the match records of many cases give precision, recall and F1 (:func:`detection_scores`),
recall per lesion size (:func:`recall_by_size`) and, with detection scores, FROC curves
and their normalised area (:func:`froc_curve`, :func:`froc_by_rank`, :func:`froc_auc`)
with bootstrap confidence intervals over cases (:func:`bootstrap_ci`,
:func:`froc_auc_ci`; :func:`froc_auc_weighted` for the area of any weighting of the
cases, such as paired resamples). Probabilities are scored by their calibration
(:func:`reliability_bins`, :func:`expected_calibration_error`) and uncertainties by the
accuracy of the most certain items (:func:`accuracy_by_certainty`); predicted counts by
accuracy, mean absolute error and macro F1 over count classes (:func:`count_metrics`).

Conventions
-----------
- Distances are in mm when ``spacing`` is given, else in voxels.
- A ratio whose denominator counts nothing takes the value it would have if nothing could
  go wrong: precision is 1 when there are no predictions, recall (sensitivity) is 1 when
  there is no truth, and F1 = 2 TP / (2 TP + FP + FN) is 1 when both are empty. F1 from
  counts equals the harmonic mean of precision and recall whenever both are defined.
- An average over no items (false positives per image over no cases, the accuracy of no
  counts, the calibration error of no probabilities) is NaN.
- Every function accepts NumPy arrays, sequences or torch tensors and returns NumPy
  arrays or Python numbers; records with several numbers have ``to_dict()`` for JSON,
  where NaN and infinite values become ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import cc3d
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.special import xlogy

from weaklesion._validation import (
    ArrayLike,
    _values,
    axis_spacing,
    check_finite,
    check_points,
    check_probabilities,
    check_same_shape,
    check_spatial,
)
from weaklesion.detection import component_detections
from weaklesion.io import json_ready

SIZE_STRATA: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"small": (3, 10), "medium": (11, 50), "large": (51, math.inf)}
)
"""Default lesion-size strata for :func:`recall_by_size`: inclusive voxel-count ranges."""

# Bootstrap replicates of an FROC curve are evaluated in blocks of at most this many
# (replicate, detection) entries, so that memory stays bounded for large studies.
_BLOCK_ENTRIES = 2**22


class _Record:
    """Adds ``to_dict`` (JSON-ready: lists, Python numbers, ``None`` for NaN) to records."""

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dictionary."""
        return {item.name: json_ready(getattr(self, item.name)) for item in fields(self)}


# ----------------------------------------------------------------------------- matching


@dataclass(frozen=True, eq=False)
class Matches(_Record):
    """One-to-one matching of the predictions of one case to its truth.

    Attributes
    ----------
    pairs : (M, 2) int ndarray
        ``(prediction index, truth id)`` of each match, sorted by prediction index. The
        truth id is the row of the truth point (:func:`match_points`) or the region's
        label (:func:`match_to_regions`).
    distances : (M,) float ndarray
        Distance of each pair in mm (voxels without spacing); 0 for region hits.
    false_positives : (FP,) int ndarray
        Indices of the unmatched predictions, ascending.
    false_negatives : (FN,) int ndarray
        Ids of the unmatched truth lesions, ascending.
    """

    pairs: np.ndarray
    distances: np.ndarray
    false_positives: np.ndarray
    false_negatives: np.ndarray

    @property
    def tp(self) -> int:
        """Number of true positives (matched pairs)."""
        return len(self.pairs)

    @property
    def fp(self) -> int:
        """Number of false positives (unmatched predictions)."""
        return len(self.false_positives)

    @property
    def fn(self) -> int:
        """Number of false negatives (unmatched truth lesions)."""
        return len(self.false_negatives)

    @property
    def pred_matched(self) -> np.ndarray:
        """``(n_pred,)`` bool: True where the prediction is matched.

        These are the outcomes for calibrating lesion existence probabilities.
        """
        matched = np.zeros(self.tp + self.fp, dtype=bool)
        matched[self.pairs[:, 0]] = True
        return matched

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dictionary, with tp, fp and fn."""
        return {**super().to_dict(), "tp": self.tp, "fp": self.fp, "fn": self.fn}


def _build_matches(
    pred_index: np.ndarray,
    truth_id: np.ndarray,
    distances: np.ndarray,
    n_pred: int,
    truth_ids: np.ndarray,
) -> Matches:
    order = np.argsort(pred_index, kind="stable")
    pred_index = np.asarray(pred_index, dtype=np.int64)[order]
    truth_id = np.asarray(truth_id, dtype=np.int64)[order]
    return Matches(
        pairs=np.stack([pred_index, truth_id], axis=1).reshape(-1, 2),
        distances=np.asarray(distances, dtype=float)[order],
        false_positives=np.setdiff1d(np.arange(n_pred), pred_index).astype(np.int64),
        false_negatives=np.setdiff1d(truth_ids, truth_id).astype(np.int64),
    )


def _point_sets(pred_points: ArrayLike, truth_points: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred = check_points(pred_points, None, "pred_points")
    truth = check_points(truth_points, None, "truth_points")
    if len(pred) and len(truth) and pred.shape[1] != truth.shape[1]:
        raise ValueError(
            f"pred_points has {pred.shape[1]} coordinates per point but truth_points has "
            f"{truth.shape[1]}; expected the same"
        )
    return pred, truth


def _distance_matrix(
    pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] | None
) -> np.ndarray:
    scale = axis_spacing(spacing, pred.shape[1], "spacing")
    return cdist(pred * scale, truth * scale)


def _check_max_distance(max_distance: float) -> float:
    limit = float(max_distance)
    if math.isnan(limit) or limit < 0:
        raise ValueError(f"max_distance: got {max_distance!r}; expected a distance >= 0")
    return limit


def match_points(
    pred_points: ArrayLike,
    truth_points: ArrayLike,
    max_distance: float,
    spacing: float | Sequence[float] | None = None,
) -> Matches:
    """Match predicted to true lesion centres one-to-one within a distance.

    Among all one-to-one matchings that use only pairs at most ``max_distance`` apart,
    the one with the most pairs is chosen, and among those the one with the smallest
    total distance. Unmatched predictions are false positives, unmatched truth points
    false negatives.

    Parameters
    ----------
    pred_points : (P, D) array
        Predicted centres in voxel coordinates, (z, y, x) or (y, x).
    truth_points : (T, D) array
        True centres in the same coordinates.
    max_distance : float
        Largest distance of a match, in mm when ``spacing`` is given, else in voxels. A
        pair farther apart is no match; ``math.inf`` admits every pair.
    spacing : float or sequence of D floats, optional
        Voxel size in mm along each axis; None measures distances in voxels.

    Returns
    -------
    Matches
        Pairs ``(prediction index, truth index)``, their distances, false positives and
        false negatives.

    Notes
    -----
    The assignment is solved by the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`) on the cost ``d`` for admissible
    pairs (``d <= max_distance``) and ``C = m * d_max + 1`` for the others, where ``m``
    is the size of the smaller side and ``d_max`` the largest admissible distance.
    Predictions and truth points without any admissible partner are set aside first:
    they are unmatched in every matching. The solver assigns all ``m`` members of the
    smaller side; an assignment with ``k`` admissible pairs costs ``D_k + C (m - k)``
    with ``0 <= D_k <= m d_max < C``. One with ``k + 1`` admissible pairs therefore
    always costs less than any with ``k``, since the difference ``D_{k+1} - D_k`` is
    below ``C``; so the optimum has the largest possible number of admissible pairs
    (every admissible matching extends to a full assignment), and among those the least
    total distance ``D_k``. Inadmissible pairs of the optimum are then dropped.

    Examples
    --------
    >>> matches = match_points([[0.0, 0.0], [5.0, 5.0]], [[0.0, 1.0], [9.0, 9.0]], 2.0)
    >>> matches.pairs
    array([[0, 0]])
    >>> matches.distances
    array([1.])
    >>> matches.false_positives, matches.false_negatives
    (array([1]), array([1]))

    With 2 mm voxels along the first axis the first pair is 2 mm apart:

    >>> match_points([[1.0, 0.0]], [[0.0, 0.0]], 1.5, spacing=(2.0, 1.0)).tp
    0
    """
    pred, truth = _point_sets(pred_points, truth_points)
    limit = _check_max_distance(max_distance)
    empty = np.zeros(0, dtype=np.int64)
    if len(pred) == 0 or len(truth) == 0:
        return _build_matches(empty, empty, np.zeros(0), len(pred), np.arange(len(truth)))
    distances = _distance_matrix(pred, truth, spacing)
    admissible = distances <= limit
    rows = np.flatnonzero(admissible.any(axis=1))
    columns = np.flatnonzero(admissible.any(axis=0))
    if rows.size == 0:
        return _build_matches(empty, empty, np.zeros(0), len(pred), np.arange(len(truth)))
    block = distances[np.ix_(rows, columns)]
    block_admissible = admissible[np.ix_(rows, columns)]
    penalty = min(rows.size, columns.size) * block[block_admissible].max() + 1.0
    row, column = linear_sum_assignment(np.where(block_admissible, block, penalty))
    keep = block_admissible[row, column]
    row, column = row[keep], column[keep]
    return _build_matches(
        rows[row], columns[column], block[row, column], len(pred), np.arange(len(truth))
    )


def _label_image(region_labels: ArrayLike, name: str) -> np.ndarray:
    labels = _values(region_labels)
    check_spatial(labels, name)
    if labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name}: has dtype {labels.dtype}; expected integer labels")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: holds negative values; expected labels >= 0")
    return labels


def _labels_at(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Label of the voxel holding each point (the voxel whose extent contains it)."""
    upper = np.asarray(labels.shape) - 1
    index = np.clip(np.floor(points + 0.5).astype(np.int64), 0, upper)
    return labels[tuple(index.T)].astype(np.int64)


def _label_sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive labels present in ``labels`` (ascending) and their voxel counts."""
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if labels.max() <= labels.size:
        counts = np.bincount(labels.ravel().astype(np.int64))
        present = np.flatnonzero(counts[1:]) + 1
        return present, counts[present]
    present, counts = np.unique(labels, return_counts=True)
    keep = present > 0
    return present[keep].astype(np.int64), counts[keep]


def match_to_regions(pred_points: ArrayLike, region_labels: ArrayLike) -> Matches:
    """Match detections to labelled regions: a detection inside a region hits it.

    Each region is matched at most once; a second detection inside an already matched
    region is a false positive, as is a detection on the background (label 0).

    Parameters
    ----------
    pred_points : (P, D) array
        Detections in voxel coordinates, inside the image.
    region_labels : (Z, Y, X) or (Y, X) int array
        Region of each voxel: 0 for background, a positive label per region (a lesion
        instance, a digit's cell). Labels need not be consecutive.

    Returns
    -------
    Matches
        Pairs ``(prediction index, region label)`` with distance 0; the false negatives
        are the labels of the regions no detection falls in.

    Notes
    -----
    A point belongs to the voxel whose extent ``[i - 0.5, i + 0.5)`` holds it. Since
    every detection lies in at most one region, the admissible pairs form disjoint stars
    (a region with the detections inside it), and a one-to-one matching of maximum size,
    which the Hungarian algorithm would find, takes exactly one detection per hit region.
    All such matchings have the same size; the first detection in the given order is
    taken, so pass detections by decreasing score to match the best one.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 0],
    ...                    [0, 0, 0, 2]])
    >>> matches = match_to_regions([[0.0, 0.2], [0.0, 1.0], [1.0, 1.0]], labels)
    >>> matches.pairs
    array([[0, 1]])
    >>> matches.false_positives, matches.false_negatives
    (array([1, 2]), array([2]))
    """
    labels = _label_image(region_labels, "region_labels")
    pred = check_points(pred_points, labels.shape, "pred_points")
    regions, _ = _label_sizes(labels)
    under = _labels_at(labels, pred)
    inside = np.flatnonzero(under > 0)
    hit, first = np.unique(under[inside], return_index=True)
    return _build_matches(inside[first], hit, np.zeros(len(hit)), len(pred), regions)


# ------------------------------------------------------------------- detection scores


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    return float(numerator / denominator) if denominator else empty


def _case_list(matches: Matches | Sequence[Matches]) -> list[Matches]:
    cases = [matches] if isinstance(matches, Matches) else list(matches)
    for index, case in enumerate(cases):
        if not isinstance(case, Matches):
            raise ValueError(
                f"matches[{index}]: is a {type(case).__name__}; expected a Matches record"
            )
    return cases


@dataclass(frozen=True)
class DetectionScores(_Record):
    """Detection scores pooled over cases.

    Attributes
    ----------
    precision, recall, f1 : float
        From the pooled counts; see the module's conventions for empty denominators.
    fp_per_image, fn_per_image : float
        Mean number of false positives and false negatives per case.
    tp, fp, fn : int
        Pooled counts.
    n_cases : int
        Number of cases.
    """

    precision: float
    recall: float
    f1: float
    fp_per_image: float
    fn_per_image: float
    tp: int
    fp: int
    fn: int
    n_cases: int

    @property
    def sensitivity(self) -> float:
        """Same as recall."""
        return self.recall


def detection_scores(matches: Matches | Sequence[Matches]) -> DetectionScores:
    """Precision, recall, F1 and errors per image, pooled over the cases' matchings.

    Parameters
    ----------
    matches : Matches or sequence of Matches
        One record per case, from :func:`match_points` or :func:`match_to_regions`.

    Returns
    -------
    DetectionScores
        Precision TP / (TP + FP) (1 when there are no predictions), recall TP / (TP + FN)
        (1 when there is no truth), F1 = 2 TP / (2 TP + FP + FN) (1 when both are
        empty), mean FP and FN per case (NaN for no cases), and the counts.

    Examples
    --------
    >>> first = match_points([[0.0, 0.0], [4.0, 4.0]], [[0.0, 1.0]], 2.0)
    >>> second = match_points(np.zeros((0, 2)), [[3.0, 3.0]], 2.0)
    >>> scores = detection_scores([first, second])
    >>> scores.precision, scores.recall, scores.f1, scores.fp_per_image
    (0.5, 0.5, 0.5, 0.5)
    """
    cases = _case_list(matches)
    tp = sum(case.tp for case in cases)
    fp = sum(case.fp for case in cases)
    fn = sum(case.fn for case in cases)
    n_cases = len(cases)
    return DetectionScores(
        precision=_ratio(tp, tp + fp, 1.0),
        recall=_ratio(tp, tp + fn, 1.0),
        f1=f1_from_counts(tp, fp, fn),
        fp_per_image=_ratio(fp, n_cases, math.nan),
        fn_per_image=_ratio(fn, n_cases, math.nan),
        tp=tp,
        fp=fp,
        fn=fn,
        n_cases=n_cases,
    )


def f1_from_counts(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> float | np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN) from counts, 1 where there is nothing to find and
    nothing was found.

    Parameters
    ----------
    tp, fp, fn : int or array of int
        True positives, false positives and false negatives (arrays broadcast).

    Returns
    -------
    float or array
        A float for scalar counts, else an array of the broadcast shape.

    Examples
    --------
    >>> f1_from_counts(3, 1, 2), f1_from_counts(0, 0, 0)
    (0.6666666666666666, 1.0)
    >>> f1_from_counts(np.array([1, 0]), np.array([1, 0]), np.array([0, 0]))
    array([0.66666667, 1.        ])
    """
    tp, fp, fn = (np.asarray(count, dtype=float) for count in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    safe = np.where(denominator > 0, denominator, 1.0)
    f1 = np.where(denominator > 0, 2 * tp / safe, 1.0)
    return float(f1) if f1.ndim == 0 else f1


def overlap_matches(predicted: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """TP, FP, FN of predicted components against true lesion instances by overlap.

    A predicted component (26-connected) and a true lesion may pair when they share a
    voxel; among one-to-one pairings the one with the most pairs is taken (Hungarian).

    Parameters
    ----------
    predicted : (Z, Y, X) bool array
        Binary segmentation.
    truth : (Z, Y, X) int array
        True lesion instances, 0 for background.

    Returns
    -------
    (int, int, int)
        True positives, false positives (unpaired components) and false negatives
        (unpaired lesions).

    Examples
    --------
    >>> truth = np.zeros((1, 1, 7), int)
    >>> truth[0, 0, :2], truth[0, 0, 4] = 1, 2
    >>> overlap_matches(np.array([[[1, 0, 0, 0, 0, 0, 1]]], bool), truth)
    (1, 1, 1)
    """
    labels, n_pred = cc3d.connected_components(predicted, connectivity=26, return_N=True)
    ids = np.unique(truth[truth > 0])
    n_true = len(ids)
    if n_pred == 0 or n_true == 0:
        return 0, int(n_pred), n_true
    both = (labels > 0) & (truth > 0)
    overlap = np.zeros((n_pred, n_true), dtype=bool)
    overlap[labels[both] - 1, np.searchsorted(ids, truth[both])] = True
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    tp = int(overlap[rows, cols].sum())
    return tp, int(n_pred) - tp, n_true - tp


def segmentation_scores(
    probabilities: Sequence[np.ndarray],
    instances: Sequence[np.ndarray],
    points: Sequence[np.ndarray],
    match_distance: float,
    threshold: float = 0.5,
    location: str = "center_of_mass",
) -> dict[str, Any]:
    """Segmentation F1 by overlap, detection F1 and Dice of probability maps cut at a threshold.

    Parameters
    ----------
    probabilities : sequence of (Z, Y, X) arrays
        Lesion probability of each case.
    instances : sequence of (Z, Y, X) int arrays
        True lesion instances, 0 for background.
    points : sequence of (T, D) arrays
        True lesion centres, voxels.
    match_distance : float
        Largest distance of a detection match, voxels.
    threshold : float
        Voxels strictly above it are lesion.
    location : {"center_of_mass", "max"}
        Where a component is detected (see :func:`weaklesion.detection.component_detections`).

    Returns
    -------
    dict
        ``segmentation_f1`` (components matched to lesions by overlap, pooled counts in
        ``segmentation_tp_fp_fn``), ``detection_f1``, ``detection_precision``,
        ``detection_recall`` (each component's ``location`` within ``match_distance`` of
        a true centre) and ``dice`` (pooled over cases).
    """
    totals = np.zeros(3, dtype=int)
    matches, intersection, volume = [], 0.0, 0.0
    for probability, truth, centres in zip(probabilities, instances, points, strict=True):
        predicted = probability > threshold
        totals += overlap_matches(predicted, truth)
        found = component_detections(probability, threshold, location=location)
        matches.append(match_points(found.points, centres, match_distance))
        intersection += np.logical_and(predicted, truth > 0).sum()
        volume += predicted.sum() + (truth > 0).sum()
    detection = detection_scores(matches)
    return {
        "segmentation_f1": f1_from_counts(*totals),
        "segmentation_tp_fp_fn": totals.tolist(),
        "detection_f1": detection.f1,
        "detection_precision": detection.precision,
        "detection_recall": detection.recall,
        "dice": float(2 * intersection / volume) if volume else 1.0,
    }


@dataclass(frozen=True)
class RecallBySize(_Record):
    """Recall per lesion-size stratum.

    Attributes
    ----------
    strata : dict of str to (low, high)
        Inclusive size range of each stratum in voxels.
    recall : dict of str to float
        Detected / total per stratum (1 for a stratum with no lesion).
    n_truth, n_detected : dict of str to int
        Lesions in each stratum and how many of them were matched.
    excluded : int
        Lesions whose size lies in no stratum.
    """

    strata: dict[str, tuple[float, float]]
    recall: dict[str, float]
    n_truth: dict[str, int]
    n_detected: dict[str, int]
    excluded: int


def lesion_sizes(instance_labels: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Size in voxels of the labelled instance under each point (0 on the background).

    Parameters
    ----------
    instance_labels : (Z, Y, X) or (Y, X) int array
        0 for background, a positive label per lesion instance.
    points : (N, D) array
        Voxel coordinates inside the image; a point belongs to the voxel whose extent
        holds it.

    Returns
    -------
    (N,) int64 ndarray
        Number of voxels carrying the label found under each point.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0],
    ...                    [0, 0, 2]])
    >>> lesion_sizes(labels, [[0.0, 1.0], [1.0, 2.0], [1.0, 0.0]])
    array([2, 1, 0])
    """
    labels = _label_image(instance_labels, "instance_labels")
    points = check_points(points, labels.shape, "points")
    present, counts = _label_sizes(labels)
    under = _labels_at(labels, points)
    sizes = np.zeros(len(under), dtype=np.int64)
    inside = under > 0
    sizes[inside] = counts[np.searchsorted(present, under[inside])]
    return sizes


def recall_by_size(
    matches: Matches | Sequence[Matches],
    truth_sizes: ArrayLike | Sequence[ArrayLike],
    strata: Mapping[str, tuple[float, float]] = SIZE_STRATA,
) -> RecallBySize:
    """Recall of the truth lesions in each size stratum, pooled over cases.

    Parameters
    ----------
    matches : Matches or sequence of Matches
        One record per case.
    truth_sizes : array or sequence of arrays
        Per case, the size in voxels of each truth lesion, indexed by truth id: for
        :func:`match_points`, ``lesion_sizes(instance_labels, truth_points)``; for
        :func:`match_to_regions`, where ids are labels,
        ``np.bincount(region_labels.ravel())``.
    strata : mapping of str to (low, high)
        Inclusive size range of each stratum in voxels; ranges may overlap.

    Returns
    -------
    RecallBySize
        Recall, lesion count and detected count per stratum, and the number of lesions
        in no stratum (by default those under 3 voxels, or with size 0 because the
        point lies on the background).

    Examples
    --------
    >>> labels = np.zeros((20, 20), dtype=int)
    >>> labels[0:2, 0:2] = 1      # 4 voxels
    >>> labels[5:10, 5:10] = 2    # 25 voxels
    >>> truth = np.array([[0.5, 0.5], [7.0, 7.0]])
    >>> matches = match_points([[1.0, 1.0]], truth, max_distance=2.0)
    >>> result = recall_by_size(matches, lesion_sizes(labels, truth))
    >>> result.recall["small"], result.recall["medium"], result.n_truth["large"]
    (1.0, 0.0, 0)
    """
    cases = _case_list(matches)
    if isinstance(matches, Matches):
        truth_sizes = [truth_sizes]
    if len(truth_sizes) != len(cases):
        raise ValueError(
            f"truth_sizes: has {len(truth_sizes)} entries but matches has {len(cases)}; "
            "expected one array of sizes per case"
        )
    sizes, found = [], []
    for index, (case, case_sizes) in enumerate(zip(cases, truth_sizes, strict=True)):
        values = np.asarray(_values(case_sizes), dtype=float).ravel()
        check_finite(values, f"truth_sizes[{index}]")
        ids = np.concatenate([case.pairs[:, 1], case.false_negatives])
        if ids.size and ids.max() >= values.size:
            raise ValueError(
                f"truth_sizes[{index}]: has {values.size} values but matches[{index}] "
                f"refers to truth id {ids.max()}; expected a size for every truth id"
            )
        sizes.append(values[ids])
        found.append(np.arange(ids.size) < case.tp)
    sizes = np.concatenate(sizes) if sizes else np.zeros(0)
    found = np.concatenate(found) if found else np.zeros(0, dtype=bool)
    bounds = {name: (float(low), float(high)) for name, (low, high) in strata.items()}
    members = {name: (sizes >= low) & (sizes <= high) for name, (low, high) in bounds.items()}
    in_any = np.zeros(sizes.shape, dtype=bool)
    for member in members.values():
        in_any |= member
    n_truth = {name: int(member.sum()) for name, member in members.items()}
    n_detected = {name: int(found[member].sum()) for name, member in members.items()}
    return RecallBySize(
        strata=bounds,
        recall={name: _ratio(n_detected[name], n_truth[name], 1.0) for name in bounds},
        n_truth=n_truth,
        n_detected=n_detected,
        excluded=int((~in_any).sum()),
    )


# ------------------------------------------------------------------------------- FROC


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


class ConfidenceInterval(NamedTuple):
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        """Return the interval as a JSON-ready dictionary."""
        return json_ready(self._asdict())


def _check_bootstrap(n_boot: int, confidence: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot: got {n_boot!r}; expected a whole number >= 1")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: got {confidence!r}; expected a level in (0, 1)")


def _bootstrap_indices(n_cases: int, n_boot: int, seed: int | None) -> np.ndarray:
    """Case indices of each resample, ``(n_boot, n_cases)``, drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_cases, size=(int(n_boot), n_cases))


def _percentile_interval(
    estimate: float, replicates: np.ndarray, confidence: float
) -> ConfidenceInterval:
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return ConfidenceInterval(float(estimate), float(low), float(high))


def bootstrap_ci(
    cases: ArrayLike | Sequence[Any],
    statistic: Callable[[Any], float] | None = None,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = None,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of a statistic over cases.

    Cases are resampled with replacement ``n_boot`` times; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the statistic over
    the resamples (linear interpolation between order statistics).

    Parameters
    ----------
    cases : array or sequence
        One entry per case: an array (cases along the first axis, e.g. per-case values)
        or a sequence of arbitrary per-case items.
    statistic : callable, optional
        Maps a resample — an array of rows, or a list of items, of the same kind as
        ``cases`` — to a number. Default: the mean of a 1D array of per-case values.
    n_boot : int
        Number of resamples.
    confidence : float
        Coverage of the interval, in (0, 1).
    seed : int, optional
        Seed of the resampling; a fixed seed gives the same interval.

    Returns
    -------
    ConfidenceInterval
        ``(estimate, low, high)``: the statistic on all cases and the interval. All NaN
        when there are no cases.

    Examples
    --------
    >>> values = np.array([1.0, 2.0, 3.0, 4.0])
    >>> estimate, low, high = bootstrap_ci(values, n_boot=2000, seed=0)
    >>> estimate, bool(1.0 <= low < estimate < high <= 4.0)
    (2.5, True)

    Any statistic over any per-case items, here the pooled fraction of hits:

    >>> cases = [(2, 3), (0, 1), (4, 4)]            # (hits, lesions) per case
    >>> pooled = lambda sample: sum(h for h, _ in sample) / sum(n for _, n in sample)
    >>> bootstrap_ci(cases, pooled, n_boot=500, seed=0).estimate
    0.75
    """
    _check_bootstrap(n_boot, confidence)
    is_array = isinstance(cases, np.ndarray) or hasattr(cases, "detach")
    data = _values(cases) if is_array else list(cases)
    if len(data) == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan)
    indices = _bootstrap_indices(len(data), n_boot, seed)
    if statistic is None:
        values = np.asarray(data, dtype=float)
        if values.ndim != 1:
            raise ValueError(
                f"cases: has shape {values.shape}; expected per-case values (N,) for the "
                "default mean statistic"
            )
        check_finite(values, "cases")
        return _percentile_interval(values.mean(), values[indices].mean(axis=1), confidence)

    def resample(rows: np.ndarray) -> Any:
        return data[rows] if is_array else [data[row] for row in rows]

    estimate = statistic(resample(np.arange(len(data))))
    replicates = np.array([statistic(resample(rows)) for rows in indices], dtype=float)
    return _percentile_interval(estimate, replicates, confidence)


def froc_auc_ci(
    scores: Sequence[ArrayLike],
    hits: Sequence[ArrayLike],
    n_truth: ArrayLike,
    max_fp: float = 5.0,
    *,
    by_rank: bool = False,
    interpolation: Literal["step", "linear"] = "step",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = None,
) -> ConfidenceInterval:
    """Normalised FROC area with a percentile bootstrap interval over cases.

    Equal to :func:`bootstrap_ci` over the cases with the statistic
    ``froc_auc(froc_curve(...))`` (or :func:`froc_by_rank` when ``by_rank``), and the
    same resamples for the same seed, but vectorised: a resample is a vector of case
    multiplicities, and the curves of a block of resamples come from one weighted
    cumulative sum over the detections sorted once.

    Parameters
    ----------
    scores, hits, n_truth
        As for :func:`froc_curve`.
    max_fp, interpolation
        As for :func:`froc_auc`.
    by_rank : bool
        Sweep the number of top-ranked detections per image instead of a score.
    n_boot, confidence, seed
        As for :func:`bootstrap_ci`.

    Returns
    -------
    ConfidenceInterval
        ``(estimate, low, high)``; all NaN when there are no cases.

    Examples
    --------
    >>> scores = [[0.9, 0.3], [0.8], [0.7, 0.2], [0.6]]
    >>> hits = [[True, False], [False], [True, False], [True]]
    >>> estimate, low, high = froc_auc_ci(scores, hits, [1, 1, 1, 1], max_fp=1.0, seed=0)
    >>> round(estimate, 4), bool(low <= estimate <= high)
    (0.625, True)
    """
    _check_froc_options(max_fp, interpolation)
    _check_bootstrap(n_boot, confidence)
    n_cases = len(_case_arrays(scores, hits, n_truth)[3])
    if n_cases == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan)
    indices = _bootstrap_indices(n_cases, n_boot, seed)
    options = {"by_rank": by_rank, "interpolation": interpolation}
    all_cases = np.ones((1, n_cases))
    estimate = froc_auc_weighted(scores, hits, n_truth, all_cases, max_fp, **options)[0]
    replicates = froc_auc_weighted(
        scores, hits, n_truth, case_multiplicities(indices, n_cases), max_fp, **options
    )
    return _percentile_interval(estimate, replicates, confidence)


def case_multiplicities(indices: ArrayLike, n_cases: int) -> np.ndarray:
    """How often each case occurs in each resample of case indices.

    Parameters
    ----------
    indices : (R, N) int array
        Case indices of each of ``R`` resamples, in ``[0, n_cases)``.
    n_cases : int
        Number of cases.

    Returns
    -------
    (R, n_cases) float ndarray
        Row ``r`` counts case ``c`` ``result[r, c]`` times; rows sum to ``N``.

    Examples
    --------
    >>> case_multiplicities([[0, 0, 2], [1, 2, 0]], 3)
    array([[2., 0., 1.],
           [1., 1., 1.]])
    """
    rows = np.asarray(_values(indices), dtype=np.int64)
    if rows.ndim != 2:
        raise ValueError(f"indices: has shape {rows.shape}; expected (resamples, cases drawn)")
    if rows.size and (rows.min() < 0 or rows.max() >= n_cases):
        raise ValueError(f"indices: expected case indices in [0, {n_cases})")
    flat = (rows + n_cases * np.arange(len(rows))[:, None]).ravel()
    counts = np.bincount(flat, minlength=len(rows) * n_cases)
    return counts.reshape(len(rows), n_cases).astype(float)


def froc_auc_weighted(
    scores: Sequence[ArrayLike],
    hits: Sequence[ArrayLike],
    n_truth: ArrayLike,
    weights: ArrayLike,
    max_fp: float = 5.0,
    *,
    by_rank: bool = False,
    interpolation: Literal["step", "linear"] = "step",
) -> np.ndarray:
    """Normalised FROC area of weighted case sets, one per row of ``weights``.

    Row ``r`` stands for the study in which case ``c`` occurs ``weights[r, c]`` times:
    its detections, hits, truth lesions and image all count that often. With bootstrap
    multiplicities (:func:`case_multiplicities`) each row is the area of one resample,
    equal to ``froc_auc(froc_curve(...))`` on the resampled cases; a row of ones is the
    area of the study itself.

    Parameters
    ----------
    scores, hits, n_truth
        As for :func:`froc_curve`.
    weights : (R, C) array
        Non-negative multiplicity of each of the ``C`` cases in each of ``R`` rows; a
        row must weigh some case.
    max_fp, interpolation
        As for :func:`froc_auc`.
    by_rank : bool
        Sweep the number of top-ranked detections per image (:func:`froc_by_rank`).

    Returns
    -------
    (R,) float ndarray
        The area of each row.

    Notes
    -----
    The detections are sorted once; the curves of a block of rows come from one
    weighted cumulative sum, with blocks small enough to bound the memory.

    Examples
    --------
    The two images of :func:`froc_curve`'s example, then the second one counted twice
    (a resample that drew it twice): sensitivity 1/2, then 1/3, up to 1 FP per image.

    >>> scores, hits = [[0.9, 0.6], [0.8, 0.6]], [[True, False], [False, True]]
    >>> froc_auc_weighted(scores, hits, [1, 1], [[1, 1], [1, 2]], max_fp=1.0)
    array([0.5       , 0.33333333])
    """
    _check_froc_options(max_fp, interpolation)
    values, marks, cases, counts = _case_arrays(scores, hits, n_truth)
    rows = np.asarray(_values(weights), dtype=float)
    if rows.ndim != 2 or rows.shape[1] != len(counts):
        raise ValueError(
            f"weights: has shape {rows.shape}; expected (rows, {len(counts)}), one column per case"
        )
    check_finite(rows, "weights")
    if np.any(rows < 0) or np.any(rows.sum(axis=1) <= 0):
        raise ValueError("weights: expected multiplicities >= 0 with some case in every row")
    keys = _ranks(values, cases) if by_rank else -values
    block = max(1, _BLOCK_ENTRIES // max(len(values), len(counts), 1))
    areas = []
    for start in range(0, len(rows), block):
        fp, sensitivity, _ = _operating_points(
            keys, marks, cases, counts, rows[start : start + block]
        )
        areas.append(_froc_area(fp, sensitivity, max_fp, interpolation))
    return np.concatenate(areas) if areas else np.zeros(0)


# ------------------------------------------------------------------------ calibration


def _binary_outcomes(outcomes: ArrayLike, name: str) -> np.ndarray:
    values = _values(outcomes)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name}: expected booleans or 0/1 values")
    return values.astype(float).ravel()


@dataclass(frozen=True, eq=False)
class ReliabilityBins(_Record):
    """Equal-width confidence bins of a reliability diagram.

    Attributes
    ----------
    edges : (B + 1,) float ndarray
        Bin edges from 0 to 1; bin ``i`` holds ``edges[i] <= p < edges[i + 1]``, the last
        also ``p = 1``.
    confidence : (B,) float ndarray
        Mean probability in each bin (NaN when empty).
    accuracy : (B,) float ndarray
        Fraction of positive outcomes in each bin (NaN when empty).
    count : (B,) int ndarray
        Number of probabilities in each bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def reliability_bins(
    probabilities: ArrayLike, outcomes: ArrayLike, n_bins: int = 10
) -> ReliabilityBins:
    """Bin probabilities by value and compare each bin's mean with its outcome rate.

    Parameters
    ----------
    probabilities : array, any shape
        Predicted probabilities of the positive outcome, in [0, 1]; for lesion existence
        probabilities, one per detection.
    outcomes : bool array, same shape
        Observed outcomes; for detections, ``Matches.pred_matched`` (1 when matched).
    n_bins : int
        Number of equal-width bins on [0, 1]; ``p`` goes to bin ``floor(p * n_bins)``
        (``p = 1`` to the last).

    Returns
    -------
    ReliabilityBins
        Edges, per-bin mean confidence, accuracy and count.

    Examples
    --------
    >>> bins = reliability_bins([0.1, 0.2, 0.8, 0.9], [0, 1, 1, 1], n_bins=2)
    >>> bins.confidence, bins.accuracy, bins.count
    (array([0.15, 0.85]), array([0.5, 1. ]), array([2, 2]))
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins: got {n_bins!r}; expected a whole number >= 1")
    n_bins = int(n_bins)
    values = np.asarray(_values(probabilities), dtype=float)
    check_probabilities(values, "probabilities")
    observed = _values(outcomes)
    check_same_shape(values, observed, "probabilities", "outcomes")
    values, observed = values.ravel(), _binary_outcomes(observed, "outcomes")
    index = np.minimum((values * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    filled = count > 0
    confidence = np.full(n_bins, math.nan)
    accuracy = np.full(n_bins, math.nan)
    confidence[filled] = (
        np.bincount(index, weights=values, minlength=n_bins)[filled] / count[filled]
    )
    accuracy[filled] = (
        np.bincount(index, weights=observed, minlength=n_bins)[filled] / count[filled]
    )
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), confidence, accuracy, count)


def expected_calibration_error(
    probabilities: ArrayLike, outcomes: ArrayLike, n_bins: int = 10
) -> float:
    """Expected calibration error: bin-count-weighted mean |accuracy - confidence|.

    Bins as in :func:`reliability_bins`. NaN when there are no probabilities.

    Examples
    --------
    Bins [0, 0.5) and [0.5, 1] have gaps |0.5 - 0.15| and |1 - 0.85|:

    >>> round(expected_calibration_error([0.1, 0.2, 0.8, 0.9], [0, 1, 1, 1], n_bins=2), 6)
    0.25
    """
    bins = reliability_bins(probabilities, outcomes, n_bins)
    total = bins.count.sum()
    if total == 0:
        return math.nan
    filled = bins.count > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float((bins.count[filled] * gaps).sum() / total)


def maximum_calibration_error(
    probabilities: ArrayLike, outcomes: ArrayLike, n_bins: int = 10
) -> float:
    """Maximum calibration error: largest |accuracy - confidence| over non-empty bins.

    Bins as in :func:`reliability_bins`. NaN when there are no probabilities.

    Examples
    --------
    >>> maximum_calibration_error([0.1, 0.2, 0.8, 0.9], [0, 1, 1, 1], n_bins=2)
    0.35
    """
    bins = reliability_bins(probabilities, outcomes, n_bins)
    filled = bins.count > 0
    if not filled.any():
        return math.nan
    return float(np.abs(bins.accuracy[filled] - bins.confidence[filled]).max())


# ------------------------------------------------------------------------ uncertainty


def binary_entropy(probabilities: ArrayLike) -> np.ndarray:
    """Entropy in bits of a Bernoulli variable: ``-p log2 p - (1 - p) log2 (1 - p)``.

    Parameters
    ----------
    probabilities : array, any shape
        Probabilities in [0, 1].

    Returns
    -------
    float ndarray, same shape
        Entropy in bits, 0 at p = 0 or 1 and 1 at p = 0.5.

    Examples
    --------
    >>> binary_entropy([0.0, 0.5, 1.0])
    array([0., 1., 0.])
    """
    values = np.asarray(_values(probabilities), dtype=float)
    check_probabilities(values, "probabilities")
    entropy = -(xlogy(values, values) + xlogy(1 - values, 1 - values)) / math.log(2)
    return entropy + 0.0  # turns -0.0 at p = 0 and 1 into 0.0


@dataclass(frozen=True, eq=False)
class CertaintyCurve(_Record):
    """Accuracy of the most certain items as more items are retained.

    Attributes
    ----------
    retained : (K,) int ndarray
        Number ``k`` of most certain items kept.
    fraction : (K,) float ndarray
        ``k`` divided by the number of items.
    accuracy : (K,) float ndarray
        Fraction of correct items among the ``k`` kept.
    """

    retained: np.ndarray
    fraction: np.ndarray
    accuracy: np.ndarray


def accuracy_by_certainty(
    correct: ArrayLike,
    uncertainty: ArrayLike,
    fractions: ArrayLike | None = None,
) -> CertaintyCurve:
    """Accuracy of the ``k`` most certain items, as a curve over ``k``.

    Items are sorted by increasing uncertainty (for instance :func:`binary_entropy` of
    a count's or lesion's probability); a useful uncertainty gives accuracy falling
    with ``k``.

    Parameters
    ----------
    correct : (N,) bool array
        Whether each item's prediction is right.
    uncertainty : (N,) array
        Uncertainty of each item; lower is more certain.
    fractions : array of floats in (0, 1], optional
        Fractions of the items to keep, ``k = max(1, round(fraction * N))`` (halves
        rounded up); by default every ``k = 1 .. N``.

    Returns
    -------
    CertaintyCurve
        ``k``, ``k / N`` and accuracy; empty for no items.

    Notes
    -----
    Items of equal uncertainty cannot be ordered, so when ``k`` cuts through a group of
    ties, the group contributes its mean correctness per item kept: the accuracy is the
    expected one over all orders of the ties and does not depend on the input order.

    Examples
    --------
    >>> curve = accuracy_by_certainty([True, True, False, True], [0.1, 0.2, 0.9, 0.5])
    >>> curve.accuracy
    array([1.  , 1.  , 1.  , 0.75])
    >>> accuracy_by_certainty([True, False], [0.3, 0.3]).accuracy
    array([0.5, 0.5])
    """
    hits = _values(correct)
    values = np.asarray(_values(uncertainty), dtype=float)
    check_same_shape(hits, values, "correct", "uncertainty")
    check_finite(values, "uncertainty")
    hits, values = _binary_outcomes(hits, "correct"), values.ravel()
    n = len(values)
    if fractions is None:
        retained = np.arange(1, n + 1)
    else:
        share = np.asarray(_values(fractions), dtype=float).ravel()
        check_finite(share, "fractions")
        if np.any((share <= 0) | (share > 1)):
            raise ValueError("fractions: expected fractions of the items in (0, 1]")
        retained = np.maximum(np.floor(share * n + 0.5).astype(np.int64), 1)
    if n == 0:
        return CertaintyCurve(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))
    order = np.argsort(values, kind="stable")
    ordered, right = values[order], hits[order]
    starts = np.flatnonzero(np.append(True, ordered[1:] != ordered[:-1]))
    sizes = np.diff(np.append(starts, n))
    group_correct = np.add.reduceat(right, starts)
    before = np.cumsum(group_correct) - group_correct
    group = np.searchsorted(starts, retained - 1, side="right") - 1
    correct_kept = before[group] + (retained - starts[group]) * group_correct[group] / sizes[group]
    return CertaintyCurve(retained, retained / n, correct_kept / retained)


# ----------------------------------------------------------------------------- counts


def _count_pair(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.asarray(_values(pred), dtype=float)
    actual = np.asarray(_values(truth), dtype=float)
    check_same_shape(predicted, actual, "pred", "truth")
    check_finite(predicted, "pred")
    check_finite(actual, "truth")
    if np.any(predicted < 0):
        raise ValueError("pred: holds negative values; expected counts >= 0")
    if np.any(actual < 0) or np.any(actual != np.round(actual)):
        raise ValueError("truth: expected whole-number counts >= 0")
    return predicted.ravel(), actual.ravel()


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5)


def count_accuracy(pred: ArrayLike, truth: ArrayLike) -> float:
    """Fraction of images whose predicted count, rounded (halves up), equals the truth.

    Parameters
    ----------
    pred : (N,) array
        Predicted counts >= 0; real-valued predictions (a regressed or expected count)
        are rounded to the nearest whole number.
    truth : (N,) array
        True counts, whole numbers >= 0.

    Returns
    -------
    float
        Accuracy in [0, 1]; NaN for no images.

    Examples
    --------
    >>> count_accuracy([0.4, 2.5, 1.0], [0, 2, 1])
    0.6666666666666666
    """
    predicted, actual = _count_pair(pred, truth)
    if predicted.size == 0:
        return math.nan
    return float(np.mean(_round_half_up(predicted) == actual))


def count_mae(pred: ArrayLike, truth: ArrayLike) -> float:
    """Mean absolute error of predicted counts, unrounded.

    Examples
    --------
    >>> count_mae([0.5, 2.0, 4.0], [0, 2, 1])
    1.1666666666666667
    """
    predicted, actual = _count_pair(pred, truth)
    if predicted.size == 0:
        return math.nan
    return float(np.mean(np.abs(predicted - actual)))


def _count_classes(counts: np.ndarray, bins: np.ndarray) -> np.ndarray:
    return np.maximum(np.searchsorted(bins, counts, side="right") - 1, 0)


def count_f1(pred: ArrayLike, truth: ArrayLike, bins: Sequence[float] = (0, 1, 2, 3, 4)) -> float:
    """Macro-averaged F1 over count classes.

    Parameters
    ----------
    pred : (N,) array
        Predicted counts, rounded as in :func:`count_accuracy`.
    truth : (N,) array
        True counts.
    bins : increasing sequence
        Lower edge of each class: class ``i`` holds counts in ``[bins[i], bins[i + 1])``,
        the last class every count ``>= bins[-1]`` and the first any count below
        ``bins[0]``. The default classes are 0, 1, 2, 3 and "4 or more".

    Returns
    -------
    float
        Mean over classes of F1 = 2 TP / (2 TP + FP + FN), over the classes present in
        the truth or the prediction (scikit-learn's ``f1_score(average="macro")`` with
        its default labels); NaN for no images.

    Examples
    --------
    Classes 0 and 1 both have F1 = 2 / 3, class "4 or more" F1 = 1:

    >>> count_f1([0, 1, 1, 7], [0, 0, 1, 5])
    0.7777777777777777
    """
    predicted, actual = _count_pair(pred, truth)
    edges = np.asarray(bins, dtype=float).ravel()
    if edges.size == 0 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins: got {bins!r}; expected an increasing sequence of numbers")
    if predicted.size == 0:
        return math.nan
    k = edges.size
    predicted_class = _count_classes(_round_half_up(predicted), edges)
    actual_class = _count_classes(actual, edges)
    confusion = np.bincount(actual_class * k + predicted_class, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion)
    support = confusion.sum(axis=0) + confusion.sum(axis=1)
    present = support > 0
    return float(np.mean(2 * tp[present] / support[present]))


@dataclass(frozen=True)
class CountMetrics(_Record):
    """Count accuracy, mean absolute error and macro F1 over count classes."""

    accuracy: float
    mae: float
    f1: float
    n_cases: int


def count_metrics(
    pred: ArrayLike, truth: ArrayLike, bins: Sequence[float] = (0, 1, 2, 3, 4)
) -> CountMetrics:
    """All count metrics at once: :func:`count_accuracy`, :func:`count_mae`, :func:`count_f1`.

    Examples
    --------
    >>> count_metrics([0, 1, 1, 7], [0, 0, 1, 5]).to_dict()
    {'accuracy': 0.5, 'mae': 0.75, 'f1': 0.7777777777777777, 'n_cases': 4}
    """
    predicted, actual = _count_pair(pred, truth)
    return CountMetrics(
        accuracy=count_accuracy(predicted, actual),
        mae=count_mae(predicted, actual),
        f1=count_f1(predicted, actual, bins),
        n_cases=int(predicted.size),
    )


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
