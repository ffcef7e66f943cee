"""Operating points: sweeps equal brute-force matching at every setting, a threshold tuned
on under-confident maps beats the default 0.5 on held-out maps, and a tuned run stores
its operating point where load_run, `detect --run` and `evaluate --run` find it."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.data import load_dataset, write_phantom_dataset, zscore
from weaklesion.detection import (
    component_detections,
    fit_gaussians,
    read_detections_csv,
)
from weaklesion.inference import predict_image
from weaklesion.metrics import detection_scores, match_points
from weaklesion.targets import gaussian_heatmap
from weaklesion.training import TrainConfig, load_run, train
from weaklesion.training.checkpoint import (
    build_model_for,
    load_checkpoint,
    run_state,
    save_checkpoint,
)
from weaklesion.tuning import (
    DEFAULT_OFFSETS,
    DEFAULT_THRESHOLDS,
    OperatingCurve,
    choose_operating_point,
    count_offset_sweep,
    detector_sweep,
    metric_curve,
    read_operating_point,
    stored_setting,
    threshold_sweep,
    tune_operating_point,
)

runner = CliRunner()


def random_study(seed: int, n_cases: int = 6):
    """Cases of (detections, scores with ties, truth) in a 20 x 30 x 30 volume."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n_cases):
        truth = rng.uniform(0, [20, 30, 30], size=(int(rng.integers(0, 6)), 3))
        near = (
            truth[rng.integers(0, max(len(truth), 1), size=len(truth) * 2 // 3 + 1)]
            if len(truth)
            else np.zeros((0, 3))
        )
        points = np.concatenate(
            [near + rng.normal(0, 1.2, near.shape), rng.uniform(0, [20, 30, 30], size=(3, 3))]
        )
        cases.append((points, np.round(rng.random(len(points)), 1), truth))
    return cases


# ------------------------------------------------------------------ sweeps vs brute force


def test_threshold_sweep_equals_matching_the_kept_detections_afresh():
    cases = random_study(0)
    thresholds = [0.05, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
    curve = threshold_sweep(
        [(p, s) for p, s, _ in cases], [t for *_, t in cases], 2.5, thresholds, spacing=[1.5, 1, 1]
    )
    assert curve.values.tolist() == sorted(thresholds, reverse=True)
    for k, threshold in enumerate(curve.values):
        for c, (points, scores, truth) in enumerate(cases):
            kept = points[scores >= threshold]
            matches = match_points(kept, truth, 2.5, spacing=[1.5, 1, 1])
            assert (curve.tp[k, c], curve.fp[k, c], curve.fn[k, c]) == (
                matches.tp,
                matches.fp,
                matches.fn,
            )
    f1 = curve.scores()["f1"]
    for k, threshold in enumerate(curve.values):
        kept = [match_points(p[s >= threshold], t, 2.5, [1.5, 1, 1]) for p, s, t in cases]
        assert f1[k] == pytest.approx(detection_scores(kept).f1)


def test_detector_sweep_runs_the_detector_at_each_threshold():
    rng = np.random.default_rng(1)
    from scipy import ndimage

    maps = [ndimage.gaussian_filter(rng.random((12, 16, 16)), 1.5) for _ in range(3)]
    maps = [(m - m.min()) / (m.max() - m.min()) for m in maps]
    truths = [component_detections(m, 0.6).points + 0.5 for m in maps]
    curve = detector_sweep(
        lambda tau, case: component_detections(maps[case], tau).points,
        3,
        truths,
        2.0,
        [0.4, 0.6, 0.8],
    )
    for k, tau in enumerate(curve.values):
        for case in range(3):
            found = component_detections(maps[case], tau).points
            matches = match_points(found, truths[case], 2.0)
            assert (curve.tp[k, case], curve.fp[k, case]) == (matches.tp, matches.fp)
    # At tau = 0.6 the detections are the truth, half a voxel off along each axis.
    assert curve.fp[1].sum() == 0 and curve.fn[1].sum() == 0


def test_count_offset_sweep_keeps_floor_count_plus_offset_peaks():
    cases = random_study(2)
    counts = np.array([0.2, 2.49, 3.5, 1.0, 4.8, 0.6])
    truth_counts = [len(t) for *_, t in cases]
    offsets = [-0.5, 0.0, 0.5, 1.0]
    curve = count_offset_sweep(
        [(p, s) for p, s, _ in cases], counts, truth_counts, [t for *_, t in cases], 2.5, offsets
    )
    for k, offset in enumerate(curve.values):
        for c, (points, scores, truth) in enumerate(cases):
            n = max(math.floor(counts[c] + offset), 0)
            top = points[np.argsort(-scores, kind="stable")[:n]]
            matches = match_points(top, truth, 2.5)
            assert curve.predicted_count[k, c] == n
            assert (curve.tp[k, c], curve.fp[k, c], curve.fn[k, c]) == (
                matches.tp,
                matches.fp,
                matches.fn,
            )
    accuracy = curve.scores()["count_accuracy"]
    expected = [np.mean(np.floor(counts + b) == truth_counts) for b in offsets]
    np.testing.assert_allclose(accuracy, expected)


# ---------------------------------------------------------------------------- choice


def curve_of(tp, fp, fn, values=(0.8, 0.5, 0.2)) -> OperatingCurve:
    tp, fp, fn = (np.array(x)[:, None] for x in (tp, fp, fn))
    return OperatingCurve(
        "threshold", np.array(values), tp, fp, fn, (tp + fp) * 1.0, np.array([4.0])
    )


def test_ties_go_to_the_most_conservative_setting():
    # F1 = 2/3 at 0.8 (tp 2, fn 2) and at 0.5 (tp 3, fp 2, fn 1): 0.8 keeps fewer.
    curve = curve_of([2, 3, 4], [0, 2, 6], [2, 1, 0])
    assert metric_curve(curve, "f1")[0][:2] == pytest.approx([2 / 3, 2 / 3])
    assert choose_operating_point(curve, "f1") == 0
    # Highest recall with at most 2 FPs per image: 0.5 (0.2 has 6).
    assert choose_operating_point(curve, "recall@fp<=2") == 1
    assert choose_operating_point(curve, "precision@recall>=1") == 2
    with pytest.raises(ValueError, match="no setting meets"):
        choose_operating_point(curve_of([0, 0, 0], [1, 1, 1], [4, 4, 4]), "recall@fp<=0.5")
    with pytest.raises(ValueError, match="expected f1"):
        choose_operating_point(curve, "accuracy")


# ----------------------------------------------------------- planted, miscalibrated maps


def planted_heatmaps(seed: int, n_cases: int = 4, sigma: float = 1.5):
    """Heatmaps whose lesions carry mass 0.3-0.7 (an under-confident network) and whose
    decoys carry 0.05-0.25, with the lesion centres."""
    rng = np.random.default_rng(seed)
    shape = (16, 32, 32)
    maps, truths = [], []
    for _ in range(n_cases):
        centres: list[np.ndarray] = []
        while len(centres) < 6:
            candidate = rng.uniform(3, np.array(shape) - 4)
            if all(np.linalg.norm(candidate - c) >= 6 * sigma for c in centres):
                centres.append(candidate)
        n_lesions = int(rng.integers(2, 5))
        mass = np.r_[rng.uniform(0.3, 0.7, n_lesions), rng.uniform(0.05, 0.25, 6 - n_lesions)]
        heatmap = sum(
            m * gaussian_heatmap(c[None], shape, sigma, dtype=np.float64)
            for c, m in zip(centres, mass, strict=True)
        )
        maps.append(heatmap + rng.normal(0, 1e-4, shape))
        truths.append(np.array(centres[:n_lesions]))
    return maps, truths


def test_threshold_tuned_on_validation_maps_beats_the_default_on_test_maps():
    def detections(maps):
        return [(f.points, f.scores) for f in (fit_gaussians(m, 1.5) for m in maps)]

    validation, validation_truth = planted_heatmaps(0)
    test, test_truth = planted_heatmaps(1)
    curve = threshold_sweep(detections(validation), validation_truth, 3.0)
    tuned = float(curve.values[choose_operating_point(curve, "f1")])
    assert tuned < 0.5
    on_test = threshold_sweep(detections(test), test_truth, 3.0, [tuned, 0.5])
    f1 = dict(zip(on_test.values.tolist(), on_test.scores()["f1"].tolist(), strict=True))
    f1_tuned, f1_default = f1[tuned], f1[0.5]
    assert f1_tuned > 0.95
    assert f1_default < 0.8


# -------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    """A tiny heatmap model trained on 8 phantom cases without validation, tuned with
    `weaklesion tune` on the validation split of 8 other cases (4 validation, 4 test)."""
    root = tmp_path_factory.mktemp("tuning")
    shape = (16, 32, 32)
    training = write_phantom_dataset(root / "train", 8, seed=3, shape=shape, splits=(8, 0, 0))
    held_out = write_phantom_dataset(root / "held_out", 8, seed=4, shape=shape, splits=(0, 4, 4))
    config = TrainConfig(
        labels="points",
        model_kwargs={"features": [4, 8, 16]},
        epochs=3,
        lr=3e-3,
        sigma=1.5,
        val_fraction=0.0,
        num_threads=1,
        device="cpu",
    )
    run = root / "run"
    train(config, training, run, progress=False)
    result = runner.invoke(
        app,
        [
            "tune",
            "--run",
            str(run),
            "--data",
            str(held_out),
            "--max-lesions",
            "20",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    return run, held_out, result.output


@pytest.mark.slow
def test_tune_chooses_the_best_validation_f1_and_writes_curve_and_figure(tuned_run):
    run, held_out, output = tuned_run
    record = json.loads((run / "operating_point.json").read_text())
    assert output.startswith(f"threshold {record['value']:g}: f1")
    assert (run / "report" / "operating_point.png").read_bytes()[:4] == b"\x89PNG"
    curve = record["curve"]
    assert record["parameter"] == "threshold" and record["value"] in DEFAULT_THRESHOLDS
    assert record["metric_value"] == max(curve["f1"]) >= record["default_metric_value"]
    best = [v for v, f in zip(curve["values"], curve["f1"], strict=True) if f == max(curve["f1"])]
    assert record["value"] == max(best)  # ties: the highest threshold
    validation = load_dataset(held_out).split_cases("validation")
    assert record["data"]["cases"] == [case.id for case in validation]
    assert record["run"]["checkpoint"] == "best.pt" and record["matching"]["max_distance"] == 3.0
    detector = record["detector"]
    assert (detector["method"], detector["sigma"], detector["units"]) == (
        "gaussians",
        1.5,
        "voxels",
    )
    assert detector["max_lesions"] == 20 and detector["sources"]["max_lesions"] == "option"

    # The stored F1 from scratch: predict, fit, keep, match.
    model, _, info = load_run(run)
    matches = []
    for case in validation:
        arrays = case.load()
        heatmap = predict_image(model, zscore(arrays.image), "heatmap", scale=info["heatmap_scale"])
        fits = fit_gaussians(heatmap.map, 1.5, max_lesions=record["detector"]["max_lesions"])
        found = fits.above(record["value"])
        matches.append(match_points(found.points, case.points, 3.0))
    assert detection_scores(matches).f1 == pytest.approx(record["metric_value"])


@pytest.mark.slow
def test_load_run_detect_and_evaluate_use_the_tuned_threshold(tuned_run, tmp_path):
    run, held_out, _ = tuned_run
    value = json.loads((run / "operating_point.json").read_text())["value"]
    _, _, info = load_run(run)
    assert info["threshold"] == value and info["operating_point"]["value"] == value
    assert stored_setting(run) == ("threshold", value, "tuned")

    maps = tmp_path / "maps"
    images = sorted((held_out / "imagesTr").glob("phantom_00[45]_*.nii.gz"))  # two test cases
    predicted = runner.invoke(
        app,
        ["predict", *map(str, images), "--run", str(run), "--out", str(maps), "--device", "cpu"],
    )
    assert predicted.exit_code == 0, predicted.output
    heatmaps = sorted(maps.glob("*_heatmap.nii.gz"))
    assert len(heatmaps) == 2
    detections = tmp_path / "lesions.csv"
    result = runner.invoke(
        app,
        [
            "detect",
            *map(str, heatmaps),
            "--sigma",
            "1.5",
            "--run",
            str(run),
            "--out",
            str(detections),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"threshold {value} (tuned" in result.output
    found = read_detections_csv(detections)
    everything = runner.invoke(
        app, ["detect", *map(str, heatmaps), "--sigma", "1.5", "--out", str(tmp_path / "all.csv")]
    )
    assert everything.exit_code == 0
    unfiltered = read_detections_csv(tmp_path / "all.csv")
    for case, lesions in unfiltered.items():
        kept = lesions.above(value)
        assert len(found.get(case, [])) == len(kept)
        assert np.all(found[case].scores >= value) if len(kept) else case not in found

    report = tmp_path / "metrics.json"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "all.csv"),
            "--truth",
            str(held_out),
            "--split",
            "test",
            "--run",
            str(run),
            "--out",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    settings = json.loads(report.read_text())["settings"]
    assert settings["threshold"] == value and settings["sources"]["threshold"].startswith("tuned")
    assert settings["run"] == str(run) and settings["split"] == "test"


@pytest.mark.slow
def test_an_operating_point_tuned_for_another_checkpoint_is_ignored(tuned_run, tmp_path):
    run, _, _ = tuned_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = load_checkpoint(copy / "best.pt")
    state["epoch"] += 1  # as if a later epoch had become the best
    save_checkpoint(copy / "best.pt", state)
    with pytest.warns(UserWarning, match="tuned for another best.pt than the one now"):
        assert read_operating_point(copy) is None
    with pytest.warns(UserWarning):
        _, _, info = load_run(copy)
    assert "operating_point" not in info and info.get("threshold") is None


@pytest.mark.slow
def test_a_count_run_tunes_the_offset_of_its_rounded_count(tuned_run, tmp_path):
    _, held_out, _ = tuned_run
    config = TrainConfig(labels="counts", model_kwargs={"filters": 4}, spatial_dims=3)
    torch.manual_seed(0)
    info = {"in_channels": 2, "heatmap_scale": 1.0, "kind": "count", "epoch": 1}
    state = run_state(build_model_for(config, 2), None, 1, config, info, [])
    save_checkpoint(tmp_path / "best.pt", state)
    record = tune_operating_point(tmp_path, held_out, "count_accuracy")
    assert record["parameter"] == "count_offset" and record["default"] == 0.5

    model, _, info = load_run(tmp_path)
    assert info["operating_point"]["value"] == record["value"] and "threshold" not in info
    validation = load_dataset(held_out).split_cases("validation")
    counts = np.array(
        [predict_image(model, zscore(case.load().image), "count").count for case in validation]
    )
    truth = np.array([case.count for case in validation])

    def accuracy(offset: float) -> float:
        return float(np.mean(np.maximum(np.floor(counts + offset), 0) == truth))

    best = max(accuracy(b) for b in DEFAULT_OFFSETS)
    assert record["metric_value"] == pytest.approx(best)
    assert record["value"] == min(b for b in DEFAULT_OFFSETS if accuracy(b) == best)


@pytest.mark.slow
def test_an_operating_point_tuned_for_best_does_not_apply_to_last(tuned_run):
    run, _, _ = tuned_run
    assert read_operating_point(run, run / "last.pt") is None
    _, _, info = load_run(run, "last")
    assert "operating_point" not in info
