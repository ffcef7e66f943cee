"""Files that image viewers open on top of the image: detections and their outcomes.

- 3D Slicer: a markups file (``.mrk.json``, Slicer's markups schema v1.0.3, vendored in
  ``schemas/`` from Slicer's ``Modules/Loadable/Markups/Resources/Schema/`` with
  Slicer's licence), positions in LPS millimetres, one control point per lesion
  labelled with its score; evaluated cases get one point list per outcome.
- napari: a points CSV in napari's own layout (``index,axis-0,axis-1[,axis-2]`` in voxel
  indices along the array axes, further columns as point properties), which napari's
  built-in reader opens as a points layer over the image.
- ITK-SNAP, 3D Slicer and any NIfTI viewer: a label map with the image's shape and
  affine, hits, false positives and misses as labels 1, 2 and 3 (a small ball each), with
  colour tables for ITK-SNAP (``.txt``) and Slicer (``.ctbl``).

Voxel coordinates are our array axes, which are the voxel axes (i, j, k) of the NIfTI
affine; that affine maps them to RAS millimetres, and Slicer's LPS is RAS with the
first two axes negated.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from rich.console import Console
from rich.progress import track

from weaklesion.data import load_dataset
from weaklesion.io import atomic_write, read_image, write_image, write_json
from weaklesion.metrics import match_points

SCHEMA_DIR = Path(__file__).parent / "schemas"
MARKUPS_SCHEMA_FILE = SCHEMA_DIR / "markups-schema-v1.0.3.json"
MARKUPS_SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)

OUTCOMES: dict[str, tuple[int, str]] = {
    "hit": (1, "#009E73"),
    "false positive": (2, "#D55E00"),
    "miss": (3, "#56B4E9"),
}
"""Label value and colour (Okabe-Ito, told apart with any colour vision) of each outcome."""

DETECTION_COLOUR = "#E69F00"
"""Colour of detections that are not scored against a truth."""


@dataclass(frozen=True)
class CaseOutcomes:
    """Detections of one case split by outcome at a threshold.

    Attributes
    ----------
    hits : (H, D) float array
        Kept detections matched to a truth lesion, voxels.
    hit_scores : (H,) float array
    false_positives : (F, D) float array
        Kept detections matched to none, voxels.
    false_positive_scores : (F,) float array
    misses : (M, D) float array
        Truth lesions matched by no kept detection, voxels.
    """

    hits: np.ndarray
    hit_scores: np.ndarray
    false_positives: np.ndarray
    false_positive_scores: np.ndarray
    misses: np.ndarray

    def groups(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Points and scores (None for misses) by outcome name, as in :data:`OUTCOMES`."""
        return {
            "hit": (self.hits, self.hit_scores),
            "false positive": (self.false_positives, self.false_positive_scores),
            "miss": (self.misses, None),
        }


