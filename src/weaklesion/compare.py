"""Paired comparisons of methods scored on the same cases.

Two methods evaluated on the same test cases differ on every case, and those per-case
differences, not two separate confidence intervals, say whether one method is better.
This module holds the two paired tests and the comparison of result files:

- :func:`paired_bootstrap` resamples the cases once per replicate and computes a
  statistic for both methods on the same resample, so that pooled measures (F1 from
  summed counts, the FROC area) are compared as they are reported; it gives the
  difference, its percentile interval and a two-sided p-value;
- :func:`wilcoxon_signed_rank` tests per-image values (false positives, false
  negatives, sensitivity) with :func:`scipy.stats.wilcoxon`;
- :func:`compare_results` runs both on the result files of ``weaklesion evaluate``
  (:func:`weaklesion.metrics.evaluate_detections`) after checking that they were computed
  on the same cases with the same truth and matching rule, and
  :func:`comparison_table` formats the rows as a Markdown table.

Differences are always method minus reference (B - A). p-values are not adjusted for
the many comparisons a table holds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.stats

from weaklesion._validation import ArrayLike, _values, check_finite
from weaklesion.io import json_ready
from weaklesion.metrics import case_multiplicities, count_metrics, f1_from_counts, froc_auc_weighted

ZERO_METHOD = "wilcox"
"""Default treatment of zero differences in :func:`wilcoxon_signed_rank`: left out."""


@dataclass(frozen=True)
class PairedDifference:
    """Difference of a statistic between two methods on the same cases.

    Attributes
    ----------
    estimate : float
        ``statistic(B) - statistic(A)`` on all cases.
    low, high : float
        Percentile bootstrap interval of the difference.
    p_value : float
        Two-sided bootstrap p-value of "no difference" (see :func:`paired_bootstrap`).
    statistic_a, statistic_b : float
        The statistic of each method on all cases.
    n_cases : int
        Number of paired cases.
    n_boot : int
        Number of resamples the interval and the p-value come from (resamples where the
        statistic is undefined are left out).
    """

    estimate: float
    low: float
    high: float
    p_value: float
    statistic_a: float
    statistic_b: float
    n_cases: int
    n_boot: int

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (NaN as None)."""
        return json_ready(asdict(self))


def _paired_data(per_case_a, per_case_b) -> tuple[Any, Any, int]:
    """Both methods' per-case data as arrays (or lists of items) of the same length."""
    data = []
    for values in (per_case_a, per_case_b):
        if isinstance(values, np.ndarray) or hasattr(values, "detach"):
            data.append(_values(values))
        else:
            data.append(list(values))
    if len(data[0]) != len(data[1]):
        raise ValueError(
            f"per_case_b: has {len(data[1])} cases but per_case_a has {len(data[0])}; "
            "expected the same cases, paired by position"
        )
    return data[0], data[1], len(data[0])


