"""Where the false positives of a count network's attention maxima lie: MNIST grids.

Scores the class activation map of a trained ``weaklesion bench mnist`` network on its
digit's 500 test grids (:func:`benchmarks.count_training.bench_grids`) as the bench
does (local maxima after a 6-pixel non-maximum suppression, ranked by value over all
grids, a hit when the maximum lies in a target cell not yet hit) and sorts every
false positive among the highest maxima into three kinds:

- ``duplicate``: a further maximum in a target cell already hit (the object gives
  several peaks);
- ``other_cell_target_grid``: a cell of another digit in a grid that holds the target;
- ``empty_grid``: a cell of a grid without the target.

It gives the kinds and the most frequent other digits at 0.1, 0.25, 0.5 and 1 false
positive per grid, the FAUC by threshold, and the FAUC when every cell keeps only its
highest maximum (what the score would be without duplicates). ``--smooth`` smooths
the maps first (``attention_maps(..., smooth=σ)``). One JSON per run and width in
``--out`` (default ``benchmarks/results/attention_false_positives``).

    python -m benchmarks.attention_false_positives \\
        benchmarks/results/bench_mnist_counts/work/runs/digit4_gpunet_regression_seed0 \\
        --digit 4 --smooth 0 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.count_training import bench_grids
from weaklesion.attention import smooth_maps
from weaklesion.bench.mnist import attention_and_outputs, dataset_cells, load_mnist_digits
from weaklesion.data.normalize import zscore
from weaklesion.detection import peak_detections
from weaklesion.io import write_json
from weaklesion.metrics import froc_auc_ci
from weaklesion.training import load_run

RESULTS = Path(__file__).parent / "results" / "attention_false_positives"
CELL = 28
FP_RATES = (0.1, 0.25, 0.5, 1.0)


def classify(maps: np.ndarray, cell_digits: np.ndarray, digit: int) -> list[tuple]:
    """Every maximum of every map as ``(score, image, kind, digit of its cell, cell)``.

    ``kind`` is ``hit``, ``duplicate``, ``other_cell_target_grid`` or ``empty_grid``;
    highest score first.
    """
    rows = []
    for image, values in enumerate(maps):
        found = peak_detections(values, size=6)
        hit_cells: set[tuple[int, int]] = set()
        has_target = bool((cell_digits[image] == digit).any())
        for point, score in zip(found.points, found.scores, strict=True):
            cell = (int(point[0]) // CELL, int(point[1]) // CELL)
            shown = int(cell_digits[image][cell])
            if shown == digit:
                kind = "duplicate" if cell in hit_cells else "hit"
                hit_cells.add(cell)
            else:
                kind = "other_cell_target_grid" if has_target else "empty_grid"
            rows.append((float(score), image, kind, shown, cell))
    return sorted(rows, key=lambda row: -row[0])


def kinds_at(rows: list[tuple], n_images: int, n_targets: int, fp_rate: float) -> dict:
    """Sensitivity and the false positives' kinds once ``fp_rate`` per image are kept."""
    tp = fp = 0
    kinds: dict[str, int] = {}
    digits: dict[int, int] = {}
    for _, _, kind, shown, _ in rows:
        if kind == "hit":
            tp += 1
            continue
        if fp >= fp_rate * n_images:
            break
        fp += 1
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind != "duplicate":
            digits[shown] = digits.get(shown, 0) + 1
    top = dict(sorted(digits.items(), key=lambda item: -item[1])[:4])
    return {
        "fp_per_image": fp_rate,
        "sensitivity": tp / n_targets,
        "false_positives": kinds,
        "other_digits": {str(k): v for k, v in top.items()},
    }


def fauc_by_threshold(rows: list[tuple], n_truth: np.ndarray, one_per_cell: bool) -> float:
    """FAUC (fraction) of the FROC by threshold, optionally keeping each cell's best maximum."""
    per_image: list[list[tuple]] = [[] for _ in n_truth]
    for row in rows:
        per_image[row[1]].append(row)
    scores, hits = [], []
    for found in per_image:
        if one_per_cell:
            seen: set[tuple[int, int]] = set()
            found = [r for r in found if not (r[4] in seen or seen.add(r[4]))]
        scores.append(np.array([r[0] for r in found]))
        hits.append(np.array([r[2] == "hit" for r in found]))
    return froc_auc_ci(scores, hits, n_truth, 5.0, by_rank=False, n_boot=1).estimate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a bench mnist run folder")
    parser.add_argument("--digit", type=int, required=True)
    parser.add_argument("--smooth", type=float, nargs="+", default=[0.0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _, labels = load_mnist_digits()
    cell_digits = labels[dataset_cells(labels, args.digit)["test"]]
    grids, counts, _ = bench_grids(args.digit)["test"]
    images = np.stack([zscore(grid.astype(np.float32)) for grid in grids])
    model, _, _ = load_run(args.run, "best")
    raw, _ = attention_and_outputs(model, images, "cam")
    n_truth = counts.astype(int)
    for sigma in args.smooth:
        maps = smooth_maps(torch.from_numpy(raw), sigma).numpy() if sigma else raw
        rows = classify(maps, cell_digits, args.digit)
        result = {
            "run": args.run.name,
            "digit": args.digit,
            "smooth": sigma,
            "fauc_threshold": fauc_by_threshold(rows, n_truth, one_per_cell=False),
            "fauc_threshold_one_per_cell": fauc_by_threshold(rows, n_truth, one_per_cell=True),
            "at": [kinds_at(rows, len(maps), int(n_truth.sum()), r) for r in FP_RATES],
        }
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / f"{args.run.name}_smooth{sigma:g}.json", result)
        print(
            f"{args.run.name} smooth {sigma:g}: FAUC by threshold "
            f"{100 * result['fauc_threshold']:.1f}, one maximum per cell "
            f"{100 * result['fauc_threshold_one_per_cell']:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
