"""The demos: planted lesions are found; the end-to-end demo writes a complete report."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from weaklesion.demo import (
    count_probability_maps,
    plant_lesions,
    run_demo,
    run_post_processing_demo,
)


def test_planted_maps_hold_the_planted_lesions():
    planted = plant_lesions(4)
    assert len(planted.points) >= 2
    assert np.all(planted.existence >= 0.6)
    # Each lesion carries its existence probability as heatmap mass (noise aside).
    assert abs(planted.heatmap.sum() - planted.existence.sum()) < 0.2 * len(planted.points) + 1


def test_gaussian_fitting_finds_the_planted_lesions():
    results = run_post_processing_demo(seed=0, n_cases=3, console=Console(quiet=True))
    assert results["Gaussian fitting (heatmap)"]["f1"] >= 0.95
    assert results["Gaussian fitting (heatmap)"]["centre_error"] < 0.25


def test_poisson_binomial_interval_covers_the_true_count():
    results = count_probability_maps(seed=1, n_cases=40)
    assert results["Poisson-binomial"]["coverage"] >= 0.85


@pytest.mark.slow
def test_end_to_end_demo_writes_a_complete_report(tmp_path):
    # A console on a file, as `make demo > log 2>&1` gives: one plain line per epoch.
    log = io.StringIO()
    report = run_demo(
        tmp_path,
        splits=(6, 1, 1),
        console=Console(file=log, width=100),
        overrides=["epochs=2", "num_threads=1"],
    )
    epochs = [line for line in log.getvalue().splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert "val f1" in epochs[1]
    for name in ("metrics.json", "detections.csv", "froc.png", "calibration.png"):
        assert (tmp_path / name).exists(), name
    assert list(tmp_path.glob("slices_*.png"))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["detection"] == report["detection"]
    assert set(written["counts"]) == set(written["cases"])
    for case in written["counts"].values():
        assert abs(sum(case["pmf"]) - 1.0) < 1e-9
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    for section in ("metrics", "froc", "calibration", "counts", "training", "gallery"):
        assert f'<section id="{section}">' in page, section
    for case in written["cases"]:
        assert f'id="case-{case}"' in page


def test_demo_command_prints_the_planted_table_then_runs_the_end_to_end_demo(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import weaklesion.demo as demos
    from weaklesion.cli import app

    calls = []

    def planted(seed=0, **_):
        calls.append(("planted", seed))

    def end_to_end(out, seed=0, **_):
        calls.append(("end_to_end", seed))

    monkeypatch.setattr(demos, "run_post_processing_demo", planted)
    monkeypatch.setattr(demos, "run_demo", end_to_end)
    runner = CliRunner()
    assert runner.invoke(app, ["demo", "--out", str(tmp_path), "--seed", "3"]).exit_code == 0
    assert calls == [("planted", 3), ("end_to_end", 3)]
    calls.clear()
    assert runner.invoke(app, ["demo", "--post-processing-only"]).exit_code == 0
    assert calls == [("planted", 0)]
