"""Specifications of the attention maps: each equals its definition computed another way
(by hand, by autograd, by finite differences, by a reference guided ReLU); detections
keep round(count) peaks; FROC by rank agrees with brute force; the command line writes
every map and detects from it."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.nn import functional
from typer.testing import CliRunner

from weaklesion.attention import (
    METHODS,
    attention_maps,
    detect_by_count,
    froc_by_peak_rank,
    smooth_maps,
)
from weaklesion.cli import app
from weaklesion.data import load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.detection import peak_detections, read_detections_csv
from weaklesion.io import read_image
from weaklesion.metrics import match_points
from weaklesion.models import UNet, build_model

COUNT_MODELS = ("gpunet", "gpunet_noresidual", "gpunet_base", "gated_attention")


pytestmark = pytest.mark.usefixtures("seeded")


def _count_model(name, spatial_dims=2, in_channels=1, filters=3):
    net = build_model(name, spatial_dims, in_channels=in_channels, filters=filters)
    with torch.no_grad():  # mixed signs, so that maps have positive and negative parts
        weights = torch.linspace(-1.0, 1.5, net.regressor.in_features)
        net.regressor.weight.copy_(weights[None])
    return net.eval()


def _reference_gradient(net, x):
    """``∂y_n / ∂x_n``, one image at a time, by plain autograd."""
    gradients = []
    for image in x:
        image = image[None].clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(net(image).sum(), image)
        gradients.append(gradient[0])
    return torch.stack(gradients)


# CAM


@pytest.mark.parametrize("name", COUNT_MODELS)
def test_cam_is_the_class_activation_map_with_negative_values_set_to_zero(name):
    net = _count_model(name)
    x = torch.randn(2, 1, 10, 12)
    with torch.no_grad():
        net.regressor.bias.sub_(net.attention_map(x).median())  # about half the map < 0
        cam = net.attention_map(x)
    assert (cam < 0).any() and (cam > 0).any()
    torch.testing.assert_close(attention_maps(net, x, "cam"), cam.clamp(min=0))


def test_cam_needs_a_global_pooling_network():
    with pytest.raises(ValueError, match="model: UNet has no attention_map method"):
        attention_maps(UNet(2, features=(2, 2)), torch.zeros(1, 1, 8, 8), "cam")


# Grad


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", [*COUNT_MODELS, "unet"])
def test_grad_is_the_largest_absolute_input_gradient_over_channels(name, spatial_dims):
    if name == "unet":  # a map output: y_n is the sum of the image's outputs
        net = UNet(spatial_dims, in_channels=2, features=(2, 4), dropout=0.0).eval()
    else:
        net = _count_model(name, spatial_dims, in_channels=2)
    x = torch.randn(3, 2, *(8,) * spatial_dims)
    expected = _reference_gradient(net, x).abs().amax(dim=1)
    assert expected.max() > 0
    torch.testing.assert_close(attention_maps(net, x, "grad"), expected)


def test_grad_matches_finite_differences_on_a_tiny_net():
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 1, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(0),
    )
    x = torch.randn(1, 2, 5, 6)
    exact = copy.deepcopy(net).double()
    step = 1e-6
    differences = torch.zeros(2, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        for index in np.ndindex(2, 5, 6):
            plus, minus = x.double().clone(), x.double().clone()
            plus[(0, *index)] += step
            minus[(0, *index)] -= step
            differences[index] = (exact(plus) - exact(minus)).item() / (2 * step)
    expected = differences.abs().amax(dim=0).float()
    assert expected.min() > 0
    torch.testing.assert_close(attention_maps(net, x, "grad")[0], expected, rtol=1e-4, atol=1e-7)


# Guided backpropagation


def _relu_net():
    """Two ReLUs (not in place, so that a pre-hook sees each one's forward input)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(4, 1),
        nn.Flatten(0),
    ).eval()


def _gradients_into_relus(net, x, method):
    """Run ``method`` and return, for each ReLU, its forward input and the gradient that
    the backward pass sends into it."""
    seen = []

    def capture(module, args):
        record = {"input": args[0].detach().clone()}
        args[0].register_hook(lambda gradient: record.update(gradient=gradient.clone()))
        seen.append(record)

    relus = [m for m in net if isinstance(m, nn.ReLU)]
    handles = [relu.register_forward_pre_hook(capture) for relu in relus]
    try:
        attention_maps(net, x, method)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == len(relus) and all("gradient" in record for record in seen)
    return seen


