"""A U-Net for dense targets: Gaussian heatmaps, distance maps and segmentations.

One definition serves 2D and 3D images (``spatial_dims``). The network returns raw
outputs with no final activation, because the objective decides what they mean (a
heatmap regressed with MSE, logits for a segmentation loss). Its bottleneck and last
decoder features are returned on request, so that count heads can be attached to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from weaklesion._validation import check_batch

# PyTorch's CPU convolution (torch 2.13) runs a batch of two or more through oneDNN, but a
# lone image only when channels x depth x height exceeds this or the kernel is wider than
# 3; below it a native kernel was 3-4 times slower than oneDNN on two copies of the image
# (benchmarks/bench_batch_one.py).
NATIVE_BATCH_ONE_LIMIT = 20480


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that convolves a lone small image on a CPU as a batch of two copies.

    Same parameters, state and outputs as ``nn.Conv3d`` (up to the rounding of another
    summation order). Where PyTorch would take its slow native kernel for a batch of one
    (see :data:`NATIVE_BATCH_ONE_LIMIT`), the image is repeated along the batch (a view,
    no copy) and the first output kept: the demo's U-Net then trains on one image and
    predicts one volume several times faster. Gradients reach the input and weights
    through the kept copy only, so they are those of the single image.

    Examples
    --------
    >>> conv = Conv3d(2, 4, 3, padding=1)
    >>> x = torch.randn(1, 2, 8, 16, 16)
    >>> torch.allclose(conv(x), nn.functional.conv3d(x, conv.weight, conv.bias, padding=1),
    ...                atol=1e-6)
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, D, H, W)`` → ``(N, C_out, D', H', W')``, as ``nn.Conv3d``."""
        if (
            x.dim() == 5
            and x.shape[0] == 1
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.groups == 1
            and (self.kernel_size[-1] > 1 or self.kernel_size[-2] > 1)
            and not (self.kernel_size[-1] > 3 and self.kernel_size[-2] > 3)
            and x.shape[1] * x.shape[2] * x.shape[3] <= NATIVE_BATCH_ONE_LIMIT
        ):
            return super().forward(x.expand(2, *x.shape[1:]))[:1]
        return super().forward(x)


CONVOLUTIONS = {2: nn.Conv2d, 3: Conv3d}
TRANSPOSED_CONVOLUTIONS = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
MAX_POOLS = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
MEMORY_FORMATS = {2: torch.channels_last, 3: torch.channels_last_3d}


def check_spatial_dims(spatial_dims: int) -> None:
    """Raise ``ValueError`` unless ``spatial_dims`` is 2 or 3."""
    if spatial_dims not in CONVOLUTIONS:
        raise ValueError(f"spatial_dims: got {spatial_dims!r}; expected 2 or 3")


def _normalisation(norm: str | None, channels: int, spatial_dims: int) -> nn.Module:
    if norm == "instance":
        # Group normalisation with one channel per group is instance normalisation with
        # a learned scale and shift per channel; its CPU kernels are several times faster
        # than those of InstanceNorm, which go through batch normalisation of a reshape.
        return nn.GroupNorm(channels, channels)
    if norm == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    return nn.Identity()


def _conv_block(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    norm: str | None,
    negative_slope: float,
    dropout: float,
) -> nn.Sequential:
    """Two 3×3(×3) convolutions, each followed by normalisation and activation.

    Dropout sits between the two convolutions: once per block rather than after every
    convolution, because on a CPU drawing the random mask costs about as much as the
    convolution it follows.
    """
    conv = CONVOLUTIONS[spatial_dims]
    # A bias before a normalisation that subtracts the mean has no effect (and no gradient).
    bias = norm is None

    def activation() -> nn.Module:
        return nn.LeakyReLU(negative_slope, inplace=True) if negative_slope else nn.ReLU(True)

    return nn.Sequential(
        conv(in_channels, out_channels, 3, padding=1, bias=bias),
        _normalisation(norm, out_channels, spatial_dims),
        activation(),
        nn.Dropout(dropout) if dropout else nn.Identity(),
        conv(out_channels, out_channels, 3, padding=1, bias=bias),
        _normalisation(norm, out_channels, spatial_dims),
        activation(),
    )


