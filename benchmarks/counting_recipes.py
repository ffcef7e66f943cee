"""Which multi-task recipe lets the Poisson-binomial count term help: experiment 3's data.

Trains the U-Net of ``weaklesion bench counting`` (full version: 24 × 48 × 48 phantom
volumes, counts 0–5, 30 epochs, the best epoch by validation lesion F1) once per recipe
and seed, with the current code, and scores it on the test volumes as the bench does
(``weaklesion.bench.counting.units._evaluate_unit``). These runs chose the bench's
present recipe; each recipe sets the fields that recipe has changed since, so a name
means what it meant when its units were written:

- ``segmentation``: masks only; its count is the post-hoc Poisson-binomial count of
  the candidate regions above 0.1;
- ``pb``: masks + counts, the Poisson-binomial count NLL of the regions above 0.1
  after 10 epochs of segmentation, ramped over 5 epochs to weight 0.01;
- ``pb_weight0.001``: the same at a tenth of the weight (the bench's now);
- ``pb_regions0.5``: the count NLL of the regions above 0.5 (``count_threshold``);
- ``bottleneck``, ``multihead``, ``downstream``: the count heads with the plain
  gradient at weight 0.01; ``_weight0.1`` / ``_weight1.0``: at larger weights;
  ``bottleneck_early_*``: with the count loss from the first epoch;
- ``<head>_centred``: the gradient of the heads' pooled features centred over the
  batch (the bench's now), at weight 0.01 or (``_weight0.1``) 0.1;
- every recipe without ``_cosine`` keeps the learning rate constant; with
  ``_cosine`` it is annealed to 0 by cosine (the bench's now).

``--split`` sets the volumes per count of each split (default 8 / 1 / 7, which gave
only 6 validation volumes, where the choice of epoch is mostly noise; the bench now
uses 8 / 4 / 12); every unit records its split, and a folder holds one split only.

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
    OMP_NUM_THREADS=1 python -m benchmarks.counting_recipes --split 8 4 12 \\
        --recipes segmentation_cosine pb_cosine --out benchmarks/results/counting_split8-4-12
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
# Each recipe: the bench's method and the TrainConfig fields it sets. Every field that
# the bench's recipe has changed since these runs began is set explicitly, so a name
# keeps its meaning: a constant learning rate, weight 0.01, the plain gradient of the
# heads (as the papers train them).
_BEFORE = {"lr_schedule": "constant", "count_weight": 0.01}
_PLAIN = {**_BEFORE, "count_gradient": "plain"}
_BASE_RECIPES = (
    {
        "segmentation": ("segmentation", {"lr_schedule": "constant"}),
        "pb": ("poisson_binomial", _BEFORE),
        "pb_weight0.001": ("poisson_binomial", {**_BEFORE, "count_weight": 0.001}),
        "pb_regions0.5": ("poisson_binomial", {**_BEFORE, "count_threshold": 0.5}),
        "bottleneck": ("bottleneck", _PLAIN),
        "multihead": ("multihead", _PLAIN),
        "downstream": ("downstream", _PLAIN),
    }
    | {
        # The heads at larger weights: their cross-entropy reaches the U-Net far more weakly
        # than the Poisson-binomial NLL does ...
        f"{head}_weight{weight}": (head, {**_PLAIN, "count_weight": weight})
        for head in ("bottleneck", "multihead", "downstream")
        for weight in (0.1, 1.0)
    }
    | {
        # ... and with the count term from the first epoch, while the encoder still forms.
        f"bottleneck_early_weight{weight}": (
            "bottleneck",
            {**_PLAIN, "count_weight": weight, "count_warmup_epochs": 0},
        )
        for weight in (0.1, 1.0)
    }
    | {
        # The heads with the gradient of their pooled features centred over the batch
        # (TrainConfig.count_gradient="centred", now the default).
        f"{head}_centred{suffix}": (
            head,
            {**_BEFORE, "count_gradient": "centred", "count_weight": weight},
        )
        for head in ("bottleneck", "multihead", "downstream")
        for suffix, weight in (("", 0.01), ("_weight0.1", 0.1))
    }
    | {
        # ... and with the count loss from epoch 6 (ramped in by epoch 10), not 11.
        f"{head}_centred_warmup5": (
            head,
            {**_BEFORE, "count_gradient": "centred", "count_warmup_epochs": 5},
        )
        for head in ("bottleneck", "multihead", "downstream")
    }
)
# The same with the learning rate annealed to 0 by cosine over the 30 epochs, so that
# the chosen epoch and its neighbours are nearly the same network.
RECIPES = _BASE_RECIPES | {
    f"{name}_cosine": (method, changes | {"lr_schedule": "cosine"})
    for name, (method, changes) in _BASE_RECIPES.items()
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


def run(recipe: str, seed: int, work: Path, split: tuple[int, int, int] = (8, 1, 7)) -> dict:
    """Train and score one recipe and seed; ``work`` holds the data and the run folder.

    ``split``: training, validation and test volumes per count.
    """
    method, changes = RECIPES[recipe]
    settings = dataclasses.replace(SETTINGS["full"], split_per_count=tuple(split))
    tag = "split" + "-".join(map(str, settings.split_per_count))
    datalist = units._write_data(work / f"data_{tag}", settings)
    config = dataclasses.replace(units._train_config(method, "full", seed, settings), **changes)
    run_dir = work / f"runs_{tag}" / f"{recipe}_seed{seed}"
    trained = units._train_unit(run_dir, config, datalist)
    key = {"method": method, "regime": "full", "seed": seed}
    cases = units._cases(datalist, "test")
    evaluation = units._evaluate_unit(run_dir, key, cases, settings)
    return {
        "recipe": recipe,
        "seed": seed,
        "changes": changes,
        "split_per_count": list(settings.split_per_count),
        **scores(evaluation),
        "last_epoch": scores(units._evaluate_unit(run_dir, key, cases, settings, "last")),
        "best_epoch": trained["best_epoch"],
        "train_seconds": trained["seconds"],
        "truth": evaluation["truth"],
        "modes": [record["mode"] for record in evaluation["variants"]["count"]],
    }


def summary_table(out: Path) -> str:
    """Markdown table of every recipe in ``out``: mean ± std over its seeds, and the
    differences to the segmentation-only recipe of the same schedule and seed.

    Counts are classes 0–4 ("4 or more"); "classes predicted" is how many of the five
    the recipe's counts use on the test volumes (a model stuck on the most frequent
    class uses one)."""
    units = [read_unit(path) for path in sorted(out.glob("*_seed*.json"))]
    by_recipe: dict[str, dict[int, dict]] = {}
    for unit in units:
        by_recipe.setdefault(unit["recipe"], {})[unit["seed"]] = unit

    def cell(values: list[float], digits: int = 2, sign: str = "") -> str:
        if not values:
            return "—"
        if len(values) == 1:
            return f"{values[0]:{sign}.{digits}f}"
        return f"{np.mean(values):{sign}.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"

    rows = []
    for recipe, seeds in by_recipe.items():
        base = "segmentation_cosine" if recipe.endswith("_cosine") else "segmentation"
        pairs = [(u, by_recipe.get(base, {}).get(s)) for s, u in sorted(seeds.items())]
        pairs = [(u, b) for u, b in pairs if b is not None]
        rows.append(
            [
                recipe,
                ", ".join(map(str, sorted(seeds))),
                cell([u["count_accuracy"] for u in seeds.values()]),
                cell([u["count_mae"] for u in seeds.values()]),
                cell([len(set(np.minimum(u["modes"], MAX_COUNT))) for u in seeds.values()], 1),
                cell([u["lesion_f1"] for u in seeds.values()], 3),
                "—"
                if recipe == base
                else cell([u["lesion_f1"] - b["lesion_f1"] for u, b in pairs], 3, "+"),
                "—"
                if recipe == base
                else cell([u["count_accuracy"] - b["count_accuracy"] for u, b in pairs], 2, "+"),
                cell([u["last_epoch"]["count_accuracy"] for u in seeds.values()]),
                cell([u["last_epoch"]["lesion_f1"] for u in seeds.values()], 3),
                cell([u["train_seconds"] / 60 for u in seeds.values()], 1),
            ]
        )
    header = [
        "recipe", "seeds", "count acc.", "count MAE", "classes predicted", "lesion F1",
        "F1 − segmentation",
        "acc. − segmentation", "last epoch: count acc.", "last: lesion F1", "train min",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(map(str, row)) + " |" for row in rows)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--work", type=Path, default=None, help="data and runs [a temporary folder]"
    )
    parser.add_argument(
        "--split",
        type=int,
        nargs=3,
        default=[8, 1, 7],
        metavar=("TRAIN", "VAL", "TEST"),
        help="volumes per count in each split [8 1 7]",
    )
    parser.add_argument(
        "--summary", action="store_true", help="print the table of --out's units and stop"
    )
    args = parser.parse_args(argv)
    if args.summary:
        print(summary_table(args.out))
        return
    split = tuple(args.split)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        for seed in args.seeds:
            for recipe in args.recipes:
                path = args.out / f"{recipe}_seed{seed}.json"
                done = read_unit(path) or {}
                made = tuple(done.get("split_per_count", (8, 1, 7)))
                if done and made != split:
                    parser.error(
                        f"{path}: made with --split {made}, not {split}; use another --out"
                    )
                if "last_epoch" in done:
                    continue
                result = run(recipe, seed, work, split)
                write_json(path, result)
                print(
                    f"{recipe} seed {seed}: count accuracy {result['count_accuracy']:.2f}, "
                    f"over/under {result['over']}/{result['under']}, "
                    f"lesion F1 {result['lesion_f1']:.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
