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
