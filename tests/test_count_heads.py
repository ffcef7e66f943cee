"""Count heads and post-hoc count baselines: the heads give proper pmfs over 0 .. max_count,
train on the same multi-task schedule as the Poisson-binomial count through the one training
loop, and run end to end from the command line in 2D and 3D; the component count is SciPy's
label count, and the MC-dropout distribution is the histogram of the samples' counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.counting import (
    CountLoss,
    candidate_regions,
    component_count,
    count_distribution,
    existence_probabilities,
    sample_count_distribution,
)
from weaklesion.data.normalize import zscore
from weaklesion.inference import predict_image
from weaklesion.io import read_image, write_counts_csv
from weaklesion.models import UNet
from weaklesion.models.heads import (
    COUNT_HEADS,
    CountHead,
    RunningStandardization,
    SegmentationWithCountHead,
    attach_count_head,
    centre_gradient,
    has_count_head,
)
from weaklesion.training import TrainConfig, load_run
from weaklesion.training.checkpoint import build_model_for
from weaklesion.training.objectives import count_weight_at, objective_for, weighted_bce
from weaklesion.uncertainty import mc_dropout_count_distribution

HEADS = tuple(head for head in COUNT_HEADS if head != "poisson_binomial")
FEATURES = (4, 8, 16)


def headed_model(count_head: str, spatial_dims: int = 2, max_count: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    unet = UNet(spatial_dims, features=FEATURES, dropout=0.2)
    return attach_count_head(unet, count_head, max_count)


# --------------------------------------------------------------------------- heads


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("count_head", HEADS)
def test_head_pmf_sums_to_one_over_max_count_plus_one_bins(count_head, spatial_dims):
    model = headed_model(count_head, spatial_dims, max_count=4).eval()
    shape = (2, 1, 16, 20) if spatial_dims == 2 else (2, 1, 8, 16, 12)
    images = torch.randn(shape)
    with torch.no_grad():
        logits, count_logits = model(images)
    assert logits.shape == shape and count_logits.shape == (2, 5)
    pmf = torch.softmax(count_logits, dim=-1)
    np.testing.assert_allclose(pmf.sum(-1).numpy(), 1.0, rtol=1e-6)

    prediction = predict_image(model, images[0], "segmentation")
    assert prediction.count_pmf.shape == (5,)
    assert prediction.count_pmf.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(prediction.count_pmf, pmf[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(prediction.map, torch.sigmoid(logits[0, 0]).numpy(), rtol=1e-5)


def test_heads_read_the_documented_features():
    for count_head, source, channels in [
        ("bottleneck", "bottleneck", FEATURES[-1]),
        ("multihead", "decoder", FEATURES[0]),
        ("downstream", "segmentation", 1),
    ]:
        model = headed_model(count_head)
        assert isinstance(model, SegmentationWithCountHead) and has_count_head(model)
        assert model.source == source
        first = next(model.head.parameters())
        assert first.shape[1] == (2 * channels if source == "bottleneck" else channels)
    unet = UNet(2, features=FEATURES)
    assert attach_count_head(unet, "poisson_binomial", 4) is unet and not has_count_head(unet)


def test_head_pools_mean_and_max_into_the_classifier():
    maps = torch.randn(3, 2, 5, 7)
    pooled = torch.cat((maps.mean((2, 3)), maps.amax((2, 3))), dim=1)
    plain = CountHead(spatial_dims=2, in_channels=2, bins=3, standardize=False)
    torch.testing.assert_close(plain(maps), plain.classifier(pooled))
    head = CountHead(spatial_dims=2, in_channels=2, bins=3).eval()
    head.standardize.mean.copy_(torch.arange(4.0))
    head.standardize.variance.copy_(torch.tensor([1.0, 4.0, 9.0, 16.0]))
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0]) + head.standardize.eps
    expected = head.classifier((pooled - torch.arange(4.0)) / scale)
    torch.testing.assert_close(head(maps), expected)


def test_running_standardization_follows_the_running_estimates():
    """Brute force: the moving averages of batch means and of squared deviations."""
    norm = RunningStandardization(3, momentum=0.25)
    batches = [
        torch.randn(2, 3, generator=torch.Generator().manual_seed(k)) * 3 + 1 for k in range(5)
    ]
    mean = batches[0].mean(0)
    variance = ((batches[0] - mean) ** 2).mean(0)
    for k, batch in enumerate(batches):
        out = norm(batch)
        if k:
            mean = mean + 0.25 * (batch.mean(0) - mean)
            variance = variance + 0.25 * (((batch - mean) ** 2).mean(0) - variance)
        torch.testing.assert_close(norm.mean, mean)
        torch.testing.assert_close(norm.variance, variance)
        torch.testing.assert_close(out, (batch - mean) / (variance.sqrt() + norm.eps))
    norm.eval()
    norm(torch.full((1, 3), 100.0))  # evaluation leaves the estimates alone
    torch.testing.assert_close(norm.mean, mean)
    assert int(norm.batches) == 5


def test_centre_gradient_passes_values_and_centres_the_gradient():
    """Brute force: the gradient of sum(w * y) reaching x is w minus its batch mean."""
    x = torch.randn(4, 3, 2, requires_grad=True)
    y = centre_gradient(x)
    torch.testing.assert_close(y, x)
    weights = torch.randn(4, 3, 2)
    (weights * y).sum().backward()
    torch.testing.assert_close(x.grad, weights - weights.mean(0, keepdim=True))
    single = torch.randn(1, 3, requires_grad=True)
    assert centre_gradient(single) is single  # nothing to centre


def test_centred_head_computes_the_same_and_centres_what_reaches_the_features():
    torch.manual_seed(0)
    plain = CountHead(spatial_dims=2, in_channels=2, bins=3)
    centred = CountHead(spatial_dims=2, in_channels=2, bins=3, centre=True)
    centred.load_state_dict(plain.state_dict())
    maps = torch.randn(3, 2, 5, 7)
    grads = []
    for head in (plain, centred):
        inputs = maps.clone().requires_grad_(True)
        logits = head.train()(inputs)
        (logits * torch.arange(3.0)).sum().backward()
        grads.append((logits.detach(), inputs.grad, head.classifier[0].weight.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])  # same forward pass
    torch.testing.assert_close(grads[0][2], grads[1][2])  # the perceptron: plain gradient
    # The pooled features get the centred gradient: summed over the batch (and over the
    # voxels, where mean and max pooling spread it) it is zero, where the plain is not.
    plain_total, centred_total = (g[1].sum((0, 2, 3)) for g in grads)
    assert float(plain_total.abs().max()) > 1e-3
    torch.testing.assert_close(centred_total, torch.zeros(2), atol=1e-6, rtol=0)


def test_the_count_gradient_setting_reaches_the_head():
    for gradient, expected in [("centred", True), ("plain", False)]:
        config = TrainConfig(
            labels="masks+counts",
            count_head="bottleneck",
            count_gradient=gradient,
            spatial_dims=2,
            model_kwargs={"features": list(FEATURES)},
        )
        assert build_model_for(config, 1).head.centre is expected


def _nearly_constant_features(seed: int):
    """Pooled features as a trained U-Net's are: about 1 % apart between counts.

    Counts 0, 1, 2, 3 and 3 again, so that the most frequent count is 3 (40 %).
    """
    generator = torch.Generator().manual_seed(seed)
    counts = torch.tensor([0, 1, 2, 3, 3] * 8)
    pattern = torch.rand(1, 8, 12, 12, generator=generator)
    noise = 0.002 * torch.randn(len(counts), 8, 12, 12, generator=generator)
    return 1.0 + 0.01 * counts[:, None, None, None] * pattern + noise, counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_head_on_nearly_constant_features_learns_more_than_the_most_frequent_count(seed):
    maps, counts = _nearly_constant_features(seed)
    torch.manual_seed(seed)
    head = CountHead(spatial_dims=2, in_channels=8, bins=4, hidden=16)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for step in range(200):
        chosen = torch.randperm(len(counts), generator=torch.Generator().manual_seed(step))[:4]
        loss = F.cross_entropy(head(maps[chosen]), counts[chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = head.eval()(maps).argmax(1)
    majority = float((counts == 3).float().mean())
    assert len(torch.unique(predicted)) >= 3
    assert float((predicted == counts).float().mean()) >= majority + 0.2


def _gradient_norms(model, image, counts):
    model.zero_grad()
    _, count_logits = model(image)
    F.cross_entropy(count_logits, counts).backward()

    def norm(module):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return sum(float(g.abs().sum()) for g in grads)

    unet = model.network
    return norm(unet.encoder), norm(unet.decoder), norm(unet.head)


def test_count_loss_of_the_downstream_head_reaches_the_segmentation_decoder():
    image, counts = torch.randn(2, 1, 16, 16), torch.tensor([1, 3])
    encoder, decoder, output = _gradient_norms(headed_model("downstream"), image, counts)
    assert encoder > 0 and decoder > 0 and output > 0
    # The other heads leave the parts they do not read without gradient.
    encoder, decoder, output = _gradient_norms(headed_model("multihead"), image, counts)
    assert encoder > 0 and decoder > 0 and output == 0
    encoder, decoder, output = _gradient_norms(headed_model("bottleneck"), image, counts)
    assert encoder > 0 and decoder == 0 and output == 0


def test_attach_count_head_refuses_what_it_cannot_wrap():
    with pytest.raises(ValueError, match="count_head"):
        attach_count_head(UNet(2, features=FEATURES), "neck", 4)
    with pytest.raises(ValueError, match="one output map"):
        attach_count_head(UNet(2, out_channels=2, features=FEATURES), "bottleneck", 4)
    with pytest.raises(ValueError, match="max_count"):
        attach_count_head(UNet(2, features=FEATURES), "bottleneck", -1)


# --------------------------------------------------------------------------- training


def config_for(count_head: str, **changes) -> TrainConfig:
    values = {
        "labels": "masks+counts",
        "count_head": count_head,
        "model_kwargs": {"features": list(FEATURES), "dropout": 0.0},
        "spatial_dims": 2,
        "count_weight": 2.0,
        "count_warmup_epochs": 2,
        "count_ramp_epochs": 3,
        "max_count": 3,
    }
    values.update(changes)
    return TrainConfig(**values)


def _batch():
    target = torch.zeros(2, 1, 16, 16)
    target[0, 0, 2:5, 2:5] = target[0, 0, 10:13, 9:12] = target[1, 0, 6:9, 6:9] = 1
    image = target + 0.3 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    return {"image": image, "target": target, "count": torch.tensor([2.0, 5.0])}


@pytest.mark.parametrize("count_head", COUNT_HEADS)
def test_every_count_model_follows_the_same_multitask_schedule(count_head):
    config = config_for(count_head)
    torch.manual_seed(0)
    model = build_model_for(config, in_channels=1)
    assert has_count_head(model) == (count_head != "poisson_binomial")
    objective = objective_for(config)
    batch = _batch()
    pb_loss = CountLoss(spatial_dims=2, max_count=3)
    for epoch in range(7):
        loss, logs = objective(model, batch, epoch)
        weight = count_weight_at(epoch, 2.0, warmup_epochs=2, ramp_epochs=3)
        assert logs["count_weight"] == weight
        with torch.no_grad():
            output = model(batch["image"])
            logits = output[0] if isinstance(output, tuple) else output
            segmentation = weighted_bce(logits, batch["target"], config.positive_weight)
            if isinstance(output, tuple):  # labels above max_count go to the last bin
                count = F.cross_entropy(output[1], torch.tensor([2, 3]))
            else:
                count = pb_loss(torch.sigmoid(logits), batch["count"]) if weight else 0.0
        assert loss.item() == pytest.approx(float(segmentation + weight * count), rel=1e-5)
        assert ("count_nll" in logs) == (weight > 0)


def test_the_poisson_binomial_objective_cuts_regions_at_count_threshold():
    torch.manual_seed(0)
    batch = _batch()
    losses = {}
    for threshold in (0.1, 0.6):
        config = config_for("poisson_binomial", count_threshold=threshold, count_warmup_epochs=0)
        torch.manual_seed(0)
        model = build_model_for(config, in_channels=1)
        _, logs = objective_for(config)(model, batch, 10)
        with torch.no_grad():
            maps = torch.sigmoid(model(batch["image"]))
        expected = CountLoss(spatial_dims=2, threshold=threshold, max_count=3)(maps, batch["count"])
        assert logs["count_nll"] == pytest.approx(expected.item(), rel=1e-5)
        losses[threshold] = logs["count_nll"]
    assert losses[0.1] != pytest.approx(losses[0.6])
    with pytest.raises(ValueError, match=r"count_threshold: got 1\.0"):
        config_for("poisson_binomial", count_threshold=1.0)


@pytest.mark.parametrize("count_head", HEADS)
def test_every_parameter_takes_part_in_a_warm_up_step(count_head):
    """At count weight 0 the head still gets a (zero) gradient, as DDP requires."""
    config = config_for(count_head)
    model = build_model_for(config, in_channels=1)
    loss, logs = objective_for(config)(model, _batch(), 0)
    assert logs["count_weight"] == 0.0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(float(p.grad.abs().sum()) == 0 for p in model.head.parameters())


def test_config_checks_count_head():
    assert TrainConfig(labels="masks+counts").count_head == "poisson_binomial"
    with pytest.raises(ValueError, match="count_head"):
        TrainConfig(labels="masks+counts", count_head="neck")
    with pytest.raises(ValueError, match="count_head"):
        TrainConfig(labels="masks", count_head="bottleneck")
    with pytest.raises(ValueError, match="patch_size"):
        TrainConfig(labels="masks+counts", count_head="multihead", patch_size=[8, 8])
    with pytest.raises(ValueError, match="patch_size"):
        predict_image(headed_model("bottleneck"), np.zeros((1, 16, 16)), "segmentation", [8, 8])


# --------------------------------------------------------------------------- command line

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def _blobs_2d(root, n_cases=4, size=32, seed=0):
    """A 2D dataset in the folder layout: NPY images and instance masks, counts.csv."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    yy, xx = np.mgrid[:size, :size]
    counts = {}
    for case in range(n_cases):
        mask = np.zeros((size, size), np.int32)
        count = case % 4
        for lesion in range(1, count + 1):
            cy, cx = (lesion * 7 + 2, rng.integers(4, size - 4))
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4] = lesion
        image = (mask > 0) * 2.0 + rng.normal(0, 0.3, (size, size))
        np.save(root / "imagesTr" / f"case_{case:03d}_0000.npy", image.astype(np.float32))
        np.save(root / "labelsTr" / f"case_{case:03d}.npy", mask)
        counts[f"case_{case:03d}"] = count
    write_counts_csv(root / "counts.csv", counts)
    meta = {"channel_names": {"0": "image"}, "spacing": [1.0, 1.0]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    phantom = tmp_path_factory.mktemp("cli3d") / "phantom"
    invoke("synth", "phantom", "--out", phantom, "--cases", 4, "--shape", "16,32,32", "--seed", 3)
    return {2: _blobs_2d(tmp_path_factory.mktemp("cli2d") / "blobs"), 3: phantom}


@pytest.mark.slow
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("count_head", COUNT_HEADS)
def test_each_count_model_trains_and_predicts_from_the_command_line(
    datasets, tmp_path, count_head, spatial_dims
):
    data, run, maps = datasets[spatial_dims], tmp_path / "run", tmp_path / "maps"
    settings = [
        f"count_head={count_head}",
        "epochs=2",
        "count_warmup_epochs=1",
        "count_ramp_epochs=1",
        "max_count=3",
        "model_kwargs.features=[4, 8, 16]",
        "num_threads=1",
        "device=cpu",
        "val_fraction=0.25",
    ]
    sets = [item for setting in settings for item in ("--set", setting)]
    invoke("train", data, "--labels", "masks+counts", "--out", run, *sets)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    # The default weight: 0.001 for the Poisson-binomial count, 0.01 for a head.
    weight = TrainConfig(labels="masks+counts", count_head=count_head).count_weight
    assert weight == (0.001 if count_head == "poisson_binomial" else 0.01)
    assert [r["count_weight"] for r in history] == [
        count_weight_at(e, weight, 1, 1) for e in (0, 1)
    ]
    assert "val_count_nll" in history[-1]

    invoke("predict", data, "--run", run, "--out", maps)
    summary = json.loads((maps / "predictions.json").read_text())["cases"]
    model, config, _ = load_run(run)
    assert config.count_head == count_head and config.spatial_dims == spatial_dims
    assert has_count_head(model) == (count_head != "poisson_binomial")
    for result in summary.values():
        distribution = result["count_distribution"]
        assert len(distribution["pmf"]) == 4
        assert sum(distribution["pmf"]) == pytest.approx(1.0, abs=1e-9)
        assert distribution["mode"] == int(np.argmax(distribution["pmf"]))
    # The written pmf is the head's softmax, or the Poisson-binomial pmf of the written map.
    case = sorted(summary)[0]
    suffix = ".npy" if spatial_dims == 2 else ".nii.gz"
    if has_count_head(model):
        image = next((data / "imagesTr").glob(f"{case}_0000*"))
        channels = [
            read_image(p, (1.0,) * spatial_dims)[0] for p in sorted(image.parent.glob(f"{case}_*"))
        ]
        with torch.no_grad():
            _, count_logits = model(torch.from_numpy(zscore(np.stack(channels)))[None])
        expected = torch.softmax(count_logits.double(), -1)[0].numpy()
    else:
        probabilities, _ = read_image(maps / f"{case}_segmentation{suffix}", (1.0,) * spatial_dims)
        expected = count_distribution(probabilities, max_count=3).pmf
    np.testing.assert_allclose(summary[case]["count_distribution"]["pmf"], expected, atol=1e-5)


# --------------------------------------------------------------------------- post-hoc baselines


@pytest.mark.parametrize(
    ("shape", "connectivity", "structure_rank"),
    [
        ((24, 31), 4, 1),
        ((24, 31), 8, 2),
        ((9, 12, 10), 6, 1),
        ((9, 12, 10), 18, 2),
        ((9, 12, 10), 26, 3),
    ],
)
def test_component_count_is_scipys_label_count(shape, connectivity, structure_rank):
    rng = np.random.default_rng(len(shape) * 100 + connectivity)
    structure = ndimage.generate_binary_structure(len(shape), structure_rank)
    for threshold in (0.3, 0.5, 0.8):
        prob_map = ndimage.uniform_filter(rng.random(shape), 2)  # blobs of several sizes
        prob_map = (prob_map - prob_map.min()) / np.ptp(prob_map)
        labels, expected = ndimage.label(prob_map > threshold, structure)
        result = component_count(prob_map, threshold, connectivity=connectivity)
        assert result.mode == expected and result.mean == expected
        assert result.pmf.shape == (expected + 1,) and result.pmf[expected] == 1.0
        sizes = np.bincount(labels.ravel())[1:]
        found = component_count(prob_map, threshold, connectivity=connectivity, min_size=3).mode
        assert found == np.count_nonzero(sizes >= 3)


def test_component_count_batches_and_bins():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 12, 12))
    single = [component_count(m, 0.7).mode for m in maps]
    batch = component_count(maps, 0.7, batch=True, max_count=4)
    np.testing.assert_array_equal(batch.mode, np.minimum(single, 4))
    assert batch.pmf.shape == (3, 5)
    empty = component_count(np.zeros((0, 4, 4)), batch=True, max_count=2)
    assert empty.pmf.shape == (0, 3)
    with pytest.raises(ValueError, match="prob_map"):
        component_count(np.full((4, 4), 1.5))


