"""Count networks leave the mean-count plateau: batch-centred pooled features."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from weaklesion.bench.mnist import MnistSettings, write_grid_dataset
from weaklesion.models import GPUNet, GPUNetNoResidual, TwoScaleGPUNet
from weaklesion.training import TrainConfig, train
from weaklesion.training.objectives import level_shift


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("network", [GPUNet, GPUNetNoResidual, TwoScaleGPUNet])
def test_centred_batches_give_the_plain_gradient_less_its_shared_part(network):
    torch.manual_seed(0)
    model = network(spatial_dims=2, filters=2)
    model.train()
    x, y = torch.rand(4, 1, 12, 10), torch.tensor([0.0, 1.0, 3.0, 2.0])
    parameters = [p for name, p in model.named_parameters() if name != "regressor.bias"]

    # Reference: per-image Jacobians J_i of the plain count and g_i = dL/dcount_i.
    jacobians = []
    for i in range(4):
        count = model(x[i : i + 1])[0]
        jacobians.append(torch.autograd.grad(count, parameters, allow_unused=True))
    model.centre_batches()
    counts = model(x)
    loss = torch.nn.functional.mse_loss(counts, y)
    g = torch.autograd.grad(loss, counts, retain_graph=True)[0]
    centred = torch.autograd.grad(loss, parameters, allow_unused=True)
    for k, parameter in enumerate(parameters):
        per_image = torch.stack(
            [torch.zeros_like(parameter) if j[k] is None else j[k] for j in jacobians]
        )
        mean_jacobian = per_image.mean(dim=0)
        expected = sum(g[i] * (per_image[i] - mean_jacobian) for i in range(4))
        got = torch.zeros_like(parameter) if centred[k] is None else centred[k]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # The counts of a batch differ as the plain network's do.
    model.eval()
    with torch.no_grad():
        plain = model(x)
    torch.testing.assert_close(counts - counts.mean(), plain - plain.mean(), atol=1e-5, rtol=0)


def test_inference_subtracts_the_pooled_mean_and_the_map_still_averages_to_the_count():
    torch.manual_seed(1)
    model = GPUNet(spatial_dims=2, filters=3).eval()
    x = torch.rand(3, 1, 9, 8)
    before = model(x)
    mean = torch.rand(3)
    model.set_pooled_mean(mean)
    count, cam = model.predict(x)
    weight = model.regressor.weight[0].detach()
    torch.testing.assert_close(count, before - mean @ weight)
    torch.testing.assert_close(cam.mean(dim=(1, 2)), count, atol=1e-5, rtol=0)


def test_a_checkpoint_without_pooled_mean_loads_as_zero():
    model = GPUNet(spatial_dims=2, filters=2)
    state = {k: v for k, v in model.state_dict().items() if k != "pooled_mean"}
    other = GPUNet(spatial_dims=2, filters=2)
    other.set_pooled_mean(torch.ones(2))
    other.load_state_dict(state)
    assert torch.equal(other.pooled_mean, torch.zeros(2))


def test_level_shift_solves_for_the_level_by_brute_force():
    rng = np.random.default_rng(0)
    outputs = torch.from_numpy(rng.normal(size=50))
    counts = torch.from_numpy(rng.integers(0, 3, size=50))
    shifts = np.linspace(-5, 5, 20001)
    mse = [float(((outputs + s - counts) ** 2).mean()) for s in shifts]
    assert level_shift(outputs, counts, "regression") == pytest.approx(
        shifts[int(np.argmin(mse))], abs=1e-3
    )
    present = (counts > 0).double()
    bce = [
        float(torch.nn.functional.binary_cross_entropy_with_logits(outputs + s, present))
        for s in shifts
    ]
    assert level_shift(outputs, counts, "classification") == pytest.approx(
        shifts[int(np.argmin(bce))], abs=1e-3
    )


def test_centring_needs_batches_of_two():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(labels="counts", batch_size=1, count_gradient="centred")
    with pytest.raises(ValueError, match="count_gradient='plain'"):
        TrainConfig(labels="counts", batch_size=1)  # the default is centred
    assert TrainConfig(labels="counts", batch_size=1, count_gradient="plain").batch_size == 1
    with pytest.raises(ValueError, match="linear output"):
        GPUNet(spatial_dims=2, output="density").centre_batches()
    for kwargs in ({"pooling": "max"}, {"output": "density"}):
        with pytest.raises(ValueError, match="count_gradient: 'centred' centres average-pooled"):
            TrainConfig(labels="counts", model_kwargs=kwargs)
        assert TrainConfig(labels="counts", model_kwargs=kwargs, count_gradient="plain")


def _grids_and_plateau(folder, digit: int):
    """3×3 MNIST grids (96 training, 48 validation) and the validation MAE of predicting
    the mean training count."""
    data = write_grid_dataset(folder, digit, MnistSettings(grid=(3, 3), images=(96, 48, 2)))
    with open(data / "counts.csv") as handle:
        counts = {row["case"]: int(row["count"]) for row in csv.DictReader(handle)}
    train_counts = [v for k, v in counts.items() if k.startswith("training")]
    val_counts = np.array([v for k, v in counts.items() if k.startswith("validation")])
    return data, float(np.abs(val_counts - np.mean(train_counts)).mean())


@pytest.mark.slow
def test_default_count_recipe_leaves_the_mean_count_where_the_plain_one_stays(tmp_path):
    """``train`` with labels="counts" and its default recipe (lr, batch size, centred
    count gradient, batch normalisation; a small network, no augmentation, 8 epochs of
    48 steps) falls below the mean-count error on 3×3 grids counting 4s; the papers'
    recipe (plain gradient, no normalisation), all else equal, stays at it.

    Measured on digits 4 and 7, seeds 0-2, as fractions of the mean-count error: the
    default 0.76-0.90, the papers' recipe 0.98-1.00, the centred gradient without
    normalisation 0.62-0.86 (it leaves sooner on these tiny runs; on 7×5 grids its maps
    score lower, docs/REPRODUCTION.md)."""
    data, plateau = _grids_and_plateau(tmp_path / "digit4", 4)
    best = {}
    papers = {"count_gradient": "plain", "model_kwargs": {"filters": 8, "normalization": "none"}}
    for name, options in (("default", {"model_kwargs": {"filters": 8}}), ("papers", papers)):
        config = TrainConfig(
            labels="counts", epochs=8, augment=False, num_threads=1, device="cpu", **options
        )
        result = train(config, data, tmp_path / name, progress=False)
        best[name] = min(record["val_count_mae"] for record in result.history)
    assert best["default"] < 0.92 * plateau, (best, plateau)
    assert best["papers"] > 0.97 * plateau, (best, plateau)


@pytest.mark.slow
def test_counts_training_leaves_the_mean_count_within_eight_epochs(tmp_path):
    """3×3 grids of MNIST digits, count the 7s: 96 training grids, 8 epochs of batch 4.

    With ``count_gradient="plain"`` (the papers' gradient) the same run stays at the
    mean count (measured: validation MAE 0.79-0.80 in every epoch).
    """
    settings = MnistSettings(grid=(3, 3), images=(96, 48, 2))
    data = write_grid_dataset(tmp_path / "digit7", 7, settings)
    with open(data / "counts.csv") as handle:
        counts = {row["case"]: int(row["count"]) for row in csv.DictReader(handle)}
    train_counts = [v for k, v in counts.items() if k.startswith("training")]
    val_counts = np.array([v for k, v in counts.items() if k.startswith("validation")])
    plateau = float(np.abs(val_counts - np.mean(train_counts)).mean())
    config = TrainConfig(
        labels="counts",
        model_kwargs={"filters": 8},
        epochs=8,
        lr=3e-3,
        batch_size=4,
        augment=False,
        num_threads=1,
        device="cpu",
        count_gradient="centred",
    )
    result = train(config, data, tmp_path / "run", progress=False)
    best = min(record["val_count_mae"] for record in result.history)
    assert best < 0.9 * plateau, (best, plateau)


def test_the_recipe_study_scores_the_bench_test_grids(tmp_path):
    """``benchmarks/count_training.py`` draws the very grids that ``bench mnist`` writes."""
    from PIL import Image

    from benchmarks.count_training import bench_grids

    grids = bench_grids(3)
    root = write_grid_dataset(tmp_path / "digit3", 3)
    with open(root / "counts.csv", newline="") as handle:
        counts = {row[0]: float(row[1]) for row in csv.reader(handle) if row[0] != "case"}
    for split, (images, numbers, cells) in grids.items():
        written = [counts[f"{split}_{i:04d}"] for i in range(len(numbers))]
        np.testing.assert_array_equal(numbers, written)
        for i in (0, len(numbers) - 1):
            case = f"{split}_{i:04d}"
            image = np.asarray(Image.open(root / "imagesTr" / f"{case}_0000.png"))
            label = np.asarray(Image.open(root / "labelsTr" / f"{case}.png"))
            np.testing.assert_array_equal(images[i, 0], image)
            np.testing.assert_array_equal(cells[i] > 0, label > 0)
            # one labelled cell per counted target
            assert len(np.unique(cells[i][cells[i] > 0])) == numbers[i]
