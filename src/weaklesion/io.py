"""Reading and writing files.

Every writer goes through :func:`~weaklesion.writing.atomic_write`: the data go to a
temporary file in the target folder, which is renamed over the target only once it is
complete, so a crash never leaves a truncated result and never destroys the previous
version.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel
import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import tifffile
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from weaklesion._validation import axis_spacing, check_finite
from weaklesion.writing import atomic_write as atomic_write  # re-exported

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".npy", ".tiff", ".tif", ".png")

# Where our own TIFF and PNG writers keep the affine (TIFF: the JSON image description).
_AFFINE_KEY = "affine"


def json_ready(value: object) -> object:
    """``value`` with NumPy scalars and arrays as Python numbers and lists, tuples as
    lists, mapping keys as strings, and NaN and infinities as None (standard JSON has
    no NaN).

    Examples
    --------
    >>> json_ready({"a": np.float32(0.5), "b": np.arange(2), "c": float("nan"), 3: (1,)})
    {'a': 0.5, 'b': [0, 1], 'c': None, '3': [1]}
    """
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, payload: object) -> None:
    """Write ``payload`` as indented JSON (cleaned by :func:`json_ready`), atomically
    (see :func:`atomic_write`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "metrics.json"
    >>> write_json(target, {"f1": np.float64(0.9), "auc": float("nan")})
    >>> json.loads(target.read_text())
    {'f1': 0.9, 'auc': None}
    """
    text = json.dumps(json_ready(payload), indent=2, allow_nan=False)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


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


POINT_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
SPACES = ("voxel", "world")


def _csv_records(path: str | os.PathLike, problems: list[str]) -> tuple[list[str], list]:
    """Header and ``(row number, {column: text})`` records; the header is row 1."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [column.strip().lower() for column in next(reader, [])]
            records = []
            for fields in reader:
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) > len(header):
                    problems.append(
                        f"{path}, row {reader.line_num}: has {len(fields)} fields but the "
                        f"header has {len(header)}"
                    )
                    continue
                padded = fields + [""] * (len(header) - len(fields))
                row = {c: v.strip() for c, v in zip(header, padded, strict=True)}
                records.append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(f"{path}: cannot be read ({error})")
        return [], []
    return header, records


def _number(path, row: int, column: str, text: str, problems: list[str]) -> float | None:
    where = f"{path}, row {row}, field '{column}'"
    if not text:
        problems.append(f"{where}: is empty; expected a number")
        return None
    try:
        value = float(text)
    except ValueError:
        problems.append(f"{where}: {text!r} is not a number")
        return None
    if not math.isfinite(value):
        problems.append(f"{where}: {text!r} is not a finite number")
        return None
    return value


def _case_name(path, row: int, record: dict[str, str], problems: list[str]) -> str | None:
    if not record["case"]:
        problems.append(f"{path}, row {row}, field 'case': is empty; expected a case id")
        return None
    return record["case"]


