"""Dataset folders and datalists: loading their cases with the weak labels, and checks.

Two ways to describe a dataset give the same :class:`~weaklesion.data.cases.Case`
records.

A folder in the nnU-Net layout::

    dataset.json          channel names, spacing (mm), optional split
    imagesTr/CASE_0000.nii.gz, CASE_0001.nii.gz, ...   one file per channel
    labelsTr/CASE.nii.gz  optional mask: 0 background, > 0 lesion; distinct values are
                          lesion instances, so a binary mask works too
    imagesTs/, labelsTs/  optional, the same for held-out cases
    points.csv            optional: case, z, y, x[, space] (2D: case, y, x)
    counts.csv            optional: case, count

2D images are PNG, TIFF or NPY files named the same way. When ``points.csv`` exists,
every case it does not name has no points (an empty ``(0, D)`` array); cases missing
from ``counts.csv`` have no count (``None``).

A MONAI / Decathlon-style JSON datalist, whose paths are relative to its own folder::

    {"channel_names": {"0": "flair", "1": "t1"}, "spacing": [1, 1, 1],
     "training": [{"image": ["a_0000.nii.gz", "a_0001.nii.gz"], "label": "a.nii.gz",
                   "points": [[10, 20, 30]], "count": 1}, ...],
     "validation": [...], "test": [...]}

An entry may also give ``"id"``; otherwise the case id is the first image's name without
its suffix and channel number. Points in a datalist are voxel coordinates.

:func:`load_dataset` finds the cases (:mod:`~weaklesion.data.layout`) and attaches the
CSV labels; :func:`check_dataset` also reads every image. The records themselves
(:class:`~weaklesion.data.cases.Case`, :class:`~weaklesion.data.cases.Dataset`) live in
:mod:`~weaklesion.data.cases` and are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from rich.progress import track

from weaklesion.data.cases import (
    Case,
    CaseArrays,
    Dataset,
    case_id_problem,
    instance_centres,
    mask_instances,
)
from weaklesion.data.layout import CHANNEL_NAME, SPLITS, Entry, Layout, discover_layout
from weaklesion.io import (
    affine_spacing,
    parse_counts_csv,
    parse_points_csv,
    read_affine,
    read_image,
)

__all__ = [
    "CHANNEL_NAME",
    "SPLITS",
    "Case",
    "CaseArrays",
    "Dataset",
    "case_id_problem",
    "check_dataset",
    "instance_centres",
    "load_dataset",
    "mask_instances",
]


def load_dataset(source: str | os.PathLike) -> Dataset:
    """Find the cases of a dataset folder or JSON datalist, without reading any image.

    Parameters
    ----------
    source : str or path
        A dataset folder (nnU-Net layout) or a ``.json`` datalist; see the module
        documentation for both.

    Returns
    -------
    Dataset
        The cases in order (by channel file name for a folder, by section and entry for
        a datalist), channel names, spacing and split. Arrays load with
        :meth:`Case.load`.

    Raises
    ------
    ValueError
        On the first problem in the layout or the labels (missing channel file, a CSV
        case with no image, a malformed CSV row, ...), as a one-line message naming the
        file; :func:`check_dataset` lists all of them and checks the images too.

    Examples
    --------
    >>> import tempfile
    >>> from weaklesion.data.phantom import write_phantom_dataset
    >>> root = write_phantom_dataset(tempfile.mkdtemp(), n_cases=3, shape=(16, 20, 20),
    ...                              splits=(1, 1, 1), n_lesions=2)
    >>> dataset = load_dataset(root)
    >>> len(dataset), dataset.channel_names, dataset.split["test"]
    (3, ('flair', 't1'), ['phantom_002'])
    >>> case = dataset["phantom_000"]
    >>> case.points.shape, case.count, case.load().image.shape
    ((2, 3), 2, (2, 16, 20, 20))
    """
    layout = discover_layout(source)
    _attach_labels(layout, _HeaderAffines(layout))
    if layout.problems:
        more = len(layout.problems) - 1
        suffix = f" (and {more} more problem(s); check_dataset lists them all)" if more else ""
        raise ValueError(layout.problems[0] + suffix)
    return _dataset(layout)


def check_dataset(source: str | os.PathLike, progress: bool = False) -> list[str]:
    """List every problem of a dataset folder or datalist, reading each image once.

    Parameters
    ----------
    source : str or path
        A dataset folder or a ``.json`` datalist, as for :func:`load_dataset`.
    progress : bool
        Show a progress bar over the cases.

    Returns
    -------
    list of str
        One line per problem, naming the file (and the row and field for CSV files);
        empty for a sound dataset. Checked: the layout (a channel file missing, channel
        counts differing between cases or from the channel names, files that are not
        named ``CASE_0000``), unreadable files, NaN or infinite voxels, spatial shape or
        affine of a channel or mask differing from the case's first channel, voxel
        spacing differing from the declared spacing, masks with negative or fractional
        values, malformed CSV rows, negative or fractional counts, CSV rows naming a
        case with no image, points outside their image, and a count that differs from
        the number of points when a case has both.

    Examples
    --------
    >>> import tempfile
    >>> from weaklesion.data.phantom import write_phantom_dataset
    >>> root = write_phantom_dataset(tempfile.mkdtemp(), n_cases=2, shape=(16, 20, 20),
    ...                              splits=(2, 0, 0), n_lesions=1)
    >>> check_dataset(root)
    []
    >>> _ = (root / "counts.csv").write_text("case,count\\nphantom_000,-1\\nphantom_001,many\\n")
    >>> for problem in check_dataset(root):
    ...     print(problem.replace(str(root), "ROOT"))
    ROOT/counts.csv, row 2, field 'count': '-1' is negative; expected a count >= 0
    ROOT/counts.csv, row 3, field 'count': 'many' is not a number
    """
    layout = discover_layout(source)
    problems = layout.problems
    geometry: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}
    channel_totals: dict[str, int | None] = {}
    entries = list(layout.entries.values())
    if progress:
        entries = track(entries, description="Checking cases")
    for entry in entries:
        found = _check_case_files(entry, layout, problems)
        if found is not None:
            geometry[entry.id], channel_totals[entry.id] = found[:2], found[2]
    _check_channel_totals(layout, channel_totals, problems)
    _attach_labels(layout, {case: affine for case, (affine, _) in geometry.items()})
    mismatched = [
        entry
        for entry in layout.entries.values()
        if entry.points is not None
        and entry.id in geometry
        and not _check_points(entry, geometry[entry.id][1], problems)
    ]
    if mismatched:
        problems.append(_dimension_problem(mismatched, geometry))
    return problems


def _dimension_problem(entries: list[Entry], geometry: Mapping[str, tuple]) -> str:
    """One line for every case whose points and image differ in dimension."""
    first = entries[0]
    image_dims = len(geometry[first.id][1])
    point_dims = first.points.shape[1]
    form = "case,y,x" if image_dims == 2 else "case,z,y,x"
    return (
        f"{first.point_origins[0]}: {len(entries)} case(s), first {first.id!r}, have "
        f"{point_dims}D points but {image_dims}D images; points of {image_dims}D images "
        f"are written {form}"
    )


def _dataset(layout: Layout) -> Dataset:
    names = layout.channel_names
    if names is None:
        total = max((len(e.files) for e in layout.entries.values()), default=0)
        names = tuple(f"channel_{c}" for c in range(total))
    cases = tuple(
        Case(
            id=entry.id,
            channels=tuple(entry.files[c] for c in sorted(entry.files)),
            mask=entry.mask,
            points=entry.points,
            count=entry.count,
            spacing=layout.spacing,
        )
        for entry in layout.entries.values()
    )
    return Dataset(cases, names, layout.spacing, layout.split, layout.source)


class _HeaderAffines(Mapping):
    """Affine of each case, read from its first channel's header when first asked for."""

    def __init__(self, layout: Layout):
        self._layout = layout
        self._found: dict[str, np.ndarray] = {}

    def __getitem__(self, case: str) -> np.ndarray:
        if case not in self._found:
            entry = self._layout.entries[case]
            if 0 not in entry.files:
                raise KeyError(case)
            try:
                self._found[case] = read_affine(entry.files[0], self._layout.spacing)
            except ValueError as error:
                raise KeyError(case) from error
        return self._found[case]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout.entries)

    def __len__(self) -> int:
        return len(self._layout.entries)


