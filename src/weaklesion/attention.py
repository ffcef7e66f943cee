"""Attention maps of count networks, and detections from them.

A network trained on image-level counts (or presence) says where it looked through an
attention map, a non-negative map at the input's size whose peaks are the detections.
:func:`attention_maps` computes five kinds, the methods Dubost et al. (Medical Image
Analysis 2020) compare:

=============  =========================================================================
method         map of image n
=============  =========================================================================
``cam``        class activation map: the last feature maps weighted by the output unit's
               weights, plus its bias (``model.attention_map``); its mean is the output
``gradcam``    Grad-CAM (Selvaraju et al., 2017): ``ReLU(Σ_k α_k A_k)`` for the feature
               maps ``A`` of the last convolution, ``α_k`` the voxel mean of
               ``∂y_n / ∂A_k``; (bi/tri)linearly resized to the input size. ``A`` is
               the output of the last convolution larger than one voxel that the
               forward pass runs (1×1 projections mix channels only), after the
               ``nn.ReLU`` applied directly to it, if any: the deeper scale of
               ``gpunet_base`` and ``gated_attention``, the last feature maps of
               ``gpunet`` and ``gpunet_noresidual`` (where Grad-CAM is the CAM less
               its bias, over the number of voxels)
``grad``       saliency (Simonyan et al., 2014): ``max_c |∂y_n / ∂x_c|`` over channels c
``guided``     guided backpropagation (Springenberg et al., 2015): ``max_c g_c``, the
               gradient of ``y_n`` with every ReLU passing back only positive gradients
               where its forward input was positive (hooks on the ``nn.ReLU`` modules,
               removed afterwards); the sign is kept, unlike ``grad``, because only
               positive evidence passes back
``intensity``  the image itself, its mean over channels
=============  =========================================================================

``y_n`` is the network's output for image n: the count of a count network, or the sum
of its outputs for a network with more (a dense map's sum). Every map has its negative
values set to zero. The gradients are exact (autograd) and do not touch the parameters'
``.grad``.

With ``reference="empty"`` the map of each image's *empty image* (every channel filled
with that channel's minimum, the background of a z-scored scan) is subtracted before the
negative values are set to zero. A count network learns from the difference between
images' counts, so a part of its map that every image shares (the response to the zero
padding along the borders, a constant) changes no count it is trained on, yet can hold
the map's highest maxima; the reference removes it. It costs one more pass per batch.

With ``smooth=σ`` (voxels) the non-negative map is convolved with a Gaussian of that
standard deviation (:func:`smooth_maps`). A CAM at the input's resolution follows the
object's shape: one digit or lesion can give several local maxima further apart than
the non-maximum suppression box, every one but the first a false positive. Smoothing
at about a third of the object's radius merges them into one peak and keeps the map's
sum away from the borders (the count of a CAM is its mean).

:func:`detect_by_count` keeps the ``round(count)`` highest local maxima of a map
(non-maximum suppression, then top-n by the predicted count), and :func:`froc_by_peak_rank`
sweeps n for an FROC curve.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from weaklesion._validation import ArrayLike, check_finite
from weaklesion.detection import Detections, peak_detections
from weaklesion.metrics import FROCCurve, froc_by_rank, hits_by_score

METHODS = ("cam", "gradcam", "grad", "guided", "intensity")
REFERENCES = (None, "empty")
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RESIZE_MODES = {2: "bilinear", 3: "trilinear"}


def _image_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output ``y_n`` of each image: ``(N,)``, the sum of the model's outputs for it."""
    output = model(x)
    if output.ndim == 0 or output.shape[0] != x.shape[0]:
        raise ValueError(
            f"model: returned shape {tuple(output.shape)} for a batch of {x.shape[0]}; "
            "expected one output (or one map) per image"
        )
    return output.reshape(len(x), -1).sum(dim=1)


