"""A run folder is the one source of truth for how its maps become lesions: training's
validation, `tune`, `detect --run`, `evaluate --run` and `count --run` read the same
settings, score with the same function, and an explicit option overrides the run."""

from __future__ import annotations

import glob
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from weaklesion.bench.points import row_detector
from weaklesion.cli import app
from weaklesion.detection import fit_gaussians, read_detections_csv
from weaklesion.metrics import (
    evaluate_detections,
    froc_auc,
    froc_auc_ci,
    froc_curve,
    hits_by_score,
    match_points,
)
from weaklesion.scoring import LesionSettings, find_lesions, operating_curve
from weaklesion.targets import gaussian_heatmap
from weaklesion.training import TrainConfig, save_config
from weaklesion.training.data import TrainingCase, heatmap_scale
from weaklesion.training.loop import validate

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def make_run(folder, **config):
    """A run folder holding only its configuration, as `train` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    save_config(TrainConfig(spatial_dims=2, **config), folder / "config.toml")
    return folder


def grid_points(shape, spacing, margin):
    """Lesion centres on a jittered grid ``spacing`` voxels apart."""
    rng = np.random.default_rng(0)
    axes = [np.arange(margin, size - margin, spacing, dtype=float) for size in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(shape))
    return grid + rng.uniform(-0.3, 0.3, grid.shape)


# ---------------------------------------------------------------------- FROC and ties


def brute_force_froc(cases, max_fp):
    """FAUC by matching afresh the detections kept at every distinct threshold."""
    thresholds = np.unique(np.concatenate([s for _, s, _ in cases]))[::-1]
    n_truth = sum(len(t) for *_, t in cases)
    fp, sensitivity = [0.0], [0.0]
    for threshold in thresholds:
        matches = [match_points(p[s >= threshold], t, 2.0) for p, s, t in cases]
        fp.append(sum(m.fp for m in matches) / len(cases))
        sensitivity.append(sum(m.tp for m in matches) / n_truth)
    fp, sensitivity = np.array(fp), np.array(sensitivity)
    # Step curve: at each FP rate, the best sensitivity any threshold reaches there.
    grid = np.linspace(0, max_fp, 20001)[:-1] + max_fp / 40000
    best = [sensitivity[fp <= x].max() for x in grid]
    return float(np.mean(best)), fp, sensitivity


@pytest.mark.parametrize("seed", range(6))
def test_froc_with_many_tied_scores_equals_a_brute_force_threshold_sweep(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(5):
        truth = rng.uniform(0, 20, size=(int(rng.integers(1, 7)), 2))
        points = np.concatenate(
            [truth + rng.normal(0, 1.5, truth.shape), rng.uniform(0, 20, size=(6, 2))]
        )
        # Three score levels: most detections tie with others.
        cases.append((points, rng.choice([0.3, 0.7, 1.0], size=len(points)), truth))
    expected, fp, sensitivity = brute_force_froc(cases, max_fp=3.0)
    hits = [hits_by_score(p, s, t, 2.0) for p, s, t in cases]
    scores = [s for _, s, _ in cases]
    n_truth = [len(t) for *_, t in cases]
    curve = froc_curve(scores, hits, n_truth)
    np.testing.assert_allclose(curve.fp_per_image, fp)
    np.testing.assert_allclose(curve.sensitivity, sensitivity)
    area = froc_auc(curve.fp_per_image, curve.sensitivity, max_fp=3.0)
    assert area == pytest.approx(expected, abs=1e-4)
    assert froc_auc_ci(scores, hits, n_truth, 3.0, n_boot=10, seed=0).estimate == area
    report = evaluate_detections(
        {str(c): (p, s) for c, (p, s, _) in enumerate(cases)},
        {str(c): t for c, (*_, t) in enumerate(cases)},
        2.0,
        max_fp=3.0,
        n_boot=10,
    )
    assert report["fauc"]["estimate"] == pytest.approx(area)


def test_fitted_lesions_clipped_to_one_rank_by_their_unclipped_amplitude():
    # Fitted with a width above the peaks' own, every amplitude exceeds 1 and is clipped:
    # the scores all tie at 1, the amplitudes still rank the true lesions first.
    truth = grid_points((64, 64), 16, 8)
    heatmap = 1.6 * gaussian_heatmap(truth, (64, 64), 1.0, dtype=np.float64)
    false = grid_points((64, 64), 16, 16)[:4] + 0.0
    heatmap += 1.2 * gaussian_heatmap(false, (64, 64), 1.0, dtype=np.float64)
    found = fit_gaussians(heatmap, 1.5)
    assert np.all(found.scores == 1.0)
    amplitude = found.extras["amplitude"]
    assert np.all(np.diff(amplitude) <= 0)
    report = evaluate_detections(
        {"a": (found.points, found.scores)},
        {"a": truth},
        2.0,
        max_fp=2.0,
        n_boot=10,
        ranking={"a": amplitude},
    )
    tied = evaluate_detections(
        {"a": (found.points, found.scores)}, {"a": truth}, 2.0, max_fp=2.0, n_boot=10
    )
    # Ranked by amplitude the true lesions come first: full sensitivity at 0 FPs.
    assert report["fauc"]["estimate"] == pytest.approx(1.0)
    assert tied["fauc"]["estimate"] == 0.0
    assert report["detection"] == tied["detection"]


# ---------------------------------------------------------------------- validation


class Replay(nn.Module):
    """A 'network' whose output is its input: validation then scores the planted map."""

    def forward(self, x):
        return x * 1.0


def test_validation_and_detect_find_all_300_lesions_of_a_dense_image(tmp_path):
    sigma = 1.5
    truth = grid_points((228, 228), 12, 6)[:300]
    assert len(truth) == 300
    scale = heatmap_scale([sigma, sigma])
    peak_one = gaussian_heatmap(truth, (228, 228), sigma) * scale
    case = TrainingCase("dense", peak_one[None], np.ones(2), points=truth)
    config = TrainConfig(sigma=sigma, spatial_dims=2, match_distance=2.0)
    metrics = validate(Replay(), [case], config, scale)
    assert metrics["recall"] == 1.0 and metrics["f1"] == 1.0
    run = make_run(tmp_path / "run", sigma=sigma, match_distance=2.0)
    (run / "metrics.json").write_text(json.dumps({"best_threshold": metrics["threshold"]}))
    np.save(tmp_path / "dense_heatmap.npy", peak_one / scale)
    out = tmp_path / "lesions.csv"
    result = invoke("detect", tmp_path / "dense_heatmap.npy", "--run", run, "--out", out)
    assert result.exit_code == 0, result.output
    found = read_detections_csv(out)["dense"]
    assert match_points(found.points, truth, 2.0).tp == len(found) == 300


def flat_topped(shape=(40, 40)):
    """Probabilities flat at 1 inside two objects; each first maximum is on an edge."""
    probability = np.zeros(shape)
    centres = np.array([[10.0, 10.0], [28.0, 26.0]])
    yy, xx = np.indices(shape)
    for y, x in centres:
        probability[(yy - y) ** 2 + (xx - x) ** 2 <= 36] = 1.0
    return probability, centres


def test_segmentation_validation_scores_as_detect_and_evaluate(tmp_path):
    probability, centres = flat_topped()
    instances = (probability > 0) * (1 + (np.indices(probability.shape)[0] > 20))
    case = TrainingCase(
        "seg", probability[None].astype(np.float32), np.ones(2), centres, instances=instances
    )
    config = TrainConfig(labels="masks", spatial_dims=2, match_distance=2.0)

    class Probabilities(nn.Module):
        def forward(self, x):
            return torch.logit(x.clamp(1e-6, 1 - 1e-6))

    metrics = validate(Probabilities(), [case], config, 1.0)
    run = make_run(tmp_path / "run", labels="masks", match_distance=2.0)
    (run / "metrics.json").write_text(json.dumps({"best_threshold": metrics["threshold"]}))
    np.save(tmp_path / "seg_segmentation.npy", probability)
    found = detect_and_evaluate(tmp_path, tmp_path / "seg_segmentation.npy", run, {"seg": centres})
    assert found["detection"]["f1"] == pytest.approx(metrics["f1"], abs=1e-6)
    assert metrics["f1"] == 1.0


def detect_and_evaluate(folder, map_path, run, truth):
    """`detect --run` then `evaluate --run` with no other option; the evaluation report."""
    points = folder / "points.csv"
    rows = ["case,y,x"] + [f"{c},{y},{x}" for c, pts in truth.items() for y, x in pts]
    points.write_text("\n".join(rows) + "\n")
    (folder / "imagesTr").mkdir(exist_ok=True)
    for case in truth:
        np.save(folder / "imagesTr" / f"{case}_0000.npy", np.zeros((40, 40), np.float32))
    lesions, report = folder / "lesions.csv", folder / "report.json"
    result = invoke("detect", map_path, "--run", run, "--out", lesions)
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", lesions, "--truth", folder, "--run", run, "--out", report)
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


# ---------------------------------------------------------------------- the commands


def test_detect_places_segmentation_components_at_their_centre_of_mass(tmp_path):
    probability, centres = flat_topped()
    np.save(tmp_path / "case_segmentation.npy", probability)
    run = make_run(tmp_path / "run", labels="masks")
    out = tmp_path / "lesions.csv"
    result = invoke("detect", tmp_path / "case_segmentation.npy", "--run", run, "--out", out)
    assert result.exit_code == 0, result.output
    found = read_detections_csv(out)["case"].points
    np.testing.assert_allclose(found[np.argsort(found[:, 0])], centres, atol=1e-9)
    # The benchmark places segmentation components the same way.
    np.testing.assert_allclose(
        found, row_detector("components_centre", [probability])(0.5, 0), atol=1e-9
    )
    # The first maximum voxel is on each object's edge, 6 voxels from its centre.
    result = invoke(
        "detect", tmp_path / "case_segmentation.npy", "--run", run, "--location", "max",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    edges = read_detections_csv(out)["case"].points
    assert np.min(np.linalg.norm(edges - centres[:, None], axis=-1), axis=0).min() == 6.0
    assert "location max (option)" in result.output


def test_detect_run_fits_with_the_runs_fit_sigma(tmp_path):
    truth = grid_points((64, 64), 16, 8)
    heatmap = gaussian_heatmap(truth, (64, 64), 3.0)
    np.save(tmp_path / "case_heatmap.npy", heatmap)
    run = make_run(tmp_path / "run", sigma=2.0, fit_sigma=3.0)
    (run / "metrics.json").write_text(json.dumps({"best_threshold": 0.5}))
    out = tmp_path / "lesions.csv"
    result = invoke("detect", tmp_path / "case_heatmap.npy", "--run", run, "--out", out)
    assert result.exit_code == 0, result.output
    found = read_detections_csv(out)["case"]
    assert len(found) == len(truth)
    np.testing.assert_allclose(found.extras["amplitude"], 1.0, atol=0.02)
    assert "sigma 3.0 voxels (run config" in result.output
    assert "threshold 0.5 (training validation" in result.output


def test_evaluate_run_matches_within_the_runs_match_distance(tmp_path):
    truth = grid_points((64, 64), 16, 8)
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "imagesTr").mkdir()
    np.save(folder / "imagesTr" / "case_0000.npy", np.zeros((64, 64), np.float32))
    rows = ["case,y,x"] + [f"case,{y},{x}" for y, x in truth]
    (folder / "points.csv").write_text("\n".join(rows) + "\n")
    lesions = tmp_path / "lesions.csv"
    shifted = ["case,y,x,score"] + [f"case,{y + 5},{x},0.9" for y, x in truth]
    lesions.write_text("\n".join(shifted) + "\n")
    run = make_run(tmp_path / "run", match_distance=6.0)
    report = tmp_path / "report.json"
    result = invoke("evaluate", lesions, "--truth", folder, "--run", run, "--out", report)
    assert result.exit_code == 0, result.output
    settings = json.loads(report.read_text())["settings"]
    assert json.loads(report.read_text())["detection"]["f1"] == 1.0
    assert settings["max_distance"] == 6.0
    assert settings["sources"]["match_distance"].startswith("run config")
    result = invoke("evaluate", lesions, "--truth", folder, "--run", run, "--max-distance", 3)
    assert "F1 0.000" in result.output


def test_validation_operating_curve_is_evaluate_on_the_kept_detections():
    rng = np.random.default_rng(3)
    truth = [grid_points((48, 48), 12, 6) for _ in range(2)]
    maps = [
        gaussian_heatmap(t, (48, 48), 1.5, dtype=np.float64) * rng.uniform(0.2, 1.3, 1)
        + np.abs(rng.normal(0, 0.002, (48, 48)))
        for t in truth
    ]
    settings = LesionSettings(sigma=1.5, match_distance=2.0)
    curve = operating_curve(maps, truth, settings, thresholds=[0.1, 0.4, 0.8])
    f1 = curve.scores()["f1"]
    for k, threshold in enumerate(curve.values):
        found = {str(c): find_lesions(m, settings) for c, m in enumerate(maps)}
        report = evaluate_detections(
            {c: (f.points, f.scores) for c, f in found.items()},
            {str(c): t for c, t in enumerate(truth)},
            2.0,
            threshold=threshold,
            n_boot=10,
        )
        assert report["detection"]["f1"] == pytest.approx(f1[k], abs=1e-12)


# ---------------------------------------------------------------------- the 2D example


def readme_example():
    """The Python and shell blocks of the README's 2D example."""
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("### A 2D example", 1)[1].split("\n## ", 1)[0]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    shell = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return python, [shlex.split(line) for line in shell.splitlines() if line.strip()]


