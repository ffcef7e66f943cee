"""Training configuration: one dataclass, read from TOML, written into every run folder.

A configuration names the kind of weak label (``labels``), and everything else follows
from it by default: the training target, the network and the loss. Every value can be
overridden from a TOML file or from ``key=value`` strings, and every override is
type-checked so that a typo fails at once with a one-line error naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weaklesion.io import atomic_write
from weaklesion.models import MODEL_NAMES, check_model_arguments
from weaklesion.models.heads import COUNT_HEADS

LABELS = ("points", "counts", "masks", "masks+counts")
TARGETS = ("heatmap", "euclidean", "geodesic", "segmentation", "count")

# Which targets each kind of label can train, the first being the default.
TARGETS_FOR_LABELS = {
    "points": ("heatmap", "euclidean", "geodesic"),
    "counts": ("count",),
    "masks": ("segmentation",),
    "masks+counts": ("segmentation",),
}
# Default weights of the multi-task count loss (``TrainConfig.count_weight=None``).
POISSON_BINOMIAL_COUNT_WEIGHT = 0.001
HEAD_COUNT_WEIGHT = 0.01

CHOICES = {
    "labels": LABELS,
    "target": TARGETS,
    "sigma_units": ("voxels", "mm"),
    "count_head": COUNT_HEADS,
    "count_objective": ("regression", "classification"),
    "count_gradient": ("plain", "centred"),
    "device": ("auto", "cpu", "cuda"),
    "lr_schedule": ("constant", "cosine", "onecycle"),
}


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Parameters
    ----------
    labels : {"points", "counts", "masks", "masks+counts"}
        The weak labels to learn from: lesion centres, per-image lesion counts, lesion
        masks, or masks with the count loss added (multi-task).
    target : {"heatmap", "euclidean", "geodesic", "segmentation", "count"} or None
        What the network regresses. None picks the default for ``labels``: heatmap for
        points, count for counts, segmentation for masks.
    model : str or None
        Network name for ``weaklesion.models.build_model``; None picks ``"gpunet"`` for
        count targets and ``"unet"`` otherwise.
    model_kwargs : dict
        Extra network arguments (features/filters, dropout, ...). GP-Unet as a count
        network (``target="count"``) gets ``normalization="batch"`` unless the key is
        given (``model_kwargs.normalization="none"`` gives the papers' network): on 7×5
        MNIST grids batch normalisation in its convolution blocks raised the FAUC of
        its maps, while it lowered that of GP-Unet without residual, which keeps none
        (centred gradient, docs/REPRODUCTION.md).
    spatial_dims : {2, 3} or None
        Image dimensionality; None infers it from the data.
    sigma : float
        Standard deviation of the heatmap Gaussians, and the distance scale of the
        distance-map targets, in ``sigma_units``.
    sigma_units : {"voxels", "mm"}
        ``"mm"`` divides ``sigma`` (and ``fit_sigma``) by the dataset's voxel spacing
        per axis.
    fit_sigma : float or None
        Standard deviation, in ``sigma_units``, of the Gaussians fitted to predicted
        heatmaps (validation, tuning, the demo); None uses ``sigma``. A trained network's
        peaks are a little wider than its targets, most of all on large lesions; a
        Gaussian fitted narrower than the peak leaves a shoulder that becomes a second,
        false lesion.
    geodesic_weight : float
        Weight in [0, 1] of the intensity term of the geodesic distance target (0 is the
        chamfer distance of the voxel grid, 1 intensity change only).
    foreground_weight : float
        Heatmap MSE weight of voxels where the peak-1 target exceeds
        ``foreground_threshold`` (1 elsewhere).
    foreground_threshold : float
        Target value (on the peak-1 scale) above which a voxel counts as foreground.
    loss_inside_mask : bool
        Restrict the heatmap / distance MSE to the voxels where some channel of the raw
        image is above its minimum: the head or brain of a scan with a constant
        background (e.g. skull-stripped), so that the empty background does not count.
    positive_weight : float
        Weight of lesion voxels in the segmentation BCE.
    count_weight : float or None
        Full weight of the count loss in the multi-task objective; None (the default)
        takes 0.001 for the Poisson-binomial count and 0.01 for a count head. The
        segmentation BCE is a mean over voxels while the count NLL is per image and
        reaches only the regions' maxima: on 24 x 48 x 48 volumes at weight 1 the count
        gradient on the network is 40 to 200 times the segmentation gradient and the
        segmentation collapses. At 0.001 (the paper's starting weight) the
        Poisson-binomial model kept lesion F1 within 0.02 of segmentation only and
        counted at least as well in each of 3 seeds; at 0.01 F1 fell by 0.04 in one
        (``benchmarks/counting_recipes.py``, docs/REPRODUCTION.md). A head's
        cross-entropy reaches the U-Net more weakly: the bottleneck head needs its
        features to learn the count.
    count_warmup_epochs : int
        Epochs of segmentation only (count weight 0) before the count loss starts.
    count_ramp_epochs : int
        Epochs over which the count weight then rises linearly to ``count_weight``.
    max_count : int
        Highest count with its own bin in the count loss (higher counts share the last).
    count_threshold : float
        Probability above which voxels form the candidate regions of the
        Poisson-binomial count loss (``count_head="poisson_binomial"``), in (0, 1): the
        paper's low threshold, 0.1, keeps weak regions; lesions joined by voxels above it
        form one region, which the loss cannot split (its gradient reaches each region's
        maximum only).
    count_head : {"poisson_binomial", "bottleneck", "multihead", "downstream"}
        How ``masks+counts`` training counts: the Poisson-binomial distribution of the
        map's candidate regions, or a classifier over the bins ``0 .. max_count`` on the
        U-Net's bottleneck, last decoder features or sigmoid map (see
        :mod:`weaklesion.models.heads`), trained with cross-entropy on the same
        schedule. Heads count whole images: ``patch_size`` must be none.
    count_head_standardize : bool
        Standardise a count head's pooled features with running statistics before its
        perceptron (:class:`~weaklesion.models.heads.RunningStandardization`); False is
        the plain head, whose nearly constant inputs keep it at the most frequent count.
    count_objective : {"regression", "classification"}
        How a ``count`` target trains: MSE of the predicted count, or binary
        cross-entropy of the single output taken as the logit of lesion presence
        (count > 0). Only for ``labels="counts"``.
    count_gradient : {"plain", "centred"}
        How a count network (``labels="counts"``) learns: ``"plain"`` back-propagates
        the loss as it is, as the papers do; ``"centred"`` subtracts the
        batch mean of the pooled features in training, so that its weights learn from
        the differences between the images of a batch, and sets the inference mean and
        the output's level from the training images before the first epoch and after
        each (see :class:`weaklesion.models.GPUNet`; needs ``batch_size`` ≥ 2). The
        default: on 7×5 MNIST grids the plain gradient sits at the mean count for 9
        epochs (digit 4) or more than 50 (digit 7) and the centred one leaves it within
        the first epochs; on 3×3 grids of digits 4 and 7, three seeds each, 8 epochs,
        the centred one reached 0.46-0.82 of the mean-count error and the plain one
        never went below 0.995 of it. Where the plain gradient does learn (1×2 grids
        of digit 1) its maps localise better (FAUC 85.6 against 72.2 by rank, three
        seeds): set ``"plain"`` to reproduce the papers (docs/REPRODUCTION.md).
        A count head (``count_head`` other than ``"poisson_binomial"``) follows the same
        setting: ``"centred"`` centres the gradient of its pooled features over the
        batch and leaves its forward pass as it is
        (:func:`weaklesion.models.heads.centre_gradient`).
    epochs : int
        Number of training epochs.
    lr : float
        Adam learning rate (the peak rate of a schedule).
    lr_schedule : {"constant", "cosine", "onecycle"}
        Learning rate per optimiser step over the ``epochs``: constant; cosine annealing
        from ``lr`` to 0; or one cycle (cosine warm-up from ``lr / 25`` to ``lr`` over the
        first 30 % of the steps, then cosine annealing to ``lr / 25 / 1e4``), see
        :func:`weaklesion.training.schedules.learning_rate`.
    batch_size : int
        Images (or patches) per step and per process.
    patch_size : list of int or None
        Random patches of this size for large images; None trains on whole images.
    augment : bool
        Random flips and a small random affine, applied identically to image and target.
    affine_probability : float
        Probability in [0, 1] that an augmented sample also gets the random affine
        (rotation and scaling); 0 augments with flips only.
    seed : int
        Seed of initialisation, data order, patches, augmentation and dropout.
    num_threads : int or None
        CPU threads for torch's operations (``torch.set_num_threads``); None follows
        :func:`weaklesion.threads.choose_threads` (``WEAKLESION_NUM_THREADS``,
        ``OMP_NUM_THREADS``, else the cores the machine's load leaves free).
    val_fraction : float
        Fraction of labelled cases held out for validation when the dataset has no split.
    val_every : int
        Validate (and update ``best.pt``) after every ``val_every``-th epoch and after
        the last one; ``last.pt`` is written after every epoch.
    patience : int or None
        Early stopping: training ends once this many validations in a row (see
        ``val_every``) have not bettered the best one, whose weights ``best.pt`` keeps.
        None trains all ``epochs``.
    min_epochs : int
        Epochs trained before ``patience`` may end training: a network that learns
        nothing at first (a count regressor stuck at the mean count) gets that long.
    match_distance : float
        Largest distance, in ``sigma_units``, at which a validation detection matches a
        true lesion (detection F1).
    init_from : str or None
        A run folder (its ``best.pt``) or a checkpoint file whose network weights start
        the training instead of a random initialisation: transfer, e.g. a heatmap model
        fine-tuned as a segmentation model. The network (``model``, ``model_kwargs``,
        channels, dimensions) must be the same.
    label_fraction : float
        Fraction in (0, 1] of the training cases whose labels are used, drawn with the
        seed, at least one case (e.g. 0.01 of the masks); the validation cases are kept.
    freeze_encoder : bool
        Train the decoder only: the encoder's parameters keep their initial values.
    ema_decay : float
        Decay in [0, 1) of an exponential moving average of the weights, updated after
        every optimiser step (Polyak averaging; the decay is warmed up as
        ``min(ema_decay, (1 + t) / (10 + t))`` at step ``t``). With a value above 0 the
        averaged weights are the ones validated and saved as the model in ``best.pt``
        and ``last.pt``; 0 (the default) turns averaging off.
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` uses CUDA when it is available.

    Examples
    --------
    >>> config = TrainConfig(labels="counts")
    >>> config.target, config.model
    ('count', 'gpunet')
    >>> TrainConfig(epochs="ten")
    Traceback (most recent call last):
    ...
    ValueError: epochs: got 'ten' (str); expected int
    """

    labels: str = "points"
    target: str | None = None
    model: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    spatial_dims: int | None = None
    sigma: float = 1.0
    sigma_units: str = "voxels"
    fit_sigma: float | None = None
    geodesic_weight: float = 0.5
    foreground_weight: float = 21.0
    foreground_threshold: float = 0.05
    loss_inside_mask: bool = False
    positive_weight: float = 3.0
    count_weight: float | None = None
    count_warmup_epochs: int = 5
    count_ramp_epochs: int = 5
    max_count: int = 4
    count_threshold: float = 0.1
    count_head: str = "poisson_binomial"
    count_head_standardize: bool = True
    count_objective: str = "regression"
    count_gradient: str = "centred"
    epochs: int = 100
    lr: float = 1e-3
    lr_schedule: str = "constant"
    batch_size: int = 2
    patch_size: list[int] | None = None
    augment: bool = True
    affine_probability: float = 0.5
    seed: int = 0
    num_threads: int | None = None
    val_fraction: float = 0.2
    val_every: int = 1
    patience: int | None = None
    min_epochs: int = 0
    match_distance: float = 3.0
    init_from: str | None = None
    label_fraction: float = 1.0
    freeze_encoder: bool = False
    ema_decay: float = 0.0
    device: str = "auto"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            setattr(self, item.name, _checked(item.name, getattr(self, item.name), hints))
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ValueError(f"{name}: got {value!r}; expected one of {', '.join(choices)}")
        allowed = TARGETS_FOR_LABELS[self.labels]
        if self.target is None:
            self.target = allowed[0]
        elif self.target not in allowed:
            raise ValueError(
                f"target: {self.target!r} cannot be trained from {self.labels!r} labels; "
                f"expected one of {', '.join(allowed)}"
            )
        if self.model is None:
            self.model = "gpunet" if self.target == "count" else "unet"
        if self.count_weight is None:
            self.count_weight = (
                POISSON_BINOMIAL_COUNT_WEIGHT
                if self.count_head == "poisson_binomial"
                else HEAD_COUNT_WEIGHT
            )
        if self.target == "count":
            # GP-Unet with batch normalisation unless named; "none" for None, which TOML
            # cannot hold.
            default = "batch" if self.model == "gpunet" else "none"
            named = self.model_kwargs.get("normalization", default)
            self.model_kwargs = {**self.model_kwargs, "normalization": named or "none"}
        if self.model in MODEL_NAMES:
            check_model_arguments(self.model, self.model_kwargs)
        _check_ranges(self)


