"""Speed of the FROC machinery in weaklesion.metrics against straightforward baselines.

1. Hits along a score sweep: ``hits_by_score`` (one incremental augmenting-path pass per
   case) against re-running the Hungarian matching (``match_points``) on the kept
   detections at every distinct threshold. Both give the same true-positive counts.
2. Bootstrap interval of the FROC area: ``froc_auc_ci`` (resamples as case weights, one
   weighted cumulative sum per block of resamples) against ``bootstrap_ci`` rebuilding
   the curve with ``froc_curve`` for every resample. Both give the same interval.

Run: ``.venv/bin/python -m benchmarks.bench_metrics``; writes ``benchmarks/results/metrics.json``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from weaklesion.io import atomic_write
from weaklesion.metrics import (
    bootstrap_ci,
    froc_auc,
    froc_auc_ci,
    froc_curve,
    hits_by_score,
    match_points,
)

RESULTS = Path(__file__).parent / "results" / "metrics.json"
MAX_DISTANCE = 3.0


def synthetic_study(n_cases: int, n_candidates: int, max_truth: int, seed: int) -> list[tuple]:
    """Cases of (candidates, scores, truth) in a 32 x 64 x 64 volume; some candidates
    lie near lesions and score higher, the rest are scattered false alarms."""
    rng = np.random.default_rng(seed)
    shape = np.array([32.0, 64.0, 64.0])
    cases = []
    for _ in range(n_cases):
        truth = rng.uniform(0, shape, size=(int(rng.integers(0, max_truth + 1)), 3))
        near = (
            truth[rng.integers(0, max(len(truth), 1), size=n_candidates // 3)]
            if len(truth)
            else np.zeros((0, 3))
        )
        near = near + rng.normal(scale=1.5, size=near.shape)
        far = rng.uniform(0, shape, size=(n_candidates - len(near), 3))
        points = np.concatenate([near, far])
        scores = np.round(np.concatenate([rng.beta(5, 2, len(near)), rng.beta(2, 5, len(far))]), 3)
        cases.append((points, scores, truth))
    return cases


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def sweep_by_hungarian(cases: list[tuple]) -> list[np.ndarray]:
    """True positives at every distinct threshold, matching the kept subset afresh."""
    counts = []
    for points, scores, truth in cases:
        thresholds = np.unique(scores)[::-1]
        counts.append(
            np.array(
                [match_points(points[scores >= t], truth, MAX_DISTANCE).tp for t in thresholds]
            )
        )
    return counts


def sweep_by_hits(cases: list[tuple]) -> list[np.ndarray]:
    counts = []
    for points, scores, truth in cases:
        hits = hits_by_score(points, scores, truth, MAX_DISTANCE)
        thresholds = np.unique(scores)[::-1]
        counts.append(np.array([hits[scores >= t].sum() for t in thresholds]))
    return counts


def bench_sweep(name: str, cases: list[tuple], repeats: int) -> dict:
    same = all(
        np.array_equal(a, b)
        for a, b in zip(sweep_by_hungarian(cases), sweep_by_hits(cases), strict=True)
    )
    baseline = best_time(lambda: sweep_by_hungarian(cases), repeats)
    fast = best_time(lambda: sweep_by_hits(cases), repeats)
    return {
        "name": name,
        "n_cases": len(cases),
        "n_detections": int(sum(len(c[1]) for c in cases)),
        "n_truth": int(sum(len(c[2]) for c in cases)),
        "baseline": "match_points (Hungarian) on the kept detections at every threshold",
        "baseline_s": baseline,
        "hits_by_score_s": fast,
        "speedup": baseline / fast,
        "same_true_positives": same,
    }


def bench_bootstrap(cases: list[tuple], n_boot: int, repeats: int) -> dict:
    scores = [c[1] for c in cases]
    hits = [hits_by_score(p, s, t, MAX_DISTANCE) for p, s, t in cases]
    n_truth = [len(c[2]) for c in cases]
    items = list(zip(scores, hits, n_truth, strict=True))

    def generic():
        def statistic(sample):
            curve = froc_curve(*zip(*sample, strict=True))
            return froc_auc(curve.fp_per_image, curve.sensitivity, 5.0)

        return bootstrap_ci(items, statistic, n_boot=n_boot, seed=0)

    def vectorised():
        return froc_auc_ci(scores, hits, n_truth, 5.0, n_boot=n_boot, seed=0)

    reference, result = generic(), vectorised()
    baseline = best_time(generic, repeats)
    fast = best_time(vectorised, repeats)
    return {
        "name": "froc_auc bootstrap interval",
        "n_cases": len(cases),
        "n_detections": int(sum(len(s) for s in scores)),
        "n_boot": n_boot,
        "baseline": "bootstrap_ci rebuilding froc_curve for every resample",
        "baseline_s": baseline,
        "froc_auc_ci_s": fast,
        "speedup": baseline / fast,
        "interval": list(result),
        "max_difference_to_baseline": float(np.max(np.abs(np.subtract(result, reference)))),
    }


def main() -> None:
    results = {
        "machine": f"{platform.machine()}, {platform.python_version()}, shared 2-core CPU",
        "max_distance_voxels": MAX_DISTANCE,
        "benchmarks": [
            bench_sweep(
                "score sweep, 200 cases x 30 candidates", synthetic_study(200, 30, 8, 0), 3
            ),
            bench_sweep("score sweep, 1 case x 400 candidates", synthetic_study(1, 400, 60, 1), 1),
            bench_bootstrap(synthetic_study(200, 30, 8, 2), n_boot=1000, repeats=1),
        ],
    }
    with atomic_write(RESULTS) as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