def test_sample_count_distribution_is_the_normalised_histogram():
    counts = np.array([0, 3, 3, 1, 7, 3, 1, 0])
    np.testing.assert_allclose(sample_count_distribution(counts).pmf, np.bincount(counts) / 8)
    capped = sample_count_distribution(counts, max_count=3).pmf
    np.testing.assert_allclose(capped, [2 / 8, 2 / 8, 0, 4 / 8])
    with pytest.raises(ValueError, match="counts"):
        sample_count_distribution([1, -2])


@pytest.mark.parametrize("per_sample", ["components", "mode"])
def test_mc_dropout_pmf_is_the_histogram_of_the_sample_counts(per_sample):
    # Dropout on the input: each of 6 one-voxel lesions survives a pass with probability 1/2.
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Conv2d(1, 1, 1))
    with torch.no_grad():
        model[1].weight.fill_(1.0), model[1].bias.fill_(-3.0)
    image = np.full((1, 16, 16), -3.0, np.float32)
    image[0, 2:16:5, 3:16:8] = 3.0
    samples = predict_image(model, image, "segmentation", mc_samples=12, seed=5).samples
    if per_sample == "components":
        structure = ndimage.generate_binary_structure(2, 2)
        counts = [ndimage.label(s > 0.5, structure)[1] for s in samples]
    else:
        counts = [count_distribution(s, 0.1, max_count=6).mode for s in samples]
    assert len(set(counts)) > 1  # dropout varies the count
    result = mc_dropout_count_distribution(
        model, image, 12, per_sample=per_sample, seed=5, max_count=6
    )
    expected = np.bincount(np.minimum(counts, 6), minlength=7) / 12
    np.testing.assert_allclose(result.pmf, expected)
    assert result.mean == pytest.approx(np.mean(np.minimum(counts, 6)))


def test_mc_dropout_needs_dropout_and_positive_samples():
    with pytest.raises(ValueError, match="dropout"):
        mc_dropout_count_distribution(UNet(2, features=(4, 8), dropout=0.0), np.zeros((1, 8, 8)), 3)
    with pytest.raises(ValueError, match="samples"):
        mc_dropout_count_distribution(UNet(2, features=(4, 8)), np.zeros((1, 8, 8)), 0)


def test_existence_probabilities_are_the_region_maxima():
    rng = np.random.default_rng(2)
    maps = torch.from_numpy(rng.random((3, 10, 11)) ** 4).requires_grad_()
    existence = existence_probabilities(maps, threshold=0.4)
    for row, prob_map in zip(existence, maps.detach().numpy(), strict=True):
        expected = candidate_regions(prob_map, threshold=0.4).probabilities
        np.testing.assert_array_equal(row.detach().numpy()[: len(expected)], expected)
        assert np.all(row.detach().numpy()[len(expected) :] == 0)
    existence.sum().backward()
    assert int((maps.grad != 0).sum()) == sum(
        len(candidate_regions(m, threshold=0.4).probabilities) for m in maps.detach().numpy()
    )