def run_command(words):
    assert words[0] == "weaklesion"
    args = []
    for word in words[1:]:
        args.extend(sorted(glob.glob(word)) if "*" in word else [word])
    result = invoke(*args)
    assert result.exit_code == 0, f"{' '.join(words)}\n{result.output}"
    return result.output


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_readme_2d_example_detects_and_evaluates_as_training_validated(
    tmp_path, monkeypatch, restore_threads
):
    python, commands = readme_example()
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "README.md", "exec"), {})
    outputs = [run_command(words) for words in commands]
    assert "no problems found" in outputs[0]
    test_report = json.loads((tmp_path / "metrics.json").read_text())
    assert test_report["fauc"]["estimate"] > 0
    assert test_report["settings"]["max_distance"] == 8.0
    predictions = json.loads((tmp_path / "maps" / "predictions.json").read_text())
    for entry in predictions["cases"].values():
        pmf = np.array(entry["count_distribution"]["pmf"])
        assert entry["count"] == pytest.approx(pmf @ np.arange(len(pmf)))
        assert "map_sum" in entry
    assert sorted(predictions["cases"]) == ["cell_10", "cell_11"]

    # Training's last validation, and detect / evaluate --run on the same cases.
    last = json.loads((tmp_path / "runs/cells/history.jsonl").read_text().splitlines()[-1])
    run_command(
        shlex.split("weaklesion predict cells --split validation --run runs/cells --out val")
    )
    run_command(["weaklesion", "detect", "val/*_heatmap.nii.gz", "--run", "runs/cells",
                 "--out", "val.csv"])  # fmt: skip
    run_command(shlex.split(
        "weaklesion evaluate val.csv --truth cells --split validation --run runs/cells "
        "--out val.json"
    ))  # fmt: skip
    report = json.loads((tmp_path / "val.json").read_text())
    assert report["detection"]["f1"] == pytest.approx(last["val_f1"], abs=1e-6)
    assert report["detection"]["recall"] == pytest.approx(last["val_recall"], abs=1e-6)
    assert report["settings"]["threshold"] == last["val_threshold"]
    assert report["fauc"]["estimate"] > 0


