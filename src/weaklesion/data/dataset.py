"""Dataset folders and datalists: the cases, their files and weak labels, and checks.

Two ways to describe a dataset give the same :class:`Case` records.

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
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, overload

import cc3d
import numpy as np
from rich.progress import track

from weaklesion._validation import check_finite
from weaklesion.io import (
    IMAGE_SUFFIXES,
    affine_spacing,
    image_suffix,
    parse_counts_csv,
    parse_points_csv,
    read_affine,
    read_image,
)

SPLITS = ("training", "validation", "test")
CHANNEL_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
"""An image file name less its suffix: ``<case>_<4-digit channel>`` (nnU-Net's layout)."""


def mask_instances(mask: np.ndarray) -> np.ndarray:
    """Lesion instances of a mask: its ids, or the connected components of a binary mask.

    Parameters
    ----------
    mask : (Z, Y, X) or (Y, X) int array
        0 for background; either one id per lesion, or 1 for every lesion voxel.

    Returns
    -------
    (Z, Y, X) or (Y, X) int32 array
        0 for background, one positive label per lesion (26- or 8-connected components
        when ``mask`` holds only 0 and 1).

    Examples
    --------
    >>> mask_instances(np.array([[1, 1, 0, 1]])).tolist()
    [[1, 1, 0, 2]]
    >>> mask_instances(np.array([[3, 3, 0, 2]])).tolist()
    [[3, 3, 0, 2]]
    """

    if mask.max(initial=0) <= 1:
        connectivity = 26 if mask.ndim == 3 else 8
        return cc3d.connected_components(mask > 0, connectivity=connectivity).astype(np.int32)
    return mask.astype(np.int32)


def instance_centres(instances: np.ndarray) -> np.ndarray:
    """Centre of mass of each instance ``1..K`` of a label image, in voxel coordinates.

    Parameters
    ----------
    instances : ndarray of ints, shape (Z, Y, X) or (Y, X)
        0 for background, ``1..K`` for the instances; every id must occur.

    Returns
    -------
    ndarray, shape (K, D), float64
        Row ``k`` is the mean voxel index of instance ``k + 1``.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0], [0, 0, 2]])
    >>> instance_centres(labels)
    array([[0. , 0.5],
           [1. , 2. ]])
    """
    labels = np.asarray(instances)
    count = int(labels.max(initial=0))
    if count == 0:
        return np.zeros((0, labels.ndim))
    where = np.nonzero(labels)
    ids = labels[where]
    sizes = np.bincount(ids, minlength=count + 1)[1:]
    sums = [np.bincount(ids, weights=axis, minlength=count + 1)[1:] for axis in where]
    return np.stack(sums, axis=1) / sizes[:, None]


def case_id_problem(case: str) -> str | None:
    """Why ``case`` cannot name output files (None when it can): it must be a plain name.

    Examples
    --------
    >>> case_id_problem("sub-01_ses-02") is None
    True
    >>> print(case_id_problem("../x"))
    '../x' is not a plain name; expected no path separator, '..' or absolute path
    """
    separators = {"/", "\\", "\0", os.sep, os.altsep or "/"}
    if not case or case in (".", "..") or any(s in case for s in separators):
        return f"{case!r} is not a plain name; expected no path separator, '..' or absolute path"
    return None


_IMAGE_FOLDERS = (("imagesTr", "labelsTr", "training"), ("imagesTs", "labelsTs", "test"))


class CaseArrays(NamedTuple):
    """The arrays of one case.

    Attributes
    ----------
    image : ndarray, shape (C, *spatial), float32
        All channels, in channel order.
    mask : ndarray, shape (*spatial), int32, or None
        0 for background, > 0 for lesion voxels (instance ids when distinct).
    affine : ndarray, shape (D + 1, D + 1)
        Voxel-to-world affine (mm) of the first channel file.
    """

    image: np.ndarray
    mask: np.ndarray | None
    affine: np.ndarray


@dataclass(frozen=True, eq=False)
class Case:
    """One case of a dataset: where its files are, and its weak labels.

    Attributes
    ----------
    id : str
        Case identifier, as in the CSV files.
    channels : tuple of Path
        One image file per channel, in channel order (a multi-channel file, such as an
        RGB PNG, gives all its channels in place).
    mask : Path or None
        Mask file, if any.
    points : ndarray, shape (K, D), float64, or None
        Lesion centres in voxel coordinates; ``None`` when the case has no point labels.
    count : int or None
        Number of lesions; ``None`` when the case has no count label.
    spacing : tuple of float or None
        Voxel size in mm for files that carry no geometry (NPY, foreign PNG/TIFF).
    """

    id: str
    channels: tuple[Path, ...]
    mask: Path | None = None
    points: np.ndarray | None = None
    count: int | None = None
    spacing: tuple[float, ...] | None = None

    def load(self) -> CaseArrays:
        """Read the case's image channels and mask.

        Returns
        -------
        CaseArrays
            ``image`` (C, *spatial) float32, ``mask`` (*spatial) int32 or None, and
            ``affine`` (D + 1, D + 1).

        Raises
        ------
        ValueError
            If a file cannot be read, holds NaN or infinite voxels, or the channels and
            mask differ in spatial shape.
        """
        parts, affine, spatial = [], None, None
        for path in self.channels:
            array, file_affine = read_image(path, self.spacing)
            check_finite(array, str(path))
            dims = file_affine.shape[0] - 1
            if affine is None:
                affine, spatial = file_affine, array.shape[array.ndim - dims :]
            elif array.shape[array.ndim - dims :] != spatial:
                raise ValueError(
                    f"{path}: has spatial shape {array.shape[array.ndim - dims :]}; "
                    f"expected {spatial} as in {self.channels[0]}"
                )
            parts.append(array.reshape(-1, *spatial).astype(np.float32, copy=False))
        image = np.concatenate(parts)
        mask = None
        if self.mask is not None:
            mask, _ = read_image(self.mask, self.spacing)
            if mask.shape != spatial:
                raise ValueError(
                    f"{self.mask}: has shape {mask.shape}; expected the image's {spatial}"
                )
            if mask.dtype.kind == "f" and np.any(mask != np.round(mask)):
                raise ValueError(
                    f"{self.mask}: has fractional values; expected 0 for background and "
                    "positive whole numbers for lesions"
                )
            mask = mask.astype(np.int32)
        return CaseArrays(image, mask, affine)


@dataclass(frozen=True, eq=False)
class Dataset(Sequence[Case]):
    """The cases of a dataset folder or datalist, in order, with their split.

    Index it by position or by case id; :meth:`split_cases` gives one split.

    Attributes
    ----------
    cases : tuple of Case
    channel_names : tuple of str
        Name of each image channel.
    spacing : tuple of float or None
        Voxel size in mm from ``dataset.json`` or the datalist, if given.
    split : dict of str to list of str
        Case ids of each split (``training``, ``validation``, ``test``) that is given.
    source : Path
        The folder or datalist file.
    """

    cases: tuple[Case, ...]
    channel_names: tuple[str, ...]
    spacing: tuple[float, ...] | None
    split: dict[str, list[str]]
    source: Path
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {case.id: i for i, case in enumerate(self.cases)})

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    @overload
    def __getitem__(self, key: int | str) -> Case: ...

    @overload
    def __getitem__(self, key: slice) -> tuple[Case, ...]: ...

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"case {key!r} is not in the dataset {self.source}")
            return self.cases[self._index[key]]
        return self.cases[key]

    def split_cases(self, name: str) -> list[Case]:
        """The cases of split ``name`` (e.g. ``"training"``), in the split's order."""
        if name not in self.split:
            raise KeyError(f"split {name!r} is not given; the dataset has {list(self.split)}")
        return [self[case_id] for case_id in self.split[name]]


