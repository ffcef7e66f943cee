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
import os
import signal
import sys
from collections.abc import Sequence

from weaklesion.config import load_config
from weaklesion.run import device_for
from weaklesion.training.loop import train
from weaklesion.training.parallel import process_group, sum_over_processes, unwrap, world, wrap
from weaklesion.writing import raise_on_termination

__all__ = [
    "device_for",
    "main",
    "process_group",
    "sum_over_processes",
    "torchrun_command",
    "unwrap",
    "world",
    "wrap",
]


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
