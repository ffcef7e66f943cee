"""Training: configuration, data, objectives, the loop per label type, checkpoints, resume."""

from __future__ import annotations

import json
import math
import shutil
import tomllib

import cc3d
import numpy as np
import pytest
import torch

from weaklesion.inference import predict_image
from weaklesion.targets import gaussian_heatmap
from weaklesion.training import TrainConfig, load_config, load_run, loop, save_config, train
from weaklesion.training.checkpoint import build_model_for, load_checkpoint, save_checkpoint
from weaklesion.training.data import (
    LesionDataset,
    TrainingCase,
    collate,
    epoch_batches,
    heatmap_scale,
    load_training_cases,
)
from weaklesion.training.loop import ema_decay_at, learning_rate, update_average, validate
from weaklesion.training.objectives import (
    count_weight_at,
    foreground_weights,
    objective_for,
    weighted_bce,
    weighted_mse,
)

TINY_UNET = {"features": [4, 8, 16]}
TINY_GPUNET = {"filters": 4}


@pytest.fixture(scope="module")
def phantom(phantom_dataset):
    """8 phantom cases of 16×32×32: 6 for training, 2 for validation."""
    return phantom_dataset(n_cases=8, seed=3, shape=(16, 32, 32), splits=(6, 2, 0))


def tiny_config(labels: str, **changes) -> TrainConfig:
    values = {
        "labels": labels,
        "model_kwargs": TINY_GPUNET if labels == "counts" else TINY_UNET,
        "epochs": 4,
        "lr": 3e-3,
        "num_threads": 1,
        "count_warmup_epochs": 1,
        "count_ramp_epochs": 2,
        "device": "cpu",
    }
    values.update(changes)
    return TrainConfig(**values)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["epoch=3"], "epoch"),
        (["lr=fast"], "lr"),
        (["epochs=2.5"], "epochs"),
        (["augment=1"], "augment"),
        (["patch_size=16"], "patch_size"),
        ({"batch_size": "2"}, "batch_size"),
        (["model_kwargs=4"], "model_kwargs"),
        (["labels=dots"], "labels"),
        (["labels=counts", "target=heatmap"], "target"),
        (["lr_schedule=linear"], "lr_schedule"),
        (["val_every=0"], "val_every"),
        (["affine_probability=1.5"], "affine_probability"),
    ],
)
def test_bad_override_is_one_line_error_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"\b{key}\b") as error:
        load_config(None, overrides)
    assert "\n" not in str(error.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('labels = "points"\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match=r"config\.toml: unknown key 'learning_rate'"):
        load_config(path)


def test_overrides_are_parsed_as_toml_and_checked():
    config = load_config(
        None, ["epochs=7", "lr=1e-2", "patch_size=[8, 16, 16]", "model_kwargs.dropout=0.2"]
    )
    assert (config.epochs, config.lr, config.patch_size) == (7, 0.01, [8, 16, 16])
    assert config.model_kwargs == {"dropout": 0.2}
    assert load_config(None, {"sigma": 2}).sigma == 2.0  # an int is a valid float


def test_defaults_follow_from_labels():
    expected = {
        "points": ("heatmap", "unet"),
        "counts": ("count", "gpunet"),
        "masks": ("segmentation", "unet"),
        "masks+counts": ("segmentation", "unet"),
    }
    for labels, (target, model) in expected.items():
        config = TrainConfig(labels=labels)
        assert (config.target, config.model) == (target, model)


def test_config_file_round_trip(tmp_path):
    config = TrainConfig(
        labels="masks+counts",
        model_kwargs={"features": [4, 8], "dropout": 0.25, "norm": "instance"},
        patch_size=[8, 16, 16],
        lr=2.5e-4,
        augment=False,
    )
    path = save_config(config, tmp_path / "config.toml")
    tomllib.loads(path.read_text())  # valid TOML
    assert load_config(path) == config


# --------------------------------------------------------------------------- objectives


def test_weighted_mse_and_foreground_weights_by_hand():
    target = torch.tensor([[0.0, 0.02, 0.5, 1.0]])
    prediction = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    weight = foreground_weights(target, 21.0, threshold=0.05)
    assert weight.tolist() == [[1.0, 1.0, 21.0, 21.0]]
    # (1 * 1 + 1 * 0.0004 + 21 * 0.25 + 0) / 4 voxels
    expected = (1.0 + 0.0004 + 21 * 0.25) / 4
    assert weighted_mse(prediction, target, weight).item() == pytest.approx(expected)
    inside = foreground_weights(target, 21.0, mask=torch.tensor([[1, 1, 0, 0]]))
    assert weighted_mse(prediction, target, inside).item() == pytest.approx(1.0004 / 2)


def test_weighted_bce_matches_its_formula():
    logits = torch.tensor([[-2.0, 0.5, 3.0]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    expected = -(3 * target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert weighted_bce(logits, target, 3.0).item() == pytest.approx(expected.item())


def test_count_weight_warm_up_then_linear_ramp():
    weights = [count_weight_at(e, 2.0, warmup_epochs=3, ramp_epochs=2) for e in range(7)]
    assert weights == [0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0]
    assert count_weight_at(0, 2.0, warmup_epochs=0, ramp_epochs=0) == 2.0


def test_multitask_objective_adds_the_count_loss_after_warm_up():
    config = tiny_config("masks+counts", spatial_dims=2, count_warmup_epochs=1, count_weight=1.0)
    model = torch.nn.Conv2d(1, 1, 1)
    image = torch.zeros(1, 1, 6, 6)
    image[0, 0, 2, 2] = 1.0
    batch = {"image": image, "target": image.clone(), "count": torch.tensor([1.0])}
    warm_up, logs_warm = objective_for(config)(model, batch, 0)
    ramped, logs_ramped = objective_for(config)(model, batch, 1)
    assert "count_nll" not in logs_warm and logs_warm["count_weight"] == 0.0
    assert logs_ramped["count_weight"] == 0.5
    assert ramped.item() == pytest.approx(warm_up.item() + 0.5 * logs_ramped["count_nll"])


# --------------------------------------------------------------------------- data


def test_epoch_batches_deal_every_sample_once_per_epoch():
    for world_size in (1, 2, 3):
        shards = [epoch_batches(11, 2, 5, 7, rank, world_size) for rank in range(world_size)]
        assert len({len(batches) for batches in shards}) == 1  # same steps on every rank
        dealt = np.concatenate([np.concatenate(b) for b in shards])
        assert set(dealt.tolist()) == set(range(11))
        assert len(dealt) == math.ceil(11 / world_size) * world_size
    first = np.concatenate(epoch_batches(11, 2, 5, 7))
    assert np.array_equal(first, np.concatenate(epoch_batches(11, 2, 5, 7)))
    assert not np.array_equal(first, np.concatenate(epoch_batches(11, 2, 5, 8)))


def _case_with_target_as_image(shape=(16, 24, 24)) -> TrainingCase:
    """A case whose second image channel equals its heatmap target (peak-1 scale)."""
    points = np.array([[7.0, 8.0, 9.0], [8.0, 15.0, 14.0]])
    target = gaussian_heatmap(points, shape, 1.5) * heatmap_scale([1.5] * 3)
    noise = np.random.default_rng(0).normal(size=shape)
    image = np.stack([noise, target]).astype(np.float32)
    instances = np.zeros(shape, np.int32)
    instances[6:9, 7:10, 8:11] = 1
    instances[7:10, 14:17, 13:16] = 2
    return TrainingCase("a", image, np.ones(3), points, 2, instances)


def test_heatmap_target_peaks_at_one_and_keeps_mass_one():
    case = _case_with_target_as_image()
    config = tiny_config("points", sigma=1.5, augment=False)
    scale = heatmap_scale([1.5] * 3)
    assert scale == pytest.approx((2 * math.pi) ** 1.5 * 1.5**3)
    sample = LesionDataset([case], config, scale)[0]
    target = sample["target"][0].numpy()
    assert target[7, 8, 9] == pytest.approx(1.0, abs=1e-5)  # a point on a voxel centre
    assert target.sum() / scale == pytest.approx(2.0, abs=1e-4)  # two lesions of mass 1


@pytest.mark.parametrize("patch_size", [None, [8, 16, 16]])
def test_augmentation_and_patches_move_image_and_target_together(patch_size):
    case = _case_with_target_as_image()
    config = tiny_config("points", sigma=1.5, augment=True, patch_size=patch_size)
    dataset = LesionDataset([case], config, heatmap_scale([1.5] * 3))
    changed = 0
    for epoch in range(6):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        expected_shape = tuple(patch_size or case.image.shape[1:])
        assert tuple(sample["target"].shape[1:]) == expected_shape
        torch.testing.assert_close(sample["image"][1], sample["target"][0])
        changed += not torch.equal(sample["target"][0], torch.from_numpy(case.image[1]))
    assert changed >= 3  # most epochs flip, rotate or crop something


def test_flips_only_augmentation_is_a_flip_of_the_sample():
    case = _case_with_target_as_image()
    config = tiny_config("points", sigma=1.5, augment=True, affine_probability=0.0)
    dataset = LesionDataset([case], config, heatmap_scale([1.5] * 3))
    original = torch.from_numpy(case.image)
    flips = [[a for a in (1, 2, 3) if mask >> (a - 1) & 1] for mask in range(8)]
    seen = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        image = dataset[0]["image"]
        matching = [i for i, axes in enumerate(flips) if torch.equal(image, original.flip(axes))]
        assert len(matching) == 1, epoch  # a flip, never resampled
        seen.add(matching[0])
    assert len(seen) >= 4


def test_samples_depend_only_on_seed_epoch_and_index():
    case = _case_with_target_as_image()
    config = tiny_config("masks+counts", augment=True, patch_size=[8, 16, 16])
    first, second = LesionDataset([case], config), LesionDataset([case], config)
    first.set_epoch(3)
    second.set_epoch(1)
    _ = second[0]
    second.set_epoch(3)
    for key, value in first[0].items():
        assert torch.equal(value, second[0][key]), key
    second.set_epoch(4)
    assert not torch.equal(first[0]["image"], second[0]["image"])


def test_masks_counts_sample_count_is_the_lesions_left_in_the_patch():
    case = _case_with_target_as_image()
    config = tiny_config("masks+counts", augment=False, patch_size=[16, 12, 24])
    dataset = LesionDataset([case], config)
    seen = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        # The segmentation target is binary; its 6-connected components are the lesions.
        components = cc3d.connected_components(sample["target"][0].numpy() > 0, connectivity=6)
        assert sample["count"].item() == len(np.unique(components)) - 1
        seen.add(sample["count"].item())
    assert seen >= {1.0, 2.0} or seen >= {0.0, 1.0}


def test_loss_mask_is_cropped_with_the_image():
    case = _case_with_target_as_image()
    case.image[1] = case.image[1] > 0.2  # channel 1 now shows the region of the loss
    case.roi = case.image[1] > 0
    config = tiny_config("points", augment=False, patch_size=[8, 12, 12], loss_inside_mask=True)
    dataset = LesionDataset([case], config, heatmap_scale([1.0] * 3))
    for epoch in range(4):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        assert torch.equal(sample["loss_mask"][0] > 0, sample["image"][1] > 0)


def test_collate_pads_to_the_largest_shape():
    batch = collate(
        [
            {"image": torch.ones(2, 3, 4), "count": torch.tensor(1.0)},
            {"image": torch.ones(2, 4, 2), "count": torch.tensor(3.0)},
        ]
    )
    assert batch["image"].shape == (2, 2, 4, 4)
    assert batch["image"][1, :, :, 2:].abs().sum() == 0
    assert batch["count"].tolist() == [1.0, 3.0]


def test_validation_split_and_labels(phantom):
    train_cases, val_cases, info = load_training_cases(phantom, tiny_config("points"))
    assert [c.name for c in val_cases] == ["phantom_006", "phantom_007"]  # dataset split
    assert len(train_cases) == 6 and info["spatial_dims"] == 3 and info["in_channels"] == 2
    for case in train_cases:
        mean = case.image.reshape(2, -1).mean(axis=1)
        np.testing.assert_allclose(mean, 0.0, atol=1e-4)  # z-scored per channel
        assert case.count == len(case.points) == len(np.unique(case.instances)) - 1


# --------------------------------------------------------------------------- validation


class Oracle(torch.nn.Module):
    """Returns the given maps in turn, one per image of a batch, as a perfect network would."""

    def __init__(self, maps):
        super().__init__()
        self.maps = list(maps)
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        maps = [torch.as_tensor(self.maps.pop(0))[None] for _ in range(len(x))]
        return torch.stack(maps) + self.weight


def test_validation_of_a_perfect_heatmap_is_f1_one(phantom):
    config = tiny_config("points", spatial_dims=3)
    _, val_cases, _ = load_training_cases(phantom, config)
    scale = heatmap_scale([1.0] * 3)
    maps = [gaussian_heatmap(c.points, c.image.shape[1:], 1.0) * scale for c in val_cases]
    metrics = validate(Oracle(maps), val_cases, config, scale)
    assert metrics["f1"] == 1.0 and metrics["count_mae"] < 0.05


def test_validation_fits_gaussians_of_fit_sigma(phantom, monkeypatch):
    import weaklesion.scoring as scoring

    widths = []
    fit = scoring.fit_gaussians

    def recording(heatmap, sigma, **kwargs):
        widths.append(np.asarray(sigma).tolist())
        return fit(heatmap, sigma, **kwargs)

    monkeypatch.setattr(scoring, "fit_gaussians", recording)
    config = tiny_config("points", spatial_dims=3, sigma=1.0, fit_sigma=2.0)
    _, val_cases, _ = load_training_cases(phantom, config)
    scale = heatmap_scale([1.0] * 3)
    # Peaks twice as wide as the targets: fitted at the target's width, each would leave
    # a shoulder; fitted at fit_sigma, each is one lesion of amplitude 1.
    maps = [gaussian_heatmap(c.points, c.image.shape[1:], 2.0) * scale for c in val_cases]
    metrics = validate(Oracle(maps), val_cases, config, scale)
    assert widths == [[2.0, 2.0, 2.0]] * len(val_cases)
    assert metrics["f1"] == 1.0


def test_validation_of_perfect_masks_is_dice_one(phantom):
    config = tiny_config("masks", spatial_dims=3)
    _, val_cases, _ = load_training_cases(phantom, config)
    logits = [np.where(c.instances > 0, 20.0, -20.0) for c in val_cases]
    metrics = validate(Oracle(logits), val_cases, config, 1.0)
    assert metrics["dice"] == 1.0
    # Touching lesions merge into one component, which hits one of them: the others are
    # missed, and nothing is a false positive.
    lesions = sum(len(np.unique(c.instances)) - 1 for c in val_cases)
    components = sum(cc3d.connected_components(c.instances > 0).max() for c in val_cases)
    assert metrics["precision"] == 1.0
    assert metrics["f1"] == pytest.approx(2 * components / (components + lesions))


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_learning_rate_schedules_equal_torch_schedulers(schedule):
    config = TrainConfig(lr=3e-3, lr_schedule=schedule)
    total = 37
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total
        )
    for step in range(total):
        assert learning_rate(config, step, total) == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-9
        ), step
        optimizer.step()
        scheduler.step()
    assert learning_rate(TrainConfig(lr=3e-3), 5, total) == 3e-3


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory):
    """``trained(labels)``: the run folder and result of a 4-epoch run, trained once."""
    runs = {}

    def run(labels: str):
        if labels not in runs:
            run_dir = tmp_path_factory.mktemp(labels.replace("+", "_"))
            # Counts: the plain gradient, whose loss falls from an uncalibrated start; the
            # default centred one starts at the calibrated level (test_count_training.py).
            counts = {"lr": 1e-2, "count_gradient": "plain"}
            config = tiny_config(labels, **(counts if labels == "counts" else {"lr": 3e-3}))
            runs[labels] = (run_dir, train(config, phantom, run_dir, progress=False))
        return runs[labels]

    return run


def _check_run(run_dir, result, epochs, eligible_from=1):
    """Files, history and best epoch of a run; epochs before ``eligible_from`` cannot be best."""
    names = {path.name for path in run_dir.iterdir()}
    assert {"config.toml", "last.pt", "best.pt", "history.jsonl", "metrics.json"} <= names
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, epochs + 1))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] == result.best_epoch
    values = [record[f"val_{result.metric}"] for record in result.history]
    eligible = values[eligible_from - 1 :]
    best = max(eligible) if metrics["mode"] == "max" else min(eligible)
    assert values[result.best_epoch - 1] == best  # the best epoch is the best one
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == result.best_epoch


