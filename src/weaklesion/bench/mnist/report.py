"""Experiment 1's report: the tables, the FROC figures and the summary of the unit files.

Everything here reads the JSON files under ``OUT/units`` that the units of
:mod:`~weaklesion.bench.mnist.units` wrote, and nothing else, so the report can be
rewritten whenever more units have finished (a partial run gives partial tables):
:func:`mnist_tables` gives the markdown tables and their numbers, and
:func:`write_mnist_report` writes ``results.md``, ``summary.json`` and the figures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from weaklesion.bench.common import (
    SETTINGS_FILE,
    format_interval,
    format_mean,
    json_ready,
    markdown_table,
    mean_and_spread,
    read_unit,
    read_units,
    write_text,
)
from weaklesion.bench.mnist.data import constant_predictor_scores, load_mnist_digits
from weaklesion.bench.mnist.design import (
    ALL_DIGITS,
    METHOD_NAMES,
    METHODS,
    OBJECTIVES,
    PAPER_FAUC,
    PAPER_TABLE_A5,
    MnistSettings,
)
from weaklesion.io import write_json
from weaklesion.report.figures import plot_froc

# The report's files in the output folder.
FIGURES = "figures"
REPORT = "results.md"
SUMMARY = "summary.json"

# The two FAUCs of an evaluation: FROC by rank within each image, and by a common
# threshold across images.
FAUCS = {"fauc": "by rank", "fauc_threshold": "by threshold"}


def _matching(evaluations: list[dict], digit: int, method: str, objective, field: str):
    return [
        e
        for e in evaluations
        if (e["digit"], e["method"], e["objective"]) == (digit, method, objective) and field in e
    ]


def _fauc_cell(evaluations: list[dict], digit: int, method: str, objective, field="fauc") -> str:
    """FAUC in % with its bootstrap interval (one seed), or mean ± std over seeds."""
    found = _matching(evaluations, digit, method, objective, field)
    if len(found) == 1:
        return format_interval(found[0][field])
    return format_mean([e[field]["estimate"] for e in found], scale=100, digits=1)


def _digit_means(
    evaluations: list[dict], method: str, objective, digits, field: str = "fauc"
) -> dict[int, float]:
    """Mean FAUC (``field``) over seeds for each digit that has one."""
    means = {}
    for digit in digits:
        found = _matching(evaluations, digit, method, objective, field)
        mean, _, n = mean_and_spread([e[field]["estimate"] for e in found])
        if n:
            means[digit] = mean
    return means


def _regression_minus_classification(
    means: dict[str, dict[int, float]],
) -> tuple[list[int], list[float]]:
    """Digits with both objectives' mean FAUC, and regression − classification in points."""
    both = sorted(set(means["regression"]) & set(means["classification"]))
    return both, [100 * (means["regression"][d] - means["classification"][d]) for d in both]


def _average_cell(means: dict[int, float], n_digits: int) -> str:
    if not means:
        return "—"
    text = f"{100 * np.mean(list(means.values())):.1f}"
    return text if len(means) == n_digits else f"{text} ({len(means)} of {n_digits} digits)"


def _at_count_cell(evaluations: list[dict], method: str, digits, field: str, scale: float) -> str:
    values = [
        e["at_count"][field]
        for e in evaluations
        if e["method"] == method and e["digit"] in digits and "at_count" in e
    ]
    return format_mean(values, scale=scale, digits=2 if scale == 1 else 1)


