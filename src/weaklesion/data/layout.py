"""Finding the cases of a dataset folder or JSON datalist, without reading any image.

:func:`discover_layout` reads the folder (nnU-Net layout) or the datalist described in
:mod:`weaklesion.data.dataset` into a :class:`Layout`: one :class:`Entry` per case, with
its files by channel number, its mask and the labels a datalist gives, and every
problem found on the way. The CSV labels of a folder are attached afterwards.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weaklesion.data.cases import case_id_problem
from weaklesion.io import IMAGE_SUFFIXES, image_suffix

SPLITS = ("training", "validation", "test")
CHANNEL_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
"""An image file name less its suffix: ``<case>_<4-digit channel>`` (nnU-Net's layout)."""

_IMAGE_FOLDERS = (("imagesTr", "labelsTr", "training"), ("imagesTs", "labelsTs", "test"))


@dataclass
class Entry:
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
class Layout:
    """The cases found in a dataset folder or datalist, its metadata and its problems."""

    source: Path
    entries: dict[str, Entry]
    channel_names: tuple[str, ...] | None
    spacing: tuple[float, ...] | None
    split: dict[str, list[str]]
    problems: list[str]
    points_csv: Path | None = None
    counts_csv: Path | None = None


def discover_layout(source: str | os.PathLike) -> Layout:
    """The cases of a dataset folder or ``.json`` datalist and the problems of its layout.

    A datalist's points and counts are in its entries; a folder's CSV files are only
    named (``points_csv``, ``counts_csv``), to be read against the cases' affines.
    """
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


def _discover_folder(root: Path) -> Layout:
    problems: list[str] = []
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path, problems) if meta_path.is_file() else {}
    layout = Layout(
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
                entry = layout.entries[case] = Entry(case, {}, str(images))
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


def _attach_masks(layout: Layout, images: Path, masks: Path) -> None:
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


def _check_channel_files(layout: Layout) -> None:
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
    meta: dict, path: Path, layout: Layout, default: dict[str, list[str]]
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


def _discover_datalist(path: Path) -> Layout:
    problems: list[str] = []
    data = _read_json(path, problems)
    layout = Layout(
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


def _datalist_entry(item, where: str, base: Path, problems: list[str]) -> Entry | None:
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
    entry = Entry(str(case), files, where)
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


def _check_datalist_files(layout: Layout) -> None:
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
