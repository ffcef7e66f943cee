"""Training targets from points: Gaussian heatmaps and distance maps."""

import heapq
import itertools
import math

import numpy as np
import pytest

from weaklesion.targets import (
    distance_decay,
    euclidean_distance_map,
    gaussian_heatmap,
    gaussian_window,
    geodesic_distance_map,
)


def random_points(rng, shape, n, margin=0.0):
    low = np.full(len(shape), -0.5 + margin)
    high = np.asarray(shape, dtype=float) - 0.5 - margin
    return rng.uniform(low, high, size=(n, len(shape)))


def brute_force_heatmap(points, shape, sigma_voxels, truncate):
    """Normal density of every point at every voxel, zero outside its window."""
    grid = np.indices(shape, dtype=float)
    total = np.zeros(shape)
    for point in points:
        density = np.ones(shape)
        for axis, (c, s) in enumerate(zip(point, sigma_voxels, strict=True)):
            offset = grid[axis] - c
            inside = np.abs(grid[axis] - round(c)) <= math.ceil(truncate * s)
            density *= np.exp(-0.5 * (offset / s) ** 2) / (math.sqrt(2 * math.pi) * s) * inside
        total += density
    return total


# Gaussian heatmaps


@pytest.mark.parametrize(
    ("shape", "sigma"), [((40, 50), 1.0), ((40, 50), 2.5), ((24, 30, 28), (1.0, 1.5, 2.0))]
)
def test_heatmap_sums_to_the_number_of_interior_points(shape, sigma):
    rng = np.random.default_rng(0)
    points = random_points(rng, shape, 7, margin=4 * np.max(sigma) + 1)
    heatmap = gaussian_heatmap(points, shape, sigma, dtype=np.float64)
    assert abs(heatmap.sum() - len(points)) <= 1e-3 * len(points)


@pytest.mark.parametrize(
    ("shape", "sigma", "spacing", "truncate"),
    [
        ((17, 23), 1.5, None, 4.0),
        ((17, 23), 2.0, (2.0, 0.5), 3.0),
        ((9, 12, 14), (1.0, 1.3, 0.8), None, 4.0),
        ((9, 12, 14), 1.2, (1.5, 1.0, 0.6), 2.5),
    ],
)
def test_heatmap_equals_brute_force_density_within_the_truncation(shape, sigma, spacing, truncate):
    rng = np.random.default_rng(1)
    points = random_points(rng, shape, 6)
    points[0] = -0.5  # a corner point, half a voxel outside the first voxel centre
    heatmap = gaussian_heatmap(points, shape, sigma, spacing, truncate, dtype=np.float64)
    sigma_voxels = np.broadcast_to(sigma, len(shape)) / np.broadcast_to(
        1.0 if spacing is None else spacing, len(shape)
    )
    expected = brute_force_heatmap(points, shape, sigma_voxels, truncate)
    np.testing.assert_allclose(heatmap, expected, rtol=1e-12, atol=1e-15)
    untruncated = brute_force_heatmap(points, shape, sigma_voxels, 1e3)
    assert np.abs(heatmap - untruncated).max() < 2e-2 * untruncated.max()


def test_heatmap_of_one_point_is_its_gaussian_window():
    window, values = gaussian_window((3.2, 10.7, 0.4), (1.0, 2.0, 1.5), (8, 14, 9))
    expected = np.zeros((8, 14, 9))
    expected[window] = values
    heatmap = gaussian_heatmap([[3.2, 10.7, 0.4]], (8, 14, 9), (1.0, 2.0, 1.5), dtype=np.float64)
    np.testing.assert_array_equal(heatmap, expected)


def test_heatmap_peaks_at_each_point():
    points = np.array([[5.3, 7.8, 20.1], [14.0, 25.6, 6.4], [20.2, 8.0, 30.9]])
    heatmap = gaussian_heatmap(points, (26, 34, 38), 1.5)
    for point in points:
        nearest = tuple(np.round(point).astype(int))
        neighbourhood = tuple(slice(c - 3, c + 4) for c in nearest)
        local = heatmap[neighbourhood]
        assert np.unravel_index(np.argmax(local), local.shape) == (3, 3, 3)