def _gpunet_table(evaluations: list[dict[str, Any]], digits: list[int]) -> str:
    """Table 1: GP-Unet's FAUC on every digit, by rank and by threshold, with random maxima."""
    columns = [
        (m, o, f)
        for m, o in [*(("gpunet", o) for o in OBJECTIVES), ("random", None)]
        for f in FAUCS
    ]
    rows = []
    paper = PAPER_TABLE_A5["gpunet"]
    for digit in digits:
        cells = [_fauc_cell(evaluations, digit, m, o, f) for m, o, f in columns]
        if any(cell != "—" for cell in cells[:-2]):
            rows.append([digit, *cells, f"{paper[digit]:.1f}"])
    gpunet_digits = [row[0] for row in rows]
    averages = [_digit_means(evaluations, m, o, gpunet_digits, f) for m, o, f in columns]
    paper_mean = float(np.mean([paper[d] for d in gpunet_digits])) if gpunet_digits else None
    rows.append(
        [
            "average",
            *(_average_cell(m, len(gpunet_digits)) for m in averages),
            "—" if paper_mean is None else f"{paper_mean:.1f}",
        ]
    )
    header = [
        "digit",
        *(f"{'random maxima' if m == 'random' else o}, {FAUCS[f]}" for m, o, f in columns),
        "paper, regression (Table A.5)",
    ]
    return (
        "Table 1. GP-Unet, FAUC (%) per target digit with its 95 % bootstrap interval over "
        "test images (mean ± std over seeds when there are several), for the FROC by rank "
        "(the n highest maxima of every image) and by a common threshold across images; "
        "the paper's reading is the one by threshold. Last column: the paper's GP-Unet "
        "with the regression objective (MedIA 2020, Table A.5; its average over the ten "
        f"digits is {PAPER_FAUC['gpunet', 'regression']:.1f}).\n\n" + markdown_table(header, rows)
    )


def _paper_numbers(method: str) -> tuple[float, ...] | None:
    """The paper's per-digit FAUC of a method, or of the network it is computed on."""
    network = METHODS[method][0] if method in METHODS else None
    return PAPER_TABLE_A5.get(method) or PAPER_TABLE_A5.get(network)


def _variants_table(evaluations: list[dict[str, Any]]) -> str | None:
    """Table 1b: every GP-Unet variant with a regression run, per digit, by threshold,
    beside the paper's number for the network it is computed on (None if only GP-Unet)."""
    methods = [
        m
        for m, (network, *_) in METHODS.items()
        if m != "gpunet"
        and network in ALL_DIGITS
        and any(e["method"] == m and e["objective"] == "regression" for e in evaluations)
    ]
    if not methods:
        return None
    methods = ["gpunet", *methods]
    digits = sorted({e["digit"] for e in evaluations if e["method"] in methods})
    columns = [(m, kind) for m in methods for kind in ("ours", "paper")]
    rows = []
    for digit in digits:
        rows.append(
            [
                digit,
                *(
                    _fauc_cell(evaluations, digit, m, "regression", "fauc_threshold")
                    if kind == "ours"
                    else f"{_paper_numbers(m)[digit]:.1f}"
                    for m, kind in columns
                ),
            ]
        )
    averages = []
    for m, kind in columns:
        means = _digit_means(evaluations, m, "regression", digits, "fauc_threshold")
        if kind == "ours":
            averages.append(_average_cell(means, len(digits)))
        else:
            paper = _paper_numbers(m)
            ran = sorted(means) or digits
            averages.append(f"{np.mean([paper[d] for d in ran]):.1f}")
    rows.append(["average", *averages])
    header = ["digit", *(f"{METHOD_NAMES[m]}, {kind}" for m, kind in columns)]
    return (
        "Table 1b. GP-Unet and its variants, regression, FAUC (%) by threshold per target "
        "digit (mean ± std over seeds when there are several), each beside the paper's "
        "number for the network it is computed on (Table A.5; Table C.13 for the "
        "architecture variants). The paper's average is over the digits ours ran. A "
        "smoothed method smooths the maps with the Gaussian its validation grids chose "
        "(not in the paper); an empty-image method subtracts the map of each grid's empty "
        "image (not in the paper).\n\n" + markdown_table(header, rows)
    )