@dataclass
class _Entry:
    """A case being assembled: files by channel number, labels and where they came from."""

    id: str
    files: dict[int, Path]
    where: str
    mask: Path | None = None
    points: np.ndarray | None = None
    point_origins: list[str] = field(default_factory=list)
    count: int | None = None
    count_origin: str = ""


@dataclass
class _Layout:
    source: Path
    entries: dict[str, _Entry]
    channel_names: tuple[str, ...] | None
    spacing: tuple[float, ...] | None
    split: dict[str, list[str]]
    problems: list[str]
    points_csv: Path | None = None
    counts_csv: Path | None = None


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
    layout = _discover(source)
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
    layout = _discover(source)
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


def _dimension_problem(entries: list[_Entry], geometry: Mapping[str, tuple]) -> str:
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


def _dataset(layout: _Layout) -> Dataset:
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


def _discover(source: str | os.PathLike) -> _Layout:
    path = Path(source)
    if path.is_dir():
        return _discover_folder(path)
    if path.is_file():
        return _discover_datalist(path)
    raise ValueError(f"{path}: does not exist; expected a dataset folder or a .json datalist")


def _read_json(path: Path, problems: list[str]) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path}: cannot be read as JSON ({error})")
        return {}
    if not isinstance(content, dict):
        problems.append(f"{path}: holds a {type(content).__name__}; expected a JSON object")
        return {}
    return content


