"""Experiment 2's units, each a trained model or an evaluation, and the run that orders them.

A unit computes once and writes its JSON file under ``OUT/units``
(:func:`weaklesion.bench.common.run_unit`): the training of one model of Table 1 or of
a transfer source (``train_*``), the evaluation of one model on the validation and test
cases, which gives its rows of Table 1 and its part of Table 2 (``evaluate_*``), and one
transfer arm, trained on a fraction of the masks and scored at its last epoch
(``transfer_*``). :func:`run_points` writes the phantom and the recipe snapshot, lists
the units in their order, runs what is not finished and rewrites the report
(:mod:`~weaklesion.bench.points.report`) after every evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
from rich.console import Console
from scipy import ndimage

from weaklesion.bench.common import (
    UnitProgress,
    check_settings,
    machine,
    run_finished,
    run_unit,
    unit_path,
)
from weaklesion.bench.points.design import (
    DATA_SEED,
    MC_DROPOUT,
    METHODS,
    MODEL_CHANGES,
    MODEL_KINDS,
    REFERENCE_FRACTION,
    ROW_MODELS,
    ROWS,
    SETTINGS,
    TRAINING_CASES,
    VALIDATION_CASES,
    PointsSettings,
)
from weaklesion.bench.points.report import points_tables, write_points_report
from weaklesion.bench.points.scores import (
    attention_levels,
    certainty_curve,
    detection_froc,
    existence_calibration,
    fitted_detector,
    row_detector,
    scored_detections,
    tune_and_test,
)
from weaklesion.data import load_dataset, write_phantom_dataset, zscore
from weaklesion.data.truth import lesion_truth
from weaklesion.demo import DEMO_CONFIG
from weaklesion.inference import predict_image
from weaklesion.io import atomic_write, write_json
from weaklesion.metrics import hits_by_score, segmentation_scores
from weaklesion.threads import choose_threads
from weaklesion.training import load_config, load_run, save_config, train
from weaklesion.training.data import fit_sigma_voxels
from weaklesion.training.finetune import finetune
from weaklesion.uncertainty import lesion_entropy, lesion_uncertainty_from_samples


def training_datalist(data: str | os.PathLike) -> Path:
    """A datalist of a dataset's training split alone: no validation cases, so no validation masks.

    Parameters
    ----------
    data : path
        Dataset folder with a ``split`` in ``dataset.json``.

    Returns
    -------
    Path
        The datalist ``DATA/training_only.json`` (paths relative to ``DATA``), written
        atomically.
    """

    data = Path(data)
    dataset = load_dataset(data)
    entries = [
        {
            "id": case.id,
            "image": [str(channel.relative_to(data)) for channel in case.channels],
            "label": str(case.mask.relative_to(data)),
            "points": case.points.tolist(),
        }
        for case in dataset.split_cases("training")
    ]
    description = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    path = data / "training_only.json"
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "channel_names": description["channel_names"],
                "spacing": description["spacing"],
                "training": entries,
            },
            handle,
        )
    return path


# --------------------------------------------------------------------------- the runs


def _heatmap_name(sigma: float) -> str:
    return f"heatmap-s{sigma:g}"


def _fraction_name(fraction: float) -> str:
    return f"masks{fraction * 100:g}pct"


def _threads(quick: bool) -> int:
    """One torch thread for the quick run, else the package's thread policy."""
    return 1 if quick else choose_threads()


