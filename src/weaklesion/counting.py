"""Exact, differentiable count distributions from probability maps.

Segmentation-consistent probabilistic counting (Schroeter, Myers-Colet et al., MIDL
2022): a probability map is binarised at a *low* threshold (0.1 by default), each
connected component is a candidate lesion, and the lesion exists with probability
``p_k``, the largest voxel probability in region ``k``. Taking the regions as
independent, the number of lesions follows the Poisson-binomial distribution of
``p_1 .. p_K``, computed here exactly.

Every step from the map to the count likelihood is differentiable in torch, and the
gradient reaches each region's arg-max voxel only, so :class:`CountLoss` can train any
segmentation network next to its usual loss, while :func:`count_distribution` works post
hoc on any model's output, including probability maps made by other tools.

- :func:`poisson_binomial_pmf` -- exact pmf of a sum of independent Bernoulli variables;
- :func:`candidate_regions` -- regions, their existence probabilities, sizes, arg-maxima;
- :func:`count_distribution` -- pmf, mean, mode, variance, entropy, credible interval;
- :func:`count_statistics` -- the same statistics from any pmf (e.g. MC dropout);
- :func:`count_nll` and :class:`CountLoss` -- negative log-likelihood of count labels;
  :func:`existence_probabilities` -- the differentiable region maxima they score;
- :func:`component_count` and :func:`sample_count_distribution` -- post-hoc
  baselines: the connected-component count at a threshold, and the histogram of counts
  over samples (drawn with MC dropout by
  :func:`weaklesion.uncertainty.mc_dropout_count_distribution`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cc3d
import numpy as np
import torch
import torch.nn.functional as F

from weaklesion._validation import check_finite, check_probabilities, check_spatial

__all__ = [
    "CandidateRegions",
    "CountDistribution",
    "CountLoss",
    "candidate_regions",
    "component_count",
    "count_distribution",
    "count_nll",
    "count_statistics",
    "existence_probabilities",
    "poisson_binomial_pmf",
    "sample_count_distribution",
]

ArrayLike = np.ndarray | torch.Tensor

# Coefficients of the left factor are taken this many at a time in one matrix product;
# 16 to 32 was fastest on CPU over K = 10 .. 2000 and batches of 1 .. 64.
_BLOCK = 32
_CONNECTIVITY = {2: (4, 8), 3: (6, 18, 26)}
_REDUCTIONS = ("mean", "sum", "none")
# Slack when testing an interval's mass against the credible level, for rounding.
_MASS_SLACK = 1e-9


# ----------------------------------------------------------------------------------
# Poisson-binomial distribution
# ----------------------------------------------------------------------------------


def _check_max_count(max_count: int | None) -> None:
    if max_count is None:
        return
    if isinstance(max_count, bool) or not isinstance(max_count, int | np.integer):
        raise ValueError(f"max_count: got {max_count!r}; expected a non-negative integer")
    if max_count < 0:
        raise ValueError(f"max_count: got {max_count}; expected a non-negative integer")


def _absorb(coefficients: torch.Tensor, last: int) -> torch.Tensor:
    """Sum the coefficients of degree ``last`` and above into bin ``last``."""
    if coefficients.shape[-1] <= last + 1:
        return coefficients
    tail = coefficients[..., last:].sum(-1, keepdim=True)
    return torch.cat((coefficients[..., :last], tail), dim=-1)


def _shift_rows(rows: torch.Tensor, step: int) -> torch.Tensor:
    """Place row ``i`` of ``(..., n, w)`` at column ``i * step`` of ``(..., n, (n-1)*step + w)``.

    Zero-padding each row to ``width + step`` and reading the flat buffer back in rows
    that are ``step`` shorter moves every row ``step`` further right than the one above,
    without an index tensor or a Python loop.
    """
    n, width = rows.shape[-2:]
    out = (n - 1) * step + width
    flat = F.pad(rows, (0, out + step - width)).flatten(-2)
    return flat[..., : n * out].unflatten(-1, (n, out))


def _polynomial_product(a: torch.Tensor, b: torch.Tensor, last: int) -> torch.Tensor:
    """Coefficients of ``a(z) * b(z)`` for ``(..., La)`` and ``(..., Lb)``, absorbed at ``last``.

    ``a`` is cut into blocks of ``_BLOCK`` coefficients; one batched matrix product with
    the Toeplitz matrix of ``b`` convolves every block with ``b``, and the blocks' results
    are added at their offsets. Direct (not FFT) convolution keeps every coefficient a
    sum of non-negative terms, so small tail probabilities keep their relative accuracy.
    """
    length_a, length_b = a.shape[-1], b.shape[-1]
    block = min(_BLOCK, length_a)
    blocks = -(-length_a // block)
    a = F.pad(a, (0, blocks * block - length_a)).unflatten(-1, (blocks, block))
    toeplitz = _shift_rows(b.unsqueeze(-2).expand(*b.shape[:-1], block, length_b), 1)
    product = _shift_rows(a @ toeplitz, block).sum(-2)[..., : length_a + length_b - 1]
    return _absorb(product, last)


def poisson_binomial_pmf(p: ArrayLike, max_count: int | None = None) -> ArrayLike:
    """Exact pmf of the number of successes among independent Bernoulli trials.

    Parameters
    ----------
    p : (..., K) array or tensor
        Success probabilities in [0, 1]; the leading axes are a batch. Rows with fewer
        trials are padded with ``p = 0``: a trial that never succeeds leaves the
        distribution unchanged, so padding is exact and only adds bins of probability
        exactly 0 above the row's own K.
    max_count : int, optional
        If given, return the truncated pmf over ``0 .. max_count`` whose last bin holds
        the probability of ``max_count`` *or more* successes (an absorbing bin, as for
        count classes 0, 1, 2, 3, 4+). Costs O(K * max_count) instead of O(K^2).

    Returns
    -------
    pmf : (..., K + 1) or (..., max_count + 1) array or tensor
        ``pmf[..., k]`` is the probability of exactly ``k`` successes. NumPy (or list)
        input gives a float64 NumPy array; a tensor gives a tensor of its dtype and
        device, differentiable with respect to ``p``.

    Notes
    -----
    The pmf is the coefficient list of ``prod_k (1 - p_k + p_k z)``. The factors are
    multiplied pairwise in a balanced tree, about log2(K) batched steps with no Python
    loop over the batch or over K, each step a direct convolution done as a matrix
    product. The work is O(K^2) per row like the textbook recursion, but in a few large
    tensor operations; all terms are non-negative, so the result agrees with exact
    enumeration to rounding (about 1e-16 in float64 for K = 2000). On a GPU, float32
    matrix products follow ``torch.backends.cuda.matmul.allow_tf32``.

    Examples
    --------
    >>> poisson_binomial_pmf([0.5, 0.5])
    array([0.25, 0.5 , 0.25])
    >>> poisson_binomial_pmf([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]], max_count=2)
    array([[0.125, 0.375, 0.5  ],
           [0.   , 1.   , 0.   ]])
    >>> poisson_binomial_pmf(np.zeros((2, 0)))
    array([[1.],
           [1.]])
    """
    _check_max_count(max_count)
    probabilities, from_numpy = _as_float_tensor(p)
    if probabilities.ndim < 1:
        raise ValueError(f"p: has shape {tuple(probabilities.shape)}; expected (..., K)")
    check_probabilities(probabilities, "p")
    trials = probabilities.shape[-1]
    last = trials if max_count is None else int(max_count)
    if trials == 0:
        ones = probabilities.new_ones((*probabilities.shape[:-1], 1))
        pmf = F.pad(ones, (0, last))
        return pmf.numpy() if from_numpy else pmf
    factors = _absorb(torch.stack((1 - probabilities, probabilities), dim=-1), last)
    while factors.shape[-2] > 1:
        if factors.shape[-2] % 2:
            unit = F.pad(torch.ones_like(factors[..., :1, :1]), (0, factors.shape[-1] - 1))
            factors = torch.cat((factors, unit), dim=-2)
        factors = _polynomial_product(factors[..., 0::2, :], factors[..., 1::2, :], last)
    # With max_count above K fewer bins remain than asked for; the missing ones are 0.
    pmf = F.pad(factors[..., 0, :], (0, last + 1 - factors.shape[-1]))
    return pmf.numpy() if from_numpy else pmf


def _as_float_tensor(array: ArrayLike) -> tuple[torch.Tensor, bool]:
    """``array`` as a floating tensor, and whether it came from NumPy (or a list)."""
    if isinstance(array, torch.Tensor):
        return (array if array.is_floating_point() else array.double()), False
    return torch.from_numpy(np.array(array, dtype=np.float64)), True


# ----------------------------------------------------------------------------------
# Candidate regions
# ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CandidateRegions:
    """Connected regions of a thresholded probability map.

    Attributes
    ----------
    labels : int64 array or tensor, the map's spatial shape
        0 for background, ``1 .. K`` for the regions, numbered in raster (C) order of
        each region's first voxel, as :func:`scipy.ndimage.label` numbers them.
    probabilities : (K,) float array or tensor
        Existence probability of each region: its largest voxel probability. For a
        tensor map that requires grad, a differentiable tensor whose gradient flows to
        the arg-max voxels only.
    sizes : (K,) int64 array or tensor
        Number of voxels in each region.
    argmax : (K,) int64 array or tensor
        Flat (C-order) index of each region's largest voxel (the first one on ties);
        ``np.unravel_index(argmax, shape)`` gives voxel coordinates.
    """

    labels: ArrayLike
    probabilities: ArrayLike
    sizes: ArrayLike
    argmax: ArrayLike


def _check_region_options(
    spatial_dims: int, threshold: float, connectivity: int | None, min_size: int
) -> int:
    """Validate the region options; return the connectivity to use."""
    if not (isinstance(threshold, int | float | np.number) and 0 <= threshold <= 1):
        raise ValueError(f"threshold: got {threshold!r}; expected a number in [0, 1]")
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 1:
        raise ValueError(f"min_size: got {min_size!r}; expected a positive integer (voxels)")
    allowed = _CONNECTIVITY[spatial_dims]
    if connectivity is None:
        return allowed[-1]
    if connectivity not in allowed:
        raise ValueError(
            f"connectivity: got {connectivity!r}; expected one of {allowed} in {spatial_dims}D"
        )
    return int(connectivity)


def _numpy_values(array: ArrayLike) -> np.ndarray:
    """Detached CPU NumPy copy (or view) of a map's values."""
    if isinstance(array, torch.Tensor):
        array = array.detach()
        if array.dtype not in (torch.float32, torch.float64):
            array = array.double()
        return array.cpu().numpy()
    values = np.asarray(array)
    return values if values.dtype.kind == "f" else values.astype(np.float64)


