"""The 3D convolution that runs a lone image as a batch of two: same outputs and gradients
as PyTorch's own convolution, checked in double precision and through a whole U-Net."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from weaklesion.models import UNet
from weaklesion.models.unet import NATIVE_BATCH_ONE_LIMIT, Conv3d


def _reference(conv: Conv3d, x: torch.Tensor) -> torch.Tensor:
    """The convolution in float64 with PyTorch's functional form."""
    return nn.functional.conv3d(
        x.double(),
        conv.weight.double(),
        None if conv.bias is None else conv.bias.double(),
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
    )


@pytest.mark.parametrize(
    ("channels", "shape", "kernel", "batch"),
    [
        (2, (8, 16, 16), 3, 1),  # lone small image: run as two copies
        (8, (4, 8, 6), 3, 1),
        (3, (5, 6, 7), 1, 1),  # 1x1x1 kernel: left to PyTorch
        (4, (8, 16, 16), 3, 2),  # a batch: left to PyTorch
        (40, (24, 24, 8), 3, 1),  # channels x depth x height above the limit
    ],
)
def test_outputs_and_gradients_equal_a_double_precision_convolution(channels, shape, kernel, batch):
    torch.manual_seed(0)
    conv = Conv3d(channels, 5, kernel, padding=kernel // 2)
    x = torch.randn(batch, channels, *shape, requires_grad=True)
    weights = torch.randn(batch, 5, *shape, dtype=torch.float64)
    out = conv(x)
    assert out.shape == (batch, 5, *shape)
    (out.double() * weights).sum().backward()
    xr = x.detach().double().requires_grad_(True)
    wr = conv.weight.detach().double().requires_grad_(True)
    br = conv.bias.detach().double().requires_grad_(True)
    expected = nn.functional.conv3d(xr, wr, br, padding=kernel // 2)
    (expected * weights).sum().backward()
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert torch.allclose(x.grad.double(), xr.grad, atol=1e-4)
    assert torch.allclose(conv.weight.grad.double(), wr.grad, rtol=1e-4, atol=1e-3)
    assert torch.allclose(conv.bias.grad.double(), br.grad, rtol=1e-4, atol=1e-3)
    assert channels * shape[0] * shape[1] <= NATIVE_BATCH_ONE_LIMIT or channels == 40


def test_a_unet_trains_on_one_image_as_pytorch_convolutions_would():
    torch.manual_seed(0)
    ours = UNet(3, 2, 1, features=(4, 8, 16), dropout=0.0).train()
    theirs = copy.deepcopy(ours)
    for module in theirs.modules():
        if type(module) is Conv3d:
            module.__class__ = nn.Conv3d
    assert sum(type(m) is Conv3d for m in ours.modules()) > 0
    assert not any(type(m) is Conv3d for m in theirs.modules())
    x = torch.randn(1, 2, 16, 32, 32)
    target = torch.randn(1, 1, 16, 32, 32)
    losses = []
    for network in (ours, theirs):
        loss = ((network(x) - target) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-6), name