@dataclass
class _Experiment:
    """What every unit of one run needs."""

    out: Path
    work: Path
    data: Path
    recipe: Path
    settings: PointsSettings
    quick: bool
    recipe_sigma: float
    recipe_dropout: float
    match_distance: float

    def model_name(self, kind: str) -> str:
        """The run of a table row's model: the heatmap of the recipe's sigma."""
        return _heatmap_name(self.recipe_sigma) if kind == "heatmap" else kind

    def model_config(self, name: str, seed: int):

        kind = "heatmap" if name.startswith("heatmap") else name
        changes: dict[str, Any] = {**self.settings.recipe_changes, **MODEL_CHANGES[kind]}
        if kind == "heatmap":
            changes["sigma"] = float(name.removeprefix("heatmap-s"))
        if kind == "segmentation" and self.recipe_dropout == 0:
            changes["model_kwargs.dropout"] = MC_DROPOUT
        if kind == "counts":
            # Set last, it replaces the recipe's U-Net arguments as a whole; the
            # normalisation is the package's default for a count network.
            changes["model_kwargs"] = {"filters": self.settings.count_filters}
        changes.update(seed=seed, num_threads=_threads(self.quick))
        return load_config(self.recipe, changes)

    def run_dir(self, *keys: str | int) -> Path:
        return self.work / "runs" / "_".join(str(k) for k in keys)


def _training_record(run_dir: Path, config) -> dict[str, Any]:
    """The run's configuration, best epoch and training time (epochs' wall clock, summed)."""
    record = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return {
        "config": dataclasses.asdict(config),
        "epochs": int(record["epochs_completed"]),
        "best_epoch": record.get("best_epoch"),
        "metric": record.get("metric"),
        "best_value": record.get("best_value"),
        "loop_threshold": record.get("best_threshold"),
        "train_seconds": float(
            sum(epoch.get("seconds", 0.0) + (epoch.get("val_seconds") or 0.0) for epoch in history)
        ),
        "torch_threads_last": config.num_threads,
        "machine": machine(),
    }


def _train_model(run: _Experiment, name: str, seed: int) -> dict[str, Any]:
    """Train (or resume) one model of the table or a transfer source."""

    def compute() -> dict[str, Any]:
        config = run.model_config(name, seed)
        run_dir = run.run_dir(name, f"seed{seed}")
        train(config, run.data, run_dir, resume=True, progress=False)
        return {
            "model": name,
            "seed": seed,
            **_training_record(run_dir, config),
        }

    return run_unit(unit_path(run.out, "train", name, f"seed{seed}"), compute)


class _Split:
    """Images, truth and sizes of one split of the phantom."""

    def __init__(self, data: Path, name: str) -> None:

        cases = load_dataset(data).split_cases(name)
        self.names = [case.id for case in cases]
        arrays = [case.load() for case in cases]
        self.images = [zscore(a.image) for a in arrays]
        self.instances = [a.mask for a in arrays]
        points, sizes, spacing = lesion_truth(data, self.names)
        self.points = [points[n] for n in self.names]
        self.sizes = [sizes[n] for n in self.names] if sizes is not None else None
        self.spacing = [spacing[n] for n in self.names]


def _predict(model, config, info, split: _Split) -> list[np.ndarray]:

    return [
        predict_image(
            model, image, config.target, config.patch_size, scale=info["heatmap_scale"]
        ).map
        for image in split.images
    ]


def _evaluate_model(run: _Experiment, kind: str, seed: int, splits) -> dict[str, Any]:
    """Every result that comes from one model of the table: its rows, and Table 2's part."""

    name = run.model_name(kind)
    rows = [row for row, (model_kind, _) in ROW_MODELS.items() if model_kind == kind]

    def compute() -> dict[str, Any]:
        validation, test = splits()
        model, config, info = load_run(run.run_dir(name, f"seed{seed}"))
        maps = {"validation": _predict(model, config, info, validation)}
        maps["test"] = _predict(model, config, info, test)
        sigma = fit_sigma_voxels(config, validation.spacing[0])
        peak_scale = float(info["heatmap_scale"]) if kind == "heatmap" else 1.0
        result: dict[str, Any] = {"model": name, "seed": seed, "best_epoch": info["epoch"]}
        if kind == "counts":
            # Attention on the validation maps' scale: background 0, strongest peak 1.
            low, high = attention_levels(maps["validation"])
            maps = {key: [(m - low) / (high - low) for m in values] for key, values in maps.items()}
            result["attention_levels"] = [low, high]
        # The test cases' scored candidates, found once per map.
        scored = {
            detector: scored_detections(detector, maps["test"], sigma, peak_scale)
            for detector in {ROW_MODELS[row][1] for row in rows} & {"fit", "peaks"}
        }
        for row in rows:
            detector = ROW_MODELS[row][1]
            detect_test = (
                fitted_detector(scored[detector])
                if detector in scored
                else row_detector(detector, maps["test"], sigma, peak_scale)
            )
            result[row] = tune_and_test(
                row_detector(detector, maps["validation"], sigma, peak_scale),
                validation.points,
                detect_test,
                test.points,
                test.sizes,
                run.match_distance,
            )
            if detector == "peaks":
                result[row].update(
                    detection_froc(scored[detector], test.points, run.match_distance)
                )
        if kind == "heatmap":
            peak_maps = [m * peak_scale for m in maps["test"]]
            threshold = result["heatmap_fit"]["threshold"]
            result.update(_heatmap_uncertainty(scored["fit"], peak_maps, test, threshold, run))
        if kind == "segmentation":
            threshold = result["segmentation_cc"]["threshold"]
            result["mc_dropout"] = _mc_dropout_certainty(model, test, threshold, run, seed)
        return result

    return run_unit(unit_path(run.out, "evaluate", name, f"seed{seed}"), compute)


