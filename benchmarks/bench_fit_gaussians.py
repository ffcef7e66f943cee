"""Speed of iterative Gaussian fitting (``weaklesion.detection.fit_gaussians``).

The baseline is the straightforward form of the same algorithm: for every lesion, the
arg-max over the whole residual, ``scipy.optimize.curve_fit`` of the amplitude and
centre of ``alpha * N(mu, sigma)`` on the 7 x 7 x 7 window around it, and the fitted
Gaussian evaluated on the whole volume and subtracted from it with vectorised NumPy.
A second, stronger baseline builds the whole-volume Gaussian as an outer product of its
three 1D factors instead (one exp per axis rather than one per voxel). All run on one
64 x 192 x 192 heatmap of 30 planted mass-1 Gaussians (sigma = 1 voxel, amplitudes
0.3-1, fixed seed) and must agree: same number of lesions, matched centres within 0.05
voxel and amplitudes within 0.01. ``fit_gaussians`` runs with its default window
(half-width ceil(2 sigma): 5 x 5 x 5) and with the baseline's 7 x 7 x 7 window.

Times are medians of wall-clock time and of process CPU time, taken in the same run; on
a shared machine the wall clock also counts the time spent waiting for a core.

Run: ``.venv/bin/python -m benchmarks.bench_fit_gaussians``; writes
``benchmarks/results/fit_gaussians.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit, linear_sum_assignment

from weaklesion.detection import fit_gaussians
from weaklesion.io import atomic_write
from weaklesion.targets import gaussian_window

RESULTS = Path(__file__).parent / "results" / "fit_gaussians.json"
SHAPE = (64, 192, 192)
LESIONS = 30
SIGMA = 1.0
STOP = 0.01
SEED = 0


def planted_heatmap() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmap of ``LESIONS`` mass-1 Gaussians at random centres with random amplitudes."""
    rng = np.random.default_rng(SEED)
    centres = rng.uniform(0, np.array(SHAPE) - 1, size=(LESIONS, 3))
    amplitudes = rng.uniform(0.3, 1.0, size=LESIONS)
    heatmap = np.zeros(SHAPE)
    for centre, amplitude in zip(centres, amplitudes, strict=True):
        window, values = gaussian_window(centre, (SIGMA,) * 3, SHAPE)
        heatmap[window] += amplitude * values
    return heatmap, centres, amplitudes


