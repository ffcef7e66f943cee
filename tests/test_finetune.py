"""Baselines and transfer through the command line, in 3D and 2D: distance maps, heatmaps
and segmentations detect lesions by connected components; a point-trained model is
fine-tuned on a seeded fraction of the masks, starting from its exact weights."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.detection import component_detections, read_detections_csv
from weaklesion.io import read_image, write_image, write_points_csv
from weaklesion.training import TrainConfig, load_run
from weaklesion.training.checkpoint import load_checkpoint, save_checkpoint
from weaklesion.training.data import labelled_subset, load_training_cases
from weaklesion.training.finetune import finetune

TINY_UNET = "model_kwargs.features=[4, 8, 16]"
runner = CliRunner()


def invoke(*args) -> str:
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def train(data, run, labels, *settings):
    settings = ("epochs=1", "num_threads=1", "device=cpu", TINY_UNET, *settings)
    options = [item for setting in settings for item in ("--set", setting)]
    invoke("train", data, "--labels", labels, "--out", run, *options)
    return run


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """8 phantom volumes of 16×32×32: 6 training, 1 validation, 1 test case."""
    root = tmp_path_factory.mktemp("finetune") / "phantom"
    invoke("synth", "phantom", "--out", root, "--cases", 8, "--shape", "16,32,32", "--seed", 3)
    return root


@pytest.fixture(scope="module")
def heatmap_run(phantom, tmp_path_factory):
    return train(phantom, tmp_path_factory.mktemp("heatmap") / "run", "points")


@pytest.fixture(scope="module")
def plane_dataset(tmp_path_factory):
    """Eight 2D cases of 32×32 (NumPy files), two bright square lesions each, no split."""
    root = tmp_path_factory.mktemp("plane")
    rng = np.random.default_rng(0)
    points = {}
    for i in range(8):
        image = rng.normal(0, 0.1, (32, 32)).astype(np.float32)
        mask = np.zeros((32, 32), np.int16)
        centres = [(rng.integers(4, 12), rng.integers(4, 28)), (rng.integers(20, 28), 16)]
        for label, (y, x) in enumerate(centres, start=1):
            mask[y - 1 : y + 2, x - 1 : x + 2] = label
        image[mask > 0] += 2.0
        write_image(root / "imagesTr" / f"plane_{i}_0000.npy", image, np.eye(3))
        write_image(root / "labelsTr" / f"plane_{i}.npy", mask, np.eye(3))
        points[f"plane_{i}"] = np.array(centres, dtype=float)
    write_points_csv(root / "points.csv", points)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "x"}}))
    return root


def predict_and_detect(data, run, tmp_path, threshold):
    """Predict every case through the CLI, detect components at ``threshold``, and check
    the written detections against component_detections of the written maps."""
    maps = tmp_path / f"{run.name}_maps"
    invoke("predict", data, "--run", run, "--out", maps, "--device", "cpu")
    kind = json.loads((maps / "predictions.json").read_text())["kind"]
    files = sorted(p for p in maps.iterdir() if p.name.split(".")[0].endswith(f"_{kind}"))
    assert files
    out = tmp_path / f"{run.name}_lesions.csv"
    invoke("detect", *files, "--method", "components", "--threshold", threshold, "--out", out)
    found = read_detections_csv(out)
    for path in files:
        case = path.name.split(".")[0].removesuffix(f"_{kind}")
        expected = component_detections(read_image(path)[0], threshold)
        got = found.get(case)
        np.testing.assert_allclose(
            got.points if got is not None else np.zeros((0, expected.spatial_dims)),
            expected.points,
        )
    report = tmp_path / f"{run.name}_metrics.json"
    invoke("evaluate", out, "--truth", data, "--out", report)
    assert 0 <= json.loads(report.read_text())["detection"]["f1"] <= 1
    return kind, files


def tuned_threshold(run) -> float:
    return json.loads((run / "metrics.json").read_text())["best_threshold"]


# ----------------------------------------------------------------- baselines, 3D and 2D


@pytest.mark.slow
@pytest.mark.parametrize("target", ["euclidean", "geodesic"])
def test_distance_map_baselines_detect_components_at_the_tuned_threshold(phantom, tmp_path, target):
    run = train(phantom, tmp_path / target, "points", f"target={target}")
    threshold = tuned_threshold(run)
    assert 0 < threshold < 1
    kind, files = predict_and_detect(phantom, run, tmp_path, threshold)
    assert kind == target and len(files) == 8


@pytest.mark.slow
def test_heatmap_and_segmentation_baselines_detect_components(phantom, heatmap_run, tmp_path):
    scale = json.loads((heatmap_run / "metrics.json").read_text())["heatmap_scale"]
    # Half the peak of an isolated mass-1 Gaussian: 0.5 on the network's peak-1 scale.
    kind, _ = predict_and_detect(phantom, heatmap_run, tmp_path, 0.5 / scale)
    assert kind == "heatmap"
    run = train(phantom, tmp_path / "segmentation", "masks")
    kind, files = predict_and_detect(phantom, run, tmp_path, 0.5)
    assert kind == "segmentation"
    assert all(0 <= read_image(f)[0].min() and read_image(f)[0].max() <= 1 for f in files)


@pytest.mark.slow
def test_finetune_through_the_cli_uses_one_percent_of_the_masks(phantom, heatmap_run, tmp_path):
    run = tmp_path / "transfer"
    output = invoke(
        "finetune",
        phantom,
        "--from",
        heatmap_run,
        "--mask-fraction",
        0.01,
        "--epochs",
        1,
        "--out",
        run,
    )
    assert "fine-tuned" in output
    state = load_checkpoint(run / "last.pt")
    training = json.loads((phantom / "dataset.json").read_text())["split"]["training"]
    assert state["info"]["train_cases"] == labelled_subset(training, 0.01, seed=0)
    assert len(state["info"]["train_cases"]) == 1
    assert state["config"]["init_from"] == str((heatmap_run / "best.pt").resolve())
    assert (state["config"]["target"], state["config"]["freeze_encoder"]) == ("segmentation", False)
    kind, _ = predict_and_detect(phantom, run, tmp_path, 0.5)
    assert kind == "segmentation"


@pytest.mark.slow
def test_plane_dataset_baselines_and_decoder_only_finetune(plane_dataset, tmp_path):
    euclidean = train(plane_dataset, tmp_path / "euclidean", "points", "target=euclidean")
    kind, files = predict_and_detect(plane_dataset, euclidean, tmp_path, tuned_threshold(euclidean))
    assert kind == "euclidean" and all(f.suffix == ".npy" for f in files)
    heatmap = train(plane_dataset, tmp_path / "heatmap", "points")
    run = tmp_path / "transfer"
    invoke(
        "finetune",
        plane_dataset,
        "--from",
        heatmap,
        "--mask-fraction",
        0.5,
        "--decoder-only",
        "--epochs",
        1,
        "--out",
        run,
    )
    source, _, _ = load_run(heatmap)
    tuned, config, info = load_run(run, "last")
    assert config.spatial_dims == 2 and config.freeze_encoder
    for (name, before), after in zip(
        source.state_dict().items(), tuned.state_dict().values(), strict=True
    ):
        if name.startswith("encoder."):
            assert torch.equal(before, after), name
    assert len(info["train_cases"]) == 3  # half of the 6 cases left after validation
    kind, _ = predict_and_detect(plane_dataset, run, tmp_path, 0.5)
    assert kind == "segmentation"


# ------------------------------------------------------------------------ fine-tuning


@pytest.mark.slow
@pytest.mark.parametrize("part", ["all", "decoder"])
def test_finetune_starts_from_the_source_weights_exactly(phantom, heatmap_run, tmp_path, part):
    result = finetune(
        heatmap_run, phantom, tmp_path / "run", part=part, max_epochs=0, progress=False
    )
    source, _, _ = load_run(heatmap_run)
    start = result.model.state_dict()
    assert start.keys() == source.state_dict().keys()
    for name, value in source.state_dict().items():
        assert torch.equal(start[name], value), name


@pytest.mark.slow
def test_decoder_only_training_leaves_the_encoder_bitwise_unchanged(phantom, heatmap_run, tmp_path):
    result = finetune(
        heatmap_run,
        phantom,
        tmp_path / "run",
        mask_fraction=0.5,
        part="decoder",
        epochs=2,
        progress=False,
    )
    source = load_run(heatmap_run)[0].state_dict()
    trained = load_run(result.run_dir, "last")[0].state_dict()
    encoder = [name for name in source if name.startswith("encoder.")]
    others = [name for name in source if not name.startswith("encoder.")]
    assert encoder and others
    assert all(torch.equal(source[name], trained[name]) for name in encoder)
    assert sum(not torch.equal(source[name], trained[name]) for name in others) == len(others)


@pytest.mark.slow
def test_whole_network_finetuning_changes_the_encoder_too(phantom, heatmap_run, tmp_path):
    result = finetune(heatmap_run, phantom, tmp_path / "run", part="all", epochs=1, progress=False)
    source = load_run(heatmap_run)[0].state_dict()
    trained = load_run(result.run_dir, "last")[0].state_dict()
    changed = [
        n for n in source if n.startswith("encoder.") and not torch.equal(source[n], trained[n])
    ]
    assert changed


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.01, 1), (0.2, 1), (0.25, 2), (0.5, 3), (1.0, 6)]
)
def test_mask_fraction_picks_the_number_of_cases_by_seed(phantom, fraction, expected):
    config = TrainConfig(labels="masks", label_fraction=fraction, seed=4)
    train_cases, val_cases, _ = load_training_cases(phantom, config)
    names = [case.name for case in train_cases]
    assert len(names) == expected
    assert [case.name for case in val_cases] == ["phantom_006"]  # the dataset's split
    training = [f"phantom_{i:03d}" for i in range(6)]
    assert names == labelled_subset(training, fraction, seed=4)
    again, _, _ = load_training_cases(phantom, config)
    assert [case.name for case in again] == names


def test_labelled_subset_is_a_seeded_draw_of_the_rounded_size():
    names = [f"case_{i:02d}" for i in range(40)]
    draws = {tuple(labelled_subset(names, 0.1, seed)) for seed in range(20)}
    assert all(len(draw) == 4 and set(draw) <= set(names) for draw in draws)
    assert len(draws) > 10  # different seeds, different cases
    assert all(list(draw) == sorted(draw) for draw in draws)  # the given order is kept
    assert labelled_subset(names, 0.1, 7) == labelled_subset(names, 0.1, 7)
    assert labelled_subset(names, 0.0125, 3) != [] and labelled_subset([], 0.5, 0) == []
    # Every case is equally likely to be drawn.
    hits = np.zeros(len(names))
    for seed in range(400):
        hits[[names.index(n) for n in labelled_subset(names, 0.1, seed)]] += 1
    assert hits.min() > 15 and hits.max() < 65  # 40 expected each


@pytest.mark.slow
def test_finetune_refuses_bad_input_in_one_line(phantom, heatmap_run, tmp_path):
    with pytest.raises(ValueError, match=r"^mask_fraction: got 0"):
        finetune(heatmap_run, phantom, tmp_path / "a", mask_fraction=0)
    with pytest.raises(ValueError, match=r"^part: got 'encoder'"):
        finetune(heatmap_run, phantom, tmp_path / "a", part="encoder")
    counts = tmp_path / "counts"
    save_checkpoint(
        counts / "best.pt",
        {"format": 1, "config": dataclasses.asdict(TrainConfig(labels="counts"))},
    )
    with pytest.raises(ValueError, match="trained a 'count' model"):
        finetune(counts, phantom, tmp_path / "a")
    with pytest.raises(ValueError, match=r"^init_from: .*another network") as error:
        finetune(
            heatmap_run,
            phantom,
            tmp_path / "b",
            overrides=["model_kwargs.features=[4, 8]"],
            progress=False,
        )
    assert "\n" not in str(error.value)
    result = runner.invoke(
        app,
        ["finetune", str(phantom), "--from", str(tmp_path / "none"), "--out", str(tmp_path / "c")],
    )
    assert result.exit_code == 2 and result.output.startswith("error:")
    assert not (tmp_path / "c").exists()
