"""GP-Unet: a count regressor whose pooling can be removed to give an attention map.

Architecture A of Dubost et al. (MICCAI 2017; Medical Image Analysis 2020): a small
U-Net-like network whose last feature maps are averaged over the image (global average
pooling) and mapped to the lesion count by one linear unit. Trained with MSE on
image-level counts, the same weights applied without the pooling give a class
activation map (CAM) at the input's full resolution, whose peaks are the detections.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from weaklesion._validation import check_batch
from weaklesion.models.unet import CONVOLUTIONS, MAX_POOLS, MEMORY_FORMATS, check_spatial_dims

NORMALIZATIONS = (None, "none", "batch")
OUTPUTS = ("linear", "density")
POOLINGS = ("average", "max")
_BATCH_NORMS = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def conv_block(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    convolutions: int = 2,
    normalization: str | None = None,
) -> nn.Sequential:
    """``convolutions`` 3×3(×3) zero-padded convolutions, each followed by ReLU.

    With ``normalization="batch"`` a batch normalisation sits between each convolution
    and its ReLU (the convolution then has no bias: the normalisation's shift replaces
    it). Batch statistics keep the differences between images, which the count is made
    of; a per-image normalisation (instance or group) would remove them. ``"none"``
    is the same as None (a name a configuration file can hold).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: got {normalization!r}; expected one of {NORMALIZATIONS}")
    if normalization == "none":
        normalization = None
    conv = CONVOLUTIONS[spatial_dims]
    layers: list[nn.Module] = []
    for index in range(convolutions):
        channels = in_channels if index == 0 else out_channels
        layers.append(conv(channels, out_channels, 3, padding=1, bias=normalization is None))
        if normalization == "batch":
            layers.append(_BATCH_NORMS[spatial_dims](out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def he_initialise(module: nn.Module) -> None:
    """He (Kaiming) normal weights for every convolution and linear layer, zero biases.

    Weights are drawn from ``N(0, 2 / fan_in)``, which keeps the variance of ReLU
    activations constant through the layers. The count networks start from this: with
    PyTorch's default (uniform with variance ``1 / (3 fan_in)``) their pooled features
    start so weak that a count network sits at the mean count for many epochs (measured
    on 7×5 MNIST grids of digit 4: 28 epochs against 9 with this initialisation).

    Examples
    --------
    >>> layer = nn.Conv2d(16, 8, 3)
    >>> he_initialise(layer)
    >>> bool(layer.bias.abs().max() == 0)
    True
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _default_filters(spatial_dims: int, filters: int | None, in_channels: int) -> int:
    """32 filters in 3D and a quarter of that (8) in 2D, as in the papers."""
    check_spatial_dims(spatial_dims)
    filters = (32 if spatial_dims == 3 else 8) if filters is None else int(filters)
    if in_channels < 1 or filters < 1:
        raise ValueError(
            f"in_channels, filters: got {in_channels}, {filters}; expected positive numbers"
        )
    return filters


class _PooledCount(nn.Module):
    """Count and class activation map from the full-resolution features ``features(x)``.

    Subclasses define ``features``, call :meth:`_make_output` with the number of feature
    channels, and call :meth:`_checked` on their input.

    Two output parameterisations (``output``):

    - ``"linear"`` (the papers'): ``CAM = Σ_c w_c f_c + b`` and ``count = mean(CAM)``,
      one linear unit after global average pooling;
    - ``"density"``: ``CAM = s · softplus(Σ_c w_c f_c + b)``, a non-negative map, and
      again ``count = mean(CAM)``. ``w`` starts at zero and ``b`` at
      ``softplus⁻¹(1)``, so the untrained network predicts ``s`` for every image;
      training sets ``s`` (the buffer ``count_scale``) to the mean training count
      (:meth:`set_initial_count`), so a count network starts at the mean count instead
      of having to grow its output unit by orders of magnitude to reach it.

    With :meth:`centre_batches` (the ``"linear"`` output of average pooling), a
    training batch's pooled features enter the output less their batch mean,
    ``count_i = w · (mean(f_i) - mean_batch mean(f)) + b``, and at inference less the
    buffer ``pooled_mean``, which training sets to their mean over the training images
    after every epoch (:meth:`set_pooled_mean`), together with ``b`` (:meth:`shift_level`).
    A batch's counts then differ only by what tells its images apart, and the loss
    gradient reaching the weights is ``Σ g_i (J_i - mean J)`` with
    ``g_i = ∂L/∂count_i`` and ``J_i = ∂ mean(f_i)/∂θ · w``: the part that the plain
    gradient adds, ``B mean(g) mean(J)``, only moves the level of all counts. On a
    plateau at the mean count it dominates the plain gradient (the batch's mean
    residual times the derivative of the mean activation) and carries nothing about
    where the objects are: measured on 7×5 MNIST grids at the plateau, removing it raised
    the signal-to-noise ratio of batch-4 gradients from 0.02–0.04 to 0.23–0.25
    (``benchmarks/count_training.py``). It is batch normalisation of the pooled
    features without the scaling, with exact statistics at inference.
    """

    spatial_dims: int
    in_channels: int
    regressor: nn.Linear
    output: str
    centred_batches: bool
    count_scale: torch.Tensor
    smallest_size = 2

    def _make_output(self, channels: int, output: str) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output: got {output!r}; expected one of {OUTPUTS}")
        self.output = output
        self.centred_batches = False
        self.regressor = nn.Linear(channels, 1)
        # Only where it is used, so that checkpoints of the linear output keep loading.
        if output == "density":
            self.register_buffer("count_scale", torch.ones(()))
        # Mean of the pooled features over the training images (centred batches), else 0.
        self.register_buffer("pooled_mean", torch.zeros(channels))
        he_initialise(self)
        if output == "density":
            nn.init.zeros_(self.regressor.weight)
            nn.init.constant_(self.regressor.bias, math.log(math.e - 1.0))

    def set_initial_count(self, count: float) -> None:
        """Make the untrained ``"density"`` network predict ``count`` for every image.

        Sets the scale ``s`` of the density map; the ``"linear"`` output ignores it.
        """
        if not math.isfinite(count) or count <= 0:
            raise ValueError(f"count: got {count}; expected a positive number")
        if self.output == "density":
            self.count_scale.fill_(float(count))

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x, "x", self.spatial_dims, self.in_channels)
        if min(x.shape[2:]) < self.smallest_size:
            raise ValueError(
                f"x: has spatial shape {tuple(x.shape[2:])}; expected at least "
                f"{self.smallest_size} voxels along every axis"
            )
        # Channels-last layout spares the CPU convolutions a layout conversion each
        # (measured: training 1.7× faster with 8 filters, predictions 1.25× with 32).
        return x.contiguous(memory_format=MEMORY_FORMATS[self.spatial_dims])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before the pooled mean existed hold none: zero, as then.
        state_dict.setdefault(prefix + "pooled_mean", torch.zeros_like(self.pooled_mean))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _readout(
        self, features: torch.Tensor, centre: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts ``(N,)`` and maps ``(N, *spatial)``, the pooled features less ``centre``."""
        weight, bias = self.regressor.weight[0], self.regressor.bias[0]
        bias = bias - centre @ weight
        linear = torch.einsum("nc...,c->n...", features, weight) + bias
        if self.output == "density":
            cam = self.count_scale * functional.softplus(linear)
            return cam.flatten(1).mean(dim=1), cam
        if getattr(self, "pooling", "average") == "max":
            return (features.flatten(2).amax(dim=2) @ weight + bias), linear
        return (features.flatten(2).mean(dim=2) @ weight + bias), linear

    def _count(self, features: torch.Tensor) -> torch.Tensor:
        if self.training and self.centred_batches and len(features) > 1:
            return self._readout(features, features.flatten(2).mean(dim=2).mean(dim=0))[0]
        return self._readout(features, self.pooled_mean)[0]

    def centre_batches(self, enabled: bool = True) -> None:
        """Train with batch-centred pooled features (see the class docstring)."""
        if enabled and (self.output != "linear" or getattr(self, "pooling", "") == "max"):
            raise ValueError("centre_batches: needs the linear output of average-pooled features")
        self.centred_batches = bool(enabled)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, C)`` of images ``(N, in_channels, *spatial)``."""
        return self.features(x).flatten(2).mean(dim=2)

    def set_pooled_mean(self, mean: torch.Tensor) -> None:
        """Set the pooled features' mean ``(C,)`` that inference subtracts."""
        with torch.no_grad():
            self.pooled_mean.copy_(mean.reshape(self.pooled_mean.shape))

    def shift_level(self, shift: float) -> None:
        """Add ``shift`` to every predicted count (or presence logit): the output bias."""
        if self.output == "density":
            raise ValueError("shift_level: the 'density' output has no additive level")
        with torch.no_grad():
            self.regressor.bias.add_(float(shift))

    def _attention(self, features: torch.Tensor) -> torch.Tensor:
        return self._readout(features, self.pooled_mean)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted counts ``(N,)`` for a batch ``(N, in_channels, *spatial)``."""
        return self._count(self.features(x))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``(N, *spatial)``, whose mean over voxels is the count."""
        return self._attention(self.features(x))

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts ``(N,)`` and class activation maps ``(N, *spatial)`` from one pass."""
        features = self.features(x)
        return self._count(features), self._attention(features)


class GPUNet(_PooledCount):
    """GP-Unet (architecture A): counts from global pooling, attention maps without it.

    Layers, all 3×3(×3) convolutions with zero padding and ReLU:

    1. two ``filters``-filter convolutions, whose output is concatenated with the input;
    2. 2× max-pooling, then two ``2 * filters``-filter convolutions whose output is
       concatenated with the block's input;
    3. 2× nearest-neighbour upsampling, concatenated with the features before pooling;
    4. one ``filters``-filter convolution: the last feature maps ``f``, shape
       ``(N, filters, *spatial)``;
    5. global average pooling and one linear unit: ``count = w · mean(f) + b``.

    The class activation map is ``CAM = Σ_c w_c f_c + b`` at every voxel; since the mean
    is linear, ``mean(CAM) = count`` exactly, so the map spreads the predicted count over
    the image. The papers use 32 filters in 3D and a quarter of that (8) in 2D, the
    default for each.

    Odd sizes are allowed: the upsampled maps are resized to the size before pooling.
    Every spatial axis needs at least 2 voxels.

    Parameters
    ----------
    spatial_dims : int
        2 for images ``(N, C, Y, X)``, 3 for volumes ``(N, C, Z, Y, X)``.
    in_channels : int
        Number of input channels C.
    filters : int, optional
        Number of filters of the first and last convolutions; ``None`` gives 32 in 3D and
        8 in 2D.

    Notes
    -----
    The layer sequence, the filter numbers, the concatenations, the ReLU activations
    and the single linear output unit are those of architecture A. Details left open by
    that description are choices made here: nearest-neighbour upsampling, zero padding,
    no normalisation or dropout, and He initialisation (:func:`he_initialise`).

    Examples
    --------
    >>> import torch
    >>> net = GPUNet(spatial_dims=2, in_channels=1)
    >>> count, cam = net.predict(torch.rand(3, 1, 15, 20))
    >>> tuple(count.shape), tuple(cam.shape)
    ((3,), (3, 15, 20))
    >>> bool(torch.allclose(cam.mean(dim=(1, 2)), count, atol=1e-6))
    True
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        filters: int | None = None,
        normalization: str | None = None,
        output: str = "linear",
        blockwise_skips: bool = True,
        pooling: str = "average",
    ):
        super().__init__()
        filters = _default_filters(spatial_dims, filters, in_channels)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: got {pooling!r}; expected one of {POOLINGS}")
        if pooling == "max" and output != "linear":
            raise ValueError("pooling: 'max' pools the linear output; expected output='linear'")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.filters = filters
        self.blockwise_skips = bool(blockwise_skips)
        self.pooling = pooling
        top = in_channels + filters if self.blockwise_skips else filters
        low = top + 2 * filters if self.blockwise_skips else 2 * filters
        self.encoder = conv_block(spatial_dims, in_channels, filters, 2, normalization)
        self.pool = MAX_POOLS[spatial_dims](2)
        self.bottom = conv_block(spatial_dims, top, 2 * filters, 2, normalization)
        self.decoder = conv_block(spatial_dims, top + low, filters, 1, normalization)
        self._make_output(filters, output)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature maps ``(N, filters, *spatial)`` of images ``(N, in_channels, *spatial)``."""
        x = self._checked(x)
        top = self.encoder(x)
        if self.blockwise_skips:
            top = torch.cat([x, top], dim=1)
        low = self.bottom(self.pool(top))
        if self.blockwise_skips:
            low = torch.cat([self.pool(top), low], dim=1)
        up = functional.interpolate(low, size=top.shape[2:], mode="nearest")
        return self.decoder(torch.cat([top, up], dim=1)).contiguous()
