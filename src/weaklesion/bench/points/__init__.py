"""Experiment 2: points against masks (Myers-Colet et al., MICCAI 2022, Tables 1-2, Fig. 2).

The paper detects gadolinium-enhancing lesions in private brain MRI; here the same
protocol runs on the 3D phantom (:func:`weaklesion.data.write_phantom_dataset`), whose
points, masks and lesion sizes are exact.

Data
    The demo's phantom: the same training cases as ``weaklesion demo`` (the first
    :data:`TRAINING_CASES`), the first :data:`VALIDATION_CASES` of its validation cases,
    and more held-out test cases (:attr:`PointsSettings.test_cases`); one
    phantom (seed :data:`DATA_SEED`) for every model, seeds vary the training only.
Models (one set per seed)
    Every model starts from the demo's training recipe (``configs/demo.toml``, read when
    a run starts and kept in ``OUT/recipe.toml`` so that a resumed run uses the same one)
    and changes only what the method needs: ``segmentation`` learns the masks (weighted
    BCE; with dropout for MC dropout, :data:`MC_DROPOUT` where the recipe has none),
    ``euclidean`` and ``geodesic`` regress ``exp(-distance / sigma)`` maps of the points,
    ``heatmap-sN`` regresses Gaussian heatmaps of width ``sigma = N`` voxels (the
    recipe's sigma for the table; 1, 1.25 and 1.5 as transfer sources), and
    ``counts`` is a GP-Unet (:class:`~weaklesion.models.GPUNet`, 8 filters) that learns
    each volume's lesion count alone, with the centred count gradient. The best
    validation epoch (``best.pt``) is evaluated.
Table 1: detection (rows :data:`ROWS`)
    Segmentation, distance maps and heatmap cut at a threshold into connected components
    (26-connected), one detection per component at its maximum (at its centre of mass for
    the segmentation, whose points are the masks' centres of mass); heatmap with
    iterative Gaussian fitting (:func:`~weaklesion.detection.fit_gaussians`), a
    detection per fitted lesion whose amplitude passes the threshold; the count model's
    attention map (its class activation map) with a detection per peak after
    non-maximum suppression whose value passes the threshold, on the scale where the
    validation maps' median voxel is 0 and their largest value 1
    (:func:`attention_levels`). The threshold of every row is the one of 0.01 .. 0.99
    with the best F1 on the validation cases (:func:`~weaklesion.tuning.detector_sweep`).
    On the test cases: precision, recall and F1 pooled over cases (a detection within
    ``match_distance`` voxels of a true centre, one-to-one), and recall per lesion-size
    stratum (:data:`~weaklesion.metrics.SIZE_STRATA`; "small" is 3-10 voxels); for the
    count row also the FROC over every peak ranked by its value and its area up to
    :data:`MAX_FP` false positives per volume (:func:`detection_froc`).
Table 2: calibration and uncertainty
    Every lesion the Gaussian fitting finds on the test cases (amplitude above the
    fitting's stop level) with two existence probabilities: the fitted amplitude, and the
    unfitted one, the heatmap's value (peak-1 scale, clipped to [0, 1]) at the lesion's
    voxel; the outcome is whether it is a hit in decreasing amplitude order
    (:func:`~weaklesion.metrics.hits_by_score`). Expected calibration error over 10
    bins and a reliability plot. Then the accuracy of the ``k`` most certain test
    detections: the heatmap's kept lesions ranked by the entropy of their amplitude,
    against the segmentation model's MC-dropout lesions (:data:`PointsSettings.mc_samples`
    passes, components of the mean map at the segmentation row's threshold) ranked by
    the entropy of their mean probability.
Transfer
    For each mask fraction (1 %, 5 %, 10 % of the training cases, at least one case,
    the same cases for every arm of a seed) a segmentation model is trained from scratch,
    and fine-tuned (:func:`~weaklesion.training.finetune.finetune`, whole network) from
    the heatmap models of each sigma and from the distance-map models, for the recipe's
    number of epochs. No validation masks are used (masks this scarce leave none to
    spare): the last epoch is evaluated on the test cases, the probability map cut at
    0.5: segmentation F1 by overlap (:func:`overlap_matches`), detection F1 (components'
    centres of mass) and Dice. A reference arm per seed trains from scratch on the masks
    of all training cases (:data:`REFERENCE_FRACTION`) and is scored the same way.

Every trained model and every evaluation is one unit with its own JSON file under
``OUT/units`` (:func:`weaklesion.bench.common.run_unit`), written atomically once the
unit is done; a rerun reads finished units, and an interrupted training resumes from its
``last.pt``. Units run in this order: the models of Table 1 and their evaluations seed by
seed (Table 2 comes from the same evaluations), then the transfer sources, the arms and
the reference arms. The report (``OUT/tables.md``, ``OUT/summary.json`` and the
figures) is computed from the unit files alone and rewritten after every evaluation.

One module per idea: :mod:`~weaklesion.bench.points.design` (rows, models and sizes),
:mod:`~weaklesion.bench.points.scores` (detectors, thresholds, calibration and
certainty of one model), :mod:`~weaklesion.bench.points.units` (the units and
:func:`run_points`) and :mod:`~weaklesion.bench.points.report` (summary, tables and
figures); every public name is importable from :mod:`weaklesion.bench.points`. From a
shell: ``python -m weaklesion.bench.points --out OUT [--seeds N] [--quick]``.
"""

from weaklesion.bench.points.design import (
    CALIBRATION_BINS,
    CERTAINTY_FRACTIONS,
    DATA_SEED,
    DETECTORS,
    FAUC_RESAMPLES,
    FIT_STOP,
    MAX_FP,
    MAX_LESIONS,
    MC_DROPOUT,
    METHODS,
    MODEL_CHANGES,
    MODEL_KINDS,
    REFERENCE_FRACTION,
    ROW_LABELS,
    ROW_MODELS,
    ROWS,
    SETTINGS,
    THRESHOLDS,
    TRAINING_CASES,
    TRANSFER_SCORES,
    VALIDATION_CASES,
    PointsSettings,
)
from weaklesion.bench.points.report import points_tables, summarise_points, write_points_report
from weaklesion.bench.points.scores import (
    COUNT_PEAKS,
    attention_levels,
    certainty_curve,
    detection_froc,
    existence_calibration,
    fitted_detector,
    row_detector,
    scored_detections,
    tune_and_test,
)
from weaklesion.bench.points.units import run_points, training_datalist
from weaklesion.metrics import f1_from_counts, overlap_matches, segmentation_scores

__all__ = [
    "CALIBRATION_BINS",
    "CERTAINTY_FRACTIONS",
    "COUNT_PEAKS",
    "DATA_SEED",
    "DETECTORS",
    "FAUC_RESAMPLES",
    "FIT_STOP",
    "MAX_FP",
    "MAX_LESIONS",
    "MC_DROPOUT",
    "METHODS",
    "MODEL_CHANGES",
    "MODEL_KINDS",
    "REFERENCE_FRACTION",
    "ROWS",
    "ROW_LABELS",
    "ROW_MODELS",
    "SETTINGS",
    "THRESHOLDS",
    "TRAINING_CASES",
    "TRANSFER_SCORES",
    "VALIDATION_CASES",
    "PointsSettings",
    "attention_levels",
    "certainty_curve",
    "detection_froc",
    "existence_calibration",
    "f1_from_counts",
    "fitted_detector",
    "overlap_matches",
    "points_tables",
    "row_detector",
    "run_points",
    "scored_detections",
    "segmentation_scores",
    "summarise_points",
    "training_datalist",
    "tune_and_test",
    "write_points_report",
]