def case_outcomes(
    points: ArrayLike,
    scores: ArrayLike,
    truth: ArrayLike,
    max_distance: float,
    threshold: float,
    spacing: float | Sequence[float] | None = None,
) -> CaseOutcomes:
    """Split one case's detections into hits and false positives, and find the misses.

    The detections scoring at least ``threshold`` are matched to the truth one-to-one
    within ``max_distance`` by :func:`weaklesion.metrics.match_points`, the rule of
    ``weaklesion evaluate``, so the numbers of hits, false positives and misses are its
    TP, FP and FN.

    Parameters
    ----------
    points : (P, D) array
        Detections, voxels.
    scores : (P,) array
    truth : (T, D) array
        Truth lesion centres, voxels.
    max_distance : float
        Largest match distance, mm with ``spacing``, else voxels.
    threshold : float
        Detections scoring below it are left out.
    spacing : float or sequence of D floats, optional
        Voxel size in mm.

    Examples
    --------
    >>> found = case_outcomes([[1.0, 1.0], [9.0, 9.0], [5.0, 5.0]], [0.9, 0.8, 0.1],
    ...                       [[1.0, 2.0], [20.0, 20.0]], 2.0, 0.5)
    >>> found.hits.tolist(), found.false_positives.tolist(), found.misses.tolist()
    ([[1.0, 1.0]], [[9.0, 9.0]], [[20.0, 20.0]])
    """
    truth = np.asarray(truth, dtype=float)
    dims = truth.shape[1] if truth.ndim == 2 else np.shape(points)[-1]
    truth = truth.reshape(-1, dims)
    points = np.asarray(points, dtype=float).reshape(-1, dims)
    scores = np.asarray(scores, dtype=float).reshape(-1)
    kept = scores >= threshold
    points, scores = points[kept], scores[kept]
    matches = match_points(points, truth, max_distance, spacing)
    hit = matches.pairs[:, 0] if len(matches.pairs) else np.zeros(0, dtype=int)
    return CaseOutcomes(
        hits=points[hit],
        hit_scores=scores[hit],
        false_positives=points[matches.false_positives],
        false_positive_scores=scores[matches.false_positives],
        misses=truth[matches.false_negatives],
    )


def voxels_to_lps(points: ArrayLike, affine: ArrayLike) -> np.ndarray:
    """LPS millimetres (3D Slicer's file convention) of voxel coordinates.

    Parameters
    ----------
    points : (N, D) array
        Voxel coordinates along the array axes, D = 2 or 3.
    affine : (D + 1, D + 1) array
        Voxel-to-RAS affine (NIfTI's convention, that of :func:`weaklesion.io.read_image`).

    Returns
    -------
    (N, 3) float array
        ``(-R, -A, S)``; a 2D image's world axes are the first two, its third is 0.

    Examples
    --------
    >>> voxels_to_lps([[1.0, 2.0, 3.0]], np.diag([2.0, 3.0, 4.0, 1.0])).tolist()
    [[-2.0, -6.0, 12.0]]
    """
    affine = np.asarray(affine, dtype=float)
    dims = affine.shape[0] - 1
    points = np.asarray(points, dtype=float).reshape(-1, dims)
    world = points @ affine[:dims, :dims].T + affine[:dims, dims]
    ras = np.zeros((len(points), 3))
    ras[:, :dims] = world
    return ras * np.array([-1.0, -1.0, 1.0])


def _colour_fraction(colour: str) -> list[float]:
    return [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]


