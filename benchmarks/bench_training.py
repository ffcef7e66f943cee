"""Speed of a training step and of prediction on CPU, in voxels per second.

The network is the demo's (``src/weaklesion/configs/demo.toml`` when present, else the
default :class:`~weaklesion.training.TrainConfig`: the 5-level U-Net), and the baseline
is MONAI's ``BasicUNet`` with the same widths, instance normalisation, leaky ReLU and
dropout, the network the design notes were measured with.

1. Training step: whole images of 32 x 64 x 64, 2 channels, batch 2; the heatmap
   objective (foreground-weighted MSE) forward and backward, and one Adam step.
2. Whole-image prediction of one 32 x 64 x 64 image (``predict_image``).
3. Sliding-window prediction of a 64 x 128 x 128 volume in 32 x 64 x 64 windows with
   overlap 0.25 and Gaussian blending, beside whole-image prediction of the same volume.

Everything runs on one thread (``torch.set_num_threads(1)``); times are medians of a few
repeats after one warm-up call; ``ratio`` = baseline time / ours (above 1: ours is
faster). The machine is shared, so the load average at the end is recorded too.

Run: ``.venv/bin/python -m benchmarks.bench_training``; writes
``benchmarks/results/training.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import BasicUNet

from benchmarks.timing import median_time
from weaklesion.inference import predict_image
from weaklesion.io import atomic_write
from weaklesion.models import model_summary
from weaklesion.training import TrainConfig, load_config, objective_for
from weaklesion.training.checkpoint import build_model_for

RESULTS = Path(__file__).parent / "results" / "training.json"
DEMO_CONFIG = Path(__file__).parents[1] / "src" / "weaklesion" / "configs" / "demo.toml"
SHAPE = (32, 64, 64)
LARGE_SHAPE = (64, 128, 128)
WINDOW = (32, 64, 64)
CHANNELS = 2
BATCH = 2
REPEATS = 3


def demo_config() -> TrainConfig:
    config = load_config(DEMO_CONFIG) if DEMO_CONFIG.is_file() else TrainConfig()
    return dataclasses.replace(config, spatial_dims=3)


def baseline_network(config: TrainConfig) -> torch.nn.Module:
    """MONAI's BasicUNet with the widths and dropout of the configured U-Net."""
    features = list(config.model_kwargs.get("features", (16, 32, 64, 128, 256)))
    if len(features) != 5:
        raise ValueError(f"features: BasicUNet has 5 levels; the demo's U-Net has {features}")
    return BasicUNet(
        spatial_dims=3,
        in_channels=CHANNELS,
        out_channels=1,
        features=(*features, features[0]),
        act=("LeakyReLU", {"negative_slope": 0.01, "inplace": True}),
        norm=("instance", {"affine": True}),
        dropout=config.model_kwargs.get("dropout", 0.1),
    )


def training_step_time(network: torch.nn.Module, config: TrainConfig) -> float:
    """Median seconds of one optimisation step on a batch of whole images."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(BATCH, CHANNELS, *SHAPE, generator=generator)
    target = torch.zeros(BATCH, 1, *SHAPE)
    target[:, :, 10:13, 20:23, 30:33] = 1.0
    batch = {"image": image, "target": target}
    objective = objective_for(config)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    network.train()

    def step() -> None:
        loss, _ = objective(network, batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return median_time(step, REPEATS)


def prediction_time(network: torch.nn.Module, shape, window=None) -> float:
    image = np.random.default_rng(0).normal(size=(CHANNELS, *shape)).astype(np.float32)
    return median_time(
        lambda: predict_image(network, image, "heatmap", window, overlap=0.25), REPEATS
    )


def entry(name: str, voxels: int, ours_s: float, baseline_s: float) -> dict:
    return {
        "name": name,
        "voxels": voxels,
        "ours_s": ours_s,
        "baseline_s": baseline_s,
        "ours_voxels_per_s": voxels / ours_s,
        "baseline_voxels_per_s": voxels / baseline_s,
        "ratio": baseline_s / ours_s,
    }


def main() -> None:
    torch.set_num_threads(1)
    config = demo_config()
    torch.manual_seed(0)
    ours = build_model_for(config, CHANNELS)
    baseline = baseline_network(config)
    small, large = int(np.prod(SHAPE)), int(np.prod(LARGE_SHAPE))
    cases = [
        entry(
            f"training step, batch {BATCH} x {CHANNELS} x {SHAPE}",
            BATCH * small,
            training_step_time(ours, config),
            training_step_time(baseline, config),
        ),
        entry(
            f"whole-image prediction, {CHANNELS} x {SHAPE}",
            small,
            prediction_time(ours, SHAPE),
            prediction_time(baseline, SHAPE),
        ),
        entry(
            f"sliding-window prediction, {CHANNELS} x {LARGE_SHAPE}, windows {WINDOW}",
            large,
            prediction_time(ours, LARGE_SHAPE, WINDOW),
            prediction_time(baseline, LARGE_SHAPE, WINDOW),
        ),
        entry(
            f"whole-image prediction, {CHANNELS} x {LARGE_SHAPE}",
            large,
            prediction_time(ours, LARGE_SHAPE),
            prediction_time(baseline, LARGE_SHAPE),
        ),
    ]
    result = {
        "benchmark": "training step and prediction, voxels per second on CPU",
        "model": {"name": config.model, "kwargs": config.model_kwargs, **model_summary(ours)},
        "baseline": {"name": "monai.networks.nets.BasicUNet", **model_summary(baseline)},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "cases": cases,
    }
    with atomic_write(RESULTS, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    for case in cases:
        print(
            f"{case['name']}: ours {case['ours_voxels_per_s']:.3g} voxels/s, baseline "
            f"{case['baseline_voxels_per_s']:.3g} voxels/s, ratio {case['ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
