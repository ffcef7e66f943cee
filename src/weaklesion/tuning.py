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
                            (:func:`component_detections`)
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

The choice is written to ``RUN/operating_point.json`` with the metric, the whole curve,
the cases and data it came from, and the SHA-256 of the checkpoint it was tuned for (a
checkpoint replaced by further training invalidates it); the curve is drawn in
``RUN/report/operating_point.png``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from weaklesion._validation import ArrayLike, _values, check_finite
from weaklesion.io import write_json
from weaklesion.metrics import hits_by_score, match_points

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.01, 1.0, 0.01), 2).tolist())
"""Candidate thresholds: 0.01, 0.02, ..., 0.99."""

DEFAULT_OFFSETS = tuple(np.round(np.arange(-1.0, 2.0 + 1e-9, 0.05), 2).tolist())
"""Candidate count offsets: -1.0, -0.95, ..., 2.0."""

DEFAULTS = {"threshold": 0.5, "count_offset": 0.5}
"""The setting used when nothing is tuned: threshold 0.5, rounding the count."""

OPERATING_POINT_FILE = "operating_point.json"
FIGURE_FILE = Path("report") / "operating_point.png"

_CONSTRAINED = re.compile(r"^(recall@fp<=|precision@recall>=)([0-9.eE+-]+)$")


# ---------------------------------------------------------------------------- curves


