"""Experiment 2's design: the rows of Table 1, the models they need, and the sizes.

What a run of :func:`~weaklesion.bench.points.run_points` is made of, shared by its
units (:mod:`~weaklesion.bench.points.units`), its scores
(:mod:`~weaklesion.bench.points.scores`) and its report
(:mod:`~weaklesion.bench.points.report`): the rows and their model and detector, what
each kind of model changes in the demo's recipe, the phantom's split, the thresholds
and bins of the scores, and the full and quick sizes (:data:`SETTINGS`).

The count row (``counts_peaks``) asks what image-level counts cost against points and
masks: a GP-Unet (:class:`~weaklesion.models.GPUNet`, architecture A) learns only each
volume's lesion count (MSE, with the package's centred count gradient, which compares
the two volumes of the recipe's batch), and the peaks of its class activation map
(CAM), whose voxel mean is the predicted count, are the detections: the package's
non-maximum suppression for count runs (a box of 6 voxels, as ``weaklesion detect``
finds them). The network has 8 filters (:attr:`PointsSettings.count_filters`), a
quarter of the papers' 32 in 3D, so that it trains with the same compute as the U-Net
rows: on one CPU thread a training step on a batch of two 2-channel 32 x 64 x 64
volumes took 0.34 s with 8 filters, 0.73 s with 16 and 2.4 s with 32, against 0.37 s
for the recipe's U-Net. The centred gradient adds, after every epoch, a pass over the
training volumes without gradients (two volumes per call). With 21 k weights against
the U-Net's 351 k, the counts row is the smaller network at the same budget; with its
one pooling level a voxel's output sees about 16 voxels across, more than the
phantom's largest lesions (400 voxels, about 9 across). A CAM holds
densities, not probabilities, on its model's own scale and with any constant its
linear output adds: it is put on the scale where the validation maps' median voxel
(the background) is 0 and their largest value 1
(:func:`~weaklesion.bench.points.attention_levels`), so that the threshold, chosen on
the validation cases among :data:`THRESHOLDS` like every other row's, keeps the peaks
at least that fraction of the way from the background to the strongest validation
peak; the FROC ranks every peak by its value, which this rescaling leaves in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ROWS = (
    "segmentation_cc",
    "euclidean_cc",
    "geodesic_cc",
    "heatmap_cc",
    "heatmap_fit",
    "counts_peaks",
)
"""Rows of Table 1: model + detector."""

METHODS = (*ROWS, "transfer")
"""What ``methods`` may name: the rows, and the transfer experiment."""

ROW_LABELS = {
    "segmentation_cc": "segmentation + CC",
    "euclidean_cc": "Euclidean map + CC",
    "geodesic_cc": "geodesic map + CC",
    "heatmap_cc": "heatmap + CC",
    "heatmap_fit": "heatmap + Gaussian fitting (ours)",
    "counts_peaks": "GP-Unet from counts + attention peaks",
}
# Model and detector of each row; "heatmap" is the heatmap of the recipe's sigma.
ROW_MODELS = {
    "segmentation_cc": ("segmentation", "components_centre"),
    "euclidean_cc": ("euclidean", "components"),
    "geodesic_cc": ("geodesic", "components"),
    "heatmap_cc": ("heatmap", "components"),
    "heatmap_fit": ("heatmap", "fit"),
    "counts_peaks": ("counts", "peaks"),
}
DETECTORS = ("components", "components_centre", "fit", "peaks")
# What each kind of model changes in the recipe.
MODEL_CHANGES = {
    "segmentation": {"labels": "masks", "target": "segmentation"},
    "euclidean": {"labels": "points", "target": "euclidean"},
    "geodesic": {"labels": "points", "target": "geodesic"},
    "heatmap": {"labels": "points", "target": "heatmap"},
    "counts": {
        "labels": "counts",
        "target": "count",
        "model": "gpunet",
        "count_gradient": "centred",
    },
}
# Model kinds in the order their units run (the count model last, after the recorded ones).
MODEL_KINDS = ("heatmap", "segmentation", "euclidean", "geodesic", "counts")
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
# The transfer table's reference arm: a segmentation model from scratch on every training
# case's mask, trained and scored like the arms (no validation masks, last epoch).
REFERENCE_FRACTION = 1.0
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
    count_filters : int
        Filters of the count row's GP-Unet (its ``model_kwargs``, in place of the
        recipe's U-Net widths).
    """

    shape: tuple[int, int, int]
    split: tuple[int, int, int] | None
    test_cases: int
    recipe_changes: Mapping[str, Any]
    sigmas: tuple[float, ...]
    mask_fractions: tuple[float, ...]
    mc_samples: int
    count_filters: int


SETTINGS = {
    "full": PointsSettings(
        shape=(32, 64, 64),
        split=None,
        test_cases=30,
        recipe_changes={},
        sigmas=(1.0, 1.25, 1.5),
        mask_fractions=(0.01, 0.05, 0.1),
        mc_samples=10,
        count_filters=8,
    ),
    "quick": PointsSettings(
        shape=(16, 32, 32),
        split=(4, 2, 2),
        test_cases=2,
        recipe_changes={"epochs": 3, "val_every": 3, "model_kwargs.features": [4, 8, 16]},
        sigmas=(1.0, 1.5),
        mask_fractions=(0.25,),
        mc_samples=2,
        count_filters=4,
    ),
}