@pytest.mark.slow
def test_train_points_heatmap(phantom, trained):
    run_dir, result = trained("points")
    losses = [record["loss"] for record in result.history]
    assert losses[-1] < losses[0]
    _check_run(run_dir, result, 4)
    model, config, info = load_run(run_dir)
    assert not model.training and config.spatial_dims == 3
    assert info["heatmap_scale"] == pytest.approx((2 * math.pi) ** 1.5)
    _, val_cases, _ = load_training_cases(phantom, config)
    image = val_cases[0].image
    prediction = predict_image(model, image, "heatmap", scale=info["heatmap_scale"])
    assert prediction.map.shape == (16, 32, 32)
    with torch.no_grad():
        raw = model(torch.from_numpy(image)[None])[0, 0].numpy()
    np.testing.assert_allclose(prediction.map, raw / info["heatmap_scale"], rtol=1e-5)
    assert prediction.count == pytest.approx(float(prediction.map.sum()), rel=1e-5)


@pytest.mark.slow
def test_train_counts_gpunet(phantom, trained):
    run_dir, result = trained("counts")
    losses = [record["loss"] for record in result.history]
    assert losses[-1] < losses[0] and result.metric == "count_mae"
    _check_run(run_dir, result, 4)
    model, config, _ = load_run(run_dir)
    assert type(model).__name__ == "GPUNet"
    _, val_cases, _ = load_training_cases(phantom, config)
    prediction = predict_image(model, val_cases[0].image, "count")
    assert prediction.map.shape == (16, 32, 32)
    with torch.no_grad():
        count = model(torch.from_numpy(val_cases[0].image)[None]).item()
    assert prediction.count == pytest.approx(count, rel=1e-4, abs=1e-4)
    assert prediction.map.mean() == pytest.approx(count, rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_train_masks_segmentation(phantom, trained):
    run_dir, result = trained("masks")
    losses = [record["loss"] for record in result.history]
    assert losses[-1] < losses[0] and result.metric == "f1"
    _check_run(run_dir, result, 4)
    model, config, _ = load_run(run_dir)
    _, val_cases, _ = load_training_cases(phantom, config)
    prediction = predict_image(model, val_cases[0].image, "segmentation")
    assert prediction.map.shape == (16, 32, 32)
    assert 0 <= prediction.map.min() and prediction.map.max() <= 1


@pytest.mark.slow
def test_train_masks_with_counts(trained):
    run_dir, result = trained("masks+counts")
    segmentation = [record["segmentation"] for record in result.history]
    assert segmentation[-1] < segmentation[0]
    weight = TrainConfig().count_weight
    expected = [0.0, 0.5 * weight, weight, weight]
    assert [record["count_weight"] for record in result.history] == pytest.approx(expected)
    assert "count_nll" not in result.history[0] and "count_nll" in result.history[-1]
    # Selected by lesion F1, as the paper does, and never a segmentation-only epoch.
    assert result.metric == "f1" and result.best_epoch >= 2
    _check_run(run_dir, result, 4, eligible_from=2)
    last = result.history[-1]
    assert {"val_dice", "val_count_accuracy", "val_count_nll", "val_f1"} <= set(last)


@pytest.mark.slow
def test_resume_gives_bitwise_the_same_weights(phantom, trained, tmp_path):
    straight_dir, _ = trained("masks")  # 4 epochs in one go, with augmentation and dropout
    config = tiny_config("masks")
    assert config.augment and config.model_kwargs.get("dropout", 0.1) > 0

    def crash_after_two(epoch, record):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, phantom, tmp_path, progress=False, on_epoch_end=crash_after_two)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    torch.manual_seed(12345)  # a different global random state must not matter
    result = train(config, phantom, tmp_path, resume=True, progress=False)
    assert result.epochs_completed == 4

    straight = load_checkpoint(straight_dir / "last.pt")
    resumed = load_checkpoint(tmp_path / "last.pt")
    assert straight["model"].keys() == resumed["model"].keys()
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for key, state in straight["optimizer"]["state"].items():
        for name, value in state.items():
            other = resumed["optimizer"]["state"][key][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (key, name)
    assert [r["loss"] for r in straight["history"]] == [r["loss"] for r in resumed["history"]]


@pytest.mark.slow
def test_validation_every_k_epochs_with_a_schedule(phantom, tmp_path):
    config = tiny_config("points", epochs=5, val_every=2, lr_schedule="onecycle")
    result = train(config, phantom, tmp_path, progress=False)
    validated = [r["epoch"] for r in result.history if "val_f1" in r]
    assert validated == [2, 4, 5]  # every second epoch and the last
    f1 = {r["epoch"]: r["val_f1"] for r in result.history if "val_f1" in r}
    assert result.best_epoch in validated and f1[result.best_epoch] == max(f1.values())
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == result.best_epoch
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 5
    steps = 3  # 6 training cases in batches of 2
    rates = [r["lr"] for r in result.history]  # the rate of each epoch's last step
    assert rates == [learning_rate(config, (e + 1) * steps - 1, 5 * steps) for e in range(5)]
    assert rates[-1] == pytest.approx(config.lr / 25 / 1e4, rel=1e-6)
    with pytest.raises(ValueError, match="epochs 5 -> 8"):  # the schedule spans 5 epochs
        train(
            tiny_config("points", epochs=8, val_every=2, lr_schedule="onecycle"),
            phantom,
            tmp_path,
            resume=True,
            progress=False,
        )


@pytest.mark.slow
@pytest.mark.parametrize("val_every", [1, 2])
def test_patience_stops_after_stale_validations_and_keeps_the_best_epoch(
    phantom, tmp_path, monkeypatch, val_every
):
    # Planted validation F1 per validation: the best is the fourth; the three after it
    # are worse, so patience 3 ends the run there and the 0.9 is never reached.
    planted = iter([0.2, 0.5, 0.4, 0.6, 0.3, 0.1, 0.55, 0.9, 0.95])
    monkeypatch.setattr(loop, "validate", lambda *args: {"f1": next(planted), "threshold": 0.5})
    copies = {}

    def keep_last(epoch, record):
        copies[epoch] = load_checkpoint(tmp_path / "last.pt")["model"]

    config = tiny_config("points", epochs=30, val_every=val_every, patience=3, lr=1e-2)
    result = train(config, phantom, tmp_path, progress=False, on_epoch_end=keep_last)
    validated = [r["epoch"] for r in result.history if "val_f1" in r]
    assert validated == [val_every * k for k in range(1, 8)]
    assert result.epochs_completed == 7 * val_every == len(result.history)
    assert result.best_epoch == 4 * val_every and result.best_value == 0.6
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == result.best_epoch
    for name, value in best["model"].items():
        assert torch.equal(value, copies[result.best_epoch][name]), name
    assert not torch.equal(best["model"][name], copies[result.epochs_completed][name])

    # Resuming a run that patience ended trains nothing more.
    resumed = train(config, phantom, tmp_path, resume=True, progress=False)
    assert resumed.epochs_completed == result.epochs_completed
    assert len(resumed.history) == len(result.history)


@pytest.mark.slow
def test_min_epochs_holds_patience_back(phantom, tmp_path, monkeypatch):
    planted = iter([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    monkeypatch.setattr(loop, "validate", lambda *args: {"f1": next(planted), "threshold": 0.5})
    config = tiny_config("points", epochs=6, patience=1, min_epochs=4)
    result = train(config, phantom, tmp_path, progress=False)
    assert result.epochs_completed == 4 and result.best_epoch == 1


@pytest.mark.slow
def test_new_run_refuses_a_folder_with_a_run(phantom, trained):
    run_dir, _ = trained("masks")
    before = (run_dir / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="holds a run already"):
        train(tiny_config("masks"), phantom, run_dir, progress=False)
    with pytest.raises(ValueError, match=r"lr 0\.003 -> 0\.1"):
        train(tiny_config("masks", lr=0.1), phantom, run_dir, resume=True, progress=False)
    assert (run_dir / "last.pt").read_bytes() == before


def test_dataset_with_problems_is_refused_before_any_work(phantom, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(phantom, broken)
    (broken / "counts.csv").write_text("case,count\nphantom_000,-1\nphantom_001,many\n")
    with pytest.raises(ValueError, match="2 problem") as error:
        train(tiny_config("counts"), broken, tmp_path / "run", progress=False)
    assert "row 2" in str(error.value) and "row 3" in str(error.value)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(trained):
    run_dir, result = trained("points")
    for name, epoch in (("last.pt", 4), ("best.pt", result.best_epoch)):
        state = torch.load(run_dir / name, weights_only=True)
        assert state["epoch"] == epoch and isinstance(state["config"], dict)
        assert all(isinstance(v, torch.Tensor) for v in state["model"].values())


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": 1, "epoch": 1, "weights": torch.ones(3)})

    def dies_halfway(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"format": 1, "epoch": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


# --------------------------------------------------------------------------- weight averaging


def test_update_average_is_an_exponential_moving_average():
    torch.manual_seed(0)
    average, network = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().double().clone() for p in average.parameters()]
    update_average(average, network, 0.9)
    for mean, start, value in zip(average.parameters(), before, network.parameters(), strict=True):
        expected = 0.9 * start + 0.1 * value.detach().double()
        np.testing.assert_allclose(mean.detach().double(), expected, rtol=1e-6, atol=1e-7)
    assert [ema_decay_at(0.5, t) for t in (0, 1, 3, 8, 20)] == [0.1, 2 / 11, 4 / 13, 0.5, 0.5]
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def _weights(state):
    return {k: v.double() for k, v in state.items()}


@pytest.mark.slow
def test_weight_average_of_a_run_against_its_trained_weights(phantom, tmp_path):
    # One step per epoch (6 training cases, batch 6): the average after epoch t must be
    # the recursion over the plain run's weights after each epoch, from the initial ones.
    changes = {"epochs": 3, "batch_size": 6}
    plain_weights = []

    def keep(epoch, record):
        plain_weights.append(_weights(load_checkpoint(plain_dir / "last.pt")["model"]))

    plain_dir = tmp_path / "plain"
    train(tiny_config("points", **changes), phantom, plain_dir, progress=False, on_epoch_end=keep)
    averaged_dir = tmp_path / "averaged"
    config = tiny_config("points", ema_decay=0.5, **changes)
    result = train(config, phantom, averaged_dir, progress=False)

    torch.manual_seed(config.seed)
    initial = build_model_for(TrainConfig(**{**config.__dict__, "spatial_dims": 3}), 2)
    expected = _weights(initial.state_dict())
    for step, weights in enumerate(plain_weights):
        decay = ema_decay_at(0.5, step)
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    last = load_checkpoint(averaged_dir / "last.pt")
    for name, tensor in last["model"].items():
        np.testing.assert_allclose(tensor.double(), expected[name], rtol=1e-5, atol=1e-6)
    # averaging does not change what is trained
    for name, tensor in last["training_model"].items():
        assert torch.equal(tensor.double(), plain_weights[-1][name]), name
    assert any(
        not torch.equal(tensor.double(), plain_weights[-1][name])
        for name, tensor in last["model"].items()
    )
    # the averaged weights are what is validated, saved as best and returned
    best = load_checkpoint(averaged_dir / "best.pt")
    model, _, _ = load_run(averaged_dir, "last")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, last["model"][name]), name
    assert best["epoch"] == result.best_epoch
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, last["model"][name]), name

    # a run killed after one epoch and resumed ends with the same average and weights
    resumed_dir = tmp_path / "resumed"

    def crash(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, phantom, resumed_dir, progress=False, on_epoch_end=crash)
    train(config, phantom, resumed_dir, resume=True, progress=False)
    resumed = load_checkpoint(resumed_dir / "last.pt")
    for key in ("model", "training_model"):
        for name, tensor in last[key].items():
            assert torch.equal(tensor, resumed[key][name]), (key, name)