def _mean_values(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(
            f"{name}: has shape {array.shape}; expected per-case values (N,) for the mean"
        )
    check_finite(array, name)
    return array


def _p_value(differences: np.ndarray) -> float:
    """Two-sided p-value: twice the smaller share of replicates on either side of 0."""
    below = np.count_nonzero(differences <= 0)
    above = np.count_nonzero(differences >= 0)
    return min(1.0, 2 * (1 + min(below, above)) / (len(differences) + 1))


def paired_bootstrap(
    per_case_a: ArrayLike | Sequence[Any],
    per_case_b: ArrayLike | Sequence[Any],
    statistic: Callable[..., Any] | None = None,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
    by_weights: bool = False,
) -> PairedDifference:
    """Paired bootstrap of the difference of a statistic between two methods.

    Each replicate draws ``N`` cases with replacement and computes the statistic of
    method A and of method B on that same resample; the replicates of ``B - A`` give a
    percentile interval and a p-value. Pooled statistics (F1 from summed counts, the FROC
    area) are thus resampled as they are computed, and the pairing of the cases is kept.

    Parameters
    ----------
    per_case_a, per_case_b : array or sequence, N entries each
        Per-case data of each method, paired by position: arrays with the cases along
        the first axis, or sequences of per-case items.
    statistic : callable, optional
        Maps a resample of one method's per-case data (an array of rows, or a list of
        items) to a number. Default: the mean of per-case values (N,). With
        ``by_weights``, ``statistic(per_case, weights)`` gets one method's data whole
        and an ``(R, N)`` array of case multiplicities (how often each case is drawn in
        each of ``R`` resamples) and returns ``(R,)`` values; a row of ones stands for
        the cases as they are. This is how sums over cases are computed fast.
    n_boot : int
        Number of resamples.
    confidence : float
        Coverage of the interval, in (0, 1).
    seed : int or None
        Seed of the resampling (NumPy ``default_rng``).
    by_weights : bool
        Call ``statistic`` with case multiplicities, as described above.

    Returns
    -------
    PairedDifference
        Estimate ``statistic(B) - statistic(A)``, the interval, the p-value and both
        statistics; all NaN for no cases.

    Notes
    -----
    The interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles
    of the replicates (percentile method, linear interpolation, as
    :func:`weaklesion.metrics.bootstrap_ci` and ``scipy.stats.bootstrap(...,
    method="percentile")``). The p-value inverts it: with ``k`` the number of replicates
    on the less populated side of zero (``<= 0`` or ``>= 0``),
    ``p = min(1, 2 (k + 1) / (n_boot + 1))``, the smallest level at which a percentile
    interval would exclude 0, with the ``+ 1`` that keeps a Monte-Carlo p-value valid
    (never 0). So ``p < 1 - confidence`` about when the interval excludes 0, identical
    methods get ``p = 1``, and under no difference the p-value is close to uniform for
    moderate ``N``. Resamples on which the statistic is NaN are left out.

    Examples
    --------
    Method B finds one more lesion than A on every case:

    >>> a = np.array([2.0, 0.0, 3.0, 1.0, 2.0, 4.0])
    >>> result = paired_bootstrap(a, a + 1, n_boot=999, seed=0)
    >>> result.estimate, result.low, result.high, result.p_value
    (1.0, 1.0, 1.0, 0.002)

    A pooled statistic, the fraction of all lesions found, from (found, lesions) rows:

    >>> found_a = np.array([[1, 2], [0, 1], [2, 2], [1, 3]])
    >>> found_b = np.array([[2, 2], [1, 1], [2, 2], [2, 3]])
    >>> pooled = lambda rows: rows[:, 0].sum() / rows[:, 1].sum()
    >>> result = paired_bootstrap(found_a, found_b, pooled, n_boot=500, seed=0)
    >>> round(result.statistic_a, 3), round(result.statistic_b, 3), round(result.estimate, 3)
    (0.5, 0.875, 0.375)
    """
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot: got {n_boot!r}; expected a whole number >= 1")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: got {confidence!r}; expected a level in (0, 1)")
    data_a, data_b, n_cases = _paired_data(per_case_a, per_case_b)
    if n_cases == 0:
        return PairedDifference(*[math.nan] * 6, n_cases=0, n_boot=0)
    indices = np.random.default_rng(seed).integers(0, n_cases, size=(int(n_boot), n_cases))
    if statistic is None:
        values_a = _mean_values(data_a, "per_case_a")
        values_b = _mean_values(data_b, "per_case_b")
        full = np.array([values_a.mean(), values_b.mean()])
        replicates = (values_b - values_a)[indices].mean(axis=1)
    elif by_weights:
        ones = np.ones((1, n_cases))
        full = np.array([statistic(data_a, ones)[0], statistic(data_b, ones)[0]], dtype=float)
        weights = case_multiplicities(indices, n_cases)
        replicates = np.asarray(statistic(data_b, weights), dtype=float) - np.asarray(
            statistic(data_a, weights), dtype=float
        )
    else:

        def resample(data, rows):
            return data[rows] if isinstance(data, np.ndarray) else [data[row] for row in rows]

        everything = np.arange(n_cases)
        full = np.array([statistic(resample(d, everything)) for d in (data_a, data_b)], float)
        replicates = np.array(
            [
                statistic(resample(data_b, rows)) - statistic(resample(data_a, rows))
                for rows in indices
            ],
            dtype=float,
        )
    replicates = replicates[~np.isnan(replicates)]
    if replicates.size == 0:
        low = high = p_value = math.nan
    else:
        tail = (1.0 - confidence) / 2
        low, high = np.quantile(replicates, [tail, 1.0 - tail])
        p_value = _p_value(replicates)
    return PairedDifference(
        estimate=float(full[1] - full[0]),
        low=float(low),
        high=float(high),
        p_value=float(p_value),
        statistic_a=float(full[0]),
        statistic_b=float(full[1]),
        n_cases=n_cases,
        n_boot=int(replicates.size),
    )


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon signed-rank test of paired per-case values.

    Attributes
    ----------
    statistic : float
        The statistic :func:`scipy.stats.wilcoxon` reports (for a two-sided test the
        smaller of the positive and negative rank sums).
    p_value : float
        Its p-value; 1 when every difference is zero.
    mean_difference : float
        Mean of ``b - a``.
    n_pairs : int
        Number of pairs.
    n_nonzero : int
        Pairs whose values differ.
    zero_method : str
        How zero differences were treated.
    """

    statistic: float
    p_value: float
    mean_difference: float
    n_pairs: int
    n_nonzero: int
    zero_method: str

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (NaN as None)."""
        return json_ready(asdict(self))


