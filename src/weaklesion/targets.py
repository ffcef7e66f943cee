"""Training targets made from point labels.

A point label is a lesion centre in voxel coordinates, (z, y, x) in 3D or (y, x) in 2D.
Each lesion becomes a Gaussian of mass 1, so a heatmap sums to the number of lesions and
its local mass is an expected count; distance maps are the alternative targets of the
same paper.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from weaklesion._validation import axis_spacing, check_finite, check_points, check_spatial


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


def _positive_per_axis(value: float | Sequence[float], dims: int, name: str) -> np.ndarray:
    values = np.asarray(value, dtype=float)
    if values.ndim > 1 or (values.ndim == 1 and values.size != dims):
        raise ValueError(f"{name}: got {value!r}; expected a number or {dims} numbers")
    values = np.broadcast_to(values, (dims,)).copy()
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name}: got {value!r}; expected positive finite numbers")
    return values


def _spatial_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, ...]:
    sizes = tuple(int(size) for size in shape)
    if len(sizes) not in (2, 3) or any(size < 0 for size in sizes):
        raise ValueError(f"{name}: got {tuple(shape)}; expected 2 or 3 non-negative sizes")
    return sizes


def gaussian_heatmap(
    points: np.ndarray,
    shape: Sequence[int],
    sigma: float | Sequence[float],
    spacing: float | Sequence[float] | None = None,
    truncate: float = 4.0,
    dtype: npt.DTypeLike = np.float32,
) -> np.ndarray:
    """Sum of mass-1 Gaussians, one per point: the heatmap regression target.

    Each point adds the values :func:`gaussian_window` gives it (the normal density
    sampled at voxel centres, truncated ``truncate`` standard deviations from the voxel
    nearest the point), so the map sums to the number of points and its mass in a
    region is the expected lesion count there. Mass that would fall outside the image
    is lost, so a point near the border contributes less than 1.

    Parameters
    ----------
    points : (N, D) array of float
        Lesion centres in voxel coordinates, (z, y, x) or (y, x), each inside the
        image (``[-0.5, size - 0.5]`` along every axis).
    shape : sequence of D ints
        Spatial shape of the image, D = 2 or 3.
    sigma : float or sequence of D floats
        Standard deviation of each Gaussian, per axis or for all axes: in voxels when
        ``spacing`` is None, in mm otherwise (then ``sigma / spacing`` voxels per axis).
    spacing : float or sequence of D floats, optional
        Voxel size in mm along each axis.
    truncate : float
        Window half-width in standard deviations; beyond it the density is set to 0.
    dtype : numpy dtype
        Floating type of the result; sums are accumulated in float64.

    Returns
    -------
    heatmap : ndarray of ``shape`` and ``dtype``
        All zeros if there are no points.

    Notes
    -----
    The per-axis factors of all windows are computed at once; each point then adds
    its window (an outer product of its factors) to the map, so the cost is the
    number of points times the window size, never the image size per point.

    Examples
    --------
    >>> heatmap = gaussian_heatmap([[4.0, 4.0], [4.0, 12.0]], (9, 17), sigma=1.0)
    >>> heatmap.shape, heatmap.dtype
    ((9, 17), dtype('float32'))
    >>> print(f"{heatmap.sum():.4f} {heatmap[4, 4]:.4f} {heatmap[4, 8]:.6f}")
    2.0000 0.1592 0.000107
    """
    sizes = _spatial_shape(shape)
    dims = len(sizes)
    points = check_points(points, sizes, "points")
    sigma_voxels = _positive_per_axis(sigma, dims, "sigma") / axis_spacing(spacing, dims, "spacing")
    if not (math.isfinite(truncate) and truncate > 0):
        raise ValueError(f"truncate: got {truncate!r}; expected a positive number")
    heatmap = np.zeros(sizes, dtype=np.float64)
    if len(points) == 0 or heatmap.size == 0:
        return heatmap.astype(dtype)

    starts, factors = [], []
    for axis, s in enumerate(sigma_voxels):
        radius = math.ceil(truncate * s)
        first = np.round(points[:, axis]).astype(np.int64) - radius
        offsets = first[:, None] + np.arange(2 * radius + 1) - points[:, axis, None]
        factors.append(np.exp(-0.5 * (offsets / s) ** 2) / (math.sqrt(2 * math.pi) * s))
        starts.append(first)
    starts = np.stack(starts, axis=1)
    widths = np.array([factor.shape[1] for factor in factors])
    low = np.maximum(-starts, 0)
    high = np.minimum(np.asarray(sizes) - starts, widths)
    # Plain Python ints keep the per-point work (slicing and one add) cheap.
    for i, (start, lo, hi) in enumerate(
        zip(starts.tolist(), low.tolist(), high.tolist(), strict=True)
    ):
        window = tuple(slice(s + a, s + b) for s, a, b in zip(start, lo, hi, strict=True))
        values = factors[0][i, lo[0] : hi[0]]
        for axis in range(1, dims):
            values = np.multiply.outer(values, factors[axis][i, lo[axis] : hi[axis]])
        heatmap[window] += values
    return heatmap.astype(dtype, copy=False)


def euclidean_distance_map(
    points: np.ndarray,
    shape: Sequence[int],
    spacing: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Distance from every voxel centre to the nearest point.

    The distance is exact to the real-valued (sub-voxel) point, not to the voxel it
    falls in. Up to 128 points, the squared distance to each point is formed from
    per-axis terms over the whole image and the minimum kept; beyond that, a k-d tree
    of the points is queried with every voxel centre.

    Parameters
    ----------
    points : (N, D) array of float
        Lesion centres in voxel coordinates, each inside the image.
    shape : sequence of D ints
        Spatial shape of the image, D = 2 or 3.
    spacing : float or sequence of D floats, optional
        Voxel size in mm along each axis; distances are in mm when given, in voxels
        otherwise.

    Returns
    -------
    distance : float64 ndarray of ``shape``
        ``+inf`` everywhere if there are no points.

    Notes
    -----
    ``scipy.ndimage.distance_transform_edt`` on the voxels nearest the points is off by
    up to half a voxel diagonal near each point. On 64 x 192 x 192 voxels the
    per-point minimum takes about 6 ms a point and the k-d tree 1 to 3 s whatever the
    number of points, hence the switch (see ``benchmarks/bench_targets.py``).

    Examples
    --------
    >>> distance = euclidean_distance_map([[0.0, 0.5]], (2, 3))
    >>> distance.round(3)
    array([[0.5  , 0.5  , 1.5  ],
           [1.118, 1.118, 1.803]])
    """
    sizes = _spatial_shape(shape)
    points = check_points(points, sizes, "points")
    scale = axis_spacing(spacing, len(sizes), "spacing")
    if len(points) == 0:
        return np.full(sizes, np.inf)
    if len(points) <= 128:
        axes = [np.arange(size) * s for size, s in zip(sizes, scale, strict=True)]
        squared = np.full(sizes, np.inf)
        for point in points * scale:
            terms = [(axis - c) ** 2 for axis, c in zip(axes, point, strict=True)]
            np.minimum(squared, functools.reduce(np.add.outer, terms), out=squared)
        return np.sqrt(squared)
    tree = cKDTree(points * scale)
    grid = np.stack(
        np.meshgrid(
            *(np.arange(size) * s for size, s in zip(sizes, scale, strict=True)), indexing="ij"
        ),
        axis=-1,
    )
    distance, _ = tree.query(grid.reshape(-1, len(sizes)), workers=-1)
    return distance.reshape(sizes)


