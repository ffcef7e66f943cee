"""Timing shared by the benchmarks: the median wall-clock time of a call after a warm-up."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weaklesion.io import write_json


def median_time(function: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of ``repeats`` calls of ``function``, after one call that is not timed."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def paired_summary(
    rounds: list[dict], names: list[str], old: str, new: str, label: str = ""
) -> dict[str, dict[str, float]]:
    """Per workload, the median times of the ``old`` and ``new`` variants and their ratio.

    ``rounds`` holds one ``{"times_s": {"NAME/VARIANT": seconds}}`` per round; the ratio
    is old / new per round (above 1: the new variant is faster), reported as its median,
    minimum and maximum over the rounds. Each workload's line is printed, after ``label``.
    """
    summary = {}
    for name in names:
        before = np.array([r["times_s"][f"{name}/{old}"] for r in rounds])
        after = np.array([r["times_s"][f"{name}/{new}"] for r in rounds])
        ratio = before / after
        summary[name] = {
            f"{old}_s_median": float(np.median(before)),
            f"{new}_s_median": float(np.median(after)),
            "ratio_median": float(np.median(ratio)),
            "ratio_min": float(ratio.min()),
            "ratio_max": float(ratio.max()),
        }
        print(
            f"{label}{name}: {old} {np.median(before) * 1e3:.1f} ms, {new} "
            f"{np.median(after) * 1e3:.1f} ms, ratio {np.median(ratio):.2f} "
            f"({ratio.min():.2f}-{ratio.max():.2f})"
        )
    return summary


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's result as JSON, with the torch version and the machine added.

    ``summary`` and ``raw``, where given, come last.

    The file is replaced whole (written beside it, then renamed), so an interrupted
    benchmark leaves the previous result as it was.
    """
    tail = ("summary", "raw")
    record = {
        **{key: value for key, value in result.items() if key not in tail},
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        **{key: result[key] for key in tail if key in result},
    }
    write_json(path, record)
