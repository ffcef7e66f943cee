"""Speed of iterative Gaussian fitting (``weaklesion.detection.fit_gaussians``).

The baseline is the straightforward form of the same algorithm: for every lesion, the
arg-max over the whole residual, ``scipy.optimize.curve_fit`` of the amplitude and
centre of ``alpha * N(mu, sigma)`` on the 7 x 7 x 7 window around it, and the fitted
Gaussian evaluated on the whole volume and subtracted from it with vectorised NumPy.
A second, stronger baseline builds the whole-volume Gaussian as an outer product of its
three 1D factors instead (one exp per axis rather than one per voxel). All run on one
64 x 192 x 192 heatmap of 30 planted mass-1 Gaussians (sigma = 1 voxel, amplitudes
0.3-1, fixed seed; the closest two are 12.7 sigma apart, so every lesion is isolated) and
must agree: same number of lesions, matched centres within 0.05 voxel and amplitudes
within 0.01. ``fit_gaussians`` runs with its default window (half-width ceil(2 sigma):
5 x 5 x 5) and with the baseline's 7 x 7 x 7 window, each with the joint refinement of
neighbouring fits (the default) and without it (``refine=False``, the greedy pass).

A second heatmap of the same size holds 15 touching pairs (centres 2 sigma apart,
random directions, amplitudes 0.5-1): there the greedy pass, the baseline's included,
lands between the two lesions of a pair, and the refinement recovers them; its rows
give the errors against the planted truth.

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
PAIRS = 15
SIGMA = 1.0
STOP = 0.01
SEED = 0


def planted(centres: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Heatmap of mass-1 Gaussians of width ``SIGMA`` with the given amplitudes."""
    heatmap = np.zeros(SHAPE)
    for centre, amplitude in zip(centres, amplitudes, strict=True):
        window, values = gaussian_window(centre, (SIGMA,) * 3, SHAPE)
        heatmap[window] += amplitude * values
    return heatmap


