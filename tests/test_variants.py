"""Specifications of the GP-Unet baselines: layers, class activation maps, the attention
gate, the registry, both count objectives, and training through the command line."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.io import read_image
from weaklesion.models import (
    MODEL_NAMES,
    GPUNetNoResidual,
    TwoScaleGPUNet,
    build_model,
    model_summary,
)
from weaklesion.training import TrainConfig
from weaklesion.training.objectives import objective_for

COUNT_MODELS = ("gpunet", "gpunet_noresidual", "gpunet_base", "gated_attention")


pytestmark = pytest.mark.usefixtures("seeded")


def _conv(cin, cout, spatial_dims, kernel=3, bias=True):
    return cin * cout * kernel**spatial_dims + (cout if bias else 0)


def _blocks(spatial_dims, *widths):
    """Parameters of two-convolution blocks: widths (in, out), (in, out), ..."""
    return sum(
        _conv(cin, cout, spatial_dims) + _conv(cout, cout, spatial_dims) for cin, cout in widths
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_parameter_counts_match_the_layers(spatial_dims):
    c, f = 2, 3
    no_residual = _blocks(
        spatial_dims, (c, f), (f, 2 * f), (2 * f, 4 * f), (6 * f, 2 * f), (3 * f, f)
    )
    base = _blocks(spatial_dims, (c, f), (f, 2 * f))
    gate = _conv(f, f, spatial_dims, 1, bias=False) + _conv(2 * f, f, spatial_dims, 1)
    gate += _conv(f, 1, spatial_dims, 1)
    expected = {
        "gpunet_noresidual": no_residual + f + 1,
        "gpunet_base": base + 3 * f + 1,
        "gated_attention": base + gate + 3 * f + 1,
    }
    for name, parameters in expected.items():
        net = build_model(name, spatial_dims, in_channels=c, filters=f)
        assert model_summary(net)["parameters"] == parameters, name


def test_default_filters_are_32_in_3d_and_a_quarter_in_2d():
    for name in COUNT_MODELS:
        assert build_model(name, spatial_dims=3).filters == 32
        assert build_model(name, spatial_dims=2).filters == 8


def test_the_registry_builds_each_variant_by_name():
    assert set(COUNT_MODELS) <= set(MODEL_NAMES)
    assert type(build_model("gpunet_noresidual", 2)) is GPUNetNoResidual
    base, gated = build_model("gpunet_base", 3), build_model("GATED_ATTENTION", 3)
    assert type(base) is TwoScaleGPUNet and base.gate is None
    assert type(gated) is TwoScaleGPUNet and gated.gate is not None
    with pytest.raises(ValueError, match="out_channels: got 2; 'gated_attention' predicts"):
        build_model("gated_attention", out_channels=2)


@pytest.mark.parametrize("name", COUNT_MODELS)
@pytest.mark.parametrize(
    "shape", [(2, 2, 16, 12), (3, 2, 9, 13), (2, 2, 8, 12, 8), (1, 2, 7, 9, 5)]
)
def test_cam_has_the_input_size_and_pools_back_to_the_count(name, shape):
    net = build_model(name, len(shape) - 2, in_channels=2, filters=2).eval()
    with torch.no_grad():
        net.regressor.bias.fill_(0.7)  # a visible bias, which the map must carry too
        x = torch.rand(shape) * 3
        count = net(x)
        cam = net.attention_map(x)
        same_count, same_cam = net.predict(x)
    assert count.shape == (shape[0],) and cam.shape == (shape[0], *shape[2:])
    torch.testing.assert_close(cam.flatten(1).mean(dim=1), count, atol=1e-5, rtol=1e-5)
    assert torch.equal(same_count, count) and torch.equal(same_cam, cam)


@pytest.mark.parametrize("name", ["gpunet_noresidual", "gpunet_base", "gated_attention"])
def test_cam_is_the_weighted_sum_of_the_last_feature_maps_plus_bias(name):
    net = build_model(name, 3, filters=2).eval()
    channels = net.regressor.in_features
    weights = np.linspace(-1.5, 2.0, channels)
    with torch.no_grad():
        net.regressor.weight.copy_(torch.tensor(weights[None]))
        net.regressor.bias.fill_(-0.4)
        x = torch.rand(2, 1, 8, 6, 10)
        features = net.features(x).double().numpy()
        count, cam = net.predict(x)
    assert features.shape == (2, channels, 8, 6, 10)
    expected = np.einsum("nczyx,c->nzyx", features, weights) - 0.4
    np.testing.assert_allclose(cam.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        count.numpy(), features.mean(axis=(2, 3, 4)) @ weights - 0.4, atol=1e-5
    )


@pytest.mark.parametrize("attention_gate", [False, True])
def test_two_scale_cam_adds_the_upsampled_deep_cam_to_the_full_resolution_cam(attention_gate):
    net = TwoScaleGPUNet(2, filters=3, attention_gate=attention_gate).eval()
    captured = {}
    net.encoder.register_forward_hook(lambda m, a, out: captured.update(f1=out.clone()))
    net.bottom.register_forward_hook(lambda m, a, out: captured.update(f2=out.clone()))
    if attention_gate:
        net.gate.register_forward_hook(lambda m, a, out: captured.update(gated=out.clone()))
    x = torch.rand(1, 1, 10, 8)
    with torch.no_grad():
        count, cam = net.predict(x)
    full = captured["gated"] if attention_gate else captured["f1"]
    deep = captured["f2"]
    assert full.shape == (1, 3, 10, 8) and deep.shape == (1, 6, 5, 4)
    w, b = net.regressor.weight[0].detach(), net.regressor.bias[0].detach()
    full_cam = torch.einsum("nchw,c->nhw", full, w[:3])
    deep_cam = torch.einsum("nchw,c->nhw", deep, w[3:])
    # Each deep voxel covers a 2×2 block of the input grid.
    expected = full_cam + deep_cam.repeat_interleave(2, 1).repeat_interleave(2, 2) + b
    torch.testing.assert_close(cam, expected, atol=1e-6, rtol=1e-5)
    # With even sizes the deep scale is pooled at its own resolution.
    pooled = full.mean(dim=(2, 3)) @ w[:3] + deep.mean(dim=(2, 3)) @ w[3:] + b
    torch.testing.assert_close(count, pooled, atol=1e-6, rtol=1e-5)


def test_attention_gate_weights_the_features_by_its_hand_computed_coefficients():
    net = TwoScaleGPUNet(3, filters=2, attention_gate=True).eval()
    captured = {}
    net.encoder.register_forward_hook(lambda m, a, out: captured.update(f1=out.clone()))
    net.bottom.register_forward_hook(lambda m, a, out: captured.update(f2=out.clone()))
    net.gate.register_forward_hook(lambda m, a, out: captured.update(gated=out.clone()))
    with torch.no_grad():
        net(torch.rand(2, 1, 6, 4, 8))
    f1, f2 = captured["f1"].double(), captured["f2"].double()
    gate = net.gate

    def pointwise(conv, x):  # a 1×1×1 convolution is a matrix applied at every voxel
        weight = conv.weight.detach().double()[:, :, 0, 0, 0]
        out = torch.einsum("oc,nczyx->nozyx", weight, x)
        return out if conv.bias is None else out + conv.bias.detach().double()[:, None, None, None]

    deep = pointwise(gate.gating_projection, f2)
    deep = deep.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    alpha = torch.sigmoid(
        pointwise(gate.psi, (pointwise(gate.features_projection, f1) + deep).relu())
    )
    assert alpha.shape == (2, 1, 6, 4, 8)
    assert ((alpha > 0) & (alpha < 1)).all()
    torch.testing.assert_close(captured["gated"].double(), alpha * f1, atol=1e-6, rtol=1e-5)


def test_no_residual_network_has_three_levels_and_no_block_concatenation():
    net = GPUNetNoResidual(3, in_channels=2, filters=2).eval()
    shapes = {}
    for name in ("encoder", "middle", "bottom", "middle_decoder", "decoder"):
        getattr(net, name).register_forward_hook(
            lambda m, a, out, name=name: shapes.update({name: tuple(out.shape)})
        )
    with torch.no_grad():
        net(torch.rand(1, 2, 8, 12, 9))
    assert shapes == {
        "encoder": (1, 2, 8, 12, 9),
        "middle": (1, 4, 4, 6, 4),
        "bottom": (1, 8, 2, 3, 2),
        "middle_decoder": (1, 4, 4, 6, 4),
        "decoder": (1, 2, 8, 12, 9),
    }
    # Each block's convolutions see only the previous block's output (and the skip).
    assert net.middle[0].in_channels == 2 and net.bottom[0].in_channels == 4
    assert net.middle_decoder[0].in_channels == 8 + 4 and net.decoder[0].in_channels == 4 + 2


@pytest.mark.parametrize("name", COUNT_MODELS)
def test_gradients_reach_every_parameter(name):
    net = build_model(name, 2, in_channels=2, filters=4)
    with torch.no_grad():
        net.regressor.weight.fill_(0.5)  # every feature channel feeds the count
    count = net(torch.randn(2, 2, 12, 12))
    (count - torch.tensor([3.0, 5.0])).square().sum().backward()
    for parameter_name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


def test_empty_batches_and_bad_inputs():
    for name in COUNT_MODELS:
        count, cam = build_model(name, 2, filters=2).predict(torch.zeros(0, 1, 8, 10))
        assert count.shape == (0,) and cam.shape == (0, 8, 10)
    with pytest.raises(ValueError, match=r"x: has spatial shape \(3, 16\); expected at least 4"):
        GPUNetNoResidual(2, filters=2)(torch.zeros(1, 1, 3, 16))
    with pytest.raises(ValueError, match=r"x: .*expected a 3D batch"):
        TwoScaleGPUNet(3, filters=2)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="x: has 2 channel"):
        TwoScaleGPUNet(2, filters=2, attention_gate=True)(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="in_channels, filters: got 1, 0"):
        GPUNetNoResidual(3, filters=0)
    with pytest.raises(ValueError, match="spatial_dims: got 4"):
        TwoScaleGPUNet(4)


def _blob_images(counts, size=16, seed=0):
    """One-channel images with ``count`` bright 2×2 squares each, at random places."""
    rng = np.random.default_rng(seed)
    images = np.zeros((len(counts), 1, size, size), dtype=np.float32)
    for image, count in zip(images, counts, strict=True):
        cells = rng.choice((size // 4) ** 2, size=count, replace=False)
        for cell in cells:
            y, x = divmod(int(cell), size // 4)
            image[0, 4 * y + 1 : 4 * y + 3, 4 * x + 1 : 4 * x + 3] = 1.0
    return torch.from_numpy(images)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["regression", "classification"])
def test_both_count_objectives_train_a_variant(objective):
    counts = torch.tensor([0, 1, 2, 3, 0, 2, 1, 3], dtype=torch.float32)
    images = _blob_images(counts.int().tolist())
    config = TrainConfig(labels="counts", count_objective=objective, model="gpunet_base")
    loss_of = objective_for(config)
    net = build_model("gpunet_base", 2, filters=4)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    batch = {"image": images, "count": counts}
    first = loss_of(net, batch, 0)[0].item()
    for _ in range(200):
        loss, _ = loss_of(net, batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        output = net(images)
    if objective == "regression":
        assert loss.item() < 0.1 * first
        assert torch.allclose(output, counts, atol=0.5)
    else:
        # The loss is the BCE against presence: a hand check of the formula, then learning.
        z, present = output.double(), (counts > 0).double()
        log_p, log_not_p = functional.logsigmoid(z), functional.logsigmoid(-z)
        bce = -(present * log_p + (1 - present) * log_not_p).mean()
        assert loss_of(net, batch, 0)[0].item() == pytest.approx(bce.item(), rel=1e-4, abs=1e-6)
        assert bce.item() < 0.1 * first
        assert torch.equal(z > 0, counts > 0)


def test_classification_objective_is_only_for_counts():
    with pytest.raises(ValueError, match="count_objective: 'classification' applies to 'counts'"):
        TrainConfig(labels="points", count_objective="classification")
    with pytest.raises(ValueError, match="count_objective: got 'poisson'"):
        TrainConfig(labels="counts", count_objective="poisson")


# The command line, end to end on tiny data.

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def write_2d_counts_dataset(root, n_cases=6, size=24, seed=0):
    """A 2D dataset of NPY images with bright blobs, and their counts in counts.csv."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    rows = ["case,count"]
    yy, xx = np.mgrid[:size, :size]
    for index in range(n_cases):
        count = index % 3
        image = rng.normal(0.0, 0.1, (size, size))
        for y, x in rng.uniform(4, size - 4, (count, 2)):
            image += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)
        np.save(root / "imagesTr" / f"case_{index:03d}_0000.npy", image.astype(np.float32))
        rows.append(f"case_{index:03d},{count}")
    (root / "counts.csv").write_text("\n".join(rows) + "\n")
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "image"}, "spacing": [1, 1]})
    )
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    invoke(
        "synth", "phantom", "--out", root / "3d", "--cases", 4, "--shape", "16,32,32", "--seed", 1
    )
    write_2d_counts_dataset(root / "2d")
    return {2: root / "2d", 3: root / "3d"}


