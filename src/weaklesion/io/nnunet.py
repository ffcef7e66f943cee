"""Class probabilities that nnU-Net v2 writes, in this package's axis order and geometry.

nnU-Net (v2) writes class probabilities with --save_probabilities as CASE.npz, in the
axis order of SimpleITK (array axes k, j, i: the reverse of nibabel's), and its image
properties as CASE.pkl beside them: SimpleITK's spacing, origin and direction in LPS
("sitk_stuff"), or nibabel's affine ("nibabel_stuff") for its nibabel readers.
"""

from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import nibabel
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from weaklesion.io.images import _check_affine, read_affine

_NNUNET_KEYS = ("probabilities", "softmax")
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


class _PropertiesUnpickler(pickle.Unpickler):
    """Reads nnU-Net's property pickles: plain containers and NumPy arrays, no code."""

    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _nnunet_properties(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            properties = _PropertiesUnpickler(handle).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path}: cannot be read as nnU-Net image properties ({_first_line(error)})"
        ) from None
    if not isinstance(properties, dict):
        raise ValueError(f"{path}: holds a {type(properties).__name__}; expected a dict")
    return properties


def _sitk_affine(path: Path, stuff: Mapping) -> np.ndarray:
    """Voxel (i, j, k) to world RAS+ mm from SimpleITK's spacing, origin, direction (LPS)."""
    try:
        spacing = np.asarray(stuff["spacing"], dtype=float)
        origin = np.asarray(stuff["origin"], dtype=float)
        dims = len(spacing)
        direction = np.asarray(stuff["direction"], dtype=float).reshape(dims, dims)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: 'sitk_stuff' lacks a readable spacing, origin or direction ({error})"
        ) from None
    if dims not in (2, 3) or origin.shape != (dims,):
        raise ValueError(f"{path}: 'sitk_stuff' has {dims} spacings; expected 2 or 3")
    to_ras = np.diag([-1.0, -1.0, 1.0][:dims])
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = to_ras @ direction @ np.diag(spacing)
    affine[:dims, dims] = to_ras @ origin
    return _check_affine(affine, f"{path}: 'sitk_stuff'")


def _reverse_axes(values: np.ndarray) -> np.ndarray:
    """(C, k[, j], i) → (C, i, j[, k]): SimpleITK's array order to nibabel's."""
    spatial = values.ndim - 1
    return np.moveaxis(values, range(1, spatial + 1), range(spatial, 0, -1))


def _nnunet_frame(
    values: np.ndarray, path: Path, properties: dict
) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (C, k[, j], i) from nnU-Net to (C, i, j[, k]) and its affine."""
    if "sitk_stuff" in properties:
        affine = _sitk_affine(path, properties["sitk_stuff"])
        nibabel_stuff = None
    elif isinstance(properties.get("nibabel_stuff"), Mapping):
        nibabel_stuff = properties["nibabel_stuff"]
        affine = _check_affine(nibabel_stuff.get("original_affine"), f"{path}: original_affine")
    else:
        raise ValueError(
            f"{path}: has neither 'sitk_stuff' nor 'nibabel_stuff'; expected the .pkl that "
            "nnU-Net v2 writes beside its .npz"
        )
    dims = affine.shape[0] - 1
    if dims == 2 and values.ndim == 4 and values.shape[1] == 1:
        values = values[:, 0]  # nnU-Net keeps 2D images as one slice
    if values.ndim != dims + 1:
        raise ValueError(
            f"{path}: describes a {dims}D image; the probabilities have shape {values.shape}"
        )
    values = _reverse_axes(values)
    if nibabel_stuff is not None and "reoriented_affine" in nibabel_stuff:
        # nnU-Net predicted the image turned to RAS; turn it back to the file's axes.
        turn = ornt_transform(axcodes2ornt("RAS"), io_orientation(affine))
        values = np.moveaxis(apply_orientation(np.moveaxis(values, 0, -1), turn), -1, 0)
    return values, affine


def read_nnunet_probabilities(
    path: str | os.PathLike, require_geometry: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities that nnU-Net v2 wrote with ``--save_probabilities``.

    Parameters
    ----------
    path : str or path
        ``CASE.npz`` with the array ``probabilities`` (or ``softmax``), shape
        ``(C, k, j, i)`` in SimpleITK's axis order. Its geometry comes from the
        ``CASE.pkl`` nnU-Net writes beside it; without one, from ``CASE.nii.gz`` (the
        segmentation nnU-Net writes beside it, or the image), whose shape must match.
    require_geometry : bool
        Refuse a file whose geometry cannot be found; with False, such a file gives
        no affine (enough for what the voxel grid alone decides, such as a count).

    Returns
    -------
    probabilities : ndarray, shape (C, *spatial)
        In this package's axis order (nibabel's i, j, k; see
        :func:`~weaklesion.io.read_image`).
    affine : ndarray, shape (D + 1, D + 1), or None
        Voxel-to-world (RAS+ mm) affine; None when it is unknown and not required.

    Raises
    ------
    ValueError
        If a file cannot be read, or, when the geometry is required, neither a ``.pkl``
        nor a matching NIfTI is found, naming the file and what is needed.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in _NNUNET_KEYS if k in archive.files), None)
            if key is None:
                raise ValueError(
                    f"has arrays {sorted(archive.files)}; expected 'probabilities' "
                    "(nnU-Net --save_probabilities)"
                )
            values = np.asarray(archive[key])
    except (OSError, ValueError, EOFError, KeyError, zlib.error, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: cannot be read as nnU-Net .npz ({_first_line(error)})") from None
    if values.dtype.kind not in "fiu" or values.ndim not in (3, 4):
        raise ValueError(
            f"{path}: holds {values.dtype} probabilities of shape {values.shape}; expected "
            "numbers of shape (classes, [z,] y, x)"
        )
    stem = path.name[: -len(".npz")]
    properties = path.with_name(f"{stem}.pkl")
    if properties.is_file():
        return _nnunet_frame(values, properties, _nnunet_properties(properties))
    for suffix in (".nii.gz", ".nii"):
        image = path.with_name(stem + suffix)
        if image.is_file():
            affine = read_affine(image)
            header_shape = nibabel.load(image).shape
            spatial = values.shape[1:][::-1]
            if tuple(header_shape[: len(spatial)]) != spatial or len(spatial) != len(affine) - 1:
                raise ValueError(
                    f"{path}: probabilities of spatial shape {values.shape[1:]} do not fit "
                    f"{image} of shape {header_shape}; expected its shape reversed"
                )
            return _reverse_axes(values), affine
    if not require_geometry:
        return _reverse_axes(values), None
    raise ValueError(
        f"{path}: its axis order and geometry are unknown; expected {stem}.pkl (written "
        f"by nnU-Net beside the .npz) or {stem}.nii.gz beside it"
    )
