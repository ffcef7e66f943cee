"""Prediction: whole images or sliding windows, with optional MC-dropout sampling.

Maps come back in user units whatever the network does internally:

- ``"heatmap"``: the network's output divided by the run's heatmap scale, so each lesion
  again carries mass 1 and the summed map is the expected count;
- ``"segmentation"``: sigmoid probabilities in [0, 1];
- ``"euclidean"`` / ``"geodesic"``: the regressed distance-decay map as it is;
- ``"count"`` (GP-Unet): the class activation map, whose voxel mean is the predicted count.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from torch import nn

from weaklesion._validation import check_finite
from weaklesion.attention import METHODS, REFERENCES, attention_maps, check_smooth
from weaklesion.counting import CountDistribution, count_distribution, count_statistics
from weaklesion.data.dataset import CHANNEL_NAME, Case, case_id_problem, load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.io import affine_spacing, image_suffix, write_image, write_json
from weaklesion.models import enable_mc_dropout
from weaklesion.models.heads import has_count_head
from weaklesion.run import device_for, load_run
from weaklesion.scoring import find_lesions, lesion_count_distribution, settings_for_config
from weaklesion.writing import check_output_folder, output_folder

KINDS = ("heatmap", "euclidean", "geodesic", "segmentation", "count")


@dataclass
class Prediction:
    """A predicted map and, with MC dropout, its samples.

    Attributes
    ----------
    map : ndarray, shape (*spatial), float32
        The prediction in user units (see the module notes); with MC dropout, the mean of
        the samples.
    count : float or None
        Predicted count: the GP-Unet count (the CAM's voxel mean) or the heatmap's sum
        (its expected count); None for other kinds. With MC dropout, the samples' mean.
    samples : ndarray, shape (S, *spatial), float32, or None
        The ``S = mc_samples`` MC-dropout maps.
    std : ndarray, shape (*spatial), float32, or None
        Standard deviation of the samples per voxel.
    sample_counts : ndarray, shape (S,), or None
        The count of each sample, for the kinds that have one.
    count_pmf : ndarray, shape (max_count + 1,), float64, or None
        For a network with a count head (:mod:`weaklesion.models.heads`), the softmax of
        its count logits over the bins ``0 .. max_count`` (the last "or more"); with MC
        dropout, the mean over the samples. None for other networks.
    """

    map: np.ndarray
    count: float | None = None
    samples: np.ndarray | None = None
    std: np.ndarray | None = None
    sample_counts: np.ndarray | None = None
    count_pmf: np.ndarray | None = None


def _predictor(
    model: nn.Module,
    kind: str,
    scale: float,
    head_pmfs: list[torch.Tensor] | None = None,
    pooled_counts: list[torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Network input ``(N, C, *window)`` → map ``(N, 1, *window)`` in user units.

    For GP-Unet the map is the CAM divided by the window's voxel count: a count density
    whose sum over any window is that window's predicted count, so that windows stitched
    by :func:`~monai.inferers.sliding_window_inference` still add up. With global max
    pooling the count is no sum over the map: the network's own counts ``(N,)`` are
    appended to ``pooled_counts``. A network with a count head returns ``(logits,
    count_logits)``; the softmax of the count logits is appended to ``head_pmfs``.
    """

    def predict(x: torch.Tensor) -> torch.Tensor:
        if kind == "count":
            if pooled_counts is not None and _max_pooled(model):
                pooled_counts.append(model(x).reshape(-1).double().cpu())
            return model.attention_map(x).unsqueeze(1) / math.prod(x.shape[2:])
        output = model(x)
        if isinstance(output, tuple):
            output, count_logits = output
            if head_pmfs is not None:
                head_pmfs.append(torch.softmax(count_logits.double(), dim=-1).cpu())
        if kind == "heatmap":
            return output / scale
        if kind == "segmentation":
            return torch.sigmoid(output)
        return output

    return predict


def _one_pass(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    patch_size: Sequence[int] | None,
    overlap: float,
    blend: str,
    sw_batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """One prediction of the batch ``x`` (on the CPU), on ``device``.

    With windows, the image and the stitched map stay on the CPU and only the windows
    go to ``device``, so a GPU needs memory for ``sw_batch_size`` windows, not the volume.
    MONAI is imported here, not at the top: it takes seconds to import and only
    sliding-window prediction needs it.
    """
    if patch_size is None:
        return predict(x.to(device)).cpu()
    from monai.inferers import sliding_window_inference

    stitched = sliding_window_inference(
        x,
        tuple(patch_size),
        sw_batch_size,
        predict,
        overlap=overlap,
        mode=blend,
        sw_device=device,
        device=torch.device("cpu"),
    )
    return torch.as_tensor(stitched)


def predict_image(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    kind: str,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    mc_samples: int = 0,
    scale: float = 1.0,
    blend: str = "gaussian",
    sw_batch_size: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Prediction:
    """Predict the map of one image with a trained network.

    Parameters
    ----------
    model : nn.Module
        A network from :func:`weaklesion.training.load_run` (or any module with the same
        inputs and outputs; ``"count"`` needs an ``attention_map`` method).
    image : (C, *spatial) array or tensor
        One z-score-normalised image, channel first, 2D or 3D.
    kind : {"heatmap", "euclidean", "geodesic", "segmentation", "count"}
        What the network was trained to predict (the run's ``config.target``).
    patch_size : sequence of ints or None
        None predicts the whole image at once; otherwise MONAI's
        ``sliding_window_inference`` with windows of this size, for images larger than
        memory allows. Not for networks with a count head, which count whole images.
    overlap : float
        Fraction in [0, 1) by which neighbouring windows overlap.
    mc_samples : int
        0 for a deterministic prediction; otherwise the number of MC-dropout samples
        (dropout kept on at inference).
    scale : float
        The run's heatmap scale (``info["heatmap_scale"]``); heatmap outputs are divided
        by it. Ignored for other kinds.
    blend : {"gaussian", "constant"}
        How overlapping windows are averaged: weighted towards window centres, or equally.
    sw_batch_size : int
        Windows per network call.
    seed : int
        Seed of the MC-dropout masks (the global random state is left untouched).
    device : str, torch.device or None
        Where to run; None uses the device of the model's parameters.

    Returns
    -------
    Prediction
        ``map`` of shape ``spatial`` (float32), plus ``count`` for the heatmap and count
        kinds, ``count_pmf`` for a network with a count head, and the samples with their
        standard deviation when ``mc_samples > 0``.

    Examples
    --------
    >>> net = torch.nn.Conv2d(1, 1, 1)
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(2.0), net.bias.fill_(0.0)
    >>> prediction = predict_image(net, np.ones((1, 4, 4)), "heatmap", scale=4.0)
    >>> prediction.map.shape, float(prediction.map[0, 0]), prediction.count
    ((4, 4), 0.5, 8.0)
    """
    x = _checked_input(model, image, kind, patch_size, overlap)
    if mc_samples < 0:
        raise ValueError(f"mc_samples: got {mc_samples!r}; expected a number >= 0")
    device = _device_of(model, device)
    spatial = x.shape[2:]
    if math.prod(spatial) == 0:
        return _empty_prediction(spatial, kind)

    head_pmfs: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    predict = _predictor(model, kind, scale, head_pmfs, pooled)

    def one_pass() -> torch.Tensor:
        return _one_pass(predict, x, patch_size, overlap, blend, sw_batch_size, device)

    with _evaluating(model), torch.no_grad():
        if mc_samples == 0:
            maps = one_pass()[None]
        else:
            enable_mc_dropout(model)
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                maps = torch.stack([one_pass() for _ in range(mc_samples)])

    # maps: (S, 1, 1, *spatial) → (S, *spatial)
    maps = maps.reshape(maps.shape[0], *spatial).float().numpy()
    count_pmf = torch.cat(head_pmfs).mean(0).numpy() if head_pmfs else None
    pooled_counts = torch.cat(pooled).numpy() if pooled else None
    return _prediction(maps, kind, count_pmf, mc_samples > 0, pooled_counts)


def predict_images(
    model: nn.Module,
    images: Iterable[np.ndarray | torch.Tensor],
    kind: str,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    scale: float = 1.0,
    blend: str = "gaussian",
    batch_size: int = 2,
    device: str | torch.device | None = None,
) -> list[Prediction]:
    """Predict the maps of several images, ``batch_size`` images per network call.

    The same maps as :func:`predict_image` gives one image at a time (up to the rounding
    of a different summation order), without MC dropout, but faster for small 3D images
    on a CPU: for a batch of one, PyTorch's CPU convolution takes its slow generic path
    (``slow_conv3d``) whenever batch x channels x depth x height is at most 20,480, which
    for a small volume is every layer of a U-Net. For the demo's U-Net, 12 two-channel
    volumes of 32x64x64 took a fifth to a sixth of the time two at a time, and volumes
    of 64x128x128 two thirds (``benchmarks/bench_prediction.py``).

    Parameters
    ----------
    model, kind, patch_size, overlap, scale, blend, device
        As for :func:`predict_image`.
    images : iterable of (C, *spatial) arrays or tensors
        z-score-normalised images, channel first. Neighbours of the same shape share a
        network call; with ``patch_size``, each image goes alone and its windows go
        ``batch_size`` at a time. Read as they are needed: a generator that loads them
        keeps at most ``batch_size`` images in memory.
    batch_size : int
        Most images (or windows) per network call: memory for that many at once.

    Returns
    -------
    list of Prediction
        One per image, in order, as :func:`predict_image` returns with ``mc_samples=0``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size!r}; expected a number >= 1")
    inputs = (_checked_input(model, image, kind, patch_size, overlap) for image in images)
    device = _device_of(model, device)
    head_pmfs: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    predict = _predictor(model, kind, scale, head_pmfs, pooled)
    results: list[Prediction] = []
    together = batch_size if patch_size is None else 1
    with _evaluating(model), torch.no_grad():
        for group in same_shape_runs(inputs, together):
            spatial = group[0].shape[2:]
            if math.prod(spatial) == 0:
                results.extend(_empty_prediction(spatial, kind) for _ in group)
                continue
            head_pmfs.clear()
            pooled.clear()
            x = torch.cat(group)
            maps = _one_pass(predict, x, patch_size, overlap, blend, batch_size, device)
            maps = maps.reshape(len(group), 1, *spatial).float().numpy()
            pmfs = torch.cat(head_pmfs).numpy() if head_pmfs else None
            counts = torch.cat(pooled).numpy()[:, None] if pooled else [None] * len(group)
            results.extend(
                _prediction(maps[i], kind, None if pmfs is None else pmfs[i], False, counts[i])
                for i in range(len(group))
            )
    return results


def _max_pooled(model: nn.Module) -> bool:
    """Whether a count network pools its features by their maximum (not additive)."""
    return getattr(model, "pooling", "average") == "max"


def _checked_input(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    kind: str,
    patch_size: Sequence[int] | None,
    overlap: float,
) -> torch.Tensor:
    """``image`` checked against the prediction's settings, as a ``(1, C, *spatial)``
    float32 CPU tensor."""
    if kind not in KINDS:
        raise ValueError(f"kind: got {kind!r}; expected one of {', '.join(KINDS)}")
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.ndim not in (3, 4):
        raise ValueError(f"image: has shape {tuple(x.shape)}; expected (C, Y, X) or (C, Z, Y, X)")
    check_finite(x, "image")
    if patch_size is not None and len(patch_size) != x.ndim - 1:
        raise ValueError(f"patch_size: got {tuple(patch_size)}; expected {x.ndim - 1} sizes")
    if patch_size is not None and (has_count_head(model) or _max_pooled(model)):
        raise ValueError(
            "patch_size: a network with a count head or global max pooling counts whole "
            "images; got windows"
        )
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap: got {overlap!r}; expected a fraction in [0, 1)")
    return x.to(dtype=torch.float32).unsqueeze(0).cpu()


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device``, or where the model's parameters are when None."""
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    return torch.device(device)


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in evaluation mode inside the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def same_shape_runs(inputs: Iterable[torch.Tensor], most: int) -> Iterator[list[torch.Tensor]]:
    """``inputs`` in order, cut into runs of at most ``most`` neighbours of one shape.

    Each run is yielded as soon as it is complete, so a generator of inputs is read at
    most one run ahead: the batches of :func:`predict_images` and of other passes over
    many images (a count network's calibration in training).

    Examples
    --------
    >>> runs = same_shape_runs([torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 3)], 4)
    >>> [len(run) for run in runs]
    [2, 1]
    """
    group: list[torch.Tensor] = []
    for x in inputs:
        if group and x.shape != group[0].shape:
            yield group
            group = []
        group.append(x)
        if len(group) == most:
            yield group
            group = []
    if group:
        yield group


def _empty_prediction(spatial: Sequence[int], kind: str) -> Prediction:
    """The prediction of an image with no voxels."""
    empty = np.zeros(tuple(spatial), dtype=np.float32)
    return Prediction(map=empty, count=0.0 if kind in ("heatmap", "count") else None)


def _prediction(
    maps: np.ndarray,
    kind: str,
    count_pmf: np.ndarray | None,
    sampled: bool,
    pooled_counts: np.ndarray | None = None,
) -> Prediction:
    """The Prediction of the network maps ``(S, *spatial)`` (in user units per voxel,
    counts as densities); ``sampled``: the S maps are MC-dropout samples, else S is 1.
    ``pooled_counts`` ``(S,)``: the network's own counts, where the map does not sum to
    them (global max pooling)."""
    spatial = maps.shape[1:]
    counts = None
    if pooled_counts is not None:
        counts = np.asarray(pooled_counts, dtype=np.float64)
    elif kind in ("count", "heatmap"):
        counts = maps.reshape(len(maps), -1).sum(axis=1, dtype=np.float64)
    if kind == "count":
        maps = maps * math.prod(spatial)
    count = None if counts is None else float(counts.mean())
    if not sampled:
        return Prediction(map=maps[0], count=count, count_pmf=count_pmf)
    return Prediction(
        map=maps.mean(axis=0),
        count=count,
        samples=maps,
        std=maps.std(axis=0),
        sample_counts=counts,
        count_pmf=count_pmf,
    )


def predicted_count_distribution(
    prediction: Prediction, max_count: int | None = None, threshold: float = 0.1
) -> CountDistribution:
    """Count distribution of a segmentation prediction, whichever way the network counts.

    Parameters
    ----------
    prediction : Prediction
        A ``"segmentation"`` prediction of :func:`predict_image`.
    max_count : int or None
        Bins ``0 .. max_count``, the last one "``max_count`` or more", for the
        Poisson-binomial count (a count head has its own bins).
    threshold : float
        Probability above which voxels form the candidate regions of the
        Poisson-binomial count (a run's ``count_threshold``).

    Returns
    -------
    weaklesion.counting.CountDistribution
        :func:`~weaklesion.counting.count_statistics` of the count head's pmf
        (``prediction.count_pmf``) if the network has one, else the Poisson-binomial
        distribution of the map's candidate regions
        (:func:`~weaklesion.counting.count_distribution`).

    Examples
    --------
    >>> probabilities = np.zeros((5, 5), np.float32)
    >>> probabilities[1, 1] = 0.5
    >>> predicted_count_distribution(Prediction(map=probabilities)).pmf
    array([0.5, 0.5])
    >>> head = Prediction(map=probabilities, count_pmf=np.array([0.1, 0.9]))
    >>> predicted_count_distribution(head).mode
    1
    """

    if prediction.count_pmf is not None:
        return count_statistics(prediction.count_pmf)
    return count_distribution(prediction.map, threshold, max_count=max_count)


def _input_cases(inputs, spacing: Sequence[float] | None, split: str | None = None) -> list:
    """Cases to predict: every case of a dataset folder or ``.json`` datalist (of its
    ``split`` when given), or image files.

    Files named ``CASE_0000``, ``CASE_0001``, ... are the channels of one case ``CASE``;
    any other file is a case of its own, named after the file.
    """

    if isinstance(inputs, str | os.PathLike) and (
        not Path(inputs).is_file() or Path(inputs).suffix.lower() == ".json"
    ):
        dataset = load_dataset(inputs)
        return list(dataset) if split is None else dataset.split_cases(split)
    if split is not None:
        raise ValueError(f"split: {split!r} needs a dataset folder or datalist, not image files")
    paths = [Path(inputs)] if isinstance(inputs, str | os.PathLike) else [Path(p) for p in inputs]
    groups: dict[str, dict[int, Path]] = {}
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path}: no such image file")
        stem = path.name[: -len(image_suffix(path))]
        match = CHANNEL_NAME.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if channel in groups.setdefault(case, {}):
            raise ValueError(f"{path}: case {case!r} has channel {channel} twice")
        groups[case][channel] = path
    spacing = None if spacing is None else tuple(spacing)
    return [
        Case(id=case, channels=tuple(files[c] for c in sorted(files)), spacing=spacing)
        for case, files in groups.items()
    ]


def _check_attention(
    attention: str | None,
    reference: str | None,
    kind: str,
    patch_size: Sequence[int] | None,
    mc_samples: int,
    smooth: float = 0.0,
) -> None:
    """Refuse an attention method, reference or smoothing that :func:`predict_cases` cannot give."""
    if reference not in REFERENCES or (reference and attention is None):
        raise ValueError(
            f"attention_reference: got {reference!r} with attention {attention!r}; "
            "expected None, or 'empty' with an attention method"
        )
    try:
        check_smooth(smooth)
    except ValueError:
        raise ValueError(
            f"attention_smooth: got {smooth!r}; expected a standard deviation >= 0 in voxels"
        ) from None
    if smooth and attention is None:
        raise ValueError(
            f"attention_smooth: got {smooth!r} without an attention method; "
            "expected 0, or an attention method with it"
        )
    if attention is None:
        return
    if attention not in METHODS:
        raise ValueError(f"attention: got {attention!r}; expected one of {', '.join(METHODS)}")
    if kind != "count" or patch_size is not None or mc_samples:
        raise ValueError(
            f"attention: {attention!r} maps are made by count networks on whole images; "
            f"got a {kind!r} run, patch_size {patch_size}, mc_samples {mc_samples}"
        )


def predict_cases(
    run_dir: str | os.PathLike,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    which: str = "best",
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    mc_samples: int = 0,
    device: str = "auto",
    progress: bool = True,
    attention: str | None = None,
    split: str | None = None,
    overwrite: bool = False,
    attention_reference: str | None = None,
    attention_smooth: float = 0.0,
) -> list[Path]:
    """Predict the map of every input case with a trained run and write them to a folder.

    Parameters
    ----------
    run_dir : path
        A run folder written by :func:`weaklesion.training.train`.
    inputs : path or sequence of paths
        A dataset folder or datalist (every case is predicted), or image files; files
        named ``CASE_0000``, ``CASE_0001``, ... are the channels of case ``CASE``.
    out_dir : path
        Folder to write, missing or empty unless ``overwrite``. It appears complete or
        not at all: the maps are written to a hidden sibling, moved into place once
        every case is done (see :func:`weaklesion.writing.output_folder`).
    which : {"best", "last"} or path
        Checkpoint of the run to use.
    patch_size : sequence of ints or None
        Sliding-window size; None predicts whole images (see :func:`predict_image`).
    overlap : float
        Overlap of neighbouring windows.
    mc_samples : int
        MC-dropout samples; 0 for none.
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` uses CUDA when available.
    progress : bool
        Show a progress bar over the cases.
    attention : {"cam", "gradcam", "grad", "guided", "intensity"} or None
        For a count run, write this attention map of
        :func:`weaklesion.attention.attention_maps` (whole images, negative values set
        to 0) as ``CASE_<attention>`` instead of the signed CAM ``CASE_count``.
    attention_reference : {None, "empty"}
        With ``attention``: ``"empty"`` subtracts the map of each case's empty image
        (the ``reference`` of :func:`~weaklesion.attention.attention_maps`).
    attention_smooth : float
        With ``attention``: standard deviation (voxels) of a Gaussian applied to the
        map (the ``smooth`` of :func:`~weaklesion.attention.attention_maps`); 0 for none.
    split : str, optional
        Predict only the cases of this split of the dataset (e.g. ``"test"``).
    overwrite : bool
        Replace a folder ``out_dir`` that holds files, as a whole.

    Returns
    -------
    list of Path
        The written files, in case order: ``CASE_<kind>.nii.gz`` (``.npy`` for ``.npy``
        input) holding the map in user units with the input's affine, ``CASE_<kind>_std``
        beside it with MC dropout, and finally ``predictions.json`` with the kind, the
        attention method, the run, and each case's predicted count where the kind has
        one: for a heatmap run, the mean of the Poisson-binomial distribution of its
        fitted lesions (:func:`~weaklesion.scoring.lesion_count_distribution` of
        :func:`~weaklesion.scoring.find_lesions` with the run's fit sigma) as
        ``"count"``, that distribution as ``"count_distribution"``, and the summed map as
        ``"map_sum"`` (for a presence classifier, ``count_objective="classification"``, no count
        but the ``"presence_probability"``, the sigmoid of its output); for a
        ``masks+counts`` run, each case's ``"count_distribution"`` (pmf over
        ``0 .. max_count``, mean, mode, variance, entropy, credible interval) from
        :func:`predicted_count_distribution`.

    Raises
    ------
    ValueError
        If ``out_dir`` holds files and ``overwrite`` is False, a case id is not a plain
        name, or an input cannot be read or has a different number of channels or
        spatial dimensions than the model was trained on.
    """

    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)
    model, config, info = load_run(run_dir, which, device_for(device))
    kind = config.target
    _check_attention(attention, attention_reference, kind, patch_size, mc_samples, attention_smooth)
    cases = _input_cases(inputs, info.get("spacing"), split)
    for case in cases:
        problem = case_id_problem(case.id)
        if problem is not None:
            raise ValueError(f"{case.channels[0]}: case {problem}")
    settings = settings_for_config(config)
    names, summary = [], {}
    if progress:
        cases = track(cases, description="Predicting")
    with output_folder(out_dir, overwrite) as staging:
        for case in cases:
            arrays = case.load()
            image = arrays.image
            if image.shape[0] != info["in_channels"] or image.ndim - 1 != config.spatial_dims:
                raise ValueError(
                    f"{case.channels[0]}: has {image.shape[0]} channel(s) of "
                    f"{image.ndim - 1}D images; expected {info['in_channels']} channel(s) of "
                    f"{config.spatial_dims}D images as the model was trained on"
                )
            normalised = zscore(image)
            prediction = predict_image(
                model,
                normalised,
                kind,
                patch_size=patch_size,
                overlap=overlap,
                mc_samples=mc_samples,
                scale=info["heatmap_scale"],
            )
            suffix = ".npy" if image_suffix(case.channels[0]) == ".npy" else ".nii.gz"
            maps = {kind: prediction.map}
            if attention is not None:
                batch = torch.as_tensor(normalised)[None]
                found = attention_maps(
                    model, batch, attention, attention_reference, attention_smooth
                )
                maps = {attention: found[0].cpu().numpy()}
            if prediction.std is not None:
                maps[f"{kind}_std"] = prediction.std
            for name, array in maps.items():
                names.append(f"{case.id}_{name}{suffix}")
                write_image(staging / names[-1], array.astype(np.float32), arrays.affine)
            summary[case.id] = {"count": prediction.count}
            if kind == "heatmap":
                lesions = find_lesions(
                    prediction.map, settings, affine_spacing(arrays.affine), threshold=0.0
                )
                distribution = lesion_count_distribution(lesions)
                summary[case.id] = {
                    "count": distribution.mean,
                    "map_sum": prediction.count,
                    "count_distribution": distribution.to_dict(),
                }
            if config.count_objective == "classification":
                logit = torch.tensor(prediction.count, dtype=torch.float64)
                summary[case.id] = {"count": None, "presence_probability": logit.sigmoid().item()}
            if prediction.sample_counts is not None:
                summary[case.id]["sample_counts"] = prediction.sample_counts.tolist()
            if config.labels == "masks+counts":
                summary[case.id]["count_distribution"] = predicted_count_distribution(
                    prediction, config.max_count, config.count_threshold
                ).to_dict()
        record = {"kind": kind, "attention": attention, "run": str(run_dir)}
        if attention_reference is not None:
            record["attention_reference"] = attention_reference
        if attention_smooth:
            record["attention_smooth"] = attention_smooth
        if kind == "heatmap":
            record["counts"] = {
                "count": "mean of the Poisson-binomial distribution of the fitted lesions' "
                "existence probabilities",
                "map_sum": "sum of the heatmap",
            }
        write_json(staging / "predictions.json", {**record, "cases": summary})
    return [out_dir / name for name in [*names, "predictions.json"]]
