"""Bootstrap confidence intervals over cases, and the FROC area of any weighting of the
cases (paired resamples)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from weaklesion._validation import (
    ArrayLike,
    _values,
    check_finite,
)
from weaklesion.io import json_ready
from weaklesion.metrics._common import _BLOCK_ENTRIES
from weaklesion.metrics.froc import (
    _case_arrays,
    _check_froc_options,
    _froc_area,
    _operating_points,
    _ranks,
)


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
