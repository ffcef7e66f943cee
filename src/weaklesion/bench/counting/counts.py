"""The counts of experiment 3: per threshold, per map, and on maps of known answer.

A probability map is counted at every threshold by its connected components and by the
mode of the Poisson-binomial distribution of its candidate regions
(:func:`threshold_counts`, :func:`region_count_pmf`); over images these give count
accuracy and F1 per threshold and their spread (:func:`threshold_sensitivity`, the
paper's Table C.1). :func:`planted_probability_map` makes maps whose lesions exist with
known probabilities, and :func:`count_record` keeps what the tables need of one count
distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from weaklesion.bench.counting.design import MAX_COUNT, STABLE_UP_TO, THRESHOLDS
from weaklesion.counting import (
    candidate_regions,
    component_count,
    count_statistics,
    poisson_binomial_pmf,
)
from weaklesion.metrics import count_accuracy, count_f1


def planted_probability_map(
    instances: np.ndarray, rng: np.random.Generator, distractors: float = 1.5
) -> np.ndarray:
    """A probability map whose lesions exist with known probabilities: an oracle model.

    Each true lesion gets an existence probability ``p`` drawn uniformly from [0.6, 1]
    and the value ``p * exp(-d^2 / 2)`` at distance ``d`` voxels from its mask (``p``
    inside), so that low thresholds grow and merge neighbouring lesions as a real
    network's blurred output does. A Poisson(``distractors``) number of false blobs,
    peaks drawn from [0.1, 0.45], are added at random voxels outside the lesions.

    Parameters
    ----------
    instances : (Z, Y, X) int array
        0 for background, a positive id per lesion.
    rng : numpy.random.Generator
        Source of the probabilities and the distractors.
    distractors : float
        Mean number of false blobs per map.

    Returns
    -------
    (Z, Y, X) float64 array
        Probabilities in [0, 1]; the voxel-wise maximum over lesions and blobs.

    Examples
    --------
    >>> instances = np.zeros((8, 8, 8), int)
    >>> instances[2, 2, 2] = 1
    >>> planted = planted_probability_map(instances, np.random.default_rng(0), 0.0)
    >>> bool(0.6 <= planted[2, 2, 2] <= 1), round(float(planted[2, 2, 3] / planted[2, 2, 2]), 4)
    (True, 0.6065)
    """
    planted = np.zeros(instances.shape)
    for label in np.unique(instances[instances > 0]):
        distance = ndimage.distance_transform_edt(instances != label)
        planted = np.maximum(planted, rng.uniform(0.6, 1.0) * np.exp(-(distance**2) / 2))
    outside = np.flatnonzero(instances.reshape(-1) == 0)
    for _ in range(rng.poisson(distractors)):
        centre = np.zeros(instances.shape, dtype=bool)
        centre.reshape(-1)[rng.choice(outside)] = True
        distance = ndimage.distance_transform_edt(~centre)
        planted = np.maximum(planted, rng.uniform(0.1, 0.45) * np.exp(-(distance**2) / 2))
    return planted


# ------------------------------------------------------------------ counts per map


def threshold_counts(prob_map: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """Connected-component counts and Poisson-binomial modes of one map per threshold.

    Parameters
    ----------
    prob_map : (Z, Y, X) or (Y, X) array
        Voxel probabilities in [0, 1].
    thresholds : sequence of float
        Binarisation thresholds (a voxel is foreground strictly above).

    Returns
    -------
    dict
        ``"cc"``: number of connected components above each threshold; ``"pb"``: the
        most probable count of the Poisson-binomial distribution of the candidate regions
        above each threshold, bins 0 .. :data:`MAX_COUNT` (the last "or more").
    """

    return {
        "cc": [int(component_count(prob_map, t).mode) for t in thresholds],
        "pb": [int(np.argmax(region_count_pmf(prob_map, t))) for t in thresholds],
    }


def threshold_sensitivity(
    counts: Sequence[dict], truth: Sequence[int], thresholds: Sequence[float] = THRESHOLDS
) -> dict:
    """Count accuracy and F1 per threshold of both counts, and their spread.

    Parameters
    ----------
    counts : sequence of dict
        :func:`threshold_counts` of each image.
    truth : sequence of int
        True count of each image.
    thresholds : sequence of float
        The thresholds of ``counts``.

    Returns
    -------
    dict
        For ``"cc"`` and ``"pb"``: ``"accuracy"`` and ``"f1"`` lists over the thresholds
        (classes 0 .. 3 and "4 or more"), and ``"spread"`` (max - min) and ``"std"``
        (population standard deviation) of the accuracy over thresholds up to
        :data:`STABLE_UP_TO`.

    Examples
    --------
    >>> counts = [{"cc": [3, 2], "pb": [2, 2]}, {"cc": [1, 0], "pb": [0, 0]}]
    >>> table = threshold_sensitivity(counts, [2, 0], thresholds=(0.1, 0.2))
    >>> table["cc"]["accuracy"], table["pb"]["accuracy"], table["cc"]["spread"]
    ([0.0, 1.0], [1.0, 1.0], 1.0)
    """

    actual = np.minimum(np.asarray(truth), MAX_COUNT)
    stable = np.asarray(thresholds) <= STABLE_UP_TO + 1e-9
    table = {"thresholds": list(thresholds)}
    for kind in ("cc", "pb"):
        predicted = np.minimum([c[kind] for c in counts], MAX_COUNT).reshape(len(counts), -1)
        accuracy = [count_accuracy(predicted[:, i], actual) for i in range(len(thresholds))]
        f1 = [count_f1(predicted[:, i], actual) for i in range(len(thresholds))]
        kept = np.asarray(accuracy)[stable]
        table[kind] = {
            "accuracy": accuracy,
            "f1": f1,
            "spread": float(kept.max() - kept.min()),
            "std": float(kept.std()),
        }
    return table


def region_count_pmf(prob_map: np.ndarray, threshold: float) -> np.ndarray:
    """Count pmf, bins 0 .. :data:`MAX_COUNT`, of the regions of ``prob_map`` > ``threshold``.

    Each connected region exists with the probability of its maximum; the count is the
    number that exist (Poisson-binomial), the last bin "or more".

    Examples
    --------
    >>> prob_map = np.zeros((3, 5))
    >>> prob_map[1, 0], prob_map[1, 4] = 0.5, 1.0
    >>> region_count_pmf(prob_map, 0.1).round(2).tolist()
    [0.0, 0.5, 0.5, 0.0, 0.0]
    """

    existence = candidate_regions(prob_map, threshold).probabilities
    return poisson_binomial_pmf(np.asarray(existence, dtype=np.float64), MAX_COUNT)


def count_record(pmf: np.ndarray) -> dict:
    """Mode, its probability and the entropy of one count pmf.

    A float64 softmax or Poisson-binomial product can exceed 1 by a rounding error,
    which :func:`~weaklesion.counting.count_statistics` refuses: the pmf is clipped to
    [0, 1] and renormalised first.

    Examples
    --------
    >>> count_record(np.array([0.25, 0.75]))["mode"], count_record([0.25, 0.75])["confidence"]
    (1, 0.75)
    """

    values = np.clip(np.asarray(pmf, dtype=np.float64), 0.0, 1.0)
    stats = count_statistics(values / values.sum())
    return {
        "mode": int(stats.mode),
        "confidence": float(stats.pmf[stats.mode]),
        "entropy": float(stats.entropy),
    }
