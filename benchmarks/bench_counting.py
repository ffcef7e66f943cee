"""Speed of weaklesion.counting against SciPy.

1. ``poisson_binomial_pmf`` against ``scipy.stats.poisson_binom.pmf`` over all counts
   ``0 .. K``, for K = 10, 100, 1000 trials, for the truncated form (``max_count=4``,
   against SciPy's full pmf with the tail summed), and for batches of 64 rows padded with
   zeros: one call for ours, a loop over rows (each with its own K) for SciPy.
2. ``candidate_regions`` (cc3d labelling, region maxima, sizes and arg-maxima) against
   ``scipy.ndimage.label`` + ``scipy.ndimage.maximum`` on a 64 x 192 x 192 map of random
   blobs, 26-connectivity; the labelling alone is timed too.

Everything runs on one thread (``torch.set_num_threads(1)``; SciPy, cc3d are
single-threaded); times are medians of several repeats, ``speedup`` = SciPy / ours. The
machine is shared, so the load average at the end of the run is recorded with them.

Run: ``.venv/bin/python -m benchmarks.bench_counting``; writes
``benchmarks/results/counting.json``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import cc3d
import numpy as np
import torch
from scipy import ndimage
from scipy.stats import poisson_binom

from benchmarks.timing import median_time
from weaklesion.counting import candidate_regions, poisson_binomial_pmf
from weaklesion.io import atomic_write

RESULTS = Path(__file__).parent / "results" / "counting.json"
REPEATS = 7


def scipy_pmf(p: np.ndarray, max_count: int | None = None) -> np.ndarray:
    pmf = poisson_binom.pmf(np.arange(len(p) + 1), p)
    if max_count is None:
        return pmf
    return np.concatenate((pmf[:max_count], [pmf[max_count:].sum()]))


def pmf_case(name: str, rows: list[np.ndarray], max_count: int | None = None) -> dict:
    """Time one call on the zero-padded batch against SciPy row by row."""
    width = max(len(row) for row in rows)
    padded = np.zeros((len(rows), width))
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    batch = padded if len(rows) > 1 else padded[0]
    ours = poisson_binomial_pmf(batch, max_count).reshape(len(rows), -1)
    reference = [scipy_pmf(row, max_count) for row in rows]
    difference = max(float(np.max(np.abs(ours[i, : len(r)] - r))) for i, r in enumerate(reference))
    ours_s = median_time(lambda: poisson_binomial_pmf(batch, max_count), REPEATS)
    scipy_s = median_time(lambda: [scipy_pmf(row, max_count) for row in rows], REPEATS)
    return {
        "name": name,
        "batch": len(rows),
        "K_min": min(len(row) for row in rows),
        "K_max": width,
        "max_count": max_count,
        "ours_s": ours_s,
        "scipy_s": scipy_s,
        "speedup": scipy_s / ours_s,
        "max_abs_diff": difference,
    }


def blob_map(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smoothed noise rescaled so that about 15 % of voxels lie above 0.1, float32."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 2.0)
    level = np.quantile(smooth, 0.85)
    values = 0.1 + 0.9 * (smooth - level) / (smooth.max() - level)
    return np.clip(values, 0, 1).astype(np.float32)


def scipy_regions(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, count = ndimage.label(values > 0.1, structure=np.ones((3, 3, 3)))
    return labels, np.asarray(ndimage.maximum(values, labels, np.arange(1, count + 1)))


def regions_case(shape: tuple[int, ...]) -> dict:
    values = blob_map(shape, seed=0)
    ours = candidate_regions(values)
    labels, maxima = scipy_regions(values)
    agree = bool(np.array_equal(ours.labels, labels) and np.array_equal(ours.probabilities, maxima))
    ours_s = median_time(lambda: candidate_regions(values), repeats=5)
    scipy_s = median_time(lambda: scipy_regions(values), repeats=3)
    cc3d_s = median_time(
        lambda: cc3d.connected_components(values > 0.1, connectivity=26), repeats=5
    )
    label_s = median_time(
        lambda: ndimage.label(values > 0.1, structure=np.ones((3, 3, 3))), repeats=5
    )
    return {
        "name": "candidate_regions vs ndimage.label + ndimage.maximum",
        "shape": list(shape),
        "regions": len(maxima),
        "foreground_fraction": float(np.mean(values > 0.1)),
        "ours_s": ours_s,
        "scipy_s": scipy_s,
        "speedup": scipy_s / ours_s,
        "labelling_only": {"cc3d_s": cc3d_s, "ndimage_label_s": label_s},
        "same_labels_and_maxima": agree,
    }


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    pmf_cases = [pmf_case(f"K={k}", [rng.random(k)]) for k in (10, 100, 1000)]
    pmf_cases.append(pmf_case("K=1000, max_count=4", [rng.random(1000)], max_count=4))
    pmf_cases.append(
        pmf_case("64 maps, K=1..200", [rng.random(k) for k in rng.integers(1, 201, size=64)])
    )
    pmf_cases.append(pmf_case("64 maps, K=1000", [rng.random(1000) for _ in range(64)]))
    regions = regions_case((64, 192, 192))
    result = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, shared 2-core CPU",
        "threads": 1,
        "load_average_1min": os.getloadavg()[0],
        "statistic": "median seconds",
        "pmf": pmf_cases,
        "candidate_regions": regions,
    }
    with atomic_write(RESULTS) as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(f"{'case':<24}{'ours (ms)':>12}{'SciPy (ms)':>12}{'speedup':>10}{'max |diff|':>12}")
    for case in pmf_cases:
        print(
            f"{case['name']:<24}{case['ours_s'] * 1e3:>12.3f}{case['scipy_s'] * 1e3:>12.3f}"
            f"{case['speedup']:>10.1f}{case['max_abs_diff']:>12.1e}"
        )
    print(
        f"{'regions ' + 'x'.join(map(str, regions['shape'])):<24}"
        f"{regions['ours_s'] * 1e3:>12.1f}{regions['scipy_s'] * 1e3:>12.1f}"
        f"{regions['speedup']:>10.1f}{'same' if regions['same_labels_and_maxima'] else 'DIFF':>12}"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
