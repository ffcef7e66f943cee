"""Experiment 3 (counting): the quick run writes parseable results, finds the planted
structure, and a rerun reuses every finished unit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from weaklesion.bench.counting import (
    METHODS,
    MULTITASK,
    SETTINGS,
    THRESHOLDS,
    counting_tables,
    planted_probability_map,
    run_counting,
    summarise_counting,
    threshold_counts,
    threshold_sensitivity,
)
from weaklesion.counting import poisson_binomial_pmf


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("counting")
    console = Console(quiet=True)
    first = run_counting(out, quick=True, seeds=1, methods=None, console=console)
    return out, first, console


def test_threshold_sensitivity_matches_hand_counts():
    # Image 1: truth 2; components 3 at 0.1 (a distractor), 2 from 0.2 on.
    counts = [
        {"cc": [3, 2, 2], "pb": [2, 2, 2]},
        {"cc": [1, 0, 0], "pb": [0, 0, 0]},
        {"cc": [6, 5, 4], "pb": [4, 4, 4]},
    ]
    table = threshold_sensitivity(counts, [2, 0, 7], thresholds=(0.1, 0.3, 0.6))
    assert table["cc"]["accuracy"] == pytest.approx([1 / 3, 1.0, 1.0])
    assert table["pb"]["accuracy"] == pytest.approx([1.0, 1.0, 1.0])
    # 0.6 is above 0.5, so it takes no part in the spread.
    assert table["cc"]["spread"] == pytest.approx(2 / 3)
    assert table["cc"]["std"] == pytest.approx(1 / 3)
    assert table["pb"]["spread"] == 0.0


def test_threshold_counts_follow_the_planted_probabilities():
    # Two lesions of existence probability 0.9 and 0.7 far apart, a distractor blob of
    # peak 0.3: components count 3 up to 0.3, then 2, then 1 above 0.7; the
    # Poisson-binomial mode stays 2 wherever both lesions are candidates.
    prob_map = np.zeros((12, 24, 24))
    prob_map[3, 3, 3], prob_map[8, 20, 20], prob_map[6, 12, 3] = 0.9, 0.7, 0.3
    counts = threshold_counts(prob_map)
    expected_cc = [3 if t < 0.3 else 2 if t < 0.7 else 1 if t < 0.9 else 0 for t in THRESHOLDS]
    assert counts["cc"] == expected_cc
    for t, mode in zip(THRESHOLDS, counts["pb"], strict=True):
        regions = [p for p in (0.9, 0.7, 0.3) if p > t]
        assert mode == int(np.argmax(poisson_binomial_pmf(regions)))
    assert counts["pb"][:6] == [2] * 6


def test_planted_map_lesions_exist_with_their_probability():
    instances = np.zeros((16, 32, 32), int)
    instances[4:6, 4:6, 4:6] = 1
    instances[10:12, 20:23, 20:23] = 2
    planted = planted_probability_map(instances, np.random.default_rng(3), distractors=0.0)
    for label in (1, 2):
        inside = planted[instances == label]
        assert 0.6 <= inside.min() == inside.max() <= 1.0
    # Outside the lesions the map decays as exp(-d^2 / 2) of the distance d in voxels.
    assert planted[4, 4, 6] == pytest.approx(planted[4, 4, 5] * np.exp(-0.5))
    assert planted[4, 4, 8] < 0.1


@pytest.mark.slow
def test_quick_run_writes_parseable_results(quick_run):
    out, first, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    for name in ("threshold_accuracy.png", "count_reliability.png", "accuracy_by_certainty.png"):
        assert (out / name).stat().st_size > 1000
    tables = (out / "tables.md").read_text()
    assert "Threshold sensitivity, segmentation model" in tables
    assert "Adversarial attack" in tables
    assert tables.strip() == counting_tables(results).strip()
    assert set(results["comparison"]["full"]) == {*METHODS, "segmentation_cc", "segmentation_mc"}
    assert set(results["comparison"]["low"]) == set(MULTITASK)
    assert set(results["attack"]) == set(METHODS)
    assert len(results["threshold"]["pb"]["accuracy"]) == len(THRESHOLDS)
    for scores in results["comparison"]["full"].values():
        assert 0 <= scores["accuracy"]["mean"] <= 1
        assert 0 <= scores["f1"]["mean"] <= 1
    assert first["units"]["computed"] == 1 + 5 * 3 + 4 * 2  # planted, full, low


def test_each_model_trains_with_its_part_of_the_recipe(quick_run):
    """The Poisson-binomial loss and the heads differ in weight and warm-up; every run
    records the configuration it trained with."""
    out, _, _ = quick_run
    settings = SETTINGS["quick"]
    assert settings.head_warmup_epochs != settings.count_warmup_epochs
    for method in METHODS:
        unit = json.loads((out / "units" / f"train-{method}-full-seed0.json").read_text())
        config = unit["config"]
        assert config["lr_schedule"] == settings.lr_schedule == "cosine"
        if method == "segmentation":
            assert config["labels"] == "masks"
        elif method == "poisson_binomial":
            assert config["count_weight"] == settings.count_weight
            assert config["count_warmup_epochs"] == settings.count_warmup_epochs
        else:
            assert config["count_head"] == method
            assert config["count_weight"] == settings.head_count_weight
            assert config["count_warmup_epochs"] == settings.head_warmup_epochs
            assert config["count_gradient"] == "centred"
    low = json.loads((out / "units" / "train-bottleneck-low-seed0.json").read_text())
    factor = settings.low_data_epoch_factor
    assert low["config"]["count_warmup_epochs"] == settings.head_warmup_epochs * factor


@pytest.mark.slow
def test_planted_structure_is_found(quick_run):
    out, _, _ = quick_run
    results = summarise_counting(out / "units")
    planted = results["planted"]
    # On maps whose lesions exist with probability >= 0.6 among distractors below 0.45,
    # the Poisson-binomial count is more threshold-stable than the component count
    # and more accurate at the low threshold where distractors still form components.
    assert planted["pb"]["spread"] < planted["cc"]["spread"]
    assert planted["pb"]["accuracy"][0] > planted["cc"]["accuracy"][0]
    # The quick data's true masks have (nearly) one component per lesion: the counts
    # are attainable.
    assert results["mask_components_accuracy"]["all"] >= 0.75


@pytest.mark.slow
def test_rerun_reuses_every_unit(quick_run):
    out, first, console = quick_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    again = run_counting(out, quick=True, seeds=1, methods=None, console=console)
    assert again["units"] == {"computed": 0, "reused": len(before)}
    after = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    assert after == before
    assert again["comparison"] == first["comparison"]


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="methods: got nope"):
        run_counting(tmp_path, quick=True, seeds=1, methods=["nope"], console=Console(quiet=True))
