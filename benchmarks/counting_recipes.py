"""Which multi-task recipe lets the Poisson-binomial count term help: experiment 3's data.

Trains the U-Net of ``weaklesion bench counting`` (full version: 24 × 48 × 48 phantom
volumes, counts 0–5, 48 training / 6 validation / 42 test volumes, 30 epochs, the
best epoch by validation lesion F1) once per recipe and seed, with the current code,
and scores it on the test volumes as the bench does
(``weaklesion.bench.counting.units._evaluate_unit``):

- ``segmentation``: masks only; its count is the post-hoc Poisson-binomial count of
  the candidate regions above 0.1;
- ``pb``: masks + counts, the bench's multi-task recipe (count NLL of the regions above
  0.1 after 10 epochs of segmentation, ramped over 5 epochs to weight 0.01);
- ``pb_weight0.001``: the same at a tenth of the weight;
- ``pb_regions0.5``: the count NLL of the regions above 0.5 (``count_threshold``).

The bench keeps the epoch of best validation lesion F1, on 6 validation volumes where
ties are common and the first is kept; ``last_epoch`` scores the network of the last
epoch the same way, a reading free of that choice.

Every model's count is the mode of the Poisson-binomial distribution of its regions
above 0.1 (the bench's reading); each record also holds the count's signed errors
(over- and under-counts), its accuracy at every threshold 0.1–0.9, Dice and lesion F1
(components at 0.5 matched to the true lesions). One JSON per run in ``--out``
(default ``benchmarks/results/counting_recipes``), written when it finishes; a rerun
skips finished runs.

    OMP_NUM_THREADS=1 python -m benchmarks.counting_recipes --seeds 0 1 2 \\
        --recipes segmentation pb pb_regions0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch

from weaklesion.bench.common import read_unit
from weaklesion.bench.counting import units
from weaklesion.bench.counting.design import MAX_COUNT, SETTINGS, THRESHOLDS
from weaklesion.io import write_json
from weaklesion.metrics import count_accuracy, count_mae, f1_from_counts

RESULTS = Path(__file__).parent / "results" / "counting_recipes"
# Each recipe: the bench's method and the TrainConfig fields it changes.
RECIPES = {
    "segmentation": ("segmentation", {}),
    "pb": ("poisson_binomial", {}),
    "pb_weight0.001": ("poisson_binomial", {"count_weight": 0.001}),
    "pb_regions0.5": ("poisson_binomial", {"count_threshold": 0.5}),
}


def scores(evaluation: dict) -> dict:
    """Count accuracy, MAE and signed errors (classes 0–4), Dice and lesion F1."""
    truth = np.minimum(np.asarray(evaluation["truth"]), MAX_COUNT)
    mode = np.array([record["mode"] for record in evaluation["variants"]["count"]])
    errors = mode - truth
    # The PB mode at each threshold, counted in the same classes.
    modes = np.minimum([t["pb"] for t in evaluation["thresholds"]], MAX_COUNT)
    by_threshold = [count_accuracy(modes[:, k], truth) for k in range(len(THRESHOLDS))]
    return {
        "count_accuracy": count_accuracy(mode, truth),
        "count_mae": count_mae(mode, truth),
        "over": int(np.sum(errors > 0)),
        "under": int(np.sum(errors < 0)),
        "accuracy_by_threshold": dict(zip(map(str, THRESHOLDS), by_threshold, strict=True)),
        "dice": float(evaluation["dice"]),
        "lesion_f1": float(f1_from_counts(*evaluation["lesion_tp_fp_fn"])),
    }


def run(recipe: str, seed: int, work: Path) -> dict:
    """Train and score one recipe and seed; ``work`` holds the data and the run folder."""
    method, changes = RECIPES[recipe]
    settings = SETTINGS["full"]
    datalist = units._write_data(work / "data", settings)
    config = dataclasses.replace(units._train_config(method, "full", seed, settings), **changes)
    run_dir = work / "runs" / f"{recipe}_seed{seed}"
    trained = units._train_unit(run_dir, config, datalist)
    key = {"method": method, "regime": "full", "seed": seed}
    cases = units._cases(datalist, "test")
    evaluation = units._evaluate_unit(run_dir, key, cases, settings)
    return {
        "recipe": recipe,
        "seed": seed,
        "changes": changes,
        **scores(evaluation),
        "last_epoch": scores(units._evaluate_unit(run_dir, key, cases, settings, "last")),
        "best_epoch": trained["best_epoch"],
        "train_seconds": trained["seconds"],
        "truth": evaluation["truth"],
        "modes": [record["mode"] for record in evaluation["variants"]["count"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--work", type=Path, default=None, help="data and runs [a temporary folder]"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        for seed in args.seeds:
            for recipe in args.recipes:
                path = args.out / f"{recipe}_seed{seed}.json"
                if "last_epoch" in (read_unit(path) or {}):
                    continue
                result = run(recipe, seed, work)
                write_json(path, result)
                print(
                    f"{recipe} seed {seed}: count accuracy {result['count_accuracy']:.2f}, "
                    f"over/under {result['over']}/{result['under']}, "
                    f"lesion F1 {result['lesion_f1']:.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
