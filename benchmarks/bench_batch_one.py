"""3D convolutions on one image: PyTorch's own against running it as two copies.

For a batch of one image whose channels x depth x height is at most 20480, PyTorch 2.13
on a CPU skips oneDNN and takes a native convolution kernel; :class:`weaklesion.models.
unet.Conv3d`, the 3D convolution of the package's networks, then convolves two copies
of the image (a view, not a copy) through oneDNN and keeps the first output. Timed
here with the package's layer and with ``nn.Conv3d`` (the old behaviour) in the same
network, weights channels-last as :func:`weaklesion.run.place_network` puts them:

1. a training step of the demo's 3D U-Net on one 2-channel 32 x 64 x 64 image (a batch
   of one, as fine-tuning on one masked case or a last odd batch makes it): heatmap
   objective, Adam;
2. the same U-Net predicting one volume (no gradients), as inference and validation do;
3. the demo's 3D U-Net training step on a batch of two, where nothing changes (the
   control: its ratio should be 1);
4. a 3D count GP-Unet (8 filters, batch normalisation) predicting one volume.

Medians of a few repeats after a warm-up, in several rounds, one torch thread;
``ratio`` = ``nn.Conv3d`` time / package time (above 1: the package's layer is faster).

Run: ``.venv/bin/python -m benchmarks.bench_batch_one``; writes
``benchmarks/results/batch_one.json``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.bench_threads import DEMO_CONFIG, training_step
from benchmarks.timing import median_time, paired_summary, write_result
from weaklesion.models.unet import Conv3d
from weaklesion.run import build_model_for, place_network
from weaklesion.training import TrainConfig, load_config

RESULTS = Path(__file__).parent / "results" / "batch_one.json"
ROUNDS = 3
REPEATS = 3


def _heatmap_batch(batch: int) -> dict[str, torch.Tensor]:
    image = torch.randn(batch, 2, 32, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(batch, 1, 32, 64, 64)
    target[:, :, 10:13, 20:23, 30:33] = 1.0
    return {"image": image, "target": target}


def _predictor(config: TrainConfig, channels: int) -> tuple[Callable[[], object], nn.Module]:
    network = place_network(build_model_for(config, channels), torch.device("cpu"), 3).eval()
    image = torch.randn(1, channels, 32, 64, 64, generator=torch.Generator().manual_seed(1))

    def predict() -> None:
        with torch.no_grad():
            network(image)

    return predict, network


def workloads() -> dict[str, tuple[Callable[[], object], nn.Module]]:
    """Each workload with the network whose 3D convolutions are switched."""
    demo = dataclasses.replace(load_config(DEMO_CONFIG), spatial_dims=3)
    one = training_step(demo, 2, _heatmap_batch(1))
    two = training_step(demo, 2, _heatmap_batch(2))
    predict, predictor = _predictor(demo, 2)
    counts = TrainConfig(labels="counts", spatial_dims=3, model_kwargs={"filters": 8})
    count, count_network = _predictor(counts, 2)
    return {
        "training step, demo U-Net 3D, batch of 1": (one, one.network),  # type: ignore[attr-defined]
        "prediction, demo U-Net 3D, one volume": (predict, predictor),
        "training step, demo U-Net 3D, batch of 2 (control)": (two, two.network),  # type: ignore[attr-defined]
        "prediction, count GP-Unet 3D, one volume": (count, count_network),
    }


def _use(network: nn.Module, layer: type[nn.Module]) -> None:
    for module in network.modules():
        if isinstance(module, nn.Conv3d):
            module.__class__ = layer


def main() -> None:
    torch.set_num_threads(1)
    runs = workloads()
    for _, network in runs.values():
        place_network(network, torch.device("cpu"), 3)
    rounds: list[dict[str, float]] = []
    for _ in range(ROUNDS):
        times: dict[str, float] = {}
        for name, (workload, network) in runs.items():
            for label, layer in (("torch", nn.Conv3d), ("package", Conv3d)):
                _use(network, layer)
                times[f"{name}/{label}"] = median_time(workload, REPEATS)
            _use(network, Conv3d)
        rounds.append({"load_average": list(os.getloadavg()), "times_s": times})
    summary = paired_summary(rounds, list(runs), "torch", "package")
    result = {
        "benchmark": "3D convolution of one image on CPU: nn.Conv3d against two copies",
        "ratio": "nn.Conv3d time / package time; above 1: the package's layer is faster",
        "threads": torch.get_num_threads(),
        "rounds": ROUNDS,
        "summary": summary,
        "raw": rounds,
    }
    write_result(RESULTS, result)


if __name__ == "__main__":
    main()