def _input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``∂y_n / ∂x_n`` for every image n, shaped like ``x``."""
    x = x.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(_image_scores(model, x).sum(), x)
    return gradient


def _guided_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input gradient with every ``nn.ReLU`` module passing back positive gradients only.

    A tensor hook on each ReLU output clamps the gradient arriving there at 0; the
    ReLU's own backward then zeroes it where the forward input was not positive. The
    hooks live for this one pass and are removed afterwards.
    """
    relus = [module for module in model.modules() if isinstance(module, nn.ReLU)]
    if not relus:
        raise ValueError(
            f"model: {type(model).__name__} has no nn.ReLU layer; guided backpropagation "
            "needs ReLU activations as modules"
        )

    def keep_positive(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(lambda gradient: gradient.clamp(min=0))

    handles = [relu.register_forward_hook(keep_positive) for relu in relus]
    try:
        return _input_gradient(model, x)
    finally:
        for handle in handles:
            handle.remove()


def _last_convolution_features(model: nn.Module, x: torch.Tensor):
    """Scores ``(N,)`` and the feature maps Grad-CAM weighs.

    The feature maps are the output of the last convolution the forward pass runs whose
    kernel is larger than one voxel (1×1 projections, as in attention gates and output
    heads, mix channels only), taken after the ``nn.ReLU`` applied directly to it, if any.
    """
    found: dict[str, torch.Tensor] = {}

    def convolution(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        found["convolution"] = found["features"] = output

    def activation(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if args and args[0] is found.get("convolution"):
            found["features"] = output

    handles = [
        module.register_forward_hook(convolution)
        for module in model.modules()
        if isinstance(module, _CONVOLUTIONS) and math.prod(module.kernel_size) > 1
    ]
    handles += [
        module.register_forward_hook(activation)
        for module in model.modules()
        if isinstance(module, nn.ReLU)
    ]
    try:
        scores = _image_scores(model, x)
    finally:
        for handle in handles:
            handle.remove()
    if "features" not in found:
        raise ValueError(
            f"model: {type(model).__name__} runs no convolution larger than 1 voxel; "
            "Grad-CAM needs one"
        )
    return scores, found["features"]


def _grad_cam(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    scores, features = _last_convolution_features(model, x.detach().requires_grad_(True))
    (gradient,) = torch.autograd.grad(scores.sum(), features, allow_unused=True)
    if gradient is None:
        gradient = torch.zeros_like(features)
    weights = gradient.flatten(2).mean(dim=2)
    cam = torch.einsum("nc...,nc->n...", features, weights).clamp(min=0)
    if cam.shape[1:] != x.shape[2:]:
        mode = _RESIZE_MODES[x.ndim - 2]
        cam = functional.interpolate(cam[:, None], size=x.shape[2:], mode=mode)[:, 0]
    return cam


def _class_activation_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not callable(getattr(model, "attention_map", None)):
        raise ValueError(
            f"model: {type(model).__name__} has no attention_map method; 'cam' needs a "
            "network ending in global pooling and a linear unit (gpunet and its variants)"
        )
    with torch.no_grad():
        return model.attention_map(x)


def empty_images(images: torch.Tensor) -> torch.Tensor:
    """The empty image of each image: every channel filled with its own minimum.

    Parameters
    ----------
    images : (N, C, *spatial) tensor

    Returns
    -------
    (N, C, *spatial) tensor
        Constant in space, per image and channel.

    Examples
    --------
    >>> empty_images(torch.tensor([[[[1.0, -1.0], [-2.0, 3.0]]]]))
    tensor([[[[-2., -2.],
              [-2., -2.]]]])
    """
    lowest = images.flatten(2).amin(dim=2)
    return lowest.reshape(*lowest.shape, *([1] * (images.ndim - 2))).expand_as(images).clone()


def smooth_maps(maps: torch.Tensor, sigma: float | Sequence[float]) -> torch.Tensor:
    """Gaussian smoothing of a batch of maps, separable, edges extended by their value.

    Parameters
    ----------
    maps : (N, Y, X) or (N, Z, Y, X) float tensor
        The maps, smoothed over the spatial axes only.
    sigma : float or sequence of float
        Standard deviation in voxels, one for all spatial axes or one per axis; 0 leaves
        an axis as it is. The kernel reaches ``round(4 σ)`` voxels each side, as
        :func:`scipy.ndimage.gaussian_filter` (``mode="nearest"``) does.

    Returns
    -------
    tensor of the same shape, dtype and device
        A map that is constant stays the same constant.

    Raises
    ------
    ValueError
        For a negative or non-finite sigma, or the wrong number of them.

    Examples
    --------
    >>> spike = torch.zeros(1, 1, 9)
    >>> spike[0, 0, 4] = 1.0
    >>> smooth_maps(spike, 1.0)[0, 0, 2:7].round(decimals=3)
    tensor([0.0540, 0.2420, 0.3990, 0.2420, 0.0540])
    """
    check_smooth(sigma)
    dims = maps.ndim - 1
    sigmas = [float(sigma)] * dims if np.ndim(sigma) == 0 else [float(s) for s in sigma]
    if len(sigmas) != dims:
        raise ValueError(
            f"smooth: got {sigma!r}; expected a standard deviation >= 0 in voxels, one "
            f"or one per spatial axis ({dims})"
        )
    out = maps
    for axis, s in enumerate(sigmas, start=1):
        radius = int(4.0 * s + 0.5)
        if radius == 0:
            continue
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets / s) ** 2)
        kernel = (kernel / kernel.sum()).to(device=maps.device, dtype=maps.dtype)
        moved = out.movedim(axis, -1)
        lines = moved.reshape(-1, 1, moved.shape[-1])
        padded = functional.pad(lines, (radius, radius), mode="replicate")
        smoothed = functional.conv1d(padded, kernel.reshape(1, 1, -1))
        out = smoothed.reshape(moved.shape).movedim(-1, axis)
    return out


def attention_maps(
    model: nn.Module | None,
    images: ArrayLike,
    method: str = "cam",
    reference: str | None = None,
    smooth: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Attention maps of a batch of images, one per image, at the input's size.

    Parameters
    ----------
    model : nn.Module or None
        A trained network whose output has one value (a count or presence logit) or one
        map per image. It runs in eval mode and is left in the mode it was in; hooks it
        gets for ``"gradcam"`` and ``"guided"`` are removed afterwards. Not used by
        ``"intensity"`` (may be None then).
    images : (N, C, Y, X) or (N, C, Z, Y, X) float array or tensor
        The batch, as the network takes it (normalised). Images in a batch must not
        interact in the network (no batch statistics), which eval mode ensures for the
        networks of :mod:`weaklesion.models`.
    method : {"cam", "gradcam", "grad", "guided", "intensity"}
        See the module notes. ``"cam"`` needs a network with an ``attention_map`` method
        (GP-Unet and its variants); ``"guided"`` a network whose ReLUs are ``nn.ReLU``
        modules.
    reference : {None, "empty"}
        ``"empty"`` subtracts the same method's map of each image's
        :func:`empty_images` before negative values are set to zero (see the module
        notes); None subtracts nothing.
    smooth : float or sequence of float
        Standard deviation (voxels, one or one per spatial axis) of a Gaussian applied
        to the non-negative map (:func:`smooth_maps`); 0 leaves it as it is.

    Returns
    -------
    maps : (N, Y, X) or (N, Z, Y, X) float tensor
        Non-negative attention maps, detached, on the model's device.

    Raises
    ------
    ValueError
        For an unknown method, images of the wrong rank or with NaN or infinite values,
        or a model that cannot give the method's map.

    Examples
    --------
    A 1×1 convolution, a ReLU and global average pooling: the saliency of a voxel is
    ``|w| / voxels`` where the convolution is positive, 0 elsewhere.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(0))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.fill_(-2.0), net[0].bias.fill_(0.0)
    >>> images = torch.tensor([[[[1.0, -1.0], [-2.0, 3.0]]]])
    >>> attention_maps(net, images, "grad")
    tensor([[[0.0000, 0.5000],
             [0.5000, 0.0000]]])
    >>> attention_maps(None, images, "intensity")
    tensor([[[1., 0.],
             [0., 3.]]])
    >>> attention_maps(None, images, "intensity", reference="empty")
    tensor([[[3., 1.],
             [0., 5.]]])
    """
    if method not in METHODS:
        raise ValueError(f"method: got {method!r}; expected one of {', '.join(METHODS)}")
    if reference not in REFERENCES:
        raise ValueError(f"reference: got {reference!r}; expected None or 'empty'")
    check_smooth(smooth)
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim not in (4, 5):
        raise ValueError(
            f"images: has shape {tuple(x.shape)}; expected (N, C, Y, X) or (N, C, Z, Y, X)"
        )
    check_finite(x, "images")
    parameter = None if model is None else next(iter(model.parameters()), None)
    device = x.device if parameter is None else parameter.device
    x = x.detach().to(device=device, dtype=torch.float32)
    if model is None and method != "intensity":
        raise ValueError(f"model: got None; method {method!r} needs a network")
    if x.shape[0] == 0 or x.shape[1:].numel() == 0:
        return torch.zeros((x.shape[0], *x.shape[2:]), device=device)
    compute = {
        "intensity": lambda net, batch: batch.mean(dim=1),
        "cam": _class_activation_map,
        "gradcam": _grad_cam,
        "grad": lambda net, batch: _input_gradient(net, batch).abs().amax(dim=1),
        "guided": lambda net, batch: _guided_gradient(net, batch).amax(dim=1),
    }[method]
    was_training = None if model is None else model.training
    if model is not None:
        model.eval()
    try:
        with torch.enable_grad():
            maps = compute(model, x)
            if reference == "empty":
                maps = maps - compute(model, empty_images(x))
    finally:
        if model is not None:
            model.train(was_training)
    maps = maps.detach().clamp(min=0)
    return maps if not np.any(np.asarray(smooth)) else smooth_maps(maps, smooth)


def check_smooth(smooth: float | Sequence[float]) -> None:
    """Refuse a smoothing that is not one or more finite standard deviations >= 0."""
    values = np.asarray(smooth, dtype=object).reshape(-1)
    ok = values.size > 0 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in values
    )
    if not ok:
        raise ValueError(f"smooth: got {smooth!r}; expected a standard deviation >= 0 in voxels")


def detect_by_count(map: ArrayLike, count: float, size: int | Sequence[int] = 6) -> Detections:
    """The ``round(count)`` highest local maxima of an attention map.

    Non-maximum suppression (:func:`~weaklesion.detection.peak_detections` with a box of
    ``size`` voxels) gives candidates ranked by their value; the predicted count, rounded
    half up (a negative count gives none), says how many to keep.

    Parameters
    ----------
    map : (Z, Y, X) or (Y, X) array or tensor
        Attention map of one image.
    count : float
        Predicted count of the image.
    size : int or sequence of D ints
        Size of the suppression box in voxels.

    Returns
    -------
    Detections
        At most ``round(count)`` peaks, highest first; scores are the map's values.

    Examples
    --------
    >>> image = np.zeros((8, 8))
    >>> image[1, 1], image[5, 6], image[6, 1] = 0.9, 0.7, 0.4
    >>> detect_by_count(image, 1.6, size=3).points
    array([[1., 1.],
           [5., 6.]])
    """
    if not math.isfinite(count):
        raise ValueError(f"count: got {count!r}; expected a finite number")
    keep = max(math.floor(count + 0.5), 0)
    return peak_detections(map, size=size, top_n=keep)


def froc_by_peak_rank(
    maps: Sequence[ArrayLike],
    truth_points: Sequence[ArrayLike],
    max_distance: float,
    size: int | Sequence[int] = 6,
    spacing: float | Sequence[float] | None = None,
    max_rank: int | None = None,
) -> FROCCurve:
    """FROC curve of attention maps from keeping their ``n`` highest peaks, n = 0, 1, ...

    The evaluation of Dubost et al.: the peaks of every map after non-maximum
    suppression, ranked by value; a peak is a hit when it enlarges the one-to-one
    matching with the true lesions within ``max_distance``
    (:func:`~weaklesion.metrics.hits_by_score`); :func:`~weaklesion.metrics.froc_by_rank`
    sweeps the number kept per image.

    Parameters
    ----------
    maps : sequence of (Z, Y, X) or (Y, X) arrays
        One attention map per image.
    truth_points : sequence of (T, D) arrays
        True lesion centres of each image, voxel coordinates.
    max_distance : float
        Largest match distance (mm with ``spacing``, else voxels).
    size : int or sequence of D ints
        Size of the suppression box in voxels.
    spacing : float or sequence of D floats, optional
        Voxel size in mm, the same for every image.
    max_rank : int, optional
        Largest n; by default the most peaks any map has.

    Returns
    -------
    FROCCurve
        ``thresholds`` holds n.

    Examples
    --------
    >>> first, second = np.zeros((6, 6)), np.zeros((6, 6))
    >>> first[1, 1], first[4, 4], second[2, 3] = 0.9, 0.5, 0.8
    >>> curve = froc_by_peak_rank([first, second], [[[4, 4]], [[2, 3]]], 1.0, size=3)
    >>> curve.thresholds, curve.fp_per_image, curve.sensitivity
    (array([0, 1, 2]), array([0. , 0.5, 0.5]), array([0. , 0.5, 1. ]))
    """
    if len(maps) != len(truth_points):
        raise ValueError(
            f"maps, truth_points: got {len(maps)} maps and {len(truth_points)} point sets; "
            "expected one point set per map"
        )
    scores, hits, n_truth = [], [], []
    for values, truth in zip(maps, truth_points, strict=True):
        found = peak_detections(values, size=size)
        truth = np.asarray(truth, dtype=float).reshape(-1, found.spatial_dims)
        scores.append(found.scores)
        hits.append(hits_by_score(found.points, found.scores, truth, max_distance, spacing))
        n_truth.append(len(truth))
    return froc_by_rank(scores, hits, n_truth, max_rank=max_rank)
