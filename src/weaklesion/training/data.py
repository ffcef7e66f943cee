"""Training data: cached cases, their targets, random patches and augmentation.

Everything random here is drawn from generators seeded by ``(seed, epoch)`` (the order
of the cases) or ``(seed, epoch, case index)`` (patch position and augmentation), never
from a global random state. What epoch ``e`` sees is therefore fixed by the seed alone,
whatever ran before it, which is what lets an interrupted run resume exactly and lets
every process of a distributed run agree on the order without talking.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from weaklesion import targets
from weaklesion.config import TrainConfig
from weaklesion.data.dataset import check_dataset, load_dataset, mask_instances
from weaklesion.data.normalize import zscore
from weaklesion.io import affine_spacing
from weaklesion.scoring import settings_for_config

# Independent random streams derived from the run's seed.
ORDER_STREAM, SAMPLE_STREAM, DROPOUT_STREAM, SPLIT_STREAM = 0, 1, 2, 3
LABEL_SUBSET_STREAM = 4

# Small augmentation: rotations up to this many radians about each axis, scaling by a
# factor in [1 - MAX_SCALE, 1 + MAX_SCALE] per axis, each axis flipped with probability
# 1/2 and the affine applied with the configuration's ``affine_probability``.
MAX_ROTATION = 0.15
MAX_SCALE = 0.1
# Fraction of random patches centred on a lesion (lesions are too sparse to be hit
# often enough by uniform patches).
FOREGROUND_PATCH_PROBABILITY = 1 / 3

# Arrays resampled by nearest neighbour (labels) rather than linear interpolation.
LABEL_KEYS = ("instances", "loss_mask")


@dataclass
class TrainingCase:
    """One case in memory, ready to make training samples from.

    Attributes
    ----------
    name : str
        Case identifier.
    image : ndarray, shape (C, *spatial), float32
        Z-score normalised image.
    spacing : ndarray, shape (D,)
        Voxel size in mm along each axis.
    points : ndarray, shape (K, D), or None
        Lesion centres in voxel coordinates.
    count : int or None
        Number of lesions.
    instances : ndarray, shape (*spatial), int32, or None
        Lesion masks, one label per lesion (0 for background).
    roi : ndarray, shape (*spatial), bool, or None
        Region where the dense losses apply with ``loss_inside_mask``: the voxels where
        some channel of the raw image is above its minimum (the head or brain of a
        scan whose background is constant, e.g. skull-stripped).
    """

    name: str
    image: np.ndarray
    spacing: np.ndarray
    points: np.ndarray | None = None
    count: int | None = None
    instances: np.ndarray | None = None
    roi: np.ndarray | None = None


def _training_case(case, config: TrainConfig) -> TrainingCase:

    arrays = case.load()
    instances = None if arrays.mask is None else mask_instances(arrays.mask)
    count = case.count
    if count is None and instances is not None:
        count = len(np.unique(instances)) - int((instances == 0).any())
    roi = None
    if config.loss_inside_mask:
        spatial_axes = tuple(range(1, arrays.image.ndim))
        roi = (arrays.image > arrays.image.min(axis=spatial_axes, keepdims=True)).any(axis=0)
    return TrainingCase(
        name=case.id,
        image=zscore(arrays.image),
        spacing=affine_spacing(arrays.affine),
        points=case.points,
        count=count,
        instances=instances,
        roi=roi,
    )


def _has_labels(case, labels: str) -> bool:
    if labels == "points":
        return case.points is not None
    if labels == "counts":
        return case.count is not None
    return case.mask is not None


def load_training_cases(
    root: str | os.PathLike, config: TrainConfig
) -> tuple[list[TrainingCase], list[TrainingCase], dict]:
    """Check a dataset folder, and load its training and validation cases into memory.

    Cases without the labels ``config.labels`` needs, and the ``test`` split, are left
    out. The validation cases are the dataset's ``validation`` split when it has one
    with such labels; otherwise ``config.val_fraction`` of the cases (at least one when
    the fraction is positive and there are two cases or more), drawn with the seed.
    Of the other cases, :func:`labelled_subset` keeps ``config.label_fraction``.

    Parameters
    ----------
    root : path
        Dataset folder or datalist (:func:`weaklesion.data.load_dataset`).
    config : TrainConfig

    Returns
    -------
    train_cases, val_cases : list of TrainingCase
        Z-score normalised images with their labels; mask labels become lesion
        instances (a binary mask's connected components).
    info : dict
        ``"spatial_dims"``, ``"in_channels"``, ``"channels"`` (names) and ``"spacing"``
        (of the first case, mm).

    Raises
    ------
    ValueError
        Listing every problem :func:`weaklesion.data.check_dataset` finds; or when no
        case has the labels needed, or cases differ in dimensionality or channels.
    """

    problems = check_dataset(root)
    if problems:
        raise ValueError(
            f"{root}: {len(problems)} problem(s) in the dataset: " + "; ".join(problems)
        )
    dataset = load_dataset(root)
    test = set(dataset.split.get("test", ()))
    usable = [c for c in dataset if c.id not in test and _has_labels(c, config.labels)]
    if not usable:
        needed = {"points": "points.csv", "counts": "counts.csv"}.get(config.labels, "masks")
        raise ValueError(f"{root}: no training case has {config.labels} labels; expected {needed}")
    validation = set(dataset.split.get("validation", ())) & {c.id for c in usable}
    if not validation and config.val_fraction > 0 and len(usable) > 1:
        n_val = min(max(round(config.val_fraction * len(usable)), 1), len(usable) - 1)
        order = np.random.default_rng([config.seed, SPLIT_STREAM]).permutation(len(usable))
        validation = {usable[i].id for i in order[:n_val]}
    training = [c.id for c in usable if c.id not in validation]
    kept = set(labelled_subset(training, config.label_fraction, config.seed)) | validation
    cases = [_training_case(c, config) for c in usable if c.id in kept]
    dims = {case.image.ndim - 1 for case in cases}
    channels = {len(case.image) for case in cases}
    if len(dims) > 1 or len(channels) > 1:
        raise ValueError(
            f"{root}: cases differ in spatial dimensions {sorted(dims)} or channels "
            f"{sorted(channels)}; expected the same for all"
        )
    if config.spatial_dims is not None and config.spatial_dims not in dims:
        raise ValueError(f"spatial_dims: got {config.spatial_dims}; the data are {dims.pop()}D")
    info = {
        "spatial_dims": dims.pop(),
        "in_channels": channels.pop(),
        "channels": list(dataset.channel_names),
        "spacing": cases[0].spacing.tolist(),
    }
    train = [case for case in cases if case.name not in validation]
    val = [case for case in cases if case.name in validation]
    return train, val, info


def labelled_subset(names: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The training cases whose labels are used: a seeded random ``fraction`` of ``names``.

    ``round(fraction * len(names))`` cases (halves rounded up), at least one, are drawn
    by a permutation seeded by ``seed``, and returned in their given order.

    Parameters
    ----------
    names : sequence of str
        Training case names.
    fraction : float
        In (0, 1]; 1 keeps every case.
    seed : int
        Seed of the draw (the run's seed).

    Examples
    --------
    >>> names = [f"case_{i}" for i in range(10)]
    >>> len(labelled_subset(names, 0.25, seed=0)), len(labelled_subset(names, 0.01, seed=0))
    (3, 1)
    >>> labelled_subset(names, 0.3, seed=1) == labelled_subset(names, 0.3, seed=1)
    True
    """
    names = list(names)
    if fraction >= 1 or not names:
        return names
    n_kept = min(max(math.floor(fraction * len(names) + 0.5), 1), len(names))
    order = np.random.default_rng([seed, LABEL_SUBSET_STREAM]).permutation(len(names))
    return [names[i] for i in np.sort(order[:n_kept])]


def stream_seed(seed: int, stream: int, *keys: int) -> int:
    """A 63-bit seed for one random stream of a run, from the run's seed and some keys.

    Examples
    --------
    >>> stream_seed(0, DROPOUT_STREAM, 3) == stream_seed(0, DROPOUT_STREAM, 3)
    True
    >>> stream_seed(0, DROPOUT_STREAM, 3) == stream_seed(0, DROPOUT_STREAM, 4)
    False
    """
    state = np.random.SeedSequence([seed, stream, *keys]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def epoch_batches(
    n_samples: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[np.ndarray]:
    """Sample indices of each batch of one epoch, for one process of ``world_size``.

    The epoch's order is a permutation seeded by ``(seed, epoch)``. With several
    processes it is extended by wrapping around to a multiple of ``world_size`` and
    dealt out (process ``rank`` takes every ``world_size``-th index), so each process
    gets as many batches as the others and together they cover every sample.

    Parameters
    ----------
    n_samples : int
        Number of training samples.
    batch_size : int
        Samples per batch and process; the last batch may be smaller.
    seed, epoch : int
        Seed of the run and 0-based epoch.
    rank, world_size : int
        This process and the number of processes.

    Returns
    -------
    batches : list of int arrays
        Empty if there are no samples.

    Examples
    --------
    >>> batches = epoch_batches(5, 2, seed=0, epoch=0)
    >>> [len(b) for b in batches], sorted(np.concatenate(batches).tolist())
    ([2, 2, 1], [0, 1, 2, 3, 4])
    >>> shards = [np.concatenate(epoch_batches(5, 2, 0, 0, rank, 2)) for rank in (0, 1)]
    >>> [len(shard) for shard in shards], sorted(set(np.concatenate(shards).tolist()))
    ([3, 3], [0, 1, 2, 3, 4])
    """
    if n_samples == 0:
        return []
    order = np.random.default_rng([seed, ORDER_STREAM, epoch]).permutation(n_samples)
    order = np.resize(order, math.ceil(n_samples / world_size) * world_size)
    shard = order[rank::world_size]
    return [shard[start : start + batch_size] for start in range(0, len(shard), batch_size)]


def sigma_voxels(config: TrainConfig, spacing: Sequence[float]) -> np.ndarray:
    """``config.sigma`` per axis in voxels: divided by the spacing when it is in mm."""
    spacing = np.asarray(spacing, dtype=float)
    if config.sigma_units == "mm":
        return config.sigma / spacing
    return np.full(len(spacing), config.sigma)


def fit_sigma_voxels(config: TrainConfig, spacing: Sequence[float]) -> np.ndarray:
    """Width of the Gaussians fitted to predicted heatmaps, per axis in voxels.

    ``config.fit_sigma`` (``config.sigma`` when None), divided by the spacing when the
    configuration's sigmas are in mm.

    Examples
    --------
    >>> fit_sigma_voxels(TrainConfig(sigma=1.5, fit_sigma=1.75), [1.0, 1.0, 2.0]).tolist()
    [1.75, 1.75, 1.75]
    >>> config = TrainConfig(sigma=2.0, sigma_units="mm")
    >>> fit_sigma_voxels(config, [1.0, 1.0, 2.0]).tolist()
    [2.0, 2.0, 1.0]
    """
    return settings_for_config(config).sigma_voxels(spacing)


def heatmap_scale(sigma: Sequence[float]) -> float:
    """Factor that makes an isolated mass-1 Gaussian peak at 1: ``prod(sqrt(2 pi) sigma)``.

    The network regresses the heatmap times this factor (peak-1 targets train, mass-1
    targets peaking near 0.06 do not); predictions are divided by it again.

    Parameters
    ----------
    sigma : sequence of D floats
        Gaussian standard deviation per axis, in voxels.

    Examples
    --------
    >>> print(f"{heatmap_scale([1.0, 1.0]):.4f}")  # 2 pi
    6.2832
    """
    return float(np.prod(np.sqrt(2 * np.pi) * np.asarray(sigma, dtype=float)))


def dense_target(case: TrainingCase, config: TrainConfig, scale: float) -> np.ndarray | None:
    """The dense training target of a case, ``(*spatial)`` float32, or None for counts.

    Heatmaps are on the peak-1 scale (the mass-1 heatmap times ``scale``); distance
    targets are ``exp(-distance / sigma)`` of the Euclidean or geodesic distance to the
    nearest point (in mm with ``sigma_units="mm"``; the geodesic one over the
    normalised image, weighted ``config.geodesic_weight``); segmentation targets are the
    binary lesion masks.
    """

    shape = case.image.shape[1:]
    if config.target == "count":
        return None
    if config.target == "segmentation":
        return (case.instances > 0).astype(np.float32)
    if config.target == "heatmap":
        heatmap = targets.gaussian_heatmap(case.points, shape, sigma_voxels(config, case.spacing))
        return (heatmap * scale).astype(np.float32)
    spacing = case.spacing if config.sigma_units == "mm" else None
    if config.target == "euclidean":
        distance = targets.euclidean_distance_map(case.points, shape, spacing)
    else:
        distance = targets.geodesic_distance_map(
            case.points, case.image, spacing, weight=config.geodesic_weight
        )
    return targets.distance_decay(distance, config.sigma).astype(np.float32)


def _crop_start(
    size: Sequence[int], patch: Sequence[int], centre: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """Start of a patch in an image of ``size``, random or around ``centre``."""
    high = np.maximum(np.asarray(size) - np.asarray(patch), 0)
    if centre is None:
        return np.array([rng.integers(0, h + 1) for h in high])
    return np.clip(np.round(centre).astype(int) - np.asarray(patch) // 2, 0, high)


def _crop(array: np.ndarray, start: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """Crop the last D axes of ``array`` at ``start``, zero-padding up to ``patch``."""
    dims = len(patch)
    window = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
    cropped = array[(..., *window)]
    missing = [p - c for p, c in zip(patch, cropped.shape[-dims:], strict=True)]
    if any(missing):
        pad = [(0, 0)] * (array.ndim - dims) + [(0, m) for m in missing]
        cropped = np.pad(cropped, pad)
    return cropped


def augment(
    arrays: dict[str, torch.Tensor],
    rng: np.random.Generator,
    spatial_dims: int,
    affine_probability: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Random flips and a small random affine, the same for every array of a sample.

    Parameters
    ----------
    arrays : dict of str to (C, *spatial) float tensors
        Image and dense targets; those named in ``LABEL_KEYS`` are resampled by nearest
        neighbour, the rest linearly. Outside the image the affine pads with zeros.
    rng : numpy Generator
        Source of every random choice (so the augmentation is fixed by its seed).
    spatial_dims : int
        Number of spatial axes D.
    affine_probability : float
        Probability that the random affine is applied after the flips.

    Returns
    -------
    dict of str to tensors
        Augmented copies, same shapes.

    Notes
    -----
    MONAI is imported here, not at the top: it takes seconds to import and only the
    augmentation needs it.
    """
    from monai.transforms import Affine
    from monai.utils import convert_to_tensor

    flips = [axis + 1 for axis in range(spatial_dims) if rng.random() < 0.5]
    apply_affine = rng.random() < affine_probability
    rotations = rng.uniform(-MAX_ROTATION, MAX_ROTATION, 3 if spatial_dims == 3 else 1)
    scales = rng.uniform(1 - MAX_SCALE, 1 + MAX_SCALE, spatial_dims)
    affine = Affine(
        rotate_params=rotations.tolist(),
        scale_params=scales.tolist(),
        padding_mode="zeros",
        image_only=True,
    )
    augmented = {}
    for key, array in arrays.items():
        if flips:
            array = torch.flip(array, flips)
        if apply_affine:
            mode = "nearest" if key in LABEL_KEYS else "bilinear"
            array = convert_to_tensor(affine(array, mode=mode), track_meta=False)
        augmented[key] = array.contiguous()
    return augmented


class LesionDataset(torch.utils.data.Dataset):
    """Training samples made from cached cases: image, target and count.

    Targets are computed once and kept in memory. Each sample is the whole image, or a
    random patch when ``config.patch_size`` is set (a third of them centred on a lesion),
    then augmented when ``config.augment``; the random choices for sample ``i`` in epoch
    ``e`` come from a generator seeded by ``(config.seed, e, i)``. Call
    :meth:`set_epoch` before each epoch.

    Parameters
    ----------
    cases : list of TrainingCase
        Cases with the labels ``config.labels`` needs.
    config : TrainConfig
        ``target``, ``patch_size``, ``augment``, ``seed``, ``sigma``,
        ``loss_inside_mask`` are used.
    scale : float
        Heatmap scale (see :func:`heatmap_scale`); 1 for other targets.

    Notes
    -----
    A sample is a dict of tensors: ``"image"`` ``(C, *spatial)``; ``"target"``
    ``(1, *spatial)`` for dense targets; ``"loss_mask"`` ``(1, *spatial)`` with
    ``loss_inside_mask``; ``"count"`` (a 0-d float tensor) for count labels, which for
    ``masks+counts`` is the number of lesion labels left in the (cropped, augmented)
    sample.
    """

    def __init__(self, cases: Sequence[TrainingCase], config: TrainConfig, scale: float = 1.0):
        if config.patch_size is not None and config.labels == "counts":
            raise ValueError(
                "patch_size: a patch's lesion count is unknown from image-level counts; "
                "expected none (whole images) for counts labels"
            )
        self.cases = list(cases)
        self.config = config
        self.epoch = 0
        self.targets = [dense_target(case, config, scale) for case in self.cases]
        self._foreground = [self._foreground_voxels(case) for case in self.cases]

    def _foreground_voxels(self, case: TrainingCase) -> np.ndarray | None:
        if self.config.patch_size is None or self.config.labels == "counts":
            return None
        if case.instances is not None:
            return np.argwhere(case.instances > 0)
        return case.points

    def set_epoch(self, epoch: int) -> None:
        """Make the following samples those of (0-based) ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case, target = self.cases[index], self.targets[index]
        config = self.config
        rng = np.random.default_rng([config.seed, SAMPLE_STREAM, self.epoch, index])
        arrays = {"image": case.image}
        if target is not None:
            arrays["target"] = target[None]
        if config.labels == "masks+counts":
            arrays["instances"] = case.instances[None].astype(np.float32)
        if config.loss_inside_mask and target is not None and case.roi is not None:
            arrays["loss_mask"] = case.roi[None].astype(np.float32)
        if config.patch_size is not None:
            foreground = self._foreground[index]
            centre = None
            if rng.random() < FOREGROUND_PATCH_PROBABILITY and len(foreground):
                centre = foreground[rng.integers(len(foreground))]
            start = _crop_start(case.image.shape[1:], config.patch_size, centre, rng)
            arrays = {k: _crop(v, start, config.patch_size) for k, v in arrays.items()}
        sample = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        if config.augment:
            sample = augment(sample, rng, case.image.ndim - 1, config.affine_probability)
        if config.labels == "counts":
            sample["count"] = torch.tensor(float(case.count))
        elif config.labels == "masks+counts":
            labels = torch.unique(sample.pop("instances"))
            sample["count"] = torch.tensor(float((labels > 0).sum()))
        return sample


def _pad_to(array: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``array`` at the end of each axis up to ``shape``."""
    pad = []
    for size, current in zip(reversed(shape), reversed(array.shape), strict=True):
        pad += [0, int(size) - current]
    return F.pad(array, pad)


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch, zero-padding arrays to the largest shape among them.

    Examples
    --------
    >>> batch = collate([{"image": torch.ones(1, 2, 3)}, {"image": torch.ones(1, 3, 2)}])
    >>> tuple(batch["image"].shape), float(batch["image"].sum())
    ((2, 1, 3, 3), 12.0)
    """
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        shape = np.max([v.shape for v in values], axis=0) if values[0].ndim else ()
        batch[key] = torch.stack([_pad_to(v, shape) for v in values])
    return batch