@dataclass(frozen=True, eq=False)
class OperatingCurve:
    """Per-case outcomes of a detector at each candidate setting of its knob.

    Attributes
    ----------
    parameter : {"threshold", "count_offset"}
        What the values set.
    values : (K,) float ndarray
        Candidate settings, the most conservative (fewest detections) first.
    tp, fp, fn : (K, C) int ndarrays or None
        True positives, false positives and false negatives of each case at each
        setting; None without point labels.
    predicted_count : (K, C) float ndarray
        The count each setting predicts for each case.
    truth_count : (C,) float ndarray
        True count of each case.
    """

    parameter: str
    values: np.ndarray
    tp: np.ndarray | None
    fp: np.ndarray | None
    fn: np.ndarray | None
    predicted_count: np.ndarray
    truth_count: np.ndarray

    def scores(self) -> dict[str, np.ndarray]:
        """Pooled scores at each setting, ``(K,)`` arrays.

        ``precision``, ``recall``, ``f1`` and ``fp_per_image`` (with point labels; the
        conventions of :func:`weaklesion.metrics.detection_scores`), ``count_accuracy``
        (predicted count rounded half up equals the truth) and ``count_mae``.
        """
        result = {}
        if self.tp is not None:
            tp, fp, fn = self.tp.sum(axis=1), self.fp.sum(axis=1), self.fn.sum(axis=1)
            result["precision"] = _ratio(tp, tp + fp)
            result["recall"] = _ratio(tp, tp + fn)
            result["f1"] = _ratio(2 * tp, 2 * tp + fp + fn)
            result["fp_per_image"] = fp / max(self.fp.shape[1], 1)
        rounded = np.floor(self.predicted_count + 0.5)
        result["count_accuracy"] = np.mean(rounded == self.truth_count, axis=1)
        result["count_mae"] = np.mean(np.abs(self.predicted_count - self.truth_count), axis=1)
        return result


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 1 where the denominator counts nothing."""
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 1.0)


def _candidates(values: Sequence[float], name: str, descending: bool) -> np.ndarray:
    array = np.unique(np.asarray(values, dtype=float).ravel())
    if array.size == 0:
        raise ValueError(f"{name}: is empty; expected candidate settings")
    check_finite(array, name)
    return array[::-1] if descending else array


def _truth_arrays(truth_points, n_cases: int, spacing) -> tuple[list, list]:
    if len(truth_points) != n_cases:
        raise ValueError(
            f"truth_points: has {len(truth_points)} cases but there are {n_cases} cases of "
            "detections; expected one entry per case"
        )
    per_case = isinstance(spacing, list | tuple) and any(
        s is None or np.ndim(s) == 1 for s in spacing
    )
    per_case = per_case or (isinstance(spacing, np.ndarray) and spacing.ndim == 2)
    spacings = list(spacing) if per_case else [spacing] * n_cases
    if len(spacings) != n_cases:
        raise ValueError(f"spacing: has {len(spacings)} entries; expected one per case")
    return [np.asarray(_values(t), dtype=float) for t in truth_points], spacings


def threshold_sweep(
    detections: Sequence[tuple[ArrayLike, ArrayLike]],
    truth_points: Sequence[ArrayLike],
    max_distance: float,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    spacing: Any = None,
) -> OperatingCurve:
    """Outcomes of keeping the detections scoring at least each threshold.

    For detectors whose detections at a threshold are a subset of one scored list, as
    the amplitudes of :func:`~weaklesion.detection.fit_gaussians`.

    Parameters
    ----------
    detections : sequence of (points (P, D), scores (P,))
        Every detection of each case with its score.
    truth_points : sequence of (T, D) arrays
        True lesion centres of each case.
    max_distance : float
        Largest match distance, in mm with ``spacing``, else voxels.
    thresholds : sequence of floats
        Candidates; sorted from the highest.
    spacing : float, (D,) sequence, or list of per-case (D,) spacings or None, optional
        Voxel size in mm, for every case or per case.

    Returns
    -------
    OperatingCurve
        ``parameter="threshold"``; the true positives at each threshold are those of
        :func:`~weaklesion.metrics.match_points` on the kept detections.

    Notes
    -----
    The one-to-one matching of the detections kept at each threshold comes from a single
    pass of :func:`~weaklesion.metrics.hits_by_score` per case (a hit is a detection
    that enlarges the maximum matching when added in decreasing score order), so the
    sweep costs one matching per case whatever the number of thresholds.

    Examples
    --------
    >>> found = [([[1.0, 1.0], [6.0, 6.0]], [0.9, 0.3])]
    >>> curve = threshold_sweep(found, [[[1.0, 2.0], [6.0, 5.0]]], 2.0, [0.2, 0.5])
    >>> curve.values, curve.tp[:, 0], curve.fn[:, 0]
    (array([0.5, 0.2]), array([1, 2]), array([1, 0]))
    """
    values = _candidates(thresholds, "thresholds", descending=True)
    truths, spacings = _truth_arrays(truth_points, len(detections), spacing)
    tp, kept = [], []
    for (points, scores), truth, case_spacing in zip(detections, truths, spacings, strict=True):
        scores = np.asarray(_values(scores), dtype=float).ravel()
        hits = hits_by_score(points, scores, truth, max_distance, case_spacing)
        order = np.argsort(-scores, kind="stable")
        # Detections kept at threshold t: those scoring >= t, a prefix of ``order``.
        n_kept = np.searchsorted(-scores[order], -values, side="right")
        tp.append(np.concatenate([[0], np.cumsum(hits[order])])[n_kept])
        kept.append(n_kept)
    tp_array = np.stack(tp, axis=1) if tp else np.zeros((len(values), 0), dtype=np.int64)
    kept_array = np.stack(kept, axis=1) if kept else np.zeros_like(tp_array)
    n_truth = np.array([len(t) for t in truths], dtype=np.int64)
    return OperatingCurve(
        "threshold",
        values,
        tp_array,
        kept_array - tp_array,
        n_truth - tp_array,
        kept_array.astype(float),
        n_truth.astype(float),
    )


def detector_sweep(
    detect: Callable[[float, int], np.ndarray],
    n_cases: int,
    truth_points: Sequence[ArrayLike],
    max_distance: float,
    values: Sequence[float] = DEFAULT_THRESHOLDS,
    spacing: Any = None,
    parameter: str = "threshold",
) -> OperatingCurve:
    """Outcomes of any detector run afresh at each setting.

    Parameters
    ----------
    detect : callable ``(value, case index) -> (P, D) points``
        The detections of one case at one setting, e.g. the connected components of a
        map above ``value``.
    n_cases : int
        Number of cases.
    truth_points, max_distance, spacing
        As for :func:`threshold_sweep`.
    values : sequence of floats
        Candidate settings.
    parameter : {"threshold", "count_offset"}
        The knob: thresholds are tried from the highest, offsets from the lowest.

    Returns
    -------
    OperatingCurve

    Examples
    --------
    >>> from weaklesion.detection import component_detections
    >>> prob = np.zeros((8, 8))
    >>> prob[1, 1], prob[5, 5] = 0.9, 0.4
    >>> curve = detector_sweep(
    ...     lambda t, c: component_detections(prob, t).points, 1, [[[1.0, 1.0]]], 1.5,
    ...     [0.3, 0.6])
    >>> curve.values, curve.fp[:, 0]
    (array([0.6, 0.3]), array([0, 1]))
    """
    settings = _candidates(values, "values", descending=parameter == "threshold")
    truths, spacings = _truth_arrays(truth_points, n_cases, spacing)
    shape = (len(settings), n_cases)
    tp, fp, fn = (np.zeros(shape, dtype=np.int64) for _ in range(3))
    for k, value in enumerate(settings):
        for case, (truth, case_spacing) in enumerate(zip(truths, spacings, strict=True)):
            matches = match_points(detect(float(value), case), truth, max_distance, case_spacing)
            tp[k, case], fp[k, case], fn[k, case] = matches.tp, matches.fp, matches.fn
    n_truth = np.array([len(t) for t in truths], dtype=float)
    return OperatingCurve(parameter, settings, tp, fp, fn, (tp + fp).astype(float), n_truth)


def count_offset_sweep(
    candidates: Sequence[tuple[ArrayLike, ArrayLike]],
    counts: ArrayLike,
    truth_counts: ArrayLike,
    truth_points: Sequence[ArrayLike] | None,
    max_distance: float,
    offsets: Sequence[float] = DEFAULT_OFFSETS,
    spacing: Any = None,
) -> OperatingCurve:
    """Outcomes of keeping the ``n = max(floor(count + b), 0)`` best candidates per case.

    The GP-Unet rule: the predicted count says how many of the attention map's peaks
    (ranked by value) are lesions; the offset ``b`` sets the rounding (0.5 rounds half
    up, lower keeps fewer).

    Parameters
    ----------
    candidates : sequence of (points (P, D), scores (P,))
        Each case's candidates, e.g. :func:`~weaklesion.detection.peak_detections`.
    counts : (C,) array
        Predicted count of each case.
    truth_counts : (C,) array
        True count of each case.
    truth_points : sequence of (T, D) arrays, or None
        True lesion centres; without them the curve has count outcomes only.
    max_distance, spacing
        As for :func:`threshold_sweep`.
    offsets : sequence of floats
        Candidate offsets; sorted from the lowest.

    Returns
    -------
    OperatingCurve
        ``parameter="count_offset"``; ``predicted_count`` is ``n``.

    Examples
    --------
    >>> peaks = [([[1.0, 1.0], [5.0, 5.0], [9.0, 9.0]], [0.9, 0.8, 0.1])]
    >>> curve = count_offset_sweep(peaks, [1.4], [2], [[[1.0, 1.0], [5.0, 5.0]]], 1.0,
    ...                            offsets=[0.0, 0.5, 0.7])
    >>> curve.predicted_count[:, 0], curve.tp[:, 0]
    (array([1., 1., 2.]), array([1, 1, 2]))
    """
    settings = _candidates(offsets, "offsets", descending=False)
    predicted = np.asarray(_values(counts), dtype=float).ravel()
    truth = np.asarray(_values(truth_counts), dtype=float).ravel()
    if not len(predicted) == len(truth) == len(candidates):
        raise ValueError(
            f"counts, truth_counts: have {len(predicted)} and {len(truth)} entries for "
            f"{len(candidates)} cases; expected one per case"
        )
    check_finite(predicted, "counts")
    n = np.maximum(np.floor(predicted[None, :] + settings[:, None]), 0).astype(np.int64)
    if truth_points is None:
        return OperatingCurve("count_offset", settings, None, None, None, n.astype(float), truth)
    truths, spacings = _truth_arrays(truth_points, len(candidates), spacing)
    tp, kept = np.zeros_like(n), np.zeros_like(n)
    for case, ((points, scores), truth_case, case_spacing) in enumerate(
        zip(candidates, truths, spacings, strict=True)
    ):
        scores = np.asarray(_values(scores), dtype=float).ravel()
        hits = hits_by_score(points, scores, truth_case, max_distance, case_spacing)
        order = np.argsort(-scores, kind="stable")
        kept[:, case] = np.minimum(n[:, case], len(scores))
        tp[:, case] = np.concatenate([[0], np.cumsum(hits[order])])[kept[:, case]]
    n_truth = np.array([len(t) for t in truths], dtype=np.int64)
    return OperatingCurve(
        "count_offset", settings, tp, kept - tp, n_truth - tp, n.astype(float), truth
    )


# ---------------------------------------------------------------------------- choice


def metric_curve(curve: OperatingCurve, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The value of ``metric`` at each setting, and the values to maximise.

    Returns
    -------
    reported : (K,) float ndarray
        The metric (NaN where a constraint fails).
    objective : (K,) float ndarray
        Higher is better; ``-inf`` where a constraint fails.

    Examples
    --------
    >>> curve = OperatingCurve("threshold", np.array([0.6, 0.3]), np.array([[1], [2]]),
    ...                        np.array([[0], [3]]), np.array([[1], [0]]),
    ...                        np.array([[1.0], [5.0]]), np.array([2.0]))
    >>> metric_curve(curve, "recall@fp<=1")[0]
    array([0.5, nan])
    """
    scores = curve.scores()
    constrained = _CONSTRAINED.match(metric)
    if metric in ("count_accuracy", "count_mae"):
        reported = scores[metric]
        return reported, -reported if metric == "count_mae" else reported
    if metric != "f1" and constrained is None:
        raise ValueError(
            f"metric: got {metric!r}; expected f1, recall@fp<=X, precision@recall>=X, "
            "count_accuracy or count_mae"
        )
    if curve.tp is None:
        raise ValueError(
            f"metric: {metric!r} needs point labels and the cases have none; "
            "use count_accuracy or count_mae"
        )
    if metric == "f1":
        return scores["f1"], scores["f1"]
    name, bound = constrained.group(1), float(constrained.group(2))
    if name == "recall@fp<=":
        reported, feasible = scores["recall"], scores["fp_per_image"] <= bound
    else:
        reported, feasible = scores["precision"], scores["recall"] >= bound
    return np.where(feasible, reported, np.nan), np.where(feasible, reported, -np.inf)


