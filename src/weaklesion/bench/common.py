"""What every reproduction experiment needs: resumable units, early stopping, tables.

An experiment is a list of *units* (a trained model, an evaluation of one method), each
of which writes one JSON file under the output folder when, and only when, it has
finished (:func:`run_unit`). A rerun reads the finished units instead of recomputing
them; a training that was stopped midway continues from its ``last.pt``
(:func:`train_with_early_stopping`), so an experiment interrupted at any point resumes
where it stopped. The report of an experiment is computed from the unit files alone,
so it can be rewritten whenever more units have finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from weaklesion.io import atomic_write, json_ready, write_json
from weaklesion.training import TrainConfig, train

UNITS_FOLDER = "units"
SETTINGS_FILE = "settings.json"


def unit_path(out: str | os.PathLike, *keys: str | int) -> Path:
    """The result file of the unit named by ``keys``: ``OUT/units/KEY1_KEY2_....json``.

    Examples
    --------
    >>> unit_path("bench", "digit4", "gpunet", "regression", "seed0").as_posix()
    'bench/units/digit4_gpunet_regression_seed0.json'
    """
    return Path(out) / UNITS_FOLDER / ("_".join(str(key) for key in keys) + ".json")


def read_unit(path: str | os.PathLike) -> dict[str, Any] | None:
    """The result of a finished unit, or None when it has not finished.

    Raises
    ------
    ValueError
        If the file exists but is not a JSON object (it was not written by
        :func:`run_unit`, which writes atomically).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON ({error.msg}); expected a unit result, delete it to "
            "recompute the unit"
        ) from None
    if not isinstance(result, dict):
        raise ValueError(f"{path}: holds {type(result).__name__}; expected a JSON object")
    return result


