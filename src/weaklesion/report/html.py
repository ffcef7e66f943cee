"""One self-contained HTML page of an evaluated model, to open and scroll offline.

The page (``templates/report.html``, rendered with Jinja2) holds the run's settings,
the metrics with 95 % bootstrap intervals over cases, the FROC and calibration plots,
the lesion counts (and count distributions where the evaluation has them), the training
curves of the run's history, and a gallery of the cases, worst first: the slices
through every detection and every miss, hits, false positives and misses marked in the
colours and shapes of :data:`MARKERS`. Every image is a PNG data URI, so the one file
works without a server, a network or the files it was made from; clicking an image
enlarges it.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import math
import os
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from weaklesion.data import load_dataset
from weaklesion.data.truth import lesion_truth
from weaklesion.detection import read_detections_csv
from weaklesion.io import atomic_write
from weaklesion.metrics import bootstrap_ci, count_accuracy, count_mae
from weaklesion.report.figures import (
    plot_counts,
    plot_curve,
    plot_froc,
    plot_reliability,
)
from weaklesion.report.viewers import OUTCOMES, CaseOutcomes, case_outcomes

TEMPLATES = Path(__file__).parent / "templates"
GALLERY_CASES = 16
"""Cases shown in the gallery by default (the worst ones)."""
GALLERY_SLICES = 6
"""Slices shown per case by default (those through misses and false positives first)."""
PANEL_PIXELS = 192
"""Longest side of a gallery slice in pixels (small images are enlarged, voxels kept)."""
FIGURES = ("froc", "calibration", "counts", "loss", "validation", "validation_errors")
"""The plots of the page."""
MARKERS = {"hit": "circle", "false positive": "cross", "miss": "square"}
"""Shape of each outcome's marker; its colour is that of :data:`OUTCOMES`."""


@dataclass(frozen=True)
class GalleryCase:
    """One case of the gallery: its outcome counts and its slices as PNG bytes.

    Attributes
    ----------
    case : str
    tp, fp, fn : int
        Hits, false positives and misses.
    slices : list of (title, PNG bytes)
        One per slice through a detection or miss, at most the gallery's limit.
    n_slices : int
        Slices through a detection or miss in all (more than shown when cut).
    """

    case: str
    tp: int
    fp: int
    fn: int
    slices: list[tuple[str, bytes]]
    n_slices: int


def worst_first(outcomes: Mapping[str, CaseOutcomes]) -> list[str]:
    """Cases ordered worst first: most errors (false positives + misses), then lowest F1,
    then name.

    Examples
    --------
    >>> found = {
    ...     "a": case_outcomes([[1.0, 1.0]], [0.9], [[1.0, 1.0]], 1.0, 0.5),
    ...     "b": case_outcomes([[9.0, 9.0]], [0.9], [[1.0, 1.0]], 1.0, 0.5),
    ... }
    >>> worst_first(found)
    ['b', 'a']
    """

    def key(case: str) -> tuple[int, float, str]:
        found = outcomes[case]
        tp, fp, fn = len(found.hits), len(found.false_positives), len(found.misses)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        return (-(fp + fn), f1, case)

    return sorted(outcomes, key=key)


