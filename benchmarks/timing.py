"""Timing shared by the benchmarks: the median wall-clock time of a call after a warm-up."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


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
    rounds: list[dict], names: list[str], old: str, new: str
) -> dict[str, dict[str, float]]:
    """Per workload, the median times of the ``old`` and ``new`` variants and their ratio.

    ``rounds`` holds one ``{"times_s": {"NAME/VARIANT": seconds}}`` per round; the ratio
    is old / new per round (above 1: the new variant is faster), reported as its median,
    minimum and maximum over the rounds. Each workload's line is printed.
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
            f"{name}: {old} {np.median(before) * 1e3:.0f} ms, {new} "
            f"{np.median(after) * 1e3:.0f} ms, ratio {np.median(ratio):.2f}"
        )
    return summary
