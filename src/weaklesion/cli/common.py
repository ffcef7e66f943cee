"""What every verb of the command shares: bad input ends it with one line and exit status
2, long loops over cases show a progress bar, and options that hold lists of numbers are
parsed with the option named in the error."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import typer

EXIT_BAD_INPUT = 2


def refuse_bad_input(command: Callable) -> Callable:
    """Turn the errors a user can cause into one line on stderr and exit status 2; set
    torch's threads first (:mod:`weaklesion.threads`, imported here and not at the top
    so that ``--help`` does not wait for torch)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            from weaklesion.threads import apply_thread_policy

            apply_thread_policy()
            return command(*args, **kwargs)
        except (ValueError, OSError, KeyError) as error:
            message = str(error) or error.__class__.__name__
            if isinstance(error, KeyError):
                message = message.strip("'\"")
            if isinstance(error, OSError) and error.filename and error.strerror:
                message = f"{error.filename}: {error.strerror}"
            typer.echo(f"error: {message.splitlines()[0]}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt as error:
            # Temporaries are already removed; outputs hold their previous state.
            number = getattr(error, "signal_number", signal.SIGINT)
            name = signal.Signals(number).name
            typer.echo(f"interrupted ({name}); files being written were discarded", err=True)
            raise typer.Exit(128 + number) from None

    return wrapper


def over_cases(items: list, description: str) -> Iterable:
    """``items``, with a progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=description, console=Console(stderr=True))


def parse_floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--{name}: got {text!r}; expected numbers separated by commas") from None


def check_out_suffix(out: Path, suffixes: tuple[str, ...]) -> None:
    """Refuse an output file ``out`` (option ``--out``) whose suffix is not one of
    ``suffixes``, before any work is done.

    >>> check_out_suffix(Path("table.md"), (".json", ".md"))
    >>> check_out_suffix(Path("lesions.txt"), (".csv", ".json"))
    Traceback (most recent call last):
    ...
    ValueError: --out: lesions.txt has suffix '.txt'; expected .csv or .json
    """
    if out.suffix not in suffixes:
        expected = " or ".join(suffixes)
        raise ValueError(f"--out: {out} has suffix {out.suffix!r}; expected {expected}")
