"""Experiment 2's report: the summary of the unit files, its tables and its figures.

Everything here reads the JSON files under ``OUT/units`` that the units of
:mod:`~weaklesion.bench.points.units` wrote, and nothing else, so the report can be
rewritten whenever more units have finished: :func:`summarise_points` pools them over
seeds, :func:`points_tables` gives the markdown tables (mean ± sample std over seeds),
and :func:`write_points_report` writes ``summary.json``, ``tables.md`` and the figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weaklesion.bench.common import (
    format_mean,
    json_ready,
    markdown_table,
    mean_and_spread,
    read_unit,
    write_text,
)
from weaklesion.bench.points.design import (
    CALIBRATION_BINS,
    MAX_FP,
    REFERENCE_FRACTION,
    ROW_LABELS,
    ROWS,
    TRANSFER_SCORES,
)
from weaklesion.io import write_json
from weaklesion.metrics import expected_calibration_error, reliability_bins
from weaklesion.report.figures import plot_curve, plot_reliability


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
        ``rows`` (per row: the per-seed values of each score, FAUC included where the
        row's evaluations give one, and the seeds),
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
            if "fauc" in result:
                entry.setdefault("fauc", []).append(result["fauc"]["estimate"])
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
    sections = [
        _detection_table(summary.get("rows", {})),
        _calibration_table(summary.get("calibration", {})),
        _certainty_table(summary.get("certainty", {})),
        _transfer_table(summary.get("transfer", {})),
        _timing_table(summary.get("timing", {})),
    ]
    return "\n\n".join(section for section in sections if section is not None) + "\n"


def _detection_table(rows: Mapping[str, Any]) -> str | None:
    """Table 1: every row's detection scores on the test cases (None without rows).

    The FAUC column and the notes below the table appear only where a row has a FAUC
    (the count row), so that a report without it stays as it was.
    """
    if not rows:
        return None
    with_fauc = any(entry.get("fauc") for entry in rows.values())
    header = [
        "method",
        "seeds",
        "F1",
        *(["FAUC"] if with_fauc else []),
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
        fauc = [format_mean(entry["fauc"]) if entry.get("fauc") else "—"] if with_fauc else []
        table.append(
            [
                ROW_LABELS[row],
                len(entry["seeds"]),
                format_mean(entry["f1"]),
                *fauc,
                format_mean(entry["precision"]),
                format_mean(entry["recall"]),
                small,
                format_mean(entry["threshold"]),
            ]
        )
    text = "Table 1. Detection on the test cases\n\n" + markdown_table(header, table)
    if with_fauc:
        text += (
            f"\n\nFAUC: normalised area under the FROC curve from 0 to {MAX_FP:g} false "
            "positives per volume, every detection ranked by its score (— : a row whose "
            "evaluation gives none). The count row's threshold is on its attention map "
            "scaled so that the validation maps' median voxel is 0 and their largest "
            "value 1."
        )
    return text


def _calibration_table(calibration: Mapping[str, Any]) -> str | None:
    """Table 2a: ECE of the fitted and unfitted probabilities (None without them)."""
    if not calibration or not calibration["fitted"]["ece"]:
        return None
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
    return "Table 2a. Calibration of the heatmap's lesions (10 bins)\n\n" + markdown_table(
        header, table
    )


def _certainty_table(certainty: Mapping[str, Any]) -> str | None:
    """Table 2b: accuracy of the most certain detections per ranking (None without any)."""
    certainty = {k: v for k, v in certainty.items() if v}
    if not certainty:
        return None
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
    return "Table 2b. Accuracy of the most certain test detections\n\n" + markdown_table(
        header, table
    )


def _transfer_table(transfer: Mapping[str, Any]) -> str | None:
    """Transfer: segmentation F1, detection F1 and Dice per start and mask fraction.

    The seeds column gives the number of seeds behind the start's cells (a range where
    its mask fractions have different numbers).
    """
    if not transfer:
        return None
    fractions = sorted({f for arms in transfer.values() for f in arms}, key=float)
    header = [
        "start",
        "seeds",
        *(f"{float(f):.0%} masks: seg F1 / det F1 / Dice" for f in fractions),
    ]
    table = []
    for source in sorted(transfer, key=_source_order):
        arms = transfer[source]
        counts = sorted({len(arms[f]["seeds"]) for f in fractions if f in arms})
        seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        cells = [seeds]
        for fraction in fractions:
            entry = arms.get(fraction)
            cells.append(
                " / ".join(format_mean(entry[key]) for key in TRANSFER_SCORES) if entry else "—"
            )
        table.append([_source_label(source), *cells])
    return "Transfer to segmentation (test cases, last epoch)\n\n" + markdown_table(header, table)


def _timing_table(timing: Mapping[str, Sequence[float]]) -> str | None:
    """Training time in minutes per model kind (None without trainings)."""
    if not timing:
        return None
    table = [
        [name, len(v), format_mean([s / 60 for s in v], digits=1)]
        for name, v in sorted(timing.items())
    ]
    return "Training time (minutes, wall clock)\n\n" + markdown_table(
        ["model", "runs", "minutes"], table
    )


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
    # The reference arm (all masks) is a number in the title, not a point on the curves,
    # whose x axis spans the small fractions.
    reference = f"{REFERENCE_FRACTION:g}"
    transfer = {}
    for source, arms in sorted(summary["transfer"].items(), key=lambda s: _source_order(s[0])):
        fractions = sorted((f for f in arms if f != reference), key=float)
        if fractions:
            transfer[_source_label(source)] = (
                [float(f) * 100 for f in fractions],
                [mean_and_spread(arms[f]["segmentation_f1"])[0] for f in fractions],
            )
    title = "Transfer to segmentation"
    scratch = summary["transfer"].get("scratch", {}).get(reference)
    if scratch:
        title += f" (all masks, from scratch: {mean_and_spread(scratch['segmentation_f1'])[0]:.2f})"
    if transfer:
        plot_curve(
            transfer,
            out / "transfer.png",
            xlabel="masks used (% of training cases)",
            ylabel="segmentation F1",
            title=title,
        )
    return summary
