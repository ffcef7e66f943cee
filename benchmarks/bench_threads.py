"""How many intra-op threads torch should use on a small shared machine.

Three workloads, each timed with torch's default thread pool (one thread per core) and
with one thread, on an idle machine and with every other core kept busy by a pure
Python loop in a child process (another user's job on a shared server):

1. ``poisson_binomial_pmf`` of a batch of 64 maps x 1,000 regions (the count
   distribution of a validation set), full pmf.
2. A training step of the demo's network (the 4-level U-Net of
   ``src/weaklesion/configs/demo.toml``) on a batch of 2 whole 32 x 64 x 64 images:
   the heatmap objective forward and backward and one Adam step.
3. A training step of a GP-Unet (8 filters) on a batch of 4 2D images of 128 x 128,
   the count objective.

Each round times every workload under both pools (medians of a few repeats after a
warm-up); the rounds are repeated because the machine is shared, and the spread of the
ratio ``default / one thread`` over rounds is recorded (above 1: one thread is faster).
The load average before each round is recorded too.

Run: ``.venv/bin/python -m benchmarks.bench_threads``; writes
``benchmarks/results/threads.json``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import median_time, paired_summary, write_result
from weaklesion.counting import poisson_binomial_pmf
from weaklesion.training import TrainConfig, load_config, objective_for
from weaklesion.training.checkpoint import build_model_for

RESULTS = Path(__file__).parent / "results" / "threads.json"
DEMO_CONFIG = Path(__file__).parents[1] / "src" / "weaklesion" / "configs" / "demo.toml"
ROUNDS = 4
REPEATS = 5


def pmf_workload() -> Callable[[], object]:
    p = torch.from_numpy(np.random.default_rng(0).uniform(0.0, 0.3, size=(64, 1000)))
    return lambda: poisson_binomial_pmf(p)


def training_step(config: TrainConfig, channels: int, batch: dict) -> Callable[[], None]:
    torch.manual_seed(0)
    network = build_model_for(config, channels)
    objective = objective_for(config)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    network.train()

    def step() -> None:
        loss, _ = objective(network, batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step.network = network  # type: ignore[attr-defined]
    return step


def unet_workload() -> Callable[[], None]:
    config = dataclasses.replace(load_config(DEMO_CONFIG), spatial_dims=3)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 2, 32, 64, 64, generator=generator)
    target = torch.zeros(2, 1, 32, 64, 64)
    target[:, :, 10:13, 20:23, 30:33] = 1.0
    return training_step(config, 2, {"image": image, "target": target})


def gpunet_workload() -> Callable[[], None]:
    config = TrainConfig(labels="counts", spatial_dims=2, model_kwargs={"filters": 8})
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(4, 1, 128, 128, generator=generator)
    return training_step(config, 1, {"image": image, "count": torch.tensor([0.0, 1, 2, 3])})


def busy_loop() -> None:
    """Keep one core busy until terminated (pure Python: holds no thread pool)."""
    while True:
        pass


def time_round(workloads: dict[str, Callable[[], object]], default_threads: int) -> dict:
    times = {}
    for name, workload in workloads.items():
        for label, threads in (("default", default_threads), ("one_thread", 1)):
            torch.set_num_threads(threads)
            times[f"{name}/{label}"] = median_time(workload, REPEATS)
    return times


def main() -> None:
    default_threads = torch.get_num_threads()
    workloads = {
        "pmf 64 x 1000": pmf_workload(),
        "training step, demo U-Net 3D": unet_workload(),
        "training step, GP-Unet 2D": gpunet_workload(),
    }
    busy_cores = max(1, (os.cpu_count() or 2) - 1)
    context = multiprocessing.get_context("spawn")
    conditions: dict[str, list[dict]] = {"idle": [], "busy": []}
    for _ in range(ROUNDS):
        for condition in conditions:
            workers = []
            if condition == "busy":
                workers = [
                    context.Process(target=busy_loop, daemon=True) for _ in range(busy_cores)
                ]
                for worker in workers:
                    worker.start()
                time.sleep(0.5)
            load = os.getloadavg()
            try:
                times = time_round(workloads, default_threads)
            finally:
                for worker in workers:
                    worker.terminate()
                    worker.join()
            conditions[condition].append({"load_average": list(load), "times_s": times})
    torch.set_num_threads(default_threads)
    result = {
        "benchmark": "torch intra-op threads: default pool against one thread, idle and busy",
        "ratio": "default time / one-thread time; above 1: one thread is faster",
        "default_threads": default_threads,
        "busy_processes": busy_cores,
        "rounds": ROUNDS,
        "summary": {
            condition: paired_summary(
                rounds, list(workloads), "default", "one_thread", f"{condition:5s} "
            )
            for condition, rounds in conditions.items()
        },
        "raw": conditions,
    }
    write_result(RESULTS, result)


if __name__ == "__main__":
    main()
