"""The count loss: negative log-likelihood of count labels under the Poisson-binomial
distribution of the differentiable region maxima."""

from __future__ import annotations

import math

import numpy as np
import torch

from weaklesion._validation import check_finite, check_probabilities, check_spatial
from weaklesion.counting._common import _CONNECTIVITY, _REDUCTIONS, ArrayLike
from weaklesion.counting.distribution import _region_peaks
from weaklesion.counting.pmf import _as_float_tensor, _check_max_count, poisson_binomial_pmf
from weaklesion.counting.regions import _check_region_options, _numpy_values


def _check_counts(counts: ArrayLike, n: int, device: torch.device) -> torch.Tensor:
    """Counts as an int64 tensor of shape ``(n,)``."""
    values = _numpy_values(counts) if isinstance(counts, torch.Tensor) else np.asarray(counts)
    if values.shape != (n,):
        raise ValueError(f"counts: has shape {values.shape}; expected ({n},), one per map")
    if values.dtype.kind not in "iuf":
        raise ValueError(f"counts: has dtype {values.dtype}; expected non-negative integers")
    check_finite(values, "counts")
    bad = (values < 0) | (values != np.round(values))
    if np.any(bad):
        raise ValueError(
            f"counts: entry {int(np.argmax(bad))} is {values[np.argmax(bad)].item()}; "
            "expected non-negative integers"
        )
    return torch.from_numpy(values.astype(np.int64)).to(device)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: got {reduction!r}; expected one of {_REDUCTIONS}")


def existence_probabilities(
    prob_maps: torch.Tensor,
    threshold: float = 0.1,
    connectivity: int | None = None,
    min_size: int = 1,
) -> torch.Tensor:
    """Differentiable existence probabilities of the candidate regions of a batch of maps.

    Parameters
    ----------
    prob_maps : (N, Y, X) or (N, Z, Y, X) float tensor
        Voxel probabilities in [0, 1], one map per row.
    threshold, connectivity, min_size
        As in :func:`candidate_regions`.

    Returns
    -------
    existence : (N, K) float tensor
        Each region's largest voxel probability, gathered from ``prob_maps`` (so the
        gradient reaches the arg-max voxels only), padded with 0 where a map has fewer
        than ``K``, the most regions of any map: ready for :func:`count_nll` or
        :func:`poisson_binomial_pmf`.

    Examples
    --------
    >>> prob_maps = torch.zeros(2, 6, 6)
    >>> prob_maps[0, 1, 1], prob_maps[0, 4, 4], prob_maps[1, 2, 2] = 0.9, 0.5, 0.2
    >>> existence_probabilities(prob_maps)
    tensor([[0.9000, 0.5000],
            [0.2000, 0.0000]])
    """
    check_spatial(prob_maps, "prob_maps", dims=(3, 4))
    connectivity = _check_region_options(prob_maps.ndim - 1, threshold, connectivity, min_size)
    values = _numpy_values(prob_maps)
    check_probabilities(values, "prob_maps")
    index, valid = _region_peaks(values, threshold, connectivity, min_size)
    flat = prob_maps.reshape(len(prob_maps), math.prod(prob_maps.shape[1:]))
    index = torch.from_numpy(index).to(flat.device)
    valid = torch.from_numpy(valid).to(flat.device)
    return torch.where(valid, flat.gather(1, index), 0.0)