def wilcoxon_signed_rank(
    a: ArrayLike,
    b: ArrayLike,
    zero_method: Literal["wilcox", "pratt", "zsplit"] = ZERO_METHOD,
    alternative: Literal["two-sided", "greater", "less"] = "two-sided",
    method: Literal["auto", "exact", "asymptotic"] = "auto",
) -> WilcoxonResult:
    """Wilcoxon signed-rank test of the per-case differences ``b - a``.

    A thin wrapper of :func:`scipy.stats.wilcoxon` for per-image counts and rates
    (false positives, false negatives, sensitivity) of two methods on the same images.

    Parameters
    ----------
    a, b : (N,) arrays
        Per-case values of method A and method B, paired by position; finite.
    zero_method : {"wilcox", "pratt", "zsplit"}
        Treatment of pairs with equal values, as in SciPy. The default ``"wilcox"``
        leaves them out (the classic test: equal images carry no evidence either way,
        which suits integer counts with many ties at zero); ``"pratt"`` ranks them and
        then drops their ranks; ``"zsplit"`` splits their ranks between the two signs.
    alternative : {"two-sided", "greater", "less"}
        ``"greater"``: B tends to be larger than A.
    method : {"auto", "exact", "asymptotic"}
        How SciPy computes the p-value (``"auto"``: exact for small samples without
        ties or zeros, else the normal approximation).

    Returns
    -------
    WilcoxonResult
        With ``p_value = 1`` and ``statistic = 0`` when no pair differs (SciPy has no
        answer there) and NaN for no pairs.

    Examples
    --------
    >>> fp_a = [3, 2, 4, 1, 5, 2, 3, 4]
    >>> fp_b = [1, 2, 1, 0, 2, 1, 1, 2]
    >>> result = wilcoxon_signed_rank(fp_a, fp_b)
    >>> result.n_nonzero, result.mean_difference, round(result.p_value, 4)
    (7, -1.75, 0.0156)
    """
    values_a = np.asarray(_values(a), dtype=float)
    values_b = np.asarray(_values(b), dtype=float)
    if values_a.ndim != 1 or values_a.shape != values_b.shape:
        raise ValueError(
            f"a, b: have shapes {values_a.shape} and {values_b.shape}; expected two (N,) "
            "arrays of paired per-case values"
        )
    check_finite(values_a, "a")
    check_finite(values_b, "b")
    if zero_method not in ("wilcox", "pratt", "zsplit"):
        raise ValueError(f"zero_method: got {zero_method!r}; expected wilcox, pratt or zsplit")
    differences = values_b - values_a
    n_pairs, n_nonzero = len(differences), int(np.count_nonzero(differences))
    if n_pairs == 0:
        return WilcoxonResult(math.nan, math.nan, math.nan, 0, 0, zero_method)
    mean_difference = float(differences.mean())
    if n_nonzero == 0:
        return WilcoxonResult(0.0, 1.0, mean_difference, n_pairs, 0, zero_method)
    result = scipy.stats.wilcoxon(
        differences, zero_method=zero_method, alternative=alternative, method=method
    )
    return WilcoxonResult(
        float(result.statistic),
        float(result.pvalue),
        mean_difference,
        n_pairs,
        n_nonzero,
        zero_method,
    )


