"""Prediction: user units, sliding windows, MC dropout, and writing maps of cases."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from weaklesion.data.dataset import load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.detection import fit_gaussians
from weaklesion.inference import predict_cases, predict_image, predict_images
from weaklesion.io import read_image, write_image
from weaklesion.models import GPUNet, UNet
from weaklesion.models.heads import attach_count_head
from weaklesion.run import place_network
from weaklesion.training import TrainConfig
from weaklesion.training.checkpoint import run_state, save_checkpoint


class Pointwise(torch.nn.Module):
    """A 1×1(×1) convolution: every output voxel sees only its own input voxel."""

    def __init__(self, channels: int = 2, spatial_dims: int = 3):
        super().__init__()
        conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
        self.conv = conv(channels, 1, 1)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.conv(x)


def random_image(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("kind", ["heatmap", "segmentation", "euclidean"])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_sliding_window_equals_whole_image_for_a_pointwise_network(kind, blend):
    image = random_image((2, 13, 30, 21))  # not a multiple of the window
    model = Pointwise()
    whole = predict_image(model, image, kind, scale=3.0)
    tiled = predict_image(model, image, kind, (8, 16, 16), overlap=0.5, scale=3.0, blend=blend)
    np.testing.assert_allclose(tiled.map, whole.map, rtol=1e-5, atol=1e-6)


def test_sliding_window_without_overlap_equals_tiles_predicted_one_by_one():
    torch.manual_seed(0)
    model = UNet(3, 2, 1, features=(4, 8, 16), dropout=0.1).eval()
    image = random_image((2, 16, 32, 48))
    tiled = predict_image(model, image, "heatmap", (16, 16, 16), overlap=0.0, blend="constant")
    reference = np.zeros((16, 32, 48), np.float32)
    with torch.no_grad():
        for y in (0, 16):
            for x in (0, 16, 32):
                tile = torch.from_numpy(image[None, :, :, y : y + 16, x : x + 16])
                reference[:, y : y + 16, x : x + 16] = model(tile)[0, 0].numpy()
    np.testing.assert_allclose(tiled.map, reference, rtol=1e-5, atol=1e-5)
    whole = predict_image(model, image, "heatmap")
    assert not np.allclose(whole.map, reference, atol=1e-3)  # the tiles really differ


def test_count_map_of_gpunet_whole_and_tiled():
    torch.manual_seed(0)
    model = GPUNet(3, 2, filters=4).eval()
    image = random_image((2, 16, 32, 32))
    whole = predict_image(model, image, "count")
    with torch.no_grad():
        count = model(torch.from_numpy(image)[None]).item()
    assert whole.count == pytest.approx(count, rel=1e-5)
    assert whole.map.mean() == pytest.approx(count, rel=1e-5)  # the CAM spreads the count
    tiled = predict_image(model, image, "count", (16, 16, 16), overlap=0.0, blend="constant")
    with torch.no_grad():
        tiles = [
            model(torch.from_numpy(image[None, :, :, y : y + 16, x : x + 16])).item()
            for y in (0, 16)
            for x in (0, 16)
        ]
    assert tiled.count == pytest.approx(sum(tiles), rel=1e-5)  # counts of windows add up
    assert tiled.map.mean() == pytest.approx(tiled.count, rel=1e-5)


def test_a_max_pooling_gpunet_predicts_its_own_count_whole_images_only():
    torch.manual_seed(0)
    model = GPUNet(2, 1, filters=4, pooling="max").eval()
    images = [random_image((1, 24, 32)), random_image((1, 24, 32)), random_image((1, 16, 16))]
    with torch.no_grad():
        counts = [model(torch.from_numpy(image)[None]).item() for image in images]
    alone = [predict_image(model, image, "count") for image in images]
    together = predict_images(model, images, "count", batch_size=2)
    for count, one, batched in zip(counts, alone, together, strict=True):
        assert one.count == pytest.approx(count, rel=1e-5)
        assert batched.count == pytest.approx(count, rel=1e-5)
        # The map is still the CAM; its mean is the average-pooled readout, not the count.
        assert one.map.mean() != pytest.approx(count, rel=1e-3)
    with pytest.raises(ValueError, match="global max pooling counts whole images"):
        predict_image(model, images[0], "count", (8, 8))


def test_mc_dropout_returns_different_samples_and_leaves_state_alone():
    torch.manual_seed(0)
    model = UNet(3, 2, 1, features=(4, 8), dropout=0.3).eval()
    image = random_image((2, 8, 16, 16))
    rng_state = torch.get_rng_state()
    prediction = predict_image(model, image, "segmentation", mc_samples=4, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert not model.training and not any(m.training for m in model.modules())
    assert prediction.samples.shape == (4, 8, 16, 16) and prediction.std.shape == (8, 16, 16)
    for i in range(4):
        for j in range(i):
            assert not np.allclose(prediction.samples[i], prediction.samples[j])
    np.testing.assert_allclose(prediction.map, prediction.samples.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(prediction.std, prediction.samples.std(axis=0), rtol=1e-5)
    again = predict_image(model, image, "segmentation", mc_samples=4, seed=7)
    np.testing.assert_array_equal(again.samples, prediction.samples)
    deterministic = predict_image(model, image, "segmentation")
    assert deterministic.samples is None
    np.testing.assert_array_equal(
        deterministic.map, predict_image(model, image, "segmentation").map
    )


def test_mc_dropout_heatmap_counts_per_sample():
    torch.manual_seed(0)
    model = UNet(2, 1, 1, features=(4, 8), dropout=0.3)
    image = random_image((1, 16, 16))
    prediction = predict_image(model, image, "heatmap", mc_samples=3, scale=2.0)
    sums = prediction.samples.reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(prediction.sample_counts, sums, rtol=1e-5)
    assert prediction.count == pytest.approx(sums.mean(), rel=1e-5)
    assert model.training  # the caller's mode is restored


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.full((1, 4, 4), np.nan), {}, "image: 16 value"),
        (np.zeros((4, 4)), {}, "image: has shape"),
        (np.zeros((1, 4, 4)), {"kind": "density"}, "kind: got 'density'"),
        (np.zeros((1, 4, 4)), {"patch_size": (4, 4, 4)}, "patch_size: got"),
        (np.zeros((1, 4, 4)), {"overlap": 1.0}, "overlap: got"),
    ],
)
def test_bad_input_is_refused(image, kwargs, message):
    kwargs = {"kind": "heatmap", **kwargs}
    with pytest.raises(ValueError, match=message):
        predict_image(Pointwise(1, 2), image, **kwargs)


def test_empty_image_gives_an_empty_map():
    prediction = predict_image(Pointwise(1, 2), np.zeros((1, 0, 5)), "heatmap")
    assert prediction.map.shape == (0, 5) and prediction.count == 0.0


@pytest.mark.parametrize("kind", ["heatmap", "segmentation", "count"])
def test_batched_predictions_equal_one_image_at_a_time(kind):
    """Shapes mix (3 of one, 1 of another, 2 of the first), so runs of 2, 1, 1 and 2."""
    torch.manual_seed(0)
    if kind == "count":
        model = GPUNet(3, 2, filters=4)
    else:
        model = UNet(3, 2, 1, features=(4, 8), dropout=0.3)
    shapes = [(2, 8, 16, 16)] * 3 + [(2, 8, 16, 24)] + [(2, 8, 16, 16)] * 2
    images = [random_image(shape, seed) for seed, shape in enumerate(shapes)]
    batched = predict_images(model, images, kind, scale=2.0, batch_size=2)
    assert model.training  # the caller's mode is restored
    assert len(batched) == len(images)
    for image, prediction in zip(images, batched, strict=True):
        alone = predict_image(model, image, kind, scale=2.0)
        assert prediction.map.shape == image.shape[1:] and prediction.samples is None
        np.testing.assert_allclose(prediction.map, alone.map, rtol=1e-4, atol=1e-5)
        if kind == "segmentation":
            assert prediction.count is None
        else:
            assert prediction.count == pytest.approx(alone.count, rel=1e-4, abs=1e-5)


def test_batched_windows_and_count_head_pmfs_equal_one_image_at_a_time():
    torch.manual_seed(0)
    model = UNet(3, 2, 1, features=(4, 8)).eval()
    images = [random_image((2, 8, 16, 24), seed) for seed in range(3)]
    tiled = predict_images(model, images, "heatmap", (8, 8, 8), overlap=0.5, batch_size=3)
    for image, prediction in zip(images, tiled, strict=True):
        alone = predict_image(model, image, "heatmap", (8, 8, 8), overlap=0.5)
        np.testing.assert_allclose(prediction.map, alone.map, rtol=1e-4, atol=1e-5)
    headed = attach_count_head(UNet(3, 2, 1, features=(4, 8)), "multihead", 4).eval()
    batched = predict_images(headed, images, "segmentation", batch_size=2)
    for image, prediction in zip(images, batched, strict=True):
        alone = predict_image(headed, image, "segmentation")
        assert prediction.count_pmf.shape == (5,)
        np.testing.assert_allclose(prediction.count_pmf, alone.count_pmf, rtol=1e-4)
    read, held = [], []

    def reading(images):  # records how many images were read at each network call
        for image in images:
            read.append(image)
            yield image

    forward = model.forward
    model.forward = lambda x: held.append(len(read)) or forward(x)
    predict_images(model, reading(images), "heatmap", batch_size=2)
    del model.forward
    assert held == [2, 3]  # never more than a batch read ahead
    with pytest.raises(ValueError, match="batch_size: got 0"):
        predict_images(model, images, "heatmap", batch_size=0)
    assert predict_images(model, [np.zeros((2, 0, 4, 4))] * 2, "heatmap")[1].count == 0.0


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory, phantom_dataset):
    """A run folder holding an (untrained) heatmap U-Net, and a 3-case phantom."""
    data = phantom_dataset(
        n_cases=3,
        shape=(16, 24, 24),
        splits=(3, 0, 0),
        n_lesions=3,
    )
    run_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(labels="points", model_kwargs={"features": [4, 8]}, spatial_dims=3)
    torch.manual_seed(0)
    model = UNet(3, 2, 1, features=(4, 8))
    info = {"in_channels": 2, "heatmap_scale": 4.0, "spacing": [1.0, 1.0, 1.0]}
    save_checkpoint(run_dir / "best.pt", run_state(model, None, 1, config, info, []))
    return run_dir, data, model.eval()


def test_predict_cases_writes_maps_with_the_input_affine(run_and_data, tmp_path):
    run_dir, data, model = run_and_data
    written = predict_cases(run_dir, data, tmp_path, device="cpu", progress=False)
    names = [path.name for path in written]
    assert names == [f"phantom_00{i}_heatmap.nii.gz" for i in range(3)] + ["predictions.json"]
    summary = json.loads((tmp_path / "predictions.json").read_text())
    for case in load_dataset(data):
        arrays = case.load()
        written_map, affine = read_image(tmp_path / f"{case.id}_heatmap.nii.gz")
        np.testing.assert_array_equal(affine, arrays.affine)
        expected = predict_image(model, zscore(arrays.image), "heatmap", scale=4.0)
        # The run's network has channels-last weights, this one contiguous weights: the
        # same sums in another order.
        np.testing.assert_allclose(written_map, expected.map, rtol=1e-5, atol=1e-5)
        entry = summary["cases"][case.id]
        assert entry["map_sum"] == pytest.approx(expected.count, rel=1e-5)
        # The count: the expected number of fitted lesions, each existing with its
        # clipped amplitude (sigma 1 voxel, the run's).
        fitted = fit_gaussians(written_map, 1.0)
        assert entry["count"] == pytest.approx(fitted.scores.sum(), rel=1e-6)
        assert entry["count_distribution"]["mean"] == entry["count"]


def test_predict_cases_on_npy_files_writes_npy(run_and_data, tmp_path):
    run_dir, _, model = run_and_data
    image = random_image((2, 16, 24, 24), seed=1)
    inputs = []
    for channel in range(2):
        path = tmp_path / "in" / f"scan_{channel:04d}.npy"
        write_image(path, image[channel])
        inputs.append(path)
    written = predict_cases(
        run_dir, inputs, tmp_path / "out", mc_samples=2, device="cpu", progress=False
    )
    assert [p.name for p in written] == [
        "scan_heatmap.npy",
        "scan_heatmap_std.npy",
        "predictions.json",
    ]
    # The run's network is placed channels-last; dropout draws its masks in memory order,
    # so the same draws need the same layout.
    placed = place_network(copy.deepcopy(model), torch.device("cpu"), 3)
    sampled = predict_image(placed, zscore(image), "heatmap", mc_samples=2, scale=4.0)
    np.testing.assert_allclose(np.load(written[0]), sampled.map, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(written[1]), sampled.std, rtol=1e-4, atol=1e-6)


def test_predict_cases_refuses_the_wrong_number_of_channels(run_and_data, tmp_path):
    run_dir, _, _ = run_and_data
    path = tmp_path / "scan.npy"
    write_image(path, random_image((16, 24, 24)))
    with pytest.raises(ValueError, match="has 1 channel"):
        predict_cases(run_dir, [path], tmp_path / "out", device="cpu", progress=False)
