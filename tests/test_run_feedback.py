"""What a run tells its user: one log line per epoch through a pipe, history.csv, the
version, and the named choices of `train --help` (generated from the registries)."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import subprocess
import sys
from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.config import CHOICES, TrainConfig
from weaklesion.data import write_phantom_dataset
from weaklesion.training.choices import DESCRIPTIONS, registered_choices

runner = CliRunner()


@pytest.mark.slow
def test_train_through_a_pipe_logs_one_line_per_epoch_and_writes_history_csv(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", n_cases=6, seed=1, shape=(16, 32, 32))
    run = tmp_path / "run"
    settings = ["epochs=3", "num_threads=1", "model_kwargs.features=[2, 2, 2, 2, 2]"]
    command = [sys.executable, "-m", "weaklesion.cli", "train", str(data), "--out", str(run)]
    command += [item for setting in settings for item in ("--set", setting)]
    # stderr is a pipe here, as in `make demo > log 2>&1`: no bar, one line per epoch.
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    lines = [line for line in finished.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    for line, record in zip(lines, history, strict=True):
        assert f"loss {record['loss']:.4g}" in line
        assert f"val f1 {record['val_f1']:.3f}" in line
        assert re.search(r", \d+\.\d s$", line)
    assert "\x1b[" not in finished.stderr and "━" not in finished.stderr

    with open(run / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(history)
    for row, record in zip(rows, history, strict=True):
        assert set(row) >= set(record)
        for key, value in record.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-12, abs=1e-15)


def test_version_prints_the_installed_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"weaklesion {version('weaklesion')}"


def test_train_help_lists_every_registered_choice_with_its_set_key():
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    choices = registered_choices()
    from weaklesion.models import MODEL_NAMES

    assert set(choices["model"]) == set(MODEL_NAMES)
    for key in ("labels", "target", "count_head", "count_objective"):
        assert set(choices[key]) == set(CHOICES[key])
    for key, names in choices.items():
        for name in names:
            assert f"--set {key}={name} {DESCRIPTIONS[key][name]}" in text, (key, name)


def test_every_registered_choice_is_described():
    for key, names in registered_choices().items():
        assert set(DESCRIPTIONS[key]) == set(names), key


def test_train_help_gives_each_choice_its_own_line_and_marks_the_defaults():
    """At a usual terminal width the choices stay a table (click rewraps paragraphs),
    and the name a configuration takes by default is marked."""
    result = runner.invoke(app, ["train", "--help"], terminal_width=100)
    lines = [line.strip() for line in result.output.splitlines()]
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    for key, names in registered_choices().items():
        for name in names:
            starts = [line for line in lines if line.startswith(f"--set {key}={name} ")]
            assert len(starts) == 1, (key, name)
            assert starts[0].endswith("(default)") == (defaults[key] == name), starts[0]
    assert any(line.startswith("--set count_gradient=centred") for line in lines)
