"""Multi-process training with PyTorch DDP, launched by ``torchrun``.

:func:`weaklesion.training.train` is the same function in one process or many: when
``torchrun`` has set ``WORLD_SIZE`` and ``RANK``, it joins the process group (gloo on
CPU, NCCL on GPU), wraps the model in ``DistributedDataParallel`` and trains on its share
of each epoch (see :func:`weaklesion.training.data.epoch_batches`). Every process starts
from the same weights and applies the same averaged gradients, so the replicas stay
identical; only rank 0 validates and writes files.

Run from a shell::

    torchrun --nproc_per_node 2 -m weaklesion.training.distributed \\
        config.toml data/ runs/first --set epochs=20

(``-`` for CONFIG uses the defaults).

or from Python (as the command-line tool does)::

    subprocess.run(torchrun_command("config.toml", "data/", "runs/first", nproc=2), check=True)

The batch size is per process: ``nproc`` processes with ``batch_size`` B take
``nproc * B`` samples per optimiser step.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence

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


def device_for(name: str) -> torch.device:
    """The device of this process: ``"auto"`` is CUDA when available; GPU ``LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: got 'cuda' but CUDA is not available; expected cpu or auto")
        local_rank = world()[2]
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


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


def torchrun_command(
    config: str | os.PathLike,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    nproc: int = 2,
    overrides: Sequence[str] = (),
    resume: bool = False,
) -> list[str]:
    """The command line that trains with ``nproc`` processes on this machine.

    Examples
    --------
    >>> command = torchrun_command("c.toml", "data", "run", nproc=2, overrides=["epochs=3"])
    >>> command[1:]  # doctest: +NORMALIZE_WHITESPACE
    ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
     '-m', 'weaklesion.training.distributed', 'c.toml', 'data', 'run', '--set', 'epochs=3']
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(nproc), "-m", "weaklesion.training.distributed"]
    command += [str(config), str(data_root), str(run_dir)]
    for item in overrides:
        command += ["--set", item]
    if resume:
        command.append("--resume")
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m weaklesion.training.distributed`` (one per process)."""
    from weaklesion.training.config import load_config
    from weaklesion.training.loop import train
    from weaklesion.writing import raise_on_termination

    parser = argparse.ArgumentParser(
        prog="python -m weaklesion.training.distributed",
        description="Train a weaklesion model; run under torchrun for several processes.",
    )
    parser.add_argument("config", help="TOML configuration file, or - for the defaults")
    parser.add_argument("data_root", help="dataset folder")
    parser.add_argument("run_dir", help="run folder for checkpoints and logs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true", help="continue from last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    raise_on_termination()  # torchrun ends the other workers with SIGTERM when one fails
    try:
        config = load_config(None if args.config == "-" else args.config, args.set)
        train(
            config, args.data_root, args.run_dir, resume=args.resume, progress=not args.no_progress
        )
    except (ValueError, OSError) as error:
        print(f"error: {(str(error) or type(error).__name__).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        number = getattr(error, "signal_number", signal.SIGINT)
        print(f"interrupted ({signal.Signals(number).name})", file=sys.stderr)
        return 128 + number
    return 0


if __name__ == "__main__":
    sys.exit(main())
