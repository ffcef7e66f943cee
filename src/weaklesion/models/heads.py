"""Count-classification heads: the baselines of segmentation-consistent counting.

Schroeter, Myers-Colet et al. (MIDL 2022) compare the Poisson-binomial count of a
segmentation map with a classifier over count bins ``0, 1, .., max_count - 1`` and
"``max_count`` or more", trained next to the segmentation with the same multi-task
schedule. The classifier reads one of three places of a U-Net:

- ``"bottleneck"``: the deepest encoder features, globally pooled, then a perceptron;
- ``"multihead"``: the last decoder features, beside the segmentation output; two
  convolutions each followed by 2x max-pooling, global pooling, perceptron;
- ``"downstream"``: the sigmoid segmentation map, a small network on top of the
  output (three convolutions each followed by 2x max-pooling, global pooling,
  perceptron), so the count loss reaches the whole segmentation network through its
  output.

The globally pooled maps hardly differ between images: the U-Net's features are
instance-normalised, and a few lesions change the average over a whole volume by about
1 %. A perceptron on them starts, and stays for hundreds of steps, at the logits of the
most frequent count. By default (``standardize=True``, not in the paper) the pooled
vector is therefore standardised with running statistics (:class:`RunningStandardization`)
before the perceptron; ``standardize=False`` is the plain design.

Standardising does not make the bottleneck head learn: trained with the segmentation,
its cross-entropy stays at the entropy of the count prior, on the training volumes too,
at count weights 0.01 to 1 and with the count loss from the first epoch. The pooled
features of a trained segmentation U-Net's bottleneck hold too little about the count
for any classifier to read (a logistic regression on them is at the majority class on
test volumes), so the encoder itself has to learn it. As for the count networks
(:class:`weaklesion.models.GPUNet`), the part of the gradient that the images of a batch
have in common only moves all their counts together. With ``centre=True``
(``TrainConfig.count_gradient="centred"``, the default) the pooled vectors pass forward
unchanged but their gradient is centred over the batch (:func:`centre_gradient`), so the
features learn only from what tells a batch's images apart; the perceptron's own
parameters get the plain gradient. On the counting phantom, with the count loss from
the sixth epoch, this is what let the bottleneck head leave the majority class in every
seed (docs/REPRODUCTION.md, experiment 3).

``"poisson_binomial"`` (the default of ``TrainConfig.count_head``) adds no head: the
count distribution is that of the map's candidate regions
(:func:`weaklesion.counting.count_distribution`).

:func:`attach_count_head` wraps a U-Net in :class:`SegmentationWithCountHead`, whose
``forward`` returns the segmentation logits and the count logits, so the one training
loop back-propagates both losses through one call of the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weaklesion.models.unet import CONVOLUTIONS, MAX_POOLS, check_spatial_dims

__all__ = [
    "COUNT_HEADS",
    "CountHead",
    "RunningStandardization",
    "SegmentationWithCountHead",
    "attach_count_head",
    "centre_gradient",
    "has_count_head",
]

COUNT_HEADS = ("poisson_binomial", "bottleneck", "multihead", "downstream")
# Where each head reads from, in the terms of SegmentationWithCountHead.source.
_HEAD_SOURCES = {"bottleneck": "bottleneck", "multihead": "decoder", "downstream": "segmentation"}
_SOURCES = ("bottleneck", "decoder", "segmentation")


def centre_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, with the gradient reaching it centred over the batch (dim 0).

    Forward the result equals ``x``; backward a gradient ``g`` on it arrives at ``x`` as
    ``g - g.mean(0)``, so ``Σ_i g_i ∂x_i/∂θ`` becomes ``Σ_i g_i (∂x_i/∂θ - mean_j
    ∂x_j/∂θ)``: what the batch's images have in common no longer moves ``θ``. A batch
    of one has nothing to centre and is returned as it is.

    Parameters
    ----------
    x : (N, ...) tensor

    Returns
    -------
    (N, ...) tensor

    Examples
    --------
    >>> x = torch.tensor([[1.0], [3.0]], requires_grad=True)
    >>> y = centre_gradient(x)
    >>> (y * torch.tensor([[1.0], [0.0]])).sum().backward()
    >>> y.tolist(), x.grad.tolist()
    ([[1.0], [3.0]], [[0.5], [-0.5]])
    """
    if x.shape[0] < 2:
        return x
    mean = x.mean(dim=0, keepdim=True)
    return x - mean + mean.detach()