def _check_ranges(config: TrainConfig) -> None:
    positive = (
        "sigma",
        "lr",
        "epochs",
        "batch_size",
        "num_threads",
        "match_distance",
        "val_every",
        "patience",
    )
    for name in positive:
        if getattr(config, name) is not None and not getattr(config, name) > 0:
            raise ValueError(f"{name}: got {getattr(config, name)!r}; expected a positive value")
    non_negative = (
        "foreground_weight",
        "positive_weight",
        "count_weight",
        "count_warmup_epochs",
        "count_ramp_epochs",
        "max_count",
        "seed",
        "min_epochs",
    )
    for name in non_negative:
        if getattr(config, name) < 0:
            raise ValueError(f"{name}: got {getattr(config, name)!r}; expected a value >= 0")
    if not 0 < config.count_threshold < 1:
        raise ValueError(
            f"count_threshold: got {config.count_threshold!r}; expected a value in (0, 1)"
        )
    if not 0 <= config.geodesic_weight <= 1:
        raise ValueError(
            f"geodesic_weight: got {config.geodesic_weight!r}; expected a value in [0, 1]"
        )
    if not 0 < config.label_fraction <= 1:
        raise ValueError(
            f"label_fraction: got {config.label_fraction!r}; expected a value in (0, 1]"
        )
    if not 0 <= config.affine_probability <= 1:
        raise ValueError(
            f"affine_probability: got {config.affine_probability!r}; expected a value in [0, 1]"
        )
    if not 0 <= config.ema_decay < 1:
        raise ValueError(f"ema_decay: got {config.ema_decay!r}; expected a value in [0, 1)")
    if not 0 <= config.val_fraction < 1:
        raise ValueError(f"val_fraction: got {config.val_fraction!r}; expected a value in [0, 1)")
    if config.count_head != "poisson_binomial" and config.labels != "masks+counts":
        raise ValueError(
            f"count_head: {config.count_head!r} is trained from 'masks+counts' labels; "
            f"got labels {config.labels!r}"
        )
    if config.count_objective != "regression" and config.labels != "counts":
        raise ValueError(
            f"count_objective: {config.count_objective!r} applies to 'counts' labels; "
            f"got labels {config.labels!r}"
        )
    if config.labels == "counts" and config.count_gradient == "centred" and config.batch_size < 2:
        raise ValueError(
            f"batch_size: got {config.batch_size}; the centred count gradient compares the "
            "images of a batch, expected 2 or more (or count_gradient='plain')"
        )
    kwargs = config.model_kwargs or {}
    if (
        config.labels == "counts"
        and config.count_gradient == "centred"
        and (kwargs.get("pooling") == "max" or kwargs.get("output") == "density")
    ):
        raise ValueError(
            "count_gradient: 'centred' centres average-pooled linear features; got "
            f"model_kwargs pooling {kwargs.get('pooling')!r}, output {kwargs.get('output')!r} "
            "(use count_gradient='plain')"
        )
    if config.count_head != "poisson_binomial" and config.patch_size is not None:
        raise ValueError(
            f"patch_size: a {config.count_head!r} count head counts whole images; expected none"
        )
    if config.spatial_dims not in (None, 2, 3):
        raise ValueError(f"spatial_dims: got {config.spatial_dims!r}; expected 2, 3 or none")
    if config.patch_size is not None:
        if config.spatial_dims is not None and len(config.patch_size) != config.spatial_dims:
            raise ValueError(
                f"patch_size: got {config.patch_size!r}; expected {config.spatial_dims} sizes"
            )
        if any(size <= 0 for size in config.patch_size):
            raise ValueError(f"patch_size: got {config.patch_size!r}; expected positive sizes")


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return f"list of {_type_name(item)}"
    return annotation.__name__


