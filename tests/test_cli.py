"""The command line end to end: each label type trains, predicts and is read back; bad
input is refused with one line, a non-zero exit and no partial output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.detection import read_detections_csv
from weaklesion.io import read_image, write_image

runner = CliRunner()

TINY_UNET = "model_kwargs.features=[4, 8, 16, 32, 64]"


def invoke(*args: str):
    result = runner.invoke(app, [str(arg) for arg in args])
    return result


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "phantom"
    result = invoke(
        "synth", "phantom", "--out", root, "--cases", 12, "--shape", "16,32,32", "--seed", 3
    )
    assert result.exit_code == 0, result.output
    return root


def train(phantom, run, labels, *settings):
    result = invoke(
        "train",
        phantom,
        "--labels",
        labels,
        "--out",
        run,
        "--set",
        "num_threads=1",
        *[item for setting in settings for item in ("--set", setting)],
    )
    assert result.exit_code == 0, result.output
    assert (run / "best.pt").exists() and (run / "config.toml").exists()
    return run


def test_check_accepts_the_phantom(phantom):
    result = invoke("check", phantom)
    assert result.exit_code == 0
    assert "no problems" in result.output


@pytest.mark.slow
def test_points_heatmap_model_then_predict_detect_evaluate(phantom, tmp_path):
    run = train(phantom, tmp_path / "run", "points", "epochs=3", "sigma=1.5", TINY_UNET)
    maps = tmp_path / "maps"
    assert invoke("predict", phantom, "--run", run, "--out", maps).exit_code == 0
    heatmaps = sorted(maps.glob("*_heatmap.nii.gz"))
    assert len(heatmaps) == 12
    values, affine = read_image(heatmaps[0])
    _, image_affine = read_image(next((phantom / "imagesTr").glob("phantom_000_0000.nii.gz")))
    assert values.shape == (16, 32, 32)
    np.testing.assert_allclose(affine, image_affine)

    detections = tmp_path / "lesions.csv"
    result = invoke("detect", *heatmaps, "--sigma", 1.5, "--out", detections)
    assert result.exit_code == 0, result.output
    found = read_detections_csv(detections)
    assert set(found) <= {path.name.removesuffix("_heatmap.nii.gz") for path in heatmaps}

    report = tmp_path / "metrics.json"
    result = invoke("evaluate", detections, "--truth", phantom, "--out", report)
    assert result.exit_code == 0, result.output
    metrics = json.loads(report.read_text())
    assert 0.0 <= metrics["detection"]["f1"] <= 1.0
    assert metrics["settings"]["detections"] == str(detections)
    assert metrics["detection"]["n_cases"] == len(found)


@pytest.mark.slow
def test_counts_gpunet_count_correlates_with_truth_on_held_out_cases(tmp_path):
    data = tmp_path / "counts"
    result = invoke(
        "synth", "phantom", "--out", data, "--cases", 40, "--shape", "16,32,32", "--seed", 5
    )
    assert result.exit_code == 0, result.output
    run = train(data, tmp_path / "run", "counts", "epochs=12", "lr=0.003", "model_kwargs.filters=8")
    maps = tmp_path / "maps"
    assert invoke("predict", data, "--run", run, "--out", maps).exit_code == 0
    summary = json.loads((maps / "predictions.json").read_text())
    split = json.loads((data / "dataset.json").read_text())["split"]
    held_out = split["validation"] + split["test"]
    counts = {
        row["case"]: int(row["count"])
        for row in map(
            lambda line: dict(zip(("case", "count"), line.split(","), strict=True)),
            (data / "counts.csv").read_text().splitlines()[1:],
        )
    }
    predicted = [summary["cases"][case]["count"] for case in held_out]
    truth = [counts[case] for case in held_out]
    assert np.corrcoef(predicted, truth)[0, 1] > 0.5
    attention = sorted(maps.glob("*_count.nii.gz"))
    assert len(attention) == 40


@pytest.mark.slow
def test_masks_segmentation_then_count(phantom, tmp_path):
    run = train(phantom, tmp_path / "run", "masks", "epochs=2", TINY_UNET)
    maps = tmp_path / "maps"
    assert invoke("predict", phantom, "--run", run, "--out", maps).exit_code == 0
    probabilities = sorted(maps.glob("*_segmentation.nii.gz"))
    assert len(probabilities) == 12
    out = tmp_path / "counts.json"
    result = invoke("count", *probabilities[:3], "--out", out)
    assert result.exit_code == 0, result.output
    counts = json.loads(out.read_text())
    for path in probabilities[:3]:
        pmf = counts[path.name.removesuffix("_segmentation.nii.gz")]["pmf"]
        assert abs(sum(pmf) - 1.0) < 1e-9


@pytest.mark.slow
def test_masks_and_counts_multitask(phantom, tmp_path):
    run = train(
        phantom,
        tmp_path / "run",
        "masks+counts",
        "epochs=3",
        "count_warmup_epochs=1",
        "count_ramp_epochs=1",
        TINY_UNET,
    )
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3
    maps = tmp_path / "maps"
    assert invoke("predict", phantom, "--run", run, "--out", maps).exit_code == 0
    assert len(sorted(maps.glob("*_segmentation.nii.gz"))) == 12


def test_count_reads_nnunet_probabilities(tmp_path):
    probabilities = np.zeros((2, 8, 16, 16), np.float32)
    probabilities[1, 2, 3, 3] = 0.9
    probabilities[1, 5, 10, 10] = 0.5
    probabilities[0] = 1 - probabilities[1]
    path = tmp_path / "case_001.npz"
    np.savez(path, probabilities=probabilities)
    out = tmp_path / "counts.json"
    result = invoke("count", path, "--out", out)
    assert result.exit_code == 0, result.output
    pmf = json.loads(out.read_text())["case_001"]["pmf"]
    np.testing.assert_allclose(pmf, [0.1 * 0.5, 0.9 * 0.5 + 0.1 * 0.5, 0.45], atol=1e-6)


def test_detect_finds_planted_gaussians_in_a_nifti_map(tmp_path):
    from weaklesion.targets import gaussian_heatmap

    points = np.array([[5.0, 8.0, 8.0], [10.0, 20.0, 22.0]])
    heatmap = gaussian_heatmap(points, (16, 32, 32), 1.5)
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    write_image(tmp_path / "case.nii.gz", heatmap, affine)
    out = tmp_path / "found.csv"
    result = invoke("detect", tmp_path / "case.nii.gz", "--sigma", 1.5, "--out", out)
    assert result.exit_code == 0, result.output
    found = read_detections_csv(out)["case"].above(0.5)
    order = np.argsort(found.points[:, 0])
    np.testing.assert_allclose(found.points[order], points, atol=0.05)
    rows = out.read_text().splitlines()
    assert rows[0].split(",")[4:7] == ["world_x_mm", "world_y_mm", "world_z_mm"]


# Bad input: one line, non-zero exit, nothing half-written.


def test_missing_map_is_one_line_error(tmp_path):
    result = invoke("count", tmp_path / "missing.nii.gz")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "missing.nii.gz" in result.output


def test_map_with_nan_is_refused_and_no_output_written(tmp_path):
    values = np.zeros((8, 8, 8), np.float32)
    values[1, 1, 1] = np.nan
    np.save(tmp_path / "bad.npy", values)
    out = tmp_path / "found.csv"
    result = invoke("detect", tmp_path / "bad.npy", "--out", out)
    assert result.exit_code == 2
    assert "NaN" in result.output
    assert not out.exists()


def test_failed_command_keeps_the_previous_output(tmp_path):
    out = tmp_path / "counts.json"
    out.write_text('{"kept": true}')
    np.save(tmp_path / "bad.npy", np.full((4, 4, 4), 1.5, np.float32))
    result = invoke("count", tmp_path / "bad.npy", "--out", out)
    assert result.exit_code == 2
    assert "[0, 1]" in result.output
    assert json.loads(out.read_text()) == {"kept": True}


def test_train_refuses_a_broken_dataset_before_any_work(phantom, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(phantom, broken)
    (broken / "counts.csv").write_text("case,count\nphantom_000,-1\n")
    run = tmp_path / "run"
    result = invoke("train", broken, "--labels", "counts", "--out", run)
    assert result.exit_code == 2
    assert "counts.csv" in result.output
    assert not (run / "last.pt").exists()


def test_bad_override_names_the_key(phantom, tmp_path):
    result = invoke("train", phantom, "--out", tmp_path / "run", "--set", "epochs=ten")
    assert result.exit_code == 2
    assert "epochs" in result.output


def test_check_reports_every_problem_and_fails(phantom, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(phantom, broken)
    (broken / "imagesTr" / "phantom_001_0001.nii.gz").unlink()
    (broken / "counts.csv").write_text("case,count\nphantom_000,2.5\nghost,1\n")
    result = invoke("check", broken)
    assert result.exit_code == 2
    assert "phantom_001_0001" in result.output
    assert "2.5" in result.output
    assert "ghost" in result.output


@pytest.mark.slow
def test_real_process_prints_no_traceback(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "weaklesion.cli", "count", str(tmp_path / "nope.npy")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    assert process.stderr.strip() == f"error: {tmp_path / 'nope.npy'}: no such file"
    assert len(process.stderr.strip().splitlines()) == 1
