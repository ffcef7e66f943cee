"""Experiment 3's units, each a trained model, an evaluation or an attack, and the run.

A unit computes once and writes its JSON file under ``OUT/units``
(:func:`weaklesion.bench.common.run_unit`): the threshold counts of planted maps of
every volume (``planted``), the training of one model in one regime and seed
(``train-*``), its counts, count distributions and segmentation scores on the test
cases (``eval-*``), and the attack on its count (``attack-*``). :func:`run_counting`
writes the phantom data, runs what is not finished in its order and rewrites the report
(:mod:`~weaklesion.bench.counting.report`) after every unit.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from weaklesion.adversarial import attack_success_rate
from weaklesion.bench.common import UnitProgress, check_settings, read_unit, run_unit, unit_path
from weaklesion.bench.counting.counts import (
    count_record,
    planted_probability_map,
    region_count_pmf,
    threshold_counts,
)
from weaklesion.bench.counting.design import (
    ATTACK_OPTIONS,
    COUNT_THRESHOLD,
    DATA_SEED,
    MAX_COUNT,
    METHODS,
    MULTITASK,
    PLANTED_SEED,
    SEGMENTATION_THRESHOLD,
    SETTINGS,
    CountingSettings,
    settings_record,
)
from weaklesion.bench.counting.report import write_counting_report
from weaklesion.counting import component_count
from weaklesion.data.dataset import load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.data.phantom import write_phantom_dataset
from weaklesion.detection import component_detections
from weaklesion.inference import predict_image
from weaklesion.io import atomic_write
from weaklesion.metrics import match_to_regions
from weaklesion.training import TrainConfig, load_run, train
from weaklesion.uncertainty import mc_dropout_count_distribution

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


# ------------------------------------------------------------------------- training


def _train_config(method: str, regime: str, seed: int, settings: CountingSettings):

    factor = settings.low_data_epoch_factor if regime == "low" else 1
    head = method not in ("segmentation", "poisson_binomial")
    warmup = settings.head_warmup_epochs if head else settings.count_warmup_epochs
    values: dict[str, Any] = {
        "labels": "masks" if method == "segmentation" else "masks+counts",
        "model": "unet",
        "model_kwargs": {"features": list(settings.features)},
        "epochs": settings.epochs * factor,
        "count_warmup_epochs": warmup * factor,
        "count_ramp_epochs": settings.count_ramp_epochs * factor,
        "max_count": MAX_COUNT,
        "lr": settings.lr,
        "lr_schedule": settings.lr_schedule,
        "batch_size": 2,
        "positive_weight": settings.positive_weight,
        "seed": seed,
        "num_threads": 1,
        "device": "cpu",
    }
    if method != "segmentation":
        values.update(
            count_head=method,
            count_weight=settings.head_count_weight if head else settings.count_weight,
            count_head_standardize=settings.standardize_heads,
            count_gradient=settings.count_gradient,
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
    run_dir: Path,
    key: dict,
    cases: Sequence[_Case],
    settings: CountingSettings,
    which: str = "best",
) -> dict:
    """Counts, count distributions and segmentation scores of one model on the test cases.

    ``key`` (method, regime, seed) is copied into the result. Every model's own count
    distribution is recorded; the segmentation model's also as components at 0.5 and
    as MC-dropout components. ``which`` checkpoint of the run is scored.
    """
    method = key["method"]

    model, _, _ = load_run(run_dir, which)
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
            pmf = region_count_pmf(probability, COUNT_THRESHOLD)
        variants["count"].append(count_record(pmf))
        if method == "segmentation":
            cc = component_count(probability, SEGMENTATION_THRESHOLD, max_count=MAX_COUNT)
            variants["cc"].append(count_record(np.asarray(cc.pmf)))
            sampled = mc_dropout_count_distribution(
                model,
                case.image,
                settings.mc_samples,
                threshold=SEGMENTATION_THRESHOLD,
                max_count=MAX_COUNT,
            )
            variants["mc"].append(count_record(np.asarray(sampled.pmf)))
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
    record = settings_record(name, settings)
    check_settings(out, record)
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
            results = write_counting_report(out, record)
        for regime, seed, method in plan:
            if regime == "full":
                label = f"{method}-{regime}-seed{seed}"
                run_dir = out / "work" / "runs" / label
                key = {"method": method, "regime": regime, "seed": seed}
                units.get(f"attack-{label}", _attack_unit, run_dir, key, test_cases, settings)
                results = write_counting_report(out, record)
    results["units"] = {"computed": units.computed, "reused": units.reused}
    console.log(
        f"counting: {units.computed} unit(s) computed, {units.reused} reused, "
        f"{time.perf_counter() - started:.0f} s; tables in {out / 'tables.md'}"
    )
    return results
