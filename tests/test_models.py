"""Specifications of the networks: shapes, attention maps, gradients, dropout, learning."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from weaklesion.models import (
    MODEL_NAMES,
    GPUNet,
    UNet,
    build_model,
    enable_mc_dropout,
    model_summary,
)

TINY = (2, 4, 4, 8, 8)


pytestmark = pytest.mark.usefixtures("seeded")


def _unet_parameters(spatial_dims, in_channels, out_channels, features):
    """Parameter count of the U-Net worked out layer by layer."""
    kernel, up_kernel = 3**spatial_dims, 2**spatial_dims

    def block(cin, cout):  # two bias-free convolutions, two norms with scale and shift
        return cin * cout * kernel + cout * cout * kernel + 4 * cout

    total = sum(block(a, b) for a, b in zip((in_channels, *features[:-1]), features, strict=True))
    for lower, upper in zip(features[:0:-1], features[-2::-1], strict=True):
        total += lower * upper * up_kernel + upper + block(2 * upper, upper)
    return total + features[0] * out_channels + out_channels


def _gpunet_parameters(spatial_dims, in_channels, filters):
    """Parameter count of GP-Unet architecture A worked out layer by layer."""
    kernel = 3**spatial_dims

    def conv(cin, cout):
        return cin * cout * kernel + cout

    top = in_channels + filters
    return (
        conv(in_channels, filters)
        + conv(filters, filters)
        + conv(top, 2 * filters)
        + conv(2 * filters, 2 * filters)
        + conv(2 * top + 2 * filters, filters)
        + filters
        + 1
    )


@pytest.mark.parametrize(
    "shape",
    [(2, 2, 32, 48), (1, 2, 15, 21), (2, 2, 16, 32, 16), (1, 2, 17, 19, 23)],
    ids=["2d-divisible", "2d-odd", "3d-divisible", "3d-odd"],
)
def test_unet_keeps_the_input_size_and_exposes_its_features(shape):
    spatial = shape[2:]
    net = UNet(spatial_dims=len(spatial), in_channels=2, out_channels=3, features=TINY)
    output, features = net.forward_features(torch.randn(shape))
    assert output.shape == (shape[0], 3, *spatial)
    assert features["decoder"].shape == (shape[0], TINY[0], *spatial)
    bottleneck = tuple(math.ceil(s / 16) for s in spatial)
    assert features["bottleneck"].shape == (shape[0], TINY[-1], *bottleneck)
    # The outputs are the 1×1 convolution of the returned decoder features.
    assert torch.allclose(net.head(features["decoder"]), output, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unet_parameter_count_matches_the_architecture(spatial_dims):
    net = UNet(spatial_dims, in_channels=2, out_channels=3, features=(3, 5, 7, 11, 13))
    summary = model_summary(net)
    assert summary["parameters"] == sum(p.numel() for p in net.parameters())
    assert summary["parameters"] == _unet_parameters(spatial_dims, 2, 3, (3, 5, 7, 11, 13))
    assert summary["trainable_parameters"] == summary["parameters"]


@pytest.mark.parametrize("spatial_dims, filters", [(2, None), (3, None), (3, 5)])
def test_gpunet_parameter_count_matches_architecture_a(spatial_dims, filters):
    net = GPUNet(spatial_dims, in_channels=2, filters=filters)
    expected_filters = filters or {2: 8, 3: 32}[spatial_dims]
    assert net.filters == expected_filters
    summary = model_summary(net)
    assert summary["parameters"] == sum(p.numel() for p in net.parameters())
    assert summary["parameters"] == _gpunet_parameters(spatial_dims, 2, expected_filters)


def test_model_summary_counts_frozen_and_shared_parameters_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 1))
    model[3].weight.requires_grad_(False)
    summary = model_summary(model)
    assert summary["parameters"] == 20 + 5
    assert summary["trainable_parameters"] == 20 + 1


@pytest.mark.parametrize(
    "shape", [(2, 1, 16, 16), (3, 1, 15, 21), (2, 1, 8, 16, 12), (1, 1, 9, 7, 11)]
)
def test_gpunet_attention_map_has_the_input_size_and_averages_to_the_count(shape):
    net = GPUNet(spatial_dims=len(shape) - 2, filters=4).eval()
    x = torch.rand(shape) * 3
    with torch.no_grad():
        count = net(x)
        attention = net.attention_map(x)
        predicted_count, predicted_attention = net.predict(x)
    assert count.shape == (shape[0],)
    assert attention.shape == (shape[0], *shape[2:])
    assert torch.allclose(attention.flatten(1).mean(dim=1), count, atol=1e-5)
    assert torch.equal(predicted_count, count)
    assert torch.equal(predicted_attention, attention)


def test_gpunet_attention_map_is_the_weighted_sum_of_the_last_feature_maps():
    net = GPUNet(spatial_dims=3, filters=4).eval()
    weights = np.array([0.5, -1.25, 2.0, 0.75])
    with torch.no_grad():
        net.regressor.weight.copy_(torch.tensor(weights[None]))
        net.regressor.bias.fill_(0.3)
    captured = {}
    net.decoder.register_forward_hook(lambda module, args, output: captured.update(f=output))
    x = torch.rand(2, 1, 6, 10, 8)
    with torch.no_grad():
        count, attention = net.predict(x)
    features = captured["f"].double().numpy()
    assert features.shape == (2, 4, 6, 10, 8)
    expected = np.einsum("nczyx,c->nzyx", features, weights) + 0.3
    np.testing.assert_allclose(attention.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        count.numpy(), features.mean(axis=(2, 3, 4)) @ weights + 0.3, atol=1e-5
    )
    # The last features come after a ReLU, so they are never negative.
    assert features.min() >= 0


def test_empty_batches_give_empty_outputs_of_the_right_shape():
    output, features = UNet(3, out_channels=2, features=TINY).forward_features(
        torch.zeros(0, 1, 20, 18, 17)
    )
    assert output.shape == (0, 2, 20, 18, 17)
    assert features["bottleneck"].shape == (0, TINY[-1], 2, 2, 2)
    count, attention = GPUNet(2, filters=2).predict(torch.zeros(0, 1, 10, 12))
    assert count.shape == (0,)
    assert attention.shape == (0, 10, 12)


def _all_parameters_get_gradients(net, loss):
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_reach_every_unet_parameter(spatial_dims):
    net = UNet(spatial_dims, in_channels=2, out_channels=2, features=TINY, dropout=0.1)
    x = torch.randn(2, 2, *(20,) * spatial_dims)
    output = net(x)
    _all_parameters_get_gradients(net, (output * torch.randn_like(output)).sum())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_reach_every_gpunet_parameter(spatial_dims):
    net = GPUNet(spatial_dims, in_channels=2, filters=3)
    count = net(torch.rand(2, 2, *(10,) * spatial_dims))
    _all_parameters_get_gradients(net, (count - torch.tensor([3.0, 5.0])).square().sum())


def test_eval_is_deterministic_and_mc_dropout_samples():
    net = UNet(spatial_dims=3, features=TINY, dropout=0.2).eval()
    x = torch.randn(1, 1, 20, 18, 18)
    with torch.no_grad():
        first, second = net(x), net(x)
        assert torch.equal(first, second)
        enable_mc_dropout(net)
        samples = [net(x) for _ in range(3)]
    assert not torch.equal(samples[0], samples[1])
    assert not torch.equal(samples[1], samples[2])
    # Only the dropout layers were switched to training mode.
    for module in net.modules():
        assert module.training == isinstance(module, nn.Dropout), type(module).__name__
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), first)


def test_mc_dropout_refuses_a_model_without_dropout():
    with pytest.raises(ValueError, match="model: UNet has no dropout layer"):
        enable_mc_dropout(UNet(spatial_dims=2, features=TINY, dropout=0))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_instance_norm_unet_treats_each_sample_alone(spatial_dims):
    # Batch statistics would make a sample's output depend on its batch mates; with
    # instance normalisation a batch of one trains and predicts like any other batch.
    net = UNet(spatial_dims, features=TINY, dropout=0).train()
    x = torch.randn(3, 1, *(20,) * spatial_dims)
    together = net(x)
    alone = torch.cat([net(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)
    batch_norm = UNet(spatial_dims, features=TINY, dropout=0, norm="batch").train()
    together = batch_norm(x)
    alone = torch.cat([batch_norm(x[i : i + 1]) for i in range(3)])
    assert not torch.allclose(together, alone, atol=1e-3)


@pytest.mark.slow
def test_tiny_unet_overfits_a_blob_heatmap():
    grid = np.stack(np.meshgrid(*(np.arange(20),) * 3, indexing="ij"), axis=-1)
    centre = np.array([9.3, 8.6, 11.2])
    heatmap = np.exp(-((grid - centre) ** 2).sum(axis=-1) / (2 * 3.0**2))
    image = heatmap + 0.2 * np.random.default_rng(0).standard_normal(heatmap.shape)
    x = torch.tensor(image[None, None], dtype=torch.float32)
    target = torch.tensor(heatmap[None, None], dtype=torch.float32)
    net = UNet(spatial_dims=3, features=(4, 8, 8, 16, 16), dropout=0)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(70):
        optimiser.zero_grad()
        loss = (net(x) - target).square().mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    final = (net(x) - target).square().mean().item()
    assert final <= 0.1 * losses[0]
    # 10× better than the best constant map: the network has located the blob.
    assert final <= 0.1 * target.var().item()


def test_build_model_makes_each_network_by_name():
    assert {"unet", "gpunet"} <= set(MODEL_NAMES)
    unet = build_model("UNet", spatial_dims=2, in_channels=3, out_channels=2, features=[2, 4, 8])
    assert isinstance(unet, UNet)
    assert (unet.spatial_dims, unet.in_channels, unet.out_channels) == (2, 3, 2)
    assert unet.features == (2, 4, 8)
    gpunet = build_model("gpunet", spatial_dims=3, in_channels=2, filters=6)
    assert isinstance(gpunet, GPUNet)
    assert (gpunet.spatial_dims, gpunet.in_channels, gpunet.filters) == (3, 2, 6)


def test_build_model_rejects_unknown_names_and_multiple_counts():
    with pytest.raises(ValueError, match=r"name: got 'vnet'; expected one of .*'gpunet'.*'unet'"):
        build_model("vnet")
    with pytest.raises(ValueError, match="out_channels: got 2"):
        build_model("gpunet", out_channels=2)


@pytest.mark.parametrize(
    "net, x, message",
    [
        (UNet(2, features=TINY), torch.zeros(1, 1, 16, 16, 16), "expected a 2D batch"),
        (UNet(3, in_channels=2, features=TINY), torch.zeros(1, 1, 16, 16, 16), "expected 2"),
        (GPUNet(3, filters=2), torch.zeros(1, 1, 16, 16), "expected a 3D batch"),
        (GPUNet(2, filters=2), torch.zeros(1, 1, 1, 16), "at least 2 voxels"),
    ],
)
def test_bad_inputs_are_named(net, x, message):
    with pytest.raises(ValueError, match=f"x: .*{message}"):
        net(x)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: UNet(spatial_dims=1), "spatial_dims: got 1"),
        (lambda: UNet(features=(8,)), "features: got"),
        (lambda: UNet(dropout=1.0), "dropout: got 1.0"),
        (lambda: UNet(norm="layer"), "norm: got 'layer'"),
        (lambda: GPUNet(spatial_dims=4), "spatial_dims: got 4"),
        (lambda: GPUNet(filters=0), "in_channels, filters: got 1, 0"),
    ],
)
def test_bad_arguments_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()