def _geodesic_inputs(points, image, spacing, weight):
    """Validate the geodesic inputs; return (channels, seeds, spacing)."""
    image_values = np.asarray(image)
    points_array = np.asarray(points, dtype=float)
    dims = points_array.shape[1] if points_array.ndim == 2 and points_array.shape[1] else None
    if dims is not None and image_values.ndim == dims + 1:
        channels = image_values
    else:
        check_spatial(image_values, "image")
        channels = image_values[None]
    check_spatial(channels[0], "image")
    check_finite(channels, "image")
    sizes = channels.shape[1:]
    points_array = check_points(points_array, sizes, "points")
    if not (0.0 <= weight <= 1.0):
        raise ValueError(f"weight: got {weight!r}; expected a number in [0, 1]")
    seeds = np.clip(np.round(points_array).astype(np.int64), 0, np.asarray(sizes) - 1)
    return channels.astype(np.float64), seeds, axis_spacing(spacing, len(sizes), "spacing")


def _step_cost(current, neighbour, step_length, weight, out):
    """Write the cost of steps into ``out``: (1 - weight) * length + weight * |change|.

    ``current`` and ``neighbour`` are (C, ...) intensities at the two ends of each step.
    """
    if not weight:
        out[...] = step_length
        return out
    if len(current) == 1:
        np.subtract(current[0], neighbour[0], out=out)
        np.abs(out, out=out)
    else:
        np.sqrt(((current - neighbour) ** 2).sum(axis=0), out=out)
    out *= weight
    out += (1.0 - weight) * step_length
    return out


