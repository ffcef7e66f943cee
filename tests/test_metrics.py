"""Specification of weaklesion.metrics: matching, FROC, bootstrap, calibration, counts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.optimize import linear_sum_assignment

from weaklesion.metrics import (
    accuracy_by_certainty,
    binary_entropy,
    bootstrap_ci,
    count_accuracy,
    count_f1,
    count_mae,
    count_metrics,
    detection_scores,
    expected_calibration_error,
    froc_auc,
    froc_auc_ci,
    froc_by_rank,
    froc_curve,
    hits_by_score,
    lesion_sizes,
    match_points,
    match_to_regions,
    maximum_calibration_error,
    recall_by_size,
    region_hits_by_score,
    reliability_bins,
)

# ------------------------------------------------------------------------- matching


def brute_force_matching(distances: np.ndarray, max_distance: float) -> tuple[int, float]:
    """Best (most pairs, then least total distance) one-to-one matching by enumeration."""
    n_pred, n_truth = distances.shape

    def best_from(pred: int, used: frozenset) -> tuple[int, float]:
        if pred == n_pred:
            return 0, 0.0
        best = best_from(pred + 1, used)  # leave this prediction unmatched
        for truth in range(n_truth):
            if truth not in used and distances[pred, truth] <= max_distance:
                count, total = best_from(pred + 1, used | {truth})
                count, total = count + 1, total + distances[pred, truth]
                if count > best[0] or (count == best[0] and total < best[1]):
                    best = (count, total)
        return best

    return best_from(0, frozenset())


def check_record(matches, n_pred: int, truth_ids) -> None:
    """Pairs, false positives and false negatives partition predictions and truth."""
    assert sorted([*matches.pairs[:, 0], *matches.false_positives]) == list(range(n_pred))
    assert sorted([*matches.pairs[:, 1], *matches.false_negatives]) == sorted(truth_ids)
    assert len(set(matches.pairs[:, 1])) == matches.tp


def crowded_points(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    """Points strung along the first axis, so that matchings compete for partners."""
    extent = np.array([4.0, 0.6, 0.6])[:dims]
    return rng.uniform(0, extent, size=(n, dims))


@pytest.mark.parametrize("seed", range(60))
def test_match_points_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_pred, n_truth = rng.integers(0, 7, size=2)
    dims = int(rng.choice([2, 3]))
    pred, truth = crowded_points(rng, n_pred, dims), crowded_points(rng, n_truth, dims)
    spacing = rng.uniform(0.8, 1.25, size=dims)
    max_distance = float(rng.uniform(0.8, 1.5))

    matches = match_points(pred, truth, max_distance, spacing=spacing)

    distances = np.sqrt((((pred[:, None] - truth[None]) * spacing) ** 2).sum(-1))
    best_count, best_total = brute_force_matching(distances, max_distance)
    assert matches.tp == best_count
    assert matches.distances.sum() == pytest.approx(best_total, abs=1e-9)
    np.testing.assert_allclose(
        matches.distances, distances[matches.pairs[:, 0], matches.pairs[:, 1]]
    )
    assert np.all(matches.distances <= max_distance)
    check_record(matches, n_pred, range(n_truth))


def test_match_points_prefers_more_matches_over_shorter_total():
    # Pred 0 sits on truth 0 and is 1 voxel from truth 1; pred 1 reaches truth 0 only.
    # Pairing pred 0 with the lesion it sits on (total distance 0) leaves pred 1 nothing
    # in range; two matches need pred 0 -> truth 1 and pred 1 -> truth 0 (total 2).
    pred = [[0.0, 0.0], [0.0, -1.0]]
    truth = [[0.0, 0.0], [0.0, 1.0]]
    matches = match_points(pred, truth, max_distance=1.0)
    assert matches.pairs.tolist() == [[0, 1], [1, 0]]
    np.testing.assert_allclose(matches.distances, [1.0, 1.0])


def test_match_points_far_pair_is_no_match():
    # 3-4-5 triangle: the pair is exactly 5 voxels apart.
    at_limit = match_points([[0.0, 0.0]], [[3.0, 4.0]], max_distance=5.0)
    assert at_limit.tp == 1 and at_limit.distances[0] == pytest.approx(5.0)
    beyond = match_points([[0.0, 0.0]], [[3.0, 4.0]], max_distance=4.999)
    assert (beyond.tp, beyond.fp, beyond.fn) == (0, 1, 1)
    assert beyond.false_positives.tolist() == [0] and beyond.false_negatives.tolist() == [0]


def test_match_points_uses_spacing_in_mm():
    pred, truth = [[1.0, 0.0, 0.0]], [[0.0, 0.0, 2.0]]
    # Voxels: distance sqrt(1 + 4) = 2.236; mm with (3, 1, 0.5) spacing: sqrt(9 + 1) = 3.162.
    assert match_points(pred, truth, 2.5).tp == 1
    in_mm = match_points(pred, truth, 2.5, spacing=(3.0, 1.0, 0.5))
    assert in_mm.tp == 0
    in_mm = match_points(pred, truth, 3.2, spacing=(3.0, 1.0, 0.5))
    assert in_mm.distances[0] == pytest.approx(math.sqrt(10.0))
    assert match_points([[2.0, 0.0]], [[0.0, 0.0]], 1.0, spacing=0.5).tp == 1


def test_match_points_empty_inputs():
    none_predicted = match_points(np.zeros((0, 3)), [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], 2.0)
    assert none_predicted.pairs.shape == (0, 2) and none_predicted.distances.shape == (0,)
    assert none_predicted.false_negatives.tolist() == [0, 1] and none_predicted.fp == 0
    no_truth = match_points([[1.0, 2.0]], np.zeros((0, 2)), 2.0)
    assert no_truth.false_positives.tolist() == [0] and no_truth.fn == 0
    nothing = match_points([], [], 2.0)
    assert (nothing.tp, nothing.fp, nothing.fn) == (0, 0, 0)
    assert nothing.pred_matched.shape == (0,)


def test_match_points_accepts_tensors_and_rejects_bad_input():
    pred = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    truth = torch.tensor([[0.0, 1.0]])
    assert match_points(pred, truth, 2.0).pairs.tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="pred_points"):
        match_points([[np.nan, 0.0]], [[0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match="coordinates per point"):
        match_points([[0.0, 0.0]], [[0.0, 0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match="max_distance"):
        match_points([[0.0, 0.0]], [[0.0, 0.0]], -1.0)
    with pytest.raises(ValueError, match="spacing"):
        match_points([[0.0, 0.0]], [[0.0, 0.0]], 1.0, spacing=(1.0, 0.0))


def test_match_to_regions_hand_case():
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[0:2, 0:2] = 4  # region 4
    labels[3:6, 3:6] = 7  # region 7
    labels[0, 5] = 9  # region 9, one voxel
    # Detections: two inside region 4, one on background, one in region 7 at the edge of
    # a voxel (5.4 rounds into voxel 5).
    pred = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [5.4, 5.4]]
    matches = match_to_regions(pred, labels)
    assert matches.pairs.tolist() == [[0, 4], [3, 7]]
    assert matches.false_positives.tolist() == [1, 2]
    assert matches.false_negatives.tolist() == [9]
    assert matches.distances.tolist() == [0.0, 0.0]
    assert matches.pred_matched.tolist() == [True, False, False, True]


@pytest.mark.parametrize("seed", range(10))
def test_match_to_regions_has_hungarian_cardinality(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=(4, 5, 6))
    pred = rng.uniform(-0.5, [3.5, 4.5, 5.5], size=(int(rng.integers(0, 12)), 3))
    matches = match_to_regions(pred, labels)
    voxel = np.clip(np.floor(pred + 0.5).astype(int), 0, np.array(labels.shape) - 1)
    under = labels[tuple(voxel.T)]
    regions = np.unique(labels[labels > 0])
    admissible = under[:, None] == regions[None, :]
    rows, cols = linear_sum_assignment(1.0 - admissible)
    assert matches.tp == int(admissible[rows, cols].sum())
    assert np.all(under[matches.pairs[:, 0]] == matches.pairs[:, 1])
    check_record(matches, len(pred), regions)


def test_match_to_regions_rejects_bad_labels():
    with pytest.raises(ValueError, match="region_labels"):
        match_to_regions([[0.0, 0.0]], np.zeros((3, 3)))
    with pytest.raises(ValueError, match="pred_points"):
        match_to_regions([[0.0, 3.0]], np.zeros((3, 3), dtype=int))


# ----------------------------------------------------------------- detection scores


def test_detection_scores_pooled_over_cases():
    first = match_points([[0.0, 0.0], [9.0, 9.0], [20.0, 20.0]], [[0.0, 1.0], [9.0, 8.0]], 2.0)
    second = match_points([[3.0, 3.0]], [[3.0, 4.0], [15.0, 15.0], [30.0, 30.0]], 2.0)
    scores = detection_scores([first, second])
    # TP = 2 + 1, FP = 1 + 0, FN = 0 + 2.
    assert (scores.tp, scores.fp, scores.fn, scores.n_cases) == (3, 1, 2, 2)
    assert scores.precision == pytest.approx(3 / 4)
    assert scores.recall == scores.sensitivity == pytest.approx(3 / 5)
    assert scores.f1 == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert scores.fp_per_image == pytest.approx(0.5)
    assert scores.fn_per_image == pytest.approx(1.0)


def test_detection_scores_conventions_for_empty_sides():
    nothing = match_points(np.zeros((0, 2)), np.zeros((0, 2)), 1.0)
    assert detection_scores([nothing]).to_dict() == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "fp_per_image": 0.0,
        "fn_per_image": 0.0,
        "tp": 0,
        "fp": 0,
        "fn": 0,
        "n_cases": 1,
    }
    missed = detection_scores(match_points(np.zeros((0, 2)), [[1.0, 1.0]], 1.0))
    assert (missed.precision, missed.recall, missed.f1) == (1.0, 0.0, 0.0)
    false_alarm = detection_scores(match_points([[1.0, 1.0]], np.zeros((0, 2)), 1.0))
    assert (false_alarm.precision, false_alarm.recall, false_alarm.f1) == (0.0, 1.0, 0.0)
    no_cases = detection_scores([])
    assert math.isnan(no_cases.fp_per_image)
    assert json.loads(json.dumps(no_cases.to_dict(), allow_nan=False))["fp_per_image"] is None


def test_lesion_sizes_and_recall_by_size_on_hand_made_mask():
    labels = np.zeros((4, 20, 20), dtype=np.uint16)
    labels[0, 0, 0:2] = 1  # 2 voxels: below every default stratum
    labels[1, 0:2, 0:3] = 2  # 6 voxels: small
    labels[0:2, 5:10, 5:9] = 3  # 40 voxels: medium
    labels[0:4, 10:20, 10:20] = 5  # 400 voxels: large
    truth = np.array(
        [[0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 7.0, 7.0], [2.0, 15.0, 15.0], [3.0, 0.0, 19.0]]
    )
    sizes = lesion_sizes(labels, truth)
    assert sizes.tolist() == [2, 6, 40, 400, 0]  # the last point lies on background
    # Detections find the medium and the large lesion and the 2-voxel one; one FP.
    pred = [[1.0, 7.5, 6.5], [2.0, 14.0, 15.0], [0.0, 0.0, 0.5], [3.0, 5.0, 5.0]]
    matches = match_points(pred, truth, max_distance=1.5)
    assert sorted(matches.pairs[:, 1].tolist()) == [0, 2, 3]
    result = recall_by_size(matches, sizes)
    assert result.n_truth == {"small": 1, "medium": 1, "large": 1}
    assert result.n_detected == {"small": 0, "medium": 1, "large": 1}
    assert result.recall == {"small": 0.0, "medium": 1.0, "large": 1.0}
    assert result.excluded == 2  # sizes 2 and 0
    custom = recall_by_size([matches], [sizes], strata={"tiny": (1, 5), "any": (1, math.inf)})
    assert custom.n_truth == {"tiny": 1, "any": 4} and custom.n_detected == {"tiny": 1, "any": 3}
    assert custom.excluded == 1
    assert json.dumps(custom.to_dict(), allow_nan=False)


def test_recall_by_size_with_region_matches_uses_labels_as_ids():
    labels = np.zeros((10, 10), dtype=int)
    labels[0:2, 0:2] = 3  # 4 voxels, small
    labels[4:9, 4:9] = 8  # 25 voxels, medium
    matches = match_to_regions([[5.0, 5.0]], labels)
    result = recall_by_size(matches, np.bincount(labels.ravel()))
    assert result.n_truth == {"small": 1, "medium": 1, "large": 0}
    assert result.recall["small"] == 0.0 and result.recall["medium"] == 1.0
    with pytest.raises(ValueError, match="truth id 8"):
        recall_by_size(matches, np.ones(5))


# ----------------------------------------------------------------------------- FROC


@pytest.mark.parametrize("seed", range(25))
def test_hits_by_score_give_hungarian_matches_at_every_threshold(seed):
    rng = np.random.default_rng(seed)
    pred = crowded_points(rng, int(rng.integers(0, 9)), 2)
    truth = crowded_points(rng, int(rng.integers(0, 6)), 2)
    scores = np.round(rng.uniform(size=len(pred)), 1)  # ties on purpose
    hits = hits_by_score(pred, scores, truth, max_distance=1.0, spacing=(1.0, 1.2))
    for threshold in np.unique(scores):
        kept = scores >= threshold
        expected = match_points(pred[kept], truth, 1.0, spacing=(1.0, 1.2)).tp
        assert hits[kept].sum() == expected
    order = np.argsort(-scores, kind="stable")
    for n in range(len(pred) + 1):
        top = order[:n]
        assert hits[top].sum() == match_points(pred[top], truth, 1.0, spacing=(1.0, 1.2)).tp


def test_hits_by_score_beats_greedy_assignment():
    truth = [[0.0, 0.0], [0.0, 2.0]]
    pred = [[0.0, 0.9], [0.0, -1.0]]  # first within reach of both lesions, second of one
    # Greedy by score: 0.9 claims the nearest lesion (at 0, 0.9 away), leaving the
    # second detection nothing within 1.5 -> 1 hit. The maximum matching has 2.
    assert hits_by_score(pred, [0.9, 0.8], truth, max_distance=1.5).tolist() == [True, True]
    assert hits_by_score(pred, [0.9, 0.8], np.zeros((0, 2)), 1.5).tolist() == [False, False]


def test_region_hits_by_score_count_each_region_once():
    labels = np.zeros((5, 5), dtype=int)
    labels[0:2, 0:2] = 1
    labels[3:5, 3:5] = 2
    pred = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [4.0, 4.0], [3.0, 3.0]])
    scores = np.array([0.5, 0.9, 0.8, 0.3, 0.3])
    hits = region_hits_by_score(pred, scores, labels)
    assert hits.tolist() == [False, True, False, True, False]
    for threshold in np.unique(scores):
        kept = scores >= threshold
        assert hits[kept].sum() == match_to_regions(pred[kept], labels).tp


# Hand-worked FROC, max_distance 3 voxels.
#   case A: lesions at (10, 10), (30, 30)
#     d1 (10, 11) 0.9 hit | d2 (50, 50) 0.7 FP | d3 (30, 31) 0.4 hit | d4 (10, 9) 0.3 FP
#     (d4 is near lesion 1, which d1 already holds)
#   case B: lesion at (20, 20):      e1 (40, 40) 0.8 FP | e2 (20, 21) 0.7 hit
#   case C: no lesion:               f1 (5, 5) 0.5 FP
# 3 lesions, 3 images. Sweeping the threshold (TP, FP -> FP/image, sensitivity):
#   inf: 0, 0 -> (0, 0)
#   0.9: d1              1, 0 -> (0, 1/3)
#   0.8: + e1            1, 1 -> (1/3, 1/3)
#   0.7: + d2, e2        2, 2 -> (2/3, 2/3)
#   0.5: + f1            2, 3 -> (1, 2/3)
#   0.4: + d3            3, 3 -> (1, 1)
#   0.3: + d4            3, 4 -> (4/3, 1)
# Keeping the top n per image (ranks: A d1 d2 d3 d4, B e1 e2, C f1):
#   n=0: (0, 0); n=1: d1 e1 f1 -> 1, 2 -> (2/3, 1/3); n=2: + d2 e2 -> 2, 3 -> (1, 2/3)
#   n=3: + d3 -> 3, 3 -> (1, 1); n=4: + d4 -> 3, 4 -> (4/3, 1)
HAND_CASES = [
    (
        [[10, 11], [50, 50], [30, 31], [10, 9]],
        [0.9, 0.7, 0.4, 0.3],
        [[10, 10], [30, 30]],
    ),
    ([[40, 40], [20, 21]], [0.8, 0.7], [[20, 20]]),
    ([[5, 5]], [0.5], np.zeros((0, 2))),
]


def hand_inputs():
    scores = [np.array(case_scores) for _, case_scores, _ in HAND_CASES]
    hits = [hits_by_score(pred, s, truth, 3.0) for pred, s, truth in HAND_CASES]
    n_truth = [len(truth) for _, _, truth in HAND_CASES]
    return scores, hits, n_truth


def test_froc_curve_hand_worked():
    scores, hits, n_truth = hand_inputs()
    assert [h.tolist() for h in hits] == [[True, False, True, False], [False, True], [False]]
    curve = froc_curve(scores, hits, n_truth)
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.8, 0.7, 0.5, 0.4, 0.3])
    np.testing.assert_allclose(curve.fp_per_image, [0, 0, 1 / 3, 2 / 3, 1, 1, 4 / 3])
    np.testing.assert_allclose(curve.sensitivity, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    by_rank = froc_by_rank(scores, hits, n_truth)
    assert by_rank.thresholds.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(by_rank.fp_per_image, [0, 2 / 3, 1, 1, 4 / 3])
    np.testing.assert_allclose(by_rank.sensitivity, [0, 1 / 3, 2 / 3, 1, 1])
    assert froc_by_rank(scores, hits, n_truth, max_rank=2).thresholds.tolist() == [0, 1, 2]


def test_froc_auc_hand_worked():
    scores, hits, n_truth = hand_inputs()
    curve = froc_curve(scores, hits, n_truth)
    # Step, up to 1 FP/image: sensitivity 1/3 on [0, 2/3), 2/3 on [2/3, 1) -> 4/9.
    assert froc_auc(curve.fp_per_image, curve.sensitivity, 1.0) == pytest.approx(4 / 9)
    # Up to 2: plus sensitivity 1 on [1, 2] -> (4/9 + 1) / 2.
    assert froc_auc(curve.fp_per_image, curve.sensitivity, 2.0) == pytest.approx(13 / 18)
    # Linear, up to 1: 1/3 * 1/3 + 1/3 * (1/3 + 2/3) / 2 + 1/3 * 2/3 = 1/2.
    linear = froc_auc(curve.fp_per_image, curve.sensitivity, 1.0, interpolation="linear")
    assert linear == pytest.approx(0.5)
    # Linear, up to 0.5: 1/9 over [0, 1/3], then the rise from (1/3, 1/3) to (0.5, 0.5):
    # 1/6 * (1/3 + 1/2) / 2 = 5/72; total (8/72 + 5/72) / 0.5 = 13/36.
    half = froc_auc(curve.fp_per_image, curve.sensitivity, 0.5, interpolation="linear")
    assert half == pytest.approx(13 / 36)
    # By rank, up to 1: sensitivity 0 on [0, 2/3), 1/3 on [2/3, 1) -> 1/9.
    by_rank = froc_by_rank(scores, hits, n_truth)
    assert froc_auc(by_rank.fp_per_image, by_rank.sensitivity, 1.0) == pytest.approx(1 / 9)


def test_froc_auc_limits_and_unsorted_input():
    assert froc_auc([0.0, 3.0], [1.0, 1.0]) == 1.0  # perfect detector
    assert froc_auc([6.0], [1.0], max_fp=5.0) == 0.0  # nothing found below 5 FP/image
    assert math.isnan(froc_auc([], []))
    shuffled = froc_auc([1.0, 0.0, 0.5], [1.0, 0.5, 0.5], max_fp=2.0)
    assert shuffled == pytest.approx(froc_auc([0.0, 0.5, 1.0], [0.5, 0.5, 1.0], max_fp=2.0))
    with pytest.raises(ValueError, match="sensitivity"):
        froc_auc([0.0], [1.5])
    with pytest.raises(ValueError, match="max_fp"):
        froc_auc([0.0], [1.0], max_fp=0.0)


def test_froc_with_region_hits_and_no_cases():
    labels = np.zeros((8, 8), dtype=int)
    labels[0:3, 0:3] = 1
    labels[5:8, 5:8] = 2
    pred = [[1.0, 1.0], [2.0, 2.0], [6.0, 6.0], [4.0, 0.0]]
    scores = [0.9, 0.8, 0.2, 0.5]
    hits = region_hits_by_score(pred, scores, labels)
    curve = froc_curve([scores], [hits], [2])
    # 0.9 hit, 0.8 second detection in region 1 (FP), 0.5 background (FP), 0.2 hit.
    np.testing.assert_allclose(curve.fp_per_image, [0, 0, 1, 2, 2])
    np.testing.assert_allclose(curve.sensitivity, [0, 0.5, 0.5, 0.5, 1.0])
    empty = froc_curve([], [], [])
    assert empty.fp_per_image.shape == empty.sensitivity.shape == (0,)
    assert all(math.isnan(v) for v in froc_auc_ci([], [], []))
    with pytest.raises(ValueError, match="at most one hit per truth lesion"):
        froc_curve([[0.5, 0.4]], [[True, True]], [1])


def random_study(n_cases: int, seed: int):
    rng = np.random.default_rng(seed)
    scores, hits, n_truth = [], [], []
    for _ in range(n_cases):
        truth = rng.uniform(0, 30, size=(int(rng.integers(0, 4)), 2))
        near = truth + rng.normal(scale=1.0, size=truth.shape)
        far = rng.uniform(0, 30, size=(int(rng.integers(0, 5)), 2))
        pred = np.concatenate([near, far])
        case_scores = np.concatenate(
            [rng.uniform(0.3, 1.0, len(near)), rng.uniform(0, 0.8, len(far))]
        )
        scores.append(case_scores)
        hits.append(hits_by_score(pred, case_scores, truth, max_distance=2.0))
        n_truth.append(len(truth))
    return scores, hits, n_truth


@pytest.mark.parametrize(
    ("by_rank", "interpolation"), [(False, "step"), (True, "step"), (False, "linear")]
)
def test_froc_auc_ci_equals_generic_bootstrap(by_rank, interpolation):
    scores, hits, n_truth = random_study(15, seed=3)
    sweep = froc_by_rank if by_rank else froc_curve

    def statistic(sample):
        curve = sweep(*zip(*sample, strict=True))
        return froc_auc(curve.fp_per_image, curve.sensitivity, 2.0, interpolation)

    cases = list(zip(scores, hits, n_truth, strict=True))
    generic = bootstrap_ci(cases, statistic, n_boot=150, seed=11)
    fast = froc_auc_ci(
        scores,
        hits,
        n_truth,
        2.0,
        by_rank=by_rank,
        interpolation=interpolation,
        n_boot=150,
        seed=11,
    )
    np.testing.assert_allclose(fast, generic, rtol=1e-12, atol=1e-12)
    assert fast.low <= fast.estimate <= fast.high


# ------------------------------------------------------------------------ bootstrap


def test_bootstrap_contains_estimate_is_reproducible_and_shrinks():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=25), rng.normal(size=400)
    first = bootstrap_ci(small, seed=5)
    assert first == bootstrap_ci(small, seed=5)
    assert first != bootstrap_ci(small, seed=6)
    assert first.low < first.estimate < first.high
    assert first.estimate == pytest.approx(small.mean())
    wide = first.high - first.low
    narrow = bootstrap_ci(large, seed=5)
    assert narrow.high - narrow.low < 0.5 * wide  # width ~ 1 / sqrt(n): ratio ~ 1/4
    assert bootstrap_ci(torch.tensor(small), seed=5) == pytest.approx(first)


def test_bootstrap_matches_scipy_percentile_interval():
    values = np.random.default_rng(1).exponential(size=60)
    ours = bootstrap_ci(values, n_boot=20000, confidence=0.9, seed=2)
    theirs = scipy.stats.bootstrap(
        (values,), np.mean, n_resamples=20000, confidence_level=0.9, method="percentile", rng=3
    ).confidence_interval
    # Monte-Carlo error of a 5 % quantile over 20000 resamples is about 0.003 here.
    assert ours.low == pytest.approx(theirs.low, abs=0.015)
    assert ours.high == pytest.approx(theirs.high, abs=0.015)


def test_bootstrap_generic_statistic_over_items():
    cases = [(2, 3), (0, 1), (4, 4)]
    result = bootstrap_ci(cases, lambda s: sum(h for h, _ in s) / sum(n for _, n in s), seed=0)
    assert result.estimate == 0.75
    assert 0.0 <= result.low <= result.high <= 1.0
    assert all(math.isnan(v) for v in bootstrap_ci(np.zeros(0)))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(np.ones(3), confidence=1.0)


# ---------------------------------------------------------------------- calibration


def test_reliability_bins_and_calibration_errors_hand_worked():
    probabilities = [0.05, 0.15, 0.3, 0.35, 0.5, 0.95, 1.0]
    outcomes = [0, 0, 1, 0, 1, 1, 1]
    bins = reliability_bins(probabilities, outcomes, n_bins=4)
    # Bins [0, .25): 0.05, 0.15 | [.25, .5): 0.3, 0.35 | [.5, .75): 0.5 | [.75, 1]: 0.95, 1.
    assert bins.count.tolist() == [2, 2, 1, 2]
    np.testing.assert_allclose(bins.edges, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(bins.confidence, [0.1, 0.325, 0.5, 0.975])
    np.testing.assert_allclose(bins.accuracy, [0.0, 0.5, 1.0, 1.0])
    # Gaps 0.1, 0.175, 0.5, 0.025; ECE = (2*0.1 + 2*0.175 + 1*0.5 + 2*0.025) / 7.
    ece = expected_calibration_error(probabilities, outcomes, n_bins=4)
    assert ece == pytest.approx((0.2 + 0.35 + 0.5 + 0.05) / 7)
    assert maximum_calibration_error(probabilities, outcomes, n_bins=4) == pytest.approx(0.5)
    empty_bins = reliability_bins([0.9], [1], n_bins=3)
    assert empty_bins.count.tolist() == [0, 0, 1] and np.isnan(empty_bins.accuracy[0])
    assert json.dumps(empty_bins.to_dict(), allow_nan=False)
    assert math.isnan(expected_calibration_error([], [], n_bins=3))
    with pytest.raises(ValueError, match="probabilities"):
        reliability_bins([1.2], [1])
    with pytest.raises(ValueError, match="outcomes"):
        reliability_bins([0.2], [2])


def test_ece_of_calibrated_and_overconfident_samples():
    rng = np.random.default_rng(4)
    probabilities = rng.uniform(size=100_000)
    calibrated = rng.uniform(size=probabilities.size) < probabilities
    # Per bin the outcome rate has standard error <= sqrt(0.25 / 10000) = 0.005.
    assert expected_calibration_error(probabilities, calibrated) < 0.01
    # Outcomes occur 0.15 less often than stated (probabilities drawn from [0.15, 1]).
    stated = rng.uniform(0.15, 1.0, size=100_000)
    overconfident = rng.uniform(size=stated.size) < stated - 0.15
    assert expected_calibration_error(stated, overconfident) == pytest.approx(0.15, abs=0.01)
    assert maximum_calibration_error(stated, overconfident) == pytest.approx(0.15, abs=0.03)


def test_detection_outcomes_feed_calibration():
    matches = match_points([[0.0, 0.0], [9.0, 9.0], [4.0, 4.0]], [[0.0, 1.0], [4.0, 4.0]], 2.0)
    assert matches.pred_matched.tolist() == [True, False, True]
    ece = expected_calibration_error([0.9, 0.2, 0.6], matches.pred_matched, n_bins=2)
    # Bin [0, .5): 0.2 vs 0 -> 0.2; bin [.5, 1]: 0.75 vs 1 -> 0.25; (0.2 + 2 * 0.25) / 3.
    assert ece == pytest.approx(0.7 / 3)


# ---------------------------------------------------------------------- uncertainty


def test_binary_entropy_matches_scipy():
    p = np.array([0.0, 0.01, 0.3, 0.5, 0.8, 1.0])
    expected = [scipy.stats.entropy([q, 1 - q], base=2) for q in p]
    np.testing.assert_allclose(binary_entropy(p), expected, atol=1e-12)
    assert binary_entropy(torch.tensor([[0.5]])).shape == (1, 1)


def test_accuracy_by_certainty_hand_worked_with_ties():
    correct = [True, False, True, True, False]
    uncertainty = [0.5, 0.1, 0.1, 0.9, 0.7]
    curve = accuracy_by_certainty(correct, uncertainty)
    # Sorted: {0.1: F, T} (tied), 0.5: T, 0.7: F, 0.9: T.
    # k=1: half the tie group -> 0.5 correct; k=2: 1; k=3: 2; k=4: 2; k=5: 3.
    assert curve.retained.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(curve.accuracy, [0.5, 0.5, 2 / 3, 0.5, 0.6])
    permutation = [4, 2, 0, 3, 1]
    shuffled = accuracy_by_certainty(
        np.take(correct, permutation), np.take(uncertainty, permutation)
    )
    np.testing.assert_allclose(shuffled.accuracy, curve.accuracy)
    by_fraction = accuracy_by_certainty(correct, uncertainty, fractions=[0.1, 0.5, 1.0])
    assert by_fraction.retained.tolist() == [1, 3, 5]  # round(0.5 * 5) = 3, halves up
    np.testing.assert_allclose(by_fraction.accuracy, [0.5, 2 / 3, 0.6])
    assert accuracy_by_certainty([], []).accuracy.shape == (0,)


# --------------------------------------------------------------------------- counts


def test_count_metrics_hand_worked():
    pred = [0.2, 1.0, 1.5, 3.0, 5.6, 9.0, 0.0, 2.0]
    truth = [0, 0, 2, 3, 4, 7, 1, 2]
    # Rounded (halves up): 0, 1, 2, 3, 6, 9, 0, 2 -> equal to the truth at 4 of 8 images.
    assert count_accuracy(pred, truth) == pytest.approx(4 / 8)
    assert count_mae(pred, truth) == pytest.approx((0.2 + 1 + 0.5 + 0 + 1.6 + 2 + 1 + 0) / 8)
    # Classes (truth -> pred): 0->0, 0->1, 2->2, 3->3, 4+->4+, 4+->4+, 1->0, 2->2.
    #   class 0: TP 1, FP 1, FN 1 -> 2/4     class 1: TP 0, FP 1, FN 1 -> 0
    #   class 2: TP 2 -> 1    class 3: TP 1 -> 1    class 4+: TP 2 -> 1
    f1 = count_f1(pred, truth)
    assert f1 == pytest.approx((0.5 + 0 + 1 + 1 + 1) / 5)
    # With bins (0, 2): classes "0-1" and ">= 2". 0->0, 0->0, 2->2, 3->2, 4->2, 7->2, 1->0, 2->2.
    assert count_f1(pred, truth, bins=(0, 2)) == 1.0
    # A class only in the prediction counts: class 0 has TP 2, FN 1 -> 4/5; class 1 -> 0.
    assert count_f1([0, 0, 1], [0, 0, 0]) == pytest.approx(0.4)
    summary = count_metrics(pred, truth)
    assert summary.to_dict() == {
        "accuracy": pytest.approx(0.5),
        "mae": pytest.approx(6.3 / 8),
        "f1": pytest.approx(0.7),
        "n_cases": 8,
    }
    assert math.isnan(count_f1([], []))
    with pytest.raises(ValueError, match="truth"):
        count_accuracy([1], [1.5])
    with pytest.raises(ValueError, match="bins"):
        count_f1([1], [1], bins=(2, 1))


def test_count_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    truth = rng.poisson(2.0, size=200)
    pred = np.clip(truth + rng.integers(-1, 2, size=200), 0, None)
    classes = np.minimum(truth, 4), np.minimum(pred, 4)
    expected = sklearn_metrics.f1_score(*classes, average="macro")
    assert count_f1(pred, truth) == pytest.approx(expected)
