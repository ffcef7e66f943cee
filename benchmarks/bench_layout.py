"""Memory layout of the network's weights on a CPU: contiguous against channels-last.

:func:`weaklesion.run.place_network` puts the weights of a 3D network channels-last
(``torch.channels_last_3d``) on a CPU, for training and prediction. Timed here, each
with contiguous weights (PyTorch's default, the old behaviour) and with channels-last
weights, inputs left contiguous as the data loader makes them:

1. a training step of the demo's 3D U-Net (``src/weaklesion/configs/demo.toml``) on a
   batch of 2 whole 32 x 64 x 64 images of one channel (one MRI sequence), and of two
   channels (the demo's phantom: FLAIR and T1): heatmap objective, Adam;
2. a forward pass of the one-channel network without gradients (prediction,
   validation);
3. a training step of the same U-Net in 2D on a batch of 8 one-channel images of
   128 x 128;
4. a training step of a GP-Unet (8 filters) on a batch of 4 2D images of 128 x 128,
   the count objective.

With one input channel and contiguous weights, PyTorch's CPU convolution takes a slower
path; with two or more channels both layouts run at the same speed, which the
two-channel row checks. Medians of a few repeats after a warm-up, in several rounds;
``ratio`` = contiguous / channels-last (above 1: channels-last is faster). Only the 3D
layout was adopted: the 2D rows say why not the 2D one. Run on a quiet machine with
torch's default threads.

Run: ``.venv/bin/python -m benchmarks.bench_layout``; writes
``benchmarks/results/layout.json``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.bench_threads import DEMO_CONFIG, gpunet_workload, training_step
from benchmarks.timing import median_time, paired_summary, write_result
from weaklesion.run import build_model_for
from weaklesion.training import TrainConfig, load_config

RESULTS = Path(__file__).parent / "results" / "layout.json"
ROUNDS = 3


def _demo_config(spatial_dims: int) -> TrainConfig:
    return dataclasses.replace(load_config(DEMO_CONFIG), spatial_dims=spatial_dims)


def _heatmap_batch(shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(shape[0], 1, *shape[2:])
    target[(slice(None), slice(None), *(slice(10, 13) for _ in shape[2:]))] = 1.0
    return {"image": image, "target": target}


def _network_of(step: Callable[[], None]) -> torch.nn.Module:
    return step.network  # type: ignore[attr-defined]


def workloads() -> dict[str, tuple[Callable[[], object], torch.nn.Module, torch.memory_format]]:
    """Each workload with the network whose layout is switched and the layout to use."""
    unet3d = training_step(_demo_config(3), 1, _heatmap_batch((2, 1, 32, 64, 64)))
    two_channels = training_step(_demo_config(3), 2, _heatmap_batch((2, 2, 32, 64, 64)))
    image = torch.randn(2, 1, 32, 64, 64, generator=torch.Generator().manual_seed(1))
    predictor = build_model_for(_demo_config(3), 1).eval()

    def predict() -> None:
        with torch.no_grad():
            predictor(image)

    unet2d = training_step(_demo_config(2), 1, _heatmap_batch((8, 1, 128, 128)))
    gpunet = gpunet_workload()
    return {
        "training step, demo U-Net 3D": (unet3d, _network_of(unet3d), torch.channels_last_3d),
        "training step, demo U-Net 3D, 2 channels": (
            two_channels,
            _network_of(two_channels),
            torch.channels_last_3d,
        ),
        "prediction, demo U-Net 3D": (predict, predictor, torch.channels_last_3d),
        "training step, demo U-Net 2D": (unet2d, _network_of(unet2d), torch.channels_last),
        "training step, GP-Unet 2D": (gpunet, _network_of(gpunet), torch.channels_last),
    }


def main() -> None:
    torch.manual_seed(0)
    runs = workloads()
    rounds: list[dict[str, float]] = []
    for _ in range(ROUNDS):
        times: dict[str, float] = {}
        for name, (workload, network, layout) in runs.items():
            for label, memory_format in (
                ("contiguous", torch.contiguous_format),
                ("channels_last", layout),
            ):
                network.to(memory_format=memory_format)
                times[f"{name}/{label}"] = median_time(workload)
            network.to(memory_format=torch.contiguous_format)
        rounds.append({"load_average": list(os.getloadavg()), "times_s": times})
    summary = paired_summary(rounds, list(runs), "contiguous", "channels_last")
    result = {
        "benchmark": "weight memory layout on CPU: contiguous against channels-last",
        "ratio": "contiguous time / channels-last time; above 1: channels-last is faster",
        "threads": torch.get_num_threads(),
        "rounds": ROUNDS,
        "summary": summary,
        "raw": rounds,
    }
    write_result(RESULTS, result)


if __name__ == "__main__":
    main()
