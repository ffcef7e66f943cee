"""Figures of a report: FROC curves, reliability diagrams, slices with detections.

Every function writes one PNG atomically and returns its path; matplotlib runs on its
non-interactive back end, so no display is needed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from weaklesion.io import atomic_write


def _save(figure: plt.Figure, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def plot_froc(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    max_fp: float = 5.0,
    title: str = "FROC",
) -> Path:
    """Plot FROC curves: sensitivity against mean false positives per image.

    Parameters
    ----------
    curves : mapping of label to (fp_per_image (K,), sensitivity (K,))
        One curve per method, e.g. from :class:`weaklesion.metrics.FROCCurve`.
    path : path
        PNG file to write.
    max_fp : float
        Right end of the horizontal axis, false positives per image.
    title : str
        Figure title.
    """
    figure, axes = plt.subplots(figsize=(4.5, 3.5))
    for label, (fp, sensitivity) in curves.items():
        axes.step(fp, sensitivity, where="post", label=label)
    axes.set(xlim=(0, max_fp), ylim=(0, 1.02), title=title)
    axes.set(xlabel="false positives per image", ylabel="sensitivity")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def plot_reliability(
    bins: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike,
    title: str = "Calibration of existence probabilities",
) -> Path:
    """Plot reliability diagrams: observed frequency against predicted probability.

    Parameters
    ----------
    bins : mapping of label to a reliability-bins dict
        Each with ``confidence`` (B,), ``accuracy`` (B,) and ``count`` (B,), as
        :meth:`weaklesion.metrics.ReliabilityBins.to_dict` gives (None for empty bins).
    path : path
        PNG file to write.
    title : str
        Figure title.
    """
    figure, axes = plt.subplots(figsize=(4.5, 3.5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for label, values in bins.items():
        confidence = np.array(values["confidence"], dtype=float)
        accuracy = np.array(values["accuracy"], dtype=float)
        keep = np.isfinite(confidence) & np.isfinite(accuracy)
        axes.plot(confidence[keep], accuracy[keep], marker="o", label=label)
    axes.set(xlim=(0, 1), ylim=(0, 1), title=title)
    axes.set(xlabel="predicted probability", ylabel="fraction that are lesions")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    return _save(figure, path)


def plot_slices(
    image: np.ndarray,
    path: str | os.PathLike,
    detections: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    heatmap: np.ndarray | None = None,
    n_slices: int = 3,
    title: str = "",
) -> Path:
    """Axial slices of a 3D image with detections and truth points drawn on them.

    Slices are those with the most truth lesions (or detections) within one voxel; a
    marker is drawn on a slice when its point lies within 1.5 voxels of it.

    Parameters
    ----------
    image : (Z, Y, X) array
        One channel of the image.
    path : path
        PNG file to write.
    detections, truth : (N, 3) arrays of voxel coordinates, optional
        Drawn as red crosses (detections) and green circles (truth).
    heatmap : (Z, Y, X) array, optional
        Shown in a second row, same slices.
    n_slices : int
        Number of slices.
    title : str
        Figure title.
    """
    depth = image.shape[0]
    anchors = truth if truth is not None and len(truth) else detections
    if anchors is not None and len(anchors):
        votes = np.zeros(depth)
        np.add.at(votes, np.clip(np.rint(anchors[:, 0]).astype(int), 0, depth - 1), 1)
        chosen = np.sort(np.argsort(-votes, kind="stable")[:n_slices])
    else:
        chosen = np.linspace(0, depth - 1, n_slices + 2)[1:-1].round().astype(int)
    rows = 2 if heatmap is not None else 1
    figure, axes = plt.subplots(rows, len(chosen), figsize=(3 * len(chosen), 3 * rows))
    axes = np.atleast_2d(axes).reshape(rows, len(chosen))
    for column, z in enumerate(chosen):
        layers = [image] if heatmap is None else [image, heatmap]
        for row, layer in enumerate(layers):
            panel = axes[row, column]
            panel.imshow(layer[z], cmap="gray" if row == 0 else "magma")
            panel.set_title(f"z = {z}", fontsize="small")
            panel.axis("off")
            for points, style in ((truth, "go"), (detections, "r+")):
                if points is None or not len(points):
                    continue
                near = np.abs(points[:, 0] - z) <= 1.5
                panel.plot(
                    points[near, 2],
                    points[near, 1],
                    style,
                    markersize=8,
                    fillstyle="none",
                    markeredgewidth=1.5,
                )
    if title:
        figure.suptitle(title + "  (green: truth, red: detections)", fontsize="small")
    return _save(figure, path)


def plot_curve(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    xlabel: str,
    ylabel: str = "",
    title: str = "",
    markers: Mapping[str, float] | None = None,
) -> Path:
    """Plot curves of y against x, with labelled vertical markers at chosen x values.

    Parameters
    ----------
    curves : mapping of label to (x (K,), y (K,))
        One line per label; NaN values leave gaps. Whole-number x values (epochs) get
        whole-number ticks.
    path : path
        PNG file to write.
    xlabel, ylabel, title : str
        Axis labels and figure title.
    markers : mapping of label to float, optional
        Dashed vertical lines, e.g. a tuned and a default threshold.
    """
    figure, axes = plt.subplots(figsize=(5, 3.5))
    whole = True
    for label, (x, y) in curves.items():
        x = np.asarray(x, dtype=float)
        whole = whole and bool(np.all(x == np.round(x)))
        axes.plot(x, np.asarray(y, dtype=float), label=label, marker="." if len(x) < 30 else None)
    if whole:
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    styles = ("--", ":", "-.")
    for index, (label, x) in enumerate((markers or {}).items()):
        axes.axvline(x, color="grey", linestyle=styles[index % len(styles)], label=label)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return _save(figure, path)


def plot_counts(
    predicted: Sequence[float],
    truth: Sequence[int],
    path: str | os.PathLike,
    pmfs: Mapping[str, tuple[Sequence[float], int]] | None = None,
) -> Path:
    """Plot predicted against true lesion counts, and some count distributions.

    Parameters
    ----------
    predicted : (N,) floats
        Predicted count of each case.
    truth : (N,) ints
        True count of each case.
    path : path
        PNG file to write.
    pmfs : mapping of case to (pmf (K + 1,), true count), optional
        Count distributions to draw as bars (probability of 0 .. K lesions) with the
        true count marked, in a second panel.
    """
    predicted = np.asarray(predicted, dtype=float)
    truth = np.asarray(truth, dtype=float)
    panels = 2 if pmfs else 1
    figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.5), squeeze=False)
    scatter = axes[0, 0]
    pairs, sizes = np.unique(np.stack([truth, predicted], axis=1), axis=0, return_counts=True)
    scatter.scatter(pairs[:, 0], pairs[:, 1], s=25 * sizes, alpha=0.6, label="cases")
    top = max(float(truth.max(initial=0)), float(predicted.max(initial=0))) + 1
    scatter.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="exact")
    scatter.set(xlim=(-0.5, top), ylim=(-0.5, top), title="Lesion counts per case")
    scatter.set(xlabel="true count", ylabel="predicted count")
    scatter.grid(alpha=0.3)
    scatter.legend(loc="lower right", fontsize="small")
    if pmfs:
        bars = axes[0, 1]
        width = 0.8 / len(pmfs)
        for index, (case, (pmf, count)) in enumerate(pmfs.items()):
            values = np.asarray(pmf, dtype=float)
            offset = (index - (len(pmfs) - 1) / 2) * width
            drawn = bars.bar(np.arange(len(values)) + offset, values, width, label=case)
            bars.axvline(count + offset, color=drawn.patches[0].get_facecolor(), linestyle=":")
        bars.set(title="Count distributions (dotted: true count)")
        bars.set(xlabel="number of lesions", ylabel="probability")
        bars.legend(loc="upper right", fontsize="x-small")
    figure.tight_layout()
    return _save(figure, path)