def run_unit(path: str | os.PathLike, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Return the unit's stored result, or compute it and store it atomically.

    Parameters
    ----------
    path : path
        The unit's result file (see :func:`unit_path`).
    compute : callable ``() -> dict``
        Does the unit's work; its JSON-ready result is written to ``path`` with the
        wall-clock ``seconds`` it took added (unless it sets them itself).

    Returns
    -------
    dict
        The result, read back from the file when it was there already.

    Examples
    --------
    >>> import tempfile
    >>> path = unit_path(tempfile.mkdtemp(), "example")
    >>> run_unit(path, lambda: {"value": 1, "seconds": 0.0})
    {'value': 1, 'seconds': 0.0}
    >>> run_unit(path, lambda: {"value": 2})  # finished: read, not recomputed
    {'value': 1, 'seconds': 0.0}
    """
    finished = read_unit(path)
    if finished is not None:
        return finished
    started = time.perf_counter()
    result = dict(compute())
    result.setdefault("seconds", time.perf_counter() - started)
    write_json(path, json_ready(result))
    return result


def read_units(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every finished unit's result under ``OUT/units``, in file-name order."""
    folder = Path(out) / UNITS_FOLDER
    if not folder.is_dir():
        return []
    return [read_unit(path) for path in sorted(folder.glob("*.json"))]


def check_settings(out: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Record an experiment's settings in ``OUT/settings.json``, or check they are the same.

    Units computed with other settings (a ``--quick`` run, another grid size) must not be
    mixed with these; a folder holding them is refused.

    Raises
    ------
    ValueError
        Naming the first setting that differs.
    """
    path = Path(out) / SETTINGS_FILE
    wanted = json_ready(dict(settings))
    if not path.exists():
        write_json(path, wanted)
        return
    stored = read_unit(path)
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            raise ValueError(
                f"{path}: field {key!r} is {stored.get(key)!r} but this run has "
                f"{wanted.get(key)!r}; expected the same settings (use another --out)"
            )


def run_finished(run_dir: Path, config: TrainConfig) -> bool:
    """Whether a run folder already holds a run that is done, read from ``metrics.json``
    alone (so that a finished run does not load its data again): all epochs, or, where
    the configuration has a ``patience``, that many epochs since the best one after
    ``min_epochs``."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return False
    record = json.loads(path.read_text(encoding="utf-8"))
    completed = int(record["epochs_completed"])
    if completed >= config.epochs:
        return True
    stale = completed - int(record.get("best_epoch") or 0)
    return config.patience is not None and (
        completed >= config.min_epochs and stale >= config.patience
    )


def train_with_early_stopping(
    config: TrainConfig,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    patience: int,
    min_epochs: int = 0,
    progress: bool = False,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train for at most ``config.epochs`` epochs, stopping when validation stops improving.

    The run is trained with the configuration's ``patience`` and ``min_epochs`` set
    (see :class:`~weaklesion.training.TrainConfig`): it stops after ``patience``
    validations without a better validation metric once ``min_epochs`` are done, or
    after ``config.epochs``. A run folder with a ``last.pt`` continues where it stopped
    (exact resume); a run that already met the rule is left as it is.

    Parameters
    ----------
    config : TrainConfig
        The run's configuration; ``epochs`` is the epoch budget.
    data_root : path
        Dataset folder.
    run_dir : path
        Run folder (``best.pt`` is the best validated epoch).
    patience : int
        Validations without a better validation metric after which training stops
        (>= 1).
    min_epochs : int
        Epochs trained before the rule applies: a network that learns nothing at first
        (a count regressor stuck at the mean count) gets that long to start.
    progress : bool
        Show the loop's progress bar (not inside another live display).
    on_epoch : callable ``(epoch, record) -> None`` or None
        Called after every epoch trained here with the 1-based epoch and its history
        record (to report progress).

    Returns
    -------
    dict
        ``epochs`` trained in all, ``best_epoch``, ``metric`` and ``best_value``,
        ``stopped_early`` and ``train_seconds`` (summed over the epochs, validation
        included, whichever call trained them).
    """
    if patience < 1:
        raise ValueError(f"patience: got {patience!r}; expected a number of epochs >= 1")
    config = dataclasses.replace(config, patience=patience, min_epochs=min_epochs)
    run_dir = Path(run_dir)
    if not run_finished(run_dir, config):
        train(config, data_root, run_dir, resume=True, progress=progress, on_epoch_end=on_epoch)
    record = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    completed = int(record["epochs_completed"])
    return {
        "epochs": completed,
        "max_epochs": config.epochs,
        "patience": patience,
        "min_epochs": min_epochs,
        "best_epoch": record.get("best_epoch"),
        "metric": record.get("metric"),
        "best_value": record.get("best_value"),
        "stopped_early": completed < config.epochs,
        "train_seconds": float(
            sum(epoch.get("seconds", 0.0) + (epoch.get("val_seconds") or 0.0) for epoch in history)
        ),
    }


def mean_and_spread(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and number of the finite values.

    Examples
    --------
    >>> mean, spread, n = mean_and_spread([0.5, 1.5, None])
    >>> mean, round(spread, 4), n
    (1.0, 0.7071, 2)
    """
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan, 0
    spread = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return float(finite.mean()), spread, int(finite.size)


def format_interval(
    interval: Mapping[str, float | None] | None, scale: float = 100.0, digits: int = 1
) -> str:
    """``"96.0 [94.1, 97.5]"`` from ``{"estimate", "low", "high"}``; ``"—"`` if missing.

    Examples
    --------
    >>> format_interval({"estimate": 0.96, "low": 0.941, "high": 0.975})
    '96.0 [94.1, 97.5]'
    """
    if not interval or interval.get("estimate") is None:
        return "—"
    low, high = interval.get("low"), interval.get("high")
    text = f"{interval['estimate'] * scale:.{digits}f}"
    if low is None or high is None:
        return text
    return f"{text} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def format_mean(values: Sequence[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """``"0.96 ± 0.01"`` over seeds (mean ± sample std), one value alone, ``"—"`` for none.

    Examples
    --------
    >>> format_mean([0.5, 0.7], digits=1), format_mean([0.25]), format_mean([None])
    ('0.6 ± 0.1', '0.25', '—')
    """
    mean, spread, n = mean_and_spread(values)
    if n == 0:
        return "—"
    if n == 1:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {spread * scale:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are written with ``str``.

    Examples
    --------
    >>> print(markdown_table(["method", "FAUC"], [["gpunet", "96.0"]]))
    | method | FAUC |
    | --- | --- |
    | gpunet | 96.0 |
    """
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (with a final newline) to ``path`` atomically and return the path."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
    return Path(path)


def machine() -> dict[str, Any]:
    """Where the numbers were measured: CPU count, load, torch threads, versions."""

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


class UnitProgress:
    """Progress over an experiment's units, shown on a rich console.

    Use as a context manager; :meth:`start` names the unit being worked on and
    :meth:`done` counts it (finished units read back count at once). On a terminal this
    is a live progress bar; on any other console (a log file), one line per
    :meth:`start`, with the units done and the time elapsed.

    Parameters
    ----------
    console : rich.console.Console or None
        Where to show it; None shows nothing.
    total : int
        Number of units.
    title : str
        Description shown before the bar.
    """

    def __init__(self, console, total: int, title: str):

        self._console, self._total, self._title = console, total, title
        self._lines = console is not None and not console.is_terminal
        self._done = 0
        self._started = time.perf_counter()
        self._progress = Progress(
            TextColumn(f"[bold]{title}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            disable=console is None or self._lines,
        )
        self._task = self._progress.add_task("", total=total)

    def __enter__(self) -> UnitProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.__exit__(*exc_info)

    def start(self, label: str) -> None:
        """Show the unit now being worked on."""
        self._progress.update(self._task, description=label)
        if self._lines:
            elapsed = time.strftime("%H:%M:%S", time.gmtime(time.perf_counter() - self._started))
            self._console.print(
                f"{self._title} [{self._done}/{self._total} {elapsed}] {label}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def done(self) -> None:
        """Count one unit as finished."""
        self._done += 1
        self._progress.advance(self._task)
