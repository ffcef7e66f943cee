"""Detectors that turn predicted maps into lesion detections.

Every detector returns a :class:`Detections` record: sub-voxel lesion centres in voxel
coordinates, (z, y, x) in 3D or (y, x) in 2D, one score per lesion, and named per-lesion
extras. Detections come sorted by score, highest first (ties keep the order in which the
detector found them).

- :func:`fit_gaussians` extracts lesions from a heatmap of mass-1 Gaussians by iterative
  Gaussian fitting; the score is the fitted amplitude, an existence probability.
- :func:`component_detections` thresholds a probability map and turns each connected
  component into one lesion.
- :func:`peak_detections` keeps the local maxima of a map (non-maximum suppression).
- :func:`count_guided_threshold` and :func:`count_guided_detections` pick the threshold at
  which the map has a given number of connected components.

Detections are written to and read from CSV (one file for many cases) and JSON; voxel
coordinates go with world coordinates in mm when an affine or a spacing is known.

One module per idea: :mod:`~weaklesion.detection.records` (the record and its files),
:mod:`~weaklesion.detection.gaussians` (iterative Gaussian fitting, with
:mod:`~weaklesion.detection.single_fit` and :mod:`~weaklesion.detection.refinement`);
connected components, peaks and count-guided thresholds are defined here. Every public
name is importable from :mod:`weaklesion.detection`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import cc3d
import numpy as np
from scipy import ndimage

from weaklesion._validation import ArrayLike
from weaklesion.detection._common import _CONNECTIVITIES, _FULL_CONNECTIVITY, _spatial_map
from weaklesion.detection.gaussians import fit_gaussians
from weaklesion.detection.records import Detections, read_detections_csv, write_detections_csv
from weaklesion.detection.single_fit import _fit_gaussian as _fit_gaussian

__all__ = [
    "Detections",
    "component_detections",
    "count_guided_detections",
    "count_guided_threshold",
    "fit_gaussians",
    "peak_detections",
    "read_detections_csv",
    "write_detections_csv",
]


def _connectivity(connectivity: int | None, dims: int) -> int:
    if connectivity is None:
        return _FULL_CONNECTIVITY[dims]
    if connectivity not in _CONNECTIVITIES[dims]:
        raise ValueError(
            f"connectivity: got {connectivity!r}; expected one of "
            f"{_CONNECTIVITIES[dims]} for a {dims}D map"
        )
    return int(connectivity)


def _components(
    values: np.ndarray,
    labels: np.ndarray,
    count: int,
    location: str,
    score: str,
) -> Detections:
    """One detection per label 1..count of ``labels`` over the map ``values``.

    ``location`` is "max", "center_of_mass" (weighted by ``values``) or "centroid".
    """
    dims = values.ndim
    if count == 0:
        return Detections.empty(dims, ["size"])
    voxels = np.flatnonzero(labels)
    owner = labels.reshape(-1)[voxels].astype(np.int64) - 1
    weights = values.reshape(-1)[voxels].astype(float)
    size = np.bincount(owner, minlength=count)
    if location == "max" or score == "max":
        # Stable sort by (label, -value): the first voxel of each label is its maximum,
        # the first in C order among equal maxima.
        order = np.lexsort((-weights, owner))
        firsts = order[np.r_[0, np.cumsum(size)[:-1]]]
        peak_value = weights[firsts]
    if location == "max":
        points = np.stack(np.unravel_index(voxels[firsts], values.shape), axis=1).astype(float)
    elif location == "centroid":
        coordinates = np.unravel_index(voxels, values.shape)
        points = np.stack([np.bincount(owner, c, count) / size for c in coordinates], axis=1)
    else:
        mass = np.bincount(owner, weights=weights, minlength=count)
        coordinates = np.unravel_index(voxels, values.shape)
        points = np.empty((count, dims))
        for axis, coordinate in enumerate(coordinates):
            weighted = np.bincount(owner, weights=weights * coordinate, minlength=count)
            plain = np.bincount(owner, weights=coordinate, minlength=count) / size
            # A component of zero mass has no weighted centre; use its geometric one.
            points[:, axis] = np.where(mass != 0, weighted / np.where(mass != 0, mass, 1), plain)
    if score == "max":
        scores = peak_value
    else:
        scores = np.bincount(owner, weights=weights, minlength=count) / size
    return Detections(points, scores, {"size": size}).sorted()


def component_detections(
    prob_map: ArrayLike,
    threshold: float = 0.5,
    connectivity: int | None = None,
    min_size: int = 1,
    location: Literal["max", "center_of_mass"] = "max",
    score: Literal["max", "mean"] = "max",
) -> Detections:
    """One detection per connected component of the map above a threshold.

    Parameters
    ----------
    prob_map : (Z, Y, X) or (Y, X) array or tensor
        Probability map (or any finite score map).
    threshold : float
        Voxels strictly above it are foreground.
    connectivity : int, optional
        Neighbourhood of the components: 6, 18 or 26 in 3D, 4 or 8 in 2D; default the
        full one (26 or 8).
    min_size : int
        Components with fewer voxels are dropped.
    location : {"max", "center_of_mass"}
        Place each detection at the component's maximum voxel (the first in C order
        among equal maxima) or at its centre of mass weighted by the map.
    score : {"max", "mean"}
        Score each detection by the component's maximum or mean value.

    Returns
    -------
    Detections
        Sorted by score, highest first; ``extras["size"]`` the component size in voxels.

    Examples
    --------
    >>> prob = np.array([[0.9, 0.8, 0.0, 0.0],
    ...                  [0.0, 0.0, 0.0, 0.6],
    ...                  [0.0, 0.0, 0.0, 0.7]])
    >>> found = component_detections(prob, threshold=0.5)
    >>> found.points, found.scores, found.extras["size"]
    (array([[0., 0.],
           [2., 3.]]), array([0.9, 0.7]), array([2, 2]))
    >>> component_detections(prob, location="center_of_mass", score="mean").points.round(3)
    array([[0.   , 0.471],
           [1.538, 3.   ]])
    """
    values = _spatial_map(prob_map, "prob_map")
    dims = values.ndim
    connectivity = _connectivity(connectivity, dims)
    if location not in ("max", "center_of_mass"):
        raise ValueError(f"location: got {location!r}; expected 'max' or 'center_of_mass'")
    if score not in ("max", "mean"):
        raise ValueError(f"score: got {score!r}; expected 'max' or 'mean'")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold: got {threshold!r}; expected a finite number")
    foreground = values > threshold
    if not foreground.any():
        return Detections.empty(dims, ["size"])
    labels, count = cc3d.connected_components(foreground, connectivity=connectivity, return_N=True)
    if min_size > 1:
        size = np.bincount(labels.reshape(-1), minlength=count + 1)
        keep = size >= min_size
        keep[0] = False
        relabel = np.where(keep, np.cumsum(keep), 0)
        labels, count = relabel[labels], int(keep.sum())
    return _components(values, labels, int(count), location, score)


def peak_detections(
    map: ArrayLike,
    size: int | Sequence[int] = 6,
    threshold: float | None = None,
    top_n: int | None = None,
    exclude_border: bool | int = False,
) -> Detections:
    """Local maxima of a map by non-maximum suppression, ranked by value.

    A voxel is a peak where it equals the maximum of the map over a box of ``size``
    voxels around it (``scipy.ndimage.maximum_filter``) and is strictly above
    ``threshold``. A plateau of equal, connected maxima (full connectivity) gives one
    peak at its centre, so a flat region never gives a crowd of detections.

    Parameters
    ----------
    map : (Z, Y, X) or (Y, X) array or tensor
        Score map (an attention map, a heatmap, a probability map), finite.
    size : int or sequence of D ints
        Size of the suppression box in voxels.
    threshold : float, optional
        Absolute level the peaks must exceed; by default the map's minimum, so a
        constant map has no peaks.
    top_n : int, optional
        Keep the ``top_n`` highest peaks (e.g. the rounded predicted count).
    exclude_border : bool or int
        Drop maxima closer than this many voxels to the border; ``True`` means
        ``size // 2`` (the box would leave the image).

    Returns
    -------
    Detections
        Peak centres, sorted by value (the score), highest first; ties in the order of
        their first voxel in C order.

    Examples
    --------
    >>> image = np.zeros((7, 9))
    >>> image[1, 1], image[5, 6] = 0.4, 0.8
    >>> image[3, 3:5] = 0.6  # a two-voxel plateau gives one peak between its voxels
    >>> found = peak_detections(image, size=3)
    >>> found.points, found.scores
    (array([[5. , 6. ],
           [3. , 3.5],
           [1. , 1. ]]), array([0.8, 0.6, 0.4]))
    >>> peak_detections(image, size=3, top_n=1).points
    array([[5., 6.]])
    """
    values = _spatial_map(map, "map")
    dims = values.ndim
    if top_n is not None and top_n < 0:
        raise ValueError(f"top_n: got {top_n}; expected a count >= 0")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold: got {threshold!r}; expected a finite number")
    sizes = np.asarray(size)
    if sizes.dtype.kind not in "iu" or sizes.size not in (1, dims) or np.any(sizes < 1):
        raise ValueError(f"size: got {size!r}; expected one or {dims} box sizes >= 1 voxel")
    margin = int(sizes.max()) // 2 if exclude_border is True else int(exclude_border)
    if margin < 0:
        raise ValueError(f"exclude_border: got {exclude_border!r}; expected >= 0 voxels")
    if values.size == 0 or top_n == 0:
        return Detections.empty(dims)
    level = values.min() if threshold is None else threshold
    peaks = (values == ndimage.maximum_filter(values, size=size, mode="nearest")) & (values > level)
    if margin:
        inner = np.zeros_like(peaks)
        inner[tuple(slice(margin, n - margin) for n in values.shape)] = True
        peaks &= inner
    if not peaks.any():
        return Detections.empty(dims)
    # Label connected peak voxels of equal value together: one detection per plateau.
    _, plateau_value = np.unique(values[peaks], return_inverse=True)
    plateau_id = np.zeros(values.shape, dtype=np.uint32)
    plateau_id[peaks] = plateau_value.ravel() + 1
    labels, count = cc3d.connected_components(
        plateau_id, connectivity=_FULL_CONNECTIVITY[dims], return_N=True
    )
    found = _components(values, labels, int(count), "centroid", "max")
    found = Detections(found.points, found.scores)
    return found if top_n is None else found[: int(top_n)]


def _component_count(values: np.ndarray, level: float, connectivity: int) -> int:
    return int(
        cc3d.connected_components(values > level, connectivity=connectivity, return_N=True)[1]
    )


def count_guided_threshold(
    map: ArrayLike,
    count: int,
    connectivity: int | None = None,
) -> float:
    """The threshold at which the map has ``count`` connected components above it.

    The GP-Unet rule (Dubost et al., MICCAI 2017): with ``count`` the predicted lesion
    count, choose the threshold so that the components of ``map > threshold`` number
    ``count``. Candidate thresholds are the map's distinct values (any threshold between
    two neighbouring values gives the same components as the lower one), searched from
    the top: doubling steps down the sorted values until the component count reaches
    ``count``, then bisection, so about ``2 log2(#values)`` labellings.

    Parameters
    ----------
    map : (Z, Y, X) or (Y, X) array or tensor
        Score map, finite.
    count : int
        Wanted number of components, >= 0.
    connectivity : int, optional
        As in :func:`component_detections`; default the full neighbourhood.

    Returns
    -------
    float
        The highest map value whose threshold gives ``count`` components. The search
        assumes the number of components grows as the threshold falls, which holds
        until components start to merge; where no threshold found gives exactly
        ``count`` (a level where several components appear at once, or a map with
        fewer peaks), it returns the threshold whose count is nearest, the higher
        threshold on a tie. ``count = 0`` gives the map's maximum (nothing above it).

    Examples
    --------
    >>> image = np.array([[0.9, 0.0, 0.5, 0.0, 0.7],
    ...                   [0.0, 0.0, 0.4, 0.0, 0.0]])
    >>> count_guided_threshold(image, 2), count_guided_threshold(image, 3)
    (0.5, 0.4)
    """
    values = _spatial_map(map, "map")
    connectivity = _connectivity(connectivity, values.ndim)
    if count < 0:
        raise ValueError(f"count: got {count}; expected a count >= 0")
    if values.size == 0:
        return 0.0
    levels = np.unique(values)[::-1]  # descending; threshold levels[j] keeps the top j values
    if count == 0 or len(levels) == 1:
        return float(levels[0])
    counts: dict[int, int] = {0: 0}

    def components(j: int) -> int:
        if j not in counts:
            counts[j] = _component_count(values, levels[j], connectivity)
        return counts[j]

    last = len(levels) - 1
    below, j = 0, 1
    while components(j) < count and j < last:
        below, j = j, min(2 * j, last)
    if components(j) >= count:
        above = j  # components(below) < count <= components(above)
        while above - below > 1:
            middle = (below + above) // 2
            if components(middle) >= count:
                above = middle
            else:
                below = middle
        candidates = [below, above]
    else:
        candidates = list(counts)
    best = min(candidates, key=lambda i: (abs(counts[i] - count), i))
    return float(levels[best])


def count_guided_detections(
    map: ArrayLike,
    count: int,
    connectivity: int | None = None,
    location: Literal["max", "center_of_mass"] = "max",
    score: Literal["max", "mean"] = "max",
) -> Detections:
    """The connected components at the count-guided threshold, as detections.

    See :func:`count_guided_threshold` for the threshold and
    :func:`component_detections` for ``location``, ``score`` and the extras.

    Examples
    --------
    >>> image = np.array([[0.9, 0.0, 0.5, 0.0, 0.7],
    ...                   [0.0, 0.0, 0.4, 0.0, 0.0]])
    >>> count_guided_detections(image, 2).points
    array([[0., 0.],
           [0., 4.]])
    """
    values = _spatial_map(map, "map")
    threshold = count_guided_threshold(values, count, connectivity)
    return component_detections(values, threshold, connectivity, 1, location, score)
