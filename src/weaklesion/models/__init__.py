"""Networks that learn from weak labels, for 2D and 3D images alike (``spatial_dims``).

- :class:`UNet` regresses dense targets (heatmaps, distance maps, segmentations) and
  exposes its bottleneck and last decoder features for count heads;
- :class:`GPUNet` regresses an image-level count and gives a full-resolution attention
  map with the same weights; :class:`GPUNetNoResidual` and :class:`TwoScaleGPUNet`
  (with or without an attention gate) are its baselines, counting the same way.

:func:`build_model` makes either from its name, so that a configuration file can name a
model; :func:`model_summary` counts parameters; :func:`enable_mc_dropout` keeps dropout
active at inference for Monte-Carlo sampling; :func:`freeze_encoder` leaves the encoder
out of training (fine-tuning the decoder only).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from torch import nn

from weaklesion.models.gpunet import GPUNet
from weaklesion.models.unet import UNet
from weaklesion.models.variants import GPUNetNoResidual, TwoScaleGPUNet

__all__ = [
    "MODEL_NAMES",
    "GPUNet",
    "GPUNetNoResidual",
    "TwoScaleGPUNet",
    "UNet",
    "build_model",
    "check_model_arguments",
    "enable_mc_dropout",
    "freeze_encoder",
    "model_summary",
]

_DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def _build_unet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    return UNet(spatial_dims, in_channels, out_channels, **kwargs)


def _count_network(name: str, network: type[nn.Module], **fixed) -> Callable[..., nn.Module]:
    """Builder of a network that predicts one count (``out_channels`` must be 1)."""

    def build(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
        if out_channels != 1:
            raise ValueError(f"out_channels: got {out_channels}; {name!r} predicts one count (1)")
        return network(spatial_dims, in_channels, **fixed, **kwargs)

    build.network, build.fixed = network, fixed
    return build


_build_unet.network, _build_unet.fixed = UNet, {}
_BUILDERS = {
    "unet": _build_unet,
    "gpunet": _count_network("gpunet", GPUNet),
    "gpunet_noresidual": _count_network("gpunet_noresidual", GPUNetNoResidual),
    "gpunet_base": _count_network("gpunet_base", TwoScaleGPUNet, attention_gate=False),
    "gated_attention": _count_network("gated_attention", TwoScaleGPUNet, attention_gate=True),
}
MODEL_NAMES = tuple(sorted(_BUILDERS))


def build_model(
    name: str, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1, **kwargs
) -> nn.Module:
    """Build a network from its name.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`: ``"unet"`` (:class:`UNet`), or a network that
        predicts one count (``out_channels`` must be 1): ``"gpunet"`` (:class:`GPUNet`),
        ``"gpunet_noresidual"`` (:class:`GPUNetNoResidual`), ``"gpunet_base"``
        (:class:`TwoScaleGPUNet`) or ``"gated_attention"`` (:class:`TwoScaleGPUNet` with
        ``attention_gate=True``).
    spatial_dims : int
        2 or 3.
    in_channels, out_channels : int
        Numbers of input channels and output maps.
    **kwargs
        The network's other arguments, e.g. ``features`` and ``dropout`` for ``"unet"``,
        ``filters`` for the count networks.

    Returns
    -------
    model : torch.nn.Module
        A new network with freshly initialised weights, in training mode.

    Examples
    --------
    >>> model = build_model("gpunet", spatial_dims=2, in_channels=3, filters=4)
    >>> type(model).__name__, model.filters
    ('GPUNet', 4)
    """
    build = _BUILDERS[_model_key(name)]
    check_model_arguments(name, kwargs)
    try:
        return build(spatial_dims, in_channels, out_channels, **kwargs)
    except (TypeError, ValueError) as error:
        # Name the argument whose value the network refused, if removing it helps.
        for key in kwargs:
            others = {k: v for k, v in kwargs.items() if k != key}
            try:
                build(spatial_dims, in_channels, out_channels, **others)
            except (TypeError, ValueError):
                continue
            raise ValueError(
                f"model_kwargs.{key}: got {kwargs[key]!r}, which {name!r} refuses ({error})"
            ) from None
        raise


def _model_key(name: str) -> str:
    key = name.lower() if isinstance(name, str) else name
    if key not in _BUILDERS:
        expected = ", ".join(repr(n) for n in MODEL_NAMES)
        raise ValueError(f"name: got {name!r}; expected one of {expected}")
    return key


def check_model_arguments(name: str, kwargs: Mapping[str, object]) -> None:
    """Refuse a ``model_kwargs`` key that network ``name`` has no argument for.

    Raises
    ------
    ValueError
        Naming the key and the arguments the network takes.

    Examples
    --------
    >>> check_model_arguments("unet", {"features": [4, 8], "bogus": 1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: model_kwargs.bogus: 'unet' has no such argument; expected features, ...
    """
    build = _BUILDERS[_model_key(name)]
    fixed = {"spatial_dims", "in_channels", "out_channels", *build.fixed}
    accepted = [p for p in inspect.signature(build.network).parameters if p not in fixed]
    for key in kwargs:
        if key not in accepted:
            choices = ", ".join(accepted[:-1]) + f" or {accepted[-1]}" if accepted else "none"
            raise ValueError(
                f"model_kwargs.{key}: {name!r} has no such argument; expected {choices}"
            )


def model_summary(model: nn.Module) -> dict[str, object]:
    """Size of a network: its class name and numbers of (trainable) parameters.

    Parameters shared between layers are counted once.

    Examples
    --------
    >>> model_summary(nn.Linear(3, 2))
    {'model': 'Linear', 'parameters': 8, 'trainable_parameters': 8}
    """
    parameters = list(model.parameters())
    return {
        "model": type(model).__name__,
        "parameters": sum(p.numel() for p in parameters),
        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
    }


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Switch the dropout layers of ``model`` to training mode, and nothing else.

    Call it after ``model.eval()``: normalisation layers keep their inference behaviour
    while dropout keeps sampling, so repeated forward passes draw Monte-Carlo samples of
    the prediction. ``model.eval()`` switches dropout off again.

    Returns
    -------
    model : torch.nn.Module
        The same model, changed in place.

    Raises
    ------
    ValueError
        If the model has no dropout layer (every pass would give the same output).

    Examples
    --------
    >>> net = enable_mc_dropout(UNet(spatial_dims=2, features=(2, 2), dropout=0.5).eval())
    >>> sorted({type(m).__name__ for m in net.modules() if m.training})
    ['Dropout']
    """
    layers = [module for module in model.modules() if isinstance(module, _DROPOUT_TYPES)]
    if not layers:
        raise ValueError(
            f"model: {type(model).__name__} has no dropout layer; expected a model built "
            "with dropout > 0"
        )
    for layer in layers:
        layer.train()
    return model


def freeze_encoder(model: nn.Module) -> nn.Module:
    """Stop training the encoder of ``model``: its parameters no longer require gradients.

    The encoder is the ``encoder`` module of the network (every level of a
    :class:`UNet` down to the bottleneck); the decoder and the output layer train on.
    Buffers, such as batch-normalisation statistics, are left alone.

    Returns
    -------
    model : torch.nn.Module
        The same model, changed in place.

    Raises
    ------
    ValueError
        If the model has no ``encoder`` module.

    Examples
    --------
    >>> net = freeze_encoder(UNet(spatial_dims=2, features=(2, 4)))
    >>> model_summary(net)["trainable_parameters"] < model_summary(net)["parameters"]
    True
    >>> any(p.requires_grad for p in net.encoder.parameters())
    False
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(
            f"model: {type(model).__name__} has no encoder module; expected a network "
            "with an 'encoder' attribute such as UNet"
        )
    encoder.requires_grad_(False)
    return model
