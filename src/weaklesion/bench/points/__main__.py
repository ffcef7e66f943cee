"""``python -m weaklesion.bench.points``: run experiment 2 from a shell."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

import weaklesion.bench.points as points


def _main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m weaklesion.bench.points", description=points.__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny version")
    parser.add_argument("--methods", help=f"comma-separated, of {', '.join(points.METHODS)}")
    arguments = parser.parse_args()
    methods = arguments.methods.split(",") if arguments.methods else None
    points.run_points(
        arguments.out,
        quick=arguments.quick,
        seeds=arguments.seeds,
        methods=methods,
        console=Console(),
    )


if __name__ == "__main__":
    _main()