def _methods_table(evaluations: list[dict[str, Any]]) -> str | None:
    """Table 2: every method on the digits where more than GP-Unet ran (None if none)."""
    compared = sorted({e["digit"] for e in evaluations if e["method"] not in ("gpunet", "random")})
    if not compared:
        return None
    header = [
        "method",
        "objective",
        *(f"FAUC digit {d}" for d in compared),
        "mean",
        "mean, by threshold",
        "paper, same digits (Table A.5)",
        "sensitivity at n",
        "FP / image at n",
        "FN / image at n",
    ]
    rows = []
    for method in [*METHODS, "random"]:
        for objective in OBJECTIVES if method != "random" else (None,):
            means = _digit_means(evaluations, method, objective, compared)
            if not means:
                continue
            table = _paper_numbers(method)
            paper = (
                float(np.mean([table[d] for d in compared]))
                if objective == "regression" and table is not None
                else None
            )
            regression = objective == "regression"
            rows.append(
                [
                    METHOD_NAMES[method],
                    objective or "—",
                    *(_fauc_cell(evaluations, d, method, objective) for d in compared),
                    _average_cell(means, len(compared)),
                    _average_cell(
                        _digit_means(evaluations, method, objective, compared, "fauc_threshold"),
                        len(compared),
                    ),
                    "—" if paper is None else f"{paper:.1f}",
                    *(
                        _at_count_cell(evaluations, method, compared, f, s) if regression else "—"
                        for f, s in (
                            ("sensitivity", 100),
                            ("fp_per_image", 1),
                            ("fn_per_image", 1),
                        )
                    ),
                ]
            )
    return (
        f"Table 2. Every method on digit{'s' if len(compared) > 1 else ''} "
        f"{', '.join(map(str, compared))}: FAUC (%) "
        "of the FROC by rank with 95 % bootstrap intervals, and the mean FAUC of the "
        "FROC by threshold; sensitivity (%) and false positives and "
        "negatives per image when the n = round(predicted count) highest maxima are "
        "kept (regression only: a presence logit is no count), mean over the digits. "
        "The paper's column gives its number for the method, or for the network a method "
        "of ours is computed on (an empty-image or smoothed variant).\n\n"
        + markdown_table(header, rows)
    )


def _objectives_table(evaluations: list[dict[str, Any]], numbers: dict[str, Any]) -> str | None:
    """Table 3: regression against classification per method; fills ``numbers``
    (``average_fauc``, ``regression_vs_classification``). None without a pair."""
    rows = []
    for method in METHODS:
        method_digits = sorted({e["digit"] for e in evaluations if e["method"] == method})
        means = {o: _digit_means(evaluations, method, o, method_digits) for o in OBJECTIVES}
        by_threshold = {
            o: _digit_means(evaluations, method, o, method_digits, "fauc_threshold")
            for o in OBJECTIVES
        }
        for objective in OBJECTIVES:
            if means[objective]:
                numbers["average_fauc"][f"{method}/{objective}"] = {
                    "fauc_percent": 100 * float(np.mean(list(means[objective].values()))),
                    "digits": sorted(means[objective]),
                }
            if by_threshold[objective]:
                numbers["average_fauc"][f"{method}/{objective}"]["fauc_threshold_percent"] = (
                    100 * float(np.mean(list(by_threshold[objective].values())))
                )
        both, differences = _regression_minus_classification(means)
        if not both:
            continue
        better = int(sum(delta > 0 for delta in differences))
        both_threshold, threshold_differences = _regression_minus_classification(by_threshold)
        numbers["regression_vs_classification"][method] = {
            "digits": both,
            "regression_better_on": better,
            "mean_difference_points": float(np.mean(differences)),
            "regression_better_on_by_threshold": int(sum(d > 0 for d in threshold_differences)),
            "mean_difference_points_by_threshold": (
                float(np.mean(threshold_differences)) if threshold_differences else None
            ),
        }
        rows.append(
            [
                METHOD_NAMES[method],
                ", ".join(map(str, both)),
                f"{better} of {len(both)}",
                f"{np.mean(differences):+.1f}",
                f"{sum(d > 0 for d in threshold_differences)} of {len(both_threshold)}",
                f"{np.mean(threshold_differences):+.1f}" if threshold_differences else "—",
            ]
        )
    if not rows:
        return None
    return (
        "Table 3. Regression against classification: digits where the regression "
        "objective gave the higher FAUC, and the mean difference (regression − "
        "classification, FAUC points), for the FROC by rank and by threshold.\n\n"
        + markdown_table(
            [
                "method",
                "digits",
                "regression higher on",
                "mean Δ",
                "higher on, by threshold",
                "mean Δ, by threshold",
            ],
            rows,
        )
    )