def choose_operating_point(curve: OperatingCurve, metric: str = "f1") -> int:
    """Index of the best setting by ``metric``; ties go to the most conservative.

    Raises
    ------
    ValueError
        If no setting meets the metric's constraint.

    Examples
    --------
    >>> curve = threshold_sweep([([[1.0], [5.0]], [0.9, 0.2])], [[[1.0]]], 1.0,
    ...                         [0.1, 0.5, 0.8])
    >>> float(curve.values[choose_operating_point(curve)])
    0.8
    """
    _, objective = metric_curve(curve, metric)
    if not np.any(np.isfinite(objective)):
        raise ValueError(f"metric: no setting meets {metric!r} on these cases")
    best = np.nanmax(objective)
    return int(np.flatnonzero(np.isclose(objective, best, rtol=1e-12, atol=0.0))[0])


# ------------------------------------------------------------------------- from a run


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    """Predictions and voxel spacing of each case."""
    from weaklesion.data.normalize import zscore
    from weaklesion.inference import predict_image
    from weaklesion.io import affine_spacing

    if progress:
        from rich.progress import track

        cases = track(cases, description="Predicting validation cases")
    results = []
    for case in cases:
        arrays = case.load()
        prediction = predict_image(
            model,
            zscore(arrays.image),
            config.target,
            config.patch_size,
            scale=info["heatmap_scale"],
            device=device,
        )
        results.append((prediction, affine_spacing(arrays.affine)))
    return results