def _heatmap_uncertainty(
    fits, peak_maps, test: _Split, threshold: float, run: _Experiment
) -> dict[str, Any]:
    """Table 2's heatmap part: calibration of all fitted lesions, certainty of the kept ones."""

    calibration = existence_calibration(fits, peak_maps, test.points, run.match_distance)
    kept = [found[found.scores >= threshold] for found in fits]
    correct = [
        hits_by_score(found.points, found.scores, points, run.match_distance)
        for found, points in zip(kept, test.points, strict=True)
    ]
    certainty = certainty_curve(correct, [lesion_entropy(found) for found in kept])
    return {"calibration": calibration, "heatmap_certainty": certainty}


def _mc_dropout_certainty(model, test: _Split, threshold: float, run, seed: int) -> dict:

    correct, entropy, information = [], [], []
    for image, points in zip(test.images, test.points, strict=True):
        samples = predict_image(
            model, image, "segmentation", mc_samples=run.settings.mc_samples, seed=seed
        ).samples
        found = lesion_uncertainty_from_samples(samples, threshold)
        # As in the segmentation row, a lesion is placed at its component's centre of mass.
        mean = samples.mean(axis=0)
        labels = cc3d.connected_components(mean > threshold, connectivity=26)
        owners = labels[tuple(np.rint(found.points).astype(int).T)]
        centres = np.array(ndimage.center_of_mass(mean, labels, owners)).reshape(-1, mean.ndim)
        correct.append(hits_by_score(centres, found.scores, points, run.match_distance))
        entropy.append(found.extras["entropy"])
        information.append(found.extras["mutual_information"])
    return {
        "threshold": threshold,
        "samples": run.settings.mc_samples,
        "entropy": certainty_curve(correct, entropy),
        "mutual_information": certainty_curve(correct, information),
    }


RETRAINED_MARK = "retrained.json"


def _source_run(run: _Experiment, name: str, seed: int) -> dict[str, Any]:
    """Make sure a transfer source's trained run is on disk, and describe it.

    A source's ``train_*`` unit can outlive its run folder (``work/`` is not kept with
    the results). The run is then trained again from its recorded configuration, which
    is seeded; the returned record gives its best validation value beside the one the
    unit recorded, so that a reader sees whether the retrained source is the same model.
    A retrained run folder is marked (``RETRAINED_MARK``, written before training starts),
    so that every arm fine-tuned from it says so, not only the first. A source with no
    ``train_*`` unit yet is on its first training, which is finished and not marked.
    """
    config = run.model_config(name, seed)
    run_dir = run.run_dir(name, f"seed{seed}")
    metrics = run_dir / "metrics.json"
    mark = run_dir / RETRAINED_MARK
    unit = unit_path(run.out, "train", name, f"seed{seed}")
    recorded = json.loads(unit.read_text(encoding="utf-8")) if unit.exists() else {}
    if not ((run_dir / "best.pt").exists() and run_finished(run_dir, config)):
        if recorded and not mark.exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(mark, {"model": name, "seed": seed, "reason": "run folder missing"})
        train(config, run.data, run_dir, resume=True, progress=False)
    record = json.loads(metrics.read_text(encoding="utf-8"))
    retrained = mark.exists()
    return {
        "source_retrained": retrained,
        "source_best_epoch": record.get("best_epoch"),
        "source_best_value": record.get("best_value"),
        "source_recorded_best_value": recorded.get("best_value"),
    }


