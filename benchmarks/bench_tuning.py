"""Speed of operating-point tuning and paired comparisons against straightforward baselines.

1. Threshold sweep: ``threshold_sweep`` (one ``hits_by_score`` pass per case, then every
   threshold at once) against matching the kept detections afresh with ``match_points``
   at each of the 99 candidate thresholds, as a per-threshold loop does. Both give the
   same per-case TP, FP and FN.
2. Paired bootstrap of a FAUC difference: ``paired_bootstrap`` with the FROC area of
   weighted case sets (``froc_auc_weighted``, ``by_weights=True``) against the same
   resamples with ``froc_curve`` + ``froc_auc`` rebuilt for each resample and method.
   Both give the same interval and p-value.
3. Paired bootstrap of a mean difference: ``paired_bootstrap`` against
   ``scipy.stats.bootstrap(paired=True, method="percentile", vectorized=True)``; the
   intervals agree within Monte-Carlo error.

Run: ``.venv/bin/python -m benchmarks.bench_tuning``; writes ``benchmarks/results/tuning.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import scipy.stats

from benchmarks.bench_metrics import synthetic_study
from weaklesion.compare import paired_bootstrap
from weaklesion.io import atomic_write
from weaklesion.metrics import froc_auc, froc_auc_weighted, froc_curve, hits_by_score, match_points
from weaklesion.tuning import DEFAULT_THRESHOLDS, threshold_sweep

RESULTS = Path(__file__).parent / "results" / "tuning.json"
MAX_DISTANCE = 3.0


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def sweep_by_matching(cases: list[tuple]) -> np.ndarray:
    """(threshold, case, [tp, fp, fn]) from matching the kept detections at each threshold."""
    result = np.zeros((len(DEFAULT_THRESHOLDS), len(cases), 3), dtype=np.int64)
    for k, threshold in enumerate(sorted(DEFAULT_THRESHOLDS, reverse=True)):
        for c, (points, scores, truth) in enumerate(cases):
            matches = match_points(points[scores >= threshold], truth, MAX_DISTANCE)
            result[k, c] = matches.tp, matches.fp, matches.fn
    return result


def sweep_at_once(cases: list[tuple]) -> np.ndarray:
    curve = threshold_sweep([(p, s) for p, s, _ in cases], [t for *_, t in cases], MAX_DISTANCE)
    return np.stack([curve.tp, curve.fp, curve.fn], axis=2)


def bench_sweep(name: str, cases: list[tuple], repeats: int) -> dict:
    same = bool(np.array_equal(sweep_by_matching(cases), sweep_at_once(cases)))
    baseline = best_time(lambda: sweep_by_matching(cases), repeats)
    ours = best_time(lambda: sweep_at_once(cases), repeats)
    return {
        "name": name,
        "n_cases": len(cases),
        "n_detections": int(sum(len(c[1]) for c in cases)),
        "n_thresholds": len(DEFAULT_THRESHOLDS),
        "baseline": "match_points on the kept detections at every threshold",
        "baseline_s": baseline,
        "threshold_sweep_s": ours,
        "same_tp_fp_fn": same,
    }


def froc_items(cases: list[tuple]) -> list[tuple]:
    return [
        (scores, hits_by_score(points, scores, truth, MAX_DISTANCE), len(truth))
        for points, scores, truth in cases
    ]


def bench_paired_fauc(n_cases: int, n_boot: int, repeats: int) -> dict:
    a = froc_items(synthetic_study(n_cases, 30, 8, 3))
    # Method B: the same cases with its scores shuffled within each case (a worse ranking).
    rng = np.random.default_rng(4)
    b = [(rng.permutation(scores), hits, truth) for scores, hits, truth in a]

    def by_weights(items, weights):
        scores, hits, truth = zip(*items, strict=True)
        return froc_auc_weighted(scores, hits, truth, weights, 5.0)

    def per_resample(items):
        curve = froc_curve(*zip(*items, strict=True))
        return froc_auc(curve.fp_per_image, curve.sensitivity, 5.0)

    def ours():
        return paired_bootstrap(a, b, by_weights, n_boot=n_boot, seed=0, by_weights=True)

    def baseline():
        return paired_bootstrap(a, b, per_resample, n_boot=n_boot, seed=0)

    fast, slow = ours(), baseline()
    return {
        "name": f"paired bootstrap of a FAUC difference, {n_cases} cases",
        "n_cases": n_cases,
        "n_detections": int(sum(len(item[0]) for item in a)),
        "n_boot": n_boot,
        "baseline": "froc_curve + froc_auc rebuilt for every resample and method",
        "baseline_s": best_time(baseline, repeats),
        "by_weights_s": best_time(ours, repeats),
        "result": fast.to_dict(),
        "max_difference_to_baseline": float(
            np.max(
                np.abs(
                    np.subtract(
                        [fast.estimate, fast.low, fast.high, fast.p_value],
                        [slow.estimate, slow.low, slow.high, slow.p_value],
                    )
                )
            )
        ),
    }


def bench_paired_mean(n_cases: int, n_boot: int, repeats: int) -> dict:
    rng = np.random.default_rng(5)
    a = rng.poisson(3, n_cases).astype(float)
    b = a + rng.normal(0.2, 1.0, n_cases)

    def ours():
        return paired_bootstrap(a, b, n_boot=n_boot, seed=0)

    def scipy_bootstrap():
        return scipy.stats.bootstrap(
            (a, b),
            lambda x, y, axis: np.mean(y - x, axis=axis),
            paired=True,
            vectorized=True,
            n_resamples=n_boot,
            method="percentile",
            random_state=np.random.default_rng(0),
        )

    result, reference = ours(), scipy_bootstrap()
    return {
        "name": f"paired bootstrap of a mean difference, {n_cases} cases",
        "n_cases": n_cases,
        "n_boot": n_boot,
        "baseline": "scipy.stats.bootstrap(paired=True, method='percentile', vectorized=True)",
        "baseline_s": best_time(scipy_bootstrap, repeats),
        "paired_bootstrap_s": best_time(ours, repeats),
        "interval": [result.low, result.high],
        "scipy_interval": [
            float(reference.confidence_interval.low),
            float(reference.confidence_interval.high),
        ],
        "standard_error": float(np.std(b - a, ddof=1) / np.sqrt(n_cases)),
    }


def main() -> None:
    benchmarks = [
        bench_sweep("99 thresholds, 40 cases x 30 candidates", synthetic_study(40, 30, 8, 0), 3),
        bench_sweep("99 thresholds, 6 cases x 200 candidates", synthetic_study(6, 200, 40, 1), 1),
        bench_paired_fauc(100, n_boot=1000, repeats=1),
        bench_paired_mean(100, n_boot=10000, repeats=3),
    ]
    for entry in benchmarks:
        if "baseline_s" in entry:
            ours = next(v for k, v in entry.items() if k.endswith("_s") and k != "baseline_s")
            entry["ratio_baseline_over_ours"] = entry["baseline_s"] / ours
    results = {
        "machine": f"{platform.machine()}, {platform.python_version()}, shared 2-core CPU",
        "load_average": list(os.getloadavg()),
        "max_distance_voxels": MAX_DISTANCE,
        "benchmarks": benchmarks,
    }
    with atomic_write(RESULTS) as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