def parse_points_csv(
    path: str | os.PathLike, affines: Mapping[str, np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, list[int]], list[str]]:
    """Points of a CSV by case, the rows they came from, and every problem found.

    The lenient form of :func:`read_points_csv` (same arguments): instead of raising at
    the first bad row it skips bad rows and returns one message per problem.

    Returns
    -------
    points : dict of str to ndarray of shape (K, D), float64
        Voxel coordinates of the points of each case, as :func:`read_points_csv`.
    rows : dict of str to list of int
        Row number (the header is row 1) of each point, by case.
    problems : list of str
        One line per problem, naming the file, row and field.
    """
    problems: list[str] = []
    header, records = _csv_records(path, problems)
    if not header:
        return {}, {}, problems
    dims = 3 if "z" in header else 2
    axes = POINT_AXES[dims]
    missing = [column for column in ("case", *axes) if column not in header]
    if missing:
        problems.append(
            f"{path}, row 1: header lacks column {missing[0]!r}; expected columns "
            f"case, {', '.join(axes)}[, space]"
        )
        return {}, {}, problems
    inverses: dict[str, np.ndarray] = {}
    points: dict[str, list[tuple[int, np.ndarray]]] = {}
    for row, record in records:
        case = _case_name(path, row, record, problems)
        if case is None:
            continue
        texts = [record[axis] for axis in axes]
        space = record.get("space", "").lower() or "voxel"
        if space not in SPACES:
            problems.append(
                f"{path}, row {row}, field 'space': {record['space']!r} is not a "
                "coordinate space; expected 'voxel' or 'world'"
            )
            continue
        if not any(texts):
            points.setdefault(case, [])
            continue
        values = [_number(path, row, a, t, problems) for a, t in zip(axes, texts, strict=True)]
        if any(value is None for value in values):
            continue
        point = np.asarray(values, dtype=float)
        if space == "world":
            if case not in inverses:
                affine = None if affines is None else affines.get(case)
                if affine is None or np.shape(affine) != (dims + 1, dims + 1):
                    problems.append(
                        f"{path}, row {row}, field 'space': 'world' coordinates need the "
                        f"{dims + 1}x{dims + 1} affine of case {case!r}; none was found"
                    )
                    continue
                inverses[case] = np.linalg.inv(np.asarray(affine, dtype=float))
            inverse = inverses[case]
            point = inverse[:dims, :dims] @ point + inverse[:dims, dims]
        points.setdefault(case, []).append((row, point))
    arrays = {
        case: np.array([p for _, p in found]).reshape(len(found), dims)
        for case, found in points.items()
    }
    rows = {case: [row for row, _ in found] for case, found in points.items()}
    return arrays, rows, problems


