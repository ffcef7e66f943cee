"""Count distributions: the statistics of a pmf (mean, mode, variance, entropy, credible
interval) and the distribution of a probability map's candidate regions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from weaklesion._validation import check_probabilities, check_spatial
from weaklesion.counting._common import _MASS_SLACK, ArrayLike
from weaklesion.counting.pmf import _check_max_count, poisson_binomial_pmf
from weaklesion.counting.regions import (
    _check_region_options,
    _label_regions,
    _numpy_values,
)


@dataclass(frozen=True, eq=False)
class CountDistribution:
    """A distribution over lesion counts and its summary statistics.

    For one pmf of shape ``(C,)`` the statistics are Python numbers; for a batch of
    pmfs ``(..., C)`` they are arrays of shape ``(...)`` (``interval``: ``(..., 2)``).

    Attributes
    ----------
    pmf : (..., C) float64 array
        ``pmf[..., k]`` is the probability of ``k`` lesions (with ``max_count``, the last
        bin is "``C - 1`` or more", and the statistics count it as ``C - 1``).
    mean, variance : float or array
        Expected count and its variance (lesions, lesions^2).
    mode : int or array
        Most probable count (the smallest on ties).
    entropy : float or array
        Shannon entropy of the pmf in nats.
    interval : (int, int) or (..., 2) int array
        Smallest interval of counts ``[lower, upper]`` (both inclusive) holding at least
        ``credible`` of the mass; on ties, the one with more mass, then the lower one
        (masses within 1e-9 count as equal).
    credible : float
        Mass required of ``interval``.
    """

    pmf: np.ndarray
    mean: float | np.ndarray
    mode: int | np.ndarray
    variance: float | np.ndarray
    entropy: float | np.ndarray
    interval: tuple[int, int] | np.ndarray
    credible: float

    def to_dict(self) -> dict:
        """Plain lists and numbers, ready for ``json.dump``."""
        fields = ("pmf", "mean", "mode", "variance", "entropy", "interval")
        result = {name: np.asarray(getattr(self, name)).tolist() for name in fields}
        result["credible"] = self.credible
        return result


def _smallest_interval(pmf: np.ndarray, credible: float) -> np.ndarray:
    """``(..., 2)`` bounds of the smallest interval with mass >= ``credible``.

    For each lower bound, a batched binary search of the cdf finds the first upper bound
    that reaches the mass; the narrowest pair wins.
    """
    cdf = np.cumsum(pmf, axis=-1)
    below = np.concatenate((np.zeros_like(cdf[..., :1]), cdf[..., :-1]), axis=-1)
    target = below + credible - _MASS_SLACK
    upper = torch.searchsorted(torch.from_numpy(cdf), torch.from_numpy(target)).numpy()
    upper = np.minimum(upper, pmf.shape[-1] - 1)
    lower = np.arange(pmf.shape[-1])
    reachable = cdf[..., -1:] >= target
    width = np.where(reachable, upper - lower, pmf.shape[-1])
    mass = np.take_along_axis(cdf, upper, axis=-1) - below
    mass = np.where(width == width.min(axis=-1, keepdims=True), mass, -np.inf)
    best = np.argmax(mass >= mass.max(axis=-1, keepdims=True) - _MASS_SLACK, axis=-1)[..., None]
    return np.concatenate((best, np.take_along_axis(upper, best, axis=-1)), axis=-1)


# Pmf values this far outside [0, 1] are taken as rounding errors and clipped.
PMF_ROUNDING = 1e-9


def count_statistics(pmf: ArrayLike, credible: float = 0.95) -> CountDistribution:
    """Mean, mode, variance, entropy and credible interval of count pmfs.

    Works for any distribution over counts ``0 .. C-1``: the Poisson-binomial pmf of
    :func:`count_distribution`, an average of pmfs over MC-dropout samples, a
    histogram of sampled counts divided by its total.

    Parameters
    ----------
    pmf : (C,) or (..., C) array or tensor
        Probabilities of counts ``0 .. C-1``; each row sums to 1 (within 1e-4).
    credible : float
        Mass of the credible interval, in (0, 1].

    Returns
    -------
    CountDistribution
        Statistics as Python numbers for a ``(C,)`` pmf, arrays of shape ``(...)`` for a
        batch.

    Examples
    --------
    >>> stats = count_statistics([0.1, 0.6, 0.3])
    >>> round(stats.mean, 6), stats.mode, stats.interval
    (1.2, 1, (0, 2))
    >>> round(stats.variance, 6), round(stats.entropy, 4)
    (0.36, 0.8979)
    >>> count_statistics([[0.1, 0.6, 0.3], [0.0, 0.0, 1.0]], credible=0.6).interval
    array([[1, 1],
           [2, 2]])
    """
    if not (isinstance(credible, int | float | np.number) and 0 < credible <= 1):
        raise ValueError(f"credible: got {credible!r}; expected a mass in (0, 1]")
    values = np.asarray(_numpy_values(pmf), dtype=np.float64)
    if values.ndim < 1 or values.shape[-1] == 0:
        raise ValueError(f"pmf: has shape {values.shape}; expected (..., C) with C >= 1")
    # A softmax in floating point can exceed 1 (or fall below 0) by a rounding error.
    outside = (values < -PMF_ROUNDING) | (values > 1 + PMF_ROUNDING)
    check_probabilities(np.where(outside, values, np.clip(values, 0.0, 1.0)), "pmf")
    values = np.clip(values, 0.0, 1.0)
    total = values.sum(axis=-1)
    if np.any(np.abs(total - 1) > 1e-4):
        worst = float(total.flat[np.argmax(np.abs(total - 1))])
        raise ValueError(f"pmf: a row sums to {worst:.6g}; expected each row to sum to 1")
    counts = np.arange(values.shape[-1])
    mean = values @ counts
    variance = np.sum(values * (counts - mean[..., None]) ** 2, axis=-1)
    entropy = -np.sum(values * np.log(np.where(values > 0, values, 1.0)), axis=-1)
    mode = np.argmax(values, axis=-1)
    interval = _smallest_interval(values, float(credible))
    if values.ndim == 1:
        return CountDistribution(
            pmf=values,
            mean=float(mean),
            mode=int(mode),
            variance=float(variance),
            entropy=float(entropy),
            interval=(int(interval[0]), int(interval[1])),
            credible=float(credible),
        )
    return CountDistribution(values, mean, mode, variance, entropy, interval, float(credible))


def _region_peaks(
    values: np.ndarray, threshold: float, connectivity: int, min_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, K_max)`` arg-max indices and validity mask of the regions of N maps."""
    argmax = [_label_regions(v, threshold, connectivity, min_size)[2] for v in values]
    width = max((len(a) for a in argmax), default=0)
    index = np.zeros((len(argmax), width), dtype=np.int64)
    valid = np.arange(width) < np.array([len(a) for a in argmax], dtype=np.int64)[:, None]
    index[valid] = np.concatenate(argmax) if argmax else np.zeros(0, dtype=np.int64)
    return index, valid