def test_anisotropic_spacing_gives_per_axis_widths_sigma_over_spacing():
    shape = (15, 27, 45)
    centre = np.array([7.0, 13.0, 22.0])
    heatmap = gaussian_heatmap(centre[None], shape, sigma=2.0, spacing=(2.0, 1.0, 0.5))
    heatmap = heatmap.astype(np.float64) / heatmap.sum()
    grid = np.indices(shape, dtype=float)
    mean = [(heatmap * grid[axis]).sum() for axis in range(3)]
    variance = [(heatmap * (grid[axis] - centre[axis]) ** 2).sum() for axis in range(3)]
    np.testing.assert_allclose(mean, centre, atol=1e-6)
    np.testing.assert_allclose(variance, [1.0, 4.0, 16.0], rtol=5e-3)


def test_heatmap_is_truncated_at_the_border():
    shape = (20, 20, 20)
    heatmap = gaussian_heatmap([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]], shape, 2.0, dtype=np.float64)
    assert 1.0 < heatmap.sum() < 1.5
    corner = gaussian_heatmap([[0.0, 0.0, 0.0]], shape, 2.0, dtype=np.float64).sum()
    # Half of each axis's mass plus half of the centre row: ((1 + g(0)) / 2) ** 3.
    assert corner == pytest.approx(((1 + 1 / math.sqrt(2 * math.pi) / 2) / 2) ** 3, rel=1e-3)


def test_heatmap_in_2d_and_3d_has_the_requested_shape_and_dtype():
    assert gaussian_heatmap([[1.0, 2.0]], (5, 6), 1.0).shape == (5, 6)
    heatmap = gaussian_heatmap([[1.0, 2.0, 3.0]], (4, 5, 6), 1.0, dtype=np.float16)
    assert heatmap.shape == (4, 5, 6) and heatmap.dtype == np.float16


@pytest.mark.parametrize("points", [np.empty((0, 3)), []])
def test_heatmap_without_points_is_zero(points):
    heatmap = gaussian_heatmap(points, (4, 5, 6), 1.0)
    assert heatmap.shape == (4, 5, 6) and heatmap.dtype == np.float32
    assert not heatmap.any()


@pytest.mark.parametrize(
    ("points", "sigma", "spacing", "message"),
    [
        ([[3.0, 4.5 + 1e-9]], 1.0, None, "points: point 0"),
        ([[-0.6, 1.0]], 1.0, None, "outside the image"),
        ([[1.0, 1.0, 1.0]], 1.0, None, r"expected \(N, 2\)"),
        ([[np.nan, 1.0]], 1.0, None, "NaN"),
        ([[1.0, 1.0]], 0.0, None, "sigma"),
        ([[1.0, 1.0]], (1.0, 2.0, 3.0), None, "sigma"),
        ([[1.0, 1.0]], 1.0, (1.0, -1.0), "spacing"),
    ],
)
def test_heatmap_rejects_bad_input(points, sigma, spacing, message):
    with pytest.raises(ValueError, match=message):
        gaussian_heatmap(points, (5, 5), sigma, spacing)


def test_heatmap_rejects_a_shape_that_is_not_2d_or_3d():
    with pytest.raises(ValueError, match="shape"):
        gaussian_heatmap([[1.0]], (5,), 1.0)


# Euclidean distance maps


@pytest.mark.parametrize("count", [5, 200])  # the per-point minimum and the k-d tree
@pytest.mark.parametrize(
    ("shape", "spacing"), [((13, 17), None), ((13, 17), (0.7, 1.9)), ((6, 9, 11), (2.5, 1.0, 0.8))]
)
def test_euclidean_distance_equals_brute_force(shape, spacing, count):
    rng = np.random.default_rng(2)
    points = random_points(rng, shape, count)
    scale = np.broadcast_to(1.0 if spacing is None else spacing, len(shape))
    voxels = np.indices(shape, dtype=float).reshape(len(shape), -1).T
    expected = np.min(
        [np.sqrt((((voxels - point) * scale) ** 2).sum(axis=1)) for point in points], axis=0
    ).reshape(shape)
    np.testing.assert_allclose(euclidean_distance_map(points, shape, spacing), expected, atol=1e-12)


def test_euclidean_distance_without_points_is_infinite():
    distance = euclidean_distance_map(np.empty((0, 2)), (3, 4))
    assert distance.shape == (3, 4) and np.isinf(distance).all()


