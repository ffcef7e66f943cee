"""The records of a dataset: its cases, their files and weak labels, and their order.

A :class:`Case` says where a case's files are and holds its weak labels, and loads its
arrays; a :class:`Dataset` orders the cases and splits them. :func:`mask_instances`
and :func:`instance_centres` read the lesions of a case's mask.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, overload

import cc3d
import numpy as np

from weaklesion._validation import check_finite
from weaklesion.io import read_image


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
