"""Lesion-level uncertainty: how sure a model is that each detected lesion exists.

- :func:`lesion_entropy` -- the entropy of each lesion's existence probability. For
  iterative Gaussian fitting (:func:`weaklesion.detection.fit_gaussians`) that
  probability is the fitted amplitude, so a heatmap model gives its uncertainty in one
  pass (Myers-Colet et al., MICCAI 2022).
- :func:`lesion_uncertainty_from_samples` -- the same for a segmentation model from
  Monte-Carlo samples of its probability map: per lesion, the fraction of samples that
  detect it, the mean and spread of its probability, the entropy of the mean and the part
  of it due to the sampled weights (mutual information).
- :func:`mc_dropout_lesion_uncertainty` -- draws the samples with MC dropout
  (:func:`weaklesion.inference.predict_image`) and summarises them per lesion;
  :func:`mc_dropout_count_distribution` counts each sample instead.

Whether an uncertainty is useful shows in
:func:`weaklesion.metrics.accuracy_by_certainty`: the fraction of true lesions among
the ``k`` most certain detections should fall as ``k`` grows.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
import torch
from torch import nn

from weaklesion._validation import ArrayLike, _values, check_probabilities, check_spatial
from weaklesion.counting import (
    CountDistribution,
    component_count,
    count_distribution,
    sample_count_distribution,
)
from weaklesion.detection import Detections
from weaklesion.inference import predict_image
from weaklesion.metrics import binary_entropy

SAMPLE_EXTRAS = ("size", "detected_fraction", "probability_std", "entropy", "mutual_information")


def lesion_entropy(detections: Detections | ArrayLike) -> np.ndarray:
    """Entropy in bits of each lesion's existence probability.

    Parameters
    ----------
    detections : Detections or (N,) array
        Detections whose ``scores`` are existence probabilities in [0, 1] (the clipped
        amplitudes of :func:`~weaklesion.detection.fit_gaussians`), or the probabilities.

    Returns
    -------
    (N,) float ndarray
        :func:`~weaklesion.metrics.binary_entropy` of the scores: 0 for a lesion that
        certainly exists or certainly does not, 1 bit at probability 0.5.

    Examples
    --------
    >>> lesion_entropy(Detections([[1.0, 2.0], [5.0, 5.0]], [1.0, 0.5]))
    array([0., 1.])
    """
    scores = detections.scores if isinstance(detections, Detections) else _values(detections)
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1:
        raise ValueError(f"detections: has shape {scores.shape}; expected (N,) probabilities")
    return binary_entropy(scores)


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold: got {threshold!r}; expected a probability in [0, 1)")
    return threshold


def lesion_uncertainty_from_samples(samples: ArrayLike, threshold: float = 0.5) -> Detections:
    """Per-lesion uncertainty from Monte-Carlo samples of a probability map.

    The lesions are the connected components (full connectivity) of the samples' mean
    map above ``threshold``: what the mean prediction detects. For each lesion region
    ``R`` and sample ``s``, the lesion's probability is ``p_s = max over R`` of sample
    ``s`` (the existence probability of a region, as in the Poisson-binomial count),
    and sample ``s`` detects the lesion when ``p_s > threshold``.

    Parameters
    ----------
    samples : (S, Z, Y, X) or (S, Y, X) array or tensor
        ``S >= 1`` probability maps in [0, 1].
    threshold : float
        Binarisation threshold in [0, 1); voxels strictly above it are foreground.

    Returns
    -------
    Detections
        One per lesion, sorted by score, highest first: ``points`` the voxel of the
        region's largest mean probability; ``scores`` the mean probability
        ``mean_s p_s``; ``extras``: ``size`` (voxels), ``detected_fraction`` (of the
        samples that detect it), ``probability_std`` (of ``p_s`` over samples),
        ``entropy`` (bits, :func:`~weaklesion.metrics.binary_entropy` of the mean
        probability) and ``mutual_information`` (bits: the entropy less the mean of the
        samples' entropies, the uncertainty due to the sampled weights; 0 when all
        samples agree).

    Examples
    --------
    >>> samples = np.array([[[0.9, 0.0, 0.4]],
    ...                     [[0.7, 0.0, 0.8]]])
    >>> found = lesion_uncertainty_from_samples(samples, threshold=0.5)
    >>> found.points, found.scores.round(3)
    (array([[0., 0.],
           [0., 2.]]), array([0.8, 0.6]))
    >>> found.extras["detected_fraction"], found.extras["probability_std"].round(3)
    (array([1. , 0.5]), array([0.1, 0.2]))
    """
    values = np.asarray(_values(samples), dtype=float)
    if values.ndim not in (3, 4) or len(values) == 0:
        raise ValueError(
            f"samples: has shape {values.shape}; expected (S, Y, X) or (S, Z, Y, X) with S >= 1"
        )
    check_spatial(values[0], "samples[0]")
    check_probabilities(values, "samples")
    threshold = _check_threshold(threshold)
    dims = values.ndim - 1
    mean = values.mean(axis=0)
    foreground = mean > threshold
    if not foreground.any():
        return Detections.empty(dims, SAMPLE_EXTRAS)
    labels, count = cc3d.connected_components(
        foreground, connectivity=26 if dims == 3 else 8, return_N=True
    )
    voxels = np.flatnonzero(labels)
    owner = labels.reshape(-1)[voxels].astype(np.int64) - 1
    # Voxels grouped by region, each region's largest mean value first.
    order = np.lexsort((-mean.reshape(-1)[voxels], owner))
    size = np.bincount(owner, minlength=count)
    starts = np.r_[0, np.cumsum(size)[:-1]]
    grouped = values.reshape(len(values), -1)[:, voxels[order]]
    probability = np.maximum.reduceat(grouped, starts, axis=1)  # (S, K)
    peaks = voxels[order[starts]]
    points = np.stack(np.unravel_index(peaks, mean.shape), axis=1).astype(float)
    mean_probability = probability.mean(axis=0)
    entropy = binary_entropy(mean_probability)
    information = np.maximum(entropy - binary_entropy(probability).mean(axis=0), 0.0)
    extras = {
        "size": size,
        "detected_fraction": (probability > threshold).mean(axis=0),
        "probability_std": probability.std(axis=0),
        "entropy": entropy,
        "mutual_information": information,
    }
    return Detections(points, mean_probability, extras).sorted()


def mc_dropout_lesion_uncertainty(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    samples: int,
    threshold: float = 0.5,
    patch_size: Sequence[int] | None = None,
    seed: int = 0,
) -> Detections:
    """Detect lesions with a segmentation model and say how sure it is of each (MC dropout).

    Draws ``samples`` probability maps with dropout kept on at inference
    (:func:`weaklesion.inference.predict_image`) and summarises them per lesion with
    :func:`lesion_uncertainty_from_samples`.

    Parameters
    ----------
    model : nn.Module
        A segmentation network with dropout layers (its output, logits, goes through a
        sigmoid), e.g. from :func:`weaklesion.training.load_run`.
    image : (C, *spatial) array or tensor
        One z-score-normalised image.
    samples : int
        Number of Monte-Carlo samples, at least 1.
    threshold : float
        Probability above which a voxel is lesion.
    patch_size : sequence of int or None
        Sliding-window size; None predicts the whole image at once.
    seed : int
        Seed of the dropout masks.

    Returns
    -------
    Detections
        As for :func:`lesion_uncertainty_from_samples`.

    Raises
    ------
    ValueError
        If ``samples < 1`` or the model has no dropout layer.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout(0.5))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.fill_(4.0), net[0].bias.fill_(-2.0)
    >>> image = np.zeros((1, 6, 6), np.float32)
    >>> image[0, 2:4, 2:4] = 1.0
    >>> found = mc_dropout_lesion_uncertainty(net, image, samples=20)
    >>> len(found), found.extras["size"]
    (1, array([4]))
    """
    if samples < 1:
        raise ValueError(f"samples: got {samples!r}; expected at least 1")
    prediction = predict_image(
        model, image, "segmentation", patch_size, mc_samples=samples, seed=seed
    )
    return lesion_uncertainty_from_samples(prediction.samples, threshold)


def mc_dropout_count_distribution(
    model: torch.nn.Module,
    image: ArrayLike,
    samples: int,
    per_sample: str = "components",
    threshold: float | None = None,
    connectivity: int | None = None,
    min_size: int = 1,
    max_count: int | None = None,
    seed: int = 0,
    credible: float = 0.95,
    device: str | torch.device | None = None,
) -> CountDistribution:
    """Empirical count distribution over Monte-Carlo dropout samples of a segmentation.

    Each of ``samples`` forward passes with dropout on gives a probability map
    (:func:`weaklesion.inference.predict_image` with ``mc_samples``); each map is counted
    and the counts' histogram is the distribution.

    Parameters
    ----------
    model : torch.nn.Module
        A segmentation network with dropout, whose output (or first output) is logits.
    image : (C, Y, X) or (C, Z, Y, X) array or tensor
        One normalised image.
    samples : int
        Number of MC-dropout passes, at least 1.
    per_sample : {"components", "mode"}
        How one sample map is counted: ``"components"``, its connected components above
        ``threshold`` (default 0.5; :func:`~weaklesion.counting.component_count`);
        ``"mode"``, the most probable count of its Poisson-binomial distribution, regions
        above ``threshold`` (default 0.1; :func:`~weaklesion.counting.count_distribution`).
    threshold : float, optional
        Binarisation threshold; None for the default of ``per_sample``.
    connectivity, min_size
        As in :func:`~weaklesion.counting.candidate_regions`.
    max_count : int, optional
        Bins ``0 .. max_count``, the last one "``max_count`` or more".
    seed : int
        Seed of the dropout masks (the global random state is left untouched).
    credible : float
        Mass of the credible interval, in (0, 1].
    device : str, torch.device or None
        Where to run; None uses the device of the model's parameters.

    Returns
    -------
    CountDistribution
        ``pmf[k]`` is the fraction of samples counted ``k``
        (:func:`~weaklesion.counting.sample_count_distribution`).

    Raises
    ------
    ValueError
        If the model has no dropout layer, or for a bad option.
    """
    if per_sample not in ("components", "mode"):
        raise ValueError(f"per_sample: got {per_sample!r}; expected 'components' or 'mode'")
    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
        raise ValueError(f"samples: got {samples!r}; expected a positive integer")
    if threshold is None:
        threshold = 0.5 if per_sample == "components" else 0.1
    prediction = predict_image(
        model, image, "segmentation", mc_samples=int(samples), seed=seed, device=device
    )
    maps = prediction.samples
    if per_sample == "components":
        counts = component_count(maps, threshold, connectivity, min_size, batch=True).mode
    else:
        distribution = count_distribution(
            maps, threshold, connectivity, min_size, max_count=max_count, batch=True
        )
        counts = distribution.mode
    return sample_count_distribution(np.asarray(counts), max_count, credible)
