"""The GP-Unet baselines of Dubost et al. (Medical Image Analysis 2020), 2D and 3D alike.

Every network here ends like GP-Unet (:class:`~weaklesion.models.GPUNet`): its last
feature maps ``f``, shape ``(N, C, *spatial)`` at the input's full resolution, are
averaged over the image (global average pooling) and mapped to the count by one linear
unit, ``count = w · mean(f) + b``. Without the pooling, the same weights give the class
activation map ``CAM = Σ_c w_c f_c + b``, whose voxel mean is the count exactly.

- :class:`GPUNetNoResidual` (``"gpunet_noresidual"``): a deeper U-Net with two poolings
  and no block-wise concatenation;
- :class:`TwoScaleGPUNet` (``"gpunet_base"``): two scales, each globally pooled, the
  pooled vectors concatenated and fed to the output unit; the base network of the
  gradient methods (Grad-CAM, Grad, Guided backpropagation);
- :class:`TwoScaleGPUNet` with ``attention_gate=True`` (``"gated_attention"``): the same
  with an additive attention gate (Schlemper et al., Medical Image Analysis 2019) that
  weights the full-resolution features by coefficients computed from the deeper ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from weaklesion.models.gpunet import _default_filters, _PooledCount, conv_block
from weaklesion.models.unet import CONVOLUTIONS, MAX_POOLS

__all__ = ["AttentionGate", "GPUNetNoResidual", "TwoScaleGPUNet"]


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resize of ``x`` to the spatial size of ``like``."""
    return functional.interpolate(x, size=like.shape[2:], mode="nearest")


