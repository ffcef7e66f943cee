"""Experiment 3's report: the results pooled from the unit files, the tables and the plots.

Everything here reads the JSON files under ``OUT/units`` that the units of
:mod:`~weaklesion.bench.counting.units` wrote, and nothing else, so the report can be
rewritten whenever more units have finished: :func:`summarise_counting` gives mean and
sample standard deviation over seeds, :func:`counting_tables` the markdown tables, and
:func:`write_counting_report` writes ``results.json``, ``tables.md`` and the plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weaklesion.bench.common import json_ready, machine, markdown_table, write_text
from weaklesion.bench.counting.counts import threshold_sensitivity
from weaklesion.bench.counting.design import (
    CALIBRATION_BINS,
    CERTAINTY_FRACTIONS,
    LABELS,
    MAX_COUNT,
    METHODS,
    STABLE_UP_TO,
)
from weaklesion.io import write_json
from weaklesion.metrics import (
    accuracy_by_certainty,
    count_accuracy,
    count_f1,
    count_mae,
    expected_calibration_error,
    f1_from_counts,
    reliability_bins,
)
from weaklesion.report.figures import plot_curve, plot_reliability


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
    weight = settings.get("count_weight", 1.0)
    heads = settings.get("head_count_weight", weight)
    gradient = settings.get("count_gradient", "plain")
    schedule = settings.get("lr_schedule", "constant")
    head_warmup = settings.get("head_warmup_epochs", settings["count_warmup_epochs"])
    return (
        f"Multi-task recipe: {settings['epochs'] * factor} epochs ({schedule} learning "
        f"rate), segmentation only for {settings['count_warmup_epochs'] * factor} "
        f"(count heads: {head_warmup * factor}), "
        f"then the count loss ramped over {settings['count_ramp_epochs'] * factor} to "
        f"weight {weight} (Poisson-binomial) or {heads} (count heads); count heads' pooled "
        f"features {standardised}, with the {gradient} gradient."
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


def write_counting_report(out: Path, settings: dict) -> dict:
    """Summarise the finished units into ``results.json``, ``tables.md`` and the plots.

    Parameters
    ----------
    out : path
        The output folder of :func:`~weaklesion.bench.counting.run_counting`.
    settings : dict
        The run's :func:`~weaklesion.bench.counting.design.settings_record`, copied into
        the results.

    Returns
    -------
    dict
        :func:`summarise_counting` of ``out/units`` with ``"settings"`` and ``"machine"``.
    """
    results = summarise_counting(out / "units")
    results["settings"] = settings
    results["machine"] = machine()
    write_json(out / "results.json", json_ready(results))
    write_text(out / "tables.md", counting_tables(results))
    _plots(results, out)
    return results