def outcome_slices(outcomes: CaseOutcomes, depth: int) -> list[int]:
    """Axial slices (array axis 0) through the case's misses, false positives and hits,
    in that order, each once.

    Examples
    --------
    >>> found = case_outcomes([[2.2, 5.0, 5.0], [7.0, 1.0, 1.0]], [0.9, 0.9],
    ...                       [[2.0, 5.0, 5.0], [4.0, 3.0, 3.0]], 1.0, 0.5)
    >>> outcome_slices(found, 10)
    [4, 7, 2]
    """
    order = []
    for outcome in ("miss", "false positive", "hit"):
        points, _ = outcomes.groups()[outcome]
        for z in np.clip(np.rint(np.asarray(points)[:, 0]), 0, depth - 1).astype(int):
            if int(z) not in order:
                order.append(int(z))
    return order


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_slice(
    image: np.ndarray,
    outcomes: CaseOutcomes,
    z: int | None,
    window: tuple[float, float],
    pixels: int = PANEL_PIXELS,
) -> bytes:
    """A slice with the case's hits, false positives and misses marked, as PNG bytes.

    Parameters
    ----------
    image : (Z, Y, X) or (Y, X) array
        One channel of the image.
    outcomes : CaseOutcomes
        Points in the voxel coordinates of ``image``.
    z : int or None
        Slice of a 3D image; None for a 2D image.
    window : (low, high)
        Intensities shown as black and white.
    pixels : int
        Longest side of the picture; each voxel becomes a square of whole pixels.

    Returns
    -------
    bytes
        An RGB PNG. Markers of points on the slice are drawn thick, those within 1.5
        slices of it thin; detections carry their score.
    """
    plane = image if z is None else image[z]
    low, high = window
    grey = np.clip((plane - low) / max(high - low, 1e-12), 0, 1)
    scale = max(1, pixels // max(plane.shape))
    picture = Image.fromarray((grey * 255).astype(np.uint8)).convert("RGB")
    picture = picture.resize((plane.shape[1] * scale, plane.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    font = _font(max(10, min(14, 3 * scale)))
    radius = max(5.0, 2.0 * scale)
    for outcome, (points, scores) in outcomes.groups().items():
        colour = OUTCOMES[outcome][1]
        for index, point in enumerate(np.asarray(points, dtype=float)):
            distance = 0.0 if z is None else abs(point[0] - z)
            if distance > 1.5:
                continue
            y, x = (point[-2:] + 0.5) * scale
            width = 3 if distance < 0.5 else 1
            box = (x - radius, y - radius, x + radius, y + radius)
            if MARKERS[outcome] == "circle":
                draw.ellipse(box, outline=colour, width=width)
            elif MARKERS[outcome] == "square":
                draw.rectangle(box, outline=colour, width=width)
            else:
                draw.line(box, fill=colour, width=width)
                draw.line((box[0], box[3], box[2], box[1]), fill=colour, width=width)
            if scores is not None and width > 1:
                draw.text((x + radius + 2, y - radius), f"{scores[index]:.2f}", colour, font)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def gallery(
    outcomes: Mapping[str, CaseOutcomes],
    load_image: Callable[[str], np.ndarray],
    max_cases: int = GALLERY_CASES,
    max_slices: int = GALLERY_SLICES,
) -> list[GalleryCase]:
    """The gallery's cases, worst first (see :func:`worst_first`).

    Parameters
    ----------
    outcomes : mapping of case to CaseOutcomes
    load_image : callable ``case -> (Z, Y, X) or (Y, X) array``
        One channel of a case's image; called only for the cases shown.
    max_cases, max_slices : int
        Most cases, and most slices per case, shown.
    """
    cases = []
    for case in worst_first(outcomes)[:max_cases]:
        found = outcomes[case]
        image = np.asarray(load_image(case), dtype=float)
        window = tuple(float(v) for v in np.percentile(image, [0.5, 99.5]))
        if image.ndim == 2:
            slices = [(None, "whole image")]
            total = 1
        else:
            chosen = outcome_slices(found, image.shape[0])
            total = len(chosen)
            slices = [(z, f"z = {z}: {_on_slice(found, z)}") for z in chosen[:max_slices]]
        cases.append(
            GalleryCase(
                case=case,
                tp=len(found.hits),
                fp=len(found.false_positives),
                fn=len(found.misses),
                slices=[(title, render_slice(image, found, z, window)) for z, title in slices],
                n_slices=total,
            )
        )
    return cases


def _on_slice(outcomes: CaseOutcomes, z: int) -> str:
    """What lies on slice ``z``, e.g. ``"1 hit, 2 misses"``."""
    plurals = {"hit": "hits", "false positive": "false positives", "miss": "misses"}
    parts = []
    for outcome, (points, _) in outcomes.groups().items():
        number = int(np.sum(np.rint(np.asarray(points)[:, 0]) == z)) if len(points) else 0
        if number:
            parts.append(f"{number} {outcome if number == 1 else plurals[outcome]}")
    return ", ".join(parts)


def _pooled(rows: np.ndarray, numerator: Sequence[float], denominator: Sequence[float]):
    """Ratio of weighted column sums of per-case counts; 1 when the denominator is 0."""
    totals = rows.sum(axis=0)
    top, bottom = float(totals @ numerator), float(totals @ denominator)
    return top / bottom if bottom else 1.0


def metric_rows(
    evaluation: Mapping[str, Any], n_boot: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """The metrics table: name, estimate and 95 % percentile-bootstrap interval over cases.

    Detection scores pool TP, FP and FN over the resampled cases at the evaluation's
    threshold; FAUC keeps the evaluation's own interval; count metrics resample the
    per-case counts; ECE has no interval.

    Parameters
    ----------
    evaluation : mapping
        A report of :func:`weaklesion.metrics.evaluate_detections` (``weaklesion
        evaluate --out``), optionally with a ``counts`` section.
    n_boot, seed : int
        Bootstrap resamples and seed.

    Returns
    -------
    list of dict
        ``{"name", "estimate", "low", "high", "note"}`` (None where not defined).
    """
    detection = evaluation["detection"]
    rows = np.array([[c["tp"], c["fp"], c["fn"]] for c in evaluation["cases"].values()], float)
    ratios = {
        "F1": ("f1", (2, 0, 0), (2, 1, 1)),
        "precision": ("precision", (1, 0, 0), (1, 1, 0)),
        "recall (sensitivity)": ("recall", (1, 0, 0), (1, 0, 1)),
    }
    table = []
    for name, (key, numerator, denominator) in ratios.items():
        interval = bootstrap_ci(
            rows, lambda r, n=numerator, d=denominator: _pooled(r, n, d), n_boot=n_boot, seed=seed
        )
        table.append(_row(name, detection[key], interval.low, interval.high, "pooled over cases"))
    interval = bootstrap_ci(rows[:, 1], n_boot=n_boot, seed=seed)
    table.append(
        _row("false positives per image", detection["fp_per_image"], *interval[1:], "mean")
    )
    fauc = evaluation["fauc"]
    limit = evaluation["settings"].get("max_fp")
    table.append(_row("FAUC", fauc["estimate"], fauc["low"], fauc["high"], f"FP ≤ {limit}"))
    table.append(_row("ECE", evaluation["calibration"]["ece"], None, None, "all detections"))
    predicted, truth, _ = count_pairs(evaluation)
    if predicted:
        pairs = np.array([[predicted[c], truth[c]] for c in truth], dtype=float)
        for name, measure in (("count accuracy", count_accuracy), ("count MAE", count_mae)):
            interval = bootstrap_ci(
                pairs, lambda r, m=measure: m(r[:, 0], r[:, 1]), n_boot=n_boot, seed=seed
            )
            estimate = measure(pairs[:, 0], pairs[:, 1])
            table.append(_row(name, estimate, interval.low, interval.high, "per case"))
    return table


def _row(name: str, estimate, low=None, high=None, note: str = "") -> dict[str, Any]:
    def number(value):
        return None if value is None or not math.isfinite(float(value)) else float(value)

    return {
        "name": name,
        "estimate": number(estimate),
        "low": number(low),
        "high": number(high),
        "note": note,
    }


def count_pairs(
    evaluation: Mapping[str, Any],
) -> tuple[dict[str, float], dict[str, int], dict[str, list[float]]]:
    """Predicted and true counts per case, and count distributions where there are some.

    Reads the ``counts`` section of ``weaklesion evaluate`` (``{"cases": {case:
    {"predicted", "truth"}}}``) and that of the demo (``{case: {"truth", "pmf", "mode",
    ...}}``, predicted count = the mode); no section gives empty mappings.
    """
    section = evaluation.get("counts") or {}
    if "cases" in section and "metrics" in section:
        entries = section["cases"]
        predicted = {case: float(e["predicted"]) for case, e in entries.items()}
        return predicted, {case: int(e["truth"]) for case, e in entries.items()}, {}
    predicted = {case: float(e["mode"]) for case, e in section.items()}
    truth = {case: int(e["truth"]) for case, e in section.items()}
    return predicted, truth, {case: list(e["pmf"]) for case, e in section.items() if "pmf" in e}


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figures(
    evaluation: Mapping[str, Any], history: list[dict[str, Any]], outcomes, best_epoch
) -> dict[str, str]:
    """The plots of :data:`FIGURES` as data URIs; None where there is no data for one."""
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        froc = evaluation["froc"]
        limit = evaluation["settings"].get("max_fp") or 5.0
        label = "detections"
        figures["froc"] = plot_froc(
            {label: (froc["fp_per_image"], froc["sensitivity"])}, path / "froc.png", limit
        )
        figures["calibration"] = plot_reliability(
            {"detection scores": evaluation["calibration"]["bins"]}, path / "calibration.png"
        )
        predicted, truth, pmfs = count_pairs(evaluation)
        if predicted:
            shown = {c: (pmfs[c], truth[c]) for c in worst_first(outcomes) if c in pmfs}
            figures["counts"] = plot_counts(
                [predicted[c] for c in truth],
                [truth[c] for c in truth],
                path / "counts.png",
                pmfs=dict(list(shown.items())[:3]),
            )
        if history:
            epochs = [record["epoch"] for record in history]
            markers = {"best epoch": best_epoch} if best_epoch else None
            figures["loss"] = plot_curve(
                {"training loss": (epochs, [r.get("loss", math.nan) for r in history])},
                path / "loss.png",
                "epoch",
                "loss",
                "Training loss",
                markers,
            )
            names = [key for key in history[0] if key.startswith("val_")]
            names += [k for r in history for k in r if k.startswith("val_") and k not in names]
            curves = {}
            for key in names:
                if key in ("val_seconds", "val_threshold"):
                    continue
                values = [r.get(key) for r in history]
                points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
                if points:
                    x, y = zip(*points, strict=True)
                    curves[key.removeprefix("val_")] = (x, y)
            # Rates (F1, Dice, accuracy) share a panel; errors and losses get their own.
            rates = {k: c for k, c in curves.items() if all(0 <= v <= 1 for v in c[1])}
            others = {k: c for k, c in curves.items() if k not in rates}
            for name, group, title in (
                ("validation", rates, "Validation metrics"),
                ("validation_errors", others, "Validation errors"),
            ):
                if group:
                    figures[name] = plot_curve(
                        group, path / f"{name}.png", "epoch", "", title, markers
                    )
        uris = {name: _data_uri(file.read_bytes()) for name, file in figures.items()}
    return {name: uris.get(name) for name in FIGURES}


def _run_summary(run_dir: Path | None) -> dict[str, Any]:
    """Configuration, history and operating point of a run folder (whatever it has)."""
    summary: dict[str, Any] = {"path": None, "config": [], "history": [], "facts": []}
    if run_dir is None:
        return summary
    run_dir = Path(run_dir)
    summary["path"] = str(run_dir)
    config = run_dir / "config.toml"
    if config.exists():
        values = tomllib.loads(config.read_text(encoding="utf-8"))
        kwargs = values.pop("model_kwargs", {})
        items = [(key, value) for key, value in values.items()]
        items += [(f"model_kwargs.{key}", value) for key, value in kwargs.items()]
        summary["config"] = [(key, json.dumps(value)) for key, value in items]
    history = run_dir / "history.jsonl"
    if history.exists():
        lines = history.read_text(encoding="utf-8").splitlines()
        summary["history"] = [json.loads(line) for line in lines if line.strip()]
    for name, keys in (
        ("metrics.json", ("epochs_completed", "metric", "best_epoch", "best_value")),
        ("operating_point.json", ("parameter", "value", "metric", "metric_value")),
    ):
        path = run_dir / name
        if path.exists():
            values = json.loads(path.read_text(encoding="utf-8"))
            prefix = "tuned " if name == "operating_point.json" else ""
            summary["facts"] += [
                (prefix + key.replace("_", " "), values[key]) for key in keys if key in values
            ]
    return summary


def write_report(
    path: str | os.PathLike,
    evaluation: Mapping[str, Any],
    outcomes: Mapping[str, CaseOutcomes],
    load_image: Callable[[str], np.ndarray],
    run_dir: str | os.PathLike | None = None,
    title: str = "weaklesion report",
    max_cases: int = GALLERY_CASES,
    max_slices: int = GALLERY_SLICES,
) -> Path:
    """Write the HTML page of an evaluation.

    Parameters
    ----------
    path : path
        ``.html`` file, written atomically.
    evaluation : mapping
        A report of :func:`weaklesion.metrics.evaluate_detections` (as ``weaklesion
        evaluate`` or the demo write it).
    outcomes : mapping of case to CaseOutcomes
        Hits, false positives and misses of each case at the evaluation's threshold
        (:func:`weaklesion.report.viewers.case_outcomes`).
    load_image : callable ``case -> (Z, Y, X) or (Y, X) array``
        One channel of a case's image, for the gallery.
    run_dir : path, optional
        Run folder: its configuration, training history and operating point.
    title : str
    max_cases, max_slices : int
        Cases in the gallery (worst first) and slices per case.

    Returns
    -------
    Path
    """
    run = _run_summary(None if run_dir is None else Path(run_dir))
    best_epoch = dict(run["facts"]).get("best epoch")
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    settings = dict(evaluation.get("settings", {}))
    shown = gallery(outcomes, load_image, max_cases, max_slices)
    page = environment.get_template("report.html").render(
        title=title,
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=version("weaklesion"),
        settings=[(key, json.dumps(value)) for key, value in settings.items()],
        run=run,
        metrics=metric_rows(evaluation, seed=int(settings.get("seed", 0) or 0)),
        detection=evaluation["detection"],
        detection_threshold=f"{settings.get('threshold', float('nan')):g}",
        recall_by_size=evaluation.get("recall_by_size"),
        figures=_figures(evaluation, run["history"], outcomes, best_epoch),
        counts_wide=bool(count_pairs(evaluation)[2]),
        gallery=[
            {
                "case": case.case,
                "tp": case.tp,
                "fp": case.fp,
                "fn": case.fn,
                "n_slices": case.n_slices,
                "slices": [(title, _data_uri(png)) for title, png in case.slices],
            }
            for case in shown
        ],
        n_cases=len(outcomes),
        outcomes=[
            {"name": name, "colour": colour, "marker": MARKERS[name]}
            for name, (_, colour) in OUTCOMES.items()
        ],
    )
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return Path(path)


def evaluation_outcomes(
    evaluation: Mapping[str, Any],
    detections: Mapping[str, tuple[Any, Any]],
    truth: Mapping[str, Any],
    spacing: Mapping[str, Any] | None = None,
) -> dict[str, CaseOutcomes]:
    """Outcomes of every evaluated case at the evaluation's threshold and distance.

    Parameters
    ----------
    evaluation : mapping
        Its ``settings`` give ``threshold``, ``max_distance`` and ``distance_unit``.
    detections : mapping of case to (points (P, D), scores (P,)), voxels
    truth : mapping of case to (T, D) truth points, voxels
    spacing : mapping of case to voxel size, optional
        Needed when the distance unit is mm.
    """
    settings = evaluation["settings"]
    in_mm = settings.get("distance_unit") == "mm"
    if in_mm and spacing is None:
        raise ValueError("spacing: the evaluation matched in mm; expected voxel sizes")
    outcomes = {}
    for case in evaluation["cases"]:
        points = np.asarray(truth[case], dtype=float)
        dims = points.shape[1] if points.ndim == 2 else 3
        found, scores = detections.get(case, (np.zeros((0, dims)), np.zeros(0)))
        outcomes[case] = case_outcomes(
            found,
            scores,
            points,
            settings["max_distance"],
            settings["threshold"],
            spacing[case] if in_mm else None,
        )
    return outcomes


def report_from_evaluation(
    evaluation_path: str | os.PathLike,
    out: str | os.PathLike,
    run: str | os.PathLike | None = None,
    detections: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
    max_cases: int = GALLERY_CASES,
) -> Path:
    """Write the HTML page of a ``weaklesion evaluate --out`` result file.

    The run, detections and truth default to those the result names in its settings.

    Parameters
    ----------
    evaluation_path : path
        JSON written by ``weaklesion evaluate --out``.
    out : path
        ``.html`` file to write.
    run, detections, truth : path, optional
        Run folder, detections CSV and truth dataset, instead of the result's.
    max_cases : int
        Cases in the gallery.
    """
    evaluation_path = Path(evaluation_path)
    try:
        evaluation = json.loads(evaluation_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{evaluation_path}: not valid JSON ({error.msg})") from None
    missing = [key for key in ("settings", "detection", "froc", "cases") if key not in evaluation]
    if missing:
        raise ValueError(
            f"{evaluation_path}: has no {missing[0]!r}; expected a `weaklesion evaluate` result"
        )
    settings = evaluation["settings"]
    detections = detections or settings.get("detections")
    truth = truth or settings.get("truth")
    run = run or settings.get("run")
    for name, value in (("detections", detections), ("truth", truth)):
        if value is None:
            raise ValueError(f"{evaluation_path}: names no {name}; expected --{name}")
    found = read_detections_csv(detections)
    cases = list(evaluation["cases"])
    points, _, spacings = lesion_truth(truth, cases=cases)
    outcomes = evaluation_outcomes(
        evaluation, {c: (d.points, d.scores) for c, d in found.items()}, points, spacings
    )
    return write_dataset_report(out, evaluation, outcomes, truth, run, max_cases)


def write_dataset_report(
    out: str | os.PathLike,
    evaluation: Mapping[str, Any],
    outcomes: Mapping[str, CaseOutcomes],
    truth: str | os.PathLike,
    run: str | os.PathLike | None = None,
    max_cases: int = GALLERY_CASES,
) -> Path:
    """:func:`write_report` with the gallery's images read from a dataset (channel 0)."""
    dataset = load_dataset(truth)

    def load_image(case: str) -> np.ndarray:
        return dataset[case].load().image[0]

    title = f"weaklesion report: {Path(str(evaluation['settings'].get('detections', out))).name}"
    return write_report(out, evaluation, outcomes, load_image, run, title, max_cases)
