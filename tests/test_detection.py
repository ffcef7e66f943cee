"""Detectors: planted lesions are found, results equal straightforward references and
SciPy, and detections survive CSV/JSON round trips."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from nibabel.affines import apply_affine
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

import weaklesion.detection as detection
from weaklesion.detection import (
    Detections,
    component_detections,
    count_guided_detections,
    count_guided_threshold,
    fit_gaussians,
    peak_detections,
    read_detections_csv,
    write_detections_csv,
)
from weaklesion.targets import gaussian_window

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def planted(shape, centres, amplitudes, sigma):
    """Sum of mass-1 Gaussians (``gaussian_window``) with the given amplitudes."""
    heatmap = np.zeros(shape)
    for centre, amplitude in zip(centres, amplitudes, strict=True):
        window, values = gaussian_window(centre, sigma, shape)
        heatmap[window] += amplitude * values
    return heatmap


def matched_errors(found: Detections, centres, amplitudes):
    """Centre and amplitude errors of the truth matched to detections (Hungarian)."""
    centres = np.asarray(centres, dtype=float)
    distance = np.linalg.norm(found.points[:, None] - centres[None], axis=2)
    rows, columns = linear_sum_assignment(distance)
    assert len(columns) == len(centres), "a planted lesion was not found"
    unmatched = np.setdiff1d(np.arange(len(found)), rows)
    return (
        np.abs(found.points[rows] - centres[columns]).max(),
        np.abs(found.extras["amplitude"][rows] - np.asarray(amplitudes)[columns]).max(),
        found.extras["amplitude"][unmatched],
    )


def separated_centres(rng, shape, count, min_distance, margin=0.0, order=2):
    """Random sub-voxel centres at least ``min_distance`` voxels apart (``order`` norm)."""
    centres = []
    while len(centres) < count:
        candidate = rng.uniform(margin, np.array(shape) - 1 - margin)
        if all(np.linalg.norm(candidate - c, ord=order) >= min_distance for c in centres):
            centres.append(candidate)
    return np.array(centres)


def reference_fit_gaussians(heatmap, sigma, stop=0.01, max_lesions=1000):
    """The plain algorithm: arg-max of the whole residual at every step, same fit."""
    residual = np.array(heatmap, dtype=float)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), (residual.ndim,))
    half = np.ceil(2 * sigma).astype(int)
    centres, amplitudes, sums = [], [], []
    for _ in range(max_lesions):
        peak = np.unravel_index(np.argmax(residual), residual.shape)
        start = [max(p - h, 0) for p, h in zip(peak, half, strict=True)]
        window = tuple(
            slice(s, min(p + h + 1, n))
            for s, p, h, n in zip(start, peak, half, residual.shape, strict=True)
        )
        values = residual[window].copy()
        alpha, mu = detection._fit_gaussian(values, start, peak, sigma)
        if alpha < stop:
            break
        centres.append(mu)
        amplitudes.append(alpha)
        sums.append(values.sum())
        support, density = gaussian_window(mu, sigma, residual.shape)
        residual[support] -= alpha * density
    amplitudes = np.array(amplitudes)
    order = np.argsort(-amplitudes, kind="stable")
    centres = np.array(centres).reshape(-1, residual.ndim)
    return centres[order], amplitudes[order], np.array(sums)[order]


# --------------------------------------------------------------------------------------
# fit_gaussians
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24, 40, 36), (64, 72)])
@pytest.mark.parametrize("sigma", [1.0, 1.6])
def test_fit_gaussians_recovers_isolated_lesions(shape, sigma):
    rng = np.random.default_rng(len(shape) + int(10 * sigma))
    centres = separated_centres(rng, shape, 8, min_distance=6 * sigma, margin=2)
    amplitudes = rng.uniform(0.3, 1.0, len(centres))
    heatmap = planted(shape, centres, amplitudes, (sigma,) * len(shape))
    found = fit_gaussians(heatmap, sigma)
    centre_error, amplitude_error, _ = matched_errors(found, centres, amplitudes)
    assert len(found) == len(centres)
    assert centre_error < 0.01 and amplitude_error < 1e-3  # required: 0.25 and 0.02
    assert np.all(np.diff(found.scores) <= 0)  # sorted, highest first
    np.testing.assert_array_equal(found.scores, np.clip(found.extras["amplitude"], 0, 1))
    # Lesions 6 sigma apart have no linked neighbour: refinement leaves them as they are.
    greedy = fit_gaussians(heatmap, sigma, refine=False)
    np.testing.assert_array_equal(found.points, greedy.points)
    np.testing.assert_array_equal(found.extras["amplitude"], greedy.extras["amplitude"])


def pair(rng, dims, separation, sigma, oblique):
    """Two centres ``separation`` sigmas apart (in sigma units per axis) near the middle."""
    direction = rng.normal(size=dims) if oblique else np.eye(dims)[rng.integers(dims)]
    first = np.full(dims, 13.5) + rng.uniform(-0.5, 0.5, dims)
    return np.array([first, first + separation * sigma * direction / np.linalg.norm(direction)])


@pytest.mark.parametrize("separation", [2.0, 3.0, 4.0])
def test_fit_gaussians_recovers_touching_pairs(separation):
    # At 2 sigma apart the sum of the two Gaussians is flat-topped; at 4 sigma the
    # fitting windows (half-width 2 sigma) touch.
    rng = np.random.default_rng(int(separation))
    greedy_errors = []
    for dims in (2, 3):
        for sigma in (1.0, 1.5, 2.0):
            sigmas = np.full(dims, sigma)
            for amplitudes in ([0.8, 0.8], [1.0, 0.5], rng.uniform(0.5, 1.0, 2)):
                for oblique in (False, True):
                    centres = pair(rng, dims, separation, sigmas, oblique)
                    heatmap = planted((28,) * dims, centres, amplitudes, sigmas)
                    found = fit_gaussians(heatmap, sigma)
                    centre_error, amplitude_error, _ = matched_errors(found, centres, amplitudes)
                    assert len(found) == 2
                    # Required: 0.25 voxel and 0.02; measured below 1e-3.
                    assert centre_error < 0.01 and amplitude_error < 0.002
                    greedy = fit_gaussians(heatmap, sigma, refine=False)
                    greedy_errors.append(matched_errors(greedy, centres, amplitudes)[0])
    if separation == 2:
        assert max(greedy_errors) > 1.0  # the greedy pass alone lands between them


@pytest.mark.parametrize("dims", [2, 3])
def test_fit_gaussians_recovers_touching_triples(dims):
    rng = np.random.default_rng(dims)
    for sigma in (1.0, 1.5):
        for shape_name in ("triangle", "chain"):
            for _ in range(3):
                u = rng.normal(size=dims)
                u /= np.linalg.norm(u)
                v = rng.normal(size=dims)
                v -= (v @ u) * u
                v /= np.linalg.norm(v)
                first = np.full(dims, 13.5) + rng.uniform(-0.5, 0.5, dims)
                if shape_name == "triangle":
                    steps = [np.zeros(dims), u, 0.5 * u + np.sqrt(3) / 2 * v]
                else:
                    steps = [-u, np.zeros(dims), u]
                centres = first + 2 * sigma * np.array(steps)  # 2 sigma between neighbours
                amplitudes = rng.uniform(0.5, 1.0, 3)
                found = fit_gaussians(
                    planted((28,) * dims, centres, amplitudes, (sigma,) * dims), sigma
                )
                centre_error, amplitude_error, _ = matched_errors(found, centres, amplitudes)
                assert len(found) == 3 and centre_error < 0.01 and amplitude_error < 0.002


@pytest.mark.parametrize(
    ("shape", "sigma", "count", "seed"),
    [
        ((48, 48), 1.5, 40, 0),
        ((40, 40), 2.0, 28, 1),
        ((24, 40, 40), 1.0, 60, 2),
        ((24, 32, 32), 2.0, 24, 3),
        # Dense: the greedy pass gives one lesion's side fits to its neighbours, and only
        # splitting a refined fit in two recovers it.
        ((48, 48), 2.0, 40, 10),
    ],
)
def test_fit_gaussians_recovers_random_lesions_two_sigma_apart(shape, sigma, count, seed):
    # Most of these maps hold clusters of more than 16 fits, refined in slabs.
    rng = np.random.default_rng(seed)
    centres = separated_centres(rng, shape, count, min_distance=2 * sigma, margin=-0.5)
    amplitudes = rng.uniform(0.5, 1.0, count)
    found = fit_gaussians(planted(shape, centres, amplitudes, (sigma,) * len(shape)), sigma)
    centre_error, amplitude_error, extra = matched_errors(found, centres, amplitudes)
    assert centre_error < 0.25 and amplitude_error < 0.02 and np.all(extra < 0.05)


def test_fit_gaussians_recovers_touching_pairs_at_the_border():
    sigma = 1.5
    cases = [
        [(-0.5, 10.0), (-0.5, 13.0)],  # along an edge, centres on it
        [(0.0, 0.0), (2.1, 2.1)],  # at a corner, diagonal
        [(27.5, 5.2), (24.5, 5.2)],  # across an edge
    ]
    for centres in cases:
        found = fit_gaussians(planted((28, 30), centres, [0.9, 0.6], (sigma, sigma)), sigma)
        centre_error, amplitude_error, _ = matched_errors(found, centres, [0.9, 0.6])
        assert len(found) == 2 and centre_error < 0.01 and amplitude_error < 0.002
    centres = [(0.0, 10.3, 12.0), (0.0, 13.3, 12.0)]
    found = fit_gaussians(planted((16, 24, 24), centres, [0.7, 0.7], (sigma,) * 3), sigma)
    centre_error, amplitude_error, _ = matched_errors(found, centres, [0.7, 0.7])
    assert len(found) == 2 and centre_error < 0.01 and amplitude_error < 0.002


def test_fit_gaussians_recovers_touching_pairs_with_anisotropic_spacing():
    spacing = np.array([3.0, 1.0, 1.0])
    sigma_mm = 3.0
    sigmas = sigma_mm / spacing  # 1 voxel along z, 3 voxels in-plane
    rng = np.random.default_rng(4)
    for oblique in (False, True, True, True):
        centres = pair(rng, 3, 2.0, sigmas, oblique) + np.array([0, 12, 12])
        amplitudes = rng.uniform(0.5, 1.0, 2)
        heatmap = planted((28, 52, 52), centres, amplitudes, sigmas)
        found = fit_gaussians(heatmap, sigma_mm, spacing=tuple(spacing))
        centre_error, amplitude_error, _ = matched_errors(found, centres, amplitudes)
        assert len(found) == 2 and centre_error < 0.01 and amplitude_error < 0.002


def test_fit_gaussians_refinement_window_sums_come_from_the_greedy_fits():
    # A lesion made of merged greedy fits carries the sum of their window sums; fits
    # that drop out carry theirs away.
    heatmap = planted((24, 24), [(11.0, 9.0), (11.0, 12.0)], [0.9, 0.7], (1.5, 1.5))
    greedy = fit_gaussians(heatmap, 1.5, refine=False).extras["window_sum"]
    refined = fit_gaussians(heatmap, 1.5).extras["window_sum"]
    assert len(greedy) == 3 and len(refined) == 2
    owners = itertools.product(range(-1, len(refined)), repeat=len(greedy))
    sums = [np.bincount(np.array(o)[np.array(o) >= 0], greedy[np.array(o) >= 0], 2) for o in owners]
    assert any(np.allclose(s, refined, rtol=1e-12, atol=0) for s in sums)


def test_fit_gaussians_refinement_on_noise_lowers_the_error_and_keeps_the_limits():
    rng = np.random.default_rng(6)
    shape, sigma = (20, 32, 32), 1.3
    centres = rng.uniform(0, np.array(shape) - 1, (12, 3))
    amplitudes = rng.uniform(0.2, 1.0, 12)
    heatmap = planted(shape, centres, amplitudes, (sigma,) * 3) + rng.uniform(0, 1e-3, shape)
    errors = []
    for refine in (False, True):
        found = fit_gaussians(heatmap, sigma, stop=0.005, refine=refine)
        model = planted(shape, found.points, found.extras["amplitude"], (sigma,) * 3)
        errors.append(np.sum((heatmap - model) ** 2))
        assert np.all(found.extras["amplitude"] >= 0.005)
    assert errors[1] < errors[0]  # the joint fit is a better least-squares fit
    for max_lesions in (1, 7):
        assert (
            len(fit_gaussians(heatmap, sigma, stop=0.005, max_lesions=max_lesions)) <= max_lesions
        )


def test_fit_gaussians_recovers_lesions_at_the_border():
    shape = (20, 24, 28)
    for sigma in (1.0, 1.7):
        for axis in range(3):
            size = shape[axis]
            for coordinate in (0.0, -0.5, size - 1.0, size - 0.5):
                centre = np.array([10.2, 11.7, 13.4])
                centre[axis] = coordinate
                heatmap = planted(shape, [centre], [0.6], (sigma,) * 3)
                found = fit_gaussians(heatmap, sigma)
                assert len(found) == 1
                np.testing.assert_allclose(found.points[0], centre, atol=1e-4)
                np.testing.assert_allclose(found.extras["amplitude"], [0.6], atol=1e-4)
    corners = [(-0.5, -0.5), (71.5, 63.5), (0.0, 63.0)]
    found = fit_gaussians(planted((72, 64), corners, [0.5, 0.8, 1.0], (1.2, 1.2)), 1.2)
    centre_error, amplitude_error, _ = matched_errors(found, corners, [0.5, 0.8, 1.0])
    assert len(found) == 3 and centre_error < 1e-4 and amplitude_error < 1e-4


def test_fit_gaussians_with_anisotropic_spacing_in_mm():
    spacing = (3.0, 1.0, 1.0)
    sigma_mm = 3.0  # 1 voxel along z, 3 voxels in-plane
    rng = np.random.default_rng(3)
    shape = (20, 48, 48)
    centres = []
    while len(centres) < 5:
        candidate = rng.uniform(1, np.array(shape) - 2)
        if all(np.linalg.norm((candidate - c) * spacing) >= 6 * sigma_mm for c in centres):
            centres.append(candidate)
    amplitudes = rng.uniform(0.3, 1.0, 5)
    heatmap = planted(shape, centres, amplitudes, np.full(3, sigma_mm) / spacing)
    found = fit_gaussians(heatmap, sigma_mm, spacing=spacing)
    centre_error, amplitude_error, _ = matched_errors(found, centres, amplitudes)
    assert len(found) == 5 and centre_error < 0.25 and amplitude_error < 0.02
    # The same sigma taken as voxels is the wrong width: the fit is then visibly off.
    wrong = np.sort(fit_gaussians(heatmap, sigma_mm).extras["amplitude"])
    assert len(wrong) != 5 or not np.allclose(wrong, np.sort(amplitudes), atol=0.02)


def test_fit_gaussians_window_sum_is_the_residual_mass_in_the_window():
    shape = (30, 30)
    heatmap = planted(shape, [(12.3, 14.6)], [0.7], (1.5, 1.5))
    found = fit_gaussians(heatmap, 1.5)
    # Window of half-width ceil(2 * 1.5) = 3 voxels around the maximum (12, 15).
    np.testing.assert_allclose(found.extras["window_sum"], [heatmap[9:16, 12:19].sum()])


def test_fit_gaussians_stops_on_empty_maps():
    for shape in [(10, 12, 14), (16, 16)]:
        found = fit_gaussians(np.zeros(shape), 1.0)
        assert len(found) == 0 and found.points.shape == (0, len(shape))
        assert set(found.extras) == {"amplitude", "window_sum"}
    assert fit_gaussians(np.zeros((0, 5)), 1.0).points.shape == (0, 2)
    heatmap = planted((20, 20), [(5, 5), (14, 14)], [0.9, 0.8], (1.0, 1.0))
    assert len(fit_gaussians(heatmap, 1.0, max_lesions=1)) == 1
    assert len(fit_gaussians(heatmap, 1.0, max_lesions=0)) == 0
    assert len(fit_gaussians(heatmap, 1.0, stop=0.85)) == 1


@pytest.mark.parametrize(
    ("shape", "seed", "noise"),
    [
        ((24, 40, 36), 0, 2e-3),
        ((13, 37, 41), 1, 2e-3),
        ((7, 9, 5), 2, 2e-3),
        ((50, 60), 3, 2e-3),
        ((20, 1500), 4, 2e-3),
        ((24, 40, 36), 5, 0.0),
        ((50, 60), 6, 0.0),
    ],
)
def test_fit_gaussians_equals_the_plain_algorithm(shape, seed, noise):
    rng = np.random.default_rng(seed)
    count = max(3, int(np.prod(shape) / 1500))
    sigma = rng.uniform(0.8, 1.6, len(shape))
    centres = rng.uniform(-0.5, np.array(shape) - 0.5, size=(count, len(shape)))
    amplitudes = rng.uniform(0.05, 1.2, count)
    if noise == 0:
        # Centres between voxels: 2^D voxels tie for each isolated lesion's maximum; the
        # highest lesion is kept clear of the others so that its tie is exact.
        centres = np.clip(np.floor(centres) + 0.5, 0.5, np.array(shape) - 1.5)
        clear = np.abs(centres - centres[0]).max(axis=1) > 2 * np.ceil(4 * sigma.max()) + 1
        clear[0] = True
        centres, amplitudes = centres[clear], amplitudes[clear]
        amplitudes[0] = 2.0
    heatmap = planted(shape, centres, amplitudes, sigma)
    if noise == 0:
        assert (heatmap == heatmap.max()).sum() == 2 ** len(shape)
    heatmap += rng.uniform(0, noise, shape)  # noise: many more, less regular fits
    for values in (heatmap, heatmap.astype(np.float32)):
        expected = reference_fit_gaussians(values, sigma, stop=0.003, max_lesions=60)
        found = fit_gaussians(values, sigma, stop=0.003, max_lesions=60, refine=False)
        assert len(found) == len(expected[0]) >= len(centres) // 2
        np.testing.assert_array_equal(found.points, expected[0])
        np.testing.assert_array_equal(found.extras["amplitude"], expected[1])
        np.testing.assert_allclose(found.extras["window_sum"], expected[2], rtol=1e-12)


def test_fit_gaussians_accepts_tensors():
    heatmap = planted((20, 24, 24), [(8.2, 9.9, 12.4)], [0.8], (1.0, 1.0, 1.0))
    found = fit_gaussians(torch.from_numpy(heatmap), torch.tensor(1.0))
    np.testing.assert_array_equal(found.points, fit_gaussians(heatmap, 1.0).points)


def test_fit_gaussians_rejects_bad_input():
    heatmap = np.zeros((8, 8))
    for bad in (np.nan, np.inf, -np.inf):
        values = heatmap.copy()
        values[3, 4] = bad
        with pytest.raises(ValueError, match="heatmap: 1 value"):
            fit_gaussians(values, 1.0)
    with pytest.raises(ValueError, match="heatmap: has shape"):
        fit_gaussians(np.zeros(8), 1.0)
    with pytest.raises(ValueError, match="heatmap: has shape"):
        fit_gaussians(np.zeros((1, 8, 8, 8)), 1.0)
    for sigma in (0.0, -1.0, np.nan, (1.0, 2.0, 3.0)):
        with pytest.raises(ValueError, match="sigma"):
            fit_gaussians(heatmap, sigma)
    with pytest.raises(ValueError, match="spacing"):
        fit_gaussians(heatmap, 1.0, spacing=(1.0, 0.0))
    for window in (0, (2, 2, 2), 1.5):
        with pytest.raises(ValueError, match="window"):
            fit_gaussians(heatmap, 1.0, window=window)


# --------------------------------------------------------------------------------------
# component_detections
# --------------------------------------------------------------------------------------

STRUCTURES = {4: (2, 1), 8: (2, 2), 6: (3, 1), 18: (3, 2), 26: (3, 3)}


@pytest.mark.parametrize(
    ("shape", "connectivity"),
    [((40, 50), 4), ((40, 50), 8), ((16, 20, 24), 6), ((16, 20, 24), 18), ((16, 20, 24), 26)],
)
def test_component_detections_agree_with_scipy(shape, connectivity):
    rng = np.random.default_rng(connectivity)
    prob = ndimage.gaussian_filter(rng.random(shape), 1.2)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    threshold = np.quantile(prob, 0.8)
    structure = ndimage.generate_binary_structure(*STRUCTURES[connectivity])
    labels, count = ndimage.label(prob > threshold, structure=structure)
    index = np.arange(1, count + 1)
    size = ndimage.sum_labels(np.ones(shape), labels, index)
    assert count > 3

    def by_position(points, *columns):
        order = np.lexsort(points.T[::-1])
        return (points[order], *(c[order] for c in columns))

    found = component_detections(prob, threshold, connectivity=connectivity)
    expected = np.array(ndimage.maximum_position(prob, labels, index), dtype=float)
    got = by_position(found.points, found.scores, found.extras["size"])
    want = by_position(expected, ndimage.maximum(prob, labels, index), size)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b)

    found = component_detections(
        prob, threshold, connectivity, min_size=5, location="center_of_mass", score="mean"
    )
    keep = size >= 5
    expected = np.array(ndimage.center_of_mass(prob, labels, index))[keep]
    got = by_position(found.points, found.scores, found.extras["size"])
    want = by_position(expected, ndimage.mean(prob, labels, index)[keep], size[keep])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b)
    assert np.all(np.diff(found.scores) <= 0)


def test_component_detections_empty_and_bad_input():
    for shape in [(10, 10), (4, 5, 6)]:
        found = component_detections(np.zeros(shape))
        assert found.points.shape == (0, len(shape)) and list(found.extras) == ["size"]
        assert len(component_detections(np.full(shape, 0.5), threshold=0.5)) == 0
    prob = np.zeros((5, 5))
    prob[2, 2] = 0.9
    assert len(component_detections(prob, min_size=2)) == 0
    assert len(component_detections(torch.from_numpy(prob))) == 1
    prob[0, 0] = np.nan
    with pytest.raises(ValueError, match="prob_map"):
        component_detections(prob)
    with pytest.raises(ValueError, match="connectivity"):
        component_detections(np.zeros((5, 5)), connectivity=6)
    with pytest.raises(ValueError, match="location"):
        component_detections(np.zeros((5, 5)), location="centre")


# --------------------------------------------------------------------------------------
# peak_detections
# --------------------------------------------------------------------------------------


def brute_force_peaks(image, size):
    """Voxels equal to the maximum of the (clipped) odd box around them, above the min."""
    radius = size // 2
    peaks = []
    for index in np.ndindex(image.shape):
        box = tuple(slice(max(i - radius, 0), i + radius + 1) for i in index)
        if image[index] == image[box].max() and image[index] > image.min():
            peaks.append(index)
    return {tuple(map(float, p)) for p in peaks}


@pytest.mark.parametrize(("shape", "size"), [((14, 15), 3), ((14, 15), 5), ((6, 7, 8), 3)])
def test_peak_detections_equal_brute_force(shape, size):
    image = np.random.default_rng(size).random(shape)
    found = peak_detections(image, size=size)
    assert {tuple(p) for p in found.points} == brute_force_peaks(image, size)
    np.testing.assert_array_equal(found.scores, image[tuple(found.points.astype(int).T)])
    assert np.all(np.diff(found.scores) < 0)


def test_peak_detections_find_planted_peaks_and_respect_top_n_and_threshold():
    rng = np.random.default_rng(5)
    shape = (20, 40, 40)
    centres = np.round(separated_centres(rng, shape, 7, min_distance=8, margin=1))
    amplitudes = np.linspace(1.0, 0.4, 7)
    heatmap = planted(shape, centres, amplitudes, (1.5, 1.5, 1.5))
    found = peak_detections(heatmap, size=6)
    np.testing.assert_array_equal(found.points, centres)  # ranked as planted
    np.testing.assert_array_equal(peak_detections(heatmap, top_n=3).points, centres[:3])
    level = heatmap[tuple(centres[4].astype(int))]
    np.testing.assert_array_equal(peak_detections(heatmap, threshold=level).points, centres[:4])
    assert len(peak_detections(heatmap, top_n=0)) == 0


def test_peak_detections_plateaus_give_one_peak():
    assert len(peak_detections(np.full((12, 12), 0.3))) == 0
    assert len(peak_detections(np.zeros((4, 5, 6)))) == 0
    image = np.zeros((12, 14))
    image[2:4, 2:5] = 1.0  # one flat plateau of 6 maxima
    image[8:10, 9:11] = 1.0  # an equal but separate plateau
    image[9, 2] = 0.5
    found = peak_detections(image, size=3)
    np.testing.assert_array_equal(found.points, [[2.5, 3.0], [8.5, 9.5], [9.0, 2.0]])
    np.testing.assert_array_equal(found.scores, [1.0, 1.0, 0.5])
    # Neighbouring maxima of different values stay apart (size 1: every voxel is a max).
    found = peak_detections(np.array([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]]), size=1)
    np.testing.assert_array_equal(found.points, [[0.0, 2.0], [0.0, 0.5]])


def test_peak_detections_exclude_border_and_bad_input():
    image = np.zeros((10, 10))
    image[0, 5], image[5, 5], image[8, 1] = 0.9, 0.8, 0.7
    np.testing.assert_array_equal(peak_detections(image, size=3).points[:, 0], [0, 5, 8])
    np.testing.assert_array_equal(
        peak_detections(image, size=3, exclude_border=True).points, [[5.0, 5.0], [8.0, 1.0]]
    )
    np.testing.assert_array_equal(
        peak_detections(image, size=3, exclude_border=2).points, [[5.0, 5.0]]
    )
    with pytest.raises(ValueError, match="map"):
        peak_detections(np.full((3, 3), np.inf))
    with pytest.raises(ValueError, match="top_n"):
        peak_detections(image, top_n=-1)
    with pytest.raises(ValueError, match="size"):
        peak_detections(image, size=0)


# --------------------------------------------------------------------------------------
# count-guided threshold
# --------------------------------------------------------------------------------------


def components_above(image, threshold):
    structure = np.ones((3,) * image.ndim)
    return ndimage.label(image > threshold, structure=structure)[1]


@pytest.mark.parametrize("shape", [(48, 48), (20, 40, 40)])
def test_count_guided_threshold_gives_the_count_on_planted_maps(shape):
    rng = np.random.default_rng(len(shape))
    # Truncated Gaussians (sigma 1.2, boxes of +-5 voxels) that never touch.
    centres = separated_centres(rng, shape, 6, min_distance=12, margin=2, order=np.inf)
    image = planted(shape, centres, np.linspace(1.0, 0.5, 6), (1.2,) * len(shape))
    levels = np.unique(image)[::-1]
    labels, blobs = ndimage.label(image > 0, structure=np.ones((3,) * len(shape)))
    blob_maxima = np.sort(ndimage.maximum(image, labels, np.arange(1, blobs + 1)))[::-1]
    assert blobs == 6
    for count in range(1, 7):
        threshold = count_guided_threshold(image, count)
        assert components_above(image, threshold) == count
        # The highest such threshold: brute force over every distinct value.
        exact = next(v for v in levels if components_above(image, v) == count)
        assert threshold == exact
        found = count_guided_detections(image, count)
        np.testing.assert_array_equal(found.scores, blob_maxima[:count])
    # More than the map holds: the nearest, all six components.
    assert components_above(image, count_guided_threshold(image, 9)) == 6
    assert count_guided_threshold(image, 0) == image.max()
    assert len(count_guided_detections(image, 0)) == 0


def test_count_guided_detections_are_the_highest_blobs():
    shape = (40, 40)
    centres = [(5, 5), (5, 30), (20, 18), (33, 6), (34, 33)]
    amplitudes = [0.9, 0.5, 1.0, 0.7, 0.3]
    image = planted(shape, centres, amplitudes, (1.5, 1.5))
    found = count_guided_detections(image, 3)
    np.testing.assert_array_equal(found.points, [[20, 18], [5, 5], [33, 6]])


def test_count_guided_threshold_nearest_when_a_level_adds_several_components():
    image = np.zeros((5, 9))
    image[1, 1] = image[1, 7] = 0.8  # two components appear at once
    image[3, 4] = 0.9
    assert components_above(image, count_guided_threshold(image, 1)) == 1
    assert components_above(image, count_guided_threshold(image, 2)) == 1  # 1 or 3: the higher
    assert components_above(image, count_guided_threshold(image, 3)) == 3
    assert components_above(image, count_guided_threshold(image, 5)) == 3  # the most there is
    assert count_guided_threshold(np.full((4, 4), 0.2), 2) == 0.2
    assert len(count_guided_detections(np.full((4, 4), 0.2), 2)) == 0


def test_count_guided_threshold_labels_only_logarithmically_many_levels(monkeypatch):
    image = ndimage.gaussian_filter(np.random.default_rng(0).random((60, 60)), 2.0)
    levels = len(np.unique(image))
    calls = []
    original = detection._component_count

    def counting(values, level, connectivity):
        calls.append(level)
        return original(values, level, connectivity)

    monkeypatch.setattr(detection, "_component_count", counting)
    threshold = count_guided_threshold(image, 12)
    assert len(calls) <= 2 * np.ceil(np.log2(levels)) + 2
    assert levels > 3000
    assert abs(components_above(image, threshold) - 12) <= 1


def test_count_guided_threshold_bad_input():
    with pytest.raises(ValueError, match="count"):
        count_guided_threshold(np.zeros((4, 4)), -1)
    with pytest.raises(ValueError, match="map"):
        count_guided_threshold(np.full((4, 4), np.nan), 1)


# --------------------------------------------------------------------------------------
# Detections record and files
# --------------------------------------------------------------------------------------


def example(dims=3, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return Detections(
        rng.uniform(0, 50, size=(n, dims)),
        rng.random(n),
        {"size": rng.integers(1, 100, n), "amplitude": rng.normal(size=n)},
    )


def assert_same(a: Detections, b: Detections):
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert list(a.extras) == list(b.extras)
    for name in a.extras:
        np.testing.assert_array_equal(a.extras[name], b.extras[name])
        assert a.extras[name].dtype == b.extras[name].dtype


def test_detections_select_sort_and_join():
    found = Detections([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], [0.2, 0.9, 0.5], {"size": [1, 2, 3]})
    np.testing.assert_array_equal(found.sorted().extras["size"], [2, 3, 1])
    np.testing.assert_array_equal(found.top(2).scores, [0.9, 0.5])
    np.testing.assert_array_equal(found.above(0.5).scores, [0.9])
    joined = Detections.concat([found, found[:1]])
    assert len(joined) == 4 and joined.points.shape == (4, 2)
    with pytest.raises(ValueError, match="items"):
        Detections.concat([found, Detections.empty(3, ["size"])])


def test_detections_reject_bad_records():
    with pytest.raises(ValueError, match="points"):
        Detections(np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="scores"):
        Detections(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="points"):
        Detections([[np.nan, 0.0]], [1.0])
    with pytest.raises(ValueError, match="extras"):
        Detections(np.zeros((2, 3)), np.zeros(2), {"score": np.zeros(2)})
    with pytest.raises(ValueError, match="extras"):
        Detections(np.zeros((2, 3)), np.zeros(2), {"size": np.zeros(3)})


def test_to_world_equals_nibabel():
    rng = np.random.default_rng(1)
    for dims in (2, 3):
        affine = np.eye(dims + 1)
        affine[:dims] = rng.normal(size=(dims, dims + 1))
        found = example(dims)
        np.testing.assert_allclose(found.to_world(affine), apply_affine(affine, found.points))
        spacing = rng.uniform(0.5, 3, dims)
        np.testing.assert_allclose(
            found.to_world(spacing=spacing), apply_affine(np.diag([*spacing, 1]), found.points)
        )
    with pytest.raises(ValueError, match="affine"):
        example(3).to_world(np.eye(3))
    with pytest.raises(ValueError, match="exactly one"):
        example(3).to_world()


@pytest.mark.parametrize("dims", [2, 3])
def test_csv_round_trip(tmp_path, dims):
    found = example(dims)
    path = tmp_path / "found.csv"
    found.to_csv(path)
    assert_same(Detections.from_csv(path), found)
    header = path.read_text().splitlines()[0]
    assert header == ("z,y,x," if dims == 3 else "y,x,") + "score,size,amplitude"

    affine = np.diag([*np.arange(2.0, 2.0 + dims), 1.0])
    affine[:dims, dims] = np.arange(dims) - 10.0
    found.to_csv(path, case="case_7", affine=affine)
    rows = path.read_text().splitlines()
    axes = ["z", "y", "x"][3 - dims :]
    world = [f"world_{a}_mm" for a in "xyz"[:dims]]  # the affine's output axes
    assert rows[0].split(",")[: 1 + 2 * dims] == ["case", *axes, *world]
    table = np.array([[float(v) for v in row.split(",")[1:]] for row in rows[1:]])
    np.testing.assert_allclose(table[:, dims : 2 * dims], apply_affine(affine, found.points))
    assert_same(Detections.from_csv(path, case="case_7"), found)
    assert len(Detections.from_csv(path, case="other")) == 0

    empty = Detections.empty(dims, ["size"])
    empty.to_csv(path, spacing=1.5)
    back = Detections.from_csv(path)
    assert back.points.shape == (0, dims) and list(back.extras) == ["size"]


def test_csv_with_many_cases(tmp_path):
    path = tmp_path / "all.csv"
    cases = {"a": example(3, 2, seed=1), "b": example(3, 5, seed=2), "c": example(3, 1, seed=3)}
    affines = {name: np.diag([1.0, 2.0, 3.0, 1.0]) * (i + 1) for i, name in enumerate(cases)}
    write_detections_csv(path, cases, affine=affines)
    back = read_detections_csv(path)
    assert list(back) == ["a", "b", "c"]
    for name in cases:
        assert_same(back[name], cases[name])
        assert_same(Detections.from_csv(path, case=name), cases[name])
    with pytest.raises(ValueError, match="3 cases"):
        Detections.from_csv(path)
    with pytest.raises(ValueError, match="detections"):
        write_detections_csv(path, {"a": example(3), "b": example(2)})


def test_malformed_csv_names_file_row_and_field(tmp_path):
    path = tmp_path / "found.csv"
    example(3).to_csv(path, case="x1")
    lines = path.read_text().splitlines()

    def corrupt(line_index, column, text):
        fields = lines[line_index].split(",")
        fields[column] = text
        path.write_text(
            "\n".join([*lines[:line_index], ",".join(fields), *lines[line_index + 1 :]])
        )

    corrupt(3, 2, "abc")  # data row 2 (line 3 after the header), column y
    with pytest.raises(ValueError, match=r"found\.csv: row 3 \(line 4\), field 'y': got 'abc'"):
        Detections.from_csv(path)
    corrupt(2, 4, "nan")
    with pytest.raises(ValueError, match=r"row 2 \(line 3\), field 'score'.*finite"):
        Detections.from_csv(path)
    corrupt(1, 6, "1.5e")
    with pytest.raises(ValueError, match=r"row 1 \(line 2\), field 'amplitude'"):
        Detections.from_csv(path)
    path.write_text(lines[0] + "\n" + lines[1] + ",7\n")
    with pytest.raises(ValueError, match=r"row 1 \(line 2\) has 8 fields; expected 7"):
        Detections.from_csv(path)
    path.write_text("case,z,y,score\nx1,1,2,0.5\n")
    with pytest.raises(ValueError, match="lacks column 'x'"):
        Detections.from_csv(path)
    path.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        Detections.from_csv(path)


@pytest.mark.parametrize("dims", [2, 3])
def test_json_round_trip(tmp_path, dims):
    found = example(dims)
    path = tmp_path / "found.json"
    found.to_json(path)
    assert_same(Detections.from_json(path), found)
    affine = np.eye(dims + 1)
    affine[:dims, :dims] *= 0.7
    affine[:dims, dims] = 5.0
    found.to_json(path, case="c", affine=affine)
    record = json.loads(path.read_text())
    assert record["case"] == "c" and record["axes"] == ["z", "y", "x"][3 - dims :]
    np.testing.assert_allclose(record["points_mm"], apply_affine(affine, found.points))
    assert_same(Detections.from_json(path), found)
    Detections.empty(dims).to_json(path)
    assert Detections.from_json(path).points.shape == (0, dims)
    path.write_text('{"spatial_dims": 3, "points": [[1, 2]], "scores": [1]}')
    with pytest.raises(ValueError, match=r"found\.json"):
        Detections.from_json(path)