def _training_table(trainings: list[dict[str, Any]], numbers: dict[str, Any]) -> str | None:
    """Table 4: the training budget used, per network and objective; fills
    ``numbers["training"]``. None without trainings."""
    rows, numbers["training"] = [], {}
    for model in dict.fromkeys(network for network, *_ in METHODS.values()):
        for objective in OBJECTIVES:
            runs = [t for t in trainings if (t["model"], t["objective"]) == (model, objective)]
            if not runs:
                continue
            epochs = [t["epochs"] for t in runs]
            minutes = [t["train_seconds"] / 60 for t in runs]
            numbers["training"][f"{model}/{objective}"] = {
                "runs": len(runs),
                "epochs": epochs,
                "minutes": minutes,
                "stopped_early": sum(bool(t["stopped_early"]) for t in runs),
            }
            rows.append(
                [
                    model,
                    objective,
                    len(runs),
                    f"{np.mean(epochs):.1f} ({min(epochs)}–{max(epochs)})",
                    sum(bool(t["stopped_early"]) for t in runs),
                    f"{np.mean([t['best_epoch'] or 0 for t in runs]):.1f}",
                    f"{np.mean(minutes):.1f}",
                ]
            )
    if not rows:
        return None
    hours = sum(t["train_seconds"] for t in trainings) / 3600
    return (
        f"Table 4. Training: epochs run (mean, range), runs stopped early, best epoch "
        f"and minutes per run; {hours:.1f} h of training in all.\n\n"
        + markdown_table(
            [
                "network",
                "objective",
                "runs",
                "epochs",
                "stopped early",
                "best epoch",
                "minutes",
            ],
            rows,
        )
    )


# A training has left the plateau when its best validation value is below this fraction
# of the constant predictor's (count MAE; presence NLL).
PLATEAU_FRACTION = {"regression": 0.5, "classification": 0.8}


def _plateau_table(
    trainings: list[dict[str, Any]], settings: dict[str, Any] | None, numbers: dict[str, Any]
) -> str | None:
    """Table 5: each training's best validation value against that of a network that
    learnt nothing (:func:`constant_predictor_scores`); fills ``numbers["plateau"]``."""
    if not trainings or not settings:
        return None
    sizes = MnistSettings(
        grid=tuple(settings["grid"]),
        images=tuple(settings["images"]),
        pool_seed=settings["pool_seed"],
    )
    _, labels = load_mnist_digits()
    constant = {
        d: constant_predictor_scores(d, sizes, labels) for d in {t["digit"] for t in trainings}
    }
    rows, numbers["plateau"] = [], []
    order = sorted(trainings, key=lambda t: (t["model"], t["objective"], t["digit"], t["seed"]))
    for t in order:
        metric = "count_mae" if t["objective"] == "regression" else "presence_nll"
        reference = constant[t["digit"]][metric]
        ratio = t["best_value"] / reference
        left = bool(ratio < PLATEAU_FRACTION[t["objective"]])
        numbers["plateau"].append(
            {k: t[k] for k in ("digit", "model", "objective", "seed", "best_value")}
            | {"constant": reference, "ratio": ratio, "left": left}
        )
        scores = [f"{t['best_value']:.3f}", f"{reference:.3f}", f"{ratio:.2f}"]
        rows.append([t["model"], t["objective"], t["digit"], t["seed"], metric, *scores])
        rows[-1].append("yes" if left else "no")
    return (
        "Table 5. The plateau: each training's best validation value against a network "
        "that learnt nothing (the mean training count; the training rate of grids with a "
        "target, ln 2 here). Left: ratio below "
        f"{PLATEAU_FRACTION['regression']} (regression) or "
        f"{PLATEAU_FRACTION['classification']} (classification).\n\n"
        + markdown_table(
            [
                "network",
                "objective",
                "digit",
                "seed",
                "metric",
                "best",
                "constant",
                "ratio",
                "left",
            ],
            rows,
        )
    )


