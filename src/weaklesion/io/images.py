"""Images and their geometry: NIfTI, NPY, TIFF and PNG files with a voxel-to-world affine.

:func:`read_image` and :func:`write_image` keep an image's affine in every format that
can hold one (NIfTI in its header, our own TIFF and PNG files in their metadata), check
a ``.nii.gz`` file's gzip CRC to its end, and write deterministic bytes; files without
geometry take a voxel spacing instead.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel
import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import tifffile

from weaklesion._validation import axis_spacing, check_finite
from weaklesion.writing import atomic_write

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".npy", ".tiff", ".tif", ".png")

# Where our own TIFF and PNG writers keep the affine (TIFF: the JSON image description).
_AFFINE_KEY = "affine"


def image_suffix(path: str | os.PathLike) -> str:
    """The image type of ``path`` from its name: one of :data:`IMAGE_SUFFIXES`.

    Examples
    --------
    >>> image_suffix("scans/case_0000.NII.GZ")
    '.nii.gz'
    """
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unknown image type; expected a name ending in {IMAGE_SUFFIXES}")


def spacing_affine(spacing: float | Sequence[float] | None, dims: int) -> np.ndarray:
    """The ``(dims + 1, dims + 1)`` affine of voxels of size ``spacing`` mm at the origin.

    Examples
    --------
    >>> spacing_affine((2.0, 0.5), 2)
    array([[2. , 0. , 0. ],
           [0. , 0.5, 0. ],
           [0. , 0. , 1. ]])
    """
    return np.diag([*axis_spacing(spacing, dims, "spacing"), 1.0])


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis: the lengths of the affine's columns.

    Examples
    --------
    >>> affine_spacing(np.diag([3.0, 1.0, 0.5, 1.0]))
    array([3. , 1. , 0.5])
    """
    affine = np.asarray(affine, dtype=float)
    return np.linalg.norm(affine[:-1, :-1], axis=0)


def _check_affine(affine: np.ndarray, name: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.ndim != 2 or affine.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"{name}: has shape {affine.shape}; expected (3, 3) for 2D or (4, 4)")
    check_finite(affine, name)
    if abs(np.linalg.det(affine)) < 1e-12:
        raise ValueError(f"{name}: is singular; expected an invertible voxel-to-world affine")
    return affine


