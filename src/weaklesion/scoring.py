"""How a model's maps become lesions, and how those lesions are scored.

A run folder holds one set of :class:`LesionSettings`: the detector (iterative Gaussian
fitting with its width, connected components with where a component is placed, or
peaks), the most lesions per image, the matching distance and its unit, and the
operating point. Training's validation, ``weaklesion tune``, ``detect --run``,
``evaluate --run`` and ``count --run`` read the same settings, and validation and
tuning score them with one function, :func:`operating_curve`, so that the F1 training
reports on its validation cases is the F1 ``detect`` and ``evaluate`` give on them.

Matching is one-to-one within ``match_distance`` of a true lesion centre
(:func:`~weaklesion.metrics.match_points`), in mm when the run's widths are in mm,
else in voxels. A detection is kept when its score is at least the threshold
(components: the map is cut strictly above it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weaklesion._validation import ArrayLike, _values, check_finite
from weaklesion.config import TrainConfig
from weaklesion.counting import CountDistribution, count_statistics, poisson_binomial_pmf
from weaklesion.detection import Detections, component_detections, fit_gaussians, peak_detections
from weaklesion.metrics import hits_by_score, match_points

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.01, 1.0, 0.01), 2).tolist())
"""Candidate thresholds: 0.01, 0.02, ..., 0.99."""

DEFAULT_OFFSETS = tuple(np.round(np.arange(-1.0, 2.0 + 1e-9, 0.05), 2).tolist())
"""Candidate count offsets: -1.0, -0.95, ..., 2.0."""

DETECTORS = {
    "heatmap": "gaussians",
    "euclidean": "components",
    "geodesic": "components",
    "segmentation": "components",
    "count": "peaks",
}
"""The detector of each kind of run (``config.target``)."""

LOCATIONS = ("max", "center_of_mass")
MAX_LESIONS = 1000
"""Most lesions Gaussian fitting extracts per image, in validation and detection alike."""

_CONSTRAINED = re.compile(r"^(recall@fp<=|precision@recall>=)([0-9.eE+-]+)$")


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LesionSettings:
    """How maps become lesions and how lesions are matched to the truth.

    Attributes
    ----------
    method : {"gaussians", "components", "peaks"}
        Iterative Gaussian fitting (:func:`~weaklesion.detection.fit_gaussians`),
        connected components (:func:`~weaklesion.detection.component_detections`) or
        non-maximum suppression (:func:`~weaklesion.detection.peak_detections`).
    sigma : float or tuple of floats
        Width of the fitted Gaussians (``"gaussians"``), in ``units``.
    units : {"voxels", "mm"}
        Unit of ``sigma`` and ``match_distance``.
    location : {"max", "center_of_mass"}
        Where a component's detection sits (``"components"``): its first maximum voxel or
        its centre of mass weighted by the map. A segmentation's probabilities are flat
        near 1 inside an object, so its first maximum lies on the object's edge.
    max_lesions : int
        Most lesions fitted per image (``"gaussians"``).
    stop : float
        Stop level of the Gaussian fitting.
    nms_size : int
        Non-maximum suppression box (``"peaks"``).
    match_distance : float
        Largest distance of a match, in ``units``.
    threshold : float or None
        Keep detections scoring at least this; the map is cut strictly above it for
        ``"components"``. None keeps every candidate (0.5 for components).
    count_offset : float or None
        Count runs: keep the ``floor(count + count_offset)`` best peaks.
    sources : dict of str to str
        Where each setting came from, by attribute name.

    Examples
    --------
    >>> settings = LesionSettings(sigma=2.0, units="mm", match_distance=4.0)
    >>> settings.sigma_voxels([1.0, 0.5]).tolist(), settings.match_spacing([1.0, 0.5])
    ([2.0, 4.0], [1.0, 0.5])
    >>> settings.replace("option", threshold=0.3).sources["threshold"]
    'option'
    """

    method: str = "gaussians"
    sigma: float | tuple[float, ...] = 1.0
    units: str = "voxels"
    location: str = "max"
    max_lesions: int = MAX_LESIONS
    stop: float = 0.01
    nms_size: int = 6
    match_distance: float = 3.0
    threshold: float | None = None
    count_offset: float | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.method not in DETECTORS.values():
            raise ValueError(
                f"method: got {self.method!r}; expected gaussians, components or peaks"
            )
        if self.location not in LOCATIONS:
            raise ValueError(f"location: got {self.location!r}; expected max or center_of_mass")
        if self.units not in ("voxels", "mm"):
            raise ValueError(f"units: got {self.units!r}; expected voxels or mm")
        if self.max_lesions < 0:
            raise ValueError(f"max_lesions: got {self.max_lesions}; expected a count >= 0")
        if not self.match_distance > 0:
            raise ValueError(
                f"match_distance: got {self.match_distance!r}; expected a positive distance"
            )

    def replace(self, source: str, **values: Any) -> LesionSettings:
        """A copy with ``values`` set, each recorded as coming from ``source``."""
        sources = {**self.sources, **dict.fromkeys(values, source)}
        return dataclasses.replace(self, **values, sources=sources)

    def sigma_voxels(self, spacing: Sequence[float] | None, dims: int | None = None) -> np.ndarray:
        """``sigma`` per axis in voxels for an image of voxel size ``spacing`` (mm).

        ``dims`` gives the number of axes when ``spacing`` is None.
        """
        dims = len(spacing) if spacing is not None else (dims or np.size(self.sigma))
        sigma = np.broadcast_to(np.asarray(self.sigma, dtype=float), (dims,))
        if self.units == "mm":
            if spacing is None:
                raise ValueError("sigma: is in mm; expected the voxel spacing of the map")
            return sigma / np.asarray(spacing, dtype=float)
        return sigma.copy()

    def match_spacing(self, spacing: Sequence[float] | None) -> list[float] | None:
        """The spacing matching uses: the voxel size in mm, or None for voxels."""
        if self.units == "voxels" or spacing is None:
            return None
        return [float(s) for s in spacing]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every setting, the matching rule and each setting's source."""
        values = dataclasses.asdict(self)
        if isinstance(self.sigma, tuple):
            values["sigma"] = list(self.sigma)
        values["match_rule"] = "one-to-one within match_distance"
        return values

    def describe(self) -> str:
        """One line: the settings that matter for ``method``, each with its source."""
        names = {
            "gaussians": ("sigma", "max_lesions", "threshold"),
            "components": ("location", "threshold"),
            "peaks": ("nms_size", "threshold", "count_offset"),
        }[self.method]
        parts = [f"method {self.method} ({self.sources.get('method', 'default')})"]
        for name in (*names, "match_distance"):
            value = getattr(self, name)
            if value is not None:
                shown = f"{value} {self.units}" if name in ("sigma", "match_distance") else value
                parts.append(f"{name} {shown} ({self.sources.get(name, 'default')})")
        return "; ".join(parts)