def _label_regions(
    values: np.ndarray, threshold: float, connectivity: int, min_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, sizes and arg-max indices of the regions of ``values > threshold``."""
    foreground = values > threshold
    labels, count = cc3d.connected_components(
        foreground, connectivity=connectivity, return_N=True, out_dtype=np.uint64
    )
    labels = labels.view(np.int64)
    voxels = np.flatnonzero(foreground)
    region = labels.reshape(-1)[voxels]
    sizes = np.bincount(region, minlength=count + 1)[1:]
    # cc3d numbers regions in its own scan order (not raster order in 2D at 8-connectivity),
    # so order them by first voxel, dropping small ones in the same renumbering pass.
    first = np.full(count + 1, labels.size, dtype=np.int64)
    np.minimum.at(first, region, voxels)
    order = np.argsort(first[1:], kind="stable")
    order = order[sizes[order] >= min_size]
    if not np.array_equal(order, np.arange(count)):
        renumber = np.zeros(count + 1, dtype=np.int64)
        renumber[order + 1] = np.arange(1, len(order) + 1)
        labels, region, sizes, count = renumber[labels], renumber[region], sizes[order], len(order)
        voxels, region = voxels[region > 0], region[region > 0]
    voxel_values = values.reshape(-1)[voxels]
    # same dtype as the values: ufunc.at is fast only without casting
    peak = np.full(count + 1, -np.inf, dtype=voxel_values.dtype)
    np.maximum.at(peak, region, voxel_values)
    at_peak = voxel_values == peak[region]
    argmax = np.full(count + 1, values.size, dtype=np.int64)
    np.minimum.at(argmax, region[at_peak], voxels[at_peak])
    return labels, sizes.astype(np.int64), argmax[1:]


def candidate_regions(
    prob_map: ArrayLike,
    threshold: float = 0.1,
    connectivity: int | None = None,
    min_size: int = 1,
) -> CandidateRegions:
    """Connected regions of ``prob_map > threshold`` and their existence probabilities.

    Parameters
    ----------
    prob_map : (Y, X) or (Z, Y, X) array or tensor
        Voxel probabilities in [0, 1].
    threshold : float
        A voxel is foreground if its probability is strictly above ``threshold``. Keep it
        low: a region only has to *possibly* be a lesion; its maximum says how likely.
    connectivity : int, optional
        4 or 8 in 2D, 6, 18 or 26 in 3D; default 8 in 2D and 26 in 3D.
    min_size : int
        Regions with fewer voxels are dropped and the rest renumbered ``1 .. K``.

    Returns
    -------
    CandidateRegions
        ``labels``, ``probabilities``, ``sizes``, ``argmax``; NumPy arrays for NumPy
        input, tensors on the map's device for a tensor (``probabilities`` gathered from
        the map itself, so differentiable).

    Notes
    -----
    Labelling runs on the CPU with ``cc3d.connected_components``; the region maxima
    and arg-maxima are one vectorised pass over the foreground voxels.

    Examples
    --------
    >>> prob_map = np.array([[0.0, 0.3, 0.0, 0.0],
    ...                      [0.0, 0.8, 0.0, 0.6],
    ...                      [0.0, 0.0, 0.0, 0.05]])
    >>> regions = candidate_regions(prob_map)
    >>> regions.labels
    array([[0, 1, 0, 0],
           [0, 1, 0, 2],
           [0, 0, 0, 0]])
    >>> regions.probabilities, regions.sizes, regions.argmax
    (array([0.8, 0.6]), array([2, 1]), array([5, 7]))
    >>> candidate_regions(prob_map, min_size=2).probabilities
    array([0.8])
    """
    if not isinstance(prob_map, torch.Tensor):
        prob_map = np.asarray(prob_map)
    check_spatial(prob_map, "prob_map")
    connectivity = _check_region_options(prob_map.ndim, threshold, connectivity, min_size)
    values = _numpy_values(prob_map)
    check_probabilities(values, "prob_map")
    labels, sizes, argmax = _label_regions(values, threshold, connectivity, min_size)
    if not isinstance(prob_map, torch.Tensor):
        return CandidateRegions(labels, values.reshape(-1)[argmax], sizes, argmax)
    device = prob_map.device
    index = torch.from_numpy(argmax).to(device)
    flat = prob_map.reshape(-1)
    return CandidateRegions(
        labels=torch.from_numpy(labels).to(device),
        probabilities=flat[index] if flat.is_floating_point() else flat[index].double(),
        sizes=torch.from_numpy(sizes).to(device),
        argmax=index,
    )


# ----------------------------------------------------------------------------------
# Count distributions and their statistics
# ----------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------
# Count likelihood for training
# ----------------------------------------------------------------------------------


def _check_counts(counts: ArrayLike, n: int, device: torch.device) -> torch.Tensor:
    """Counts as an int64 tensor of shape ``(n,)``."""
    values = _numpy_values(counts) if isinstance(counts, torch.Tensor) else np.asarray(counts)
    if values.shape != (n,):
        raise ValueError(f"counts: has shape {values.shape}; expected ({n},), one per map")
    if values.dtype.kind not in "iuf":
        raise ValueError(f"counts: has dtype {values.dtype}; expected non-negative integers")
    check_finite(values, "counts")
    bad = (values < 0) | (values != np.round(values))
    if np.any(bad):
        raise ValueError(
            f"counts: entry {int(np.argmax(bad))} is {values[np.argmax(bad)].item()}; "
            "expected non-negative integers"
        )
    return torch.from_numpy(values.astype(np.int64)).to(device)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: got {reduction!r}; expected one of {_REDUCTIONS}")


def existence_probabilities(
    prob_maps: torch.Tensor,
    threshold: float = 0.1,
    connectivity: int | None = None,
    min_size: int = 1,
) -> torch.Tensor:
    """Differentiable existence probabilities of the candidate regions of a batch of maps.

    Parameters
    ----------
    prob_maps : (N, Y, X) or (N, Z, Y, X) float tensor
        Voxel probabilities in [0, 1], one map per row.
    threshold, connectivity, min_size
        As in :func:`candidate_regions`.

    Returns
    -------
    existence : (N, K) float tensor
        Each region's largest voxel probability, gathered from ``prob_maps`` (so the
        gradient reaches the arg-max voxels only), padded with 0 where a map has fewer
        than ``K``, the most regions of any map: ready for :func:`count_nll` or
        :func:`poisson_binomial_pmf`.

    Examples
    --------
    >>> prob_maps = torch.zeros(2, 6, 6)
    >>> prob_maps[0, 1, 1], prob_maps[0, 4, 4], prob_maps[1, 2, 2] = 0.9, 0.5, 0.2
    >>> existence_probabilities(prob_maps)
    tensor([[0.9000, 0.5000],
            [0.2000, 0.0000]])
    """
    check_spatial(prob_maps, "prob_maps", dims=(3, 4))
    connectivity = _check_region_options(prob_maps.ndim - 1, threshold, connectivity, min_size)
    values = _numpy_values(prob_maps)
    check_probabilities(values, "prob_maps")
    index, valid = _region_peaks(values, threshold, connectivity, min_size)
    flat = prob_maps.reshape(len(prob_maps), math.prod(prob_maps.shape[1:]))
    index = torch.from_numpy(index).to(flat.device)
    valid = torch.from_numpy(valid).to(flat.device)
    return torch.where(valid, flat.gather(1, index), 0.0)


def count_nll(
    probabilities: ArrayLike,
    counts: ArrayLike,
    max_count: int | None = None,
    reduction: str = "mean",
) -> ArrayLike:
    """Negative log-likelihood of count labels under the Poisson-binomial distribution.

    Parameters
    ----------
    probabilities : (N, K) array or tensor
        Existence probabilities of each map's regions, padded with 0 where a map has
        fewer than K regions (exact, see :func:`poisson_binomial_pmf`).
    counts : (N,) array, tensor or sequence
        Non-negative integer count labels.
    max_count : int, optional
        Count bins ``0 .. max_count`` with an absorbing last bin: a label of
        ``max_count`` or more is scored by the probability of "``max_count`` or more".
    reduction : {"mean", "sum", "none"}
        How the ``N`` losses are combined.

    Returns
    -------
    loss : scalar or (N,) array or tensor
        ``-log P(count = label)`` in nats, of the input's dtype (NumPy in, NumPy out).
        The likelihood is computed in float64, so that unlikely counts do not underflow
        in float32, and clamped at the smallest positive float64 (loss at most about
        708) where it is 0, e.g. for a label above the number of regions: such a map
        adds a constant with no gradient.

    Examples
    --------
    >>> p = torch.tensor([[0.9, 0.5], [0.2, 0.0]], requires_grad=True)
    >>> loss = count_nll(p, [2, 0], reduction="none")
    >>> print(np.round(loss.detach().numpy(), 4))
    [0.7985 0.2231]
    >>> loss.sum().backward()
    >>> print(np.round(p.grad.numpy(), 4))
    [[-1.1111 -2.    ]
     [ 1.25    1.    ]]
    """
    _check_max_count(max_count)
    _check_reduction(reduction)
    probs, from_numpy = _as_float_tensor(probabilities)
    if probs.ndim != 2:
        raise ValueError(f"probabilities: has shape {tuple(probs.shape)}; expected (N, K)")
    labels = _check_counts(counts, probs.shape[0], probs.device)
    pmf = poisson_binomial_pmf(probs.double(), max_count)
    if max_count is not None:
        labels = labels.clamp(max=max_count)
    bins = pmf.shape[-1]
    likelihood = pmf.gather(1, labels.clamp(max=bins - 1)[:, None])[:, 0]
    likelihood = torch.where(labels < bins, likelihood, 0.0)
    loss = -torch.log(likelihood.clamp_min(torch.finfo(torch.float64).tiny))
    if reduction != "none":
        loss = loss.sum() if reduction == "sum" else loss.mean()
    loss = loss.to(probs.dtype)
    return loss.detach().numpy() if from_numpy else loss


class CountLoss(torch.nn.Module):
    """Count negative log-likelihood of probability maps, usable as a training loss.

    Each map is cut into candidate regions (:func:`candidate_regions`) and scored by
    :func:`count_nll` with its region maxima as existence probabilities. The gradient
    reaches each region's arg-max voxel and no other voxel.

    Parameters
    ----------
    spatial_dims : int
        2 or 3; tells ``(N, 1, Y, X)`` from ``(N, Z, Y, X)``.
    threshold, connectivity, min_size
        As in :func:`candidate_regions`.
    max_count : int, optional
        Count bins ``0 .. max_count``, the last one "``max_count`` or more".
    reduction : {"mean", "sum", "none"}
        How the per-map losses are combined.

    Examples
    --------
    >>> prob_maps = torch.zeros(2, 1, 6, 6)
    >>> prob_maps[0, 0, 1, 1], prob_maps[0, 0, 4, 4], prob_maps[1, 0, 2, 2] = 0.9, 0.5, 0.2
    >>> _ = prob_maps.requires_grad_()
    >>> loss = CountLoss(spatial_dims=2)(prob_maps, torch.tensor([2, 0]))
    >>> round(loss.item(), 4)
    0.5108
    >>> loss.backward()
    >>> torch.nonzero(prob_maps.grad).tolist()
    [[0, 0, 1, 1], [0, 0, 4, 4], [1, 0, 2, 2]]
    """

    def __init__(
        self,
        spatial_dims: int,
        threshold: float = 0.1,
        connectivity: int | None = None,
        min_size: int = 1,
        max_count: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONNECTIVITY:
            raise ValueError(f"spatial_dims: got {spatial_dims!r}; expected 2 or 3")
        self.connectivity = _check_region_options(spatial_dims, threshold, connectivity, min_size)
        _check_max_count(max_count)
        _check_reduction(reduction)
        self.spatial_dims = spatial_dims
        self.threshold = threshold
        self.min_size = min_size
        self.max_count = max_count
        self.reduction = reduction

    def forward(self, prob_maps: torch.Tensor, counts: ArrayLike) -> torch.Tensor:
        """Loss of ``(N, *spatial)`` or ``(N, 1, *spatial)`` maps given ``(N,)`` counts."""
        if prob_maps.ndim == self.spatial_dims + 2 and prob_maps.shape[1] == 1:
            prob_maps = prob_maps[:, 0]
        if prob_maps.ndim != self.spatial_dims + 1:
            raise ValueError(
                f"prob_maps: has shape {tuple(prob_maps.shape)}; expected (N, *spatial) or "
                f"(N, 1, *spatial) with {self.spatial_dims} spatial axes"
            )
        existence = existence_probabilities(
            prob_maps, self.threshold, self.connectivity, self.min_size
        )
        return count_nll(existence, counts, self.max_count, self.reduction)


# ----------------------------------------------------------------------------------
# Post-hoc count baselines
# ----------------------------------------------------------------------------------


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