def _channel_names(meta: dict, path: Path, problems: list[str]) -> tuple[str, ...] | None:
    names = meta.get("channel_names", meta.get("modality"))
    if names is None:
        return None
    if isinstance(names, dict) and all(str(k).isdigit() for k in names):
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(
            f"{path}, field 'channel_names': got {names!r}; expected a list of names or "
            "a mapping from channel number to name"
        )
        return None
    return tuple(names)


def _spacing(meta: dict, path: Path, problems: list[str]) -> tuple[float, ...] | None:
    spacing = meta.get("spacing")
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) not in (2, 3) or not all(np.isfinite(values)) or min(values) <= 0:
        problems.append(
            f"{path}, field 'spacing': got {spacing!r}; expected 2 or 3 positive sizes in mm"
        )
        return None
    return values


def _discover_folder(root: Path) -> _Layout:
    problems: list[str] = []
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path, problems) if meta_path.is_file() else {}
    layout = _Layout(
        source=root,
        entries={},
        channel_names=_channel_names(meta, meta_path, problems),
        spacing=_spacing(meta, meta_path, problems),
        split={},
        problems=problems,
    )
    default_split: dict[str, list[str]] = {}
    folders = [(root / i, root / m, s) for i, m, s in _IMAGE_FOLDERS if (root / i).is_dir()]
    if not folders:
        problems.append(f"{root}: has no imagesTr folder; expected imagesTr/CASE_0000.nii.gz")
    for images, masks, split in folders:
        for path in sorted(images.iterdir()):
            stem = _image_stem(path, problems)
            if stem is None:
                continue
            match = CHANNEL_NAME.match(stem)
            if match is None:
                problems.append(
                    f"{path}: name lacks a channel number; expected CASE_0000{image_suffix(path)}"
                )
                continue
            case, channel = match["case"], int(match["channel"])
            entry = layout.entries.get(case)
            if entry is None:
                entry = layout.entries[case] = _Entry(case, {}, str(images))
                default_split.setdefault(split, []).append(case)
            if entry.where != str(images):
                problems.append(f"{path}: case {case!r} also has images in {entry.where}")
            elif channel in entry.files:
                problems.append(
                    f"{path}: case {case!r} already has channel {channel} in {entry.files[channel]}"
                )
            else:
                entry.files[channel] = path
        if masks.is_dir():
            _attach_masks(layout, images, masks)
    _check_channel_files(layout)
    layout.split = _split(meta, meta_path, layout, default_split)
    layout.points_csv = root / "points.csv" if (root / "points.csv").is_file() else None
    layout.counts_csv = root / "counts.csv" if (root / "counts.csv").is_file() else None
    return layout


