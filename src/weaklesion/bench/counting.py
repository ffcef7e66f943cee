"""Experiment 3: segmentation-consistent counting (Schroeter, Myers-Colet et al., MIDL 2022).

The paper counts gadolinium-enhancing lesions in private brain MRI; here the same
protocol runs on the 3D phantom (:func:`weaklesion.data.write_phantom_dataset`), whose
masks and counts are exact.

Data
    Lesion counts 0 .. ``max_lesions``, the same number of volumes for each count
    (one phantom dataset per count, seed ``DATA_SEED + count``), split per count into
    training, validation and test cases: the splits are stratified by count. A count is
    scored in the classes 0, 1, 2, 3 and "4 or more" (:data:`MAX_COUNT`), as in the paper.
Models (one set per seed)
    ``segmentation``: a U-Net trained on the masks alone (weighted BCE), best epoch by
    validation lesion F1. ``poisson_binomial`` (ours), ``bottleneck``, ``multihead`` and
    ``downstream``: the same U-Net trained on masks and counts with the multi-task
    schedule of :class:`~weaklesion.training.TrainConfig` (segmentation only for
    ``count_warmup_epochs``, then the count loss ramped in to ``count_weight``), counting
    by the Poisson-binomial distribution of the map's candidate regions or by a
    classifier on the bottleneck, the last decoder features or the map (pooled features
    standardised when ``standardize_heads``); best epoch by validation lesion F1 from the
    epoch the count loss starts, as in the paper. The low-data regime trains the four
    multi-task models on ``low_data_fraction`` of the training cases (validation cases
    kept) for ``low_data_epoch_factor`` times the epochs.
Tables
    1. Threshold sensitivity (paper Table C.1): on the segmentation model's test maps, count
       accuracy and F1 of the connected-component count at threshold ``t`` and of the
       mode of the Poisson-binomial distribution of the candidate regions above ``t``,
       for ``t`` = 0.1 .. 0.9; the spread (max - min and standard deviation) of each
       accuracy over ``t`` = 0.1 .. 0.5. The same on planted maps (lesions of known
       existence probability plus low-probability distractors, see
       :func:`planted_probability_map`), whose answer is known.
    2. Multi-task comparison: count accuracy, F1 and MAE, Dice and lesion F1 of every
       model, and of the segmentation model counted post hoc (Poisson-binomial at 0.1,
       components at 0.5, MC-dropout components); the same in the low-data regime.
    3. Count calibration: reliability of the probability of the predicted count class
       (top-label), expected calibration error over 10 bins.
    4. Accuracy of the ``k`` most certain test images, ranked by count entropy.
    5. The adversarial attack of :func:`weaklesion.adversarial.attack_success_rate`:
       success rate and accuracy drop against random noise of the same norm.

Every trained model, evaluation and attack is one unit with its own JSON file under
``OUT/units``, written atomically once the unit is done; a rerun reads finished units
instead of recomputing them, and an interrupted training resumes from its ``last.pt``.
Seeds are 0 .. ``seeds - 1``; tables give the mean and the sample standard deviation
over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from scipy import ndimage

from weaklesion.adversarial import attack_success_rate
from weaklesion.bench.common import (
    UnitProgress,
    check_settings,
    json_ready,
    machine,
    markdown_table,
    read_unit,
    run_unit,
    unit_path,
    write_text,
)
from weaklesion.counting import (
    candidate_regions,
    component_count,
    count_statistics,
    poisson_binomial_pmf,
)
from weaklesion.data.dataset import load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.data.phantom import write_phantom_dataset
from weaklesion.detection import component_detections
from weaklesion.inference import predict_image
from weaklesion.io import atomic_write, write_json
from weaklesion.metrics import (
    accuracy_by_certainty,
    count_accuracy,
    count_f1,
    count_mae,
    expected_calibration_error,
    f1_from_counts,
    match_to_regions,
    reliability_bins,
)
from weaklesion.report.figures import plot_curve, plot_reliability
from weaklesion.training import TrainConfig, load_run, train
from weaklesion.uncertainty import mc_dropout_count_distribution

__all__ = [
    "METHODS",
    "SETTINGS",
    "CountingSettings",
    "counting_tables",
    "planted_probability_map",
    "run_counting",
    "summarise_counting",
    "threshold_sensitivity",
]

METHODS = ("segmentation", "poisson_binomial", "bottleneck", "multihead", "downstream")
MULTITASK = METHODS[1:]
LABELS = {
    "segmentation": "segmentation only",
    "poisson_binomial": "multi-task, Poisson-binomial (ours)",
    "bottleneck": "multi-task, bottleneck head",
    "multihead": "multi-task, multi-head",
    "downstream": "multi-task, downstream head",
    "segmentation_cc": "segmentation only, components at 0.5",
    "segmentation_mc": "segmentation only, MC-dropout components",
}
THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))
STABLE_UP_TO = 0.5  # the spread is measured over thresholds 0.1 .. 0.5
MAX_COUNT = 4  # count classes 0, 1, 2, 3 and "4 or more"
COUNT_THRESHOLD = 0.1  # candidate regions of the Poisson-binomial count
SEGMENTATION_THRESHOLD = 0.5
CERTAINTY_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
CALIBRATION_BINS = 10
DATA_SEED = 3000
COUNT_WEIGHT = 0.01
PLANTED_SEED = 7


@dataclass(frozen=True)
class CountingSettings:
    """Sizes of one version of the experiment (``SETTINGS["full"]`` or ``["quick"]``).

    Attributes
    ----------
    shape : (Z, Y, X) ints
        Phantom volume size in voxels.
    max_lesions : int
        Counts 0 .. ``max_lesions`` are drawn, each for the same number of volumes.
    split_per_count : (int, int, int)
        Training, validation and test volumes of each count.
    features : tuple of int
        U-Net widths per level.
    epochs, count_warmup_epochs, count_ramp_epochs : int
        Training schedule of every model (warm-up and ramp: multi-task models only).
    count_weight : float
        Weight of the count loss once ramped in. At weight 1 the count NLL's gradient on
        the U-Net's parameters is 40 to 200 times the segmentation BCE's (measured after
        10 epochs of segmentation) and the segmentation collapses.
    standardize_heads : bool
        Standardise the count heads' pooled features
        (``TrainConfig.count_head_standardize``).
    lr : float
        Adam learning rate (batches of two volumes).
    positive_weight : float
        Weight of lesion voxels in the segmentation BCE.
    low_data_fraction : float
        Fraction of the training volumes of the low-data regime.
    low_data_epoch_factor : int
        Epochs (and warm-up and ramp) of the low-data regime, as a multiple of ``epochs``.
    attack_images : int
        Test volumes attacked per model (the first ones of the test split).
    attack_steps : int
        Adam steps of each attack.
    mc_samples : int
        MC-dropout passes of the segmentation model.
    """

    shape: tuple[int, int, int]
    max_lesions: int
    split_per_count: tuple[int, int, int]
    features: tuple[int, ...]
    epochs: int
    count_warmup_epochs: int
    count_ramp_epochs: int
    count_weight: float
    standardize_heads: bool
    lr: float
    positive_weight: float
    low_data_fraction: float
    low_data_epoch_factor: int
    attack_images: int
    attack_steps: int
    mc_samples: int


SETTINGS = {
    "full": CountingSettings(
        shape=(24, 48, 48),
        max_lesions=5,
        split_per_count=(8, 1, 7),
        features=(8, 16, 32, 64),
        epochs=30,
        count_warmup_epochs=10,
        count_ramp_epochs=5,
        count_weight=COUNT_WEIGHT,
        standardize_heads=True,
        lr=3e-3,
        positive_weight=10.0,
        low_data_fraction=0.1,
        low_data_epoch_factor=4,
        attack_images=12,
        attack_steps=20,
        mc_samples=10,
    ),
    "quick": CountingSettings(
        shape=(16, 32, 32),
        max_lesions=4,
        split_per_count=(2, 1, 1),
        features=(4, 8, 16, 32),
        epochs=3,
        count_warmup_epochs=1,
        count_ramp_epochs=1,
        count_weight=COUNT_WEIGHT,
        standardize_heads=True,
        lr=3e-3,
        positive_weight=10.0,
        low_data_fraction=0.1,
        low_data_epoch_factor=2,
        attack_images=2,
        attack_steps=2,
        mc_samples=2,
    ),
}
# The attack (weaklesion.adversarial.count_attack): push the count away from the clean
# prediction with Adam steps of 0.01 (z-scored intensity), noise at most 0.1 per voxel,
# and the squared l2 change of the probability map as penalty.
ATTACK_OPTIONS = {"target": "away", "step_size": 0.01, "epsilon": 0.1, "l2_weight": 1.0}


# ----------------------------------------------------------------------------- units


class _Units:
    """Runs units through :func:`~weaklesion.bench.common.run_unit`, counting and showing them."""

    def __init__(self, out: Path, progress: UnitProgress) -> None:
        self.out = out
        self.progress = progress
        self.computed = 0
        self.reused = 0

    def get(self, name: str, compute: Callable[..., dict], *args: Any) -> dict:
        """The unit's stored result, or ``compute(*args)`` stored as it."""
        path = unit_path(self.out, name)
        if read_unit(path) is None:
            self.computed += 1
            self.progress.start(name)
        else:
            self.reused += 1
        result = run_unit(path, lambda: compute(*args))
        self.progress.done()
        return result


