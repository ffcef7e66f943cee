"""Specification of weaklesion.counting: exact Poisson-binomial counts from probability maps."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.stats import poisson_binom

from weaklesion.counting import (
    CountLoss,
    candidate_regions,
    count_distribution,
    count_nll,
    count_statistics,
    poisson_binomial_pmf,
)

# connectivity -> rank of scipy.ndimage.generate_binary_structure
STRUCTURE_RANK = {(2, 4): 1, (2, 8): 2, (3, 6): 1, (3, 18): 2, (3, 26): 3}
TINY_LOSS = -math.log(torch.finfo(torch.float64).tiny)


def brute_force_pmf(p):
    """Sum the probability of every one of the 2^K outcomes into its count."""
    p = np.asarray(p, dtype=float)
    k = len(p)
    outcomes = (np.arange(2**k)[:, None] >> np.arange(k)) & 1
    weights = np.prod(np.where(outcomes == 1, p, 1 - p), axis=1)
    return np.bincount(outcomes.sum(axis=1), weights=weights, minlength=k + 1)


def with_tail_summed(pmf, max_count):
    """Full pmf truncated to 0..max_count with the rest summed into the last bin."""
    padded = np.pad(pmf, [(0, 0)] * (pmf.ndim - 1) + [(0, max(0, max_count + 1 - pmf.shape[-1]))])
    head = padded[..., :max_count]
    return np.concatenate((head, padded[..., max_count:].sum(-1, keepdims=True)), axis=-1)


def random_probabilities(rng, k, exact=True):
    p = rng.random(k)
    if exact and k >= 3:
        p[rng.choice(k, 2, replace=False)] = [0.0, 1.0]
    return p


def blob_map(rng, shape, density=0.2):
    """Smoothed noise: blobs of many sizes on about ``density`` of the voxels, no ties."""
    smooth = ndimage.gaussian_filter(rng.random(shape), 0.8)
    level = np.quantile(smooth, 1 - density)
    above = 0.15 + 0.85 * (smooth - level) / (smooth.max() - level)
    return np.where(smooth > level, np.minimum(above, 1.0), 0.09 * smooth / level)


# ----------------------------------------------------------------------------------
# poisson_binomial_pmf
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 8, 11, 12])
def test_pmf_equals_enumeration_of_all_outcomes(k):
    rng = np.random.default_rng(k)
    for _ in range(3):
        p = random_probabilities(rng, k)
        np.testing.assert_allclose(
            poisson_binomial_pmf(p), brute_force_pmf(p), rtol=1e-12, atol=1e-15
        )


def test_pmf_of_a_batch_equals_each_row_alone():
    rng = np.random.default_rng(1)
    p = rng.random((3, 4, 9))
    p[0, 0, :4] = 0.0
    p[1, 2, :] = 1.0
    pmf = poisson_binomial_pmf(p)
    assert pmf.shape == (3, 4, 10)
    for index in np.ndindex(3, 4):
        np.testing.assert_allclose(pmf[index], brute_force_pmf(p[index]), rtol=1e-12, atol=1e-15)


def test_pmf_matches_scipy_for_two_thousand_trials():
    p = np.random.default_rng(2).random(2000)
    reference = poisson_binom.pmf(np.arange(2001), p)
    pmf = poisson_binomial_pmf(p)
    assert pmf.shape == (2001,)
    assert np.max(np.abs(pmf - reference)) < 1e-10
    # the far tails keep their relative accuracy (no cancellation)
    assert np.all(pmf > 0) == np.all(reference > 0)


def test_pmf_with_max_count_is_full_pmf_with_tail_summed():
    rng = np.random.default_rng(3)
    p = rng.random((4, 37))
    p[2, 5:] = 0.0  # a shorter row padded with zeros
    full = poisson_binomial_pmf(p)
    for max_count in [0, 1, 2, 4, 5, 36, 37, 50]:
        truncated = poisson_binomial_pmf(p, max_count=max_count)
        assert truncated.shape == (4, max_count + 1)
        np.testing.assert_allclose(truncated, with_tail_summed(full, max_count), atol=1e-14)


def test_pmf_of_certain_trials_is_a_point_mass():
    np.testing.assert_array_equal(poisson_binomial_pmf([1.0, 0.0, 1.0]), [0, 0, 1, 0])
    np.testing.assert_array_equal(poisson_binomial_pmf([1.0, 1.0], max_count=1), [0, 1])


def test_zero_padding_is_exact_for_rows_of_different_length():
    rng = np.random.default_rng(4)
    rows = [rng.random(k) for k in (0, 3, 7, 12)]
    padded = np.zeros((len(rows), 12))
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    pmf = poisson_binomial_pmf(padded)
    for i, row in enumerate(rows):
        np.testing.assert_allclose(pmf[i, : len(row) + 1], brute_force_pmf(row), atol=1e-15)
        assert np.all(pmf[i, len(row) + 1 :] == 0)


def test_pmf_keeps_torch_dtype_and_empty_shapes():
    p = torch.rand(2, 5, dtype=torch.float32)
    pmf = poisson_binomial_pmf(p)
    assert isinstance(pmf, torch.Tensor) and pmf.dtype == torch.float32 and pmf.shape == (2, 6)
    for row, expected in zip(pmf.numpy(), p.double().numpy(), strict=True):
        np.testing.assert_allclose(row, brute_force_pmf(expected), atol=1e-6)
    assert poisson_binomial_pmf(torch.zeros(3, 0)).tolist() == [[1.0]] * 3
    assert poisson_binomial_pmf(np.zeros(0), max_count=3).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert poisson_binomial_pmf(np.zeros((0, 4))).shape == (0, 5)


def test_pmf_gradcheck_full_and_truncated():
    p = (0.05 + 0.9 * torch.rand(2, 7, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(poisson_binomial_pmf, (p,))
    assert torch.autograd.gradcheck(lambda q: poisson_binomial_pmf(q, max_count=3), (p,))
    p_long = (0.05 + 0.9 * torch.rand(1, 70, dtype=torch.float64)).requires_grad_()
    # long enough for products of more than one block of coefficients
    assert torch.autograd.gradcheck(
        lambda q: poisson_binomial_pmf(q, max_count=40), (p_long,), fast_mode=True
    )


def test_pmf_gradient_matches_closed_form():
    # d P(count = k) / d p_j = P_{-j}(k - 1) - P_{-j}(k): the pmf without trial j, shifted
    p = torch.tensor([0.3, 0.6, 0.2, 0.9], dtype=torch.float64, requires_grad=True)
    weights = torch.arange(5, dtype=torch.float64) ** 2
    (poisson_binomial_pmf(p) * weights).sum().backward()
    expected = []
    for j in range(4):
        rest = brute_force_pmf(np.delete(p.detach().numpy(), j))
        expected.append(np.sum(weights.numpy() * (np.r_[0.0, rest] - np.r_[rest, 0.0])))
    np.testing.assert_allclose(p.grad.numpy(), expected, atol=1e-12)


probability_lists = st.lists(st.floats(0.0, 1.0), min_size=0, max_size=40)


@settings(max_examples=60, deadline=None)
@given(probability_lists)
def test_pmf_is_a_distribution_with_the_right_moments(p):
    pmf = poisson_binomial_pmf(p)
    counts = np.arange(len(p) + 1)
    assert np.all(pmf >= 0)
    assert abs(pmf.sum() - 1) < 1e-12
    mean = pmf @ counts
    assert abs(mean - sum(p)) < 1e-10
    variance = pmf @ (counts - mean) ** 2
    assert abs(variance - sum(q * (1 - q) for q in p)) < 1e-10


@settings(max_examples=60, deadline=None)
@given(probability_lists, st.randoms(use_true_random=False))
def test_pmf_does_not_depend_on_the_order_of_trials(p, random):
    shuffled = list(p)
    random.shuffle(shuffled)
    np.testing.assert_allclose(poisson_binomial_pmf(shuffled), poisson_binomial_pmf(p), atol=1e-13)


@settings(max_examples=60, deadline=None)
@given(probability_lists)
def test_appending_an_impossible_trial_adds_a_zero_bin(p):
    pmf = poisson_binomial_pmf(p)
    extended = poisson_binomial_pmf([*p, 0.0])
    assert extended.shape == (len(p) + 2,)
    assert extended[-1] == 0.0
    np.testing.assert_allclose(extended[:-1], pmf, atol=1e-13)


# ----------------------------------------------------------------------------------
# candidate_regions
# ----------------------------------------------------------------------------------


def scipy_regions(values, threshold, spatial_dims, connectivity, min_size=1):
    structure = ndimage.generate_binary_structure(
        spatial_dims, STRUCTURE_RANK[spatial_dims, connectivity]
    )
    labels, count = ndimage.label(values > threshold, structure=structure)
    index = np.arange(1, count + 1)
    sizes = np.asarray(ndimage.sum_labels(np.ones_like(values), labels, index), dtype=int)
    keep = sizes >= min_size
    renumber = np.zeros(count + 1, dtype=int)
    renumber[1:][keep] = np.arange(1, keep.sum() + 1)
    index = index[keep]
    maxima = np.asarray(ndimage.maximum(values, labels, index))
    positions = ndimage.maximum_position(values, labels, index)
    argmax = np.array([np.ravel_multi_index(q, values.shape) for q in positions], dtype=int)
    return renumber[labels], maxima, sizes[keep], argmax


@pytest.mark.parametrize(
    ("shape", "connectivity"),
    [((30, 40), 4), ((30, 40), 8), ((9, 14, 16), 6), ((9, 14, 16), 18), ((9, 14, 16), 26)],
)
@pytest.mark.parametrize("min_size", [1, 3])
def test_regions_match_scipy_label_and_maximum(shape, connectivity, min_size):
    rng = np.random.default_rng(connectivity + min_size)
    for density in (0.1, 0.2):
        values = blob_map(rng, shape, density)
        regions = candidate_regions(values, 0.1, connectivity, min_size)
        labels, maxima, sizes, argmax = scipy_regions(
            values, 0.1, len(shape), connectivity, min_size
        )
        assert len(maxima) >= 5
        np.testing.assert_array_equal(regions.labels, labels)
        np.testing.assert_array_equal(regions.probabilities, maxima)
        np.testing.assert_array_equal(regions.sizes, sizes)
        np.testing.assert_array_equal(regions.argmax, argmax)
        assert regions.labels.dtype == np.int64 and regions.sizes.min() >= min_size


def test_default_connectivity_is_full():
    diagonal = np.eye(3) * 0.5
    assert len(candidate_regions(diagonal).probabilities) == 1
    assert len(candidate_regions(diagonal, connectivity=4).probabilities) == 3
    corners = np.zeros((2, 2, 2))
    corners[0, 0, 0] = corners[1, 1, 1] = 0.5
    assert len(candidate_regions(corners).probabilities) == 1
    assert len(candidate_regions(corners, connectivity=18).probabilities) == 2


def test_threshold_is_strict_and_ties_take_the_first_voxel():
    values = np.array([[0.1, 0.7, 0.7, 0.0, 0.1000001]])
    regions = candidate_regions(values, threshold=0.1)
    np.testing.assert_array_equal(regions.labels, [[0, 1, 1, 0, 2]])
    np.testing.assert_array_equal(regions.argmax, [1, 4])


def test_torch_regions_are_differentiable_at_the_arg_max_only():
    rng = np.random.default_rng(5)
    values = torch.tensor(blob_map(rng, (6, 10, 10), 0.2), requires_grad=True)
    regions = candidate_regions(values)
    expected = candidate_regions(values.detach().numpy())
    assert isinstance(regions.labels, torch.Tensor) and regions.labels.dtype == torch.int64
    np.testing.assert_array_equal(regions.labels.numpy(), expected.labels)
    np.testing.assert_array_equal(regions.probabilities.detach().numpy(), expected.probabilities)
    weights = torch.arange(1.0, len(regions.probabilities) + 1, dtype=torch.float64)
    (regions.probabilities * weights).sum().backward()
    gradient = np.zeros(values.numel())
    gradient[expected.argmax] = weights.numpy()
    np.testing.assert_array_equal(values.grad.numpy().ravel(), gradient)


def test_empty_map_has_no_regions():
    for values in (np.zeros((4, 5)), np.full((3, 4, 5), 0.1), torch.zeros(2, 3, 4)):
        regions = candidate_regions(values)
        assert regions.probabilities.shape == (0,) and regions.sizes.shape == (0,)
        assert regions.argmax.shape == (0,)
        assert tuple(regions.labels.shape) == tuple(values.shape) and regions.labels.max() == 0


# ----------------------------------------------------------------------------------
# count_distribution and count_statistics
# ----------------------------------------------------------------------------------


def planted_map(probabilities, shape=(12, 12, 12)):
    """One 2x2x2 blob per probability, on a background of 0.02."""
    values = np.full(shape, 0.02)
    for i, p in enumerate(probabilities):
        z, y, x = 3 * (i % 4), 3 * ((i // 4) % 4), 3 * (i // 16)
        values[z : z + 2, y : y + 2, x : x + 2] = 0.5 * p + 0.06
        values[z, y, x] = p
    return values


def test_count_distribution_of_planted_lesions():
    existence = [0.95, 0.8, 0.6, 0.3, 0.15]
    result = count_distribution(planted_map(existence))
    np.testing.assert_allclose(result.pmf, brute_force_pmf(existence), atol=1e-15)
    assert result.mean == pytest.approx(sum(existence))
    assert result.variance == pytest.approx(sum(p * (1 - p) for p in existence))
    assert result.mode == int(np.argmax(brute_force_pmf(existence)))
    truncated = count_distribution(planted_map(existence), max_count=2)
    np.testing.assert_allclose(truncated.pmf, with_tail_summed(result.pmf, 2), atol=1e-15)


def test_batched_count_distribution_equals_each_map_alone():
    rng = np.random.default_rng(6)
    maps = np.stack([planted_map(rng.random(k)) for k in (3, 0, 7, 1)])
    batched = count_distribution(maps, batch=True, credible=0.9)
    assert batched.pmf.shape == (4, 8)
    for i, values in enumerate(maps):
        alone = count_distribution(values, credible=0.9)
        k = len(alone.pmf)
        np.testing.assert_allclose(batched.pmf[i, :k], alone.pmf, atol=1e-15)
        assert np.all(batched.pmf[i, k:] == 0)
        assert batched.mean[i] == pytest.approx(alone.mean)
        assert batched.variance[i] == pytest.approx(alone.variance, abs=1e-12)
        assert batched.entropy[i] == pytest.approx(alone.entropy, abs=1e-12)
        assert batched.mode[i] == alone.mode
        assert tuple(batched.interval[i]) == alone.interval
    torch_batched = count_distribution(torch.from_numpy(maps).float(), batch=True, credible=0.9)
    np.testing.assert_allclose(torch_batched.pmf, batched.pmf, atol=1e-6)


def test_count_distribution_of_an_empty_map_is_zero_lesions():
    result = count_distribution(np.zeros((6, 6)))
    np.testing.assert_array_equal(result.pmf, [1.0])
    assert (result.mean, result.mode, result.variance, result.entropy) == (0.0, 0, 0.0, 0.0)
    assert result.interval == (0, 0)
    assert count_distribution(np.zeros((0, 5, 5)), batch=True).pmf.shape == (0, 1)


def test_count_distribution_to_dict_is_json():
    result = count_distribution(planted_map([0.9, 0.4]), credible=0.8)
    restored = json.loads(json.dumps(result.to_dict()))
    assert restored["interval"] == list(result.interval)
    assert restored["credible"] == 0.8
    np.testing.assert_allclose(restored["pmf"], result.pmf)
    batched = count_distribution(np.stack([planted_map([0.9]), planted_map([])]), batch=True)
    assert json.loads(json.dumps(batched.to_dict()))["mode"] == [1, 0]


def brute_force_smallest_interval(pmf, credible, slack=1e-9):
    """Narrowest interval with the mass; then the most mass (within slack); then lowest."""
    intervals = [
        (upper - lower, pmf[lower : upper + 1].sum(), lower, upper)
        for lower in range(len(pmf))
        for upper in range(lower, len(pmf))
        if pmf[lower : upper + 1].sum() >= credible - slack
    ]
    narrowest = min(width for width, *_ in intervals)
    intervals = [i for i in intervals if i[0] == narrowest]
    most = max(mass for _, mass, *_ in intervals)
    return min((lower, upper) for _, mass, lower, upper in intervals if mass >= most - slack)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=15).filter(lambda w: sum(w) > 0.1),
    st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]),
)
def test_statistics_of_any_pmf_match_definitions(weights, credible):
    pmf = np.asarray(weights) / np.sum(weights)
    stats = count_statistics(pmf, credible)
    counts = np.arange(len(pmf))
    assert stats.mean == pytest.approx(np.sum(pmf * counts))
    assert stats.variance == pytest.approx(np.sum(pmf * counts**2) - stats.mean**2, abs=1e-9)
    positive = pmf[pmf > 0]
    assert stats.entropy == pytest.approx(-np.sum(positive * np.log(positive)), abs=1e-12)
    assert pmf[stats.mode] == pmf.max() and stats.mode == int(np.argmax(pmf))
    assert stats.interval == brute_force_smallest_interval(pmf, credible)


def test_statistics_by_hand():
    stats = count_statistics([0.25, 0.5, 0.25], credible=0.5)
    assert (stats.mean, stats.variance, stats.mode) == (1.0, 0.5, 1)
    assert stats.entropy == pytest.approx(1.5 * math.log(2))
    assert stats.interval == (1, 1)
    assert count_statistics([0.25, 0.5, 0.25], credible=0.6).interval == (0, 1)
    skewed = count_statistics([0.7, 0.2, 0.06, 0.04], credible=0.95)
    assert skewed.interval == (0, 2)


# ----------------------------------------------------------------------------------
# count_nll and CountLoss
# ----------------------------------------------------------------------------------


def test_count_nll_is_minus_log_of_the_pmf():
    rng = np.random.default_rng(7)
    p = rng.random((5, 6))
    p[3, 2:] = 0.0
    counts = np.array([0, 3, 6, 2, 4])
    expected = [-np.log(brute_force_pmf(row)[c]) for row, c in zip(p, counts, strict=True)]
    np.testing.assert_allclose(count_nll(p, counts, reduction="none"), expected, rtol=1e-12)
    assert count_nll(p, counts) == pytest.approx(np.mean(expected))
    assert count_nll(p, counts, reduction="sum") == pytest.approx(np.sum(expected))


def test_count_nll_with_bins_scores_large_counts_by_the_absorbing_bin():
    p = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    full = brute_force_pmf(p[0])
    assert count_nll(p, [7], max_count=4) == pytest.approx(-np.log(full[4:].sum()))
    assert count_nll(p, [4], max_count=4) == pytest.approx(-np.log(full[4:].sum()))
    assert count_nll(p, [3], max_count=4) == pytest.approx(-np.log(full[3]))
    # a count above the number of regions is impossible: clamped, finite, no gradient
    q = torch.tensor([[0.9, 0.4]], requires_grad=True)
    loss = count_nll(q, torch.tensor([3]))
    assert loss.item() == pytest.approx(TINY_LOSS, rel=1e-6)
    loss.backward()
    assert torch.all(q.grad == 0)


def test_count_nll_gradcheck():
    p = (0.05 + 0.9 * torch.rand(3, 6, dtype=torch.float64)).requires_grad_()
    counts = torch.tensor([1, 4, 6])
    assert torch.autograd.gradcheck(lambda q: count_nll(q, counts), (p,))
    assert torch.autograd.gradcheck(lambda q: count_nll(q, counts, max_count=3), (p,))


def gradcheck_maps():
    """Two 3D maps with two regions each: background 0.05, unique maxima far from 0.1."""
    maps = np.full((2, 4, 5, 5), 0.05)
    maps[0, 0:2, 0:2, 0:2] = 0.4
    maps[0, 1, 1, 1] = 0.8
    maps[0, 3, 3:5, 3] = [0.3, 0.55]
    maps[1, 2, 2, 1:4] = [0.25, 0.6, 0.35]
    maps[1, 0, 0, 0] = 0.7
    return torch.tensor(maps, requires_grad=True)


def test_count_loss_gradcheck_and_gradient_only_at_arg_max():
    maps = gradcheck_maps()
    counts = torch.tensor([1, 2])
    loss_fn = CountLoss(spatial_dims=3)
    assert torch.autograd.gradcheck(lambda m: loss_fn(m, counts), (maps,))
    assert torch.autograd.gradcheck(
        lambda m: CountLoss(spatial_dims=3, max_count=1)(m, counts), (maps,), fast_mode=True
    )
    loss_fn(maps, counts).backward()
    nonzero = {tuple(i) for i in torch.nonzero(maps.grad).tolist()}
    assert nonzero == {(0, 1, 1, 1), (0, 3, 4, 3), (1, 0, 0, 0), (1, 2, 2, 2)}


def test_count_loss_equals_count_nll_of_region_maxima():
    rng = np.random.default_rng(8)
    maps = torch.tensor(np.stack([blob_map(rng, (20, 20), 0.05) for _ in range(3)]))
    counts = torch.tensor([2, 0, 5])
    existence = [candidate_regions(m).probabilities for m in maps.numpy()]
    width = max(len(e) for e in existence)
    padded = np.zeros((3, width))
    for i, e in enumerate(existence):
        padded[i, : len(e)] = e
    expected = count_nll(padded, counts.numpy(), reduction="none")
    loss = CountLoss(spatial_dims=2, reduction="none")(maps, counts)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
    with_channel = CountLoss(spatial_dims=2)(maps[:, None].float(), counts)
    assert with_channel.dtype == torch.float32
    assert with_channel.item() == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_count_loss_of_empty_maps():
    maps = torch.zeros(2, 1, 4, 4, 4, requires_grad=True)
    loss = CountLoss(spatial_dims=3, reduction="none")(maps, [0, 1])
    assert loss[0].item() == 0.0 and loss[1].item() == pytest.approx(TINY_LOSS, rel=1e-6)


# ----------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: poisson_binomial_pmf([0.2, np.nan]), "p: 1 value"),
        (lambda: poisson_binomial_pmf([0.2, 1.5]), "p: values range"),
        (lambda: poisson_binomial_pmf([-0.1]), "p: values range"),
        (lambda: poisson_binomial_pmf(0.5), r"p: has shape \(\)"),
        (lambda: poisson_binomial_pmf([0.5], max_count=-1), "max_count"),
        (lambda: poisson_binomial_pmf([0.5], max_count=2.0), "max_count"),
        (lambda: candidate_regions(np.zeros(5)), "prob_map: has shape"),
        (lambda: candidate_regions(np.zeros((2, 2, 2, 2))), "prob_map: has shape"),
        (lambda: candidate_regions(np.full((3, 3), np.inf)), "prob_map: 9 value"),
        (lambda: candidate_regions(np.full((3, 3), 2.0)), "prob_map: values range"),
        (lambda: candidate_regions(np.zeros((3, 3)), connectivity=6), "connectivity"),
        (lambda: candidate_regions(np.zeros((3, 3, 3)), connectivity=8), "connectivity"),
        (lambda: candidate_regions(np.zeros((3, 3)), threshold=1.5), "threshold"),
        (lambda: candidate_regions(np.zeros((3, 3)), min_size=0), "min_size"),
        (lambda: count_distribution(np.zeros((3, 3)), credible=0.0), "credible"),
        (lambda: count_distribution(np.zeros((3, 3)), batch=True), "prob_map: has shape"),
        (lambda: count_statistics([0.5, 0.2]), "pmf: a row sums to 0.7"),
        (lambda: count_statistics(np.zeros(0)), "pmf: has shape"),
        (lambda: count_nll([[0.5]], [-1]), "counts: entry 0 is -1"),
        (lambda: count_nll([[0.5]], [1.5]), "counts: entry 0 is 1.5"),
        (lambda: count_nll([[0.5]], [1, 2]), r"counts: has shape \(2,\)"),
        (lambda: count_nll([0.5], [1]), "probabilities: has shape"),
        (lambda: count_nll([[0.5]], [1], reduction="max"), "reduction"),
        (lambda: CountLoss(spatial_dims=4), "spatial_dims"),
        (lambda: CountLoss(2)(torch.zeros(2, 3, 4, 4), [0, 0]), "prob_maps: has shape"),
        (lambda: CountLoss(3)(torch.zeros(2, 4, 4), [0, 0]), "prob_maps: has shape"),
        (lambda: CountLoss(2)(torch.full((1, 4, 4), -1.0), [0]), "prob_maps: values"),
    ],
)
def test_bad_input_raises_one_line_error(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_count_statistics_accepts_a_softmax_rounded_above_one():
    pmf = torch.softmax(torch.tensor([-50.0, 6.0], dtype=torch.float64), dim=0).numpy()
    pmf[1] = np.nextafter(1.0, 2.0)  # one ulp above 1, as a softmax can round
    stats = count_statistics(pmf)
    assert stats.mode == 1 and stats.mean == pytest.approx(1.0)
    assert stats.pmf.max() <= 1.0
    with pytest.raises(ValueError, match="pmf: values range"):
        count_statistics(np.array([-0.01, 1.01]))