class RunningStandardization(nn.Module):
    """Standardise features by running estimates of their mean and standard deviation.

    Unlike batch normalisation, the forward pass always uses the running estimates (not
    the batch's), so batches of one or two images train the same function that is
    evaluated. In training mode every batch first updates the estimates: the first batch
    sets the mean, then ``mean += momentum * (batch mean - mean)`` and
    ``variance += momentum * (mean squared deviation from the running mean - variance)``.
    No gradient flows into the estimates.

    Parameters
    ----------
    features : int
        Length of the feature vectors.
    momentum : float
        Weight in (0, 1] of each batch in the running estimates.
    eps : float
        Added to the standard deviation.

    Examples
    --------
    >>> norm = RunningStandardization(2, momentum=1.0)
    >>> out = norm(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))
    >>> norm.mean.tolist(), [round(v, 3) for v in out[1].tolist()]
    ([2.0, 20.0], [1.0, 1.0])
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if features < 1 or not 0 < momentum <= 1 or eps <= 0:
            raise ValueError(
                f"features, momentum, eps: got {features}, {momentum}, {eps}; expected a "
                "positive length, a momentum in (0, 1] and a positive eps"
            )
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("variance", torch.ones(features))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised ``(N, features)`` vectors."""
        if self.training:
            with torch.no_grad():
                values = x.detach()
                if int(self.batches) == 0:
                    self.mean.copy_(values.mean(0))
                else:
                    self.mean.add_(self.momentum * (values.mean(0) - self.mean))
                squared = ((values - self.mean) ** 2).mean(0)
                if int(self.batches) == 0 and values.shape[0] > 1:
                    self.variance.copy_(squared)
                else:
                    self.variance.add_(self.momentum * (squared - self.variance))
                self.batches += 1
        return (x - self.mean) / (self.variance.sqrt() + self.eps)


class CountHead(nn.Module):
    """Classifier of feature maps (or a probability map) into count bins.

    Each entry of ``widths`` is a 3×3(×3) convolution with leaky ReLU followed by 2×
    max-pooling; then the maps are reduced by global average and global max pooling
    (both: the average says how much lesion there is, the maximum whether there is any),
    optionally standardised (:class:`RunningStandardization`), and a two-layer
    perceptron gives one logit per bin.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    in_channels : int
        Channels of the input maps.
    bins : int
        Number of count bins, ``max_count + 1``.
    widths : sequence of int
        Channels of the convolution stages before pooling; empty for none.
    hidden : int
        Width of the hidden layer of the perceptron.
    standardize : bool
        Standardise the pooled vector with running statistics before the perceptron.
    centre : bool
        In training, centre the gradient of the pooled vector over the batch
        (:func:`centre_gradient`); the forward pass is the same either way.

    Examples
    --------
    >>> head = CountHead(spatial_dims=2, in_channels=3, bins=5, widths=(4, 8))
    >>> tuple(head(torch.zeros(2, 3, 17, 9)).shape)
    (2, 5)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        bins: int,
        widths: Sequence[int] = (),
        hidden: int = 32,
        standardize: bool = True,
        centre: bool = False,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        widths = tuple(int(w) for w in widths)
        if in_channels < 1 or bins < 1 or hidden < 1 or any(w < 1 for w in widths):
            raise ValueError(
                f"in_channels, bins, hidden, widths: got {in_channels}, {bins}, {hidden}, "
                f"{widths}; expected positive numbers"
            )
        self.spatial_dims = spatial_dims
        self.bins = bins
        self.centre = bool(centre)
        conv, pool = CONVOLUTIONS[spatial_dims], MAX_POOLS[spatial_dims]
        stages: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            stages += [
                conv(channels, width, 3, padding=1),
                nn.LeakyReLU(0.01),
                pool(2, ceil_mode=True),
            ]
            channels = width
        self.convolutions = nn.Sequential(*stages)
        self.standardize = RunningStandardization(2 * channels) if standardize else nn.Identity()
        self.classifier = nn.Sequential(
            nn.Linear(2 * channels, hidden), nn.LeakyReLU(0.01), nn.Linear(hidden, bins)
        )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Count logits ``(N, bins)`` of maps ``(N, in_channels, *spatial)``."""
        h = self.convolutions(maps).flatten(2)
        pooled = torch.cat((h.mean(-1), h.amax(-1)), dim=1)
        if self.centre and self.training:
            pooled = centre_gradient(pooled)
        return self.classifier(self.standardize(pooled))


