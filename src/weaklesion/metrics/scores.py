"""Detection scores from match records: precision, recall, F1 (also from counts), recall
per lesion size, and segmentation scores by overlap."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
from scipy.optimize import linear_sum_assignment

from weaklesion._validation import (
    ArrayLike,
    _values,
    check_finite,
    check_points,
)
from weaklesion.detection import component_detections
from weaklesion.metrics._common import SIZE_STRATA, _Record
from weaklesion.metrics.matching import (
    Matches,
    _label_image,
    _label_sizes,
    _labels_at,
    match_points,
)


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