def _attach_labels(layout: Layout, affines: Mapping[str, np.ndarray]) -> None:
    """Fill in points and counts from the folder's CSV files; check them against each other."""
    entries, problems = layout.entries, layout.problems
    if layout.points_csv is not None:
        path = layout.points_csv
        points, rows, found = parse_points_csv(path, affines)
        problems.extend(found)
        fallback = len(layout.spacing) if layout.spacing is not None else 3
        dims = next((a.shape[1] for a in points.values()), fallback)
        for case, array in points.items():
            if case not in entries:
                row = f", row {rows[case][0]}" if rows[case] else ""
                problems.append(f"{path}{row}, field 'case': {case!r} has no image in the dataset")
                continue
            entries[case].points = array
            entries[case].point_origins = [f"{path}, row {row}" for row in rows[case]]
        for entry in entries.values():
            if entry.points is None:
                entry.points = np.zeros((0, dims))
    if layout.counts_csv is not None:
        path = layout.counts_csv
        counts, rows, found = parse_counts_csv(path)
        problems.extend(found)
        for case, count in counts.items():
            if case not in entries:
                problems.append(
                    f"{path}, row {rows[case]}, field 'case': {case!r} has no image in the dataset"
                )
                continue
            entries[case].count = count
            entries[case].count_origin = f"{path}, row {rows[case]}, field 'count'"
    for entry in entries.values():
        if entry.points is not None and entry.count is not None:
            if entry.count != len(entry.points):
                problems.append(
                    f"{entry.count_origin}: case {entry.id!r} has count {entry.count} but "
                    f"{len(entry.points)} point(s); expected them to agree"
                )


