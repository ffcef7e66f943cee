"""CPU cost of the attention maps of ``weaklesion.attention``, batched against a loop.

For each count network (GP-Unet and its baselines, 8 filters, 3D) and each method, on a
batch of shape (4, 1, 24, 48, 48) with 2 torch threads:

- ours: :func:`weaklesion.attention.attention_maps` on the whole batch;
- baseline: the same maps one image at a time (a loop of batch-of-1 calls), which is how
  a per-sample implementation computes gradient maps.

Both give the same maps (checked before timing). ``speedup`` is the baseline's time over
ours, best of the rounds, and the median of the per-round ratios (the two run back to
back in each round, under similar load from other processes on the shared cores).
``cost_vs_cam`` is a method's batched time over that of the CAM (one forward pass).

Run: ``.venv/bin/python -m benchmarks.bench_attention``; writes
``benchmarks/results/attention.json``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from weaklesion.attention import METHODS, attention_maps
from weaklesion.io import atomic_write
from weaklesion.models import build_model, model_summary

RESULTS = Path(__file__).parent / "results" / "attention.json"
SHAPE = (4, 1, 24, 48, 48)
NETWORKS = ("gpunet", "gpunet_noresidual", "gpunet_base", "gated_attention")
FILTERS = 8
THREADS = 2
ROUNDS = 3  # timed rounds, after one warm-up round


def one_at_a_time(model: torch.nn.Module, x: torch.Tensor, method: str) -> torch.Tensor:
    return torch.cat([attention_maps(model, x[i : i + 1], method) for i in range(len(x))])


def seconds(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    x = torch.randn(SHAPE)
    models = {name: build_model(name, 3, filters=FILTERS).eval() for name in NETWORKS}
    for model in models.values():
        for method in METHODS:
            torch.testing.assert_close(
                attention_maps(model, x, method), one_at_a_time(model, x, method)
            )

    load_before = os.getloadavg()[0]
    times = {(n, m): {"ours": [], "baseline": []} for n in NETWORKS for m in METHODS}
    for round_ in range(ROUNDS + 1):
        for name, model in models.items():
            for method in METHODS:
                ours = seconds(attention_maps, model, x, method)
                baseline = seconds(one_at_a_time, model, x, method)
                if round_:
                    times[name, method]["ours"].append(ours)
                    times[name, method]["baseline"].append(baseline)
    load_after = os.getloadavg()[0]

    benchmarks = []
    for name, model in models.items():
        cam = min(times[name, "cam"]["ours"])
        for method in METHODS:
            ours, baseline = times[name, method]["ours"], times[name, method]["baseline"]
            paired = [b / o for o, b in zip(ours, baseline, strict=True)]
            benchmarks.append(
                {
                    "network": name,
                    "parameters": model_summary(model)["parameters"],
                    "method": method,
                    "batched_s": min(ours),
                    "one_at_a_time_s": min(baseline),
                    "speedup": min(baseline) / min(ours),
                    "speedup_median_paired": statistics.median(paired),
                    "cost_vs_cam": min(ours) / cam,
                }
            )

    results = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs shared with other processes",
        "batch_shape": list(SHAPE),
        "filters": FILTERS,
        "threads": THREADS,
        "timing": f"wall time, best of {ROUNDS} rounds after a warm-up, batched and "
        "one-at-a-time back to back; speedup = one-at-a-time time / batched time",
        "load_average_before_after": [load_before, load_after],
        "benchmarks": benchmarks,
    }
    with atomic_write(RESULTS, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)

    print(
        f"{'network':20} {'method':10} {'batched s':>10} {'loop s':>8} {'speedup':>8} {'vs cam':>7}"
    )
    for entry in benchmarks:
        print(
            f"{entry['network']:20} {entry['method']:10} {entry['batched_s']:>10.3f} "
            f"{entry['one_at_a_time_s']:>8.3f} {entry['speedup']:>8.2f} "
            f"{entry['cost_vs_cam']:>7.2f}"
        )
    print(f"load average {load_before:.1f} -> {load_after:.1f}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