def tune_operating_point(
    run_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    metric: str = "f1",
    split: str = "validation",
    *,
    which: str = "best",
    values: Sequence[float] | None = None,
    max_distance: float | None = None,
    max_lesions: int = 1000,
    nms_size: int = 6,
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
    max_lesions : int
        Most lesions Gaussian fitting extracts per case (heatmap runs). The fitted
        amplitudes depend on it when a map holds more candidates than this, so use the
        value detection will use (``fit_gaussians``' and ``weaklesion detect``'s 1000).
    nms_size : int
        Non-maximum suppression box of the attention map's peaks (count runs).
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
    from weaklesion.data.dataset import load_dataset
    from weaklesion.detection import component_detections, fit_gaussians, peak_detections
    from weaklesion.training.checkpoint import load_run
    from weaklesion.training.data import fit_sigma_voxels

    run_dir = Path(run_dir)
    checkpoint = run_dir / f"{which}.pt" if which in ("best", "last") else Path(which)
    model, config, info = load_run(run_dir, which, device)
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
    in_mm = config.sigma_units == "mm"
    spacings = [spacing if in_mm else None for _, spacing in predictions]
    limit = config.match_distance if max_distance is None else float(max_distance)
    parameter = "count_offset" if config.target == "count" else "threshold"
    default = DEFAULTS[parameter]
    candidates = list(
        values or (DEFAULT_OFFSETS if parameter == "count_offset" else DEFAULT_THRESHOLDS)
    )
    candidates.append(default)

    if config.target == "heatmap":
        fits = [
            fit_gaussians(p.map, fit_sigma_voxels(config, spacing), max_lesions=max_lesions)
            for p, spacing in predictions
        ]
        curve = threshold_sweep(
            [(f.points, f.scores) for f in fits], truth_points, limit, candidates, spacings
        )
        sigma = [fit_sigma_voxels(config, spacing).tolist() for _, spacing in predictions]
        detector = {"name": "fit_gaussians", "sigma_voxels": sigma, "max_lesions": max_lesions}
    elif config.target == "count":
        peaks = [peak_detections(p.map, size=nms_size) for p, _ in predictions]
        curve = count_offset_sweep(
            [(found.points, found.scores) for found in peaks],
            [p.count for p, _ in predictions],
            [_count(c) for c in cases],
            truth_points,
            limit,
            candidates,
            spacings,
        )
        detector = {"name": "peak_detections, top n", "size": nms_size}
    else:
        maps = [p.map for p, _ in predictions]
        curve = detector_sweep(
            lambda tau, case: component_detections(maps[case], tau).points,
            len(maps),
            truth_points,
            limit,
            candidates,
            spacings,
        )
        detector = {"name": "component_detections"}

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
        "detector": detector,
        "matching": {"max_distance": limit, "distance_unit": "mm" if in_mm else "voxel"},
        "curve": {"values": curve.values, "metric": reported, **scores},
        "data": {
            "source": str(Path(dataset.source).resolve()),
            "split": split,
            "cases": [c.id for c in cases],
        },
        "run": {
            "dir": str(run_dir.resolve()),
            "checkpoint": checkpoint.name,
            "sha256": _sha256(checkpoint),
            "epoch": int(info["epoch"]),
        },
        "figure": FIGURE_FILE.as_posix(),
    }
    record = _json_ready(record)
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
    from weaklesion.report.figures import plot_curve

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


