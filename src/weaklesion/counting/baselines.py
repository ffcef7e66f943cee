"""Post-hoc count baselines: the connected-component count at a threshold, and the
histogram of counts over samples."""

from __future__ import annotations

import cc3d
import numpy as np
import torch

from weaklesion._validation import check_probabilities, check_spatial
from weaklesion.counting._common import ArrayLike
from weaklesion.counting.distribution import CountDistribution, count_statistics
from weaklesion.counting.loss import _check_counts
from weaklesion.counting.pmf import _check_max_count
from weaklesion.counting.regions import _check_region_options, _numpy_values


def sample_count_distribution(
    counts: ArrayLike, max_count: int | None = None, credible: float = 0.95
) -> CountDistribution:
    """Empirical distribution of sampled counts: their histogram divided by its total.

    Parameters
    ----------
    counts : (S,) or (N, S) array, tensor or sequence
        Non-negative integer counts, ``S`` samples (of each of ``N`` images).
    max_count : int, optional
        Bins ``0 .. max_count``, the last one "``max_count`` or more"; by default up to
        the largest count.
    credible : float
        Mass of the credible interval, in (0, 1].

    Returns
    -------
    CountDistribution
        ``pmf[..., k]`` is the fraction of samples with count ``k``; see
        :func:`count_statistics`.

    Examples
    --------
    >>> sample_count_distribution([2, 0, 2, 1]).pmf
    array([0.25, 0.25, 0.5 ])
    >>> sample_count_distribution([[0, 0], [1, 3]], max_count=2).pmf
    array([[1. , 0. , 0. ],
           [0. , 0.5, 0.5]])
    """
    _check_max_count(max_count)
    values = _numpy_values(counts) if isinstance(counts, torch.Tensor) else np.asarray(counts)
    if values.ndim not in (1, 2) or values.shape[-1] == 0:
        raise ValueError(f"counts: has shape {values.shape}; expected (S,) or (N, S), S >= 1")
    samples = _check_counts(values.reshape(-1), values.size, torch.device("cpu")).numpy()
    last = int(samples.max()) if max_count is None else int(max_count)
    samples = np.minimum(samples, last).reshape(values.shape)
    rows = np.atleast_2d(samples)
    pmf = np.zeros((len(rows), last + 1))
    np.add.at(pmf, (np.arange(len(rows))[:, None], rows), 1.0)
    pmf /= rows.shape[1]
    return count_statistics(pmf if values.ndim == 2 else pmf[0], credible)


def _component_number(
    values: np.ndarray, threshold: float, connectivity: int, min_size: int
) -> int:
    """Number of connected components of ``values > threshold`` with ``min_size`` voxels."""
    foreground = values > threshold
    labels, count = cc3d.connected_components(foreground, connectivity=connectivity, return_N=True)
    if min_size == 1:
        return int(count)
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)[1:]
    return int(np.count_nonzero(sizes >= min_size))


def component_count(
    prob_map: ArrayLike,
    threshold: float = 0.5,
    connectivity: int | None = None,
    min_size: int = 1,
    max_count: int | None = None,
    batch: bool = False,
    credible: float = 0.95,
) -> CountDistribution:
    """The connected-component count of a map at a threshold, as a (certain) distribution.

    The classic baseline: binarise the map and count its connected components. The
    result is a point mass, so it can be scored and reported like any count distribution.

    Parameters
    ----------
    prob_map : array or tensor
        ``(Y, X)`` or ``(Z, Y, X)`` probabilities in [0, 1]; with ``batch=True``, ``(N, Y,
        X)`` or ``(N, Z, Y, X)``.
    threshold : float
        A voxel is foreground if its probability is strictly above ``threshold``.
    connectivity : int, optional
        4 or 8 in 2D, 6, 18 or 26 in 3D; default 8 in 2D and 26 in 3D.
    min_size : int
        Components with fewer voxels are not counted.
    max_count : int, optional
        Bins ``0 .. max_count``, the last one "``max_count`` or more".
    batch : bool
        Whether the first axis of ``prob_map`` indexes maps.
    credible : float
        Mass of the credible interval, in (0, 1].

    Returns
    -------
    CountDistribution
        ``pmf`` is 1 at the number of components (``mode`` and ``mean``), 0 elsewhere;
        ``(count + 1,)`` bins for one map, ``(N, largest count + 1)`` for a batch.

    Examples
    --------
    >>> prob_map = np.zeros((5, 5))
    >>> prob_map[1, 1], prob_map[3, 3], prob_map[3, 1] = 0.9, 0.6, 0.3
    >>> result = component_count(prob_map)
    >>> result.mode, result.pmf
    (2, array([0., 0., 1.]))
    >>> component_count(prob_map, threshold=0.2).mode
    3
    >>> component_count(np.stack([prob_map, np.zeros((5, 5))]), batch=True).mode
    array([2, 0])
    """
    if not isinstance(prob_map, torch.Tensor):
        prob_map = np.asarray(prob_map)
    check_spatial(prob_map, "prob_map", dims=(3, 4) if batch else (2, 3))
    spatial_dims = prob_map.ndim - 1 if batch else prob_map.ndim
    connectivity = _check_region_options(spatial_dims, threshold, connectivity, min_size)
    values = _numpy_values(prob_map)
    check_probabilities(values, "prob_map")
    maps = values if batch else values[None]
    if len(maps) == 0:
        bins = 1 if max_count is None else max_count + 1
        return count_statistics(np.zeros((0, bins)), credible)
    counts = [_component_number(v, threshold, connectivity, min_size) for v in maps]
    counts = np.asarray(counts, dtype=np.int64)[:, None]
    return sample_count_distribution(counts if batch else counts[0], max_count, credible)
