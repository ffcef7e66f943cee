"""Training objectives, one per kind of weak label, behind a single calling convention.

Every objective is a function ``(model, batch, epoch) -> (loss, logs)`` so the training
loop never needs to know what it is training: ``batch`` is a dict of tensors made by
:mod:`weaklesion.training.data` (``"image"``, and ``"target"``, ``"loss_mask"`` or
``"count"`` as the labels provide), ``loss`` a scalar tensor to back-propagate and
``logs`` a dict of floats for the progress bar and the history.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from weaklesion.config import TrainConfig
from weaklesion.counting import CountLoss

Batch = dict[str, torch.Tensor]
Objective = Callable[[nn.Module, Batch, int], tuple[torch.Tensor, dict[str, float]]]


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error with a per-voxel weight, averaged over the voxels of weight > 0.

    Parameters
    ----------
    prediction, target : (N, 1, *spatial) float tensors
    weight : (N, 1, *spatial) float tensor or None
        Non-negative weights; 0 leaves a voxel out. None weighs every voxel 1.

    Returns
    -------
    loss : scalar float tensor
        ``sum(weight * (prediction - target) ** 2) / count(weight > 0)``; 0 when no voxel
        has a weight.

    Examples
    --------
    >>> p, t = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    >>> round(float(weighted_mse(p, t)), 4), float(weighted_mse(p, t, torch.tensor([[2.0, 0, 1]])))
    (1.6667, 3.0)
    """
    squared = (prediction - target) ** 2
    if weight is None:
        return squared.mean()
    return (weight * squared).sum() / (weight > 0).sum().clamp(min=1)