def _raster_geodesic(channels, seeds, scale, weight, iterations):
    sizes = channels.shape[1:]
    dims = len(sizes)
    # One voxel of +inf padding lets every neighbour shift be a plain slice.
    distance = np.full(tuple(size + 2 for size in sizes), np.inf)
    distance[tuple((seeds + 1).T)] = 0.0
    padded = np.pad(channels, [(0, 0)] + [(1, 1)] * dims, mode="edge")
    offsets = list(itertools.product((-1, 0, 1), repeat=dims - 1))
    # One buffer per offset, reused for every axis and round, bounds the memory to
    # 3^(D-1) arrays of the image's size.
    edge_storage = [np.empty(distance.size) for _ in offsets]
    rounds = 0
    while iterations is None or rounds < iterations:
        before = distance.copy()
        for axis in range(dims):
            others = [a for a in range(dims) if a != axis]
            dist = np.moveaxis(distance, axis, 0)
            image = np.moveaxis(padded, axis + 1, 1)
            inner = tuple(slice(1, sizes[a] + 1) for a in others)
            shift = {
                offset: tuple(
                    slice(1 + o, sizes[a] + 1 + o) for o, a in zip(offset, others, strict=True)
                )
                for offset in offsets
            }
            # edges[o][k] holds the cost between voxel q of slice k + 1 and voxel q + o of
            # slice k, padded like ``dist`` across the slice so it can be shifted too.
            edges = {}
            for offset, storage in zip(offsets, edge_storage, strict=True):
                length = math.hypot(
                    scale[axis], *(o * scale[a] for o, a in zip(offset, others, strict=True))
                )
                cost = storage[: (sizes[axis] - 1) * math.prod(dist.shape[1:])]
                cost = cost.reshape(sizes[axis] - 1, *dist.shape[1:])
                for side in range(1, dims):
                    cost[(slice(None),) * side + (0,)] = np.inf
                    cost[(slice(None),) * side + (-1,)] = np.inf
                _step_cost(
                    image[(slice(None), slice(2, -1), *inner)],
                    image[(slice(None), slice(1, -2), *shift[offset])],
                    length,
                    weight,
                    out=cost[(slice(None), *inner)],
                )
                edges[offset] = cost
            buffer = np.empty(dist.shape[1:])[inner]
            for k in range(1, sizes[axis]):
                current = dist[(k + 1, *inner)]
                for offset in offsets:
                    np.add(dist[(k, *shift[offset])], edges[offset][(k - 1, *inner)], out=buffer)
                    np.minimum(current, buffer, out=current)
            for k in range(sizes[axis] - 2, -1, -1):
                current = dist[(k + 1, *inner)]
                for offset in offsets:
                    back = tuple(-o for o in offset)
                    np.add(
                        dist[(k + 2, *shift[offset])], edges[back][(k, *shift[offset])], out=buffer
                    )
                    np.minimum(current, buffer, out=current)
        rounds += 1
        if np.array_equal(before, distance):
            break
    return distance[tuple(slice(1, -1) for _ in sizes)]


