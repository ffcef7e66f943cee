"""Paired comparisons: the Wilcoxon wrapper agrees with SciPy, the paired bootstrap with
SciPy's and with a brute-force loop, its p-value is uniform under no difference, and
`weaklesion compare` prints the table or refuses results from different cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.compare import (
    _pooled_f1,
    check_paired,
    compare_results,
    comparison_table,
    count_section,
    paired_bootstrap,
    wilcoxon_signed_rank,
)
from weaklesion.detection import Detections, write_detections_csv
from weaklesion.metrics import (
    evaluate_detections,
    froc_auc,
    froc_auc_weighted,
    froc_curve,
)

runner = CliRunner()

# --------------------------------------------------------------------------- Wilcoxon

PAIRS = {
    "no ties": ([3.1, 2.0, 4.5, 1.2, 5.0, 2.2, 3.3, 4.1], [1.0, 2.6, 1.1, 0.3, 2.4, 1.5, 1.9, 2.0]),
    "ties and zeros": ([3, 2, 4, 1, 5, 2, 3, 4, 0, 1], [1, 2, 1, 0, 2, 1, 1, 2, 0, 3]),
    "counts, n = 60": (
        np.random.default_rng(0).poisson(3, 60),
        np.random.default_rng(1).poisson(2, 60),
    ),
}


@pytest.mark.parametrize(
    ("name", "zero_method", "alternative"),
    [
        *[
            (name, method, "two-sided")
            for name in PAIRS
            for method in ("wilcox", "pratt", "zsplit")
        ],
        ("no ties", "wilcox", "less"),
        ("ties and zeros", "pratt", "greater"),
        ("counts, n = 60", "zsplit", "less"),
    ],
)
def test_wilcoxon_agrees_with_scipy(name, zero_method, alternative):
    a, b = (np.asarray(x, dtype=float) for x in PAIRS[name])
    ours = wilcoxon_signed_rank(a, b, zero_method=zero_method, alternative=alternative)
    theirs = scipy.stats.wilcoxon(b - a, zero_method=zero_method, alternative=alternative)
    assert ours.statistic == pytest.approx(float(theirs.statistic))
    assert ours.p_value == pytest.approx(float(theirs.pvalue))
    assert ours.n_nonzero == int(np.count_nonzero(b - a))
    assert ours.mean_difference == pytest.approx(float(np.mean(b - a)))


def test_wilcoxon_direction_and_edge_cases():
    a, b = PAIRS["no ties"]
    # B is smaller: "less" is significant, "greater" is not.
    assert wilcoxon_signed_rank(a, b, alternative="less").p_value < 0.05
    assert wilcoxon_signed_rank(a, b, alternative="greater").p_value > 0.5
    same = wilcoxon_signed_rank([1, 2, 3], [1, 2, 3])
    assert (same.statistic, same.p_value, same.n_nonzero) == (0.0, 1.0, 0)
    assert math.isnan(wilcoxon_signed_rank([], []).p_value)
    with pytest.raises(ValueError, match="paired per-case values"):
        wilcoxon_signed_rank([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        wilcoxon_signed_rank([1.0, math.nan], [1.0, 2.0])


# ------------------------------------------------------------------ paired bootstrap


def test_paired_bootstrap_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(7)
    a = rng.normal(0.0, 2.0, 40)
    b = a + rng.normal(0.3, 1.0, 40)
    ours = paired_bootstrap(a, b, n_boot=20000, seed=1)
    theirs = scipy.stats.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(y - x, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=20000,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(2),
    )
    standard_error = np.std(b - a, ddof=1) / math.sqrt(len(a))
    assert ours.estimate == pytest.approx(np.mean(b - a))
    # Monte-Carlo error of a 2.5 % quantile from 20000 resamples is about 0.02 SE.
    assert abs(ours.low - theirs.confidence_interval.low) < 0.1 * standard_error
    assert abs(ours.high - theirs.confidence_interval.high) < 0.1 * standard_error


def test_paired_bootstrap_equals_a_brute_force_loop():
    rng = np.random.default_rng(3)
    found_a = rng.integers(0, 5, size=(12, 3))  # per case tp, fp, fn
    found_b = found_a + rng.integers(0, 2, size=(12, 3))

    def f1(rows):
        tp, fp, fn = rows.sum(axis=0)
        return 2 * tp / (2 * tp + fp + fn)

    result = paired_bootstrap(found_a, found_b, f1, n_boot=300, seed=5)
    indices = np.random.default_rng(5).integers(0, 12, size=(300, 12))
    replicates = np.array([f1(found_b[rows]) - f1(found_a[rows]) for rows in indices])
    assert result.estimate == pytest.approx(f1(found_b) - f1(found_a))
    assert (result.low, result.high) == pytest.approx(
        tuple(np.quantile(replicates, [0.025, 0.975]))
    )
    side = min(np.sum(replicates <= 0), np.sum(replicates >= 0))
    assert result.p_value == pytest.approx(min(1.0, 2 * (side + 1) / 301))
    # The same statistic through case weights gives the same numbers, resample by resample.
    weighted = paired_bootstrap(found_a, found_b, _pooled_f1, n_boot=300, seed=5, by_weights=True)
    assert (weighted.estimate, weighted.low, weighted.high, weighted.p_value) == pytest.approx(
        (result.estimate, result.low, result.high, result.p_value)
    )


def test_both_methods_see_the_same_resample():
    # Cases vary a lot, but B is A plus one on every case: only a paired resampling
    # sees a difference of exactly 1 in every replicate.
    a = np.random.default_rng(0).normal(0, 10, 25)
    result = paired_bootstrap(a, a + 1, n_boot=999, seed=0)
    assert (result.low, result.high) == pytest.approx((1.0, 1.0))
    assert result.p_value == pytest.approx(2 / 1000)
    same = paired_bootstrap(a, a.copy(), n_boot=200, seed=0)
    assert (same.estimate, same.p_value) == (0.0, 1.0)


def test_p_value_is_uniform_under_no_difference():
    rng = np.random.default_rng(11)
    p_values = []
    for seed in range(400):
        a = rng.normal(size=30)
        p_values.append(paired_bootstrap(a, a + rng.normal(size=30), n_boot=400, seed=seed).p_value)
    p_values = np.array(p_values)
    assert 0.02 <= np.mean(p_values <= 0.05) <= 0.10
    assert 0.4 <= np.mean(p_values <= 0.5) <= 0.6
    assert scipy.stats.kstest(p_values, "uniform").pvalue > 0.01


def test_paired_bootstrap_refuses_unpaired_and_handles_empty():
    with pytest.raises(ValueError, match="paired by position"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap([1.0], [1.0], n_boot=0)
    empty = paired_bootstrap([], [])
    assert math.isnan(empty.estimate) and empty.n_cases == 0


def test_weighted_froc_area_equals_the_area_of_the_resampled_cases():
    rng = np.random.default_rng(2)
    scores = [np.round(rng.random(int(rng.integers(0, 6))), 2) for _ in range(7)]
    n_truth = [int(rng.integers(0, 4)) for _ in range(7)]
    hits = []
    for values, truth in zip(scores, n_truth, strict=True):
        marks = np.zeros(len(values), dtype=bool)
        marks[: min(truth, len(values))] = True
        hits.append(rng.permutation(marks))
    indices = rng.integers(0, 7, size=(20, 7))
    weights = np.stack([np.bincount(rows, minlength=7) for rows in indices]).astype(float)
    fast = froc_auc_weighted(scores, hits, n_truth, weights, max_fp=2.0)
    for area, rows in zip(fast, indices, strict=True):
        curve = froc_curve(
            [scores[i] for i in rows], [hits[i] for i in rows], np.take(n_truth, rows)
        )
        assert area == pytest.approx(froc_auc(curve.fp_per_image, curve.sensitivity, 2.0))


# ---------------------------------------------------------------------- result files


def planted_result(seed: int, miss_rate: float, n_cases: int = 10, names=None) -> dict:
    """An evaluation report of a detector that misses lesions at ``miss_rate`` and adds
    one or two false positives per case."""
    rng = np.random.default_rng(seed)
    truth_rng = np.random.default_rng(100)  # the same truth for every method
    names = names or [f"case_{i}" for i in range(n_cases)]
    truth, found = {}, {}
    for name in names:
        lesions = truth_rng.uniform(5, 45, size=(int(truth_rng.integers(1, 5)), 3))
        kept = lesions[rng.random(len(lesions)) >= miss_rate] + 0.5
        extra = rng.uniform(5, 45, size=(int(rng.integers(1, 3)), 3))
        points = np.concatenate([kept, extra])
        scores = np.concatenate(
            [rng.uniform(0.6, 1.0, len(kept)), rng.uniform(0.4, 0.7, len(extra))]
        )
        truth[name], found[name] = lesions, (points, scores)
    return evaluate_detections(found, truth, 2.0, n_boot=50)


def test_compare_results_rows_agree_with_the_reports_and_scipy():
    good, poor = planted_result(1, 0.1), planted_result(2, 0.6)
    rows = compare_results({"poor": poor, "good": good}, n_boot=500, seed=0)
    by_measure = {row["measure"]: row for row in rows}
    f1 = by_measure["F1"]
    assert f1["value_a"] == pytest.approx(poor["detection"]["f1"])
    assert f1["value_b"] == pytest.approx(good["detection"]["f1"])
    assert f1["difference"] == pytest.approx(good["detection"]["f1"] - poor["detection"]["f1"])
    assert f1["low"] <= f1["difference"] <= f1["high"]
    fauc = by_measure["FAUC (0-5 FP/image)"]
    assert fauc["value_b"] == pytest.approx(good["fauc"]["estimate"])
    cases = sorted(good["cases"])
    fn = [np.array([r["cases"][c]["fn"] for c in cases]) for r in (poor, good)]
    expected = scipy.stats.wilcoxon(fn[1] - fn[0]).pvalue
    assert by_measure["FN per image"]["p_value"] == pytest.approx(expected)
    assert by_measure["FN per image"]["difference"] == pytest.approx(np.mean(fn[1] - fn[0]))
    table = comparison_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| good vs poor | F1 |" in table


def test_compare_refuses_results_that_are_not_paired():
    reference = planted_result(1, 0.1)
    other_cases = planted_result(2, 0.1, names=[f"case_{i}" for i in range(1, 11)])
    with pytest.raises(ValueError, match=r"different test cases.*'case_0'.*'case_10'"):
        check_paired({"a": reference, "b": other_cases})
    other_truth = json.loads(json.dumps(planted_result(2, 0.1)))
    other_truth["cases"]["case_3"]["n_truth"] += 1
    with pytest.raises(ValueError, match=r"case 'case_3' has .* truth lesion"):
        check_paired({"a": reference, "b": other_truth})
    other_rule = json.loads(json.dumps(planted_result(2, 0.1)))
    other_rule["settings"]["max_distance"] = 5.0
    with pytest.raises(ValueError, match="max_distance"):
        check_paired({"a": reference, "b": other_rule})


def test_count_accuracy_comes_from_the_count_section():
    first, second = planted_result(1, 0.1), planted_result(1, 0.1)
    truth = {c: e["n_truth"] for c, e in first["cases"].items()}
    first["counts"] = count_section({c: 0.0 for c in truth}, truth)
    second["counts"] = count_section({c: t + 0.4 for c, t in truth.items()}, truth)
    rows = compare_results({"zero": first, "right": second}, n_boot=200)
    accuracy = next(row for row in rows if row["measure"] == "count accuracy")
    assert (accuracy["value_a"], accuracy["value_b"]) == (0.0, 1.0)


# ------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def phantom(phantom_dataset):
    return phantom_dataset(n_cases=6, seed=3, shape=(16, 32, 32), splits=(2, 1, 3))


def write_detections(phantom, path, jitter: float, drop_case: str | None = None) -> None:
    from weaklesion.data import load_dataset

    rng = np.random.default_rng(int(jitter * 100))
    found = {}
    for case in load_dataset(phantom):
        if case.id == drop_case:
            continue
        points = case.points + rng.normal(0, jitter, case.points.shape)
        decoy = rng.uniform(2, 14, size=(1, 3))
        found[case.id] = Detections(
            np.concatenate([points, decoy]), np.r_[np.full(len(points), 0.9), 0.6]
        )
    write_detections_csv(path, found)


def test_compare_command_prints_the_table_and_refuses_other_cases(phantom, tmp_path):
    results = []
    for name, jitter, dropped in (("a", 0.2, None), ("b", 4.0, None), ("c", 0.2, "phantom_003")):
        detections = tmp_path / f"{name}.csv"
        write_detections(phantom, detections, jitter, dropped)
        result = tmp_path / f"{name}.json"
        outcome = runner.invoke(
            app,
            [
                "evaluate",
                str(detections),
                "--truth",
                str(phantom),
                "--split",
                "test",
                "--out",
                str(result),
            ],
        )
        assert outcome.exit_code == 0, outcome.output
        results.append(result)
    report = json.loads(results[2].read_text())
    # A test case without detections is scored, all its lesions missed.
    missed = report["cases"]["phantom_003"]
    assert report["settings"]["n_cases"] == 3 and missed["tp"] == 0 and missed["fn"] > 0
    assert report["settings"]["split"] == "test" and report["settings"]["threshold"] == 0.5
    assert report["counts"]["cases"]["phantom_003"]["predicted"] == 0

    table = tmp_path / "table.md"
    outcome = runner.invoke(app, ["compare", str(results[0]), str(results[1]), "--out", str(table)])
    assert outcome.exit_code == 0, outcome.output
    for measure in ("F1", "FAUC", "count accuracy", "FP per image", "FN per image", "sensitivity"):
        assert f"| {measure}" in outcome.output
    assert table.read_text().strip() == outcome.output.strip()
    as_json = tmp_path / "table.json"
    outcome = runner.invoke(app, ["compare", *map(str, results[:2]), "--out", str(as_json)])
    rows = json.loads(as_json.read_text())["rows"]
    assert rows[0]["measure"] == "F1" and rows[0]["value_a"] > rows[0]["value_b"]

    # Without --split only the cases in the detections file are scored: not the same.
    partial = tmp_path / "partial.json"
    outcome = runner.invoke(
        app, ["evaluate", str(tmp_path / "c.csv"), "--truth", str(phantom), "--out", str(partial)]
    )
    assert outcome.exit_code == 0, outcome.output
    refused = tmp_path / "refused.md"
    outcome = runner.invoke(app, ["compare", str(results[0]), str(partial), "--out", str(refused)])
    assert outcome.exit_code == 2
    assert "different test cases" in outcome.output and "'phantom_000'" in outcome.output
    assert outcome.output.count("\n") == 1 and not refused.exists()