def read_image(
    path: str | os.PathLike, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and the affine that maps its voxel indices to world coordinates (mm).

    Parameters
    ----------
    path : str or path
        ``.nii`` / ``.nii.gz`` (NIfTI), ``.npy``, ``.tif`` / ``.tiff`` or ``.png``.
    spacing : float or sequence of D floats, optional
        Voxel size in mm for files that carry no geometry (``.npy``, and TIFF or PNG not
        written by :func:`write_image`). Its length also says how many trailing axes of a
        ``.npy`` array are spatial; ``None`` means every axis is spatial, 1 mm apart.
        Ignored for files that carry an affine.

    Returns
    -------
    array : ndarray
        ``(*spatial)`` for a single-channel image, ``(C, *spatial)`` for a multi-channel
        one (RGB/RGBA PNG or TIFF, 4D NIfTI): channels always come first. The dtype is
        the file's (NIfTI scaling factors are applied).
    affine : ndarray, shape (D + 1, D + 1)
        Maps array indices ``(i, j[, k])`` to world mm; ``D`` is the number of spatial
        axes, so a 2D image has a 3x3 affine and a 3D image a 4x4 one.

    Notes
    -----
    Voxel coordinates in this package are array indices. A NIfTI array keeps nibabel's
    axis order (the file's i, j, k), so the columns z, y, x of a points CSV are simply
    array axes 0, 1, 2, whatever the scanner orientation, and the NIfTI affine maps them
    to world (scanner RAS+) mm. A 4D NIfTI is read as channels along its last axis.
    TIFF and PNG files written by :func:`write_image` keep their affine in their
    metadata.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.nii.gz"
    >>> write_image(path, np.zeros((4, 5, 6), np.float32), np.diag([2.0, 1.0, 1.0, 1.0]))
    >>> array, affine = read_image(path)
    >>> array.shape, affine.diagonal().tolist()
    ((4, 5, 6), [2.0, 1.0, 1.0, 1.0])
    """
    array, affine = _read(path, spacing, header_only=False)
    return array, affine


def read_affine(
    path: str | os.PathLike, spacing: float | Sequence[float] | None = None
) -> np.ndarray:
    """The voxel-to-world affine that :func:`read_image` would return with the image.

    Only the header of a NIfTI file is read; other formats are read whole.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "slice.nii"
    >>> write_image(path, np.zeros((4, 5), np.float32), np.diag([0.5, 0.5, 1.0]))
    >>> read_affine(path).tolist()
    [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]]
    """
    return _read(path, spacing, header_only=True)[1]


def _read(
    path: str | os.PathLike, spacing: float | Sequence[float] | None, header_only: bool
) -> tuple[np.ndarray | None, np.ndarray]:
    suffix = image_suffix(path)
    try:
        if suffix in (".nii", ".nii.gz"):
            return _read_nifti(path, header_only)
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            return array, _geometry(array, None, spacing)
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path, spacing)
        return _read_png(path, spacing)
    except (
        OSError,
        ValueError,
        EOFError,
        zlib.error,
        nibabel.filebasedimages.ImageFileError,
        nibabel.spatialimages.HeaderDataError,
        nibabel.wrapstruct.WrapStructError,
    ) as error:
        message = (str(error).splitlines() or [type(error).__name__])[0]
        for quoted in (f" '{path}'", f" {path!r}", f" {path}"):
            message = message.replace(quoted, "")
        message = message.rstrip(": ")
        raise ValueError(f"{path}: cannot be read as {suffix} ({message})") from error


def _geometry(
    array: np.ndarray, channel_first: bool | None, spacing: float | Sequence[float] | None
) -> np.ndarray:
    """Affine from ``spacing`` for an array without geometry of its own."""
    if spacing is not None and np.ndim(spacing) == 1:
        dims = len(spacing)
    else:
        dims = array.ndim - 1 if channel_first else array.ndim
    if dims not in (2, 3) or array.ndim not in (dims, dims + 1):
        raise ValueError(
            f"has shape {array.shape} and spacing {spacing!r}; expected 2 or 3 spatial "
            "axes, optionally after one channel axis"
        )
    return spacing_affine(spacing, dims)


def _read_nifti(path: str | os.PathLike, header_only: bool) -> tuple[np.ndarray | None, np.ndarray]:
    if header_only or image_suffix(path) == ".nii":
        return _nifti_arrays(nibabel.load(path), header_only)
    # Read the data through one gzip stream and then to its end, where the stream's
    # CRC and length are checked: nibabel alone stops after the voxels and so would
    # accept a corrupted file.
    with gzip.open(path, "rb") as stream:
        size = stream.read(4)
        stream.seek(0)
        header_sizes = {
            int.from_bytes(size, order) for order in ("little", "big") if len(size) == 4
        }
        klass = nibabel.Nifti2Image if 540 in header_sizes else nibabel.Nifti1Image
        holder = nibabel.fileholders.FileHolder(fileobj=stream)
        image = klass.from_file_map({"header": holder, "image": holder})
        found = _nifti_arrays(image, header_only=False)
        while stream.read(1 << 20):
            pass
    return found


def _nifti_arrays(image, header_only: bool) -> tuple[np.ndarray | None, np.ndarray]:
    dims = len(image.shape)
    if dims not in (2, 3, 4):
        raise ValueError(f"has shape {image.shape}; expected a 2D, 3D or 4D NIfTI image")
    affine = np.asarray(image.affine, dtype=float)
    if dims == 2:
        affine = affine[np.ix_([0, 1, 3], [0, 1, 3])]
    if header_only:
        return None, affine
    array = np.asanyarray(image.dataobj)
    return (np.moveaxis(array, -1, 0) if dims == 4 else array), affine


def _read_tiff(
    path: str | os.PathLike, spacing: float | Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    with tifffile.TiffFile(path) as tiff:
        array = tiff.asarray()
        metadata = (tiff.shaped_metadata or ({},))[0]
        axes = tiff.series[0].axes
    if _AFFINE_KEY in metadata:
        affine = _check_affine(metadata[_AFFINE_KEY], f"{path}: affine")
        return array, affine
    # A foreign TIFF: samples per pixel (RGB) or a channel axis move to the front.
    channel_axes = [i for i, axis in enumerate(axes) if axis in "SC"]
    if len(channel_axes) == 1 and array.ndim == len(axes):
        array = np.moveaxis(array, channel_axes[0], 0)
    return array, _geometry(array, bool(channel_axes), spacing)


def _read_png(
    path: str | os.PathLike, spacing: float | Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    with PIL.Image.open(path) as picture:
        picture.load()
        text = dict(getattr(picture, "text", {}) or {})
        array = np.asarray(picture)
    if array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    if _AFFINE_KEY in text:
        affine = _check_affine(json.loads(text[_AFFINE_KEY]), f"{path}: affine")
        return array, affine
    return array, _geometry(array, array.ndim == 3, spacing)


def write_image(
    path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None
) -> None:
    """Write an image atomically, in the format named by the file's suffix.

    Parameters
    ----------
    path : str or path
        ``.nii`` / ``.nii.gz``, ``.npy``, ``.tif`` / ``.tiff`` or ``.png``.
    array : ndarray
        ``(*spatial)`` or ``(C, *spatial)`` with ``D`` spatial axes, as
        :func:`read_image` returns it. NIfTI takes channels only for 3D images; PNG
        takes 2D images of 1, 3 or 4 channels with integer values in the range of
        ``uint8`` (or ``uint16`` for one channel).
    affine : ndarray, shape (D + 1, D + 1), optional
        Voxel-to-world affine in mm; by default the identity over all axes of ``array``.
        NIfTI stores it in its header, TIFF and PNG in their metadata; ``.npy`` files
        carry no geometry and drop it.

    Notes
    -----
    Output is deterministic: the same array and affine give the same bytes (gzip
    streams carry no time stamp), which makes written datasets reproducible.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "mask.png"
    >>> write_image(path, np.eye(3, dtype=np.uint8), np.diag([0.5, 0.5, 1.0]))
    >>> array, affine = read_image(path)
    >>> array.tolist(), affine.diagonal().tolist()
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0.5, 0.5, 1.0])
    """
    suffix = image_suffix(path)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    affine = np.eye(array.ndim + 1) if affine is None else _check_affine(affine, "affine")
    dims = affine.shape[0] - 1
    if array.ndim not in (dims, dims + 1):
        raise ValueError(
            f"array: has shape {array.shape}; expected {dims} spatial axes for a "
            f"{affine.shape} affine, optionally after one channel axis"
        )
    if suffix in (".nii", ".nii.gz"):
        payload = _nifti_bytes(array, affine, dims)
        if suffix == ".nii.gz":
            payload = gzip.compress(payload, compresslevel=1, mtime=0)
        with atomic_write(path, "wb") as handle:
            handle.write(payload)
    elif suffix == ".npy":
        with atomic_write(path, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    elif suffix in (".tif", ".tiff"):
        buffer = io.BytesIO()
        tifffile.imwrite(
            buffer, array, photometric="minisblack", metadata={_AFFINE_KEY: affine.tolist()}
        )
        with atomic_write(path, "wb") as handle:
            handle.write(buffer.getvalue())
    else:
        picture = _png_picture(array, dims)
        info = PIL.PngImagePlugin.PngInfo()
        info.add_text(_AFFINE_KEY, json.dumps(affine.tolist()))
        with atomic_write(path, "wb") as handle:
            picture.save(handle, format="PNG", pnginfo=info)


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, dims: int) -> bytes:
    if dims == 2:
        if array.ndim != 2:
            raise ValueError(
                f"array: has shape {array.shape}; NIfTI holds one channel for 2D images"
            )
        full = np.eye(4)
        full[np.ix_([0, 1, 3], [0, 1, 3])] = affine
        affine = full
    elif array.ndim == 4:
        array = np.moveaxis(array, 0, -1)
    dtype = array.dtype
    if dtype.kind in "iu" and dtype.itemsize == 8:
        dtype = np.dtype(np.int32) if np.abs(array).max(initial=0) < 2**31 else dtype
    elif dtype == np.float16:
        dtype = np.dtype(np.float32)
    image = nibabel.Nifti1Image(np.ascontiguousarray(array), affine, dtype=dtype)
    image.header.set_xyzt_units("mm")
    return image.to_bytes()


def _png_picture(array: np.ndarray, dims: int) -> PIL.Image.Image:
    channels = 1 if array.ndim == dims else array.shape[0]
    if dims != 2 or channels not in (1, 3, 4):
        raise ValueError(
            f"array: has shape {array.shape}; PNG holds a 2D image of 1, 3 or 4 channels"
        )
    limit = 255 if channels > 1 else 65535
    if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() > limit)):
        raise ValueError(f"array: has dtype {array.dtype}; PNG expected integers in [0, {limit}]")
    if channels > 1:
        return PIL.Image.fromarray(np.moveaxis(array, 0, -1).astype(np.uint8))
    array = array.reshape(array.shape[-2:])
    if array.dtype.itemsize == 1 or (array.max(initial=0) <= 255 and array.dtype != np.uint16):
        return PIL.Image.fromarray(array.astype(np.uint8))
    return PIL.Image.fromarray(array.astype(np.uint16))
