"""Experiment 1's units, each a trained network or an evaluation, and the run that orders them.

A unit computes once and writes its JSON file under ``OUT/units``
(:func:`weaklesion.bench.common.run_unit`): the chance reference of one digit (random
maxima), the training of one network on one digit with one objective and seed
(:func:`~weaklesion.bench.common.train_with_early_stopping`), and the evaluation of one
method on that network (:func:`~weaklesion.bench.mnist.scores.score_attention`).
:func:`plan_units` lists the evaluations, and :func:`run_mnist` writes each digit's
grids, runs what is not finished and rewrites the report
(:mod:`~weaklesion.bench.mnist.report`) after every trained network.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weaklesion.attention import smooth_maps
from weaklesion.bench.common import (
    UnitProgress,
    check_settings,
    machine,
    run_unit,
    train_with_early_stopping,
    unit_path,
)
from weaklesion.bench.mnist.data import write_grid_dataset
from weaklesion.bench.mnist.design import (
    ALL_DIGITS,
    DEFAULT_METHODS,
    FULL,
    METHODS,
    NETWORKS,
    OBJECTIVES,
    QUICK,
    QUICK_DIGITS,
    SMOOTH_SIGMAS,
    SMOOTHED,
    MnistSettings,
)
from weaklesion.bench.mnist.report import write_mnist_report
from weaklesion.bench.mnist.scores import attention_and_outputs, choose_smoothing, score_attention
from weaklesion.data import load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.metrics import count_accuracy, count_mae
from weaklesion.training import TrainConfig, load_run


def default_digits(method: str, quick: bool = False) -> tuple[int, ...]:
    """The digits a method runs on by default: all ten for GP-Unet, 4 and 7 for the rest.

    As the paper reports them: GP-Unet and its architecture variants on every digit, the
    comparison on 4 and 7. The quick run uses :data:`QUICK_DIGITS` for every method.
    """
    if quick:
        return QUICK_DIGITS
    return tuple(range(10)) if METHODS[method][0] in ALL_DIGITS else (4, 7)


def plan_units(
    digits: Sequence[int] | None,
    methods: Sequence[str] | None,
    seeds: int,
    quick: bool = False,
    objectives: Sequence[str] | None = None,
) -> list[tuple[int, str, str, int]]:
    """The evaluations to run, ``(digit, method, objective, seed)``, digits 4 and 7 first.

    Parameters
    ----------
    digits : sequence of int or None
        Target digits for every method; None gives each method its
        :func:`default_digits`.
    methods : sequence of str or None
        Keys of :data:`METHODS`; None means the paper's six (:data:`DEFAULT_METHODS`).
    seeds : int
        Seeds 0 .. seeds - 1.
    quick : bool
        Default digits of the quick run (see :func:`default_digits`).
    objectives : sequence of str or None
        Some of :data:`OBJECTIVES`; None means both.

    Examples
    --------
    >>> len(plan_units(None, None, 1))  # GP-Unet on 10 digits, 5 more methods on 2
    40
    >>> plan_units([3], ["grad"], 2)[:2]
    [(3, 'grad', 'regression', 0), (3, 'grad', 'regression', 1)]
    >>> plan_units([3, 4], ["gpunet"], 1, objectives=["regression"])
    [(4, 'gpunet', 'regression', 0), (3, 'gpunet', 'regression', 0)]
    """
    methods = list(DEFAULT_METHODS) if methods is None else list(methods)
    objectives = list(OBJECTIVES) if objectives is None else list(objectives)
    for objective in objectives:
        if objective not in OBJECTIVES:
            raise ValueError(
                f"--objectives: got {objective!r}; expected some of {', '.join(OBJECTIVES)}"
            )
    if not objectives:
        raise ValueError("--objectives: got none; expected some of regression, classification")
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
            for objective in (o for o in OBJECTIVES if o in objectives):
                units += [(digit, method, objective, seed) for seed in range(seeds)]
    first = {4: 0, 7: 1}
    return sorted(units, key=lambda u: (first.get(u[0], 2), u[0], list(METHODS).index(u[1])))


def _train_config(network: str, objective: str, seed: int, settings: MnistSettings):
    """The training of one of :data:`NETWORKS` with the run's recipe.

    Global max pooling trains with the plain gradient: the centred one is defined for
    average-pooled features only.
    """

    model, options = NETWORKS[network]
    gradient = "plain" if options.get("pooling") == "max" else settings.count_gradient
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
        count_gradient=gradient,
        model_kwargs={**options, "normalization": settings.normalization or "none"},
    )


def _test_cases(data_root: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised images ``(N, 1, H, W)``, target-cell labels ``(N, H, W)``, counts ``(N,)``.

    The images of ``split`` are normalised as the training loop normalises them (z-score).
    """

    cases = load_dataset(data_root).split_cases(split)
    arrays = [case.load() for case in cases]
    images = np.stack([zscore(a.image) for a in arrays])
    cells = np.stack([a.mask for a in arrays]).astype(np.int32)
    counts = np.array([case.count for case in cases], dtype=np.int64)
    return images, cells, counts


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
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def arrays(self, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if split not in self._arrays:
            self._arrays[split] = _test_cases(self.root, split)
        return self._arrays[split]


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
    _, attention, reference = METHODS[method]
    maps, outputs = attention_and_outputs(model, images, attention, reference=reference)
    smoothing: dict[str, Any] = {}
    if method in SMOOTHED:
        val_images, val_cells, _ = test.arrays("validation")
        val_maps, _ = attention_and_outputs(model, val_images, attention, reference=reference)
        sigma, by_sigma = choose_smoothing(
            val_maps, val_cells, SMOOTH_SIGMAS, settings.nms_size, settings.max_fp
        )
        maps = smooth_maps(torch.from_numpy(maps), sigma).numpy() if sigma else maps
        smoothing = {"smooth_sigma": sigma, "validation_fauc_threshold_by_sigma": by_sigma}
    predicted = outputs if objective == "regression" else None
    scored = score_attention(
        maps, cells, predicted, settings.nms_size, settings.max_fp, settings.n_boot
    )
    keys = {"digit": digit, "method": method, "objective": objective, "seed": seed}
    return {
        "kind": "evaluation",
        **keys,
        **scored,
        **_count_scores(outputs, counts, objective),
        **smoothing,
    }


def settings_record(settings: MnistSettings) -> dict[str, Any]:
    """What ``OUT/settings.json`` records of a run's settings; a folder holds one record.

    The networks' initialisation is part of the recipe: units trained before the count
    networks started from He initialisation are not mixed with these. Networks without
    normalisation leave it out, as folders written before the option did.

    Examples
    --------
    >>> "normalization" in settings_record(FULL)
    False
    >>> settings_record(dataclasses.replace(FULL, normalization="batch"))["normalization"]
    'batch'
    """
    record = {"experiment": "mnist", "initialisation": "he", **dataclasses.asdict(settings)}
    if settings.normalization is None:
        del record["normalization"]
    return record


def run_mnist(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    digits: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    seeds: int = 1,
    count_gradient: str | None = None,
    normalization: str | None = None,
    objectives: Sequence[str] | None = None,
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
        Keys of :data:`METHODS`; None runs the paper's six (:data:`DEFAULT_METHODS`).
    seeds : int
        Training seeds per (digit, method, objective).
    count_gradient : {"centred", "plain"} or None
        How the count networks learn (:class:`MnistSettings`); None keeps the default,
        ``"plain"``. A folder holds one or the other.
    normalization : {"batch", "none"} or None
        Normalisation inside the networks' convolution blocks (:class:`MnistSettings`);
        None or ``"none"`` gives the papers' networks, without. A folder holds one or the other.
    objectives : sequence of str or None
        Training objectives to run (:func:`plan_units`); None runs both.
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
    if normalization not in (None, "none", "batch"):
        raise ValueError(f"--normalization: got {normalization!r}; expected batch or none")
    if normalization == "batch":
        settings = dataclasses.replace(settings, normalization=normalization)
    units = plan_units(digits, methods, seeds, quick, objectives)
    torch.set_num_threads(settings.threads)
    check_settings(out, settings_record(settings))
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