def _transfer(
    run: _Experiment, source: str, fraction: float, seed: int, datalist, test
) -> dict[str, Any]:
    """Train one transfer arm on a fraction of the masks and score its last epoch."""

    def compute() -> dict[str, Any]:
        run_dir = run.run_dir("transfer", source, _fraction_name(fraction), f"seed{seed}")
        origin: dict[str, Any] = {}
        changes = {"seed": seed, "val_fraction": 0.0, "num_threads": _threads(run.quick)}
        epochs = load_config(run.recipe, run.settings.recipe_changes).epochs
        if source == "scratch":
            config = load_config(
                run.recipe,
                {
                    **run.settings.recipe_changes,
                    **MODEL_CHANGES["segmentation"],
                    **changes,
                    "label_fraction": fraction,
                },
            )
            train(config, datalist, run_dir, resume=True, progress=False)
        else:
            origin = _source_run(run, source, seed)
            finetune(
                run.run_dir(source, f"seed{seed}"),
                datalist,
                run_dir,
                mask_fraction=fraction,
                epochs=epochs,
                overrides=changes,
                resume=True,
                progress=False,
            )
        model, config, info = load_run(run_dir, "last")
        split = test()
        maps = [predict_image(model, image, "segmentation").map for image in split.images]
        scores = segmentation_scores(maps, split.instances, split.points, run.match_distance)
        record = _training_record(run_dir, config)
        return {
            "source": source,
            "mask_fraction": fraction,
            "seed": seed,
            "mask_cases": list(info["train_cases"]),
            **origin,
            **scores,
            **record,
        }

    key = ("transfer", source, _fraction_name(fraction), f"seed{seed}")
    return run_unit(unit_path(run.out, *key), compute)


def _check_methods(methods: Sequence[str] | None) -> list[str]:
    chosen = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise ValueError(
            f"methods: got {', '.join(unknown) or 'none'}; expected some of {', '.join(METHODS)}"
        )
    return chosen


def _prepare(out: Path, quick: bool) -> _Experiment:
    """Write (or find) the phantom and the recipe snapshot, and check the settings."""

    settings = SETTINGS["quick" if quick else "full"]
    recipe = out / "recipe.toml"
    if not recipe.exists():
        save_config(load_config(DEMO_CONFIG), recipe)
    base = load_config(recipe, settings.recipe_changes)
    if settings.split is not None:
        split = settings.split
    else:
        split = (TRAINING_CASES, VALIDATION_CASES, settings.test_cases)
    check_settings(
        out,
        {
            "experiment": "points vs masks (MICCAI 2022)",
            "version": "quick" if quick else "full",
            "shape": settings.shape,
            "split": split,
            "data_seed": DATA_SEED,
            "sigmas": settings.sigmas,
            "mask_fractions": settings.mask_fractions,
            "mc_samples": settings.mc_samples,
            "recipe_changes": dict(settings.recipe_changes),
            "recipe": recipe.read_text(encoding="utf-8"),
        },
    )
    work = out / "work"
    data = work / "data"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(
            data,
            n_cases=sum(split),
            seed=DATA_SEED,
            shape=settings.shape,
            splits=split,
            overwrite=True,
        )
    return _Experiment(
        out=out,
        work=work,
        data=data,
        recipe=recipe,
        settings=settings,
        quick=quick,
        recipe_sigma=base.sigma,
        recipe_dropout=float(base.model_kwargs.get("dropout", 0.0)),
        match_distance=base.match_distance,
    )


