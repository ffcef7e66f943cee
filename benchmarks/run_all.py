"""Run every benchmark in turn; each writes its JSON to ``benchmarks/results/``.

Usage: ``python -m benchmarks.run_all`` (or ``make bench``). Benchmarks are not run by
CI: they take minutes and their timings need a quiet machine.
"""

from __future__ import annotations

import importlib

BENCHMARKS = (
    "bench_targets",
    "bench_counting",
    "bench_fit_gaussians",
    "bench_metrics",
    "bench_tuning",
    "bench_data",
    "bench_models",
    "bench_attention",
    "bench_training",
    "bench_batch_one",
)


def main() -> None:
    """Run each benchmark module's ``main``."""
    for name in BENCHMARKS:
        print(f"== {name}")
        importlib.import_module(f"benchmarks.{name}").main()


if __name__ == "__main__":
    main()