def _dijkstra_geodesic(channels, seeds, scale, weight):
    sizes = channels.shape[1:]
    dims = len(sizes)
    index = np.arange(int(np.prod(sizes))).reshape(sizes)
    rows, cols, costs = [], [], []
    # Half of the neighbourhood: the graph is undirected, each edge is listed once.
    for offset in itertools.product((-1, 0, 1), repeat=dims):
        if offset <= (0,) * dims:
            continue
        here = tuple(
            slice(max(-o, 0), size - max(o, 0)) for o, size in zip(offset, sizes, strict=True)
        )
        there = tuple(
            slice(max(o, 0), size + min(o, 0)) for o, size in zip(offset, sizes, strict=True)
        )
        step = float(np.sqrt(np.sum((np.asarray(offset) * scale) ** 2)))
        rows.append(index[here].ravel())
        cols.append(index[there].ravel())
        cost = np.empty(index[here].shape)
        _step_cost(
            channels[(slice(None), *here)], channels[(slice(None), *there)], step, weight, cost
        )
        costs.append(cost.ravel())
    graph = csr_matrix(
        (np.concatenate(costs), (np.concatenate(rows), np.concatenate(cols))),
        shape=(index.size, index.size),
    )
    distance = dijkstra(graph, directed=False, indices=index[tuple(seeds.T)], min_only=True)
    return distance.reshape(sizes)