# ------------------------------------------------------------------------------ data


def _write_data(root: Path, settings: CountingSettings) -> Path:
    """Phantom volumes with counts 0 .. max_lesions and a datalist of all of them.

    The datalist is written last, so its presence means the data are complete.
    """

    datalist = root / "datalist.json"
    if datalist.exists():
        return datalist
    sections: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    description: dict = {}
    for count in range(settings.max_lesions + 1):
        folder = write_phantom_dataset(
            root / f"count_{count}",
            n_cases=sum(settings.split_per_count),
            seed=DATA_SEED + count,
            shape=settings.shape,
            splits=settings.split_per_count,
            n_lesions=count,
            overwrite=True,
        )
        description = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        channels = range(len(description["channel_names"]))
        for section, cases in description["split"].items():
            sections[section] += [
                {
                    "id": f"count{count}_{case}",
                    "image": [f"{folder.name}/imagesTr/{case}_{c:04d}.nii.gz" for c in channels],
                    "label": f"{folder.name}/labelsTr/{case}.nii.gz",
                    "count": count,
                }
                for case in cases
            ]
    payload = {
        "channel_names": description["channel_names"],
        "spacing": description["spacing"],
        **sections,
    }
    with atomic_write(datalist, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
    return datalist


@dataclass(frozen=True, eq=False)
class _Case:
    name: str
    image: np.ndarray  # (C, Z, Y, X) z-scored
    instances: np.ndarray  # (Z, Y, X) lesion ids
    count: int


def _cases(datalist: Path, split: str | None) -> list[_Case]:

    dataset = load_dataset(datalist)
    chosen = list(dataset) if split is None else dataset.split_cases(split)
    cases = []
    for case in chosen:
        arrays = case.load()
        cases.append(_Case(case.id, zscore(arrays.image), arrays.mask, int(case.count)))
    return cases


# --------------------------------------------------------------------- planted maps


def planted_probability_map(
    instances: np.ndarray, rng: np.random.Generator, distractors: float = 1.5
) -> np.ndarray:
    """A probability map whose lesions exist with known probabilities: an oracle model.

    Each true lesion gets an existence probability ``p`` drawn uniformly from [0.6, 1]
    and the value ``p * exp(-d^2 / 2)`` at distance ``d`` voxels from its mask (``p``
    inside), so that low thresholds grow and merge neighbouring lesions as a real
    network's blurred output does. A Poisson(``distractors``) number of false blobs,
    peaks drawn from [0.1, 0.45], are added at random voxels outside the lesions.

    Parameters
    ----------
    instances : (Z, Y, X) int array
        0 for background, a positive id per lesion.
    rng : numpy.random.Generator
        Source of the probabilities and the distractors.
    distractors : float
        Mean number of false blobs per map.

    Returns
    -------
    (Z, Y, X) float64 array
        Probabilities in [0, 1]; the voxel-wise maximum over lesions and blobs.

    Examples
    --------
    >>> instances = np.zeros((8, 8, 8), int)
    >>> instances[2, 2, 2] = 1
    >>> planted = planted_probability_map(instances, np.random.default_rng(0), 0.0)
    >>> bool(0.6 <= planted[2, 2, 2] <= 1), round(float(planted[2, 2, 3] / planted[2, 2, 2]), 4)
    (True, 0.6065)
    """
    planted = np.zeros(instances.shape)
    for label in np.unique(instances[instances > 0]):
        distance = ndimage.distance_transform_edt(instances != label)
        planted = np.maximum(planted, rng.uniform(0.6, 1.0) * np.exp(-(distance**2) / 2))
    outside = np.flatnonzero(instances.reshape(-1) == 0)
    for _ in range(rng.poisson(distractors)):
        centre = np.zeros(instances.shape, dtype=bool)
        centre.reshape(-1)[rng.choice(outside)] = True
        distance = ndimage.distance_transform_edt(~centre)
        planted = np.maximum(planted, rng.uniform(0.1, 0.45) * np.exp(-(distance**2) / 2))
    return planted


# ------------------------------------------------------------------ counts per map


def threshold_counts(prob_map: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """Connected-component counts and Poisson-binomial modes of one map per threshold.

    Parameters
    ----------
    prob_map : (Z, Y, X) or (Y, X) array
        Voxel probabilities in [0, 1].
    thresholds : sequence of float
        Binarisation thresholds (a voxel is foreground strictly above).

    Returns
    -------
    dict
        ``"cc"``: number of connected components above each threshold; ``"pb"``: the
        most probable count of the Poisson-binomial distribution of the candidate regions
        above each threshold, bins 0 .. :data:`MAX_COUNT` (the last "or more").
    """

    return {
        "cc": [int(component_count(prob_map, t).mode) for t in thresholds],
        "pb": [int(np.argmax(_poisson_binomial(prob_map, t))) for t in thresholds],
    }


def threshold_sensitivity(
    counts: Sequence[dict], truth: Sequence[int], thresholds: Sequence[float] = THRESHOLDS
) -> dict:
    """Count accuracy and F1 per threshold of both counts, and their spread.

    Parameters
    ----------
    counts : sequence of dict
        :func:`threshold_counts` of each image.
    truth : sequence of int
        True count of each image.
    thresholds : sequence of float
        The thresholds of ``counts``.

    Returns
    -------
    dict
        For ``"cc"`` and ``"pb"``: ``"accuracy"`` and ``"f1"`` lists over the thresholds
        (classes 0 .. 3 and "4 or more"), and ``"spread"`` (max - min) and ``"std"``
        (population standard deviation) of the accuracy over thresholds up to
        :data:`STABLE_UP_TO`.

    Examples
    --------
    >>> counts = [{"cc": [3, 2], "pb": [2, 2]}, {"cc": [1, 0], "pb": [0, 0]}]
    >>> table = threshold_sensitivity(counts, [2, 0], thresholds=(0.1, 0.2))
    >>> table["cc"]["accuracy"], table["pb"]["accuracy"], table["cc"]["spread"]
    ([0.0, 1.0], [1.0, 1.0], 1.0)
    """

    actual = np.minimum(np.asarray(truth), MAX_COUNT)
    stable = np.asarray(thresholds) <= STABLE_UP_TO + 1e-9
    table = {"thresholds": list(thresholds)}
    for kind in ("cc", "pb"):
        predicted = np.minimum([c[kind] for c in counts], MAX_COUNT).reshape(len(counts), -1)
        accuracy = [count_accuracy(predicted[:, i], actual) for i in range(len(thresholds))]
        f1 = [count_f1(predicted[:, i], actual) for i in range(len(thresholds))]
        kept = np.asarray(accuracy)[stable]
        table[kind] = {
            "accuracy": accuracy,
            "f1": f1,
            "spread": float(kept.max() - kept.min()),
            "std": float(kept.std()),
        }
    return table


def _poisson_binomial(prob_map: np.ndarray, threshold: float) -> np.ndarray:
    """Count pmf, bins 0 .. :data:`MAX_COUNT`, of the regions of ``prob_map`` > ``threshold``."""

    existence = candidate_regions(prob_map, threshold).probabilities
    return poisson_binomial_pmf(np.asarray(existence, dtype=np.float64), MAX_COUNT)


def _count_record(pmf: np.ndarray) -> dict:
    """Mode, its probability and the entropy of one count pmf.

    A float64 softmax or Poisson-binomial product can exceed 1 by a rounding error,
    which :func:`~weaklesion.counting.count_statistics` refuses: the pmf is clipped to
    [0, 1] and renormalised first.
    """

    values = np.clip(np.asarray(pmf, dtype=np.float64), 0.0, 1.0)
    stats = count_statistics(values / values.sum())
    return {
        "mode": int(stats.mode),
        "confidence": float(stats.pmf[stats.mode]),
        "entropy": float(stats.entropy),
    }


# ------------------------------------------------------------------------- training


def _train_config(method: str, regime: str, seed: int, settings: CountingSettings):

    factor = settings.low_data_epoch_factor if regime == "low" else 1
    values: dict[str, Any] = {
        "labels": "masks" if method == "segmentation" else "masks+counts",
        "model": "unet",
        "model_kwargs": {"features": list(settings.features)},
        "epochs": settings.epochs * factor,
        "count_warmup_epochs": settings.count_warmup_epochs * factor,
        "count_ramp_epochs": settings.count_ramp_epochs * factor,
        "max_count": MAX_COUNT,
        "lr": settings.lr,
        "batch_size": 2,
        "positive_weight": settings.positive_weight,
        "seed": seed,
        "num_threads": 1,
        "device": "cpu",
    }
    if method != "segmentation":
        values.update(
            count_head=method,
            count_weight=settings.count_weight,
            count_head_standardize=settings.standardize_heads,
        )
    if regime == "low":
        values["label_fraction"] = settings.low_data_fraction
    return TrainConfig(**values)


def _train_unit(run_dir: Path, config, datalist: Path) -> dict:

    result = train(config, datalist, run_dir, resume=True, progress=False)
    history = result.history
    return {
        "config": dataclasses.asdict(config),
        "epochs": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "metric": result.metric,
        "best_value": result.best_value,
        "seconds": float(sum(r.get("seconds", 0.0) + r.get("val_seconds", 0.0) for r in history)),
    }


# ----------------------------------------------------------------------- evaluation


def _evaluate_unit(
    run_dir: Path, key: dict, cases: Sequence[_Case], settings: CountingSettings
) -> dict:
    """Counts, count distributions and segmentation scores of one model on the test cases.

    ``key`` (method, regime, seed) is copied into the result. Every model's own count
    distribution is recorded; the segmentation model's also as components at 0.5 and
    as MC-dropout components.
    """
    method = key["method"]

    model, _, _ = load_run(run_dir)
    variants: dict[str, list[dict]] = {"count": []}
    if method == "segmentation":
        variants.update(cc=[], mc=[])
    thresholds, intersection, volume, tp, fp, fn = [], 0.0, 0.0, 0, 0, 0
    for case in cases:
        prediction = predict_image(model, case.image, "segmentation")
        probability = prediction.map
        # A count head's own pmf, else the Poisson-binomial one of the map.
        pmf = prediction.count_pmf
        if pmf is None:
            pmf = _poisson_binomial(probability, COUNT_THRESHOLD)
        variants["count"].append(_count_record(pmf))
        if method == "segmentation":
            cc = component_count(probability, SEGMENTATION_THRESHOLD, max_count=MAX_COUNT)
            variants["cc"].append(_count_record(np.asarray(cc.pmf)))
            sampled = mc_dropout_count_distribution(
                model,
                case.image,
                settings.mc_samples,
                threshold=SEGMENTATION_THRESHOLD,
                max_count=MAX_COUNT,
            )
            variants["mc"].append(_count_record(np.asarray(sampled.pmf)))
        thresholds.append(threshold_counts(probability))
        predicted, truth = probability > SEGMENTATION_THRESHOLD, case.instances > 0
        intersection += float(np.logical_and(predicted, truth).sum())
        volume += float(predicted.sum() + truth.sum())
        found = component_detections(probability, SEGMENTATION_THRESHOLD)
        matches = match_to_regions(found.points, case.instances)
        tp, fp, fn = tp + matches.tp, fp + matches.fp, fn + matches.fn
    return {
        **key,
        "cases": [case.name for case in cases],
        "truth": [case.count for case in cases],
        "variants": variants,
        "thresholds": thresholds,
        "dice": 1.0 if volume == 0 else 2 * intersection / volume,
        "lesion_tp_fp_fn": [tp, fp, fn],
    }


def _attack_unit(
    run_dir: Path, key: dict, cases: Sequence[_Case], settings: CountingSettings
) -> dict:
    """The count attack on the first test cases; ``key`` is copied into the result."""

    model, _, _ = load_run(run_dir)
    chosen = cases[: settings.attack_images]
    return key | attack_success_rate(
        model,
        [case.image for case in chosen],
        counts=[case.count for case in chosen],
        steps=settings.attack_steps,
        max_count=MAX_COUNT,
        device="cpu",
        **ATTACK_OPTIONS,
    )


def _planted_unit(datalist: Path) -> dict:
    """Threshold counts of planted maps of every volume, and the counts' ceiling.

    The ceiling is the number of connected components of each true mask: touching
    lesions merge, so even a perfect segmentation counts them as one.
    """

    cases = _cases(datalist, None)
    test = {c.name for c in _cases(datalist, "test")}
    rng = np.random.default_rng(PLANTED_SEED)
    counts = [threshold_counts(planted_probability_map(c.instances, rng)) for c in cases]
    return {
        "cases": [c.name for c in cases],
        "truth": [c.count for c in cases],
        "thresholds": counts,
        "mask_components": [int(component_count(c.instances > 0).mode) for c in cases],
        "test": [c.name in test for c in cases],
    }


# ---------------------------------------------------------------------- aggregation


def _variant_metrics(records: Sequence[dict], truth: Sequence[int]) -> dict:
    """Accuracy, F1, MAE, ECE and the certainty curve of one count variant."""

    actual = np.minimum(np.asarray(truth), MAX_COUNT)
    mode = np.array([r["mode"] for r in records])
    confidence = np.array([r["confidence"] for r in records])
    correct = mode == actual
    curve = accuracy_by_certainty(correct, [r["entropy"] for r in records], CERTAINTY_FRACTIONS)
    return {
        "accuracy": count_accuracy(mode, actual),
        "f1": count_f1(mode, actual),
        "mae": count_mae(mode, actual),
        "ece": expected_calibration_error(confidence, correct, CALIBRATION_BINS),
        "reliability": reliability_bins(confidence, correct, CALIBRATION_BINS).to_dict(),
        "certainty": curve.accuracy.tolist(),
        "confidence": confidence.tolist(),
        "correct": correct.tolist(),
    }


def _mean_std(values: Sequence[float]) -> dict:
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    if array.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": int(array.size)}


def _pooled_reliability(per_seed: Sequence[dict]) -> dict:

    confidence = np.concatenate([m["confidence"] for m in per_seed])
    correct = np.concatenate([m["correct"] for m in per_seed])
    return reliability_bins(confidence, correct, CALIBRATION_BINS).to_dict()


def _row_key(method: str, variant: str) -> str:
    return method if variant == "count" else f"{method}_{variant}"


def summarise_counting(units: Path) -> dict:
    """Aggregate the finished units under ``units`` into the experiment's results.

    Parameters
    ----------
    units : path
        The ``units`` folder of a :func:`run_counting` output folder.

    Returns
    -------
    dict
        ``"threshold"`` (segmentation model, per seed and mean/std, and planted maps),
        ``"comparison"`` (per regime and row: count and segmentation metrics),
        ``"calibration"``, ``"certainty"``, ``"attack"``, ``"mask_components_accuracy"``
        (the count accuracy of the true masks' components: the ceiling),
        ``"train_seconds"`` per model and ``"unit_seconds"`` (all units, summed); only
        what the finished units allow.
    """

    evaluations = [json.loads(p.read_text()) for p in sorted(units.glob("eval-*.json"))]
    trainings = {
        p.stem[len("train-") :]: json.loads(p.read_text()) for p in units.glob("train-*.json")
    }
    attacks = [json.loads(p.read_text()) for p in sorted(units.glob("attack-*.json"))]
    results: dict[str, Any] = {"comparison": {}, "calibration": {}, "certainty": {}}
    per_row: dict[tuple[str, str], list[dict]] = {}
    segmentation_tables = []
    for evaluation in evaluations:
        regime = evaluation["regime"]
        truth = evaluation["truth"]
        for variant, records in evaluation["variants"].items():
            metrics = _variant_metrics(records, truth)
            tp, fp, fn = evaluation["lesion_tp_fp_fn"]
            metrics["dice"] = evaluation["dice"]
            metrics["lesion_f1"] = f1_from_counts(tp, fp, fn)
            per_row.setdefault((regime, _row_key(evaluation["method"], variant)), []).append(
                metrics
            )
        if evaluation["method"] == "segmentation" and regime == "full":
            table = threshold_sensitivity(evaluation["thresholds"], truth)
            table["seed"] = evaluation["seed"]
            segmentation_tables.append(table)
    for (regime, row), per_seed in sorted(per_row.items()):
        scores = ("accuracy", "f1", "mae", "ece", "dice", "lesion_f1")
        results["comparison"].setdefault(regime, {})[row] = {
            key: _mean_std([m[key] for m in per_seed]) for key in scores
        }
        if regime != "full" or row.endswith("_cc"):
            continue  # a components count is certain: no calibration, no ranking
        results["calibration"][row] = {
            "ece": _mean_std([m["ece"] for m in per_seed]),
            "reliability": _pooled_reliability(per_seed),
        }
        curves = np.asarray([m["certainty"] for m in per_seed], dtype=float)
        results["certainty"][row] = {
            "fractions": list(CERTAINTY_FRACTIONS),
            "accuracy": curves.mean(axis=0).tolist(),
            "std": (curves.std(axis=0, ddof=1) if len(curves) > 1 else 0 * curves[0]).tolist(),
        }
    if segmentation_tables:
        results["threshold"] = _threshold_summary(segmentation_tables)
    planted = units / "planted.json"
    if planted.exists():
        data = json.loads(planted.read_text())
        results["planted"] = threshold_sensitivity(data["thresholds"], data["truth"])
        results["planted"]["n_cases"] = len(data["truth"])
        truth = np.minimum(data["truth"], MAX_COUNT)
        components = np.minimum(data["mask_components"], MAX_COUNT)
        test = np.asarray(data["test"], dtype=bool)
        results["mask_components_accuracy"] = {
            "all": count_accuracy(components, truth),
            "test": count_accuracy(components[test], truth[test]),
        }
    for attack in attacks:
        results.setdefault("attack_seeds", {}).setdefault(attack["method"], []).append(attack)
    results["attack"] = {
        method: {
            key: _mean_std([a[key] for a in seeds])
            for key in seeds[0]
            if isinstance(seeds[0][key], int | float) and key not in ("seed",)
        }
        for method, seeds in results.pop("attack_seeds", {}).items()
    }
    seconds: dict[str, list[float]] = {}
    for name, training in trainings.items():
        method, regime, _ = name.split("-")
        seconds.setdefault(f"{method}-{regime}", []).append(training["seconds"])
    results["train_seconds"] = {k: _mean_std(v) for k, v in sorted(seconds.items())}
    every = [json.loads(p.read_text()) for p in units.glob("*.json")]
    results["unit_seconds"] = float(sum(unit.get("seconds") or 0.0 for unit in every))
    return results


def _threshold_summary(tables: Sequence[dict]) -> dict:
    summary: dict[str, Any] = {"thresholds": tables[0]["thresholds"], "seeds": len(tables)}
    for kind in ("cc", "pb"):
        accuracy = np.asarray([t[kind]["accuracy"] for t in tables], dtype=float)
        f1 = np.asarray([t[kind]["f1"] for t in tables], dtype=float)
        ddof = 1 if len(tables) > 1 else 0
        summary[kind] = {
            "accuracy": accuracy.mean(axis=0).tolist(),
            "accuracy_std": accuracy.std(axis=0, ddof=ddof).tolist(),
            "f1": f1.mean(axis=0).tolist(),
            "f1_std": f1.std(axis=0, ddof=ddof).tolist(),
            "spread": _mean_std([t[kind]["spread"] for t in tables]),
            "std": _mean_std([t[kind]["std"] for t in tables]),
            "per_seed_spread": [t[kind]["spread"] for t in tables],
        }
    return summary


# --------------------------------------------------------------------------- tables


def _pm(value: dict, digits: int = 2) -> str:
    if value is None or value.get("mean") is None or not math.isfinite(value["mean"]):
        return "–"
    if value.get("n", 1) > 1:
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
    return f"{value['mean']:.{digits}f}"


def counting_tables(results: dict) -> str:
    """The experiment's markdown tables from :func:`summarise_counting` output.

    Examples
    --------
    >>> counting_tables({"comparison": {}, "calibration": {}, "certainty": {}, "attack": {}})
    ''
    """
    parts = []
    if "threshold" in results:
        parts.append(_threshold_markdown(results["threshold"], "segmentation model (test)"))
    if "planted" in results:
        planted = results["planted"]
        single = {
            "thresholds": planted["thresholds"],
            "seeds": 1,
            **{
                kind: {
                    "accuracy": planted[kind]["accuracy"],
                    "accuracy_std": [0.0] * len(planted["thresholds"]),
                    "f1": planted[kind]["f1"],
                    "f1_std": [0.0] * len(planted["thresholds"]),
                    "spread": {"mean": planted[kind]["spread"], "std": 0.0, "n": 1},
                    "std": {"mean": planted[kind]["std"], "std": 0.0, "n": 1},
                }
                for kind in ("cc", "pb")
            },
        }
        parts.append(_threshold_markdown(single, f"planted maps, all {planted['n_cases']} volumes"))
    for regime, rows in results["comparison"].items():
        title = "full training set" if regime == "full" else "low-data regime"
        header = ["model / count", "count acc.", "count F1", "count MAE", "Dice", "lesion F1"]
        body = [
            [
                LABELS.get(row, row),
                *(_pm(scores[k]) for k in ("accuracy", "f1", "mae", "dice", "lesion_f1")),
            ]
            for row, scores in _ordered(rows)
        ]
        parts.append(
            f"**Multi-task comparison, {title}** (test)\n\n" + markdown_table(header, body)
        )
        if "settings" in results:
            parts[-1] += "\n\n" + _recipe_line(results["settings"], regime)
        if "mask_components_accuracy" in results and regime == "full":
            ceiling = results["mask_components_accuracy"]["test"]
            parts[-1] += (
                f"\n\nCeiling: the connected components of the true masks give the right "
                f"count class for {ceiling:.2f} of the test volumes (touching lesions merge)."
            )
    if results["calibration"]:
        header = ["model / count", "ECE (top-label)"]
        header += [f"acc. of {int(100 * f)} % most certain" for f in CERTAINTY_FRACTIONS]
        body = []
        for row, calibration in _ordered(results["calibration"]):
            certainty = results["certainty"][row]
            cells = [
                _pm({"mean": m, "std": s, "n": calibration["ece"]["n"]})
                for m, s in zip(certainty["accuracy"], certainty["std"], strict=True)
            ]
            body.append([LABELS.get(row, row), _pm(calibration["ece"]), *cells])
        parts.append(
            "**Count calibration and accuracy of the most certain images** (test, ranked "
            "by count entropy)\n\n" + markdown_table(header, body)
        )
    if results["attack"]:
        header = [
            "model",
            "success rate",
            "random noise success",
            "acc. before",
            "acc. drop",
            "random acc. drop",
            "seg. change",
        ]
        keys = (
            "success_rate",
            "random_success_rate",
            "accuracy_before",
            "accuracy_drop",
            "random_accuracy_drop",
            "mean_segmentation_change",
        )
        body = [
            [LABELS.get(method, method), *(_pm(scores.get(k)) for k in keys)]
            for method, scores in _ordered(results["attack"])
        ]
        parts.append("**Adversarial attack on the count**\n\n" + markdown_table(header, body))
    return "\n\n".join(parts)


def _recipe_line(settings: dict, regime: str) -> str:
    """Which multi-task recipe produced a comparison table's rows."""
    factor = settings["low_data_epoch_factor"] if regime == "low" else 1
    standardised = "standardised" if settings.get("standardize_heads") else "not standardised"
    return (
        f"Multi-task recipe: {settings['epochs'] * factor} epochs, segmentation only for "
        f"{settings['count_warmup_epochs'] * factor}, then the count loss ramped over "
        f"{settings['count_ramp_epochs'] * factor} to weight {settings.get('count_weight', 1.0)}"
        f"; count heads' pooled features {standardised}."
    )


def _ordered(rows: dict) -> list[tuple[str, Any]]:
    order = ["segmentation_cc", "segmentation_mc", *METHODS]
    return sorted(rows.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99)


def _threshold_markdown(table: dict, title: str) -> str:
    header = ["threshold", "CC acc.", "PB acc.", "CC F1", "PB F1"]
    rows = []
    for i, threshold in enumerate(table["thresholds"]):
        cells = []
        for key in ("accuracy", "f1"):
            for kind in ("cc", "pb"):
                value = {"mean": table[kind][key][i], "std": table[kind][f"{key}_std"][i]}
                cells.append(_pm({**value, "n": table["seeds"]}))
        rows.append([f"{threshold:.1f}", cells[0], cells[1], cells[2], cells[3]])
    for name in ("spread", "std"):
        label = "max − min" if name == "spread" else "std"
        rows.append(
            [
                f"{label} of acc., 0.1–{STABLE_UP_TO}",
                _pm(table["cc"][name]),
                _pm(table["pb"][name]),
                "",
                "",
            ]
        )
    return (
        f"**Threshold sensitivity, {title}**: connected components (CC) against the mode "
        "of the Poisson-binomial count (PB)\n\n" + markdown_table(header, rows)
    )


def _plots(results: dict, out: Path) -> None:

    if "threshold" in results:
        curves = {
            f"{name}, {source}": (table["thresholds"], table[kind]["accuracy"])
            for source, table in (
                ("model", results["threshold"]),
                ("planted", results.get("planted")),
            )
            if table is not None
            for kind, name in (("cc", "components"), ("pb", "Poisson-binomial"))
        }
        plot_curve(
            curves,
            out / "threshold_accuracy.png",
            "threshold",
            "count accuracy",
            "Count accuracy against the threshold",
        )
    if results["calibration"]:
        bins = {
            LABELS.get(row, row): c["reliability"] for row, c in _ordered(results["calibration"])
        }
        plot_reliability(bins, out / "count_reliability.png", "Calibration of count probabilities")
        curves = {
            LABELS.get(row, row): (c["fractions"], c["accuracy"])
            for row, c in _ordered(results["certainty"])
        }
        plot_curve(
            curves,
            out / "accuracy_by_certainty.png",
            "fraction of most certain images",
            "count accuracy",
            "Accuracy of the most certain images",
        )


# ---------------------------------------------------------------------------- runner


def run_counting(
    out: Path,
    *,
    quick: bool,
    seeds: int,
    methods: list[str] | None,
    console: Console,
) -> dict:
    """Run experiment 3 (see the module notes) into ``out``, reusing finished units.

    Parameters
    ----------
    out : path
        Output folder: ``work/`` (data and model runs), ``units/`` (one JSON per
        trained model, evaluation and attack), ``results.json``, ``tables.md`` and PNG
        plots.
    quick : bool
        The tiny version (``SETTINGS["quick"]``): a 16 x 32 x 32 phantom and a few epochs.
    seeds : int
        Number of training seeds (0 .. seeds - 1).
    methods : list of str or None
        Models among :data:`METHODS`; None for all. The threshold table needs
        ``"segmentation"``.
    console : rich.console.Console
        Where progress goes.

    Returns
    -------
    dict
        The results (as in ``results.json``), with ``"units"``: how many units were
        computed and how many reused from an earlier run.

    Raises
    ------
    ValueError
        For an unknown method or a seed count below 1.
    """
    chosen = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise ValueError(
            f"methods: got {', '.join(unknown)}; expected some of {', '.join(METHODS)}"
        )
    if seeds < 1:
        raise ValueError(f"seeds: got {seeds}; expected at least 1")
    torch.set_num_threads(1)
    name = "quick" if quick else "full"
    settings = SETTINGS[name]
    out = Path(out)
    check_settings(out, _settings_record(name, settings))
    started = time.perf_counter()
    datalist = _write_data(out / "work" / "data", settings)
    test_cases = _cases(datalist, "test")
    regimes = [("full", m) for m in chosen] + [("low", m) for m in chosen if m in MULTITASK]
    per_seed = sum(3 if regime == "full" else 2 for regime, _ in regimes)
    with UnitProgress(console, 1 + seeds * per_seed, "counting") as progress:
        units = _Units(out, progress)
        units.get("planted", _planted_unit, datalist)
        # Every seed of the full training set before the low-data regime, and the
        # attacks last: the comparison tables fill first.
        plan = [(regime, seed, method) for seed in range(seeds) for regime, method in regimes]
        plan.sort(key=lambda item: (item[0] == "low", item[1]))
        for regime, seed, method in plan:
            label = f"{method}-{regime}-seed{seed}"
            run_dir = out / "work" / "runs" / label
            config = _train_config(method, regime, seed, settings)
            key = {"method": method, "regime": regime, "seed": seed}
            units.get(f"train-{label}", _train_unit, run_dir, config, datalist)
            units.get(f"eval-{label}", _evaluate_unit, run_dir, key, test_cases, settings)
            results = _report(out, name, settings)
        for regime, seed, method in plan:
            if regime == "full":
                label = f"{method}-{regime}-seed{seed}"
                run_dir = out / "work" / "runs" / label
                key = {"method": method, "regime": regime, "seed": seed}
                units.get(f"attack-{label}", _attack_unit, run_dir, key, test_cases, settings)
                results = _report(out, name, settings)
    results["units"] = {"computed": units.computed, "reused": units.reused}
    console.log(
        f"counting: {units.computed} unit(s) computed, {units.reused} reused, "
        f"{time.perf_counter() - started:.0f} s; tables in {out / 'tables.md'}"
    )
    return results


def _settings_record(name: str, settings: CountingSettings) -> dict:
    """What must be the same for units to be pooled (not the seeds or the methods)."""
    return {
        "experiment": "counting",
        "version": name,
        **dataclasses.asdict(settings),
        "thresholds": list(THRESHOLDS),
        "max_count": MAX_COUNT,
        "attack": ATTACK_OPTIONS,
    }


def _report(out: Path, name: str, settings: CountingSettings) -> dict:
    """Summarise the finished units into results.json, tables.md and the plots."""
    results = summarise_counting(out / "units")
    results["settings"] = _settings_record(name, settings)
    results["machine"] = machine()
    write_json(out / "results.json", json_ready(results))
    write_text(out / "tables.md", counting_tables(results))
    _plots(results, out)
    return results
