"""Fixtures shared by the test modules."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from weaklesion.data.phantom import write_phantom_dataset


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch thread: on a small shared machine more threads only wait on each other,
    and the tensors of the tests are tiny."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Callable[..., Path]:
    """Write a phantom dataset folder (:func:`write_phantom_dataset`'s arguments less the
    folder) once per session and set of arguments; tests must not change it."""
    written: dict[str, Path] = {}

    def write(**arguments) -> Path:
        key = json.dumps(arguments, sort_keys=True)
        if key not in written:
            written[key] = write_phantom_dataset(tmp_path_factory.mktemp("phantom"), **arguments)
        return written[key]

    return write


@pytest.fixture
def seeded():
    """torch's global generator seeded with 0 (initialisation, dropout)."""
    torch.manual_seed(0)


@pytest.fixture
def interruptible() -> Callable[[], None]:
    """A ``preexec_fn`` that gives a child process the default SIGINT action.

    A test run started in the background by a non-interactive shell (``cmd &``) starts
    with SIGINT ignored, and its children inherit that; Python then raises no
    KeyboardInterrupt, so a test that interrupts a child would see it run on.
    """
    return lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
