"""One-to-one matching of detections to the truth: by distance between points
(Hungarian assignment) or by falling inside a labelled region."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from weaklesion._validation import (
    ArrayLike,
    _values,
    axis_spacing,
    check_points,
    check_spatial,
)
from weaklesion.metrics._common import _Record


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
