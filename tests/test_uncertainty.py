"""Lesion-level uncertainty: the entropy of fitted amplitudes, and MC-dropout summaries
per lesion checked by hand, against a plain per-lesion loop, and with dropout off."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from weaklesion.detection import Detections, component_detections, fit_gaussians
from weaklesion.inference import predict_image
from weaklesion.metrics import accuracy_by_certainty, binary_entropy, match_points
from weaklesion.models import UNet
from weaklesion.targets import gaussian_window
from weaklesion.uncertainty import (
    SAMPLE_EXTRAS,
    lesion_entropy,
    lesion_uncertainty_from_samples,
    mc_dropout_lesion_uncertainty,
)


def entropy(p: float) -> float:
    """Binary entropy in bits, written out."""
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


# ----------------------------------------------------------------- heatmap amplitudes


def planted_heatmap():
    heatmap = np.zeros((12, 40, 40))
    truth = [((3.0, 6.0, 6.0), 0.95), ((6.0, 20.0, 20.0), 0.5), ((9.0, 32.0, 30.0), 0.2)]
    for centre, amplitude in truth:
        window, values = gaussian_window(centre, (1.0, 1.0, 1.0), heatmap.shape)
        heatmap[window] += amplitude * values
    return heatmap, truth


def test_lesion_entropy_is_the_binary_entropy_of_the_fitted_amplitudes():
    heatmap, truth = planted_heatmap()
    found = fit_gaussians(heatmap, sigma=1.0)
    assert len(found) == 3
    np.testing.assert_allclose(found.scores, [a for _, a in truth], atol=1e-3)
    values = lesion_entropy(found)
    np.testing.assert_array_equal(values, binary_entropy(found.scores))
    np.testing.assert_allclose(values, [entropy(p) for p in found.scores], atol=1e-12)
    assert np.argmax(values) == 1  # the lesion of amplitude 0.5 is the least certain


def test_lesion_entropy_of_plain_scores_and_of_nothing():
    np.testing.assert_allclose(lesion_entropy([0.0, 0.25, 1.0]), [0, entropy(0.25), 0])
    assert lesion_entropy(Detections.empty(3)).shape == (0,)
    with pytest.raises(ValueError, match="probabilities"):
        lesion_entropy([0.5, 1.2])
    with pytest.raises(ValueError, match="detections"):
        lesion_entropy(np.zeros((2, 2)))


def test_certain_lesions_are_right_more_often_on_a_planted_heatmap():
    """Amplitudes as existence probabilities: the accuracy of the k most certain detections."""
    heatmap, truth = planted_heatmap()
    found = fit_gaussians(heatmap, sigma=1.0)
    # Only the two strongest planted lesions are real; the 0.2 one is a false alarm.
    real = np.array([centre for centre, amplitude in truth if amplitude > 0.3])
    correct = match_points(found.points, real, max_distance=2.0).pred_matched
    curve = accuracy_by_certainty(correct, lesion_entropy(found))
    # Entropy order: 0.95 (real), 0.2 (false alarm), 0.5 (real).
    np.testing.assert_allclose(curve.accuracy, [1.0, 0.5, 2 / 3])


# ------------------------------------------------------------------ Monte-Carlo samples


def test_sample_summary_matches_a_hand_computation():
    samples = np.zeros((2, 3, 6))
    samples[0, 0, :2] = [0.9, 0.8]  # lesion A: two voxels, sample maxima 0.9 and 0.7
    samples[1, 0, :2] = [0.7, 0.2]
    samples[0, 2, 4] = 0.4  # lesion B: one voxel, 0.4 then 0.8
    samples[1, 2, 4] = 0.8
    samples[:, 2, 0] = [0.6, 0.2]  # mean 0.4: no lesion
    found = lesion_uncertainty_from_samples(samples, threshold=0.5)
    # Mean map: A = [0.8, 0.5] (0.5 is not above the threshold), B = 0.6.
    np.testing.assert_array_equal(found.points, [[0, 0], [2, 4]])
    np.testing.assert_allclose(found.scores, [0.8, 0.6])
    np.testing.assert_array_equal(found.extras["size"], [1, 1])
    np.testing.assert_allclose(found.extras["detected_fraction"], [1.0, 0.5])
    np.testing.assert_allclose(found.extras["probability_std"], [0.1, 0.2])
    np.testing.assert_allclose(found.extras["entropy"], [entropy(0.8), entropy(0.6)])
    np.testing.assert_allclose(
        found.extras["mutual_information"],
        [
            entropy(0.8) - (entropy(0.9) + entropy(0.7)) / 2,
            entropy(0.6) - (entropy(0.4) + entropy(0.8)) / 2,
        ],
    )
    # A lower threshold joins both voxels of A; the region's maximum per sample stays.
    joined = lesion_uncertainty_from_samples(samples, threshold=0.3)
    assert joined.extras["size"][0] == 2
    np.testing.assert_allclose(joined.scores[0], 0.8)


def loop_summary(samples: np.ndarray, threshold: float) -> dict[tuple, dict[str, float]]:
    """Per lesion, keyed by its peak voxel, the summary computed one lesion at a time."""
    mean = samples.mean(axis=0)
    labels, count = ndimage.label(mean > threshold, np.ones((3,) * mean.ndim))
    result = {}
    for label in range(1, count + 1):
        region = labels == label
        peak = np.unravel_index(np.argmax(np.where(region, mean, -1)), mean.shape)
        p = np.array([sample[region].max() for sample in samples])
        result[tuple(float(c) for c in peak)] = {
            "score": p.mean(),
            "size": region.sum(),
            "detected_fraction": np.mean(p > threshold),
            "probability_std": p.std(),
            "entropy": entropy(p.mean()),
            "mutual_information": entropy(p.mean()) - np.mean([entropy(v) for v in p]),
        }
    return result


@pytest.mark.parametrize("shape", [(5, 16, 16), (24, 24)])
def test_sample_summary_matches_a_per_lesion_loop(shape):
    rng = np.random.default_rng(1)
    smooth = ndimage.gaussian_filter(rng.random((7, *shape)), (0, *[1.0] * len(shape)))
    samples = np.clip((smooth - smooth.mean()) * 8 + 0.3, 0, 1)
    found = lesion_uncertainty_from_samples(samples, threshold=0.5)
    expected = loop_summary(samples, 0.5)
    assert len(found) == len(expected) > 3
    assert np.all(np.diff(found.scores) <= 0)
    for i, point in enumerate(found.points):
        reference = expected[tuple(point)]
        assert found.scores[i] == pytest.approx(reference["score"])
        for name in SAMPLE_EXTRAS:
            assert found.extras[name][i] == pytest.approx(reference[name], abs=1e-12), name


def test_samples_without_lesions_and_bad_samples():
    found = lesion_uncertainty_from_samples(np.full((3, 4, 5, 6), 0.2))
    assert len(found) == 0 and found.points.shape == (0, 3)
    assert sorted(found.extras) == sorted(SAMPLE_EXTRAS)
    with pytest.raises(ValueError, match="samples"):
        lesion_uncertainty_from_samples(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="samples"):
        lesion_uncertainty_from_samples(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="probabilities"):
        lesion_uncertainty_from_samples(np.full((2, 4, 4), 1.5))
    with pytest.raises(ValueError, match="threshold"):
        lesion_uncertainty_from_samples(np.zeros((2, 4, 4)), threshold=1.0)


# ----------------------------------------------------------------------- MC dropout


def blob_image(shape=(8, 16, 16)) -> np.ndarray:
    image = np.zeros((1, *shape), np.float32)
    image[0, 2:4, 3:6, 3:6] = 1.0
    image[0, 5:7, 10:12, 9:13] = 0.6
    return image


def test_dropout_off_gives_zero_uncertainty():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 1, 1), nn.Dropout(p=0.0))
    with torch.no_grad():
        net[0].weight.fill_(6.0)
        net[0].bias.fill_(-2.0)
    image = blob_image()
    found = mc_dropout_lesion_uncertainty(net, image, samples=5)
    assert len(found) == 2
    np.testing.assert_array_equal(found.extras["detected_fraction"], 1.0)
    np.testing.assert_array_equal(found.extras["probability_std"], 0.0)
    np.testing.assert_array_equal(found.extras["mutual_information"], 0.0)
    # The lesions and probabilities are those of the deterministic prediction.
    plain = component_detections(predict_image(net, image, "segmentation").map, 0.5)
    np.testing.assert_array_equal(found.points, plain.points)
    np.testing.assert_allclose(found.scores, plain.scores, rtol=1e-6)
    np.testing.assert_allclose(found.extras["entropy"], binary_entropy(plain.scores), atol=1e-6)


def test_dropout_on_summarises_the_mc_samples_of_predict_image():
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, features=(4, 8), dropout=0.5).eval()
    with torch.no_grad():
        net.head.bias.fill_(2.0)  # plenty of voxels above 0.5
    image = blob_image()
    found = mc_dropout_lesion_uncertainty(net, image, samples=6, seed=3)
    samples = predict_image(net, image, "segmentation", mc_samples=6, seed=3).samples
    expected = lesion_uncertainty_from_samples(samples, 0.5)
    assert len(found) == len(expected) > 0
    np.testing.assert_array_equal(found.points, expected.points)
    np.testing.assert_array_equal(
        found.extras["mutual_information"], expected.extras["mutual_information"]
    )
    assert found.extras["mutual_information"].max() > 0  # the samples differ
    assert not net.training  # left in eval mode


def test_mc_dropout_needs_dropout_and_samples():
    with pytest.raises(ValueError, match="no dropout layer"):
        mc_dropout_lesion_uncertainty(nn.Conv2d(1, 1, 1), np.zeros((1, 8, 8)), samples=3)
    with pytest.raises(ValueError, match="samples: got 0"):
        mc_dropout_lesion_uncertainty(nn.Conv2d(1, 1, 1), np.zeros((1, 8, 8)), samples=0)