def _image_stem(path: Path, problems: list[str]) -> str | None:
    """File name without its image suffix; None (reported) for a file that is no image."""
    if path.name.startswith(".") or not path.is_file():
        return None
    try:
        suffix = image_suffix(path)
    except ValueError as error:
        problems.append(str(error))
        return None
    return path.name[: -len(suffix)]


def _attach_masks(layout: _Layout, images: Path, masks: Path) -> None:
    for path in sorted(masks.iterdir()):
        case = _image_stem(path, layout.problems)
        if case is None:
            continue
        entry = layout.entries.get(case)
        if entry is None or entry.where != str(images):
            layout.problems.append(f"{path}: mask of case {case!r}, which has no image in {images}")
        elif entry.mask is not None:
            layout.problems.append(f"{path}: case {case!r} already has the mask {entry.mask}")
        else:
            entry.mask = path


def _check_channel_files(layout: _Layout) -> None:
    """Report channel files missing from a case, or beyond the named channels."""
    if not layout.entries:
        return
    expected = max(max(entry.files) + 1 for entry in layout.entries.values())
    names = layout.channel_names
    for entry in layout.entries.values():
        if names is not None:
            for channel in sorted(c for c in entry.files if c >= len(names)):
                layout.problems.append(
                    f"{entry.files[channel]}: is channel {channel}, but the dataset names "
                    f"{len(names)} channel(s) {names}"
                )
        ending = image_suffix(next(iter(entry.files.values())))
        for channel in range(expected if names is None else min(expected, len(names))):
            if channel not in entry.files:
                missing = Path(entry.where) / f"{entry.id}_{channel:04d}{ending}"
                layout.problems.append(
                    f"{missing}: missing (channel {channel} of case {entry.id!r}; other cases "
                    f"have {expected} channel files)"
                )


def _split(
    meta: dict, path: Path, layout: _Layout, default: dict[str, list[str]]
) -> dict[str, list[str]]:
    split = meta.get("split")
    if split is None:
        return default
    if not isinstance(split, dict) or not all(
        isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in split.values()
    ):
        layout.problems.append(
            f"{path}, field 'split': expected an object of case-id lists, e.g. "
            '{"training": [...], "validation": [...], "test": [...]}'
        )
        return default
    for name, ids in split.items():
        for case in ids:
            if case not in layout.entries:
                layout.problems.append(
                    f"{path}, field 'split': {name!r} lists case {case!r}, which has no image"
                )
    return {name: list(ids) for name, ids in split.items()}


def _discover_datalist(path: Path) -> _Layout:
    problems: list[str] = []
    data = _read_json(path, problems)
    layout = _Layout(
        source=path,
        entries={},
        channel_names=_channel_names(data, path, problems),
        spacing=_spacing(data, path, problems),
        split={},
        problems=problems,
    )
    base = path.parent
    for section in SPLITS:
        if section not in data:
            continue
        items = data[section]
        if not isinstance(items, list):
            problems.append(f"{path}, field {section!r}: expected a list of cases")
            continue
        layout.split[section] = []
        for number, item in enumerate(items):
            entry = _datalist_entry(item, f"{path}, {section}[{number}]", base, problems)
            if entry is None:
                continue
            if entry.id in layout.entries:
                problems.append(
                    f"{entry.where}, field 'id': case {entry.id!r} appears twice in the datalist"
                )
                continue
            layout.entries[entry.id] = entry
            layout.split[section].append(entry.id)
    _check_datalist_files(layout)
    return layout


