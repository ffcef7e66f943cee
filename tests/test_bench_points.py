"""Experiment 2 (points vs masks): the quick run writes a complete, resumable report, and
its detectors and scores find the planted lesions of the quick phantom; the count row's
attention peaks are the planted maxima, and the report of the recorded units is what
they say."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from weaklesion.bench.points import (
    METHODS,
    REFERENCE_FRACTION,
    ROWS,
    SETTINGS,
    THRESHOLDS,
    attention_levels,
    certainty_curve,
    detection_froc,
    existence_calibration,
    overlap_matches,
    points_tables,
    row_detector,
    run_points,
    scored_detections,
    segmentation_scores,
    summarise_points,
    tune_and_test,
)
from weaklesion.config import TrainConfig
from weaklesion.data import load_dataset
from weaklesion.data.truth import lesion_truth
from weaklesion.detection import fit_gaussians
from weaklesion.metrics import hits_by_score
from weaklesion.targets import gaussian_heatmap
from weaklesion.training.data import heatmap_scale
from weaklesion.tuning import detector_sweep
from weaklesion.uncertainty import lesion_entropy

SIGMA = 1.0
MATCH_DISTANCE = 3.0
RECORDED = Path(__file__).parents[1] / "benchmarks" / "results" / "bench_points"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_points")
    summary = run_points(out, quick=True, seeds=1, methods=None, console=None)
    return out, summary


def _split(data, name):
    """Truth centres, lesion sizes (voxels) and the volume shape of one split."""
    cases = load_dataset(data).split_cases(name)
    points, sizes, _ = lesion_truth(data, [case.id for case in cases])
    shape = cases[0].load().image.shape[1:]
    return [points[c.id] for c in cases], [sizes[c.id] for c in cases], shape


@pytest.mark.slow
def test_quick_run_writes_every_table_and_figure(quick_run):
    out, summary = quick_run
    assert set(summary["rows"]) == set(ROWS)
    for row in ROWS:
        entry = summary["rows"][row]
        assert entry["seeds"] == [0]
        assert all(0 <= entry[key][0] <= 1 for key in ("f1", "precision", "recall"))
        assert 0 < entry["threshold"][0] < 1
    tables = (out / "tables.md").read_text(encoding="utf-8")
    for heading in ("Table 1.", "Table 2a.", "Table 2b.", "Transfer to segmentation"):
        assert heading in tables
    for label in ("segmentation + CC", "geodesic map + CC", "heatmap + Gaussian fitting"):
        assert label in tables
    assert json.loads((out / "summary.json").read_text()) == summary
    for figure in ("calibration.png", "certainty.png", "transfer.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    units = sorted((out / "units").glob("*.json"))
    assert all(isinstance(json.loads(path.read_text()), dict) for path in units)
    # Every transfer arm used the same mask cases: the comparison is paired.
    transfer = [json.loads(p.read_text()) for p in units if p.name.startswith("transfer_")]
    arms = [record for record in transfer if record["mask_fraction"] != REFERENCE_FRACTION]
    assert len(arms) == 5  # scratch, two heatmap sigmas, two distance maps
    assert len({tuple(record["mask_cases"]) for record in arms}) == 1
    # The reference arm trains from scratch on every training case's mask.
    (reference,) = [record for record in transfer if record not in arms]
    training = [case.id for case in load_dataset(out / "work" / "data").split_cases("training")]
    assert reference["source"] == "scratch"
    assert sorted(reference["mask_cases"]) == sorted(training)
    assert set(arms[0]["mask_cases"]) < set(training)
    assert "100% masks: seg F1 / det F1 / Dice" in tables
    calibration = summary["calibration"]["fitted"]
    assert calibration["n_detections"] == [sum(calibration["bins"]["count"])]


@pytest.mark.slow
def test_rerun_reads_finished_units_and_trains_nothing(quick_run, monkeypatch):
    out, summary = quick_run
    before = {path.name: path.stat().st_mtime_ns for path in (out / "units").glob("*.json")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished unit was trained again")

    monkeypatch.setattr("weaklesion.training.train", refuse)
    monkeypatch.setattr("weaklesion.training.finetune.finetune", refuse)
    again = run_points(out, quick=True, seeds=1, methods=None, console=None)
    after = {path.name: path.stat().st_mtime_ns for path in (out / "units").glob("*.json")}
    assert after == before
    assert again == summary


@pytest.mark.slow
def test_other_settings_in_the_same_folder_are_refused(quick_run):
    out, _ = quick_run
    with pytest.raises(ValueError, match=r"settings\.json: field '\w+' is .*use another --out"):
        run_points(out, quick=False, seeds=1, methods=["heatmap_fit"], console=None)


@pytest.mark.slow
def test_count_row_learns_from_counts_alone_and_reports_its_fauc(quick_run):
    out, summary = quick_run
    training = json.loads((out / "units" / "train_counts_seed0.json").read_text())
    config = training["config"]
    assert (config["labels"], config["target"], config["model"]) == ("counts", "count", "gpunet")
    assert config["count_gradient"] == "centred" and config["batch_size"] >= 2
    # The network a user gets from `weaklesion train --labels counts`, at the row's width.
    default = TrainConfig(labels="counts").model_kwargs["normalization"]
    assert default != "none"
    assert config["model_kwargs"] == {
        "filters": SETTINGS["quick"].count_filters,
        "normalization": default,
    }
    evaluation = json.loads((out / "units" / "evaluate_counts_seed0.json").read_text())
    low, high = evaluation["attention_levels"]
    assert high > low
    row = evaluation["counts_peaks"]
    assert row["threshold"] in THRESHOLDS
    assert 0 <= row["fauc"]["low"] <= row["fauc"]["estimate"] <= row["fauc"]["high"] <= 1
    froc = row["froc"]
    assert froc["fp_per_image"] == sorted(froc["fp_per_image"])
    assert froc["sensitivity"] == sorted(froc["sensitivity"])
    assert summary["rows"]["counts_peaks"]["fauc"] == [row["fauc"]["estimate"]]
    table = (out / "tables.md").read_text(encoding="utf-8").split("\n\n")[2].splitlines()
    assert table[0].startswith("| method | seeds | F1 | FAUC | precision |")
    assert table[-1].startswith("| GP-Unet from counts + attention peaks | 1 |")
    # Rows whose evaluations give no FROC show a dash there.
    assert table[2].split(" | ")[3] == "—"


def _planted_attention():
    """An attention map on a constant background of 5 with five compact bumps (a centre
    of height h over the background, its 26 neighbours h / 2), and the bumps' centres
    and heights; three bumps are lesions, and a fourth lesion has no bump."""
    centres = np.array([[3, 3, 3], [3, 12, 12], [10, 4, 18], [12, 18, 6], [6, 20, 20]])
    heights = np.array([8.0, 6.0, 4.0, 2.0, 1.0])
    attention = np.full((16, 24, 24), 5.0)
    for (z, y, x), height in zip(centres, heights, strict=True):
        attention[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] += height / 2
        attention[z, y, x] += height / 2
    lesion = np.array([True, False, True, False, True])
    truth = np.concatenate([centres[lesion], [[13.0, 12.0, 12.0]]]).astype(float)
    return attention, centres, heights, lesion, truth


def test_attention_peaks_are_the_planted_maxima_scored_by_the_map():
    attention, centres, heights, lesion, truth = _planted_attention()
    low, high = attention_levels([attention])
    assert (low, high) == (5.0, 13.0)
    scaled = (attention - low) / (high - low)
    found = scored_detections("peaks", [scaled])[0]
    np.testing.assert_array_equal(found.points, centres)  # highest first
    np.testing.assert_array_equal(found.scores, scaled[tuple(centres.T)])
    np.testing.assert_array_equal(found.scores, heights / heights.max())
    # Every threshold keeps the bumps at least that high: tp and fp by brute force.
    curve = detector_sweep(row_detector("peaks", [scaled]), 1, [truth], MATCH_DISTANCE, THRESHOLDS)
    kept = heights[None, :] / heights.max() >= np.asarray(curve.values)[:, None]
    np.testing.assert_array_equal(curve.tp[:, 0], (kept & lesion).sum(axis=1))
    np.testing.assert_array_equal(curve.fp[:, 0], (kept & ~lesion).sum(axis=1))
    np.testing.assert_array_equal(curve.fn[:, 0], len(truth) - (kept & lesion).sum(axis=1))
    # The best F1 keeps all five bumps (3 hits, 2 false, 1 missed): the highest such
    # threshold is the largest candidate at or under the weakest bump, 1/8.
    detect = row_detector("peaks", [scaled])
    result = tune_and_test(detect, [truth], detect, [truth], None, MATCH_DISTANCE)
    assert result["threshold"] == 0.12 and result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))


def test_attention_froc_ranks_the_peaks_by_their_value():
    attention, *_, truth = _planted_attention()
    low, high = attention_levels([attention])
    raw = scored_detections("peaks", [attention])
    scaled = scored_detections("peaks", [(attention - low) / (high - low)])
    # By hand, in decreasing value: hit, false, hit, false, hit; 4 lesions. Up to 5 false
    # positives the sensitivity is 1/4 before the first, 2/4 before the second, then 3/4.
    froc = detection_froc(scaled, [truth], MATCH_DISTANCE, max_fp=5.0, n_boot=10)
    assert froc["froc"]["fp_per_image"] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    assert froc["froc"]["sensitivity"] == [0.0, 0.25, 0.25, 0.5, 0.5, 0.75]
    assert froc["fauc"]["estimate"] == pytest.approx((1 * 0.25 + 1 * 0.5 + 3 * 0.75) / 5)
    assert froc["fauc_by_rank"]["estimate"] == froc["fauc"]["estimate"]  # one image
    # The rescaling changes the scores, not their order: the same curve from the raw map.
    assert detection_froc(raw, [truth], MATCH_DISTANCE, n_boot=10) == froc


def test_report_of_the_recorded_units_is_unchanged():
    if not (RECORDED / "tables.md").is_file():
        pytest.skip("no recorded results next to the tests")
    tables = "# Points vs masks\n\n" + points_tables(summarise_points(RECORDED))
    assert tables == (RECORDED / "tables.md").read_text(encoding="utf-8")


def test_transfer_table_gives_the_spread_and_the_seeds_behind_each_start():
    def arm(f1: list[float]) -> dict:
        return {
            "seeds": list(range(len(f1))),
            "segmentation_f1": f1,
            "detection_f1": f1,
            "dice": f1,
        }

    summary = {
        "transfer": {
            "scratch": {"0.01": arm([0.2, 0.4]), "0.1": arm([0.5, 0.7])},
            "geodesic": {"0.01": arm([0.3]), "0.1": arm([0.6, 0.8, 1.0])},
        }
    }
    lines = points_tables(summary).splitlines()
    start = lines.index("Transfer to segmentation (test cases, last epoch)")
    header, _, first, second = (line.split(" | ") for line in lines[start + 2 : start + 6])
    assert header[1:3] == ["seeds", "1% masks: seg F1 / det F1 / Dice"]
    assert first[:3] == ["| from scratch", "2", "0.30 ± 0.14 / 0.30 ± 0.14 / 0.30 ± 0.14"]
    assert second[:3] == ["| geodesic map", "1–3", "0.30 / 0.30 / 0.30"]
    assert second[3].startswith("0.80 ± 0.20")


def test_unknown_method_is_named(tmp_path):
    with pytest.raises(ValueError, match="methods: got segmentation; expected some of"):
        run_points(tmp_path, quick=True, seeds=1, methods=["segmentation"], console=None)
    assert "transfer" in METHODS and not (tmp_path / "units").exists()


@pytest.mark.slow
def test_oracle_heatmap_rows_find_the_planted_lesions(quick_run):
    out, _ = quick_run
    data = out / "work" / "data"
    val_points, _, shape = _split(data, "validation")
    test_points, sizes, _ = _split(data, "test")
    oracle = {
        "validation": [gaussian_heatmap(p, shape, SIGMA) for p in val_points],
        "test": [gaussian_heatmap(p, shape, SIGMA) for p in test_points],
    }
    fitted = tune_and_test(
        row_detector("fit", oracle["validation"], SIGMA),
        val_points,
        row_detector("fit", oracle["test"], SIGMA),
        test_points,
        sizes,
        MATCH_DISTANCE,
    )
    assert fitted["f1"] >= 0.95
    strata = fitted["recall_by_size"]
    assert sum(strata["n_truth"].values()) + strata["excluded"] == sum(map(len, test_points))
    assert strata["recall"]["small"] >= 0.9 and strata["n_truth"]["small"] > 0

    scale = heatmap_scale([SIGMA] * 3)
    components = tune_and_test(
        row_detector("components", oracle["validation"], peak_scale=scale),
        val_points,
        row_detector("components", oracle["test"], peak_scale=scale),
        test_points,
        None,
        MATCH_DISTANCE,
    )
    assert components["f1"] >= 0.8

    # A chance detector, as many uniform random points as there are lesions, does not.
    rng = np.random.default_rng(0)
    guesses = {
        name: [rng.uniform(0, np.array(shape) - 1, size=p.shape) for p in points]
        for name, points in (("validation", val_points), ("test", test_points))
    }
    chance = tune_and_test(
        lambda threshold, case: guesses["validation"][case],
        val_points,
        lambda threshold, case: guesses["test"][case],
        test_points,
        None,
        MATCH_DISTANCE,
    )
    assert chance["f1"] < 0.3


@pytest.mark.slow
def test_oracle_fits_are_calibrated_and_ranked_first(quick_run):
    out, _ = quick_run
    points, _, shape = _split(out / "work" / "data", "test")
    maps = [gaussian_heatmap(p, shape, SIGMA) for p in points]
    fits = [fit_gaussians(m, SIGMA, stop=0.01, max_lesions=100) for m in maps]
    scale = heatmap_scale([SIGMA] * 3)
    result = existence_calibration(fits, [m * scale for m in maps], points, MATCH_DISTANCE)
    assert result["n_detections"] >= sum(len(p) for p in points)
    assert result["fitted"]["ece"] < 0.1
    # Of the lesions kept at 0.5, those most certain to exist are the true ones.
    kept = [found[found.scores >= 0.5] for found in fits]
    correct = [
        hits_by_score(k.points, k.scores, p, MATCH_DISTANCE)
        for k, p in zip(kept, points, strict=True)
    ]
    curve = certainty_curve(correct, [lesion_entropy(k) for k in kept], [0.5, 1.0])
    assert curve["n_detections"] >= 0.9 * sum(len(p) for p in points)
    assert curve["accuracy"][0] == 1.0 >= curve["accuracy"][1] >= 0.9


def test_oracle_segmentation_scores_perfectly():
    truth = np.zeros((12, 12, 12), dtype=int)
    truth[1:3, 1:3, 1:3] = 1
    truth[6:9, 6:9, 6:9] = 2
    points = np.array([[1.5, 1.5, 1.5], [7.0, 7.0, 7.0]])
    perfect = segmentation_scores([(truth > 0).astype(float)], [truth], [points], 3.0)
    assert perfect["segmentation_f1"] == perfect["detection_f1"] == perfect["dice"] == 1.0
    # Lesion 1 missed, lesion 2 found one voxel off (18 of 27 voxels), one false blob.
    guess = np.zeros(truth.shape)
    guess[6:9, 6:9, 7:10] = 0.9
    guess[1:3, 9:11, 9:11] = 0.8
    scores = segmentation_scores([guess], [truth], [points], 3.0)
    assert scores["segmentation_tp_fp_fn"] == [1, 1, 1]
    assert scores["dice"] == pytest.approx(2 * 18 / (27 + 8 + 27 + 8))
    assert scores["detection_f1"] == pytest.approx(0.5)


def _brute_force_pairs(predicted, truth):
    """Most one-to-one component-lesion pairs sharing a voxel, by trying every assignment."""
    import cc3d

    labels, n_pred = cc3d.connected_components(predicted, connectivity=26, return_N=True)
    ids = sorted(set(truth[truth > 0].tolist()))
    touching = {
        (a, b) for a in range(1, n_pred + 1) for b in ids if np.any((labels == a) & (truth == b))
    }
    best = 0
    for chosen in itertools.permutations(ids, min(n_pred, len(ids))):
        for rows in itertools.permutations(range(1, n_pred + 1), len(chosen)):
            best = max(best, sum((a, b) in touching for a, b in zip(rows, chosen, strict=True)))
    return best, n_pred, len(ids)


def test_overlap_matches_equals_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(30):
        truth = rng.integers(0, 4, size=(1, 3, 6)) * (rng.random((1, 3, 6)) < 0.4)
        predicted = rng.random((1, 3, 6)) < 0.3
        pairs, n_pred, n_true = _brute_force_pairs(predicted, truth)
        assert overlap_matches(predicted, truth) == (pairs, n_pred - pairs, n_true - pairs)


@pytest.mark.slow
def test_a_transfer_source_whose_run_was_lost_is_trained_again_the_same(quick_run, tmp_path):
    import shutil

    out, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    arm = next((copy / "units").glob("transfer_euclidean_*.json"))
    kept = json.loads(arm.read_text())
    assert kept["source_retrained"] is False
    # The results are kept, the trained runs are not (as in a fresh clone).
    shutil.rmtree(copy / "work" / "runs")
    arm.unlink()
    run_points(copy, quick=True, seeds=1, methods=None, console=None)
    again = json.loads(arm.read_text())
    assert again["source_retrained"] is True
    assert again["source_best_value"] == again["source_recorded_best_value"]
    assert again["source_best_value"] == kept["source_best_value"]
    for key in ("segmentation_f1", "detection_f1", "dice", "mask_cases"):
        assert again[key] == kept[key]
    # Arms fine-tuned later from the retrained source say so too.
    arm.unlink()
    run_points(copy, quick=True, seeds=1, methods=None, console=None)
    assert json.loads(arm.read_text())["source_retrained"] is True


@pytest.mark.slow
def test_a_source_on_its_first_training_is_not_marked_retrained(quick_run, tmp_path):
    import shutil

    from weaklesion.bench.points import units

    out, _ = quick_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # No train unit and no run folder: the source has never been trained.
    (copy / "units" / "train_euclidean_seed0.json").unlink()
    run_dir = copy / "work" / "runs" / "euclidean_seed0"
    shutil.rmtree(run_dir)
    record = units._source_run(units._prepare(copy, True), "euclidean", 0)
    assert record["source_retrained"] is False
    assert record["source_recorded_best_value"] is None
    assert not (run_dir / units.RETRAINED_MARK).exists()
    assert (run_dir / "best.pt").exists() and record["source_best_value"] is not None