def test_guided_backpropagation_passes_no_negative_gradient_through_a_relu():
    net = _relu_net()
    x = torch.randn(2, 1, 9, 7)
    plain = _gradients_into_relus(net, x, "grad")
    # Plain backpropagation does send negative gradients into some ReLU.
    assert any((record["gradient"] < 0).any() for record in plain)
    for record in _gradients_into_relus(net, x, "guided"):
        assert (record["gradient"] >= 0).all()
        assert (record["gradient"][record["input"] <= 0] == 0).all()
    # The model is restored: no hook left, and plain gradients again.
    assert all(not module._forward_hooks for module in net.modules())
    torch.testing.assert_close(
        attention_maps(net, x, "grad"), _reference_gradient(net, x).abs().amax(dim=1)
    )


def test_guided_gradient_of_a_two_layer_net_by_hand():
    # y = v · mean_p ReLU(W x_p + b) + c, with 1×1 convolutions: x_p are channel vectors.
    net = nn.Sequential(
        nn.Conv2d(2, 4, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(4, 1),
        nn.Flatten(0),
    )
    w = torch.tensor([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25], [2.0, 1.0]])
    b = torch.tensor([0.1, -0.2, 0.3, 0.0])
    v = torch.tensor([0.8, -1.2, 0.6, 1.0])
    with torch.no_grad():
        net[0].weight.copy_(w[:, :, None, None])
        net[0].bias.copy_(b)
        net[4].weight.copy_(v[None])
        net[4].bias.fill_(0.4)
    x = torch.randn(2, 2, 5, 6)
    voxels = 5 * 6
    active = (torch.einsum("kc,ncyx->nkyx", w, x) + b[:, None, None]) > 0
    guided = torch.einsum("kc,k,nkyx->ncyx", w, (v / voxels).clamp(min=0), active.float())
    plain = torch.einsum("kc,k,nkyx->ncyx", w, v / voxels, active.float())
    torch.testing.assert_close(attention_maps(net, x, "guided"), guided.amax(dim=1).clamp(min=0))
    torch.testing.assert_close(attention_maps(net, x, "grad"), plain.abs().amax(dim=1))


class _GuidedReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, gradient):
        (x,) = ctx.saved_tensors
        return gradient.clamp(min=0) * (x > 0)


class _GuidedReLU(nn.Module):
    def forward(self, x):
        return _GuidedReLUFunction.apply(x)


def _with_guided_relus(net):
    """A copy of ``net`` with every nn.ReLU replaced by the reference guided ReLU."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, _GuidedReLU())
    return net


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", COUNT_MODELS)
def test_guided_equals_a_reference_guided_relu_on_every_network(name, spatial_dims):
    # These networks use in-place ReLUs; the hooks must give the same gradient.
    net = _count_model(name, spatial_dims)
    x = torch.randn(2, 1, *(8,) * spatial_dims)
    expected = _reference_gradient(_with_guided_relus(net), x).amax(dim=1).clamp(min=0)
    assert expected.max() > 0
    torch.testing.assert_close(attention_maps(net, x, "guided"), expected)


# Grad-CAM


class _TinyCountNet(nn.Module):
    """Convolution, ReLU, pooling, convolution, ReLU, a 1×1 projection, global average
    pooling, a linear unit, squared: a non-linear regression output."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.projection = nn.Conv2d(2, 2, 1)
        self.linear = nn.Linear(2, 1)

    def forward(self, x):
        features = self.relu2(self.conv2(functional.max_pool2d(self.relu1(self.conv1(x)), 2)))
        pooled = self.projection(features).mean(dim=(2, 3))
        return self.linear(pooled)[:, 0] ** 2