def run_points(
    out: Path,
    *,
    quick: bool,
    seeds: int,
    methods: list[str] | None,
    console: Console | None,
) -> dict[str, Any]:
    """Run experiment 2 (points against masks) and write its report; resumes finished work.

    Parameters
    ----------
    out : path
        Output folder: ``units/*.json`` (one per trained model and evaluation),
        ``tables.md``, ``summary.json``, ``calibration.png``, ``certainty.png``,
        ``transfer.png``, ``recipe.toml`` and ``settings.json``; data and runs under
        ``work/``.
    quick : bool
        The tiny version (16 x 32 x 32 phantom of 8 cases, a 3-level U-Net of widths
        4-8-16 and a GP-Unet of 4 filters, 3 epochs) that checks the pipeline in seconds.
    seeds : int
        Training seeds 0 .. ``seeds - 1``.
    methods : list of str or None
        Rows of :data:`ROWS` and ``"transfer"`` to run; None runs all. Table 2 needs
        ``heatmap_fit`` (calibration) and ``segmentation_cc`` (MC dropout).
    console : rich Console or None
        Where to show progress; None shows none.

    Returns
    -------
    dict
        :func:`summarise_points` of the output folder.

    Raises
    ------
    ValueError
        For an unknown method, ``seeds < 1``, or an output folder holding units of other
        settings (another version or recipe).
    """
    if seeds < 1:
        raise ValueError(f"seeds: got {seeds!r}; expected at least 1")
    chosen = _check_methods(methods)
    out = Path(out)
    run = _prepare(out, quick)
    kinds = [
        kind
        for kind in MODEL_KINDS
        if any(ROW_MODELS[row][0] == kind for row in chosen if row in ROWS)
    ]
    loaded: dict[str, _Split] = {}

    def split(name: str) -> _Split:
        if name not in loaded:
            loaded[name] = _Split(run.data, name)
        return loaded[name]

    def both_splits() -> tuple[_Split, _Split]:
        return split("validation"), split("test")

    units: list[tuple[str, Callable[[], Any]]] = []
    for seed in range(seeds):
        for kind in kinds:
            name = run.model_name(kind)
            units.append((f"train {name} seed {seed}", _bind(_train_model, run, name, seed)))
            units.append(
                (
                    f"evaluate {name} seed {seed}",
                    _bind(_evaluate_model, run, kind, seed, both_splits),
                )
            )
    if "transfer" in chosen:
        sources = [_heatmap_name(s) for s in run.settings.sigmas] + ["euclidean", "geodesic"]
        for seed in range(seeds):
            for source in sources:
                units.append(
                    (f"train {source} seed {seed}", _bind(_train_model, run, source, seed))
                )
        datalist = training_datalist(run.data)
        for fraction in run.settings.mask_fractions:
            for seed in range(seeds):
                for source in ("scratch", *sources):
                    label = f"transfer {source} {fraction:.0%} seed {seed}"
                    task = _bind(
                        _transfer, run, source, fraction, seed, datalist, _bind(split, "test")
                    )
                    units.append((label, task))
        for seed in range(seeds):
            task = _bind(
                _transfer, run, "scratch", REFERENCE_FRACTION, seed, datalist, _bind(split, "test")
            )
            units.append((f"transfer scratch {REFERENCE_FRACTION:.0%} seed {seed}", task))

    with UnitProgress(console, len(units), "points vs masks") as progress:
        for label, task in units:
            progress.start(label)
            finished = _finished_units(out)
            task()
            progress.done()
            if label.startswith(("evaluate", "transfer")) and _finished_units(out) > finished:
                write_points_report(out)
    summary = write_points_report(out)
    if console is not None:
        console.print(points_tables(summary))
        console.print(f"points vs masks: report written to {out.resolve()}")
    return summary


def _bind(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: function(*args)


def _finished_units(out: Path) -> int:
    folder = out / "units"
    return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0