def settings_for_config(config: TrainConfig, source: str = "run config") -> LesionSettings:
    """The lesion settings a training configuration implies.

    The detector of the run's kind (:data:`DETECTORS`); the fitted width
    ``config.fit_sigma`` (``config.sigma`` when None) and ``config.match_distance``, in
    ``config.sigma_units``; segmentation components at their centre of mass, others at
    their maximum; :data:`MAX_LESIONS`.

    Examples
    --------
    >>> from weaklesion.config import TrainConfig
    >>> settings = settings_for_config(TrainConfig(labels="masks", match_distance=5.0))
    >>> settings.method, settings.location, settings.match_distance
    ('components', 'center_of_mass', 5.0)
    """
    sigma = config.sigma if config.fit_sigma is None else config.fit_sigma
    values = {
        "method": DETECTORS[config.target],
        "sigma": float(sigma),
        "units": config.sigma_units,
        "location": "center_of_mass" if config.target == "segmentation" else "max",
        "match_distance": float(config.match_distance),
    }
    return LesionSettings().replace(source, **values)


def find_lesions(
    values: ArrayLike,
    settings: LesionSettings,
    spacing: Sequence[float] | None = None,
    threshold: float | None = None,
) -> Detections:
    """The lesions of one map under ``settings``, those scoring at least ``threshold``.

    Parameters
    ----------
    values : (Z, Y, X) or (Y, X) array
        The predicted map in user units (a mass-1 heatmap for ``"gaussians"``).
    settings : LesionSettings
    spacing : (D,) floats, optional
        Voxel size in mm; needed when the settings are in mm.
    threshold : float, optional
        Default ``settings.threshold``; None keeps every candidate (components are
        cut at 0.5).

    Returns
    -------
    Detections
        Highest score first. Gaussian fits are ordered by their unclipped amplitude
        (``extras["amplitude"]``), their scores being the amplitudes clipped to [0, 1].

    Examples
    --------
    >>> probability = np.zeros((9, 9))
    >>> probability[2:7, 2:5] = 1.0
    >>> settings = LesionSettings(method="components", location="center_of_mass")
    >>> find_lesions(probability, settings, threshold=0.5).points
    array([[4., 3.]])
    """
    threshold = settings.threshold if threshold is None else threshold
    array = np.asarray(_values(values))
    if settings.method == "components":
        cut = 0.5 if threshold is None else threshold
        return component_detections(array, cut, location=settings.location)
    if settings.method == "gaussians":
        sigma = settings.sigma_voxels(spacing, array.ndim)
        found = fit_gaussians(array, sigma, stop=settings.stop, max_lesions=settings.max_lesions)
    else:
        found = peak_detections(array, size=settings.nms_size)
    return found if threshold is None else found[found.scores >= threshold]


