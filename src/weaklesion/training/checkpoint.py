"""Checkpoints: atomic saves that load with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so loading
one never runs code from the file. It holds the model and optimizer states, the epoch,
the configuration (as a dict), the training history and the run information that
inference needs (``heatmap_scale``, tuned thresholds, channels, spacing).

A run folder holds ``config.toml``, ``last.pt`` (written after every epoch),
``best.pt`` (the epoch with the best validation metric), ``history.jsonl`` and
``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weaklesion.io import atomic_write
from weaklesion.training.config import TrainConfig, config_from_dict

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it onto ``path``.

    A crash or an exception during the save leaves the previous file at ``path`` as it
    was and no temporary file behind.

    Parameters
    ----------
    path : path
        Checkpoint file to (re)write.
    state : dict
        Tensors, numbers, strings, lists and dicts only.

    Returns
    -------
    path : Path
    """
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)
    return Path(path)


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
    from weaklesion.models import build_model
    from weaklesion.models.heads import attach_count_head

    if config.spatial_dims is None:
        raise ValueError("spatial_dims: got None; expected 2 or 3 (set it or infer it from data)")
    network = build_model(
        config.model, config.spatial_dims, in_channels, 1, **dict(config.model_kwargs)
    )
    return attach_count_head(network, config.count_head, config.max_count)


def load_weights(model: nn.Module, source: str | os.PathLike) -> Path:
    """Copy the network weights of a run folder's ``best.pt``, or a checkpoint file, into ``model``.

    Parameters
    ----------
    model : nn.Module
        A network of the same architecture as the one saved; changed in place.
    source : path
        A run folder written by :func:`weaklesion.training.train`, or a checkpoint file.

    Returns
    -------
    path : Path
        The checkpoint read.

    Raises
    ------
    ValueError
        If there is no such checkpoint, or it holds the weights of another network.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "best.pt"
    _load_state(model, load_checkpoint(path)["model"], f"init_from: {path}")
    return path


def run_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    config: TrainConfig,
    info: dict[str, Any],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """The dict a checkpoint stores after ``epoch`` epochs (1-based count of finished ones)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "config": dataclasses.asdict(config),
        "info": dict(info),
        "history": list(history),
    }


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
    from weaklesion.tuning import read_operating_point

    tuned = read_operating_point(run_dir, path)
    if tuned is not None:
        info["operating_point"] = tuned
        if tuned["parameter"] == "threshold":
            info["threshold"] = float(tuned["value"])
    model = build_model_for(config, int(info["in_channels"]))
    _load_state(model, state["model"], str(path))
    return model.to(device).eval(), config, info


def _load_state(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(weights)``, with a one-line error naming ``source``."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1].strip()
        raise ValueError(
            f"{source}: holds the weights of another network ({reason}); expected the "
            "same model and model_kwargs"
        ) from None