def foreground_weights(
    target: torch.Tensor,
    foreground_weight: float,
    threshold: float = 0.05,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Voxel weights for heatmap regression: ``foreground_weight`` where ``target > threshold``.

    Lesions fill a tiny fraction of an image, so without the weight an all-zero output is
    a good minimum of the MSE; weighting the voxels near lesion centres avoids it.

    Parameters
    ----------
    target : (N, 1, *spatial) float tensor
        Heatmap target on the peak-1 scale.
    foreground_weight : float
        Weight of foreground voxels; background voxels weigh 1.
    threshold : float
        Target value above which a voxel is foreground.
    mask : (N, 1, *spatial) tensor or None
        Where the loss applies (non-zero); weights are 0 elsewhere.

    Returns
    -------
    weight : float tensor shaped like ``target``

    Examples
    --------
    >>> foreground_weights(torch.tensor([0.0, 0.5, 1.0]), 21.0, mask=torch.tensor([1, 1, 0]))
    tensor([ 1., 21.,  0.])
    """
    weight = torch.where(target > threshold, foreground_weight, 1.0).to(target.dtype)
    if mask is not None:
        weight = weight * (mask != 0)
    return weight


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, positive_weight: float = 3.0
) -> torch.Tensor:
    """Binary cross-entropy of segmentation logits, lesion voxels weighted ``positive_weight``.

    Parameters
    ----------
    logits : (N, 1, *spatial) float tensor
        Raw network outputs (before the sigmoid).
    target : (N, 1, *spatial) float tensor
        1 for lesion voxels, 0 for background.
    positive_weight : float
        Weight of the lesion term relative to the background term.

    Returns
    -------
    loss : scalar float tensor, the mean over voxels

    Examples
    --------
    >>> logits, target = torch.zeros(1, 1, 2), torch.tensor([[[1.0, 0.0]]])
    >>> print(f"{float(weighted_bce(logits, target, 3.0)):.4f}")  # (3 + 1) * log(2) / 2
    1.3863
    """
    weight = torch.as_tensor(positive_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


def count_weight_at(epoch: int, weight: float, warmup_epochs: int, ramp_epochs: int) -> float:
    """Weight of the count loss at a (0-based) epoch of multi-task training.

    It is 0 for the first ``warmup_epochs`` epochs (segmentation only, so the candidate
    regions the count is computed from mean something), then rises linearly over
    ``ramp_epochs`` epochs and stays at ``weight``.

    Examples
    --------
    >>> [count_weight_at(e, 1.0, warmup_epochs=2, ramp_epochs=4) for e in range(7)]
    [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if epoch < warmup_epochs:
        return 0.0
    if ramp_epochs <= 0:
        return float(weight)
    return float(weight) * min(1.0, (epoch - warmup_epochs + 1) / ramp_epochs)


def _dense_regression(config: TrainConfig) -> Objective:
    use_foreground = config.target == "heatmap"

    def objective(model: nn.Module, batch: Batch, epoch: int):
        prediction = model(batch["image"])
        target = batch["target"]
        mask = batch.get("loss_mask")
        if use_foreground:
            weight = foreground_weights(
                target, config.foreground_weight, config.foreground_threshold, mask
            )
        else:
            weight = None if mask is None else (mask != 0).to(target.dtype)
        loss = weighted_mse(prediction, target, weight)
        return loss, {"loss": loss.item()}

    return objective


def _segmentation(config: TrainConfig) -> Objective:
    def objective(model: nn.Module, batch: Batch, epoch: int):
        loss = weighted_bce(model(batch["image"]), batch["target"], config.positive_weight)
        return loss, {"loss": loss.item()}

    return objective


def _count_regression(config: TrainConfig) -> Objective:
    def objective(model: nn.Module, batch: Batch, epoch: int):
        predicted = model(batch["image"]).reshape(-1)
        loss = F.mse_loss(predicted, batch["count"].to(predicted.dtype))
        return loss, {"loss": loss.item()}

    return objective


def _presence_classification(config: TrainConfig) -> Objective:
    def objective(model: nn.Module, batch: Batch, epoch: int):
        logits = model(batch["image"]).reshape(-1)
        present = (batch["count"] > 0).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, present)
        return loss, {"loss": loss.item()}

    return objective


def _segmentation_with_count(config: TrainConfig) -> Objective:

    if config.spatial_dims is None:
        raise ValueError("spatial_dims: got None; expected 2 or 3 for the count loss")
    count_loss = CountLoss(
        spatial_dims=config.spatial_dims,
        threshold=config.count_threshold,
        max_count=config.max_count,
    )

    def objective(model: nn.Module, batch: Batch, epoch: int):
        output = model(batch["image"])
        # A network with a count head (config.count_head) returns its count logits too.
        logits, count_logits = output if isinstance(output, tuple) else (output, None)
        segmentation = weighted_bce(logits, batch["target"], config.positive_weight)
        weight = count_weight_at(
            epoch, config.count_weight, config.count_warmup_epochs, config.count_ramp_epochs
        )
        logs = {"segmentation": segmentation.item(), "count_weight": weight}
        loss = segmentation
        if count_logits is not None:
            # Also at weight 0, so that every parameter takes part in every step (DDP).
            labels = batch["count"].long().clamp(max=config.max_count)
            count = F.cross_entropy(count_logits, labels)
            loss = segmentation + weight * count
        elif weight > 0:
            count = count_loss(torch.sigmoid(logits[:, 0]), batch["count"])
            loss = segmentation + weight * count
        if weight > 0:
            logs["count_nll"] = count.item()
        logs["loss"] = loss.item()
        return loss, logs

    return objective


def objective_for(config: TrainConfig) -> Objective:
    """The objective that trains ``config.target`` from ``config.labels``.

    ========================  ==========================================================
    labels → target           loss
    ========================  ==========================================================
    points → heatmap          MSE against the peak-1 heatmap, voxels above
                              ``foreground_threshold`` weighted ``foreground_weight``
    points → euclidean,       MSE against the distance-decay map
    geodesic
    masks → segmentation      BCE of the logits, lesion voxels weighted ``positive_weight``
    counts → count            MSE of the predicted count (GP-Unet); with
                              ``count_objective="classification"``, BCE of the output
                              as the logit of presence (count > 0)
    masks+counts →            the segmentation BCE plus ``count_weight_at(epoch, ...)``
    segmentation              times the count NLL of the sigmoid map (Poisson-binomial),
                              or, with a ``count_head``, the cross-entropy of its logits
                              over the bins ``0 .. max_count``
    ========================  ==========================================================

    With ``loss_inside_mask`` the dense MSE objectives only count the voxels where the
    batch's ``"loss_mask"`` is non-zero.

    Parameters
    ----------
    config : TrainConfig

    Returns
    -------
    objective : callable ``(model, batch, epoch) -> (loss, logs)``
        ``loss`` is a scalar tensor; ``logs`` maps names to floats and always has
        ``"loss"``.

    Examples
    --------
    >>> objective = objective_for(TrainConfig(labels="masks"))
    >>> model = torch.nn.Conv2d(1, 1, 1)
    >>> batch = {"image": torch.zeros(2, 1, 4, 4), "target": torch.zeros(2, 1, 4, 4)}
    >>> loss, logs = objective(model, batch, 0)
    >>> loss.shape, sorted(logs)
    (torch.Size([]), ['loss'])
    """
    if config.labels == "masks+counts":
        return _segmentation_with_count(config)
    if config.target == "segmentation":
        return _segmentation(config)
    if config.target == "count" and config.count_objective == "classification":
        return _presence_classification(config)
    if config.target == "count":
        return _count_regression(config)
    return _dense_regression(config)


def level_shift(outputs: torch.Tensor, counts: torch.Tensor, objective: str) -> float:
    """The constant to add to a count network's outputs so that they fit the labels' level.

    Parameters
    ----------
    outputs : (N,) tensor
        Predicted counts (``"regression"``) or presence logits (``"classification"``) of
        the training images.
    counts : (N,) tensor
        Their true counts.
    objective : {"regression", "classification"}

    Returns
    -------
    float
        Regression: the mean count minus the mean prediction (the shift that minimises
        the mean squared error). Classification: the shift ``δ`` with
        ``mean(sigmoid(outputs + δ)) = mean(counts > 0)`` (the one that minimises the
        binary cross-entropy), found by bisection; the fraction of images with a target
        is clipped to [1/(2N), 1 - 1/(2N)] so that ``δ`` is finite.

    Examples
    --------
    >>> level_shift(torch.tensor([1.0, 2.0]), torch.tensor([3, 4]), "regression")
    2.0
    >>> shift = level_shift(torch.tensor([0.0, 0.0, 0.0, 0.0]), torch.tensor([0, 1, 2, 3]),
    ...                     "classification")
    >>> round(float(torch.sigmoid(torch.tensor(shift))), 4)  # 3 of 4 images hold a target
    0.75
    """
    outputs = outputs.detach().double().reshape(-1)
    counts = counts.detach().double().reshape(-1)
    if objective == "regression":
        return float(counts.mean() - outputs.mean())
    n = len(outputs)
    present = float((counts > 0).double().mean().clamp(1 / (2 * n), 1 - 1 / (2 * n)))
    low, high = -60.0, 60.0
    for _ in range(100):
        middle = (low + high) / 2
        if float(torch.sigmoid(outputs + middle).mean()) < present:
            low = middle
        else:
            high = middle
    return (low + high) / 2