def test_grad_cam_equals_its_definition_by_hand():
    net = _TinyCountNet()
    with torch.no_grad():
        net.conv2.bias.fill_(0.2)
    x = torch.randn(2, 1, 8, 10)
    with torch.no_grad():
        # A: the rectified feature maps of the last convolution larger than 1×1.
        hidden = functional.relu(functional.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1))
        a = functional.conv2d(
            functional.max_pool2d(hidden, 2), net.conv2.weight, net.conv2.bias, padding=1
        )
        a = functional.relu(a)
        h, h0 = net.projection.weight[:, :, 0, 0], net.projection.bias
        v, c = net.linear.weight[0], net.linear.bias[0]
        s = (a.mean(dim=(2, 3)) @ h.T + h0) @ v + c
        # y = s²: ∂y/∂A_k is 2 s (hᵀ v)_k / P at every voxel, so it is its own average.
        alpha = 2 * s[:, None] * (h.T @ v)[None] / (4 * 5)
        cam = torch.einsum("nkyx,nk->nyx", a, alpha).clamp(min=0)
        expected = functional.interpolate(cam[:, None], size=(8, 10), mode="bilinear")[:, 0]
    assert a.shape == (2, 2, 4, 5) and expected.max() > 0
    torch.testing.assert_close(attention_maps(net, x, "gradcam"), expected)


@pytest.mark.parametrize("name", ["gpunet", "gpunet_noresidual"])
def test_grad_cam_of_a_full_resolution_pooling_network_is_its_cam_less_bias(name):
    net = _count_model(name, spatial_dims=3)
    with torch.no_grad():
        net.regressor.bias.fill_(0.3)
    x = torch.randn(2, 1, 4, 6, 8)
    with torch.no_grad():
        cam = net.attention_map(x)
    expected = (cam - 0.3).clamp(min=0) / (4 * 6 * 8)
    assert expected.max() > 0
    torch.testing.assert_close(attention_maps(net, x, "gradcam"), expected)


def test_grad_cam_of_the_base_network_is_the_upsampled_deep_scale_cam():
    net = _count_model("gpunet_base", spatial_dims=2)
    captured = {}
    net.bottom.register_forward_hook(lambda m, a, out: captured.update(deep=out.clone()))
    x = torch.randn(2, 1, 8, 12)
    with torch.no_grad():
        net(x)
    deep_weights = net.regressor.weight[0, net.filters :].detach()
    deep_cam = torch.einsum("nkyx,k->nyx", captured["deep"], deep_weights).clamp(min=0) / (4 * 6)
    expected = functional.interpolate(deep_cam[:, None], size=(8, 12), mode="bilinear")[:, 0]
    assert expected.max() > 0
    torch.testing.assert_close(attention_maps(net, x, "gradcam"), expected)


def test_grad_cam_of_the_gated_network_weighs_the_deep_features_by_their_mean_gradient():
    net = _count_model("gated_attention", spatial_dims=3)
    captured = {}
    net.bottom.register_forward_hook(lambda m, a, out: captured.update(deep=out))
    x = torch.randn(2, 1, 6, 4, 8)
    count = net(x)
    (gradient,) = torch.autograd.grad(count.sum(), captured["deep"])
    alpha = gradient.mean(dim=(2, 3, 4))
    cam = torch.einsum("nkzyx,nk->nzyx", captured["deep"].detach(), alpha).clamp(min=0)
    expected = functional.interpolate(cam[:, None], size=(6, 4, 8), mode="trilinear")[:, 0]
    assert expected.max() > 0
    torch.testing.assert_close(attention_maps(net, x, "gradcam"), expected)


# Every method


