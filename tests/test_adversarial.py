"""The count attack: on a small trained network it changes the count far more than random
noise of the same l2 norm, for the Poisson-binomial count and for a count head; its l2
penalty keeps the segmentation closer; it respects its bound and leaves the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weaklesion.adversarial import (
    apply_noise,
    attack_success_rate,
    count_attack,
    count_log_pmf,
    random_noise_like,
)
from weaklesion.counting import count_distribution
from weaklesion.models import UNet
from weaklesion.models.heads import attach_count_head

MAX_COUNT = 4


def blobs(n: int, seed: int, size: int = 24):
    """Images of 0 to 3 bright disks in noise, their masks and counts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks, counts = [], [], []
    for _ in range(n):
        count = int(rng.integers(0, 4))
        centres: list[np.ndarray] = []
        while len(centres) < count:
            centre = rng.integers(3, size - 3, 2)
            if all(np.abs(centre - other).max() > 6 for other in centres):
                centres.append(centre)
        mask = np.zeros((size, size), np.float32)
        for cy, cx in centres:
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4] = 1
        images.append((2 * mask + rng.normal(0, 0.5, mask.shape))[None].astype(np.float32))
        masks.append(mask[None])
        counts.append(count)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)), counts


@pytest.fixture(scope="module")
def trained():
    """A small U-Net with a bottleneck count head, trained on segmentation and counts.

    ``model`` counts with its head; ``model.network`` is the same segmentation network
    alone, counted by the Poisson-binomial distribution of its map. The head is the
    papers' (``standardize=False``): these tests attack a fixed, known model.
    """
    torch.manual_seed(0)
    network = UNet(2, features=(4, 8), dropout=0.0)
    model = attach_count_head(network, "bottleneck", MAX_COUNT, standardize=False)
    images, masks, counts = blobs(32, seed=0)
    counts = torch.tensor(counts)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(0)
    for step in range(70):
        batch = torch.randperm(len(images), generator=order)[:8]
        logits, count_logits = model(images[batch])
        loss = F.binary_cross_entropy_with_logits(
            logits, masks[batch], pos_weight=torch.tensor(3.0)
        )
        if step >= 40:  # segmentation first, as in multi-task training
            loss = loss + F.cross_entropy(count_logits, counts[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_images, _, test_counts = blobs(6, seed=1)
    return model, list(test_images), test_counts


def models(trained):
    model, _, _ = trained
    return {"poisson_binomial": model.network, "head": model}


@pytest.mark.slow
def test_the_trained_network_counts_well_before_the_attack(trained):
    model, images, counts = trained
    with torch.no_grad():
        logits, count_logits = model(torch.stack(images))
    maps = torch.sigmoid(logits[:, 0]).numpy()
    found = count_distribution(maps, max_count=MAX_COUNT, batch=True).mode
    assert np.mean(found == np.array(counts)) >= 0.6
    assert np.mean(count_logits.argmax(-1).numpy() == np.array(counts)) >= 0.6


@pytest.mark.slow
@pytest.mark.parametrize("which", ["poisson_binomial", "head"])
def test_attack_changes_the_count_far_more_than_random_noise_of_the_same_norm(trained, which):
    model = models(trained)[which]
    _, images, counts = trained
    summary = attack_success_rate(
        model, images, counts, steps=20, step_size=0.05, l2_weight=0.0, seed=3
    )
    assert summary["n_images"] == len(images)
    assert summary["success_rate"] >= 0.8
    assert summary["success_rate"] > summary["random_success_rate"]
    assert summary["mean_nll_increase"] > 10 * max(summary["random_mean_nll_increase"], 0.1)
    assert summary["accuracy_drop"] > summary["random_accuracy_drop"]


@pytest.mark.slow
def test_success_rate_summarises_the_single_attacks(trained):
    model, images, counts = trained
    options = {"steps": 3, "step_size": 0.05, "l2_weight": 0.5}
    summary = attack_success_rate(model.network, images[:3], counts[:3], seed=7, **options)
    attacks = [count_attack(model.network, image, **options) for image in images[:3]]
    randoms = [
        apply_noise(model.network, image, random_noise_like(attack.noise, 7 + i))
        for i, (image, attack) in enumerate(zip(images[:3], attacks, strict=True))
    ]
    truth = [min(c, MAX_COUNT) for c in counts[:3]]
    assert summary["success_rate"] == np.mean([a.changed for a in attacks])
    assert summary["random_success_rate"] == np.mean([r.changed for r in randoms])
    increase = np.mean([a.nll_after - a.nll_before for a in attacks])
    assert summary["mean_nll_increase"] == pytest.approx(increase)
    before = np.mean([a.count_before == t for a, t in zip(attacks, truth, strict=True)])
    after = np.mean([a.count_after == t for a, t in zip(attacks, truth, strict=True)])
    assert summary["accuracy_before"] == before and summary["accuracy_drop"] == before - after
    assert summary["mean_noise_norm"] == pytest.approx(np.mean([a.noise_norm for a in attacks]))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["poisson_binomial", "head"])
def test_l2_penalty_reduces_the_segmentation_change(trained, which):
    model = models(trained)[which]
    _, images, _ = trained
    free, penalised = [], []
    for image in images[:4]:
        options = {"steps": 15, "step_size": 0.05}
        free.append(count_attack(model, image, l2_weight=0.0, **options).segmentation_change)
        penalised.append(count_attack(model, image, l2_weight=2.0, **options).segmentation_change)
    assert np.mean(penalised) < 0.7 * np.mean(free)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["poisson_binomial", "head"])
