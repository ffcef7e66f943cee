"""Prediction of several 3D images: one image per network call against batches of them.

For a batch of one, PyTorch's CPU convolution takes its slow generic path
(``slow_conv3d``) whenever batch x channels x depth x height is at most 20,480, which for
a small volume is every layer of a U-Net. Validation during training and the demo's
test predictions therefore go through :func:`weaklesion.inference.predict_images`, which
puts two images of the same shape into each network call.

Timed here with the demo's U-Net (``src/weaklesion/configs/demo.toml``, untrained
weights, channels-last as :func:`weaklesion.run.place_network` leaves them) on 12
two-channel images, the demo's validation set: :func:`~weaklesion.inference.predict_image`
image by image (the old way) against ``predict_images`` with 2 and 4 images per call,
for volumes of 32 x 64 x 64 (the demo's phantom) and 64 x 128 x 128. ``ratio`` = one at a
time / batched (above 1: batching is faster). The largest difference between the maps of
the two ways is recorded too. Medians of a few repeats after a warm-up, with 1 and 2
threads.

Run: ``.venv/bin/python -m benchmarks.bench_prediction``; writes
``benchmarks/results/prediction.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import median_time
from weaklesion.demo import DEMO_CONFIG
from weaklesion.inference import predict_image, predict_images
from weaklesion.io import atomic_write
from weaklesion.run import build_model_for, place_network
from weaklesion.training import load_config

RESULTS = Path(__file__).parent / "results" / "prediction.json"
CASES = 12
SHAPES = ((32, 64, 64), (64, 128, 128))
BATCH_SIZES = (2, 4)
THREADS = (1, 2)


def main() -> dict:
    config = dataclasses.replace(load_config(DEMO_CONFIG), spatial_dims=3)
    torch.manual_seed(0)
    model = place_network(build_model_for(config, 2), torch.device("cpu"), 3).eval()
    rng = np.random.default_rng(0)
    rows = []
    for shape in SHAPES:
        cases = CASES if shape == SHAPES[0] else 4
        images = [rng.normal(size=(2, *shape)).astype(np.float32) for _ in range(cases)]
        alone = [predict_image(model, image, "heatmap").map for image in images]
        for threads in THREADS:
            torch.set_num_threads(threads)
            repeats = 3 if shape == SHAPES[0] else 1
            one = median_time(
                lambda images=images: [predict_image(model, x, "heatmap") for x in images],
                repeats,
            )
            for batch_size in BATCH_SIZES:
                batched = median_time(
                    lambda images=images, b=batch_size: predict_images(
                        model, images, "heatmap", batch_size=b
                    ),
                    repeats,
                )
                maps = predict_images(model, images, "heatmap", batch_size=batch_size)
                difference = max(
                    float(np.abs(p.map - a).max()) for p, a in zip(maps, alone, strict=True)
                )
                rows.append(
                    {
                        "shape": list(shape),
                        "images": cases,
                        "threads": threads,
                        "batch_size": batch_size,
                        "one_at_a_time_s": one,
                        "batched_s": batched,
                        "ratio": one / batched,
                        "largest_map_difference": difference,
                    }
                )
                print(json.dumps(rows[-1]))
    results = {
        "benchmark": "prediction of several images, one per call against batches",
        "model": "the demo's U-Net 8-16-32-64, 2 input channels, untrained, channels-last",
        "timing": "median wall-clock seconds for all the images, after a warm-up",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
        "rows": rows,
    }
    with atomic_write(RESULTS) as handle:
        handle.write(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