def _checked(name: str, value: Any, hints: Mapping[str, Any]) -> Any:
    """Return ``value`` converted to the field's type, or raise a one-line error."""
    annotation = hints[name]
    converted = _convert(value, annotation)
    if converted is _INVALID:
        raise ValueError(
            f"{name}: got {value!r} ({type(value).__name__}); expected {_type_name(annotation)}"
        )
    return converted


_INVALID = object()


def _convert(value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(annotation):
            converted = _convert(value, option)
            if converted is not _INVALID:
                return converted
        return _INVALID
    if annotation is type(None):
        return None if value is None else _INVALID
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            return _INVALID
        items = [_convert(v, item) for v in value]
        return _INVALID if any(v is _INVALID for v in items) else items
    if annotation is dict:
        return dict(value) if isinstance(value, Mapping) else _INVALID
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _INVALID
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    return value if isinstance(value, annotation) else _INVALID


def _parse_value(text: str) -> Any:
    """A ``key=value`` right-hand side as TOML, falling back to a bare string."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def _parse_overrides(overrides: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, separator, text = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"override {item!r}: expected key=value")
        parsed[key.strip()] = _parse_value(text)
    return parsed


def _apply(values: dict[str, Any], updates: Mapping[str, Any], source: str) -> None:
    names = {item.name for item in dataclasses.fields(TrainConfig)}
    for key, value in updates.items():
        name, _, subkey = key.partition(".")
        if name not in names or (subkey and name != "model_kwargs"):
            raise ValueError(f"{source}: unknown key {key!r}; expected one of {', '.join(names)}")
        if subkey:
            values.setdefault("model_kwargs", {})[subkey] = value
        else:
            values[name] = value


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Read a training configuration from TOML and apply overrides.

    Parameters
    ----------
    path : path or None
        A TOML file with :class:`TrainConfig` keys at the top level and an optional
        ``[model_kwargs]`` table; None starts from the defaults.
    overrides : dict or iterable of "key=value" strings
        Values that replace the file's. A string value is read as TOML (``epochs=5``,
        ``patch_size=[16, 32, 32]``, ``labels="counts"``), a bare word as a string and
        ``none`` as None; ``model_kwargs.NAME=value`` sets one network argument.
    base : dict or None
        Values to start from instead of the defaults (e.g. ``dataclasses.asdict`` of
        another run's configuration); the file and the overrides replace them.

    Returns
    -------
    TrainConfig
        The checked configuration, with the defaults that follow from ``labels`` filled in.

    Raises
    ------
    ValueError
        One line naming the key, for an unknown key or a value of the wrong type.

    Examples
    --------
    >>> load_config(None, ["labels=masks", "epochs=3", "model_kwargs.dropout=0.1"]).epochs
    3
    >>> load_config(None, ["epoch=3"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: overrides: unknown key 'epoch'; expected one of ...
    """
    values: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if path is not None:
        try:
            with open(path, "rb") as handle:
                from_file = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML ({error})") from None
        _apply(values, from_file, str(path))
    _apply(values, _parse_overrides(overrides), "overrides")
    return TrainConfig(**values)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise ValueError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def config_to_toml(config: TrainConfig) -> str:
    """The configuration as TOML text; None values are left out (they are the default).

    Examples
    --------
    >>> text = config_to_toml(TrainConfig(model_kwargs={"dropout": 0.1}))
    >>> parsed = tomllib.loads(text)
    >>> parsed["labels"], parsed["model_kwargs"]
    ('points', {'dropout': 0.1})
    """
    values = dataclasses.asdict(config)
    model_kwargs = values.pop("model_kwargs")
    lines = [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
    lines += ["", "[model_kwargs]"]
    lines += [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in model_kwargs.items()]
    return "\n".join(lines) + "\n"


def save_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write ``config`` as TOML to ``path`` atomically and return the path."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(config_to_toml(config))
    return Path(path)


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a configuration from ``dataclasses.asdict`` output (as kept in checkpoints).

    Keys a configuration did not yet have take the value that reproduces what it ran
    with, where that is not today's default: ``count_gradient`` is ``"plain"`` for runs
    written before it existed, and a count network recorded without
    ``model_kwargs.normalization`` had none.

    >>> config = config_from_dict({"labels": "counts"})
    >>> config.count_gradient, config.model_kwargs
    ('plain', {'normalization': 'none'})
    """
    known = {item.name for item in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in values.items() if k in known}
    values.setdefault("count_gradient", "plain")
    labels = values.get("labels", "points")
    target = values.get("target") or TARGETS_FOR_LABELS.get(labels, ("",))[0]
    if target == "count":
        values["model_kwargs"] = {"normalization": "none", **(values.get("model_kwargs") or {})}
    return TrainConfig(**values)