# ------------------------------------------------------------------------ result files


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read a result file of ``weaklesion evaluate`` and check it has per-case data.

    Raises
    ------
    ValueError
        If the file is not JSON or lacks the per-case ``tp``, ``fp`` and ``fn``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such result file")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    cases = report.get("cases") if isinstance(report, dict) else None
    if not isinstance(cases, dict) or not all(
        isinstance(entry, dict) and {"tp", "fp", "fn"} <= set(entry) for entry in cases.values()
    ):
        raise ValueError(
            f"{path}: has no per-case tp, fp and fn; expected the JSON that "
            "`weaklesion evaluate --out` writes"
        )
    return report


def _truth_counts(report: Mapping[str, Any]) -> dict[str, int]:
    return {
        case: int(entry.get("n_truth", entry["tp"] + entry["fn"]))
        for case, entry in report["cases"].items()
    }


def _first_difference(one: Sequence[str], other: Sequence[str]) -> str:
    return repr(sorted(set(one) - set(other))[0]) if set(one) - set(other) else "none"


def check_paired(results: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse result files that cannot be compared case by case.

    They must hold the same cases with the same number of truth lesions in each, and
    have been matched with the same distance rule.

    Parameters
    ----------
    results : mapping of name to report
        Result files as :func:`read_result` gives them; the first is the reference.

    Raises
    ------
    ValueError
        One line naming the two files and the first difference found.
    """
    names = list(results)
    if not names:
        return
    first = names[0]
    reference = results[first]
    truth = _truth_counts(reference)
    settings = reference.get("settings", {})
    for name in names[1:]:
        report = results[name]
        other = _truth_counts(report)
        if set(other) != set(truth):
            only_first, only_other = set(truth) - set(other), set(other) - set(truth)
            raise ValueError(
                f"{name}: computed on different test cases than {first} "
                f"({len(only_first)} case(s) only in {first}, e.g. "
                f"{_first_difference(truth, other)}; {len(only_other)} only in {name}, e.g. "
                f"{_first_difference(other, truth)}); a paired comparison needs the same cases"
            )
        for case in sorted(truth):
            if truth[case] != other[case]:
                raise ValueError(
                    f"{name}: case {case!r} has {other[case]} truth lesion(s) but "
                    f"{truth[case]} in {first}; a paired comparison needs the same truth"
                )
        for key in ("max_distance", "distance_unit"):
            mine, theirs = settings.get(key), report.get("settings", {}).get(key)
            if mine != theirs:
                raise ValueError(
                    f"{name}: matched with {key} {theirs!r} but {first} with {mine!r}; "
                    "compare results matched by the same rule"
                )


def _per_case(report: Mapping[str, Any], cases: Sequence[str]) -> dict[str, Any]:
    """Per-case arrays of one report, in the order ``cases``."""
    entries = [report["cases"][case] for case in cases]
    tp, fp, fn = (np.array([e[key] for e in entries], dtype=float) for key in ("tp", "fp", "fn"))
    truth = np.array([_truth_counts(report)[case] for case in cases], dtype=float)
    counts = report.get("counts", {}).get("cases")
    if isinstance(counts, dict) and all(case in counts for case in cases):
        predicted = np.array([counts[case]["predicted"] for case in cases], dtype=float)
    else:
        predicted = tp + fp
    data = {
        "counts": np.stack([tp, fp, fn], axis=1),
        "fp": fp,
        "fn": fn,
        "truth": truth,
        "count_correct": (np.floor(predicted + 0.5) == truth).astype(float),
    }
    if all("scores" in e and "hits" in e for e in entries):
        data["froc"] = [
            (np.asarray(e["scores"], dtype=float), np.asarray(e["hits"], dtype=bool), t)
            for e, t in zip(entries, truth, strict=True)
        ]
    return data


def _pooled_f1(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    tp, fp, fn = (weights @ counts).T
    return np.asarray(f1_from_counts(tp, fp, fn))


def _froc_area(max_fp: float) -> Callable[[list, np.ndarray], np.ndarray]:
    def area(cases: list, weights: np.ndarray) -> np.ndarray:
        scores, hits, truth = zip(*cases, strict=True)
        return froc_auc_weighted(scores, hits, truth, weights, max_fp)

    return area


def _compare_pair(
    a: dict[str, Any],
    b: dict[str, Any],
    names: tuple[str, str],
    max_fp: float,
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    rows = []

    def add(measure: str, test: str, result: PairedDifference, p_value: float) -> None:
        rows.append(
            {
                "reference": names[0],
                "method": names[1],
                "measure": measure,
                "value_a": result.statistic_a,
                "value_b": result.statistic_b,
                "difference": result.estimate,
                "low": result.low,
                "high": result.high,
                "p_value": p_value,
                "test": test,
                "n_cases": result.n_cases,
            }
        )

    bootstrap = "paired bootstrap"
    f1 = paired_bootstrap(a["counts"], b["counts"], _pooled_f1, by_weights=True, **options)
    add("F1", bootstrap, f1, f1.p_value)
    if "froc" in a and "froc" in b:
        fauc = paired_bootstrap(
            a["froc"], b["froc"], _froc_area(max_fp), by_weights=True, **options
        )
        add(f"FAUC (0-{max_fp:g} FP/image)", bootstrap, fauc, fauc.p_value)
    accuracy = paired_bootstrap(a["count_correct"], b["count_correct"], **options)
    add("count accuracy", bootstrap, accuracy, accuracy.p_value)
    with_lesions = a["truth"] > 0
    per_image = {
        "FP per image": (a["fp"], b["fp"]),
        "FN per image": (a["fn"], b["fn"]),
        "sensitivity per image": tuple(
            (m["counts"][with_lesions, 0] / a["truth"][with_lesions]) for m in (a, b)
        ),
    }
    test = f"Wilcoxon signed-rank ({ZERO_METHOD}); bootstrap CI"
    for measure, (values_a, values_b) in per_image.items():
        interval = paired_bootstrap(values_a, values_b, **options)
        add(measure, test, interval, wilcoxon_signed_rank(values_a, values_b).p_value)
    return rows


def compare_results(
    results: Mapping[str, Mapping[str, Any]],
    pairs: Literal["first", "all"] = "first",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    max_fp: float | None = None,
) -> list[dict[str, Any]]:
    """Paired comparisons of result files of ``weaklesion evaluate``.

    For each pair (A, B) — each file against the first, or every pair — the rows give,
    as B - A with an interval and a p-value: F1 pooled over cases and FAUC (paired
    bootstrap over cases, the statistic recomputed on each resample), count accuracy
    (paired bootstrap of the per-case correctness; the predicted count is the file's
    ``counts`` entry, else the number of detections kept), and false positives, false
    negatives and sensitivity per image (Wilcoxon signed-rank p-value, bootstrap
    interval of the mean difference; sensitivity over the images with lesions).

    Parameters
    ----------
    results : mapping of name to report
        At least two reports (:func:`read_result`); the first is the reference.
    pairs : {"first", "all"}
        Compare each with the first, or every pair in order.
    n_boot, confidence, seed
        As for :func:`paired_bootstrap`; every measure of a pair uses the same resamples.
    max_fp : float, optional
        FP-per-image limit of the FROC area; default the reference's ``max_fp``, else 5.

    Returns
    -------
    list of dict
        One row per pair and measure: ``reference``, ``method``, ``measure``,
        ``value_a``, ``value_b``, ``difference``, ``low``, ``high``, ``p_value``,
        ``test``, ``n_cases``. FAUC rows need per-case scores and hits in both files.

    Raises
    ------
    ValueError
        Fewer than two results, or results that :func:`check_paired` refuses.
    """
    if len(results) < 2:
        raise ValueError(f"results: got {len(results)}; expected two or more to compare")
    if pairs not in ("first", "all"):
        raise ValueError(f"pairs: got {pairs!r}; expected 'first' or 'all'")
    check_paired(results)
    names = list(results)
    reference = results[names[0]]
    if max_fp is None:
        max_fp = float(reference.get("settings", {}).get("max_fp") or 5.0)
    cases = sorted(reference["cases"])
    data = {name: _per_case(report, cases) for name, report in results.items()}
    options = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    if pairs == "first":
        chosen = [(names[0], name) for name in names[1:]]
    else:
        chosen = [(x, y) for i, x in enumerate(names) for y in names[i + 1 :]]
    rows = []
    for first, second in chosen:
        rows.extend(_compare_pair(data[first], data[second], (first, second), max_fp, options))
    return rows


def _format(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _format_p(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def comparison_table(rows: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> str:
    """The rows of :func:`compare_results` as a Markdown table (one line per row).

    Examples
    --------
    >>> row = {"reference": "A", "method": "B", "measure": "F1", "value_a": 0.5,
    ...        "value_b": 0.75, "difference": 0.25, "low": 0.1, "high": 0.4,
    ...        "p_value": 0.004, "test": "paired bootstrap", "n_cases": 6}
    >>> print(comparison_table([row]))
    | B vs A | measure | A | B | B − A | 95 % CI | p | test |
    |---|---|---|---|---|---|---|---|
    | B vs A | F1 | 0.500 | 0.750 | +0.250 | [0.100, 0.400] | 0.004 | paired bootstrap |
    """
    header = f"| B vs A | measure | A | B | B − A | {confidence:.0%} CI | p | test |"
    lines = [header.replace("%", " %"), "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        difference = row["difference"]
        signed = "—" if difference is None else f"{difference:+.3f}"
        lines.append(
            f"| {row['method']} vs {row['reference']} | {row['measure']} | "
            f"{_format(row['value_a'])} | {_format(row['value_b'])} | {signed} | "
            f"[{_format(row['low'])}, {_format(row['high'])}] | {_format_p(row['p_value'])} | "
            f"{row['test']} |"
        )
    return "\n".join(lines)


def count_section(
    predicted: Mapping[str, float], truth: Mapping[str, int | float]
) -> dict[str, Any]:
    """Per-case predicted and true counts with their count metrics, for a result file.

    Parameters
    ----------
    predicted : mapping of case to count
        Predicted count of each case (rounded half up for accuracy).
    truth : mapping of case to count
        True count of each case; defines the cases.

    Returns
    -------
    dict
        ``{"metrics": count_metrics(...), "cases": {case: {"predicted", "truth"}}}``.

    Examples
    --------
    >>> section = count_section({"a": 1.6, "b": 0.0}, {"a": 2, "b": 1})
    >>> section["metrics"]["accuracy"], section["cases"]["a"]
    (0.5, {'predicted': 1.6, 'truth': 2})
    """
    missing = [case for case in truth if case not in predicted]
    if missing:
        raise ValueError(f"predicted: no count for case {missing[0]!r}; expected one per case")
    cases = list(truth)
    metrics = count_metrics([predicted[c] for c in cases], [truth[c] for c in cases])
    return {
        "metrics": metrics.to_dict(),
        "cases": {c: {"predicted": float(predicted[c]), "truth": int(truth[c])} for c in cases},
    }