def count_distribution(
    prob_map: ArrayLike,
    threshold: float = 0.1,
    connectivity: int | None = None,
    min_size: int = 1,
    credible: float = 0.95,
    max_count: int | None = None,
    batch: bool = False,
) -> CountDistribution:
    """Distribution of the number of lesions in a probability map.

    The map is cut into candidate regions (see :func:`candidate_regions`); the count is
    the Poisson-binomial variable of their existence probabilities.

    Parameters
    ----------
    prob_map : array or tensor
        ``(Y, X)`` or ``(Z, Y, X)`` voxel probabilities in [0, 1]; with ``batch=True``,
        ``(N, Y, X)`` or ``(N, Z, Y, X)``, each map counted on its own.
    threshold, connectivity, min_size
        As in :func:`candidate_regions`.
    credible : float
        Mass of the credible interval, in (0, 1].
    max_count : int, optional
        Truncate the pmf to ``0 .. max_count`` with "``max_count`` or more" as last bin.
    batch : bool
        Whether the first axis of ``prob_map`` indexes maps.

    Returns
    -------
    CountDistribution
        For one map, ``pmf`` has shape ``(K + 1,)`` (``K`` regions) and the statistics
        are numbers; with ``batch=True``, ``pmf`` is ``(N, K_max + 1)``, zero above each
        map's own number of regions, and the statistics are ``(N,)`` arrays. Computed
        without gradient; for training use :class:`CountLoss`.

    Examples
    --------
    >>> prob_map = np.zeros((5, 5))
    >>> prob_map[1, 1], prob_map[3, 3] = 0.9, 0.5
    >>> result = count_distribution(prob_map)
    >>> result.pmf
    array([0.05, 0.5 , 0.45])
    >>> round(result.mean, 6), result.mode, result.interval
    (1.4, 1, (1, 2))
    >>> count_distribution(np.zeros((4, 4))).pmf
    array([1.])
    >>> count_distribution(np.stack([prob_map, np.zeros((5, 5))]), batch=True).mean
    array([1.4, 0. ])
    """
    if not isinstance(prob_map, torch.Tensor):
        prob_map = np.asarray(prob_map)
    check_spatial(prob_map, "prob_map", dims=(3, 4) if batch else (2, 3))
    spatial_dims = prob_map.ndim - 1 if batch else prob_map.ndim
    connectivity = _check_region_options(spatial_dims, threshold, connectivity, min_size)
    _check_max_count(max_count)
    values = _numpy_values(prob_map)
    check_probabilities(values, "prob_map")
    maps = values if batch else values[None]
    index, valid = _region_peaks(maps, threshold, connectivity, min_size)
    flat = maps.reshape(len(maps), math.prod(maps.shape[1:]))
    existence = np.where(valid, np.take_along_axis(flat, index, axis=1), 0)
    pmf = poisson_binomial_pmf(existence.astype(np.float64), max_count)
    return count_statistics(pmf if batch else pmf[0], credible)