def test_euclidean_distance_rejects_points_outside():
    with pytest.raises(ValueError, match="outside the image"):
        euclidean_distance_map([[0.0, 4.0]], (3, 4))


# Geodesic distance maps


def reference_geodesic(points, image, spacing, weight):
    """Textbook Dijkstra with a heap over the 8- or 26-neighbour voxel graph."""
    channels = image if image.ndim == points.shape[1] + 1 else image[None]
    shape = channels.shape[1:]
    scale = np.broadcast_to(1.0 if spacing is None else spacing, len(shape))
    distance = np.full(shape, np.inf)
    queue = []
    for point in points:
        seed = tuple(int(c) for c in np.clip(np.round(point), 0, np.asarray(shape) - 1))
        distance[seed] = 0.0
        queue.append((0.0, seed))
    heapq.heapify(queue)
    steps = [s for s in itertools.product((-1, 0, 1), repeat=len(shape)) if any(s)]
    while queue:
        d, voxel = heapq.heappop(queue)
        if d > distance[voxel]:
            continue
        for step in steps:
            other = tuple(v + s for v, s in zip(voxel, step, strict=True))
            if not all(0 <= c < n for c, n in zip(other, shape, strict=True)):
                continue
            length = math.sqrt(sum((s * h) ** 2 for s, h in zip(step, scale, strict=True)))
            change = np.linalg.norm(
                channels[(slice(None), *other)] - channels[(slice(None), *voxel)]
            )
            candidate = d + (1 - weight) * length + weight * change
            if candidate < distance[other]:
                distance[other] = candidate
                heapq.heappush(queue, (candidate, other))
    return distance


def chamfer_length(displacement):
    """Shortest path with steps of 1, √2, √3 voxels: sorted |d| as a ≥ b ≥ c."""
    a, b, c = [*sorted(np.abs(displacement), reverse=True), 0.0][:3]
    return (a - b) + math.sqrt(2) * (b - c) + math.sqrt(3) * c


@pytest.mark.parametrize("method", ["raster", "dijkstra"])
@pytest.mark.parametrize(
    ("shape", "spacing", "channels"),
    [((9, 11), None, 0), ((9, 11), (1.5, 0.7), 3), ((5, 6, 7), (2.0, 1.0, 0.8), 0)],
)
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_geodesic_distance_agrees_with_textbook_dijkstra(method, shape, spacing, channels, weight):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(channels, *shape) if channels else shape)
    points = random_points(rng, shape, 3)
    expected = reference_geodesic(points, image, spacing, weight)
    distance = geodesic_distance_map(points, image, spacing, weight, method=method)
    np.testing.assert_allclose(distance, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(15, 19), (9, 11, 13)])