def geodesic_distance_map(
    points: np.ndarray,
    image: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    weight: float = 1.0,
    method: str = "raster",
    iterations: int | None = None,
) -> np.ndarray:
    """Generalised geodesic distance from every voxel to the nearest point.

    A path moves between neighbouring voxels (8 neighbours in 2D, 26 in 3D) and each
    step from voxel ``p`` to voxel ``q`` costs
    ``(1 - weight) * |q - p| + weight * |I(q) - I(p)|``, the step length ``|q - p|`` in
    mm (voxels when ``spacing`` is None) and the intensity change in image units: a
    path costs ``1 - weight`` times its length plus ``weight`` times the total intensity
    change along it. The distance of a voxel is the cost of the cheapest path to it
    from the voxel nearest any point. ``weight=0`` gives the chamfer distance of the
    voxel grid; ``weight=1`` counts intensity change only, so a flat region costs
    nothing to cross and an edge costs its contrast. Scale the image (e.g. to [0, 1]
    or unit variance) so that intermediate weights balance the two terms. This is the
    cost FastGeodis uses, so its results converge to these.

    Parameters
    ----------
    points : (N, D) array of float
        Lesion centres in voxel coordinates, each inside the image; each is rounded to
        its nearest voxel, which gets distance 0.
    image : (Z, Y, X) or (Y, X) array, or channel-first (C, Z, Y, X) or (C, Y, X)
        Intensities. An array with one more axis than ``points`` has columns is
        channel-first; the intensity change of a step is then the Euclidean norm of
        the change over channels.
    spacing : float or sequence of D floats, optional
        Voxel size in mm along each axis.
    weight : float in [0, 1]
        Weight λ of the intensity term against the spatial term.
    method : {"raster", "dijkstra"}
        ``"raster"`` sweeps the image forwards and backwards along each axis in turn,
        vectorised over the other axes, until a round changes nothing;
        ``"dijkstra"`` runs ``scipy.sparse.csgraph.dijkstra`` on the voxel graph. Both
        give the same distances (the shortest paths of the same graph). The raster
        scan peaks at about 130 bytes a voxel in 3D against about 850 for the graph,
        and is 1.4 to 2.5 times faster at ``weight=0.5``; at ``weight=1`` on a noisy
        image its paths wind and it needs about 16 rounds, so Dijkstra is about 1.5
        times faster there (``benchmarks/bench_targets.py``, up to 64 x 128 x 128).
    iterations : int, optional
        For ``"raster"``: stop after this many rounds (of 2·D sweeps), giving an upper
        bound of the distance; None runs until nothing changes. Four rounds give the
        same result as FastGeodis's usual 4 iterations (within 6 % of the largest
        distance at ``weight=1`` on a noisy image, exact at ``weight=0.5`` there).

    Returns
    -------
    distance : float64 ndarray of the image's spatial shape
        ``+inf`` everywhere if there are no points.

    Notes
    -----
    With ``weight=0`` paths are made of steps of 1, √2 and √3 voxels, so the result is
    the chamfer distance, never below the Euclidean distance to the seed voxel and
    exact along axes and diagonals; with isotropic voxels it exceeds the Euclidean
    distance by at most 8.2 % in 2D (``sqrt(4 - 2 sqrt(2))``) and 12.8 % in 3D. Use
    :func:`euclidean_distance_map` for exact Euclidean distances.

    Examples
    --------
    A wall of contrast 10 one voxel thick; crossing it costs its contrast twice:

    >>> image = np.zeros((3, 5))
    >>> image[:, 3] = 10.0
    >>> geodesic_distance_map([[1.0, 0.0]], image, weight=0.5).round(2)
    array([[ 0.5 ,  0.71,  1.21,  6.71, 12.21],
           [ 0.  ,  0.5 ,  1.  ,  6.5 , 12.  ],
           [ 0.5 ,  0.71,  1.21,  6.71, 12.21]])
    """
    channels, seeds, scale = _geodesic_inputs(points, image, spacing, weight)
    if len(seeds) == 0:
        return np.full(channels.shape[1:], np.inf)
    if method == "raster":
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations: got {iterations!r}; expected a positive integer")
        return _raster_geodesic(channels, seeds, scale, weight, iterations)
    if method == "dijkstra":
        return _dijkstra_geodesic(channels, seeds, scale, weight)
    raise ValueError(f"method: got {method!r}; expected 'raster' or 'dijkstra'")


def distance_decay(distance: np.ndarray, scale: float) -> np.ndarray:
    """Turn a distance map into a regression target: ``exp(-distance / scale)``.

    The target is 1 at a point, halves every ``scale * ln 2`` and tends to 0 far away
    (``+inf`` maps to 0). An exponential is used rather than a cut-off (such as
    ``max(0, 1 - d / scale)``) so that every voxel keeps a non-zero, strictly decreasing
    value: the network sees a gradient towards the nearest lesion everywhere, and the
    one ``scale`` (in the distance's units, mm or voxels; about a lesion radius) is the
    only setting.

    Parameters
    ----------
    distance : ndarray of float
        Distances, non-negative, ``+inf`` allowed (no point).
    scale : float
        Decay length in the units of ``distance``; positive.

    Returns
    -------
    target : ndarray of the shape of ``distance``
        Values in [0, 1]; the dtype of ``distance`` if floating, float64 otherwise.

    Examples
    --------
    >>> distance_decay(np.array([0.0, 1.0, 2.0, np.inf]), scale=2.0).round(4)
    array([1.    , 0.6065, 0.3679, 0.    ])
    """
    values = np.asarray(distance)
    if not values.dtype.kind == "f":
        values = values.astype(np.float64)
    if np.isnan(values).any() or (values < 0).any():
        raise ValueError("distance: holds NaN or negative values; expected distances >= 0")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: got {scale!r}; expected a positive number")
    return np.exp(-values / values.dtype.type(scale))
