"""Experiment 2: points against masks (Myers-Colet et al., MICCAI 2022, Tables 1-2, Fig. 2).

The paper detects gadolinium-enhancing lesions in private brain MRI; here the same
protocol runs on the 3D phantom (:func:`weaklesion.data.write_phantom_dataset`), whose
points, masks and lesion sizes are exact.

Data
    The demo's phantom: the same training cases as ``weaklesion demo`` (the first
    :data:`TRAINING_CASES`), the first :data:`VALIDATION_CASES` of its validation cases,
    and more held-out test cases (:attr:`PointsSettings.test_cases`); one
    phantom (seed :data:`DATA_SEED`) for every model, seeds vary the training only.
Models (one set per seed)
    Every model starts from the demo's training recipe (``configs/demo.toml``, read when
    a run starts and kept in ``OUT/recipe.toml`` so that a resumed run uses the same one)
    and changes only what the method needs: ``segmentation`` learns the masks (weighted
    BCE; with dropout for MC dropout, :data:`MC_DROPOUT` where the recipe has none),
    ``euclidean`` and ``geodesic`` regress ``exp(-distance / sigma)`` maps of the points,
    ``heatmap-sN`` regresses Gaussian heatmaps of width ``sigma = N`` voxels (the
    recipe's sigma for the table; 1, 1.25 and 1.5 as transfer sources). The best
    validation epoch (``best.pt``) is evaluated.
Table 1: detection (rows :data:`ROWS`)
    Segmentation, distance maps and heatmap cut at a threshold into connected components
    (26-connected), one detection per component at its maximum (at its centre of mass for
    the segmentation, whose points are the masks' centres of mass); heatmap with
    iterative Gaussian fitting (:func:`~weaklesion.detection.fit_gaussians`), a
    detection per fitted lesion whose amplitude passes the threshold. The threshold of
    every row is the one of 0.01 .. 0.99 with the best F1 on the validation cases
    (:func:`~weaklesion.tuning.detector_sweep`). On the test cases: precision, recall and
    F1 pooled over cases (a detection within ``match_distance`` voxels of a true centre,
    one-to-one), and recall per lesion-size stratum
    (:data:`~weaklesion.metrics.SIZE_STRATA`; "small" is 3-10 voxels).
Table 2: calibration and uncertainty
    Every lesion the Gaussian fitting finds on the test cases (amplitude above the
    fitting's stop level) with two existence probabilities: the fitted amplitude, and the
    unfitted one, the heatmap's value (peak-1 scale, clipped to [0, 1]) at the lesion's
    voxel; the outcome is whether it is a hit in decreasing amplitude order
    (:func:`~weaklesion.metrics.hits_by_score`). Expected calibration error over 10
    bins and a reliability plot. Then the accuracy of the ``k`` most certain test
    detections: the heatmap's kept lesions ranked by the entropy of their amplitude,
    against the segmentation model's MC-dropout lesions (:data:`PointsSettings.mc_samples`
    passes, components of the mean map at the segmentation row's threshold) ranked by
    the entropy of their mean probability.
Transfer
    For each mask fraction (1 %, 5 %, 10 % of the training cases, at least one case,
    the same cases for every arm of a seed) a segmentation model is trained from scratch,
    and fine-tuned (:func:`~weaklesion.training.finetune.finetune`, whole network) from
    the heatmap models of each sigma and from the distance-map models, for the recipe's
    number of epochs. No validation masks are used (masks this scarce leave none to
    spare): the last epoch is evaluated on the test cases, the probability map cut at
    0.5: segmentation F1 by overlap (:func:`overlap_matches`), detection F1 (components'
    centres of mass) and Dice.

Every trained model and every evaluation is one unit with its own JSON file under
``OUT/units`` (:func:`weaklesion.bench.common.run_unit`), written atomically once the
unit is done; a rerun reads finished units, and an interrupted training resumes from its
``last.pt``. Units run in this order: the models of Table 1 and their evaluations seed by
seed (Table 2 comes from the same evaluations), then the transfer sources and arms. The
report (``OUT/tables.md``, ``OUT/summary.json`` and the figures) is computed from the unit
files alone and rewritten after every evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
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
    format_mean,
    json_ready,
    machine,
    markdown_table,
    mean_and_spread,
    read_unit,
    run_unit,
    unit_path,
    write_text,
)
from weaklesion.data import load_dataset, write_phantom_dataset, zscore
from weaklesion.data.truth import lesion_truth
from weaklesion.demo import DEMO_CONFIG
from weaklesion.detection import component_detections, fit_gaussians
from weaklesion.inference import predict_image
from weaklesion.io import atomic_write, write_json
from weaklesion.metrics import (
    accuracy_by_certainty,
    detection_scores,
    expected_calibration_error,
    f1_from_counts,
    hits_by_score,
    match_points,
    overlap_matches,
    recall_by_size,
    reliability_bins,
    segmentation_scores,
)
from weaklesion.report.figures import plot_curve, plot_reliability
from weaklesion.threads import choose_threads
from weaklesion.training import load_config, load_run, save_config, train
from weaklesion.training.data import fit_sigma_voxels
from weaklesion.training.finetune import finetune
from weaklesion.tuning import choose_operating_point, detector_sweep, metric_curve
from weaklesion.uncertainty import lesion_entropy, lesion_uncertainty_from_samples

__all__ = [
    "METHODS",
    "ROWS",
    "SETTINGS",
    "PointsSettings",
    "certainty_curve",
    "existence_calibration",
    "f1_from_counts",
    "overlap_matches",
    "points_tables",
    "row_detector",
    "run_points",
    "segmentation_scores",
    "summarise_points",
    "training_datalist",
    "tune_and_test",
]

ROWS = ("segmentation_cc", "euclidean_cc", "geodesic_cc", "heatmap_cc", "heatmap_fit")
"""Rows of Table 1: model + detector."""

METHODS = (*ROWS, "transfer")
"""What ``methods`` may name: the rows, and the transfer experiment."""

ROW_LABELS = {
    "segmentation_cc": "segmentation + CC",
    "euclidean_cc": "Euclidean map + CC",
    "geodesic_cc": "geodesic map + CC",
    "heatmap_cc": "heatmap + CC",
    "heatmap_fit": "heatmap + Gaussian fitting (ours)",
}
# Model and detector of each row; "heatmap" is the heatmap of the recipe's sigma.
ROW_MODELS = {
    "segmentation_cc": ("segmentation", "components_centre"),
    "euclidean_cc": ("euclidean", "components"),
    "geodesic_cc": ("geodesic", "components"),
    "heatmap_cc": ("heatmap", "components"),
    "heatmap_fit": ("heatmap", "fit"),
}
DETECTORS = ("components", "components_centre", "fit")
# What each kind of model changes in the recipe.
MODEL_CHANGES = {
    "segmentation": {"labels": "masks", "target": "segmentation"},
    "euclidean": {"labels": "points", "target": "euclidean"},
    "geodesic": {"labels": "points", "target": "geodesic"},
    "heatmap": {"labels": "points", "target": "heatmap"},
}
MC_DROPOUT = 0.1  # dropout of the segmentation model when the recipe has none
DATA_SEED = 0
# Training and validation cases of the phantom (the split of the runs recorded so far).
TRAINING_CASES, VALIDATION_CASES = 36, 6
THRESHOLDS = tuple(np.round(np.arange(0.01, 1.0, 0.01), 2).tolist())
MAX_LESIONS = 100  # most lesions fitted per map (the phantom has at most 12)
FIT_STOP = 0.01  # amplitude at which the Gaussian fitting stops
CALIBRATION_BINS = 10
CERTAINTY_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
TRANSFER_SCORES = ("segmentation_f1", "detection_f1", "dice")


@dataclass(frozen=True)
class PointsSettings:
    """Sizes of one version of the experiment (``SETTINGS["full"]`` or ``["quick"]``).

    Attributes
    ----------
    shape : (Z, Y, X) ints
        Phantom volume size in voxels.
    split : (int, int, int) or None
        Training, validation and test cases; None: the demo's training and validation
        cases and ``test_cases`` test cases.
    test_cases : int
        Test cases when ``split`` is None.
    recipe_changes : dict
        Changes to the demo's recipe for every model (the quick version's tiny network).
    sigmas : tuple of float
        Heatmap widths (voxels) of the transfer sources.
    mask_fractions : tuple of float
        Fractions of the training cases whose masks the transfer arms use.
    mc_samples : int
        MC-dropout passes of the segmentation model.
    """

    shape: tuple[int, int, int]
    split: tuple[int, int, int] | None
    test_cases: int
    recipe_changes: Mapping[str, Any]
    sigmas: tuple[float, ...]
    mask_fractions: tuple[float, ...]
    mc_samples: int


SETTINGS = {
    "full": PointsSettings(
        shape=(32, 64, 64),
        split=None,
        test_cases=30,
        recipe_changes={},
        sigmas=(1.0, 1.25, 1.5),
        mask_fractions=(0.01, 0.05, 0.1),
        mc_samples=10,
    ),
    "quick": PointsSettings(
        shape=(16, 32, 32),
        split=(4, 2, 2),
        test_cases=2,
        recipe_changes={"epochs": 3, "val_every": 3, "model_kwargs.features": [4, 8, 16]},
        sigmas=(1.0, 1.5),
        mask_fractions=(0.25,),
        mc_samples=2,
    ),
}


# --------------------------------------------------------------------- detection rows


def row_detector(
    detector: str,
    maps: Sequence[np.ndarray],
    sigma: Sequence[float] | float = 1.0,
    peak_scale: float = 1.0,
) -> Callable[[float, int], np.ndarray]:
    """Detections of each map at a threshold, as a function ``(threshold, case) -> points``.

    Parameters
    ----------
    detector : {"components", "components_centre", "fit"}
        Connected components of ``map * peak_scale`` above the threshold, one detection
        at each component's maximum or at its centre of mass (weighted by the map); or
        iterative Gaussian fitting of the map (once per map, up to :data:`MAX_LESIONS`
        lesions), keeping the lesions whose amplitude is at least the threshold.
    maps : sequence of (Z, Y, X) arrays
        One predicted map per case; mass-1 heatmaps for ``"fit"``.
    sigma : float or (D,) floats
        Heatmap width in voxels (``"fit"`` only).
    peak_scale : float
        Factor that puts the map on the scale of the thresholds: the heatmap scale of
        :func:`weaklesion.training.data.heatmap_scale` for a mass-1 heatmap cut into
        components, else 1.

    Returns
    -------
    callable ``(threshold, case index) -> (P, D) float array``
        Detected centres in voxels.

    Examples
    --------
    >>> heatmap = np.zeros((9, 9, 9))
    >>> heatmap[4, 4, 4], heatmap[4, 4, 5] = 1.0, 0.6
    >>> detect = row_detector("components", [heatmap])
    >>> detect(0.5, 0), detect(0.7, 0)
    (array([[4., 4., 4.]]), array([[4., 4., 4.]]))
    >>> row_detector("components_centre", [heatmap])(0.5, 0).round(3)
    array([[4.   , 4.   , 4.375]])
    """

    if detector not in DETECTORS:
        raise ValueError(f"detector: got {detector!r}; expected one of {', '.join(DETECTORS)}")
    if detector == "fit":
        fits = [
            fit_gaussians(heatmap, sigma, stop=FIT_STOP, max_lesions=MAX_LESIONS)
            for heatmap in maps
        ]
        return fitted_detector(fits)
    location = "center_of_mass" if detector == "components_centre" else "max"
    scaled = [np.asarray(m) * peak_scale for m in maps]
    return lambda threshold, case: (
        component_detections(scaled[case], threshold, location=location).points
    )


def fitted_detector(fits: Sequence[Any]) -> Callable[[float, int], np.ndarray]:
    """``(threshold, case) -> points`` of fitted lesions whose amplitude is at least the threshold.

    Parameters
    ----------
    fits : sequence of Detections
        Each case's lesions from :func:`~weaklesion.detection.fit_gaussians`.
    """
    return lambda threshold, case: fits[case].points[fits[case].scores >= threshold]


def tune_and_test(
    detect_validation: Callable[[float, int], np.ndarray],
    validation_truth: Sequence[np.ndarray],
    detect_test: Callable[[float, int], np.ndarray],
    test_truth: Sequence[np.ndarray],
    test_sizes: Sequence[np.ndarray] | None,
    match_distance: float,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, Any]:
    """Choose a detector's threshold by F1 on validation cases and score it on test cases.

    Parameters
    ----------
    detect_validation, detect_test : callable ``(threshold, case index) -> (P, D) points``
        The detector on the validation and the test cases (see :func:`row_detector`).
    validation_truth, test_truth : sequence of (T, D) arrays
        True lesion centres of each case, voxels.
    test_sizes : sequence of (T,) arrays, or None
        Size in voxels of each true test lesion, for the recall per size stratum.
    match_distance : float
        Largest distance of a match, voxels.
    thresholds : sequence of float
        Candidate thresholds; ties go to the highest.

    Returns
    -------
    dict
        ``threshold``, ``validation_f1``; on the test cases ``f1``, ``precision``,
        ``recall``, ``tp``, ``fp``, ``fn``, and ``recall_by_size`` (recall, truth and
        detected lesions per stratum, and the lesions in no stratum: under 3 voxels, or
        whose centre lies outside the mask) when sizes are given.

    Examples
    --------
    >>> truth = [np.array([[2.0, 2.0, 2.0]])]
    >>> def detect(threshold, case):  # one true and one weak false detection
    ...     return np.array([[2.0, 2.0, 2.0], [8.0, 8.0, 8.0]])[: 1 if threshold > 0.3 else 2]
    >>> result = tune_and_test(detect, truth, detect, truth, None, 3.0)
    >>> result["threshold"], result["f1"], result["fp"]
    (0.99, 1.0, 0)
    """

    curve = detector_sweep(
        detect_validation, len(validation_truth), validation_truth, match_distance, thresholds
    )
    best = choose_operating_point(curve, "f1")
    threshold = float(curve.values[best])
    matches = [
        match_points(detect_test(threshold, case), truth, match_distance)
        for case, truth in enumerate(test_truth)
    ]
    scores = detection_scores(matches)
    result = {
        "threshold": threshold,
        "validation_f1": float(metric_curve(curve, "f1")[0][best]),
        "f1": scores.f1,
        "precision": scores.precision,
        "recall": scores.recall,
        "tp": scores.tp,
        "fp": scores.fp,
        "fn": scores.fn,
        "n_cases": len(matches),
    }
    if test_sizes is not None:
        strata = recall_by_size(matches, list(test_sizes))
        result["recall_by_size"] = {
            "recall": strata.recall,
            "n_truth": strata.n_truth,
            "n_detected": strata.n_detected,
            "excluded": strata.excluded,
        }
    return result


# ---------------------------------------------------------------- calibration, certainty


def existence_calibration(
    fits: Sequence[Any],
    peak_maps: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    match_distance: float,
    n_bins: int = CALIBRATION_BINS,
) -> dict[str, Any]:
    """Calibration of fitted and unfitted existence probabilities of fitted lesions.

    Parameters
    ----------
    fits : sequence of Detections
        Every lesion :func:`~weaklesion.detection.fit_gaussians` found in each case; the
        scores are the fitted amplitudes clipped to [0, 1].
    peak_maps : sequence of (Z, Y, X) arrays
        Each case's heatmap on the peak-1 scale (an isolated lesion peaks at 1).
    truth : sequence of (T, D) arrays
        True lesion centres, voxels.
    match_distance : float
        Largest distance of a match, voxels.
    n_bins : int
        Bins of the reliability diagram and of the ECE.

    Returns
    -------
    dict
        ``outcomes`` (1 where the lesion is a hit in decreasing amplitude order), and for
        ``"fitted"`` (amplitudes) and ``"unfitted"`` (the peak-1 map at the lesion's
        nearest voxel, clipped to [0, 1]): ``probabilities``, ``ece`` and the
        reliability ``bins``.

    Examples
    --------
    >>> from weaklesion.detection import Detections
    >>> peak = np.zeros((5, 5, 5))
    >>> peak[2, 2, 2], peak[0, 0, 0] = 0.5, 0.25
    >>> found = Detections([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]], [1.0, 0.0])
    >>> result = existence_calibration([found], [peak], [np.array([[2.0, 2.0, 2.0]])], 1.0)
    >>> result["outcomes"], result["fitted"]["ece"], result["unfitted"]["ece"]
    ([1, 0], 0.0, 0.375)
    """

    outcomes, fitted, unfitted = [], [], []
    for found, peak_map, points in zip(fits, peak_maps, truth, strict=True):
        outcomes.append(hits_by_score(found.points, found.scores, points, match_distance))
        fitted.append(found.scores)
        voxels = np.clip(np.rint(found.points).astype(int), 0, np.array(peak_map.shape) - 1)
        unfitted.append(np.clip(peak_map[tuple(voxels.T)], 0.0, 1.0))
    hits = np.concatenate(outcomes).astype(int) if outcomes else np.zeros(0, int)
    result: dict[str, Any] = {"outcomes": hits.tolist(), "n_detections": len(hits)}
    for name, values in (("fitted", fitted), ("unfitted", unfitted)):
        probabilities = np.concatenate(values) if values else np.zeros(0)
        result[name] = {
            "probabilities": probabilities.tolist(),
            "ece": expected_calibration_error(probabilities, hits, n_bins),
            "bins": reliability_bins(probabilities, hits, n_bins).to_dict(),
        }
    return result


def certainty_curve(
    correct: Sequence[np.ndarray],
    uncertainty: Sequence[np.ndarray],
    fractions: Sequence[float] = CERTAINTY_FRACTIONS,
) -> dict[str, Any]:
    """Accuracy of the most certain detections, pooled over cases.

    Parameters
    ----------
    correct : sequence of (P,) bool arrays
        Per case, whether each detection is a true lesion.
    uncertainty : sequence of (P,) arrays
        Per case, each detection's uncertainty (lower is more certain).
    fractions : sequence of float
        Fractions of the detections kept, most certain first.

    Returns
    -------
    dict
        ``n_detections``, ``fraction`` and ``accuracy`` (one per fraction; empty without
        detections).

    Examples
    --------
    >>> certainty_curve([np.array([True, False]), np.array([True])],
    ...                 [np.array([0.1, 0.9]), np.array([0.2])], [0.5, 1.0])["accuracy"]
    [1.0, 0.6666666666666666]
    """

    hits = np.concatenate([np.asarray(c, dtype=bool) for c in correct]) if correct else []
    values = np.concatenate([np.asarray(u, dtype=float) for u in uncertainty]) if correct else []
    curve = accuracy_by_certainty(np.asarray(hits, bool), np.asarray(values, float), fractions)
    return {
        "n_detections": len(hits),
        "fraction": [float(f) for f in fractions] if len(hits) else [],
        "accuracy": curve.accuracy.tolist(),
    }


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
        test_fits = None
        if kind == "heatmap":
            test_fits = [
                fit_gaussians(m, sigma, stop=FIT_STOP, max_lesions=MAX_LESIONS)
                for m in maps["test"]
            ]
        for row in rows:
            detector = ROW_MODELS[row][1]
            detect_test = (
                fitted_detector(test_fits)
                if detector == "fit"
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
        if kind == "heatmap":
            peak_maps = [m * peak_scale for m in maps["test"]]
            threshold = result["heatmap_fit"]["threshold"]
            result.update(_heatmap_uncertainty(test_fits, peak_maps, test, threshold, run))
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


def _transfer(
    run: _Experiment, source: str, fraction: float, seed: int, datalist, test
) -> dict[str, Any]:
    """Train one transfer arm on a fraction of the masks and score its last epoch."""

    def compute() -> dict[str, Any]:
        run_dir = run.run_dir("transfer", source, _fraction_name(fraction), f"seed{seed}")
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
        4-8-16, 3 epochs) that checks the pipeline in seconds.
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
        for kind in ("heatmap", "segmentation", "euclidean", "geodesic")
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


# ----------------------------------------------------------------------------- report


def _units(out: Path, prefix: str) -> list[dict[str, Any]]:
    folder = out / "units"
    return (
        [read_unit(p) for p in sorted(folder.glob(f"{prefix}_*.json"))] if folder.is_dir() else []
    )


def _pooled_bins(records: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any]:

    probabilities = np.concatenate([r[name]["probabilities"] for r in records] or [np.zeros(0)])
    outcomes = np.concatenate([r["outcomes"] for r in records] or [np.zeros(0)])
    return {
        "bins": reliability_bins(probabilities, outcomes, CALIBRATION_BINS).to_dict(),
        "ece_pooled": expected_calibration_error(probabilities, outcomes, CALIBRATION_BINS),
    }


def summarise_points(out: str | os.PathLike) -> dict[str, Any]:
    """Experiment 2's results from the unit files under ``OUT/units``.

    Returns
    -------
    dict
        ``rows`` (per row: the per-seed values of each score, and the seeds),
        ``calibration`` (per-seed ECE of the fitted and unfitted probabilities, and the
        reliability bins pooled over seeds), ``certainty`` (accuracy of the most certain
        detections per seed for the heatmap and for MC dropout), ``transfer`` (per source
        and mask fraction, the per-seed scores) and ``timing`` (training seconds per
        model kind).
    """
    out = Path(out)
    evaluations = _units(out, "evaluate")
    rows: dict[str, dict[str, list]] = {}
    for record in evaluations:
        for row in ROWS:
            if row not in record:
                continue
            result = record[row]
            entry = rows.setdefault(row, {"seeds": [], "threshold": []})
            entry["seeds"].append(record["seed"])
            for key in ("f1", "precision", "recall", "threshold", "validation_f1"):
                entry.setdefault(key, []).append(result[key])
            strata = result.get("recall_by_size", {})
            for stratum, value in strata.get("recall", {}).items():
                entry.setdefault(f"recall_{stratum}", []).append(value)
                entry.setdefault(f"n_{stratum}", []).append(strata["n_truth"][stratum])
    heatmaps = [r for r in evaluations if "calibration" in r]
    calibration = {
        name: {
            "ece": [r["calibration"][name]["ece"] for r in heatmaps],
            "n_detections": [r["calibration"]["n_detections"] for r in heatmaps],
            **_pooled_bins([r["calibration"] for r in heatmaps], name),
        }
        for name in ("fitted", "unfitted")
    }
    segmentations = [r["mc_dropout"] for r in evaluations if "mc_dropout" in r]
    certainty = {
        "heatmap: entropy of the fitted amplitude": [r["heatmap_certainty"] for r in heatmaps],
        "segmentation MC dropout: entropy": [r["entropy"] for r in segmentations],
        "segmentation MC dropout: mutual information": [
            r["mutual_information"] for r in segmentations
        ],
    }
    transfer: dict[str, dict[str, dict[str, list]]] = {}
    for record in _units(out, "transfer"):
        entry = transfer.setdefault(record["source"], {}).setdefault(
            f"{record['mask_fraction']:g}", {"seeds": []}
        )
        entry["seeds"].append(record["seed"])
        entry.setdefault("n_mask_cases", []).append(len(record["mask_cases"]))
        for key in (*TRANSFER_SCORES, "train_seconds"):
            entry.setdefault(key, []).append(record[key])
    timing: dict[str, list[float]] = {}
    for record in _units(out, "train"):
        timing.setdefault(record["model"], []).append(record["train_seconds"])
    settings = read_unit(out / "settings.json") or {}
    return json_ready(
        {
            "settings": {k: v for k, v in settings.items() if k != "recipe"},
            "rows": rows,
            "calibration": calibration,
            "certainty": certainty,
            "transfer": transfer,
            "timing": timing,
        }
    )


def _source_order(source: str) -> tuple[int, float, str]:
    """Scratch first, then the heatmaps by sigma, then the distance maps."""
    if source.startswith("heatmap"):
        return 1, float(source.removeprefix("heatmap-s")), source
    return (0 if source == "scratch" else 2), 0.0, source


def _source_label(source: str) -> str:
    if source.startswith("heatmap"):
        return f"heatmap, σ = {source.removeprefix('heatmap-s')}"
    return {"scratch": "from scratch", "euclidean": "Euclidean map"}.get(source, f"{source} map")


def points_tables(summary: Mapping[str, Any]) -> str:
    """Markdown tables of :func:`summarise_points`: mean ± sample std over seeds.

    Examples
    --------
    >>> summary = {"rows": {"heatmap_fit": {"seeds": [0, 1], "f1": [0.8, 0.9],
    ...     "precision": [0.9, 0.9], "recall": [0.7, 0.9], "recall_small": [0.5, 0.5],
    ...     "n_small": [4, 4], "threshold": [0.4, 0.5]}}}
    >>> points_tables(summary).splitlines()[4].split(" | ")[1:6]
    ['2', '0.85 ± 0.07', '0.90 ± 0.00', '0.80 ± 0.14', '0.50 ± 0.00 (4)']
    """
    parts = []
    rows = summary.get("rows", {})
    if rows:
        header = [
            "method",
            "seeds",
            "F1",
            "precision",
            "recall",
            "small-lesion recall (n)",
            "threshold",
        ]
        table = []
        for row in ROWS:
            if row not in rows:
                continue
            entry = rows[row]
            n_small = entry.get("n_small") or [None]
            small = f"{format_mean(entry.get('recall_small', []))} ({n_small[0]})"
            table.append(
                [
                    ROW_LABELS[row],
                    len(entry["seeds"]),
                    format_mean(entry["f1"]),
                    format_mean(entry["precision"]),
                    format_mean(entry["recall"]),
                    small,
                    format_mean(entry["threshold"]),
                ]
            )
        parts.append("Table 1. Detection on the test cases\n\n" + markdown_table(header, table))
    calibration = summary.get("calibration", {})
    if calibration and calibration["fitted"]["ece"]:
        table = [
            [
                f"{name} existence probability",
                len(calibration[name]["ece"]),
                format_mean(calibration[name]["ece"], digits=3),
                f"{calibration[name]['ece_pooled']:.3f}",
                format_mean(calibration[name]["n_detections"], digits=0),
            ]
            for name in ("fitted", "unfitted")
        ]
        header = ["probability", "seeds", "ECE", "ECE (pooled)", "lesions per seed"]
        parts.append(
            "Table 2a. Calibration of the heatmap's lesions (10 bins)\n\n"
            + markdown_table(header, table)
        )
    certainty = {k: v for k, v in summary.get("certainty", {}).items() if v}
    if certainty:
        fractions = next(iter(certainty.values()))[0]["fraction"]
        header = ["ranked by", "seeds", *(f"top {f:.0%}" for f in fractions), "detections"]
        table = []
        for name, curves in certainty.items():
            accuracies = [
                [c["accuracy"][i] if c["accuracy"] else None for c in curves]
                for i in range(len(fractions))
            ]
            table.append(
                [
                    name,
                    len(curves),
                    *(format_mean(a) for a in accuracies),
                    format_mean([c["n_detections"] for c in curves], digits=0),
                ]
            )
        parts.append(
            "Table 2b. Accuracy of the most certain test detections\n\n"
            + markdown_table(header, table)
        )
    transfer = summary.get("transfer", {})
    if transfer:
        fractions = sorted({f for arms in transfer.values() for f in arms}, key=float)
        header = ["start", *(f"{float(f):.0%} masks: seg F1 / det F1 / Dice" for f in fractions)]
        table = []
        for source in sorted(transfer, key=_source_order):
            arms = transfer[source]
            cells = []
            for fraction in fractions:
                entry = arms.get(fraction)
                cells.append(
                    " / ".join(format_mean(entry[key]) for key in TRANSFER_SCORES) if entry else "—"
                )
            table.append([_source_label(source), *cells])
        parts.append(
            "Transfer to segmentation (test cases, last epoch)\n\n" + markdown_table(header, table)
        )
    timing = summary.get("timing", {})
    if timing:
        table = [
            [name, len(v), format_mean([s / 60 for s in v], digits=1)]
            for name, v in sorted(timing.items())
        ]
        parts.append(
            "Training time (minutes, wall clock)\n\n"
            + markdown_table(["model", "runs", "minutes"], table)
        )
    return "\n\n".join(parts) + "\n"


def write_points_report(out: str | os.PathLike) -> dict[str, Any]:
    """Write ``summary.json``, ``tables.md`` and the figures from the unit files.

    Returns
    -------
    dict
        :func:`summarise_points` of ``out``.
    """

    out = Path(out)
    summary = summarise_points(out)
    write_json(out / "summary.json", summary)
    write_text(out / "tables.md", "# Points vs masks\n\n" + points_tables(summary))
    calibration = summary["calibration"]
    if calibration["fitted"]["ece"]:
        plot_reliability(
            {
                f"{name} (ECE {calibration[name]['ece_pooled']:.3f})": calibration[name]["bins"]
                for name in ("fitted", "unfitted")
            },
            out / "calibration.png",
            title="Existence probabilities of fitted lesions",
        )
    curves = {}
    for name, records in summary["certainty"].items():
        if records and records[0]["fraction"]:
            accuracy = [
                mean_and_spread(values)[0]
                for values in zip(*(r["accuracy"] for r in records), strict=True)
            ]
            curves[name] = (records[0]["fraction"], accuracy)
    if curves:
        plot_curve(
            curves,
            out / "certainty.png",
            xlabel="fraction of detections kept (most certain first)",
            ylabel="accuracy",
            title="Accuracy of the most certain lesions",
        )
    transfer = {
        _source_label(source): (
            [float(f) * 100 for f in sorted(arms, key=float)],
            [mean_and_spread(arms[f]["segmentation_f1"])[0] for f in sorted(arms, key=float)],
        )
        for source, arms in sorted(summary["transfer"].items(), key=lambda s: _source_order(s[0]))
    }
    if transfer:
        plot_curve(
            transfer,
            out / "transfer.png",
            xlabel="masks used (% of training cases)",
            ylabel="segmentation F1",
            title="Transfer to segmentation",
        )
    return summary


def _main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny version")
    parser.add_argument("--methods", help=f"comma-separated, of {', '.join(METHODS)}")
    arguments = parser.parse_args()
    methods = arguments.methods.split(",") if arguments.methods else None
    run_points(
        arguments.out,
        quick=arguments.quick,
        seeds=arguments.seeds,
        methods=methods,
        console=Console(),
    )


if __name__ == "__main__":
    _main()
