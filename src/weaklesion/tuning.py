"""Operating points chosen on validation data and stored with the run.

Every detector has one knob that trades false positives for missed lesions, and its
best setting depends on the model: a heatmap network whose fitted amplitudes are
under-confident wants an existence threshold below the textbook 0.5. This module sweeps
the knob on validation cases, picks the setting that is best by a named metric, and
stores it in the run folder, where :func:`weaklesion.training.load_run` and the
``detect`` / ``evaluate`` commands find it.

==========================  ======================================================
run (``config.target``)     knob (``parameter``) and detector
==========================  ======================================================
heatmap                     ``threshold``: existence threshold on the amplitudes of
                            iterative Gaussian fitting (:func:`fit_gaussians`)
euclidean, geodesic,        ``threshold``: the map is cut at ``tau`` and each
segmentation                connected component is a lesion
                            (:func:`component_detections`), at its maximum, or
                            at its centre of mass for segmentation
count (GP-Unet)             ``count_offset`` ``b``: keep the ``n = max(floor(c + b),
                            0)`` highest peaks of the attention map after non-maximum
                            suppression, ``c`` the predicted count; ``b = 0.5`` is
                            ordinary rounding
==========================  ======================================================

Metrics (``metric``): ``"f1"``; ``"recall@fp<=X"`` (the highest recall with at most X
false positives per image); ``"precision@recall>=X"``; ``"count_accuracy"`` and
``"count_mae"`` (the count being the number of lesions kept, or ``n``). Detection metrics
are pooled over cases and need point labels; count metrics need counts. Candidates are
ordered from the most conservative (highest threshold, lowest offset) and ties go to the
most conservative one.

The detectors and the matching are the run's :class:`~weaklesion.scoring.LesionSettings`,
scored by :func:`~weaklesion.scoring.operating_curve` as in training's validation; the
curves and the choice of a setting live in :mod:`weaklesion.scoring` and are re-exported
here. :func:`run_settings` reads a run's settings back, each with where it came from.

The choice is written to ``RUN/operating_point.json`` with the metric, the whole curve,
the cases and data it came from, and the SHA-256 of the checkpoint it was tuned for (a
checkpoint replaced by further training invalidates it); the curve is drawn in
``RUN/report/operating_point.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rich.progress import track

from weaklesion.config import load_config
from weaklesion.data.dataset import load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.inference import predict_images
from weaklesion.io import affine_spacing, json_ready, write_json
from weaklesion.report.figures import plot_curve
from weaklesion.run import OPERATING_POINT_FILE, checkpoint_sha256, load_run, read_operating_point
from weaklesion.scoring import (
    DEFAULT_OFFSETS,
    DEFAULT_THRESHOLDS,
    LesionSettings,
    OperatingCurve,
    choose_operating_point,
    count_offset_sweep,
    detector_sweep,
    find_lesions,
    metric_curve,
    operating_curve,
    settings_for_config,
    threshold_sweep,
)

DEFAULTS = {"threshold": 0.5, "count_offset": 0.5}
"""The setting used when nothing is tuned: threshold 0.5, rounding the count."""

FIGURE_FILE = Path("report") / "operating_point.png"

__all__ = [
    "DEFAULTS",
    "DEFAULT_OFFSETS",
    "DEFAULT_THRESHOLDS",
    "OperatingCurve",
    "choose_operating_point",
    "count_offset_sweep",
    "detector_sweep",
    "metric_curve",
    "read_operating_point",
    "run_settings",
    "stored_setting",
    "threshold_sweep",
    "tune_operating_point",
]


# ------------------------------------------------------------------------- from a run


def _validation_cases(dataset, split: str, info: dict[str, Any]) -> list:
    if split in dataset.split:
        return dataset.split_cases(split)
    held_out = info.get("val_cases") or []
    present = {case.id for case in dataset}
    if split == "validation" and held_out and all(case in present for case in held_out):
        return [dataset[case] for case in held_out]
    raise ValueError(
        f"split: {dataset.source} has no {split!r} split (it has {sorted(dataset.split)}); "
        "expected the cases to tune on"
    )


def _predict_cases(model, config, info, cases, device, progress: bool):
    """Predictions and voxel spacing of each case, two cases per network call."""

    if progress:
        cases = track(cases, description="Predicting validation cases")
    spacings = []

    def images():
        for case in cases:
            arrays = case.load()
            spacings.append(affine_spacing(arrays.affine))
            yield zscore(arrays.image)

    predictions = predict_images(
        model,
        images(),
        config.target,
        config.patch_size,
        scale=info["heatmap_scale"],
        device=device,
    )
    return list(zip(predictions, spacings, strict=True))


def tune_operating_point(
    run_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    metric: str = "f1",
    split: str = "validation",
    *,
    which: str = "best",
    values: Sequence[float] | None = None,
    max_distance: float | None = None,
    max_lesions: int | None = None,
    location: str | None = None,
    device: str = "cpu",
    progress: bool = False,
    write: bool = True,
) -> dict[str, Any]:
    """Choose a run's operating point on validation cases and store it in the run.

    Predicts the cases of ``split`` with the run's model, runs the run's detector (see
    the module notes), sweeps its knob, picks the best setting by ``metric`` (ties to
    the most conservative), and writes ``RUN/operating_point.json`` and
    ``RUN/report/operating_point.png``.

    Parameters
    ----------
    run_dir : path
        A run folder written by :func:`weaklesion.training.train`.
    data_root : path
        Dataset folder or datalist holding the cases to tune on.
    metric : str
        See the module notes; default F1.
    split : str
        The dataset's split to use. A dataset without a ``validation`` split may still
        hold the cases the run held out for validation (``info["val_cases"]``).
    which : {"best", "last"}
        Checkpoint to tune.
    values : sequence of floats, optional
        Candidate settings; default :data:`DEFAULT_THRESHOLDS` or
        :data:`DEFAULT_OFFSETS`. The default setting (:data:`DEFAULTS`) is always tried.
    max_distance : float, optional
        Largest match distance; default the run's ``match_distance`` (mm when its sigma
        is in mm, else voxels).
    max_lesions : int, optional
        Most lesions Gaussian fitting extracts per case (heatmap runs); default the
        run's (:data:`weaklesion.scoring.MAX_LESIONS`, as in validation and ``detect``).
    location : {"max", "center_of_mass"}, optional
        Where a component's detection sits (component runs); default the run's
        (centre of mass for segmentation runs, else the maximum).
    device : str
        Where to run the model.
    progress : bool
        Show a progress bar over the cases.
    write : bool
        Store the result in the run folder.

    Returns
    -------
    dict
        JSON-ready record, as stored: ``parameter``, ``value``, ``metric``,
        ``metric_value``, ``default`` and ``default_metric_value``; ``scores`` and
        ``default_scores`` (precision, recall, F1, FPs per image, count accuracy and MAE);
        ``curve`` (every candidate with its scores); ``detector``, ``matching``,
        ``data`` (source, split, cases), ``run`` (folder, checkpoint, its SHA-256 and
        epoch) and ``figure``.

    Raises
    ------
    ValueError
        If the split is missing, the cases lack the labels the metric needs, or no
        setting meets the metric's constraint.
    """

    run_dir = Path(run_dir)
    checkpoint = run_dir / f"{which}.pt" if which in ("best", "last") else Path(which)
    model, config, info = load_run(run_dir, which, device)
    settings = settings_for_config(config)
    chosen_options = {"match_distance": max_distance, "max_lesions": max_lesions}
    chosen_options["location"] = location
    options = {k: v for k, v in chosen_options.items() if v is not None}
    settings = settings.replace("option", **options) if options else settings
    dataset = load_dataset(data_root)
    cases = _validation_cases(dataset, split, info)
    if not cases:
        raise ValueError(f"split: {split!r} of {dataset.source} holds no case; expected some")
    needs_points = config.target != "count" or not metric.startswith("count_")
    missing = [c.id for c in cases if (c.points is None if needs_points else _count(c) is None)]
    if missing:
        what = "point labels" if needs_points else "counts or points"
        raise ValueError(
            f"{dataset.source}: case {missing[0]!r} has no {what}; {metric} needs them"
        )
    truth_points = [c.points for c in cases] if all(c.points is not None for c in cases) else None
    predictions = _predict_cases(model, config, info, cases, device, progress)
    maps = [p.map for p, _ in predictions]
    spacings = [spacing for _, spacing in predictions]
    parameter = "count_offset" if config.target == "count" else "threshold"
    default = DEFAULTS[parameter]
    candidates = list(
        values or (DEFAULT_OFFSETS if parameter == "count_offset" else DEFAULT_THRESHOLDS)
    )
    candidates.append(default)
    if config.target == "count":
        peaks = [find_lesions(values, settings) for values in maps]
        curve = count_offset_sweep(
            [(found.points, found.scores) for found in peaks],
            [p.count for p, _ in predictions],
            [_count(c) for c in cases],
            truth_points,
            settings.match_distance,
            candidates,
            [settings.match_spacing(spacing) for spacing in spacings],
        )
    else:
        curve = operating_curve(maps, truth_points, settings, spacings, candidates)

    chosen = choose_operating_point(curve, metric)
    reported, _ = metric_curve(curve, metric)
    at_default = int(np.flatnonzero(curve.values == default)[0])
    scores = curve.scores()
    record = {
        "parameter": parameter,
        "value": float(curve.values[chosen]),
        "metric": metric,
        "metric_value": reported[chosen],
        "default": default,
        "default_metric_value": reported[at_default],
        "scores": {name: values[chosen] for name, values in scores.items()},
        "default_scores": {name: values[at_default] for name, values in scores.items()},
        "kind": config.target,
        "detector": settings.to_dict(),
        "matching": {
            "max_distance": settings.match_distance,
            "distance_unit": "mm" if settings.units == "mm" else "voxel",
        },
        "curve": {"values": curve.values, "metric": reported, **scores},
        "data": {
            "source": str(Path(dataset.source).resolve()),
            "split": split,
            "cases": [c.id for c in cases],
        },
        "run": {
            "dir": str(run_dir.resolve()),
            "checkpoint": checkpoint.name,
            "sha256": checkpoint_sha256(checkpoint),
            "epoch": int(info["epoch"]),
        },
        "figure": FIGURE_FILE.as_posix(),
    }
    record = json_ready(record)
    if write:
        write_json(run_dir / OPERATING_POINT_FILE, record)
        plot_operating_curve(record, run_dir / FIGURE_FILE)
    return record


def _count(case) -> int | None:
    if case.count is not None:
        return int(case.count)
    return None if case.points is None else len(case.points)


def plot_operating_curve(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Draw a tuning record's curve: the metric and the detection scores per setting."""

    curve = record["curve"]
    names = [n for n in ("f1", "precision", "recall", "count_accuracy") if n in curve]
    if record["metric"] not in names:
        names.insert(0, "metric")

    def y(name: str) -> list[float]:
        return [np.nan if v is None else v for v in curve[name]]

    lines = {(record["metric"] if n == "metric" else n): (curve["values"], y(n)) for n in names}
    markers = {
        f"tuned {record['value']:g}": record["value"],
        f"default {record['default']:g}": record["default"],
    }
    knob = record["parameter"].replace("_", " ")
    return plot_curve(
        lines,
        path,
        xlabel=knob,
        ylabel="score on the validation cases",
        title=f"{record['kind']} run: {record['metric']} by {knob}",
        markers=markers,
    )