class UNet(nn.Module):
    """U-Net with one level per entry of ``features`` (the default: 5 levels, 4 poolings).

    Each level is a block of two 3×3(×3) convolutions with normalisation, leaky ReLU and
    dropout between them. The encoder halves the size with 2× max-pooling between
    levels; the decoder doubles it with a 2× transposed convolution, concatenates the
    encoder features of the same level and applies a block. A 1×1(×1) convolution maps
    the last decoder features to the outputs.

    Any input size works: pooling rounds sizes up (``ceil_mode``), and each upsampled map
    is cropped to the size of the encoder features it joins, so the output always has the
    input's spatial shape. Sizes divisible by ``2 ** (len(features) - 1)`` (16 by
    default) avoid the partial pooling windows at the far borders. With instance
    normalisation, training needs more than one voxel at the bottleneck: some axis
    longer than 16 voxels with the default depth.

    Parameters
    ----------
    spatial_dims : int
        2 for images ``(N, C, Y, X)``, 3 for volumes ``(N, C, Z, Y, X)``.
    in_channels : int
        Number of input channels C.
    out_channels : int
        Number of output maps.
    features : sequence of int
        Number of feature maps at each level, from full resolution to the bottleneck;
        at least 2 levels.
    dropout : float
        Probability in [0, 1) of zeroing a feature value in each block (training mode,
        or always after :func:`weaklesion.models.enable_mc_dropout`); 0 for none.
    norm : {"instance", "batch"} or None
        Normalisation after each convolution. Instance normalisation (per sample and
        channel, with a learned scale and shift) makes each sample's output independent of
        the rest of the batch, so a batch of 1 trains the same as a larger one.
    negative_slope : float
        Slope of the leaky ReLU for negative inputs; 0 gives a ReLU.

    Examples
    --------
    >>> import torch
    >>> net = UNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 8))
    >>> output, features = net.forward_features(torch.zeros(1, 1, 40, 23))
    >>> tuple(output.shape), tuple(features["bottleneck"].shape)
    ((1, 2, 40, 23), (1, 8, 3, 2))
    >>> tuple(features["decoder"].shape)
    (1, 4, 40, 23)
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float = 0.1,
        norm: Literal["instance", "batch"] | None = "instance",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features: got {features}; expected at least 2 positive widths")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"in_channels, out_channels: got {in_channels}, {out_channels}; "
                "expected positive numbers"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: got {dropout}; expected a probability in [0, 1)")
        if norm not in ("instance", "batch", None):
            raise ValueError(f"norm: got {norm!r}; expected 'instance', 'batch' or None")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features

        def block(cin: int, cout: int) -> nn.Sequential:
            return _conv_block(spatial_dims, cin, cout, norm, negative_slope, dropout)

        widths = (in_channels, *features)
        self.encoder = nn.ModuleList(
            block(a, b) for a, b in zip(widths[:-1], features, strict=True)
        )
        self.pool = MAX_POOLS[spatial_dims](2, ceil_mode=True)
        up = TRANSPOSED_CONVOLUTIONS[spatial_dims]
        lower, upper = features[:0:-1], features[-2::-1]
        self.upsample = nn.ModuleList(
            up(a, b, 2, stride=2) for a, b in zip(lower, upper, strict=True)
        )
        self.decoder = nn.ModuleList(block(2 * b, b) for b in upper)
        self.head = CONVOLUTIONS[spatial_dims](features[0], out_channels, 1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Outputs and the internal features that count heads attach to.

        Parameters
        ----------
        x : (N, in_channels, *spatial) float tensor
            Batch of images.

        Returns
        -------
        output : (N, out_channels, *spatial) float tensor
            Raw outputs (no final activation).
        features : dict of str to tensor
            ``"bottleneck"``: ``(N, features[-1], *ceil(spatial / 2 ** (levels - 1)))``,
            the deepest encoder features; ``"decoder"``: ``(N, features[0], *spatial)``,
            the last decoder features, from which the 1×1 convolution makes ``output``.
        """
        check_batch(x, "x", self.spatial_dims, self.in_channels)
        # In channels-last layout the CPU convolution kernels skip a layout conversion
        # before and after each convolution: predictions about 1.2× faster.
        h = x.contiguous(memory_format=MEMORY_FORMATS[self.spatial_dims])
        skips = []
        for level, block in enumerate(self.encoder):
            h = block(self.pool(h) if level else h)
            skips.append(h)
        bottleneck = skips.pop()
        h = bottleneck
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            crop = tuple(slice(0, size) for size in skip.shape[2:])
            h = block(torch.cat([skip, upsample(h)[(..., *crop)]], dim=1))
        output = self.head(h).contiguous()
        return output, {"bottleneck": bottleneck.contiguous(), "decoder": h.contiguous()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(N, out_channels, *spatial)`` for images ``(N, in_channels, *spatial)``."""
        return self.forward_features(x)[0]
