"""The ``weaklesion`` command."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Find and count lesions in 2D and 3D images from weak labels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def demo() -> None:
    """Plant lesions in synthetic maps, detect and count them, and print the scores.

    Example: weaklesion demo
    """
    from weaklesion.demo import run_demo

    run_demo()


def main() -> None:
    """Entry point of the console script."""
    app()