def read_points_csv(
    path: str | os.PathLike, affines: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Read point labels (lesion centres) by case, in voxel coordinates.

    Parameters
    ----------
    path : str or path
        CSV with a header naming the columns ``case, z, y, x`` (3D) or ``case, y, x``
        (2D) in any order, and optionally ``space``: ``voxel`` (the default when absent
        or empty; array indices, see :func:`read_image`) or ``world`` (mm). Other columns
        are ignored. A row with a case and empty coordinates marks a case with no points.
    affines : mapping of str to ndarray of shape (D + 1, D + 1), optional
        Voxel-to-world affine of each case, needed only for rows in world coordinates,
        which are converted to voxels through the inverse affine.

    Returns
    -------
    dict of str to ndarray of shape (K, D), float64
        Points of each case named in the file, in file order.

    Raises
    ------
    ValueError
        On the first malformed row, naming the file, the row (the header is row 1) and
        the field, e.g. ``points.csv, row 7, field 'x': 'abc' is not a number``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "points.csv"
    >>> _ = path.write_text("case,z,y,x,space\\na,1,2,3,voxel\\nb,4,4,4,world\\n")
    >>> points = read_points_csv(path, affines={"b": np.diag([2.0, 2.0, 4.0, 1.0])})
    >>> points["a"].tolist(), points["b"].tolist()
    ([[1.0, 2.0, 3.0]], [[2.0, 2.0, 1.0]])
    """
    points, _, problems = parse_points_csv(path, affines)
    if problems:
        raise ValueError(problems[0])
    return points


def parse_counts_csv(
    path: str | os.PathLike,
) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Counts of a CSV by case, the row each came from, and every problem found.

    The lenient form of :func:`read_counts_csv`: bad rows are skipped and reported.

    Returns
    -------
    counts : dict of str to int
        Count of each case, as :func:`read_counts_csv`.
    rows : dict of str to int
        Row number (the header is row 1) of each count, by case.
    problems : list of str
        One line per problem, naming the file, row and field.
    """
    problems: list[str] = []
    header, records = _csv_records(path, problems)
    if not header:
        return {}, {}, problems
    missing = [column for column in ("case", "count") if column not in header]
    if missing:
        problems.append(
            f"{path}, row 1: header lacks column {missing[0]!r}; expected columns case, count"
        )
        return {}, {}, problems
    counts: dict[str, int] = {}
    rows: dict[str, int] = {}
    for row, record in records:
        case = _case_name(path, row, record, problems)
        value = _number(path, row, "count", record["count"], problems)
        if case is None or value is None:
            continue
        where = f"{path}, row {row}, field 'count'"
        if value != int(value):
            problems.append(f"{where}: {record['count']!r} is not a whole number")
        elif value < 0:
            problems.append(f"{where}: {record['count']!r} is negative; expected a count >= 0")
        elif case in counts:
            problems.append(
                f"{path}, row {row}, field 'case': {case!r} already has a count on row {rows[case]}"
            )
        else:
            counts[case], rows[case] = int(value), row
    return counts, rows, problems


def read_counts_csv(path: str | os.PathLike) -> dict[str, int]:
    """Read image-level lesion counts by case.

    Parameters
    ----------
    path : str or path
        CSV with a header naming the columns ``case, count``; each case at most once,
        each count a whole number >= 0. Other columns are ignored.

    Returns
    -------
    dict of str to int
        Count of each case, in file order.

    Raises
    ------
    ValueError
        On the first malformed row, naming the file, the row (the header is row 1) and
        the field, e.g. ``counts.csv, row 3, field 'count': '2.5' is not a whole number``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "counts.csv"
    >>> _ = path.write_text("case,count\\na,3\\nb,0\\n")
    >>> read_counts_csv(path)
    {'a': 3, 'b': 0}
    """
    counts, _, problems = parse_counts_csv(path)
    if problems:
        raise ValueError(problems[0])
    return counts


def write_points_csv(
    path: str | os.PathLike,
    points: Mapping[str, np.ndarray],
    affines: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write point labels by case atomically, in voxel or world coordinates.

    Parameters
    ----------
    path : str or path
        Target CSV; columns ``case, z, y, x`` (or ``case, y, x``), plus ``space`` set to
        ``world`` when ``affines`` is given.
    points : mapping of str to array of shape (K, D)
        Voxel coordinates of each case's points; all cases share ``D``. A case with no
        points gets one row with empty coordinates, so it reads back as ``(0, D)``.
    affines : mapping of str to ndarray of shape (D + 1, D + 1), optional
        When given, coordinates are written in world mm through each case's affine.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "points.csv"
    >>> write_points_csv(path, {"a": [[1.5, 2.0]], "b": np.zeros((0, 2))})
    >>> print(path.read_text().strip())
    case,y,x
    a,1.5,2.0
    b,,
    """
    arrays = {case: np.asarray(values, dtype=float) for case, values in points.items()}
    dims_found = {a.shape[1] for a in arrays.values() if a.ndim == 2}
    if len(dims_found) > 1 or any(a.size and a.ndim != 2 for a in arrays.values()):
        raise ValueError("points: expected (K, D) arrays with the same D for every case")
    dims = dims_found.pop() if dims_found else 3
    if dims not in POINT_AXES:
        raise ValueError(f"points: have {dims} coordinates; expected 2 or 3")
    header = ["case", *POINT_AXES[dims]] + (["space"] if affines is not None else [])
    lines = [header]
    for case, values in arrays.items():
        check_finite(values, f"points of case {case!r}")
        if affines is not None:
            affine = np.asarray(affines[case], dtype=float)
            values = values @ affine[:dims, :dims].T + affine[:dims, dims]
        extra = ["world"] if affines is not None else []
        if len(values) == 0:
            lines.append([case] + [""] * dims + extra)
        lines.extend([case, *map(repr, point.tolist()), *extra] for point in values)
    with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(lines)


def write_counts_csv(path: str | os.PathLike, counts: Mapping[str, int]) -> None:
    """Write image-level lesion counts by case atomically (columns ``case, count``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "counts.csv"
    >>> write_counts_csv(path, {"a": 3, "b": 0})
    >>> read_counts_csv(path)
    {'a': 3, 'b': 0}
    """
    rows = [["case", "count"]]
    for case, count in counts.items():
        if int(count) != count or count < 0:
            raise ValueError(f"counts: case {case!r} has count {count!r}; expected int >= 0")
        rows.append([case, str(int(count))])
    with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


# nnU-Net (v2) writes class probabilities with --save_probabilities as CASE.npz, in the
# axis order of SimpleITK (array axes k, j, i: the reverse of nibabel's), and its image
# properties as CASE.pkl beside them: SimpleITK's spacing, origin and direction in LPS
# ("sitk_stuff"), or nibabel's affine ("nibabel_stuff") for its nibabel readers.
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
        In this package's axis order (nibabel's i, j, k; see :func:`read_image`).
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