def mnist_tables(out: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """The markdown tables of experiment 1 and their numbers, from the finished units.

    Returns
    -------
    markdown : str
        Table 1 (GP-Unet on every digit), table 2 (every method on the digits the
        comparison ran on), regression against classification, training, and the
        plateau (did each training leave it).
    numbers : dict
        ``average_fauc`` per method and objective (%, over digits, and which digits),
        ``regression_vs_classification`` per method, ``training`` per model and
        objective, ``plateau`` per training, ``units`` (numbers finished).
    """
    units = read_units(out)
    evaluations = [u for u in units if u.get("kind") == "evaluation"]
    trainings = [u for u in units if u.get("kind") == "training"]
    numbers: dict[str, Any] = {"average_fauc": {}, "regression_vs_classification": {}}
    digits = sorted({e["digit"] for e in evaluations})
    sections = [
        _gpunet_table(evaluations, digits),
        _variants_table(evaluations),
        _methods_table(evaluations),
        _objectives_table(evaluations, numbers),
        _training_table(trainings, numbers),
        _plateau_table(trainings, read_units_settings(out), numbers),
    ]
    numbers["units"] = {"trainings": len(trainings), "evaluations": len(evaluations)}
    return "\n\n".join(s for s in sections if s is not None) + "\n", numbers


def write_mnist_report(out: str | os.PathLike) -> dict[str, Any]:
    """Write ``results.md``, ``summary.json`` and the FROC figures from the finished units.

    Can be called at any time (a partial run gives partial tables).

    Returns
    -------
    dict
        ``settings``, the numbers of :func:`mnist_tables` and ``figures`` (paths
        relative to ``out``).
    """

    out = Path(out)
    markdown, numbers = mnist_tables(out)
    settings = read_units_settings(out)
    header = (
        "# Experiment 1: MNIST grids\n\n"
        "Written by `weaklesion bench mnist` from the unit files in `units/`; see "
        "`docs/REPRODUCTION.md` for the protocol and how these compare with the paper.\n\n"
        + _recipe_line(settings)
    )
    write_text(out / REPORT, header + markdown)
    evaluations = [u for u in read_units(out) if u.get("kind") == "evaluation"]
    figures = []
    for digit in sorted({e["digit"] for e in evaluations}):
        chance = [e for e in evaluations if e["digit"] == digit and e["method"] == "random"]
        for objective in OBJECTIVES:
            curves = {
                f"{METHOD_NAMES[e['method']]} (seed {e['seed']})": _curve(e)
                for e in evaluations
                if e["digit"] == digit and e["objective"] == objective
            }
            if not curves:
                continue
            if chance:
                curves[METHOD_NAMES["random"]] = _curve(chance[0])
            path = out / FIGURES / f"froc_digit{digit}_{objective}.png"
            plot_froc(curves, path, title=f"digit {digit}, {objective}")
            figures.append(path.relative_to(out).as_posix())
    summary = {"settings": settings, **numbers, "figures": figures}
    write_json(out / SUMMARY, json_ready(summary))
    return summary


def _recipe_line(settings: dict[str, Any] | None) -> str:
    """Which training recipe produced every number of the folder, from its settings."""
    if not settings:
        return ""
    gradient = settings.get("count_gradient", "plain")
    if gradient == "centred":
        gradient += " (plain for global max pooling, which it does not apply to)"
    normalization = settings.get("normalization") or "none"
    return (
        f"Recipe: {gradient} count gradient, normalisation in the convolution blocks: "
        f"{normalization}; Adam, learning rate {settings.get('lr')}, batch "
        f"{settings.get('batch_size')}, at most {settings.get('max_epochs')} epochs "
        f"(`settings.json`).\n\n"
    )


def _curve(evaluation: dict) -> tuple[list[float], list[float]]:
    froc = evaluation["froc"]
    return froc["fp_per_image"], froc["sensitivity"]


def read_units_settings(out: str | os.PathLike) -> dict[str, Any] | None:
    """The settings the folder's units were computed with (``settings.json``), if any."""

    return read_unit(Path(out) / SETTINGS_FILE)