def _datalist_entry(item, where: str, base: Path, problems: list[str]) -> _Entry | None:
    if isinstance(item, str):
        item = {"image": item}
    if not isinstance(item, dict):
        problems.append(f"{where}: expected an object with an 'image' field")
        return None
    images = item.get("image")
    images = [images] if isinstance(images, str) else images
    if (
        not isinstance(images, list)
        or not images
        or not all(isinstance(p, str) and p for p in images)
    ):
        problems.append(f"{where}, field 'image': expected a path or a list of paths")
        return None
    files = {c: base / p for c, p in enumerate(images)}
    case = item.get("id", item.get("case"))
    if case is None:
        stem = _image_stem_of_name(images[0])
        match = CHANNEL_NAME.match(stem)
        case = match["case"] if match else stem
    problem = case_id_problem(str(case))
    if problem is not None:
        problems.append(f"{where}, field 'id': case {problem}")
        return None
    entry = _Entry(str(case), files, where)
    label = item.get("label", item.get("mask"))
    if label is not None:
        if isinstance(label, str) and label:
            entry.mask = base / label
        else:
            problems.append(f"{where}, field 'label': expected a path")
    if "points" in item:
        entry.points = _datalist_points(item["points"], where, problems)
        if entry.points is not None:
            entry.point_origins = [
                f"{where}, field 'points', point {k}" for k in range(len(entry.points))
            ]
    if item.get("count") is not None:
        count = item["count"]
        if isinstance(count, bool) or not isinstance(count, int | float) or count != int(count):
            problems.append(f"{where}, field 'count': {count!r} is not a whole number")
        elif count < 0:
            problems.append(f"{where}, field 'count': {count!r} is negative; expected >= 0")
        else:
            entry.count, entry.count_origin = int(count), f"{where}, field 'count'"
    return entry


def _image_stem_of_name(name: str) -> str:
    base = Path(name).name
    lower = base.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _datalist_points(points, where: str, problems: list[str]) -> np.ndarray | None:
    try:
        array = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        array = np.zeros((1, 1, 1))
    if array.size == 0:
        return np.zeros((0, 3))
    if array.ndim != 2 or array.shape[1] not in (2, 3) or not np.isfinite(array).all():
        problems.append(
            f"{where}, field 'points': expected a list of [z, y, x] or [y, x] voxel "
            "coordinates (finite numbers)"
        )
        return None
    return array


def _check_datalist_files(layout: _Layout) -> None:
    entries = list(layout.entries.values())
    dims = {e.points.shape[1] for e in entries if e.points is not None and len(e.points)}
    if layout.spacing is not None:
        dims = {len(layout.spacing)}
    for entry in entries:
        if entry.points is not None and len(entry.points) == 0 and len(dims) == 1:
            entry.points = np.zeros((0, next(iter(dims))))
        for channel, path in entry.files.items():
            if not path.is_file():
                layout.problems.append(
                    f"{path}: missing (channel {channel} of case {entry.id!r}, {entry.where})"
                )
        if entry.mask is not None and not entry.mask.is_file():
            layout.problems.append(f"{entry.mask}: missing (mask of case {entry.id!r})")
    if entries and layout.channel_names is None:
        first = entries[0]
        for entry in entries[1:]:
            if len(entry.files) != len(first.files):
                layout.problems.append(
                    f"{entry.where}, field 'image': case {entry.id!r} has {len(entry.files)} "
                    f"channel file(s) but case {first.id!r} has {len(first.files)}"
                )


class _HeaderAffines(Mapping):
    """Affine of each case, read from its first channel's header when first asked for."""

    def __init__(self, layout: _Layout):
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


def _attach_labels(layout: _Layout, affines: Mapping[str, np.ndarray]) -> None:
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
    entry: _Entry, layout: _Layout, problems: list[str]
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


def _check_spacing(path: Path, affine, layout: _Layout, problems: list[str]) -> None:
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
    layout: _Layout, totals: dict[str, int | None], problems: list[str]
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


def _check_points(entry: _Entry, shape: tuple[int, ...], problems: list[str]) -> bool:
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