def _check_case_files(
    entry: Entry, layout: Layout, problems: list[str]
) -> tuple[np.ndarray, tuple[int, ...], int | None] | None:
    """Read a case's files once; return affine, spatial shape and channel total.

    The total is None when a channel file is missing or unreadable (already reported).
    """
    reference = None
    total = 0
    for channel in sorted(entry.files):
        path = entry.files[channel]
        found = _read_checked(path, layout.spacing, problems) if path.is_file() else None
        if found is None:
            total = None
            continue
        array, affine = found
        dims = affine.shape[0] - 1
        spatial = array.shape[array.ndim - dims :]
        if total is not None:
            total += int(np.prod(array.shape[: array.ndim - dims]))
        if reference is None:
            reference = (path, affine, spatial)
            _check_spacing(path, affine, layout, problems)
        else:
            _compare_geometry(path, affine, spatial, reference, problems)
    if entry.mask is not None and entry.mask.is_file():
        found = _read_checked(entry.mask, layout.spacing, problems)
        if found is not None:
            mask, affine = found
            if reference is not None:
                _compare_geometry(entry.mask, affine, mask.shape, reference, problems)
            values = mask[mask != 0]
            if values.size and (values.min() < 0 or np.any(values != np.round(values))):
                problems.append(
                    f"{entry.mask}: has negative or fractional values; expected 0 for "
                    "background and positive whole numbers for lesions"
                )
    if reference is None:
        return None
    return reference[1], reference[2], total


def _read_checked(
    path: Path, spacing: tuple[float, ...] | None, problems: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        array, affine = read_image(path, spacing)
    except ValueError as error:
        problems.append(str(error))
        return None
    if array.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            problems.append(f"{path}: {bad} voxel(s) are NaN or infinite; expected finite values")
    return array, affine


def _compare_geometry(path: Path, affine, shape, reference, problems: list[str]) -> None:
    first, first_affine, first_shape = reference
    if tuple(shape) != tuple(first_shape):
        problems.append(
            f"{path}: has spatial shape {tuple(shape)}; expected {tuple(first_shape)} as {first}"
        )
    elif affine.shape != first_affine.shape or not np.allclose(
        affine, first_affine, rtol=1e-5, atol=1e-4
    ):
        problems.append(f"{path}: its affine differs from that of {first}")


def _check_spacing(path: Path, affine, layout: Layout, problems: list[str]) -> None:
    declared = layout.spacing
    if declared is None:
        return
    actual = affine_spacing(affine)
    if len(actual) != len(declared) or not np.allclose(actual, declared, rtol=1e-3):
        problems.append(
            f"{path}: voxel spacing {tuple(np.round(actual, 4).tolist())} mm differs from "
            f"the declared {declared} of {layout.source}"
        )


def _check_channel_totals(
    layout: Layout, totals: dict[str, int | None], problems: list[str]
) -> None:
    """Every case needs as many image channels as the dataset names (or as its first case).

    Cases with a channel file missing or unreadable were reported already and are skipped.
    """
    files = max((max(e.files) + 1 for e in layout.entries.values() if e.files), default=0)
    totals = {
        case: total
        for case, total in totals.items()
        if total is not None and len(layout.entries[case].files) == files
    }
    if not totals:
        return
    names = layout.channel_names
    first = next(iter(totals))
    expected = len(names) if names is not None else totals[first]
    for case, total in totals.items():
        if total != expected:
            entry = layout.entries[case]
            source = f"the dataset names {names}" if names is not None else f"case {first!r} has"
            problems.append(
                f"{entry.files[min(entry.files)]}: case {case!r} has {total} image channel(s) "
                f"but {source}" + ("" if names is not None else f" {expected}")
            )


def _check_points(entry: Entry, shape: tuple[int, ...], problems: list[str]) -> bool:
    """Report the points outside the image; False if they differ from it in dimension."""
    points = entry.points
    if len(points) == 0:
        return True
    if points.shape[1] != len(shape):
        return False
    upper = np.asarray(shape, dtype=float) - 0.5
    outside = np.flatnonzero(np.any((points < -0.5) | (points > upper), axis=1))
    for k in outside:
        problems.append(
            f"{entry.point_origins[k]}: point {tuple(np.round(points[k], 3).tolist())} of case "
            f"{entry.id!r} lies outside its image of shape {tuple(shape)}"
        )
    return True