def count_nll(
    probabilities: ArrayLike,
    counts: ArrayLike,
    max_count: int | None = None,
    reduction: str = "mean",
) -> ArrayLike:
    """Negative log-likelihood of count labels under the Poisson-binomial distribution.

    Parameters
    ----------
    probabilities : (N, K) array or tensor
        Existence probabilities of each map's regions, padded with 0 where a map has
        fewer than K regions (exact, see :func:`poisson_binomial_pmf`).
    counts : (N,) array, tensor or sequence
        Non-negative integer count labels.
    max_count : int, optional
        Count bins ``0 .. max_count`` with an absorbing last bin: a label of
        ``max_count`` or more is scored by the probability of "``max_count`` or more".
    reduction : {"mean", "sum", "none"}
        How the ``N`` losses are combined.

    Returns
    -------
    loss : scalar or (N,) array or tensor
        ``-log P(count = label)`` in nats, of the input's dtype (NumPy in, NumPy out).
        The likelihood is computed in float64, so that unlikely counts do not underflow
        in float32, and clamped at the smallest positive float64 (loss at most about
        708) where it is 0, e.g. for a label above the number of regions: such a map
        adds a constant with no gradient.

    Examples
    --------
    >>> p = torch.tensor([[0.9, 0.5], [0.2, 0.0]], requires_grad=True)
    >>> loss = count_nll(p, [2, 0], reduction="none")
    >>> print(np.round(loss.detach().numpy(), 4))
    [0.7985 0.2231]
    >>> loss.sum().backward()
    >>> print(np.round(p.grad.numpy(), 4))
    [[-1.1111 -2.    ]
     [ 1.25    1.    ]]
    """
    _check_max_count(max_count)
    _check_reduction(reduction)
    probs, from_numpy = _as_float_tensor(probabilities)
    if probs.ndim != 2:
        raise ValueError(f"probabilities: has shape {tuple(probs.shape)}; expected (N, K)")
    labels = _check_counts(counts, probs.shape[0], probs.device)
    pmf = poisson_binomial_pmf(probs.double(), max_count)
    if max_count is not None:
        labels = labels.clamp(max=max_count)
    bins = pmf.shape[-1]
    likelihood = pmf.gather(1, labels.clamp(max=bins - 1)[:, None])[:, 0]
    likelihood = torch.where(labels < bins, likelihood, 0.0)
    loss = -torch.log(likelihood.clamp_min(torch.finfo(torch.float64).tiny))
    if reduction != "none":
        loss = loss.sum() if reduction == "sum" else loss.mean()
    loss = loss.to(probs.dtype)
    return loss.detach().numpy() if from_numpy else loss


class CountLoss(torch.nn.Module):
    """Count negative log-likelihood of probability maps, usable as a training loss.

    Each map is cut into candidate regions (:func:`candidate_regions`) and scored by
    :func:`count_nll` with its region maxima as existence probabilities. The gradient
    reaches each region's arg-max voxel and no other voxel.

    Parameters
    ----------
    spatial_dims : int
        2 or 3; tells ``(N, 1, Y, X)`` from ``(N, Z, Y, X)``.
    threshold, connectivity, min_size
        As in :func:`candidate_regions`.
    max_count : int, optional
        Count bins ``0 .. max_count``, the last one "``max_count`` or more".
    reduction : {"mean", "sum", "none"}
        How the per-map losses are combined.

    Examples
    --------
    >>> prob_maps = torch.zeros(2, 1, 6, 6)
    >>> prob_maps[0, 0, 1, 1], prob_maps[0, 0, 4, 4], prob_maps[1, 0, 2, 2] = 0.9, 0.5, 0.2
    >>> _ = prob_maps.requires_grad_()
    >>> loss = CountLoss(spatial_dims=2)(prob_maps, torch.tensor([2, 0]))
    >>> round(loss.item(), 4)
    0.5108
    >>> loss.backward()
    >>> torch.nonzero(prob_maps.grad).tolist()
    [[0, 0, 1, 1], [0, 0, 4, 4], [1, 0, 2, 2]]
    """

    def __init__(
        self,
        spatial_dims: int,
        threshold: float = 0.1,
        connectivity: int | None = None,
        min_size: int = 1,
        max_count: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONNECTIVITY:
            raise ValueError(f"spatial_dims: got {spatial_dims!r}; expected 2 or 3")
        self.connectivity = _check_region_options(spatial_dims, threshold, connectivity, min_size)
        _check_max_count(max_count)
        _check_reduction(reduction)
        self.spatial_dims = spatial_dims
        self.threshold = threshold
        self.min_size = min_size
        self.max_count = max_count
        self.reduction = reduction

    def forward(self, prob_maps: torch.Tensor, counts: ArrayLike) -> torch.Tensor:
        """Loss of ``(N, *spatial)`` or ``(N, 1, *spatial)`` maps given ``(N,)`` counts."""
        if prob_maps.ndim == self.spatial_dims + 2 and prob_maps.shape[1] == 1:
            prob_maps = prob_maps[:, 0]
        if prob_maps.ndim != self.spatial_dims + 1:
            raise ValueError(
                f"prob_maps: has shape {tuple(prob_maps.shape)}; expected (N, *spatial) or "
                f"(N, 1, *spatial) with {self.spatial_dims} spatial axes"
            )
        existence = existence_probabilities(
            prob_maps, self.threshold, self.connectivity, self.min_size
        )
        return count_nll(existence, counts, self.max_count, self.reduction)
