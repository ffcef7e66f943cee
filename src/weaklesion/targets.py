"""Training targets made from point labels.

A point label is a lesion centre in voxel coordinates, (z, y, x) in 3D or (y, x) in 2D.
Each lesion becomes a Gaussian of mass 1, so a heatmap sums to the number of lesions and
its local mass is an expected count; distance maps are the alternative targets of the
same paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def gaussian_window(
    center: Sequence[float],
    sigma: Sequence[float],
    shape: Sequence[int],
    truncate: float = 4.0,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Values of a mass-1 Gaussian in the window around its centre, clipped to the image.

    The Gaussian is the normal density ``prod_a exp(-(x_a - c_a)^2 / (2 s_a^2)) /
    sqrt(2 pi s_a^2)`` sampled at voxel centres; for ``s_a >= 1`` voxel its samples over
    an unbounded grid sum to 1 within 1e-8, so it carries the mass of one lesion.

    Parameters
    ----------
    center : sequence of D floats
        Sub-voxel centre in voxel coordinates.
    sigma : sequence of D floats
        Standard deviation along each axis, in voxels.
    shape : sequence of D ints
        Shape of the image the window is clipped to.
    truncate : float
        Half-width of the window in standard deviations (rounded up to whole voxels).

    Returns
    -------
    window : tuple of D slices
        Where the values go in the image; empty slices if the window misses the image.
    values : ndarray, shape of the clipped window
        The Gaussian's density at those voxels, float64.

    Examples
    --------
    >>> window, values = gaussian_window((5.0, 5.0), (1.0, 1.0), (11, 11))
    >>> window
    (slice(1, 10, None), slice(1, 10, None))
    >>> print(f"{values.sum():.5f}")
    0.99999
    """
    window = []
    factors = []
    for c, s, size in zip(center, sigma, shape, strict=True):
        radius = math.ceil(truncate * s)
        middle = round(c)
        start, stop = max(middle - radius, 0), min(middle + radius + 1, size)
        offsets = np.arange(start, max(stop, start)) - c
        factors.append(np.exp(-0.5 * (offsets / s) ** 2) / (math.sqrt(2 * math.pi) * s))
        window.append(slice(start, max(stop, start)))
    values = factors[0]
    for factor in factors[1:]:
        values = np.multiply.outer(values, factor)
    return tuple(window), values