def test_intensity_is_the_channel_mean_with_negative_values_set_to_zero():
    x = torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(attention_maps(None, x, "intensity"), x.mean(dim=1).clamp(min=0))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_each_image_of_a_batch_gets_the_map_it_gets_alone(method, spatial_dims):
    net = _count_model("gated_attention", spatial_dims)
    x = torch.randn(3, 1, *(8,) * spatial_dims)
    maps = attention_maps(net, x, method)
    assert maps.shape == (3, *(8,) * spatial_dims) and maps.min() >= 0
    for index in range(3):
        alone = attention_maps(net, x[index : index + 1], method)[0]
        torch.testing.assert_close(maps[index], alone, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_the_model_is_left_as_it_was(method):
    net = _count_model("gpunet", 2).train()
    before = copy.deepcopy(net.state_dict())
    attention_maps(net, np.random.default_rng(0).normal(size=(2, 1, 8, 8)), method)
    assert net.training
    assert all(p.grad is None for p in net.parameters())
    assert all(not m._forward_hooks for m in net.modules())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


class _BorderCountNet(nn.Module):
    """A count network whose map is the image plus a bump on the border that every image
    shares (as zero padding gives): the bump moves every count alike."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("border", torch.zeros(8, 8))
        self.border[0, 3] = 50.0

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[:, 0] + self.border

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention_map(x).mean(dim=(1, 2))


def test_the_empty_image_reference_removes_what_every_image_shares():
    x = torch.full((2, 1, 8, 8), -1.0)
    x[0, 0, 5, 5], x[1, 0, 2, 6] = 4.0, 3.0
    net = _BorderCountNet()
    plain = attention_maps(net, x, "cam")
    assert [divmod(int(m.argmax()), 8) for m in plain] == [(0, 3), (0, 3)]
    relative = attention_maps(net, x, "cam", reference="empty")
    expected = torch.zeros(2, 8, 8)
    expected[0, 5, 5], expected[1, 2, 6] = 5.0, 4.0
    torch.testing.assert_close(relative, expected)
    # Every method: an empty image has nothing left against itself.
    model = _count_model("gpunet", 2)
    for method in METHODS:
        empty = torch.full((1, 1, 8, 8), -0.5)
        assert attention_maps(model, empty, method, reference="empty").abs().max() == 0
    with pytest.raises(ValueError, match="reference: got 'mean'"):
        attention_maps(net, x, "cam", reference="mean")


def test_empty_batches_give_empty_maps():
    net = _count_model("gpunet_base", 3)
    for method in METHODS:
        assert attention_maps(net, torch.zeros(0, 1, 4, 6, 8), method).shape == (0, 4, 6, 8)


@pytest.mark.parametrize(
    "model, images, method, message",
    [
        (None, torch.zeros(1, 1, 8, 8), "saliency", "method: got 'saliency'"),
        (None, torch.zeros(1, 8, 8), "intensity", r"images: has shape \(1, 8, 8\)"),
        (None, torch.full((1, 1, 4, 4), float("nan")), "intensity", "images: 16 value"),
        (None, torch.zeros(1, 1, 8, 8), "grad", "model: got None"),
        (
            nn.Sequential(nn.Conv2d(1, 1, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(0)),
            torch.zeros(1, 1, 8, 8),
            "guided",
            "model: Sequential has no nn.ReLU layer",
        ),
        (
            nn.Sequential(nn.Conv2d(1, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(0)),
            torch.zeros(1, 1, 8, 8),
            "gradcam",
            "model: Sequential runs no convolution larger than 1 voxel",
        ),
        (nn.Flatten(0), torch.zeros(2, 1, 8, 8), "grad", r"model: returned shape \(128,\)"),
    ],
)
def test_bad_input_is_named(model, images, method, message):
    with pytest.raises(ValueError, match=message):
        attention_maps(model, images, method)


# Detections


def _planted_map(shape, centres, heights, noise=0.0, seed=0):
    grid = np.indices(shape).reshape(len(shape), -1).T.astype(float)
    values = np.random.default_rng(seed).uniform(0, noise, shape)
    for centre, height in zip(centres, heights, strict=True):
        distance = ((grid - np.asarray(centre, dtype=float)) ** 2).sum(axis=1)
        values += height * np.exp(-distance / 2.0).reshape(shape)
    return values


def test_detect_by_count_keeps_the_round_count_highest_planted_peaks():
    centres = [(3, 4, 4), (8, 12, 5), (4, 12, 13), (10, 4, 12)]
    values = _planted_map((12, 16, 16), centres, [1.0, 0.8, 0.6, 0.4])
    found = detect_by_count(values, 2.5, size=6)  # rounds half up: 3
    np.testing.assert_allclose(found.points, centres[:3])
    assert np.all(np.diff(found.scores) < 0)
    assert len(detect_by_count(values, 2.49)) == 2
    assert len(detect_by_count(values, 0.49)) == 0
    assert len(detect_by_count(values, -1.0)) == 0
    assert len(detect_by_count(values, 9.0)) == 4  # no more peaks than the map has
    with pytest.raises(ValueError, match="count: got nan"):
        detect_by_count(values, float("nan"))


def test_froc_by_peak_rank_agrees_with_matching_the_top_n_peaks_by_brute_force():
    rng = np.random.default_rng(3)
    maps, truths = [], []
    for index in range(4):
        centres = rng.integers(2, 22, size=(5, 2))
        heights = rng.uniform(0.2, 1.0, 5)
        maps.append(_planted_map((24, 24), centres, heights, noise=0.01, seed=index))
        truths.append(centres[: index + 1] + rng.normal(0, 0.7, (index + 1, 2)))
    curve = froc_by_peak_rank(maps, truths, max_distance=2.0, size=3)
    n_truth = sum(len(t) for t in truths)
    for n, fp, sensitivity in zip(
        curve.thresholds, curve.fp_per_image, curve.sensitivity, strict=True
    ):
        kept = [detect_by_count(values, n, size=3).points for values in maps]
        tp = sum(match_points(p, t, 2.0).tp for p, t in zip(kept, truths, strict=True))
        assert sensitivity == pytest.approx(tp / n_truth)
        assert fp == pytest.approx((sum(len(p) for p in kept) - tp) / len(maps))
    assert curve.sensitivity[-1] > 0.5


# The command line


runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def write_2d_png_dataset(root, n_cases=5, size=20, seed=0):
    """A 2D dataset of 8-bit PNG images with bright dots, their counts in counts.csv."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    rows = ["case,count"]
    for index in range(n_cases):
        count = index % 3
        image = rng.integers(0, 40, (size, size)).astype(np.uint8)
        for y, x in rng.integers(3, size - 3, (count, 2)):
            image[y - 1 : y + 2, x - 1 : x + 2] = 250
        Image.fromarray(image).save(root / "imagesTr" / f"dots_{index:02d}_0000.png")
        rows.append(f"dots_{index:02d},{count}")
    (root / "counts.csv").write_text("\n".join(rows) + "\n")
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "gray"}, "spacing": [1, 1]})
    )
    return root


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def trained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"attention{request.param}d")
    if request.param == 2:
        data = write_2d_png_dataset(root / "data")
    else:
        data = root / "data"
        invoke("synth", "phantom", "--out", data, "--cases", 4, "--shape", "16,32,32", "--seed", 2)
    run = root / "run"
    invoke(
        "train", data, "--labels", "counts", "--out", run, "--set", "model=gpunet_base",
        "--set", "epochs=1", "--set", "model_kwargs.filters=2", "--set", "num_threads=1",
    )  # fmt: skip
    signed = root / "signed"
    invoke("predict", data, "--run", run, "--out", signed)
    return data, run, signed


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_predict_writes_each_attention_map_and_detect_keeps_round_count_peaks(
    trained, tmp_path, method
):
    data, run, signed = trained
    maps = tmp_path / "maps"
    invoke("predict", data, "--run", run, "--out", maps, "--attention", method)
    summary = json.loads((maps / "predictions.json").read_text())
    assert summary["attention"] == method
    files = sorted(maps.glob(f"*_{method}.*"))
    assert len(files) == len(summary["cases"]) > 0
    for path in files:
        values, _ = read_image(path)
        case = path.name.split(f"_{method}.")[0]
        assert values.min() >= 0
        if method == "cam":  # the signed CAM of the default prediction, clipped
            (cam_path,) = signed.glob(f"{case}_count.*")
            np.testing.assert_allclose(values, np.maximum(read_image(cam_path)[0], 0), atol=1e-6)
        if method == "intensity":  # the channel mean of the normalised image
            image = zscore(load_dataset(data)[case].load().image)
            np.testing.assert_allclose(values, np.maximum(image.mean(axis=0), 0), atol=1e-5)

    detections = tmp_path / "lesions.csv"
    invoke(
        "detect", *files, "--method", "peaks", "--size", 3,
        "--top-n-from", maps / "predictions.json", "--out", detections,
    )  # fmt: skip
    found = read_detections_csv(detections)
    for path in files:
        case = path.name.split(f"_{method}.")[0]
        kept = len(found.get(case, ()))
        values, _ = read_image(path)
        wanted = max(int(np.floor(summary["cases"][case]["count"] + 0.5)), 0)
        assert kept == min(wanted, len(detect_by_count(values, 1e9, size=3)))


