"""`weaklesion bench`: the quick MNIST experiment finds the target digits, resumes an
interrupted training where it stopped and skips finished work; bad input is refused
with one line and exit status 2."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from weaklesion.bench import common
from weaklesion.cli import app

runner = CliRunner()


class Interrupted(Exception):
    """Stands for a kill in the middle of a training."""


@pytest.fixture
def counted_training(monkeypatch):
    """Record every epoch trained (run folder, epoch); optionally stop after one."""
    state = {"epochs": [], "interrupt_after": None}
    train = common.train

    def recording_train(config, data_root, run_dir, **options):
        hook = options.pop("on_epoch_end")

        def on_epoch_end(epoch, record):
            state["epochs"].append((run_dir.name, epoch))
            hook(epoch, record)
            if state["interrupt_after"] == (run_dir.name, epoch):
                raise Interrupted

        return train(config, data_root, run_dir, on_epoch_end=on_epoch_end, **options)

    monkeypatch.setattr(common, "train", recording_train)
    return state


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_quick_mnist_finds_digits_resumes_and_skips_finished_units(tmp_path, counted_training):
    out = tmp_path / "mnist"
    command = ["bench", "mnist", "--quick", "--methods", "gpunet", "--out", str(out)]
    first_run = "digit1_gpunet_regression_seed0"
    counted_training["interrupt_after"] = (first_run, 2)

    stopped = runner.invoke(app, command)
    assert isinstance(stopped.exception, Interrupted)
    run_dir = out / "work" / "runs" / first_run
    before = history(run_dir)
    assert [record["epoch"] for record in before] == [1, 2]
    assert not (out / "units" / f"train_{first_run}.json").exists()

    counted_training.update(epochs=[], interrupt_after=None)
    finished = runner.invoke(app, command)
    assert finished.exit_code == 0, finished.output
    resumed = [epoch for name, epoch in counted_training["epochs"] if name == first_run]
    assert resumed == [3, 4, 5, 6]  # epochs 1-2 were not trained again
    assert history(run_dir)[:2] == before

    units = sorted((out / "units").glob("*.json"))
    assert [path.name for path in units] == [
        "eval_digit1_gpunet_classification_seed0.json",
        "eval_digit1_gpunet_regression_seed0.json",
        "eval_digit1_random.json",
        "train_digit1_gpunet_classification_seed0.json",
        "train_digit1_gpunet_regression_seed0.json",
    ]
    results = {path.stem: json.loads(path.read_text()) for path in units}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"] == {"trainings": 2, "evaluations": 3}
    for figure in summary["figures"]:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The planted structure: GP-Unet's maxima fall on the target digits far more often
    # than the maxima of noise do.
    learned = results["eval_digit1_gpunet_regression_seed0"]
    chance = results["eval_digit1_random"]["fauc"]
    assert learned["fauc"]["low"] > chance["high"]
    assert learned["fauc"]["estimate"] > chance["estimate"] + 0.1
    assert learned["count_mae"] < 0.5
    assert learned["at_count"]["sensitivity"] > 0.5
    row = f"| 1 | {common.format_interval(learned['fauc'])} |"
    assert row in (out / "results.md").read_text()

    stamps = {path: path.stat().st_mtime_ns for path in units}
    counted_training["epochs"] = []
    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output
    assert counted_training["epochs"] == []
    assert {path: path.stat().st_mtime_ns for path in units} == stamps


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["bench", "mnist", "--digits", "4,12"], "--digits: got 12; expected digits 0 to 9"),
        (["bench", "mnist", "--digits", "4.5"], "--digits: got '4.5'; expected whole digits"),
        (["bench", "mnist", "--methods", "gpunet,cam"], "--methods: got 'cam'; expected"),
        (["bench", "mnist", "--seeds", "0"], "--seeds: got 0; expected 1 or more"),
        (["bench", "points", "--digits", "4"], "--digits: applies to bench mnist only"),
        (["bench", "phantom"], "EXPERIMENT: got 'phantom'; expected one of mnist, points"),
    ],
)
def test_bench_refuses_bad_input_with_one_line(tmp_path, arguments, message):
    result = runner.invoke(app, [*arguments, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {message}")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "out" / "units").exists()


def test_bench_names_a_missing_experiment_module(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "weaklesion.bench.counting", None)
    result = runner.invoke(app, ["bench", "counting", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output == "error: bench counting: weaklesion.bench.counting is not installed\n"


def test_quick_and_full_settings_do_not_mix_in_one_folder(tmp_path):
    common.check_settings(tmp_path, {"experiment": "mnist", "grid": [7, 5]})
    result = runner.invoke(app, ["bench", "mnist", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "settings.json: field 'batch_size'" in result.output