def isolated_lesions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``LESIONS`` Gaussians at random centres with random amplitudes."""
    rng = np.random.default_rng(SEED)
    centres = rng.uniform(0, np.array(SHAPE) - 1, size=(LESIONS, 3))
    amplitudes = rng.uniform(0.3, 1.0, size=LESIONS)
    return planted(centres, amplitudes), centres, amplitudes


def touching_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``PAIRS`` pairs of Gaussians 2 sigma apart, the pairs far from each other."""
    rng = np.random.default_rng(SEED + 1)
    firsts = []
    while len(firsts) < PAIRS:
        candidate = rng.uniform(4, np.array(SHAPE) - 5)
        if all(np.linalg.norm(candidate - c) > 12 * SIGMA for c in firsts):
            firsts.append(candidate)
    directions = rng.normal(size=(PAIRS, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    centres = np.concatenate([firsts, firsts + 2 * SIGMA * directions])
    amplitudes = rng.uniform(0.5, 1.0, size=2 * PAIRS)
    return planted(centres, amplitudes), centres, amplitudes


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


def match(points_a, amplitudes_a, points_b, amplitudes_b) -> dict[str, float | int]:
    """Largest centre distance (voxels) and amplitude difference after optimal matching,
    and how many of ``a`` found no partner in ``b`` or the other way round."""
    distance = np.linalg.norm(points_a[:, None] - points_b[None], axis=2)
    rows, columns = linear_sum_assignment(distance)
    return {
        "centre_voxels": float(distance[rows, columns].max()),
        "amplitude": float(np.abs(amplitudes_a[rows] - amplitudes_b[columns]).max()),
        "unmatched": abs(len(points_a) - len(points_b)),
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


def scenario(heatmap, centres, amplitudes, repeats) -> list[dict]:
    """Rows of the baselines and of ``fit_gaussians`` (windows 5^3 and 7^3, refinement
    on and off) on one heatmap, with speed-ups against the whole-volume baseline."""
    rows = []
    baselines = {
        "baseline: whole-volume Gaussian": False,
        "baseline: outer-product Gaussian": True,
    }
    for name, separable in baselines.items():
        points, fitted = baseline_fit(heatmap, separable)
        runs = repeats["baseline"] + 2 * separable
        wall, cpu = median_times(lambda s=separable: baseline_fit(heatmap, s), runs)
        rows.append(
            {
                "method": name,
                "runs": runs,
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "lesions": len(points),
                "vs_truth": match(points, fitted, centres, amplitudes),
            }
        )
        if not separable:
            base_points, base_amplitudes = points, fitted
    variants = {
        "fit_gaussians, window 5^3 (default), refined": (None, True),
        "fit_gaussians, window 5^3, refine=False": (None, False),
        "fit_gaussians, window 7^3, refined": (3, True),
        "fit_gaussians, window 7^3, refine=False": (3, False),
    }
    for name, (window, refine) in variants.items():
        found = fit_gaussians(heatmap, SIGMA, stop=STOP, window=window, refine=refine)
        wall, cpu = median_times(
            lambda w=window, r=refine: fit_gaussians(heatmap, SIGMA, stop=STOP, window=w, refine=r),
            repeats["fit_gaussians"],
        )
        gap = match(found.points, found.extras["amplitude"], base_points, base_amplitudes)
        rows.append(
            {
                "method": name,
                "runs": repeats["fit_gaussians"],
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "lesions": len(found),
                "vs_truth": match(found.points, found.extras["amplitude"], centres, amplitudes),
                "vs_baseline": gap,
                "agrees_with_baseline": bool(
                    gap["unmatched"] == 0
                    and gap["centre_voxels"] < 0.05
                    and gap["amplitude"] < 0.01
                ),
            }
        )
    for row in rows:
        row["speedup_wall"] = rows[0]["wall_seconds"] / row["wall_seconds"]
        row["speedup_cpu"] = rows[0]["cpu_seconds"] / row["cpu_seconds"]
    return rows


def closest_in_sigmas(centres: np.ndarray) -> float:
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    return float(distance[np.triu_indices(len(centres), 1)].min() / SIGMA)


def main() -> None:
    heatmap, centres, amplitudes = isolated_lesions()
    isolated = scenario(heatmap, centres, amplitudes, {"baseline": 5, "fit_gaussians": 31})
    isolated_closest = closest_in_sigmas(centres)
    heatmap, centres, amplitudes = touching_pairs()
    pairs = scenario(heatmap, centres, amplitudes, {"baseline": 3, "fit_gaussians": 11})
    print(f"heatmap {SHAPE}, sigma {SIGMA} voxel, stop {STOP}")
    for title, rows in [
        (f"{LESIONS} isolated lesions (closest {isolated_closest:.1f} sigma apart)", isolated),
        (f"{PAIRS} pairs 2 sigma apart", pairs),
    ]:
        print(f"\n{title}")
        print(
            f"{'method':46s} {'wall ms':>9s} {'cpu ms':>9s} {'x wall':>7s} {'x cpu':>7s} "
            f"{'lesions':>7s} {'err vox':>8s} {'err amp':>8s}  agrees"
        )
        for row in rows:
            agrees = {True: "yes", False: "no", None: "-"}[row.get("agrees_with_baseline")]
            truth = row["vs_truth"]
            print(
                f"{row['method']:46s} {row['wall_seconds'] * 1e3:9.2f} "
                f"{row['cpu_seconds'] * 1e3:9.2f} {row['speedup_wall']:7.0f} "
                f"{row['speedup_cpu']:7.0f} {row['lesions']:7d} {truth['centre_voxels']:8.3f} "
                f"{truth['amplitude']:8.3f}  {agrees}"
            )
    result = {
        "benchmark": "fit_gaussians",
        "shape": list(SHAPE),
        "sigma_voxels": SIGMA,
        "stop": STOP,
        "seed": SEED,
        "timing": "medians of wall-clock and process CPU seconds over the runs given",
        "speedup": "baseline (whole-volume Gaussian) time / method time, per heatmap",
        "vs_truth": "after optimal matching: largest centre distance (voxels), largest "
        "amplitude difference, and the difference in lesion count",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}, NumPy {np.__version__}",
        "isolated": {
            "lesions": LESIONS,
            "closest_pair_sigmas": isolated_closest,
            "rows": isolated,
        },
        "touching_pairs": {"pairs": PAIRS, "separation_sigmas": 2.0, "rows": pairs},
    }
    with atomic_write(RESULTS) as handle:
        json.dump(result, handle, indent=1)
        handle.write("\n")


if __name__ == "__main__":
    main()