class GPUNetNoResidual(_PooledCount):
    """GP-Unet without residual connections: a U-Net with two poolings and a count output.

    Layers, all 3×3(×3) convolutions with zero padding and ReLU, ``F = filters``:

    1. two ``F``-filter convolutions (full resolution), 2× max-pooling;
    2. two ``2F``-filter convolutions (1/2), 2× max-pooling;
    3. two ``4F``-filter convolutions (1/4);
    4. 2× nearest-neighbour upsampling, concatenated with the output of 2, two
       ``2F``-filter convolutions;
    5. 2× upsampling, concatenated with the output of 1, two ``F``-filter convolutions:
       the last feature maps ``f``, shape ``(N, F, *spatial)``;
    6. global average pooling and one linear unit: ``count = w · mean(f) + b``.

    Unlike GP-Unet (architecture A), no block's input is concatenated with its output;
    the network is deeper instead: 32-64-128 filters down and 64-32 up in 3D, a quarter
    of that (8-16-32, 16-8) in 2D. The class activation map is
    ``CAM = Σ_c w_c f_c + b``, with ``mean(CAM) = count``.

    Every spatial axis needs at least 4 voxels; odd sizes are allowed (the upsampled
    maps are resized to the size before pooling).

    Parameters
    ----------
    spatial_dims : int
        2 for images ``(N, C, Y, X)``, 3 for volumes ``(N, C, Z, Y, X)``.
    in_channels : int
        Number of input channels C.
    filters : int, optional
        Filters of the first level ``F``; ``None`` gives 32 in 3D and 8 in 2D.

    Examples
    --------
    >>> import torch
    >>> net = GPUNetNoResidual(spatial_dims=2, filters=2)
    >>> count, cam = net.predict(torch.rand(2, 1, 9, 12))
    >>> tuple(count.shape), tuple(cam.shape)
    ((2,), (2, 9, 12))
    >>> bool(torch.allclose(cam.mean(dim=(1, 2)), count, atol=1e-6))
    True
    """

    smallest_size = 4

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        filters: int | None = None,
        normalization: str | None = None,
        output: str = "linear",
    ):
        super().__init__()
        filters = _default_filters(spatial_dims, filters, in_channels)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.filters = filters
        f = filters
        self.encoder = conv_block(spatial_dims, in_channels, f, 2, normalization)
        self.pool = MAX_POOLS[spatial_dims](2)
        self.middle = conv_block(spatial_dims, f, 2 * f, 2, normalization)
        self.bottom = conv_block(spatial_dims, 2 * f, 4 * f, 2, normalization)
        self.middle_decoder = conv_block(spatial_dims, 4 * f + 2 * f, 2 * f, 2, normalization)
        self.decoder = conv_block(spatial_dims, 2 * f + f, f, 2, normalization)
        self._make_output(f, output)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature maps ``(N, filters, *spatial)`` of images ``(N, in_channels, *spatial)``."""
        x = self._checked(x)
        top = self.encoder(x)
        middle = self.middle(self.pool(top))
        low = self.bottom(self.pool(middle))
        middle = self.middle_decoder(torch.cat([middle, _upsample(low, middle)], dim=1))
        return self.decoder(torch.cat([top, _upsample(middle, top)], dim=1)).contiguous()


class AttentionGate(nn.Module):
    """Additive attention gate: features weighted by coefficients from a gating signal.

    ``α = sigmoid(ψ(ReLU(W_x x + up(W_g g))))`` and the gated features are ``α · x``,
    where ``W_x``, ``W_g`` and ``ψ`` are 1×1(×1) convolutions (``W_x`` without bias, ``ψ``
    to one channel) and ``up`` is nearest-neighbour upsampling of the coarser gating
    signal to the size of ``x``. The coefficients lie in (0, 1), one per voxel, shared by
    the channels.

    Schlemper et al. downsample ``x`` to the gating grid with a strided ``W_x`` and
    resample the coefficients to the size of ``x``; here the sum is formed at the size of
    ``x``, so that the gate keeps the full resolution of the features it weights.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : int
        Channels of the gated features ``x``.
    gating_channels : int
        Channels of the gating signal ``g``.
    intermediate_channels : int
        Channels of ``W_x x`` and ``W_g g``.

    Examples
    --------
    >>> import torch
    >>> gate = AttentionGate(2, channels=3, gating_channels=4, intermediate_channels=2)
    >>> alpha = gate.coefficients(torch.rand(1, 3, 8, 6), torch.rand(1, 4, 4, 3))
    >>> tuple(alpha.shape), bool(((alpha > 0) & (alpha < 1)).all())
    ((1, 1, 8, 6), True)
    """

    def __init__(
        self, spatial_dims: int, channels: int, gating_channels: int, intermediate_channels: int
    ):
        super().__init__()
        conv = CONVOLUTIONS[spatial_dims]
        self.features_projection = conv(channels, intermediate_channels, 1, bias=False)
        self.gating_projection = conv(gating_channels, intermediate_channels, 1)
        self.activation = nn.ReLU(inplace=True)
        self.psi = conv(intermediate_channels, 1, 1)

    def coefficients(self, x: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """Attention coefficients ``(N, 1, *spatial)`` in (0, 1) for features ``x``."""
        projected = self.features_projection(x) + _upsample(self.gating_projection(gating), x)
        return torch.sigmoid(self.psi(self.activation(projected)))

    def forward(self, x: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """Gated features ``α · x``, shaped like ``x``."""
        return x * self.coefficients(x, gating)


class TwoScaleGPUNet(_PooledCount):
    """Count network pooling two scales; optionally with an attention gate.

    Layers, all 3×3(×3) convolutions with zero padding and ReLU, ``F = filters``:

    1. two ``F``-filter convolutions: the full-resolution features ``f1``;
    2. 2× max-pooling and two ``2F``-filter convolutions: the deeper features ``f2``;
    3. with ``attention_gate``, ``f1`` is replaced by ``α · f1``, the output of an
       :class:`AttentionGate` gated by ``f2`` (in place of GP-Unet's upsampling and
       concatenation);
    4. global average pooling of both scales, the pooled vectors concatenated and fed to
       one linear unit: ``count = w1 · mean(f1) + w2 · mean(f2) + b``.

    The last feature maps are ``f = [f1, up(f2)]`` at full resolution (``up``:
    nearest-neighbour upsampling), shape ``(N, 3F, *spatial)``, and the class activation
    map is the CAM of both scales,
    ``CAM = Σ_c w1_c f1_c + up(Σ_c w2_c f2_c) + b``, so ``mean(CAM) = count`` exactly.
    The deeper scale is pooled after the upsampling: the same as pooling it at its own
    size when every spatial size is even, and an exact identity for odd sizes too (the
    last row of an odd axis, which max-pooling drops, repeats its neighbour).

    Parameters
    ----------
    spatial_dims : int
        2 for images ``(N, C, Y, X)``, 3 for volumes ``(N, C, Z, Y, X)``.
    in_channels : int
        Number of input channels C.
    filters : int, optional
        Filters of the full-resolution convolutions ``F``; ``None`` gives 32 in 3D and 8
        in 2D.
    attention_gate : bool
        Gate the full-resolution features by the deeper ones (``"gated_attention"``);
        without it the network is the base network of the gradient methods
        (``"gpunet_base"``).

    Examples
    --------
    >>> import torch
    >>> net = TwoScaleGPUNet(spatial_dims=3, filters=2, attention_gate=True)
    >>> count, cam = net.predict(torch.rand(2, 1, 5, 8, 6))
    >>> tuple(net.features(torch.rand(2, 1, 5, 8, 6)).shape), tuple(cam.shape)
    ((2, 6, 5, 8, 6), (2, 5, 8, 6))
    >>> bool(torch.allclose(cam.mean(dim=(1, 2, 3)), count, atol=1e-6))
    True
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        filters: int | None = None,
        attention_gate: bool = False,
        normalization: str | None = None,
        output: str = "linear",
    ):
        super().__init__()
        filters = _default_filters(spatial_dims, filters, in_channels)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.filters = filters
        self.encoder = conv_block(spatial_dims, in_channels, filters, 2, normalization)
        self.pool = MAX_POOLS[spatial_dims](2)
        self.bottom = conv_block(spatial_dims, filters, 2 * filters, 2, normalization)
        self.gate = (
            AttentionGate(spatial_dims, filters, 2 * filters, filters) if attention_gate else None
        )
        self._make_output(3 * filters, output)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Both scales at full resolution, ``(N, 3 * filters, *spatial)``: ``[f1, up(f2)]``."""
        x = self._checked(x)
        top = self.encoder(x)
        low = self.bottom(self.pool(top))
        if self.gate is not None:
            top = self.gate(top, low)
        return torch.cat([top, _upsample(low, top)], dim=1).contiguous()
