"""Candidate regions of a probability map: connected components above a threshold, their
existence probabilities (region maxima), sizes and arg-maxima."""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
import torch

from weaklesion._validation import check_probabilities, check_spatial
from weaklesion.counting._common import _CONNECTIVITY, ArrayLike


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