def markups_document(groups: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A 3D Slicer markups document with one point list per group.

    Parameters
    ----------
    groups : sequence of mappings
        Each with ``name`` (str), ``positions`` ((N, 3) LPS mm), ``labels`` (N str,
        shown beside the points), ``descriptions`` (N str) and ``colour`` ("#rrggbb").

    Returns
    -------
    dict
        JSON-ready, valid against Slicer's markups schema v1.0.3.
    """
    markups = []
    for group in groups:
        positions = np.asarray(group["positions"], dtype=float).reshape(-1, 3)
        colour = _colour_fraction(group["colour"])
        points = [
            {
                "id": str(index + 1),
                "label": label,
                "description": description,
                "position": [float(value) for value in position],
                "selected": True,
                "locked": True,
                "visibility": True,
                "positionStatus": "defined",
            }
            for index, (position, label, description) in enumerate(
                zip(positions, group["labels"], group["descriptions"], strict=True)
            )
        ]
        markups.append(
            {
                "type": "Fiducial",
                "name": group["name"],
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": True,
                "labelFormat": "%N-%d",
                "controlPoints": points,
                "display": {
                    "visibility": True,
                    "color": colour,
                    "selectedColor": colour,
                    "pointLabelsVisibility": True,
                    "glyphType": "Sphere3D",
                },
            }
        )
    return {"@schema": MARKUPS_SCHEMA_URL, "markups": markups}


def write_detection_markups(
    path: str | os.PathLike, points: ArrayLike, scores: ArrayLike, affine: ArrayLike, name: str
) -> Path:
    """Write a case's detections as a Slicer markups file, each labelled with its score.

    Parameters
    ----------
    path : path
        ``.mrk.json`` file, written atomically.
    points : (N, D) array
        Detections in voxels.
    scores : (N,) array
    affine : (D + 1, D + 1) array
        Voxel-to-RAS affine of the image.
    name : str
        Name of the point list in Slicer.
    """
    scores = np.asarray(scores, dtype=float).reshape(-1)
    group = {
        "name": name,
        "positions": voxels_to_lps(points, affine),
        "labels": [f"{score:.2f}" for score in scores],
        "descriptions": [f"score {score:.4f}" for score in scores],
        "colour": DETECTION_COLOUR,
    }
    write_json(path, markups_document([group]))
    return Path(path)


def write_outcome_markups(
    path: str | os.PathLike, outcomes: CaseOutcomes, affine: ArrayLike, case: str
) -> Path:
    """Write a case's hits, false positives and misses as three Slicer point lists.

    Hits and false positives are labelled with their score, misses with "miss"; the
    lists are named ``CASE hits`` and so on, coloured as in :data:`OUTCOMES`.
    """
    groups = []
    for outcome, (points, scores) in outcomes.groups().items():
        labels = ["miss"] * len(points) if scores is None else [f"{s:.2f}" for s in scores]
        groups.append(
            {
                "name": f"{case} {outcome}s",
                "positions": voxels_to_lps(points, affine),
                "labels": labels,
                "descriptions": [outcome] * len(points),
                "colour": OUTCOMES[outcome][1],
            }
        )
    write_json(path, markups_document(groups))
    return Path(path)


def write_napari_points(
    path: str | os.PathLike, points: ArrayLike, properties: Mapping[str, Sequence] | None = None
) -> Path:
    """Write points as a napari points CSV: ``index,axis-0,...`` then property columns.

    napari's built-in reader takes the ``axis-*`` columns as the point coordinates (the
    array axes of the image, in voxels) and every other column but ``index`` as a point
    property.

    Parameters
    ----------
    path : path
        ``.csv`` file, written atomically.
    points : (N, D) array
        Voxel coordinates along the array axes.
    properties : mapping of name to N values, optional
        E.g. ``{"score": scores, "outcome": names}``.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "points.csv"
    >>> _ = write_napari_points(path, [[1.0, 2.5, 3.0]], {"score": [0.9]})
    >>> print(path.read_text().strip())
    index,axis-0,axis-1,axis-2,score
    0,1.0,2.5,3.0,0.9
    """
    points = np.asarray(points, dtype=float)
    points = points.reshape(len(points), -1) if points.size else points.reshape(0, 3)
    properties = dict(properties or {})
    for name, values in properties.items():
        if len(values) != len(points):
            raise ValueError(
                f"properties[{name!r}]: has {len(values)} values; expected {len(points)}"
            )
    header = ["index", *(f"axis-{axis}" for axis in range(points.shape[1])), *properties]
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for index, point in enumerate(points):
            extra = [values[index] for values in properties.values()]
            writer.writerow([index, *(repr(float(value)) for value in point), *extra])
    return Path(path)


def write_outcome_points(path: str | os.PathLike, outcomes: CaseOutcomes) -> Path:
    """Write hits, false positives and misses as one napari points CSV with an
    ``outcome`` property (and ``score``, empty for misses)."""
    points, names, scores = [], [], []
    for outcome, (group, group_scores) in outcomes.groups().items():
        points.extend(np.asarray(group).tolist())
        names.extend([outcome] * len(group))
        scores.extend([""] * len(group) if group_scores is None else group_scores.tolist())
    dims = outcomes.misses.shape[1] if outcomes.misses.ndim == 2 else 3
    array = np.asarray(points, dtype=float).reshape(-1, dims)
    return write_napari_points(path, array, {"outcome": names, "score": scores})


def outcome_label_map(
    shape: Sequence[int], outcomes: CaseOutcomes, radius: float = 1.0
) -> np.ndarray:
    """A label map with a small ball at each hit (1), false positive (2) and miss (3).

    Parameters
    ----------
    shape : sequence of D ints
        The image's spatial shape.
    outcomes : CaseOutcomes
    radius : float
        Ball radius in voxels (1: the voxel nearest the point and its face neighbours).
        Balls of lesions closer than ``2 * radius`` touch; later outcomes overwrite
        earlier ones in the order misses, false positives, hits.

    Returns
    -------
    (*shape) uint8 array

    Examples
    --------
    >>> found = case_outcomes([[2.0, 2.0]], [0.9], [[2.0, 2.0], [6.0, 6.0]], 1.0, 0.5)
    >>> labels = outcome_label_map((9, 9), found)
    >>> int((labels == 1).sum()), int((labels == 3).sum()), int(labels[6, 6])
    (5, 5, 3)
    """
    labels = np.zeros(tuple(int(size) for size in shape), dtype=np.uint8)
    reach = int(np.floor(radius))
    grid = np.indices((2 * reach + 1,) * labels.ndim).reshape(labels.ndim, -1).T - reach
    offsets = grid[(grid**2).sum(axis=1) <= radius**2]
    for outcome in ("miss", "false positive", "hit"):
        points, _ = outcomes.groups()[outcome]
        if not len(points):
            continue
        centres = np.rint(np.asarray(points, dtype=float)).astype(int)
        voxels = (centres[:, None, :] + offsets[None]).reshape(-1, labels.ndim)
        inside = np.all((voxels >= 0) & (voxels < labels.shape), axis=1)
        labels[tuple(voxels[inside].T)] = OUTCOMES[outcome][0]
    return labels


def write_outcome_label_map(
    path: str | os.PathLike,
    outcomes: CaseOutcomes,
    shape: Sequence[int],
    affine: ArrayLike,
    radius: float = 1.0,
) -> Path:
    """Write :func:`outcome_label_map` as an image with the case's affine (NIfTI by the
    suffix), and beside the folder's first one its colour tables ``outcome_labels.txt``
    (ITK-SNAP label descriptions) and ``outcome_labels.ctbl`` (3D Slicer colour table)."""
    path = Path(path)
    write_image(path, outcome_label_map(shape, outcomes, radius), np.asarray(affine))
    _write_colour_tables(path.parent)
    return path


def _write_colour_tables(folder: Path) -> None:
    rows = [(0, "background", (0, 0, 0), 0)] + [
        (label, name, tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5)), 255)
        for name, (label, colour) in OUTCOMES.items()
    ]
    snap = ["# ITK-SnAP Label Description File", "# IDX -R- -G- -B- -A-- VIS MSH LABEL"]
    snap += [
        f'{label} {r} {g} {b} {alpha / 255:g} {int(alpha > 0)} {int(alpha > 0)} "{name}"'
        for label, name, (r, g, b), alpha in rows
    ]
    slicer = [
        f"{label} {name.replace(' ', '_')} {r} {g} {b} {alpha}"
        for label, name, (r, g, b), alpha in rows
    ]
    for name, lines in (("outcome_labels.txt", snap), ("outcome_labels.ctbl", slicer)):
        with atomic_write(folder / name, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


def write_detection_viewer_files(
    folder: str | os.PathLike,
    detections: Mapping[str, tuple[ArrayLike, ArrayLike]],
    affines: Mapping[str, ArrayLike],
) -> list[Path]:
    """Write each case's detections for viewers: ``CASE.mrk.json`` (3D Slicer) and
    ``CASE_points.csv`` (napari, with a ``score`` property).

    Parameters
    ----------
    folder : path
        Created if needed.
    detections : mapping of case to (points (N, D) voxels, scores (N,))
    affines : mapping of case to (D + 1, D + 1) voxel-to-RAS affine

    Returns
    -------
    list of Path
        The files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for case, (points, scores) in detections.items():
        written.append(
            write_detection_markups(
                folder / f"{case}.mrk.json", points, scores, affines[case], case
            )
        )
        written.append(
            write_napari_points(folder / f"{case}_points.csv", points, {"score": list(scores)})
        )
    return written