# ------------------------------------------------------------------------ read back


class StoredSetting(NamedTuple):
    """A run's stored detector setting and where it came from."""

    parameter: str
    value: float
    source: str  # "tuned" (operating_point.json) or "training" (validation during training)


def stored_setting(run_dir: str | os.PathLike) -> StoredSetting | None:
    """The setting ``detect`` and ``evaluate`` use for a run by default.

    The operating point tuned for ``RUN/best.pt`` if there is one, else the threshold
    the training loop tuned on its validation cases (``metrics.json``), else None.
    Reads no model weights.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run folder")
    tuned = read_operating_point(run_dir)
    if tuned is not None:
        return StoredSetting(tuned["parameter"], float(tuned["value"]), "tuned")
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        threshold = json.loads(metrics.read_text(encoding="utf-8")).get("best_threshold")
        if threshold is not None:
            return StoredSetting("threshold", float(threshold), "training")
    return None


def run_settings(run_dir: str | os.PathLike) -> LesionSettings:
    """How a run's maps become lesions, each setting with where it came from.

    ``RUN/config.toml`` gives the detector, the fitted width and the matching distance
    (:func:`~weaklesion.scoring.settings_for_config`); an operating point tuned for
    ``RUN/best.pt`` gives its threshold (or count offset) and the detector settings it
    was tuned with (component location, lesion cap, matching distance); without one,
    the threshold training's validation chose (``RUN/metrics.json``). Reads no model
    weights.

    Raises
    ------
    ValueError
        If ``run_dir`` is not a run folder.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ValueError(f"{run_dir}: has no config.toml; expected a run folder of `train`")
    settings = settings_for_config(load_config(config_path), f"run config ({config_path})")
    stored = stored_setting(run_dir)
    if stored is None:
        return settings
    path = run_dir / (OPERATING_POINT_FILE if stored.source == "tuned" else "metrics.json")
    source = f"{'tuned' if stored.source == 'tuned' else 'training validation'} ({path})"
    settings = settings.replace(source, **{stored.parameter: stored.value})
    if stored.source == "tuned":
        record = json.loads(path.read_text(encoding="utf-8"))
        detector = record.get("detector") or {}
        tuned = {k: detector[k] for k in ("location", "max_lesions") if k in detector}
        distance = (record.get("matching") or {}).get("max_distance")
        if distance is not None:
            tuned["match_distance"] = float(distance)
        settings = settings.replace(source, **tuned)
    return settings
