"""Calibration of probabilities (reliability bins, expected and maximum calibration
error) and the accuracy of the most certain items."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

from weaklesion._validation import (
    ArrayLike,
    _values,
    check_finite,
    check_probabilities,
    check_same_shape,
)
from weaklesion.metrics._common import _Record


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