def test_geodesic_distance_with_weight_zero_is_the_chamfer_distance(shape):
    rng = np.random.default_rng(4)
    image = rng.normal(size=shape)
    seed = np.array([s // 3 for s in shape], dtype=float)
    distance = geodesic_distance_map(seed[None], image, weight=0.0)
    voxels = np.indices(shape).reshape(len(shape), -1).T
    chamfer = np.array([chamfer_length(v - seed) for v in voxels]).reshape(shape)
    np.testing.assert_allclose(distance, chamfer, rtol=1e-12, atol=1e-12)
    euclidean = euclidean_distance_map(seed[None], shape)
    bound = math.sqrt(4 - 2 * math.sqrt(2)) if len(shape) == 2 else 1.1281
    assert np.all(distance >= euclidean - 1e-12)
    assert np.all(distance <= bound * euclidean + 1e-12)


def test_geodesic_distance_on_a_constant_image_is_the_weighted_chamfer_distance():
    rng = np.random.default_rng(5)
    points = random_points(rng, (8, 9, 10), 3)
    flat = np.full((8, 9, 10), 3.0)
    spacing = (2.0, 1.0, 0.5)
    chamfer = geodesic_distance_map(points, flat, spacing, weight=0.0)
    mixed = geodesic_distance_map(points, flat, spacing, weight=0.4)
    np.testing.assert_allclose(mixed, 0.6 * chamfer, rtol=1e-12)
    assert not geodesic_distance_map(points, flat, spacing, weight=1.0).any()


def test_geodesic_distance_across_a_high_contrast_wall_exceeds_the_euclidean_distance():
    image = np.zeros((20, 30))
    image[:, 15] = 50.0  # a wall through the whole image, between x = 14 and x = 16
    points = [[10.0, 5.0]]
    euclidean = euclidean_distance_map(points, image.shape)
    geodesic = geodesic_distance_map(points, image, weight=0.5)
    same_side, far_side = np.s_[:, :15], np.s_[:, 16:]
    np.testing.assert_allclose(
        geodesic[same_side], 0.5 * geodesic_distance_map(points, image, weight=0.0)[same_side]
    )
    # Crossing costs the contrast twice (up and down), weighted by 0.5.
    assert np.all(geodesic[far_side] >= 0.5 * euclidean[far_side] + 50.0 - 1e-9)
    assert np.all(geodesic[far_side] > euclidean[far_side])


def test_multichannel_change_is_the_euclidean_norm_over_channels():
    rng = np.random.default_rng(6)
    image = rng.normal(size=(7, 8))
    points = [[1.0, 2.0], [5.0, 6.0]]
    single = geodesic_distance_map(points, image * 2.0, weight=0.7)
    stacked = geodesic_distance_map(points, np.stack([image] * 4), weight=0.7)
    np.testing.assert_allclose(stacked, single, rtol=1e-12)


def test_fewer_raster_rounds_give_an_upper_bound_that_tightens():
    rng = np.random.default_rng(7)
    image = rng.normal(size=(10, 12, 14))
    points = random_points(rng, image.shape, 2)
    exact = geodesic_distance_map(points, image, weight=1.0)
    previous = np.full(image.shape, np.inf)
    for rounds in (1, 2, 4):
        approximate = geodesic_distance_map(points, image, weight=1.0, iterations=rounds)
        assert np.all(approximate >= exact - 1e-12)
        assert np.all(approximate <= previous)
        previous = approximate
    assert np.all(np.isfinite(previous))


def test_geodesic_distance_without_points_is_infinite():
    distance = geodesic_distance_map(np.empty((0, 3)), np.zeros((2, 3, 4)))
    assert distance.shape == (2, 3, 4) and np.isinf(distance).all()


@pytest.mark.parametrize(
    ("points", "image", "kwargs", "message"),
    [
        ([[1.0, 1.0]], np.zeros((3, 3)), {"weight": 1.5}, "weight"),
        ([[1.0, 1.0]], np.full((3, 3), np.nan), {}, "image"),
        ([[1.0, 1.0]], np.zeros((3, 3)), {"method": "fast"}, "method"),
        ([[1.0, 1.0]], np.zeros((3, 3)), {"iterations": 0}, "iterations"),
        ([[1.0, 1.0]], np.zeros((2, 2, 3, 3)), {}, "image"),
        ([[1.0, 1.0, 1.0]], np.zeros((3, 3)), {}, "points"),
        ([[1.0, 3.0]], np.zeros((3, 3)), {}, "outside the image"),
    ],
)
def test_geodesic_distance_rejects_bad_input(points, image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        geodesic_distance_map(points, image, **kwargs)


# Distance decay


def test_decay_is_one_at_points_decreasing_and_within_unit_interval():
    distance = np.array([0.0, 1e-9, 0.5, 1.0, 3.0, 10.0, 1e6, np.inf])
    target = distance_decay(distance, scale=2.0)
    assert target[0] == 1.0 and target[-1] == 0.0
    assert np.all(np.diff(target) <= 0) and np.all(np.diff(target[:-2]) < 0)
    assert np.all((target >= 0) & (target <= 1))
    assert target[3] == pytest.approx(math.exp(-0.5))


def test_decay_of_a_distance_map_is_one_at_the_points():
    points = np.array([[2.0, 3.0], [6.0, 1.0]])
    target = distance_decay(euclidean_distance_map(points, (8, 8), spacing=0.5), scale=1.0)
    assert target[2, 3] == 1.0 and target[6, 1] == 1.0
    assert np.sum(target == 1.0) == 2


def test_decay_keeps_float32():
    assert distance_decay(np.zeros(3, dtype=np.float32), 1.0).dtype == np.float32


@pytest.mark.parametrize(
    ("distance", "scale", "message"),
    [([-1.0], 1.0, "distance"), ([np.nan], 1.0, "distance"), ([1.0], 0.0, "scale")],
)
def test_decay_rejects_bad_input(distance, scale, message):
    with pytest.raises(ValueError, match=message):
        distance_decay(np.array(distance), scale)