class SegmentationWithCountHead(nn.Module):
    """A segmentation network with a count classifier attached.

    Parameters
    ----------
    network : nn.Module
        A network with ``forward_features(x) -> (logits, {"bottleneck", "decoder"})``,
        such as :class:`~weaklesion.models.UNet` with one output.
    head : nn.Module
        Maps the chosen input to count logits ``(N, bins)``, e.g. :class:`CountHead`.
    source : {"bottleneck", "decoder", "segmentation"}
        What the head reads: the bottleneck features, the last decoder features, or the
        sigmoid of the segmentation logits (``(N, 1, *spatial)`` probabilities).

    Examples
    --------
    >>> from weaklesion.models import UNet
    >>> unet = UNet(spatial_dims=2, features=(4, 8))
    >>> model = SegmentationWithCountHead(unet, CountHead(2, 1, bins=5), "segmentation")
    >>> logits, count_logits = model(torch.zeros(3, 1, 16, 16))
    >>> tuple(logits.shape), tuple(count_logits.shape)
    ((3, 1, 16, 16), (3, 5))
    """

    def __init__(self, network: nn.Module, head: nn.Module, source: str) -> None:
        super().__init__()
        if source not in _SOURCES:
            raise ValueError(f"source: got {source!r}; expected one of {', '.join(_SOURCES)}")
        if not callable(getattr(network, "forward_features", None)):
            raise ValueError(
                f"network: {type(network).__name__} has no forward_features; expected a "
                "U-Net that returns its bottleneck and decoder features"
            )
        self.network = network
        self.head = head
        self.source = source

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation logits ``(N, 1, *spatial)`` and count logits ``(N, bins)``."""
        logits, features = self.network.forward_features(x)
        if self.source == "segmentation":
            return logits, self.head(torch.sigmoid(logits))
        return logits, self.head(features[self.source])


def has_count_head(model: nn.Module) -> bool:
    """Whether ``model`` returns count logits beside its map (see :func:`attach_count_head`)."""
    return isinstance(model, SegmentationWithCountHead)


def attach_count_head(
    network: nn.Module,
    count_head: str,
    max_count: int,
    hidden: int = 32,
    standardize: bool = True,
    centre: bool = False,
) -> nn.Module:
    """Attach the named count classifier to a U-Net, or return it as it is.

    Parameters
    ----------
    network : nn.Module
        A :class:`~weaklesion.models.UNet` with one output channel (anything with its
        ``forward_features``, ``spatial_dims``, ``features`` and ``out_channels``).
    count_head : {"poisson_binomial", "bottleneck", "multihead", "downstream"}
        ``"poisson_binomial"`` returns ``network`` unchanged (the count comes from the
        map); the others are described in the module notes.
    max_count : int
        The classifier has bins ``0 .. max_count``, the last one "``max_count`` or more".
    hidden : int
        Width of the head's hidden layer.
    standardize : bool
        Standardise the head's pooled features (see :class:`CountHead`).
    centre : bool
        Centre the gradient of the head's pooled features over the batch in training
        (see :class:`CountHead`).

    Returns
    -------
    nn.Module
        ``network``, or a :class:`SegmentationWithCountHead` around it whose
        ``forward`` returns ``(logits, count_logits)``.

    Examples
    --------
    >>> from weaklesion.models import UNet
    >>> model = attach_count_head(UNet(spatial_dims=2, features=(4, 8)), "multihead", 4)
    >>> model.source, model.head.bins
    ('decoder', 5)
    >>> unet = UNet(spatial_dims=2, features=(4, 8))
    >>> attach_count_head(unet, "poisson_binomial", 4) is unet
    True
    """
    if count_head not in COUNT_HEADS:
        raise ValueError(
            f"count_head: got {count_head!r}; expected one of {', '.join(COUNT_HEADS)}"
        )
    if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 0:
        raise ValueError(f"max_count: got {max_count!r}; expected a non-negative integer")
    if count_head == "poisson_binomial":
        return network
    features = getattr(network, "features", None)
    if getattr(network, "out_channels", None) != 1 or features is None:
        raise ValueError(
            f"network: a {count_head!r} count head needs a U-Net with one output map; "
            f"got {type(network).__name__}"
        )
    source = _HEAD_SOURCES[count_head]
    spatial_dims, first = network.spatial_dims, features[0]
    in_channels, widths = {
        "bottleneck": (features[-1], ()),
        "decoder": (first, (2 * first, 4 * first)),
        "segmentation": (1, (8, 16, 32)),
    }[source]
    head = CountHead(spatial_dims, in_channels, max_count + 1, widths, hidden, standardize, centre)
    return SegmentationWithCountHead(network, head, source)
