"""Experiment 2's design: the rows of Table 1, the models they need, and the sizes.

What a run of :func:`~weaklesion.bench.points.run_points` is made of, shared by its
units (:mod:`~weaklesion.bench.points.units`), its scores
(:mod:`~weaklesion.bench.points.scores`) and its report
(:mod:`~weaklesion.bench.points.report`): the rows and their model and detector, what
each kind of model changes in the demo's recipe, the phantom's split, the thresholds
and bins of the scores, and the full and quick sizes (:data:`SETTINGS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ROWS = ("segmentation_cc", "euclidean_cc", "geodesic_cc", "heatmap_cc", "heatmap_fit")
"""Rows of Table 1: model + detector."""

METHODS = (*ROWS, "transfer")
"""What ``methods`` may name: the rows, and the transfer experiment."""

ROW_LABELS = {
    "segmentation_cc": "segmentation + CC",
    "euclidean_cc": "Euclidean map + CC",
    "geodesic_cc": "geodesic map + CC",
    "heatmap_cc": "heatmap + CC",
    "heatmap_fit": "heatmap + Gaussian fitting (ours)",
}
# Model and detector of each row; "heatmap" is the heatmap of the recipe's sigma.
ROW_MODELS = {
    "segmentation_cc": ("segmentation", "components_centre"),
    "euclidean_cc": ("euclidean", "components"),
    "geodesic_cc": ("geodesic", "components"),
    "heatmap_cc": ("heatmap", "components"),
    "heatmap_fit": ("heatmap", "fit"),
}
DETECTORS = ("components", "components_centre", "fit", "peaks")
# What each kind of model changes in the recipe.
MODEL_CHANGES = {
    "segmentation": {"labels": "masks", "target": "segmentation"},
    "euclidean": {"labels": "points", "target": "euclidean"},
    "geodesic": {"labels": "points", "target": "geodesic"},
    "heatmap": {"labels": "points", "target": "heatmap"},
}
MC_DROPOUT = 0.1  # dropout of the segmentation model when the recipe has none
DATA_SEED = 0
# Training and validation cases of the phantom (the split of the runs recorded so far).
TRAINING_CASES, VALIDATION_CASES = 36, 6
THRESHOLDS = tuple(np.round(np.arange(0.01, 1.0, 0.01), 2).tolist())
MAX_LESIONS = 100  # most lesions fitted per map (the phantom has at most 12)
FIT_STOP = 0.01  # amplitude at which the Gaussian fitting stops
CALIBRATION_BINS = 10
CERTAINTY_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
TRANSFER_SCORES = ("segmentation_f1", "detection_f1", "dice")
MAX_FP = 5.0  # upper end of the FROC area, false positives per volume
FAUC_RESAMPLES = 1000  # bootstrap resamples of the test cases for the FAUC interval


@dataclass(frozen=True)
class PointsSettings:
    """Sizes of one version of the experiment (``SETTINGS["full"]`` or ``["quick"]``).

    Attributes
    ----------
    shape : (Z, Y, X) ints
        Phantom volume size in voxels.
    split : (int, int, int) or None
        Training, validation and test cases; None: the demo's training and validation
        cases and ``test_cases`` test cases.
    test_cases : int
        Test cases when ``split`` is None.
    recipe_changes : dict
        Changes to the demo's recipe for every model (the quick version's tiny network).
    sigmas : tuple of float
        Heatmap widths (voxels) of the transfer sources.
    mask_fractions : tuple of float
        Fractions of the training cases whose masks the transfer arms use.
    mc_samples : int
        MC-dropout passes of the segmentation model.
    """

    shape: tuple[int, int, int]
    split: tuple[int, int, int] | None
    test_cases: int
    recipe_changes: Mapping[str, Any]
    sigmas: tuple[float, ...]
    mask_fractions: tuple[float, ...]
    mc_samples: int


SETTINGS = {
    "full": PointsSettings(
        shape=(32, 64, 64),
        split=None,
        test_cases=30,
        recipe_changes={},
        sigmas=(1.0, 1.25, 1.5),
        mask_fractions=(0.01, 0.05, 0.1),
        mc_samples=10,
    ),
    "quick": PointsSettings(
        shape=(16, 32, 32),
        split=(4, 2, 2),
        test_cases=2,
        recipe_changes={"epochs": 3, "val_every": 3, "model_kwargs.features": [4, 8, 16]},
        sigmas=(1.0, 1.5),
        mask_fractions=(0.25,),
        mc_samples=2,
    ),
}
