"""The demo's training recipe, end to end, over three seeds: detection F1 and time per stage.

Runs :func:`weaklesion.demo.run_demo` (what ``make demo`` runs: synthesise the phantom,
train a heatmap U-Net from points with ``src/weaklesion/configs/demo.toml``, predict the
held-out test cases, fit Gaussians, count, evaluate, write the report) for seeds 0, 1
and 2, each in a fresh folder. The goal is detection F1 >= 0.85 on the test cases in
under 10 minutes on 2 CPU cores, for every seed.

Recorded per seed: F1, precision and recall at the existence threshold tuned on the
validation cases (a detection is a true positive within 3 voxels of a lesion centre,
matched one-to-one), that threshold, the epoch it comes from, the F1 of the
hit-inside-the-lesion-mask rule (for information), and the wall-clock and CPU time of
each stage. The 24 test cases of :data:`weaklesion.demo.DEMO_SPLITS` hold about 150
lesions, so one seed's F1 still moves by a few points with the cases drawn; each
trained model is therefore also scored, at the same tuned threshold, on
:data:`EXTRA_TEST_CASES` further phantom cases of the same seed that
the demo never sees (``extended_test``: cases 400-431; the measurements in
:data:`EARLIER_MEASUREMENTS` used cases 300-331, which also chose ``fit_sigma``, so they
are not a clean test of it). ``baseline`` is the design notes' measurement
(MONAI BasicUNet, foreground-weighted MSE, naive local maxima: F1 0.64 after 8 minutes
of training); ``ratio`` = mean F1 / baseline F1.

``--alternatives`` also trains each alternative of :data:`ALTERNATIVES` (the recipe with
some keys changed) with seed 0 through the same code, for the table of what else was
tried; :data:`EARLIER_MEASUREMENTS` records variants measured before with the same
phantom and network.

Timings are wall-clock on whatever machine runs this; the load average is recorded,
because on a machine shared with other work every stage takes longer than it would on
a quiet one.

Run: ``.venv/bin/python -m benchmarks.demo_recipe [--alternatives]``; writes
``benchmarks/results/demo_recipe.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from weaklesion.data import make_phantom_case, zscore
from weaklesion.demo import DEMO_CONFIG, DEMO_SPLITS, run_demo
from weaklesion.detection import fit_gaussians, read_detections_csv
from weaklesion.inference import predict_image
from weaklesion.io import read_image, write_json
from weaklesion.metrics import detection_scores, match_points, match_to_regions
from weaklesion.training import load_config, load_run
from weaklesion.training.data import fit_sigma_voxels

RESULTS = Path(__file__).parent / "results" / "demo_recipe.json"
SEEDS = (0, 1, 2)
EXTRA_TEST_CASES = 32
EXTRA_TEST_FIRST = 400  # phantom case index of the first extra case; the demo uses 0..47
GOAL_F1 = 0.85
GOAL_SECONDS = 600.0
BASELINE = {
    "description": "MONAI BasicUNet, peak-1 heatmap, foreground-weighted MSE (weight 21), "
    "naive local-maximum detector, 48 phantom cases (design notes)",
    "f1_after_4_min": 0.47,
    "f1_after_8_min": 0.64,
}

# Changes to the recipe tried with --alternatives (seed 0, same code path as the demo).
ALTERNATIVES: dict[str, list[str]] = {
    "cosine learning rate, sigma 1, 120 epochs": ["lr_schedule=cosine", "sigma=1.0", "epochs=120"],
    "flips and small affine": ["affine_probability=0.5"],
    "5-level U-Net 8-16-32-64-128": ["model_kwargs.features=[8, 16, 32, 64, 128]"],
}

# Variants measured before this harness ran them; "where" says how.
EARLIER_MEASUREMENTS: list[dict[str, Any]] = [
    {
        "where": "stand-alone loop, same phantom generator and network (UNet 8-16-32-64), "
        "36 training / 8 validation / 16 test cases, 720 s of 1-thread CPU (~81 epochs)",
        "results": {
            "sigma 1, constant lr 1e-3, random flips": {"test_f1": 0.870, "val_f1": 0.845},
            "sigma 1.5, one-cycle lr 3e-3, random flips": {"test_f1": 0.865},
            "sigma 1, constant lr 1e-3, no augmentation": {"test_f1": 0.726},
            "as the first, 72 training cases in the same time": {"test_f1": 0.749},
        },
    },
    {
        "where": "training loop, sigma 1.5, flips and small affine, validation every epoch",
        "results": {"val_f1_epochs_34_to_36": [0.65, 0.75], "train_s_per_epoch": 8.0},
    },
    {
        "where": "training loop, seed 0, constant lr 1e-3, flips only, 100 epochs, "
        "validation every 5 epochs, on a machine loaded by other jobs (time not comparable)",
        "results": {
            "test_f1": 0.870,
            "val_f1_epoch_100": 0.865,
            "val_f1_epoch_50": 0.795,
            "extended_test_f1_at_tuned_threshold": 0.812,
        },
    },
    {
        "where": "this harness, recipe sigma 1, cosine lr from 1e-3, 120 epochs, flips only, "
        "validation every 5 epochs; quiet machine",
        "results": {
            "test_f1_per_seed": [0.825, 0.744, 0.444],
            "extended_test_f1_per_seed": [0.749, 0.724, 0.671],
            "total_s_mean": 328.0,
        },
    },
    {
        "where": "training loop, seed 0, constant lr 1e-3, flips only, 1 thread; scored on the "
        "32 extended-test cases at the tuned threshold (best F1 over thresholds in brackets)",
        "results": {
            "sigma 1.5, 100 epochs": "0.794 (0.821)",
            "sigma 1.5, 150 epochs": "0.825 (0.836)",
            "sigma 1, UNet 8-16-32-64-128, 100 epochs": "0.778 (0.814)",
            "sigma 1, UNet 8-16-32-64-128, 150 epochs": "0.791 (0.826)",
        },
    },
    {
        "where": "the three models of this recipe (best.pt of seeds 0, 1, 2), Gaussians "
        "fitted with a wider sigma than the training target's 1.5, on the 32 extended-test "
        "cases; best F1 over thresholds 0.30-0.90, threshold in brackets",
        "results": {
            "fit sigma 1.5 (as trained)": ["0.839 (0.45)", "0.824 (0.50)", "0.769 (0.50)"],
            "fit sigma 1.75": ["0.876 (0.80)", "0.840 (0.65)", "0.831 (0.75)"],
            "fit sigma 2.0": ["0.874 (0.90)", "0.831 (0.70)", "0.836 (0.70)"],
            "fit sigma 2.5": ["0.843 (0.90)", "0.811 (0.60)", "0.803 (0.85)"],
        },
    },
    {
        "where": "best.pt of the recipe with fit sigma 1.75 and validation every 5 epochs "
        "(seeds 0, 1, 2), and variants (seed 0, 1 thread, machine shared with another job); "
        "F1 on the 32 extended-test cases 400-431 at the threshold with the best F1 on 32 "
        "further cases 432-463 (best F1 over thresholds 0.2-0.9 in brackets)",
        "results": {
            "recipe, fit sigma 1.75": ["0.814 (0.814)", "0.795 (0.806)", "0.868 (0.879)"],
            "recipe, fit sigma 2.0": ["0.803 (0.817)", "0.801 (0.805)", "0.867 (0.871)"],
            "sigma 1, fit sigma 1.25 / 1.5 / 1.75": "0.810 (0.815) / 0.813 (0.817) / 0.816 (0.817)",
            "weight average ema_decay 0.995, fit sigma 1.75 / 2.0": "0.805 (0.810) / 0.816 (0.818)",
        },
        "errors_seed_0_and_1": "of the recipe's misses at its best threshold, 37 of 46 "
        "(seed 0) and 30 of 41 (seed 1) are lesions of fewer than 10 voxels, and 38 of 46 / "
        "38 of 41 lie within 8 voxels of another lesion; recall is 0.53 / 0.55 for lesions "
        "under 10 voxels and about 0.9 for 10-100 voxels. With the ideal heatmap (the "
        "training target) the same fit finds F1 0.978 (fit sigma 1.75) and 1.0 (1.5).",
    },
]


def _region_f1(out: Path, threshold: float) -> float:
    """F1 of the rule "a detection inside a lesion's mask hits it" on the test cases."""
    found = read_detections_csv(out / "detections.csv")
    report = json.loads((out / "metrics.json").read_text())
    matches = []
    for case in report["cases"]:
        labels, _ = read_image(out / "data" / "labelsTr" / f"{case}.nii.gz")
        detections = found.get(case)
        points = np.zeros((0, labels.ndim)) if detections is None else detections.sorted().points
        matches.append(match_to_regions(points, labels.astype(np.int64)))
    return detection_scores(matches).f1


def _extended_test(run_dir: Path, seed: int, threshold: float) -> dict[str, float]:
    """Scores of the trained model on phantom cases the demo never used."""
    model, config, info = load_run(run_dir)
    point_matches, region_matches = [], []
    for index in range(EXTRA_TEST_FIRST, EXTRA_TEST_FIRST + EXTRA_TEST_CASES):
        case = make_phantom_case((seed, index))
        heatmap = predict_image(model, zscore(case.image), "heatmap", scale=info["heatmap_scale"])
        found = fit_gaussians(heatmap.map, fit_sigma_voxels(config, case.spacing))
        kept = found[found.scores >= threshold]
        point_matches.append(match_points(kept.points, case.points, config.match_distance))
        region_matches.append(match_to_regions(kept.points, case.instances))
    scores = detection_scores(point_matches)
    return {
        "n_cases": EXTRA_TEST_CASES,
        "n_lesions": scores.tp + scores.fn,
        "f1": scores.f1,
        "precision": scores.precision,
        "recall": scores.recall,
        "region_hit_f1": detection_scores(region_matches).f1,
    }


def run_recipe(seed: int, root: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the demo once and summarise it."""
    out = root / f"seed_{seed}"
    cpu = time.process_time()
    report = run_demo(out, seed=seed, console=Console(quiet=True), overrides=overrides)
    cpu = time.process_time() - cpu
    detection = report["detection"]
    run = json.loads((out / "run" / "metrics.json").read_text())
    threshold = float(report["settings"]["threshold"])
    history = [json.loads(line) for line in (out / "run" / "history.jsonl").open()]
    return {
        "seed": seed,
        "f1": detection["f1"],
        "precision": detection["precision"],
        "recall": detection["recall"],
        "n_test_lesions": detection["tp"] + detection["fn"],
        "threshold": threshold,
        "best_epoch": run["best_epoch"],
        "val_f1_at_best_epoch": run["best_value"],
        "region_hit_f1": _region_f1(out, threshold),
        "timings_s": report["timings_s"],
        "train_epoch_s_mean": float(np.mean([r["seconds"] for r in history])),
        "validation_s_mean": float(
            np.mean([r["val_seconds"] for r in history if "val_seconds" in r])
        ),
        "validation_s_total": float(sum(r.get("val_seconds", 0.0) for r in history)),
        "cpu_s": cpu,
        "extended_test": _extended_test(out / "run", seed, threshold),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    f1 = np.array([r["f1"] for r in runs])
    extended = np.array([r["extended_test"]["f1"] for r in runs])
    total = np.array([r["timings_s"]["total"] for r in runs])
    return {
        "f1_mean": float(f1.mean()),
        "f1_std": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
        "f1_min": float(f1.min()),
        "extended_test_f1_mean": float(extended.mean()),
        "extended_test_f1_std": float(extended.std(ddof=1)) if len(extended) > 1 else 0.0,
        "total_s_mean": float(total.mean()),
        "total_s_max": float(total.max()),
        "every_seed_reaches_f1_goal": bool((f1 >= GOAL_F1).all()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--alternatives", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, help="keep the demo folders here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    config = load_config(DEMO_CONFIG)
    results: dict[str, Any] = {
        "goal": {"f1": GOAL_F1, "total_s": GOAL_SECONDS, "cores": 2},
        "recipe": json.loads(json.dumps(config.__dict__)),
        "phantom_splits": list(DEMO_SPLITS),
        "baseline": BASELINE,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "load_average_before": load_before,
    }
    with tempfile.TemporaryDirectory(prefix="demo_recipe_") as folder:
        root = Path(args.keep or folder)
        runs = []
        for seed in args.seeds:
            runs.append(run_recipe(seed, root, []))
            print(json.dumps({k: runs[-1][k] for k in ("seed", "f1", "threshold")}))
        results["runs"] = runs
        results["summary"] = summarise(runs)
        results["ratio_f1_vs_baseline"] = results["summary"]["f1_mean"] / BASELINE["f1_after_8_min"]
        if args.alternatives:
            tried = {}
            for name, overrides in ALTERNATIVES.items():
                tried[name] = {"overrides": overrides, **run_recipe(0, root / name, overrides)}
                print(json.dumps({"alternative": name, "f1": tried[name]["f1"]}))
            results["alternatives"] = tried
    results["earlier_measurements"] = EARLIER_MEASUREMENTS
    results["load_average_after"] = os.getloadavg()
    write_json(args.out, results)
    print(json.dumps(results["summary"], indent=2))
    return results


if __name__ == "__main__":
    main()