def baseline_fit(heatmap: np.ndarray, separable: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Whole-volume arg-max, ``curve_fit`` on a 7^3 window, whole-volume subtraction."""
    residual = heatmap.astype(float, copy=True)
    norm = 1.0 / (math.sqrt(2 * math.pi) * SIGMA)
    axes = [np.arange(n, dtype=float) for n in residual.shape]

    def model(coordinates, amplitude, z, y, x):
        squared = (coordinates[0] - z) ** 2 + (coordinates[1] - y) ** 2 + (coordinates[2] - x) ** 2
        return amplitude * norm**3 * np.exp(-0.5 * squared / SIGMA**2)

    centres, amplitudes = [], []
    for _ in range(1000):
        peak = np.unravel_index(np.argmax(residual), residual.shape)
        window = tuple(
            slice(max(p - 3, 0), min(p + 4, n)) for p, n in zip(peak, residual.shape, strict=True)
        )
        grid = np.meshgrid(*(axes[a][w] for a, w in enumerate(window)), indexing="ij")
        coordinates = np.stack([g.ravel() for g in grid])
        guess = [residual[peak] / norm**3, *map(float, peak)]
        (amplitude, *centre), _ = curve_fit(model, coordinates, residual[window].ravel(), p0=guess)
        if amplitude < STOP:
            break
        centres.append(centre)
        amplitudes.append(amplitude)
        if separable:
            z, y, x = (
                norm * np.exp(-0.5 * ((a - c) / SIGMA) ** 2)
                for a, c in zip(axes, centre, strict=True)
            )
            residual -= amplitude * z[:, None, None] * y[:, None] * x
        else:
            residual -= model(np.ix_(*axes), amplitude, *centre)
    return np.array(centres).reshape(-1, 3), np.array(amplitudes)


def match(points_a, amplitudes_a, points_b, amplitudes_b) -> dict[str, float]:
    """Largest centre distance (voxels) and amplitude difference after optimal matching."""
    distance = np.linalg.norm(points_a[:, None] - points_b[None], axis=2)
    rows, columns = linear_sum_assignment(distance)
    return {
        "centre_voxels": float(distance[rows, columns].max()),
        "amplitude": float(np.abs(amplitudes_a[rows] - amplitudes_b[columns]).max()),
    }


def median_times(function, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(np.median(cpu))


def main() -> None:
    heatmap, centres, amplitudes = planted_heatmap()
    rows = []
    baselines = {
        "baseline: whole-volume Gaussian": (False, 5),
        "baseline: outer-product Gaussian": (True, 7),
    }
    for name, (separable, repeats) in baselines.items():
        points, fitted = baseline_fit(heatmap, separable)
        wall, cpu = median_times(lambda s=separable: baseline_fit(heatmap, s), repeats)
        rows.append(
            {
                "method": name,
                "runs": repeats,
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "lesions": len(points),
                "vs_truth": match(points, fitted, centres, amplitudes),
            }
        )
        if not separable:
            base_points, base_amplitudes = points, fitted
    for name, window in {
        "fit_gaussians, window 5^3 (default)": None,
        "fit_gaussians, window 7^3": 3,
    }.items():
        found = fit_gaussians(heatmap, SIGMA, stop=STOP, window=window)
        wall, cpu = median_times(
            lambda w=window: fit_gaussians(heatmap, SIGMA, stop=STOP, window=w), 31
        )
        gap = match(found.points, found.extras["amplitude"], base_points, base_amplitudes)
        rows.append(
            {
                "method": name,
                "runs": 31,
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "lesions": len(found),
                "vs_truth": match(found.points, found.extras["amplitude"], centres, amplitudes),
                "vs_baseline": gap,
                "agrees_with_baseline": bool(
                    len(found) == len(base_points)
                    and gap["centre_voxels"] < 0.05
                    and gap["amplitude"] < 0.01
                ),
            }
        )
    for row in rows:
        row["speedup_wall"] = rows[0]["wall_seconds"] / row["wall_seconds"]
        row["speedup_cpu"] = rows[0]["cpu_seconds"] / row["cpu_seconds"]
    print(f"heatmap {SHAPE}, {LESIONS} planted lesions, sigma {SIGMA} voxel, stop {STOP}")
    print(
        f"{'method':38s} {'wall ms':>9s} {'cpu ms':>9s} {'x wall':>7s} {'x cpu':>7s} "
        f"{'lesions':>7s}  agrees"
    )
    for row in rows:
        agrees = {True: "yes", False: "NO", None: "-"}[row.get("agrees_with_baseline")]
        print(
            f"{row['method']:38s} {row['wall_seconds'] * 1e3:9.2f} {row['cpu_seconds'] * 1e3:9.2f} "
            f"{row['speedup_wall']:7.0f} {row['speedup_cpu']:7.0f} {row['lesions']:7d}  {agrees}"
        )
    result = {
        "benchmark": "fit_gaussians",
        "shape": list(SHAPE),
        "lesions": LESIONS,
        "sigma_voxels": SIGMA,
        "stop": STOP,
        "seed": SEED,
        "timing": "medians of wall-clock and process CPU seconds over the runs given",
        "speedup": "baseline (whole-volume Gaussian) time / method time",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}, NumPy {np.__version__}",
        "rows": rows,
    }
    with atomic_write(RESULTS) as handle:
        json.dump(result, handle, indent=1)
        handle.write("\n")


if __name__ == "__main__":
    main()