def _predicted_intensity_maps(data, run, out, *options):
    """``predict --attention intensity OPTIONS``: its summary, and each case's written map
    beside its normalised image."""
    invoke("predict", data, "--run", run, "--out", out, "--attention", "intensity", *options)
    summary = json.loads((out / "predictions.json").read_text())
    pairs = []
    for path in sorted(out.glob("*_intensity.*")):
        case = path.name.split("_intensity.")[0]
        pairs.append((read_image(path)[0], zscore(load_dataset(data)[case].load().image)))
    return summary, pairs


@pytest.mark.slow
def test_predict_subtracts_the_empty_image_map_when_asked(trained, tmp_path):
    data, run, _ = trained
    options = ("--attention-reference", "empty")
    summary, pairs = _predicted_intensity_maps(data, run, tmp_path / "maps", *options)
    assert summary["attention_reference"] == "empty"
    for written, image in pairs:
        low = image.reshape(len(image), -1).min(axis=1)
        expected = (image - low.reshape(-1, *[1] * (image.ndim - 1))).mean(axis=0)
        np.testing.assert_allclose(written, expected, atol=1e-5)
    result = runner.invoke(
        app,
        ["predict", str(data), "--run", str(run), "--out", str(tmp_path / "x"),
         "--attention-reference", "empty"],
    )  # fmt: skip
    assert result.exit_code == 2 and "attention_reference: got 'empty'" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_predict_smooths_the_attention_map_when_asked(trained, tmp_path):
    data, run, _ = trained
    options = ("--attention-smooth", "1.5")
    summary, pairs = _predicted_intensity_maps(data, run, tmp_path / "maps", *options)
    assert summary["attention_smooth"] == 1.5
    for written, image in pairs:
        expected = ndimage.gaussian_filter(
            np.maximum(image.mean(axis=0), 0), 1.5, mode="nearest", truncate=4.0
        )
        np.testing.assert_allclose(written, expected, atol=1e-5)
    for extra in (["--attention-smooth", "2"], ["--attention", "cam", "--attention-smooth", "-1"]):
        out = tmp_path / f"x{len(extra)}"
        result = runner.invoke(
            app, ["predict", str(data), "--run", str(run), "--out", str(out), *extra]
        )
        assert result.exit_code == 2 and "attention_smooth: got" in result.output
        assert "Traceback" not in result.output and not out.exists()


