"""Checkpoints: atomic saves that load with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so loading
one never runs code from the file. It holds the model and optimizer states, the epoch,
the configuration (as a dict), the training history and the run information that
inference needs (``heatmap_scale``, tuned thresholds, channels, spacing).

A run folder holds ``config.toml``, ``last.pt`` (written after every epoch),
``best.pt`` (the epoch with the best validation metric), ``history.jsonl`` and
``metrics.json``. Reading a run (a checkpoint, its network, its operating point) is
:mod:`weaklesion.run`'s, whose names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weaklesion.config import TrainConfig
from weaklesion.io import atomic_write
from weaklesion.run import (
    CHECKPOINT_FORMAT,
    build_model_for,
    load_checkpoint,
    load_run,
    load_state,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "build_model_for",
    "load_checkpoint",
    "load_run",
    "load_weights",
    "run_state",
    "save_checkpoint",
]


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
    load_state(model, load_checkpoint(path)["model"], f"init_from: {path}")
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