def test_attack_towards_a_count_raises_its_probability(trained, which):
    model = models(trained)[which]
    _, images, counts = trained
    image = images[int(np.argmax(counts))]  # an image with lesions, so "down" can go down
    result = count_attack(model, image, target="down", steps=10, step_size=0.05, l2_weight=0.1)
    goal = max(result.count_before - 1, 0)
    assert result.count_before >= 1 and result.count_after == goal
    assert result.pmf_after[goal] > result.pmf_before[goal] + 0.05


@pytest.mark.slow
def test_attack_respects_its_bound_and_leaves_the_model_unchanged(trained):
    model, images, _ = trained
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = count_attack(model, images[0], steps=5, step_size=0.1, epsilon=0.15, optimizer="sign")
    assert model.training
    model.eval()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert np.abs(result.noise).max() <= 0.15 + 1e-7
    np.testing.assert_allclose(result.image, images[0].numpy() + result.noise, atol=1e-6)
    # Signed steps of 0.1, clamped at 0.15: a voxel's noise is a sum of steps, or the bound
    # less some steps back.
    moved = np.round(np.abs(result.noise[result.noise != 0]), 6)
    assert moved.size and np.all(np.isin(moved, np.float32([0.05, 0.1, 0.15])))
    assert result.noise_norm == pytest.approx(float(np.linalg.norm(result.noise)), rel=1e-6)


@pytest.mark.slow
def test_zero_noise_changes_nothing(trained):
    model, images, _ = trained
    for network in (model, model.network):
        result = apply_noise(network, images[1], np.zeros_like(images[1].numpy()))
        assert result.count_after == result.count_before and not result.changed
        assert result.nll_after == pytest.approx(result.nll_before)
        assert result.segmentation_change == 0.0
        np.testing.assert_allclose(result.pmf_after, result.pmf_before)
        assert result.pmf_before.shape == (MAX_COUNT + 1,)


@pytest.mark.slow
def test_count_log_pmf_is_the_head_softmax_or_the_poisson_binomial_pmf(trained):
    model, images, _ = trained
    with torch.no_grad():
        logits, count_logits = model(images[2][None])
    head = count_log_pmf((logits, count_logits))
    torch.testing.assert_close(head, torch.log_softmax(count_logits.double(), -1))
    expected = count_distribution(torch.sigmoid(logits[0, 0]).numpy(), max_count=MAX_COUNT).pmf
    np.testing.assert_allclose(
        count_log_pmf(logits, MAX_COUNT)[0].exp().numpy(), expected, atol=1e-6
    )


def test_random_noise_has_the_norm_and_is_seeded():
    noise = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
    random = random_noise_like(noise, seed=4)
    assert random.shape == noise.shape and random.dtype == np.float32
    assert np.linalg.norm(random) == pytest.approx(np.linalg.norm(noise), rel=1e-5)
    np.testing.assert_array_equal(random, random_noise_like(noise, seed=4))
    assert not np.array_equal(random, random_noise_like(noise, seed=5))
    assert not np.any(random_noise_like(np.zeros((3, 3))))


def test_bad_options_are_named():
    net = torch.nn.Conv2d(1, 1, 1)
    image = np.zeros((1, 6, 6), np.float32)
    for options, name in [
        ({"target": "sideways"}, "target"),
        ({"target": -1}, "target"),
        ({"steps": -2}, "steps"),
        ({"step_size": 0}, "step_size"),
        ({"l2_weight": -1.0}, "l2_weight"),
        ({"epsilon": 0}, "epsilon"),
        ({"optimizer": "sgd"}, "optimizer"),
    ]:
        with pytest.raises(ValueError, match=name):
            count_attack(net, image, **options)
    with pytest.raises(ValueError, match="noise"):
        apply_noise(net, image, np.zeros((1, 5, 6)))
    with pytest.raises(ValueError, match="image"):
        count_attack(net, np.full((1, 6, 6), np.nan))
    with pytest.raises(ValueError, match="counts"):
        attack_success_rate(net, [image], counts=[1, 2])
