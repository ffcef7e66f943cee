"""Distributed training: two processes under torchrun (gloo, CPU) keep identical replicas."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from weaklesion.training.checkpoint import load_checkpoint
from weaklesion.training.distributed import main, torchrun_command, world

# Each process trains, then reports a hash of its parameters, its rank, whether it ran
# inside a process group, and how many DDP wrappers were alive when the group was
# destroyed (one left for later would destroy the group while holding the GIL, which
# can deadlock with gloo's worker threads: an intermittent hang at exit).
WORKER = textwrap.dedent(
    """
    import gc, hashlib, json, os, sys
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from weaklesion.training import load_config, train

    data, run_dir, report_dir = sys.argv[1:4]
    group = {}
    destroy = dist.destroy_process_group

    def destroy_and_count(*args, **kwargs):
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
        group["wrappers_at_destroy"] = len(alive)
        destroy(*args, **kwargs)

    dist.destroy_process_group = destroy_and_count

    def on_epoch_end(epoch, record):
        group["initialised"] = dist.is_initialized()
        group["world_size"] = dist.get_world_size() if dist.is_initialized() else 1

    result = train(load_config(None, sys.argv[4:]), data, run_dir, progress=False,
                   on_epoch_end=on_epoch_end)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    rank = int(os.environ["RANK"])
    with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"rank": rank, "hash": digest.hexdigest(), **group}, handle)
    """
)

OVERRIDES = [
    "labels=masks",
    "epochs=2",
    "batch_size=1",
    "num_threads=1",
    "device=cpu",
    "model_kwargs.features=[4, 8]",
]


@pytest.fixture(scope="module")
def phantom(phantom_dataset):
    return phantom_dataset(n_cases=6, seed=5, shape=(16, 24, 24), splits=(4, 2, 0))


def parameter_hash(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_two_processes_keep_identical_replicas(phantom, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    reports = tmp_path / "reports"
    reports.mkdir()
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        str(phantom),
        str(run_dir),
        str(reports),
        *OVERRIDES,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["initialised"] and r["world_size"] == 2 for r in ranks)
    assert [r["wrappers_at_destroy"] for r in ranks] == [0, 0]
    assert ranks[0]["hash"] == ranks[1]["hash"]  # the replicas are identical
    # Only rank 0 wrote the run, and its checkpoint holds those same weights.
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 2 and parameter_hash(last["model"]) == ranks[0]["hash"]
    assert [json.loads(line)["epoch"] for line in open(run_dir / "history.jsonl")] == [1, 2]
    assert not any(name.startswith(".") for name in os.listdir(run_dir))


@pytest.mark.slow
def test_entry_point_trains_in_one_process(phantom, tmp_path):
    assert world() == (0, 1, 0)
    assert main(["-", str(phantom), str(tmp_path), "--no-progress", *_as_set(OVERRIDES)]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert (tmp_path / "config.toml").read_text().count('labels = "masks"') == 1


def test_torchrun_command_runs_the_entry_point():
    command = torchrun_command(
        "c.toml", "data", "run", nproc=4, overrides=["epochs=1"], resume=True
    )
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[command.index("--nproc_per_node") + 1] == "4"
    tail = command[command.index("weaklesion.training.distributed") + 1 :]
    assert tail == ["c.toml", "data", "run", "--set", "epochs=1", "--resume"]


def _as_set(overrides):
    return [item for override in overrides for item in ("--set", override)]