def lesion_count_distribution(lesions: Detections, credible: float = 0.95) -> CountDistribution:
    """The count distribution of detected lesions with existence probabilities.

    Each lesion exists with the probability of its score (the clipped amplitude of a
    fitted Gaussian), independently: the count is Poisson-binomial over the scores,
    its mean their sum.

    Examples
    --------
    >>> found = Detections([[1.0, 1.0], [5.0, 5.0]], [1.0, 0.5])
    >>> lesion_count_distribution(found).pmf
    array([0. , 0.5, 0.5])
    """
    return count_statistics(poisson_binomial_pmf(np.asarray(lesions.scores)), credible)


def operating_curve(
    maps: Sequence[ArrayLike],
    truth_points: Sequence[ArrayLike],
    settings: LesionSettings,
    spacings: Sequence[Sequence[float] | None] | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> OperatingCurve:
    """Detection outcomes of ``settings`` on predicted maps at each candidate threshold.

    The one scoring function of validation during training and of
    :func:`weaklesion.tuning.tune_operating_point`: the detector of ``settings`` runs
    on every map (Gaussian fitting and peaks once, components afresh at each
    threshold), and the kept detections are matched one-to-one within
    ``settings.match_distance``.

    Parameters
    ----------
    maps : sequence of (Z, Y, X) or (Y, X) arrays
        Predicted maps, one per case.
    truth_points : sequence of (T, D) arrays
        True lesion centres in voxels.
    settings : LesionSettings
    spacings : sequence of (D,) spacings, optional
        Voxel size of each case in mm (needed for settings in mm).
    thresholds : sequence of floats
        Candidates.

    Returns
    -------
    OperatingCurve
        ``parameter="threshold"``; the F1 at a threshold equals that of
        :func:`weaklesion.metrics.evaluate_detections` on the detections
        :func:`find_lesions` keeps there.

    Examples
    --------
    >>> heatmap = np.zeros((12, 12))
    >>> heatmap[3, 3] = 1.0
    >>> curve = operating_curve([heatmap], [[[3.0, 4.0]]],
    ...                         LesionSettings("components"), thresholds=[0.5])
    >>> int(curve.tp[0, 0]), int(curve.fp[0, 0])
    (1, 0)
    """
    spacings = [None] * len(maps) if spacings is None else list(spacings)
    matching = [settings.match_spacing(spacing) for spacing in spacings]
    if settings.method == "components":
        return detector_sweep(
            lambda tau, case: find_lesions(maps[case], settings, spacings[case], tau).points,
            len(maps),
            truth_points,
            settings.match_distance,
            thresholds,
            matching,
        )
    found = [
        find_lesions(values, settings.replace("default", threshold=None), spacing)
        for values, spacing in zip(maps, spacings, strict=True)
    ]
    return threshold_sweep(
        [(lesions.points, lesions.scores) for lesions in found],
        truth_points,
        settings.match_distance,
        thresholds,
        matching,
    )


# ---------------------------------------------------------------------------- curves


@dataclass(frozen=True, eq=False)
class OperatingCurve:
    """Per-case outcomes of a detector at each candidate setting of its knob.

    Attributes
    ----------
    parameter : {"threshold", "count_offset"}
        What the values set.
    values : (K,) float ndarray
        Candidate settings, the most conservative (fewest detections) first.
    tp, fp, fn : (K, C) int ndarrays or None
        True positives, false positives and false negatives of each case at each
        setting; None without point labels.
    predicted_count : (K, C) float ndarray
        The count each setting predicts for each case.
    truth_count : (C,) float ndarray
        True count of each case.
    """

    parameter: str
    values: np.ndarray
    tp: np.ndarray | None
    fp: np.ndarray | None
    fn: np.ndarray | None
    predicted_count: np.ndarray
    truth_count: np.ndarray

    def scores(self) -> dict[str, np.ndarray]:
        """Pooled scores at each setting, ``(K,)`` arrays.

        ``precision``, ``recall``, ``f1`` and ``fp_per_image`` (with point labels; the
        conventions of :func:`weaklesion.metrics.detection_scores`), ``count_accuracy``
        (predicted count rounded half up equals the truth) and ``count_mae``.
        """
        result = {}
        if self.tp is not None:
            tp, fp, fn = self.tp.sum(axis=1), self.fp.sum(axis=1), self.fn.sum(axis=1)
            result["precision"] = _ratio(tp, tp + fp)
            result["recall"] = _ratio(tp, tp + fn)
            result["f1"] = _ratio(2 * tp, 2 * tp + fp + fn)
            result["fp_per_image"] = fp / max(self.fp.shape[1], 1)
        rounded = np.floor(self.predicted_count + 0.5)
        result["count_accuracy"] = np.mean(rounded == self.truth_count, axis=1)
        result["count_mae"] = np.mean(np.abs(self.predicted_count - self.truth_count), axis=1)
        return result


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 1 where the denominator counts nothing."""
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 1.0)


def _candidates(values: Sequence[float], name: str, descending: bool) -> np.ndarray:
    array = np.unique(np.asarray(values, dtype=float).ravel())
    if array.size == 0:
        raise ValueError(f"{name}: is empty; expected candidate settings")
    check_finite(array, name)
    return array[::-1] if descending else array


def _truth_arrays(truth_points, n_cases: int, spacing) -> tuple[list, list]:
    if len(truth_points) != n_cases:
        raise ValueError(
            f"truth_points: has {len(truth_points)} cases but there are {n_cases} cases of "
            "detections; expected one entry per case"
        )
    per_case = isinstance(spacing, list | tuple) and any(
        s is None or np.ndim(s) == 1 for s in spacing
    )
    per_case = per_case or (isinstance(spacing, np.ndarray) and spacing.ndim == 2)
    spacings = list(spacing) if per_case else [spacing] * n_cases
    if len(spacings) != n_cases:
        raise ValueError(f"spacing: has {len(spacings)} entries; expected one per case")
    return [np.asarray(_values(t), dtype=float) for t in truth_points], spacings


def threshold_sweep(
    detections: Sequence[tuple[ArrayLike, ArrayLike]],
    truth_points: Sequence[ArrayLike],
    max_distance: float,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    spacing: Any = None,
) -> OperatingCurve:
    """Outcomes of keeping the detections scoring at least each threshold.

    For detectors whose detections at a threshold are a subset of one scored list, as
    the amplitudes of :func:`~weaklesion.detection.fit_gaussians`.

    Parameters
    ----------
    detections : sequence of (points (P, D), scores (P,))
        Every detection of each case with its score.
    truth_points : sequence of (T, D) arrays
        True lesion centres of each case.
    max_distance : float
        Largest match distance, in mm with ``spacing``, else voxels.
    thresholds : sequence of floats
        Candidates; sorted from the highest.
    spacing : float, (D,) sequence, or list of per-case (D,) spacings or None, optional
        Voxel size in mm, for every case or per case.

    Returns
    -------
    OperatingCurve
        ``parameter="threshold"``; the true positives at each threshold are those of
        :func:`~weaklesion.metrics.match_points` on the kept detections.

    Notes
    -----
    The one-to-one matching of the detections kept at each threshold comes from a single
    pass of :func:`~weaklesion.metrics.hits_by_score` per case (a hit is a detection
    that enlarges the maximum matching when added in decreasing score order), so the
    sweep costs one matching per case whatever the number of thresholds.

    Examples
    --------
    >>> found = [([[1.0, 1.0], [6.0, 6.0]], [0.9, 0.3])]
    >>> curve = threshold_sweep(found, [[[1.0, 2.0], [6.0, 5.0]]], 2.0, [0.2, 0.5])
    >>> curve.values, curve.tp[:, 0], curve.fn[:, 0]
    (array([0.5, 0.2]), array([1, 2]), array([1, 0]))
    """
    values = _candidates(thresholds, "thresholds", descending=True)
    truths, spacings = _truth_arrays(truth_points, len(detections), spacing)
    tp, kept = [], []
    for (points, scores), truth, case_spacing in zip(detections, truths, spacings, strict=True):
        scores = np.asarray(_values(scores), dtype=float).ravel()
        hits = hits_by_score(points, scores, truth, max_distance, case_spacing)
        order = np.argsort(-scores, kind="stable")
        # Detections kept at threshold t: those scoring >= t, a prefix of ``order``.
        n_kept = np.searchsorted(-scores[order], -values, side="right")
        tp.append(np.concatenate([[0], np.cumsum(hits[order])])[n_kept])
        kept.append(n_kept)
    tp_array = np.stack(tp, axis=1) if tp else np.zeros((len(values), 0), dtype=np.int64)
    kept_array = np.stack(kept, axis=1) if kept else np.zeros_like(tp_array)
    n_truth = np.array([len(t) for t in truths], dtype=np.int64)
    return OperatingCurve(
        "threshold",
        values,
        tp_array,
        kept_array - tp_array,
        n_truth - tp_array,
        kept_array.astype(float),
        n_truth.astype(float),
    )


def detector_sweep(
    detect: Callable[[float, int], np.ndarray],
    n_cases: int,
    truth_points: Sequence[ArrayLike],
    max_distance: float,
    values: Sequence[float] = DEFAULT_THRESHOLDS,
    spacing: Any = None,
    parameter: str = "threshold",
) -> OperatingCurve:
    """Outcomes of any detector run afresh at each setting.

    Parameters
    ----------
    detect : callable ``(value, case index) -> (P, D) points``
        The detections of one case at one setting, e.g. the connected components of a
        map above ``value``.
    n_cases : int
        Number of cases.
    truth_points, max_distance, spacing
        As for :func:`threshold_sweep`.
    values : sequence of floats
        Candidate settings.
    parameter : {"threshold", "count_offset"}
        The knob: thresholds are tried from the highest, offsets from the lowest.

    Returns
    -------
    OperatingCurve

    Examples
    --------
    >>> from weaklesion.detection import component_detections
    >>> prob = np.zeros((8, 8))
    >>> prob[1, 1], prob[5, 5] = 0.9, 0.4
    >>> curve = detector_sweep(
    ...     lambda t, c: component_detections(prob, t).points, 1, [[[1.0, 1.0]]], 1.5,
    ...     [0.3, 0.6])
    >>> curve.values, curve.fp[:, 0]
    (array([0.6, 0.3]), array([0, 1]))
    """
    settings = _candidates(values, "values", descending=parameter == "threshold")
    truths, spacings = _truth_arrays(truth_points, n_cases, spacing)
    shape = (len(settings), n_cases)
    tp, fp, fn = (np.zeros(shape, dtype=np.int64) for _ in range(3))
    for k, value in enumerate(settings):
        for case, (truth, case_spacing) in enumerate(zip(truths, spacings, strict=True)):
            matches = match_points(detect(float(value), case), truth, max_distance, case_spacing)
            tp[k, case], fp[k, case], fn[k, case] = matches.tp, matches.fp, matches.fn
    n_truth = np.array([len(t) for t in truths], dtype=float)
    return OperatingCurve(parameter, settings, tp, fp, fn, (tp + fp).astype(float), n_truth)


def count_offset_sweep(
    candidates: Sequence[tuple[ArrayLike, ArrayLike]],
    counts: ArrayLike,
    truth_counts: ArrayLike,
    truth_points: Sequence[ArrayLike] | None,
    max_distance: float,
    offsets: Sequence[float] = DEFAULT_OFFSETS,
    spacing: Any = None,
) -> OperatingCurve:
    """Outcomes of keeping the ``n = max(floor(count + b), 0)`` best candidates per case.

    The GP-Unet rule: the predicted count says how many of the attention map's peaks
    (ranked by value) are lesions; the offset ``b`` sets the rounding (0.5 rounds half
    up, lower keeps fewer).

    Parameters
    ----------
    candidates : sequence of (points (P, D), scores (P,))
        Each case's candidates, e.g. :func:`~weaklesion.detection.peak_detections`.
    counts : (C,) array
        Predicted count of each case.
    truth_counts : (C,) array
        True count of each case.
    truth_points : sequence of (T, D) arrays, or None
        True lesion centres; without them the curve has count outcomes only.
    max_distance, spacing
        As for :func:`threshold_sweep`.
    offsets : sequence of floats
        Candidate offsets; sorted from the lowest.

    Returns
    -------
    OperatingCurve
        ``parameter="count_offset"``; ``predicted_count`` is ``n``.

    Examples
    --------
    >>> peaks = [([[1.0, 1.0], [5.0, 5.0], [9.0, 9.0]], [0.9, 0.8, 0.1])]
    >>> curve = count_offset_sweep(peaks, [1.4], [2], [[[1.0, 1.0], [5.0, 5.0]]], 1.0,
    ...                            offsets=[0.0, 0.5, 0.7])
    >>> curve.predicted_count[:, 0], curve.tp[:, 0]
    (array([1., 1., 2.]), array([1, 1, 2]))
    """
    settings = _candidates(offsets, "offsets", descending=False)
    predicted = np.asarray(_values(counts), dtype=float).ravel()
    truth = np.asarray(_values(truth_counts), dtype=float).ravel()
    if not len(predicted) == len(truth) == len(candidates):
        raise ValueError(
            f"counts, truth_counts: have {len(predicted)} and {len(truth)} entries for "
            f"{len(candidates)} cases; expected one per case"
        )
    check_finite(predicted, "counts")
    n = np.maximum(np.floor(predicted[None, :] + settings[:, None]), 0).astype(np.int64)
    if truth_points is None:
        return OperatingCurve("count_offset", settings, None, None, None, n.astype(float), truth)
    truths, spacings = _truth_arrays(truth_points, len(candidates), spacing)
    tp, kept = np.zeros_like(n), np.zeros_like(n)
    for case, ((points, scores), truth_case, case_spacing) in enumerate(
        zip(candidates, truths, spacings, strict=True)
    ):
        scores = np.asarray(_values(scores), dtype=float).ravel()
        hits = hits_by_score(points, scores, truth_case, max_distance, case_spacing)
        order = np.argsort(-scores, kind="stable")
        kept[:, case] = np.minimum(n[:, case], len(scores))
        tp[:, case] = np.concatenate([[0], np.cumsum(hits[order])])[kept[:, case]]
    n_truth = np.array([len(t) for t in truths], dtype=np.int64)
    return OperatingCurve(
        "count_offset", settings, tp, kept - tp, n_truth - tp, n.astype(float), truth
    )


# ---------------------------------------------------------------------------- choice


def metric_curve(curve: OperatingCurve, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The value of ``metric`` at each setting, and the values to maximise.

    Returns
    -------
    reported : (K,) float ndarray
        The metric (NaN where a constraint fails).
    objective : (K,) float ndarray
        Higher is better; ``-inf`` where a constraint fails.

    Examples
    --------
    >>> curve = OperatingCurve("threshold", np.array([0.6, 0.3]), np.array([[1], [2]]),
    ...                        np.array([[0], [3]]), np.array([[1], [0]]),
    ...                        np.array([[1.0], [5.0]]), np.array([2.0]))
    >>> metric_curve(curve, "recall@fp<=1")[0]
    array([0.5, nan])
    """
    scores = curve.scores()
    constrained = _CONSTRAINED.match(metric)
    if metric in ("count_accuracy", "count_mae"):
        reported = scores[metric]
        return reported, -reported if metric == "count_mae" else reported
    if metric != "f1" and constrained is None:
        raise ValueError(
            f"metric: got {metric!r}; expected f1, recall@fp<=X, precision@recall>=X, "
            "count_accuracy or count_mae"
        )
    if curve.tp is None:
        raise ValueError(
            f"metric: {metric!r} needs point labels and the cases have none; "
            "use count_accuracy or count_mae"
        )
    if metric == "f1":
        return scores["f1"], scores["f1"]
    name, bound = constrained.group(1), float(constrained.group(2))
    if name == "recall@fp<=":
        reported, feasible = scores["recall"], scores["fp_per_image"] <= bound
    else:
        reported, feasible = scores["precision"], scores["recall"] >= bound
    return np.where(feasible, reported, np.nan), np.where(feasible, reported, -np.inf)


def choose_operating_point(curve: OperatingCurve, metric: str = "f1") -> int:
    """Index of the best setting by ``metric``; ties go to the most conservative.

    Raises
    ------
    ValueError
        If no setting meets the metric's constraint.

    Examples
    --------
    >>> curve = threshold_sweep([([[1.0], [5.0]], [0.9, 0.2])], [[[1.0]]], 1.0,
    ...                         [0.1, 0.5, 0.8])
    >>> float(curve.values[choose_operating_point(curve)])
    0.8
    """
    _, objective = metric_curve(curve, metric)
    if not np.any(np.isfinite(objective)):
        raise ValueError(f"metric: no setting meets {metric!r} on these cases")
    best = np.nanmax(objective)
    return int(np.flatnonzero(np.isclose(objective, best, rtol=1e-12, atol=0.0))[0])