@pytest.mark.slow
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", COUNT_MODELS)
def test_each_network_trains_and_predicts_through_the_command_line(
    datasets, tmp_path, name, spatial_dims
):
    data = datasets[spatial_dims]
    run = tmp_path / "run"
    invoke(
        "train", data, "--labels", "counts", "--out", run,
        "--set", f"model={name}", "--set", "epochs=1", "--set", "model_kwargs.filters=2",
        "--set", "num_threads=1",
    )  # fmt: skip
    maps = tmp_path / "maps"
    invoke("predict", data, "--run", run, "--out", maps)
    summary = json.loads((maps / "predictions.json").read_text())
    files = sorted(maps.glob("*_count.*"))
    assert len(files) == len(summary["cases"]) > 0
    for path in files:
        values, _ = read_image(path)
        assert values.ndim == spatial_dims
        case = path.name.split("_count.")[0]
        # The written map is the CAM: its mean is the predicted count.
        assert values.mean() == pytest.approx(summary["cases"][case]["count"], abs=1e-4)


@pytest.mark.slow
def test_classification_is_selected_from_the_command_line(datasets, tmp_path):
    run = tmp_path / "run"
    invoke(
        "train", datasets[2], "--labels", "counts", "--out", run,
        "--set", "count_objective=classification", "--set", "model=gpunet_base",
        "--set", "epochs=2", "--set", "model_kwargs.filters=2", "--set", "num_threads=1",
    )  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metric"] == "presence_nll"
    maps = tmp_path / "maps"
    invoke("predict", datasets[2], "--run", run, "--out", maps)
    summary = json.loads((maps / "predictions.json").read_text())
    for case, entry in summary["cases"].items():
        values, _ = read_image(maps / f"{case}_count.npy")
        # No count from a presence classifier: the map's mean is the presence logit.
        assert entry["count"] is None
        expected = torch.sigmoid(torch.tensor(values.mean(), dtype=torch.float64)).item()
        assert entry["presence_probability"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", COUNT_MODELS)
def test_count_networks_start_from_he_initialisation(name):
    # Every convolution and the output unit: weights N(0, 2 / fan_in), biases zero. The
    # 3D networks with 32 filters hold enough weights per layer to check the spread.
    net = build_model(name, 3, filters=32)
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear))]
    assert layers and layers[-1] is net.regressor
    for layer in layers:
        fan_in = layer.weight[0].numel()
        expected = (2.0 / fan_in) ** 0.5
        if layer.weight.numel() >= 2000:
            assert layer.weight.std().item() == pytest.approx(expected, rel=0.1)
            assert abs(layer.weight.mean().item()) < 0.1 * expected
        assert layer.weight.abs().max().item() > 0
        if layer.bias is not None:
            assert torch.count_nonzero(layer.bias) == 0