# ---------------------------------------------------------------------- help and check


def test_every_help_shows_its_defaults():
    root = typer.main.get_command(app)

    def commands(group, path):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from commands(command, [*path, name])
            else:
                yield [*path, name], command

    for path, command in commands(root, []):
        shown = " ".join(invoke(*path, "--help").output.split())
        for param in command.params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            help_text = " ".join((param.help or "").split())
            assert help_text in shown, (path, param.name)
            if param.default is not None and not param.is_flag:
                default = param.default
                if isinstance(default, list | tuple):
                    continue
                assert f"[default: {default}]" in shown, (path, param.name)


def test_check_names_the_dataset_and_says_once_how_2d_points_are_written(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "imagesTr").mkdir()
    rows = ["case,z,y,x"]
    for i in range(5):
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "imagesTr" / f"c{i}_0000.png")
        rows.append(f"c{i},0,5,5")
    (tmp_path / "points.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    result = invoke("check", ".")
    assert result.exit_code == 2
    assert result.output.count("case,y,x") == 1
    assert "5 case(s)" in result.output
    assert f"{tmp_path}: 1 problem(s) found" in result.output
    (tmp_path / "points.csv").write_text("case,y,x\n" + "".join(f"c{i},5,5\n" for i in range(5)))
    result = invoke("check", ".")
    assert result.exit_code == 0
    assert f"{tmp_path}: no problems found" in result.output


def test_count_run_counts_the_fitted_lesions_of_a_heatmap_run(tmp_path):
    truth = grid_points((64, 64), 16, 8)
    heatmap = 0.8 * gaussian_heatmap(truth, (64, 64), 3.0, dtype=np.float64)
    np.save(tmp_path / "case_heatmap.npy", heatmap)
    run = make_run(tmp_path / "run", sigma=2.0, fit_sigma=3.0)
    out = tmp_path / "counts.json"
    result = invoke("count", tmp_path / "case_heatmap.npy", "--run", run, "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["settings"]["count"] == "fitted lesions"
    assert record["case"]["mean"] == pytest.approx(0.8 * len(truth), abs=0.05)
    pmf = np.array(record["case"]["pmf"])
    # Poisson-binomial of n lesions of probability 0.8 each: binomial(n, 0.8).
    from scipy.stats import binom

    n = len(truth)
    np.testing.assert_allclose(pmf, binom.pmf(range(n + 1), n, 0.8), atol=1e-3)


def test_run_settings_take_the_tuned_operating_point_and_its_detector(tmp_path):
    import hashlib

    from weaklesion.tuning import run_settings

    run = make_run(tmp_path / "run", labels="masks", match_distance=5.0)
    settings = run_settings(run)
    assert (settings.method, settings.location, settings.threshold) == (
        "components",
        "center_of_mass",
        None,
    )
    assert settings.sources["location"] == f"run config ({run / 'config.toml'})"
    (run / "best.pt").write_bytes(b"weights")
    record = {
        "parameter": "threshold",
        "value": 0.3,
        "detector": {"location": "max", "max_lesions": 50},
        "matching": {"max_distance": 4.0},
        "run": {"checkpoint": "best.pt", "sha256": hashlib.sha256(b"weights").hexdigest()},
    }
    (run / "operating_point.json").write_text(json.dumps(record))
    (run / "metrics.json").write_text(json.dumps({"best_threshold": 0.7}))
    tuned = run_settings(run)
    assert (tuned.threshold, tuned.location, tuned.max_lesions) == (0.3, "max", 50)
    assert tuned.match_distance == 4.0
    assert (
        tuned.sources["threshold"].startswith("tuned")
        and tuned.sources["location"] == (tuned.sources["threshold"])
    )
    (run / "operating_point.json").unlink()
    assert run_settings(run).threshold == 0.7
    assert run_settings(run).sources["threshold"].startswith("training validation")
