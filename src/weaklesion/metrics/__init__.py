"""Scores for detections, counts and probabilities.

Detections are matched to the truth one-to-one, either by distance between points
(:func:`match_points`) or by falling inside a labelled region (:func:`match_to_regions`);
the match records of many cases give precision, recall and F1 (:func:`detection_scores`),
recall per lesion size (:func:`recall_by_size`) and, with detection scores, FROC curves
and their normalised area (:func:`froc_curve`, :func:`froc_by_rank`, :func:`froc_auc`)
with bootstrap confidence intervals over cases (:func:`bootstrap_ci`,
:func:`froc_auc_ci`; :func:`froc_auc_weighted` for the area of any weighting of the
cases, such as paired resamples). Probabilities are scored by their calibration
(:func:`reliability_bins`, :func:`expected_calibration_error`) and uncertainties by the
accuracy of the most certain items (:func:`accuracy_by_certainty`); predicted counts by
accuracy, mean absolute error and macro F1 over count classes (:func:`count_metrics`).

Conventions
-----------
- Distances are in mm when ``spacing`` is given, else in voxels.
- A ratio whose denominator counts nothing takes the value it would have if nothing could
  go wrong: precision is 1 when there are no predictions, recall (sensitivity) is 1 when
  there is no truth, and F1 = 2 TP / (2 TP + FP + FN) is 1 when both are empty. F1 from
  counts equals the harmonic mean of precision and recall whenever both are defined.
- An average over no items (false positives per image over no cases, the accuracy of no
  counts, the calibration error of no probabilities) is NaN.
- Every function accepts NumPy arrays, sequences or torch tensors and returns NumPy
  arrays or Python numbers; records with several numbers have ``to_dict()`` for JSON,
  where NaN and infinite values become ``None``.

One module per idea: :mod:`~weaklesion.metrics.matching`,
:mod:`~weaklesion.metrics.scores`, :mod:`~weaklesion.metrics.froc`,
:mod:`~weaklesion.metrics.bootstrap`, :mod:`~weaklesion.metrics.calibration`,
:mod:`~weaklesion.metrics.counts` and :mod:`~weaklesion.metrics.report`; every public
name is importable from :mod:`weaklesion.metrics`.
"""

from weaklesion.metrics._common import SIZE_STRATA
from weaklesion.metrics.bootstrap import (
    ConfidenceInterval,
    bootstrap_ci,
    case_multiplicities,
    froc_auc_ci,
    froc_auc_weighted,
)
from weaklesion.metrics.calibration import (
    CertaintyCurve,
    ReliabilityBins,
    accuracy_by_certainty,
    binary_entropy,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_bins,
)
from weaklesion.metrics.counts import (
    CountMetrics,
    count_accuracy,
    count_f1,
    count_mae,
    count_metrics,
)
from weaklesion.metrics.froc import (
    FROCCurve,
    froc_auc,
    froc_by_rank,
    froc_curve,
    hits_by_score,
    region_hits_by_score,
)
from weaklesion.metrics.matching import Matches, match_points, match_to_regions
from weaklesion.metrics.report import evaluate_detections
from weaklesion.metrics.scores import (
    DetectionScores,
    RecallBySize,
    detection_scores,
    f1_from_counts,
    lesion_sizes,
    overlap_matches,
    recall_by_size,
    segmentation_scores,
)

__all__ = [
    "SIZE_STRATA",
    "CertaintyCurve",
    "ConfidenceInterval",
    "CountMetrics",
    "DetectionScores",
    "FROCCurve",
    "Matches",
    "RecallBySize",
    "ReliabilityBins",
    "accuracy_by_certainty",
    "binary_entropy",
    "bootstrap_ci",
    "case_multiplicities",
    "count_accuracy",
    "count_f1",
    "count_mae",
    "count_metrics",
    "detection_scores",
    "evaluate_detections",
    "expected_calibration_error",
    "f1_from_counts",
    "froc_auc",
    "froc_auc_ci",
    "froc_auc_weighted",
    "froc_by_rank",
    "froc_curve",
    "hits_by_score",
    "lesion_sizes",
    "match_points",
    "match_to_regions",
    "maximum_calibration_error",
    "overlap_matches",
    "recall_by_size",
    "region_hits_by_score",
    "reliability_bins",
    "segmentation_scores",
]
