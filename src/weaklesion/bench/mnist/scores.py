"""How experiment 1 scores a method: its attention maps' maxima against the target cells.

:func:`attention_and_outputs` computes a method's attention maps and the network's
outputs on the test images; :func:`score_attention` turns the maps' local maxima into
detections, each a hit when it falls in a target digit's cell, and gives the FROC
curve, its normalised area (FAUC) with a bootstrap interval, and the hits when the
predicted count of maxima is kept. :func:`choose_smoothing` picks the Gaussian that a
smoothed method applies to its maps, on the validation images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from weaklesion.attention import attention_maps, smooth_maps
from weaklesion.detection import peak_detections
from weaklesion.metrics import froc_auc_ci, froc_by_rank, region_hits_by_score


def attention_and_outputs(
    model, images: np.ndarray, method: str, batch_size: int = 20, reference: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Attention maps ``(N, H, W)`` and network outputs ``(N,)`` of normalised images.

    The output is the predicted count (regression) or presence logit (classification);
    ``reference`` is passed to :func:`~weaklesion.attention.attention_maps`.
    """

    maps, outputs = [], []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size])
        maps.append(attention_maps(model, batch, method, reference).numpy())
        with torch.no_grad():
            outputs.append(model(batch).reshape(-1).numpy())
    return np.concatenate(maps), np.concatenate(outputs).astype(np.float64)


def score_attention(
    maps: np.ndarray,
    cells: np.ndarray,
    counts: np.ndarray | None = None,
    nms_size: int = 6,
    max_fp: float = 5.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score attention maps against the target cells: FROC, FAUC and hits at the count.

    Parameters
    ----------
    maps : (N, H, W) float array
        One attention map per test image.
    cells : (N, H, W) int array
        Target-cell labels (0 elsewhere), as
        :func:`~weaklesion.bench.mnist.data.target_cell_labels` gives.
    counts : (N,) float array or None
        Predicted counts; the ``round(count)`` highest maxima (rounded half up, none for
        a negative count) are kept for the operating point. None leaves it out.
    nms_size : int
        Non-maximum suppression box, pixels.
    max_fp : float
        Upper end of the FAUC, false positives per image.
    n_boot : int
        Bootstrap resamples over images for the FAUC interval.
    seed : int
        Seed of the resampling.

    Returns
    -------
    dict
        ``fauc`` (estimate, low, high: fraction of the area, not %) of the FROC by rank
        (the n best maxima of every image, n = 0, 1, ...), ``fauc_threshold`` the same
        for the FROC by a common threshold on the maxima of all images, ``froc``
        (``fp_per_image`` and ``sensitivity`` of keeping the n best maxima per image,
        up to the first point beyond ``max_fp``), ``n_targets``, ``n_images`` and, with
        ``counts``, ``at_count``: pooled sensitivity and mean false positives and false
        negatives per image.

    Examples
    --------
    Two 1×2-cell images whose maps peak on the target cell first:

    >>> from weaklesion.bench.mnist.data import target_cell_labels
    >>> cells = np.stack([target_cell_labels(np.array([[True, False]]))] * 2).astype(int)
    >>> maps = np.zeros((2, 28, 56))
    >>> maps[:, 14, 14], maps[:, 14, 42] = 2.0, 1.0
    >>> result = score_attention(maps, cells, counts=np.array([1.2, 2.0]), n_boot=10)
    >>> result["fauc"]["estimate"], result["at_count"]
    (1.0, {'sensitivity': 1.0, 'fp_per_image': 0.5, 'fn_per_image': 0.0})
    """

    scores, hits, n_truth = [], [], []
    for values, labels in zip(maps, cells, strict=True):
        found = peak_detections(values, size=nms_size)
        scores.append(found.scores)
        hits.append(region_hits_by_score(found.points, found.scores, labels))
        n_truth.append(len(np.unique(labels[labels > 0])))
    fauc = froc_auc_ci(
        scores, hits, n_truth, max_fp, by_rank=True, n_boot=n_boot, seed=seed
    ).to_dict()
    fauc_threshold = froc_auc_ci(
        scores, hits, n_truth, max_fp, by_rank=False, n_boot=n_boot, seed=seed
    ).to_dict()
    curve = froc_by_rank(scores, hits, n_truth)
    beyond = np.flatnonzero(curve.fp_per_image > max_fp)
    end = beyond[0] + 1 if len(beyond) else len(curve.fp_per_image)
    result = {
        "fauc": fauc,
        "fauc_threshold": fauc_threshold,
        "froc": {
            "fp_per_image": curve.fp_per_image[:end].tolist(),
            "sensitivity": curve.sensitivity[:end].tolist(),
        },
        "n_images": len(maps),
        "n_targets": int(sum(n_truth)),
    }
    if counts is not None:
        kept = [max(math.floor(count + 0.5), 0) for count in counts]
        tp = np.array([h[:k].sum() for h, k in zip(hits, kept, strict=True)], dtype=float)
        fp = np.array([min(k, len(h)) for h, k in zip(hits, kept, strict=True)]) - tp
        fn = np.asarray(n_truth, dtype=float) - tp
        result["at_count"] = {
            "sensitivity": float(tp.sum() / max(sum(n_truth), 1)),
            "fp_per_image": float(fp.mean()),
            "fn_per_image": float(fn.mean()),
        }
    return result


def choose_smoothing(
    maps: np.ndarray,
    cells: np.ndarray,
    sigmas: tuple[float, ...],
    nms_size: int = 6,
    max_fp: float = 5.0,
) -> tuple[float, dict[str, float]]:
    """The Gaussian width with the highest FAUC by threshold on validation maps.

    Parameters
    ----------
    maps : (N, H, W) float array
        Attention maps of the validation images, not smoothed.
    cells : (N, H, W) int array
        Their target-cell labels.
    sigmas : tuple of float
        Candidate standard deviations, pixels (0: the map as it is).
    nms_size, max_fp : int, float
        As in :func:`score_attention`.

    Returns
    -------
    sigma : float
        The first candidate with the highest FAUC by threshold.
    fauc_by_sigma : dict
        ``str(sigma)`` to that FAUC (fraction, not %), for every candidate.

    Examples
    --------
    A target cell whose map has two maxima 6 pixels apart (a false positive at every
    threshold that keeps the second) and a target-free cell with a weaker single one:

    >>> from weaklesion.bench.mnist.data import target_cell_labels
    >>> cells = target_cell_labels(np.array([[True, False]]))[None].astype(int)
    >>> maps = np.zeros((1, 28, 56))
    >>> maps[0, 14, 9] = maps[0, 14, 15] = 1.0
    >>> maps[0, 14, 42] = 0.3
    >>> choose_smoothing(maps, cells, (0.0, 4.0))
    (4.0, {'0.0': 0.8, '4.0': 1.0})
    """
    faucs = {}
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    for sigma in sigmas:
        smoothed = smooth_maps(tensor, sigma).numpy() if sigma else maps
        scored = score_attention(smoothed, cells, None, nms_size, max_fp, n_boot=1)
        faucs[str(float(sigma))] = scored["fauc_threshold"]["estimate"]
    best = max(faucs.values())
    return next(float(s) for s in sigmas if faucs[str(float(s))] == best), faucs
