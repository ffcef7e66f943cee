"""Scores of predicted counts: accuracy, mean absolute error and macro F1 over count
classes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from weaklesion._validation import (
    ArrayLike,
    _values,
    check_finite,
    check_same_shape,
)
from weaklesion.metrics._common import _Record


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
