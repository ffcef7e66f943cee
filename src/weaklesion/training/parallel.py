"""The process group of a multi-process (DDP) training: who this process is, joining
and leaving the group, wrapping the model, and sums over processes.

Outside ``torchrun`` every function is a no-op for one process, so the training loop
(:func:`weaklesion.training.train`) is the same code in one process or many; launching
it under ``torchrun`` is :mod:`weaklesion.training.distributed`'s.
"""

from __future__ import annotations

import contextlib
import gc
import os
import traceback
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the environment ``torchrun`` sets.

    Outside ``torchrun`` this is ``(0, 1, 0)``.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return rank, world_size, local_rank


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[int, int]]:
    """Join the process group for the duration of a run when there is more than one process.

    Uses NCCL for CUDA devices and gloo otherwise. A group that is already initialised
    (by the caller) is used as it is and left open.

    Every :func:`wrap` ped model must be released (``del``) inside the block: the group
    is destroyed on leaving it, and a ``DistributedDataParallel`` wrapper that outlives
    the group would destroy it later itself, joining gloo's worker threads while holding
    the GIL; a worker thread that still needs the GIL to free a finished collective's
    tensor then waits forever (the process hangs at exit). Released first, the wrapper
    leaves the group to its Python handle, which frees it without the GIL.

    Yields
    ------
    rank, world_size : int
    """
    rank, world_size, _ = world()
    started = world_size > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield rank, world_size
    except BaseException as error:
        if started:  # the frames of a failed run hold the wrapped model
            traceback.clear_frames(error.__traceback__)
        raise
    finally:
        if started:
            gc.collect()  # wrappers kept alive only by reference cycles
            dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` in a multi-process run, else as is."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sum_over_processes(totals: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each value over processes (a no-op in one process); keys must agree."""
    if not (dist.is_available() and dist.is_initialized()) or not totals:
        return totals
    keys = sorted(totals)
    values = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, values.tolist(), strict=True))