def read_operating_point(
    run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None
) -> dict[str, Any] | None:
    """The operating point stored in a run folder, if it was tuned for ``checkpoint``.

    Parameters
    ----------
    run_dir : path
        Run folder.
    checkpoint : path, optional
        The checkpoint in use; default ``RUN/best.pt``.

    Returns
    -------
    dict or None
        The record :func:`tune_operating_point` wrote; None when there is none, when it
        was tuned for a checkpoint of another name (``best.pt`` when ``checkpoint`` is
        ``last.pt``), or (with a warning) when the checkpoint of that name has changed
        since, e.g. because further training found a better epoch.
    """
    run_dir = Path(run_dir)
    path = run_dir / OPERATING_POINT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        tuned_for = record["run"]["sha256"]
        record["parameter"], float(record["value"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: not an operating point written by `weaklesion tune`") from None
    checkpoint = run_dir / "best.pt" if checkpoint is None else Path(checkpoint)
    if record["run"].get("checkpoint") != checkpoint.name:
        return None  # tuned for another checkpoint of the run, e.g. best.pt, not last.pt
    if not checkpoint.is_file() or _sha256(checkpoint) != tuned_for:
        warnings.warn(
            f"{path}: tuned for another {checkpoint.name} than the one now in {run_dir}; "
            "ignored (run `weaklesion tune` again)",
            stacklevel=2,
        )
        return None
    return record


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
