"""Speed and agreement of the training targets (``weaklesion.targets``).

Three measurements, each side by side with its baseline in one run:

- Gaussian heatmaps of 30 and 3000 points (sigma = 2 voxels) on a 64 x 192 x 192 volume:
  ``gaussian_heatmap`` against the naive form (the normal density of every point
  evaluated over the whole volume and summed) and against a per-point loop over
  ``gaussian_window``.
- Euclidean distance maps of 30 and 3000 points on the same volume (spacing
  2 x 0.8 x 0.8 mm): ``euclidean_distance_map`` (which picks one of the next two by the
  number of points), the per-point minimum of squared distances, a k-d tree query of
  every voxel centre (both exact to sub-voxel points), and
  ``scipy.ndimage.distance_transform_edt`` on the voxels nearest the points.
- Geodesic distance maps on 32 x 64 x 64 and 64 x 128 x 128 phantoms (smoothed noise in
  [0, 1] plus noise of 0.02, spacing 2 x 1 x 1 mm, 5 seeds): the raster scan of
  ``geodesic_distance_map`` run to convergence and for 4 rounds, SciPy's Dijkstra on the
  voxel graph (the exact reference), and FastGeodis when it is installed (same step
  cost, 4 iterations as in its examples and 16, one torch thread). Errors are against
  Dijkstra.

Run: ``.venv/bin/python -m benchmarks.bench_targets``; writes
``benchmarks/results/targets.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from weaklesion.io import atomic_write
from weaklesion.targets import (
    euclidean_distance_map,
    gaussian_heatmap,
    gaussian_window,
    geodesic_distance_map,
)

RESULTS = Path(__file__).parent / "results" / "targets.json"
SHAPE = (64, 192, 192)
SIGMA = 2.0
SPACING = (2.0, 0.8, 0.8)
GEODESIC_SHAPES = ((32, 64, 64), (64, 128, 128))
GEODESIC_SPACING = (2.0, 1.0, 1.0)
SEED = 0

INSTALL_NOTES = {
    "FastGeodis": (
        "1.0.5 is an sdist only; its setup.py imports pkg_resources, which setuptools >= 81 "
        "no longer has (84.2.1 here), so `pip install --no-build-isolation FastGeodis` "
        "fails at metadata. It builds in about 4 minutes against the CPU torch when the "
        "build environment is pinned to setuptools<81; a fresh `make install` (build "
        "isolation, latest setuptools) cannot build it."
    ),
    "GeodisTK": (
        "0.1.7 fails to compile against NumPy 2 (its C++ uses NPY_IN_ARRAY, removed in NumPy 2.0)."
    ),
}


def median_time(repeats: int, function, *args, **kwargs) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def naive_heatmap(points: np.ndarray, shape, sigma: float) -> np.ndarray:
    """Normal density of every point over the whole volume, untruncated."""
    axes = [np.arange(n, dtype=float) for n in shape]
    norm = 1.0 / (math.sqrt(2 * math.pi) * sigma)
    heatmap = np.zeros(shape)
    for point in points:
        z, y, x = (
            norm * np.exp(-0.5 * ((a - c) / sigma) ** 2) for a, c in zip(axes, point, strict=True)
        )
        heatmap += z[:, None, None] * y[None, :, None] * x[None, None, :]
    return heatmap


def window_loop_heatmap(points: np.ndarray, shape, sigma: float) -> np.ndarray:
    """One ``gaussian_window`` call and one windowed add per point."""
    heatmap = np.zeros(shape)
    for point in points:
        window, values = gaussian_window(point, (sigma,) * len(shape), shape)
        heatmap[window] += values
    return heatmap


def bench_heatmaps(rng) -> list[dict]:
    rows = []
    for count in (30, 3000):
        points = rng.uniform(-0.5, np.array(SHAPE) - 0.5, size=(count, 3))
        fast = gaussian_heatmap(points, SHAPE, SIGMA, dtype=np.float64)
        naive = naive_heatmap(points, SHAPE, SIGMA)
        loop = window_loop_heatmap(points, SHAPE, SIGMA)
        naive_time = median_time(1 if count > 100 else 3, naive_heatmap, points, SHAPE, SIGMA)
        loop_time = median_time(3, window_loop_heatmap, points, SHAPE, SIGMA)
        fast_time = median_time(5, gaussian_heatmap, points, SHAPE, SIGMA)
        rows.append(
            {
                "points": count,
                "naive_whole_volume_seconds": naive_time,
                "gaussian_window_loop_seconds": loop_time,
                "gaussian_heatmap_seconds": fast_time,
                "speedup_vs_naive": naive_time / fast_time,
                "speedup_vs_window_loop": loop_time / fast_time,
                "max_abs_difference_vs_naive": float(np.abs(fast - naive).max()),
                "max_abs_difference_vs_window_loop": float(np.abs(fast - loop).max()),
                "peak_value": float(naive.max()),
            }
        )
    return rows


def rounded_edt(points: np.ndarray, shape, spacing) -> np.ndarray:
    background = np.ones(shape, dtype=bool)
    seeds = np.clip(np.round(points).astype(int), 0, np.array(shape) - 1)
    background[tuple(seeds.T)] = False
    return ndimage.distance_transform_edt(background, sampling=spacing)


def brute_force_distance(points: np.ndarray, shape, spacing) -> np.ndarray:
    axes = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    squared = np.full(shape, np.inf)
    for point in points * np.asarray(spacing):
        z, y, x = ((a - c) ** 2 for a, c in zip(axes, point, strict=True))
        np.minimum(squared, z[:, None, None] + (y[:, None] + x[None, :])[None], out=squared)
    return np.sqrt(squared)


def kdtree_distance(points: np.ndarray, shape, spacing) -> np.ndarray:
    scale = np.asarray(spacing)
    grid = np.indices(shape, dtype=float).reshape(len(shape), -1).T * scale
    distance, _ = cKDTree(points * scale).query(grid, workers=-1)
    return distance.reshape(shape)


def bench_euclidean(rng) -> list[dict]:
    rows = []
    for count in (30, 3000):
        points = rng.uniform(-0.5, np.array(SHAPE) - 0.5, size=(count, 3))
        exact = euclidean_distance_map(points, SHAPE, SPACING)
        repeats = 3 if count <= 100 else 1
        rows.append(
            {
                "points": count,
                "euclidean_distance_map_seconds": median_time(
                    3, euclidean_distance_map, points, SHAPE, SPACING
                ),
                "per_point_minimum_seconds": median_time(
                    repeats, brute_force_distance, points, SHAPE, SPACING
                ),
                "kdtree_seconds": median_time(3, kdtree_distance, points, SHAPE, SPACING),
                "edt_rounded_seconds": median_time(3, rounded_edt, points, SHAPE, SPACING),
                "per_point_minimum_max_difference_mm": float(
                    np.abs(brute_force_distance(points, SHAPE, SPACING) - exact).max()
                ),
                "kdtree_max_difference_mm": float(
                    np.abs(kdtree_distance(points, SHAPE, SPACING) - exact).max()
                ),
                "edt_rounded_max_error_mm": float(
                    np.abs(rounded_edt(points, SHAPE, SPACING) - exact).max()
                ),
            }
        )
    return rows


def phantom(rng, shape) -> np.ndarray:
    image = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    image = (image - image.min()) / (image.max() - image.min())
    return image + rng.normal(scale=0.02, size=shape)


def fastgeodis_runner():
    try:
        import FastGeodis
        import torch
    except ImportError:
        return None

    # One thread: the NumPy raster scan and SciPy's Dijkstra use one core, and OpenMP
    # threads on a shared machine slow FastGeodis down many times over.
    torch.set_num_threads(1)

    def run(points, image, spacing, weight, iterations):
        mask = torch.ones((1, 1, *image.shape))
        for seed in np.round(points).astype(int):
            mask[(0, 0, *seed)] = 0.0
        tensor = torch.from_numpy(image.astype(np.float32))[None, None]
        distance = FastGeodis.generalised_geodesic3d(
            tensor, mask, list(spacing), 1e10, weight, iterations
        )
        return distance[0, 0].numpy().astype(np.float64)

    return run


def errors(distance: np.ndarray, reference: np.ndarray) -> dict:
    difference = np.abs(distance - reference)
    return {
        "max_abs_error": float(difference.max()),
        "max_error_relative_to_max_distance": float(difference.max() / reference.max()),
        "mean_abs_error": float(difference.mean()),
    }


def bench_geodesic(rng) -> list[dict]:
    fastgeodis = fastgeodis_runner()
    rows = []
    for shape in GEODESIC_SHAPES:
        image = phantom(rng, shape)
        points = np.stack([rng.integers(0, n, 5) for n in shape], axis=1).astype(float)
        for weight in (0.5, 1.0):
            reference = geodesic_distance_map(
                points, image, GEODESIC_SPACING, weight, method="dijkstra"
            )
            variants = {
                "dijkstra": (geodesic_distance_map, {"method": "dijkstra"}),
                "raster (to convergence, default)": (geodesic_distance_map, {}),
                "raster (4 rounds)": (geodesic_distance_map, {"iterations": 4}),
            }
            if fastgeodis is not None:
                for iterations in (4, 16):
                    name = f"FastGeodis ({iterations} iterations)"
                    variants[name] = (fastgeodis, {"iterations": iterations})
            dijkstra_time = None
            for name, (function, options) in variants.items():
                arguments = (points, image, GEODESIC_SPACING, weight)
                seconds = median_time(3, function, *arguments, **options)
                dijkstra_time = dijkstra_time or seconds
                rows.append(
                    {
                        "shape": list(shape),
                        "weight": weight,
                        "method": name,
                        "seconds": seconds,
                        "speedup_vs_dijkstra": dijkstra_time / seconds,
                        **errors(function(*arguments, **options), reference),
                    }
                )
    return rows


def main() -> None:
    rng = np.random.default_rng(SEED)
    load_before = os.getloadavg()[0]
    results = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "note": "shared machine; wall-clock medians, compare within this file only",
        },
        "heatmap": {"shape": list(SHAPE), "sigma_voxels": SIGMA, "rows": bench_heatmaps(rng)},
        "euclidean": {
            "shape": list(SHAPE),
            "spacing_mm": list(SPACING),
            "rows": bench_euclidean(rng),
        },
        "geodesic": {
            "spacing_mm": list(GEODESIC_SPACING),
            "seeds": 5,
            "install": {
                name: ("installed; " if name == "FastGeodis" and fastgeodis_runner() else "") + note
                for name, note in INSTALL_NOTES.items()
            },
            "rows": bench_geodesic(rng),
        },
    }
    results["machine"]["load_average_before_and_after"] = [load_before, os.getloadavg()[0]]
    with atomic_write(RESULTS) as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