def write_outcome_viewer_files(
    folder: str | os.PathLike,
    outcomes: Mapping[str, CaseOutcomes],
    geometry: Mapping[str, tuple[Sequence[int], ArrayLike]],
    radius: float = 1.0,
) -> list[Path]:
    """Write each case's hits, false positives and misses for viewers.

    ``CASE_outcomes.mrk.json`` (three Slicer point lists), ``CASE_outcomes.csv`` (napari,
    with ``outcome`` and ``score`` properties) and ``CASE_outcomes.nii.gz`` (label map
    with the image's shape and affine, see :func:`outcome_label_map`), with the colour
    tables of the label map.

    Parameters
    ----------
    folder : path
        Created if needed.
    outcomes : mapping of case to CaseOutcomes
    geometry : mapping of case to (spatial shape, (D + 1, D + 1) affine) of its image
    radius : float
        Ball radius of the label map, voxels.

    Returns
    -------
    list of Path
        The files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for case, found in outcomes.items():
        shape, affine = geometry[case]
        written.append(
            write_outcome_markups(folder / f"{case}_outcomes.mrk.json", found, affine, case)
        )
        written.append(write_outcome_points(folder / f"{case}_outcomes.csv", found))
        written.append(
            write_outcome_label_map(
                folder / f"{case}_outcomes.nii.gz", found, shape, affine, radius
            )
        )
    return written


def write_evaluation_viewer_files(
    folder: str | os.PathLike,
    detections: Mapping[str, tuple[ArrayLike, ArrayLike]],
    truth_source: str | os.PathLike,
    truth: Mapping[str, ArrayLike],
    max_distance: float,
    threshold: float,
    spacing: Mapping[str, ArrayLike] | None = None,
    progress: bool = False,
) -> dict[str, CaseOutcomes]:
    """Outcomes of every truth case as ``weaklesion evaluate`` scores them, written with
    :func:`write_outcome_viewer_files` on the geometry of the dataset's images.

    Parameters
    ----------
    folder : path
    detections : mapping of case to (points (P, D) voxels, scores (P,))
        A case of ``truth`` missing here has no detections.
    truth_source : path
        Dataset folder or datalist whose images give each case's shape and affine.
    truth : mapping of case to (T, D) truth points, voxels
    max_distance, threshold, spacing
        As for :func:`weaklesion.metrics.evaluate_detections`.
    progress : bool
        Show a progress bar over the cases.

    Returns
    -------
    dict of case to CaseOutcomes
    """
    dataset = load_dataset(truth_source)
    cases = list(truth)
    if progress:
        cases = track(cases, description="Writing viewer files", console=Console(stderr=True))
    outcomes, geometry = {}, {}
    for case in cases:
        points = np.asarray(truth[case], dtype=float)
        empty = (np.zeros((0, points.shape[1] if points.ndim == 2 else 3)), np.zeros(0))
        found, scores = detections.get(case, empty)
        case_spacing = None if spacing is None else spacing[case]
        outcomes[case] = case_outcomes(found, scores, points, max_distance, threshold, case_spacing)
        image, affine = read_image(dataset[case].channels[0])
        geometry[case] = (image.shape[-(affine.shape[0] - 1) :], affine)
        write_outcome_viewer_files(folder, {case: outcomes[case]}, {case: geometry[case]})
    return outcomes


def load_markups_schema() -> dict[str, Any]:
    """Slicer's markups JSON schema (v1.0.3), as vendored with this package."""
    return json.loads(MARKUPS_SCHEMA_FILE.read_text(encoding="utf-8"))