@pytest.mark.slow
def test_detect_refuses_a_count_file_without_the_case(trained, tmp_path):
    _, _, signed = trained
    files = sorted(signed.glob("*_count.*"))
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({"cases": {}}))
    result = runner.invoke(
        app,
        [
            "detect", *map(str, files), "--method", "peaks", "--top-n-from", str(counts),
            "--out", str(tmp_path / "x.csv"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "has no predicted count" in result.output
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(
    ("shape", "sigma"),
    [((2, 17, 23), 1.5), ((1, 9, 12, 14), 2.0), ((1, 9, 12, 14), (0.0, 1.0, 2.5)), ((1, 5, 7), 3)],
)
def test_smooth_maps_matches_scipy_gaussian_filter(shape, sigma):
    maps = np.random.default_rng(0).random(shape).astype(np.float32)
    got = smooth_maps(torch.from_numpy(maps), sigma).numpy()
    sigmas = (0.0, *np.broadcast_to(sigma, (len(shape) - 1,)))
    expected = ndimage.gaussian_filter(maps, sigmas, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_smoothing_keeps_a_constant_and_merges_the_maxima_of_one_object():
    constant = torch.full((1, 12, 12), 2.5)
    assert torch.allclose(smooth_maps(constant, 3.0), constant)
    # Two spikes 5 pixels apart: two maxima in a 3-pixel box, one after smoothing by 3.
    spikes = torch.zeros(1, 32, 32)
    spikes[0, 16, 12] = spikes[0, 16, 17] = 1.0
    assert len(peak_detections(spikes[0].numpy(), size=3).scores) == 2
    merged = attention_maps(None, spikes[:, None], "intensity", smooth=3.0)
    assert len(peak_detections(merged[0].numpy(), size=3).scores) == 1
    assert torch.allclose(merged, smooth_maps(spikes, 3.0))


@pytest.mark.parametrize("smooth", [-1.0, float("nan"), "2", (1.0,), True])
def test_smoothing_refuses_what_is_not_a_standard_deviation(smooth):
    images = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="smooth: got"):
        attention_maps(None, images, "intensity", smooth=smooth)
