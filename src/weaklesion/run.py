"""A run folder: its configuration, its weights and its operating point.

:func:`weaklesion.training.train` writes a run folder: ``config.toml``, ``last.pt``
(after every epoch), ``best.pt`` (the epoch with the best validation metric),
``history.jsonl`` and ``metrics.json``; ``weaklesion tune`` adds
``operating_point.json``. This module reads a run for the tools that use one
(prediction, tuning, detection, evaluation) without the training code: a checkpoint
(safely, ``weights_only=True``), the network it holds, and the operating point tuned
for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weaklesion.config import TrainConfig, config_from_dict
from weaklesion.models import build_model
from weaklesion.models.heads import attach_count_head

CHECKPOINT_FORMAT = 1
OPERATING_POINT_FILE = "operating_point.json"


def device_for(name: str) -> torch.device:
    """The device of this process: ``"auto"`` is CUDA when available; GPU ``LOCAL_RANK``
    (set by ``torchrun``, else 0)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: got 'cuda' but CUDA is not available; expected cpu or auto")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``), tensors mapped to ``device``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as error:  # torch reports a damaged file in many ways
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if path.stat().st_size == 0:
            reason = "the file is empty"
        raise ValueError(
            f"{path}: cannot be read as a checkpoint ({reason}); expected a file written "
            "by weaklesion train, intact"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a weaklesion checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def build_model_for(config: TrainConfig, in_channels: int) -> nn.Module:
    """The network ``config`` describes, for ``in_channels`` input channels and one output.

    ``config.spatial_dims`` must be set (the loop sets it from the data). With a
    ``config.count_head`` other than ``"poisson_binomial"`` the network carries that
    count classifier and returns ``(logits, count_logits)``
    (:func:`weaklesion.models.heads.attach_count_head`).
    """
    if config.spatial_dims is None:
        raise ValueError("spatial_dims: got None; expected 2 or 3 (set it or infer it from data)")
    network = build_model(
        config.model, config.spatial_dims, in_channels, 1, **dict(config.model_kwargs)
    )
    return attach_count_head(
        network,
        config.count_head,
        config.max_count,
        standardize=config.count_head_standardize,
        centre=config.count_gradient == "centred",
    )


def place_network(network: nn.Module, device: torch.device, spatial_dims: int | None) -> nn.Module:
    """``network`` on ``device``; on a CPU, a 3D network's weights also go channels-last.

    For images of one channel (one MRI sequence) PyTorch's CPU convolution takes a slow
    path with contiguous weights: with channels-last weights (``torch.channels_last_3d``)
    a training step of the demo's 3D U-Net on one-channel images (batch 2 of 32x64x64)
    was 1.6 times as fast and a prediction 1.3 to 1.9 times; with two channels both layouts
    ran at the same speed (``benchmarks/bench_layout.py``, results in
    ``benchmarks/results/layout.json``). The outputs are the same up to the rounding of
    a different summation order. 2D networks and other devices are left as they are: in
    2D the gain depended on the image and batch size (1.2-1.5 on 128x128 images, none
    for a GP-Unet on a batch of 16 MNIST grids of 140x196).

    Parameters
    ----------
    network : nn.Module
        Moved in place, and returned.
    device : torch.device
        Where it goes.
    spatial_dims : int or None
        2 or 3 (None: leave the layout alone).
    """
    network = network.to(device)
    if device.type == "cpu" and spatial_dims == 3:
        network = network.to(memory_format=torch.channels_last_3d)
    return network


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file, hex: what an operating point records it was tuned for."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_operating_point(
    run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None
) -> dict[str, Any] | None:
    """The operating point stored in a run folder, if it was tuned for ``checkpoint``.

    Parameters
    ----------
    run_dir : path
        Run folder.
    checkpoint : path, optional
        The checkpoint in use; default ``RUN/best.pt``.

    Returns
    -------
    dict or None
        The record :func:`tune_operating_point` wrote; None when there is none, when it
        was tuned for a checkpoint of another name (``best.pt`` when ``checkpoint`` is
        ``last.pt``), or (with a warning) when the checkpoint of that name has changed
        since, e.g. because further training found a better epoch.
    """
    run_dir = Path(run_dir)
    path = run_dir / OPERATING_POINT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        tuned_for = record["run"]["sha256"]
        record["parameter"], float(record["value"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: not an operating point written by `weaklesion tune`") from None
    checkpoint = run_dir / "best.pt" if checkpoint is None else Path(checkpoint)
    if record["run"].get("checkpoint") != checkpoint.name:
        return None  # tuned for another checkpoint of the run, e.g. best.pt, not last.pt
    if not checkpoint.is_file() or checkpoint_sha256(checkpoint) != tuned_for:
        warnings.warn(
            f"{path}: tuned for another {checkpoint.name} than the one now in {run_dir}; "
            "ignored (run `weaklesion tune` again)",
            stacklevel=2,
        )
        return None
    return record


def load_run(
    run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Load a trained model from a run folder, ready for prediction.

    Parameters
    ----------
    run_dir : path
        A folder written by :func:`weaklesion.training.train`.
    which : {"best", "last"} or path
        ``best.pt`` (the best validation epoch), ``last.pt``, or a checkpoint file.
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    model : nn.Module
        In eval mode, on ``device``.
    config : TrainConfig
        The run's configuration (``spatial_dims`` filled in).
    info : dict
        Run information: ``"in_channels"``, ``"heatmap_scale"`` (predictions of a
        heatmap model are divided by it to get mass-1 maps), ``"threshold"`` (the
        detection threshold tuned on validation data, if any: by ``weaklesion tune``
        when ``RUN/operating_point.json`` was tuned for this checkpoint, else by the
        training loop), ``"operating_point"`` (that file's record, when it applies),
        ``"metric"``, ``"epoch"``, ``"channels"``, ``"spacing"``, ``"kind"``.
    """
    run_dir = Path(run_dir)
    path = run_dir / f"{which}.pt" if which in ("best", "last") else Path(which)
    state = load_checkpoint(path, device)
    config = config_from_dict(state["config"])
    info = dict(state["info"], epoch=state["epoch"])
    tuned = read_operating_point(run_dir, path)
    if tuned is not None:
        info["operating_point"] = tuned
        if tuned["parameter"] == "threshold":
            info["threshold"] = float(tuned["value"])
    model = build_model_for(config, int(info["in_channels"]))
    load_state(model, state["model"], str(path))
    return place_network(model, torch.device(device), config.spatial_dims).eval(), config, info


def load_state(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(weights)``, with a one-line error naming ``source`` (a
    checkpoint, or the setting that named it) when the weights are another network's."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1].strip()
        raise ValueError(
            f"{source}: holds the weights of another network ({reason}); expected the "
            "same model and model_kwargs"
        ) from None
