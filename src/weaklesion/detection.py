"""Detectors that turn predicted maps into lesion detections.

Every detector returns a :class:`Detections` record: sub-voxel lesion centres in voxel
coordinates, (z, y, x) in 3D or (y, x) in 2D, one score per lesion, and named per-lesion
extras. Detections come sorted by score, highest first (ties keep the order in which the
detector found them).

- :func:`fit_gaussians` extracts lesions from a heatmap of mass-1 Gaussians by iterative
  Gaussian fitting; the score is the fitted amplitude, an existence probability.
- :func:`component_detections` thresholds a probability map and turns each connected
  component into one lesion.
- :func:`peak_detections` keeps the local maxima of a map (non-maximum suppression).
- :func:`count_guided_threshold` and :func:`count_guided_detections` pick the threshold at
  which the map has a given number of connected components.

Detections are written to and read from CSV (one file for many cases) and JSON; voxel
coordinates go with world coordinates in mm when an affine or a spacing is known.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import cc3d
import numpy as np
import torch
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from weaklesion._validation import (
    ArrayLike,
    axis_spacing,
    check_finite,
    check_spatial,
)
from weaklesion.io import atomic_write
from weaklesion.targets import gaussian_window

_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
# CSV columns of world coordinates: the affine's output x, y[, z] (RAS+ mm for NIfTI).
# Files written before they were named so called them z_mm, y_mm, x_mm; both are read.
_WORLD_COLUMNS = {2: ("world_x_mm", "world_y_mm"), 3: ("world_x_mm", "world_y_mm", "world_z_mm")}
_RESERVED_COLUMNS = frozenset(
    {"case", "score", *_AXES[3], *_WORLD_COLUMNS[3], *(f"{a}_mm" for a in _AXES[3])}
)
_FULL_CONNECTIVITY = {2: 8, 3: 26}
_CONNECTIVITIES = {2: (4, 8), 3: (6, 18, 26)}


def _as_array(values: ArrayLike, name: str) -> np.ndarray:
    """Return ``values`` (NumPy array or torch tensor) as a NumPy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{name}: has dtype {values.dtype}; expected real numbers")
    return values


def _spatial_map(values: ArrayLike, name: str) -> np.ndarray:
    """Return a finite 2D or 3D map as a NumPy array, or raise a one-line ``ValueError``."""
    values = _as_array(values, name)
    check_spatial(values, name)
    # One sum is finite exactly when every value is, barring overflow (then check all).
    if not np.isfinite(values.sum()):
        check_finite(values, name)
    return values


# --------------------------------------------------------------------------------------
# The record every detector returns
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Detections:
    """Lesion detections in one image: centres, scores and named per-lesion extras.

    Parameters
    ----------
    points : (N, D) float array
        Sub-voxel lesion centres in voxel coordinates along the array axes, (z, y, x) for
        D = 3 or (y, x) for D = 2.
    scores : (N,) float array
        One score per lesion, higher is more likely a lesion; in [0, 1] where the
        detector gives probabilities.
    extras : dict of str to (N,) arrays
        Named per-lesion values that depend on the detector (``amplitude``,
        ``window_sum``, ``size``, ...). Names must differ from the CSV columns ``case``,
        ``z``, ``y``, ``x``, ``world_x_mm``, ``world_y_mm``, ``world_z_mm``, ``score`` and
        the former ``z_mm``, ``y_mm``, ``x_mm``.

    Examples
    --------
    >>> found = Detections([[4.0, 2.5], [1.0, 7.0]], [0.2, 0.9], {"size": [3, 8]})
    >>> found
    Detections(n=2, spatial_dims=2, extras=['size'])
    >>> found.sorted().points
    array([[1. , 7. ],
           [4. , 2.5]])
    >>> len(found.above(0.5)), found.top(1).extras["size"]
    (1, array([8]))
    """

    points: np.ndarray
    scores: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        points = np.asarray(_as_array(self.points, "points"), dtype=float)
        if points.ndim != 2 or points.shape[1] not in _AXES:
            raise ValueError(
                f"points: has shape {points.shape}; expected (N, 2) or (N, 3) coordinates"
            )
        check_finite(points, "points")
        scores = np.asarray(_as_array(self.scores, "scores"), dtype=float)
        if scores.shape != (len(points),):
            raise ValueError(
                f"scores: has shape {scores.shape}; expected ({len(points)},), one per point"
            )
        check_finite(scores, "scores")
        extras = {}
        reserved = _RESERVED_COLUMNS
        for name, values in dict(self.extras).items():
            if not isinstance(name, str) or not name or name in reserved:
                raise ValueError(
                    f"extras: name {name!r} is not allowed; expected a non-empty string "
                    f"other than {sorted(reserved)}"
                )
            values = _as_array(values, f"extras[{name!r}]")
            if values.dtype.kind == "b":
                values = values.astype(np.int64)
            if values.shape != (len(points),):
                raise ValueError(
                    f"extras[{name!r}]: has shape {values.shape}; "
                    f"expected ({len(points)},), one per point"
                )
            extras[name] = values
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "extras", extras)

    @classmethod
    def empty(cls, spatial_dims: int, extras: Iterable[str] = ()) -> Detections:
        """No detections: ``points`` of shape (0, spatial_dims) and empty ``extras``.

        Examples
        --------
        >>> Detections.empty(3, ["size"]).points.shape
        (0, 3)
        """
        return cls(np.zeros((0, spatial_dims)), np.zeros(0), {k: np.zeros(0) for k in extras})

    @classmethod
    def concat(cls, items: Sequence[Detections]) -> Detections:
        """Join detections of the same dimension and extras into one record, in order.

        Examples
        --------
        >>> a = Detections([[1.0, 2.0]], [0.5])
        >>> b = Detections([[3.0, 4.0], [5.0, 6.0]], [0.1, 0.7])
        >>> Detections.concat([a, b]).scores
        array([0.5, 0.1, 0.7])
        """
        if not items:
            raise ValueError("items: is empty; expected at least one Detections")
        first = items[0]
        for item in items[1:]:
            if item.spatial_dims != first.spatial_dims or item.extras.keys() != first.extras.keys():
                raise ValueError(
                    f"items: mix {first.spatial_dims}D detections with extras "
                    f"{sorted(first.extras)} and {item.spatial_dims}D ones with extras "
                    f"{sorted(item.extras)}; expected the same dimension and extras"
                )
        return cls(
            np.concatenate([item.points for item in items]),
            np.concatenate([item.scores for item in items]),
            {k: np.concatenate([item.extras[k] for item in items]) for k in first.extras},
        )

    @property
    def spatial_dims(self) -> int:
        """Number of spatial axes, 2 or 3."""
        return self.points.shape[1]

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: slice | np.ndarray | Sequence[int]) -> Detections:
        """The detections selected by a slice, an index array or a boolean mask."""
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype.kind not in "biu":
                raise ValueError(f"index: has dtype {index.dtype}; expected integers or booleans")
        return Detections(
            self.points[index],
            self.scores[index],
            {k: v[index] for k, v in self.extras.items()},
        )

    def __repr__(self) -> str:
        return (
            f"Detections(n={len(self)}, spatial_dims={self.spatial_dims}, "
            f"extras={list(self.extras)})"
        )

    def sorted(self) -> Detections:
        """The detections ordered by score, highest first; ties keep their order."""
        return self[np.argsort(-self.scores, kind="stable")]

    def top(self, n: int) -> Detections:
        """The ``n`` highest-scoring detections, highest first."""
        if n < 0:
            raise ValueError(f"n: got {n}; expected a count >= 0")
        return self.sorted()[: int(n)]

    def above(self, threshold: float) -> Detections:
        """The detections whose score is strictly above ``threshold``, in their order."""
        return self[self.scores > threshold]

    def to_world(
        self,
        affine: ArrayLike | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> np.ndarray:
        """World coordinates in mm, from an affine or from a voxel spacing.

        Our voxel axes are the array axes, so for a 3D image loaded with nibabel the
        point (z, y, x) is the voxel index (i, j, k) of ``img.affine`` and
        ``world = affine @ [z, y, x, 1]`` (the names z, y, x only name array axes 0, 1,
        2; which anatomical direction each is depends on the affine). In 2D the affine
        is 3 x 3 and ``world = affine @ [y, x, 1]``.

        Parameters
        ----------
        affine : (D + 1, D + 1) array, optional
            Voxel-to-world matrix.
        spacing : float or sequence of D floats, optional
            Voxel size in mm per axis; world = voxel * spacing (origin at voxel 0).
            Give exactly one of ``affine`` and ``spacing``.

        Returns
        -------
        (N, D) float array of world coordinates in mm.

        Examples
        --------
        >>> found = Detections([[1.0, 2.0, 3.0]], [1.0])
        >>> found.to_world(np.diag([2.0, 3.0, 4.0, 1.0]))
        array([[ 2.,  6., 12.]])
        >>> found.to_world(spacing=(3, 1, 1))
        array([[3., 2., 3.]])
        """
        dims = self.spatial_dims
        if (affine is None) == (spacing is None):
            raise ValueError("affine, spacing: got both or neither; expected exactly one")
        if spacing is not None:
            return self.points * axis_spacing(spacing, dims, "spacing")
        matrix = np.asarray(_as_array(affine, "affine"), dtype=float)
        if matrix.shape != (dims + 1, dims + 1):
            raise ValueError(
                f"affine: has shape {matrix.shape}; expected ({dims + 1}, {dims + 1}) "
                f"for {dims}D points"
            )
        check_finite(matrix, "affine")
        return self.points @ matrix[:dims, :dims].T + matrix[:dims, dims]

    def to_csv(
        self,
        path: str | os.PathLike,
        case: str | None = None,
        affine: ArrayLike | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        """Write one row per detection: [case,] z, y, x, [world x, y, z,] score, extras.

        The ``case`` column is written when ``case`` is given; the world columns
        ``world_x_mm, world_y_mm, world_z_mm`` (see :meth:`to_world`: the affine's
        output, RAS+ mm for a NIfTI image, not the array axes z, y, x) when ``affine``
        or ``spacing`` is given. 2D detections
        have y, x only. Floats are written in full precision, so reading back gives
        the same numbers. To write many cases to one file use
        :func:`write_detections_csv`.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "detections.csv"
        >>> Detections([[1.0, 2.5]], [0.75], {"size": [4]}).to_csv(path, spacing=0.5)
        >>> print(path.read_text().strip())
        y,x,world_x_mm,world_y_mm,score,size
        1.0,2.5,0.5,1.25,0.75,4
        >>> Detections.from_csv(path).points
        array([[1. , 2.5]])
        """
        _write_csv(path, [(case, self, affine, spacing)], with_case=case is not None)

    @classmethod
    def from_csv(cls, path: str | os.PathLike, case: str | None = None) -> Detections:
        """Read detections written by :meth:`to_csv` or :func:`write_detections_csv`.

        Voxel columns are read; world (mm) columns are ignored. With ``case``, only the
        rows of that case are returned (none if it has no rows); without it, the file
        must hold a single case.
        """
        columns, groups = _read_csv(path)
        if case is not None:
            if "case" not in columns:
                raise ValueError(f"{path}: has no 'case' column; cannot select case {case!r}")
            return groups.get(case, _empty_like_columns(columns))
        if len(groups) > 1:
            raise ValueError(
                f"{path}: holds {len(groups)} cases; pass case= or use read_detections_csv"
            )
        return next(iter(groups.values()), _empty_like_columns(columns))

    def to_json(
        self,
        path: str | os.PathLike,
        case: str | None = None,
        affine: ArrayLike | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        """Write the detections as a JSON object (with world coordinates when known).

        Keys: ``spatial_dims``, ``axes``, ``points`` (voxel), ``scores``, ``extras``,
        and ``case``, ``points_mm`` when given.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "detections.json"
        >>> Detections([[1.0, 2.0, 3.0]], [0.5]).to_json(path, case="a")
        >>> Detections.from_json(path).points
        array([[1., 2., 3.]])
        """
        record: dict = {
            "spatial_dims": self.spatial_dims,
            "axes": list(_AXES[self.spatial_dims]),
        }
        if case is not None:
            record["case"] = case
        record["points"] = self.points.tolist()
        if affine is not None or spacing is not None:
            record["points_mm"] = self.to_world(affine, spacing).tolist()
        record["scores"] = self.scores.tolist()
        record["extras"] = {k: v.tolist() for k, v in self.extras.items()}
        with atomic_write(path) as handle:
            json.dump(record, handle, indent=1)
            handle.write("\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Detections:
        """Read detections written by :meth:`to_json`."""
        try:
            with open(path) as handle:
                record = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: is not valid JSON ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: holds {type(record).__name__}; expected an object")
        for key in ("spatial_dims", "points", "scores"):
            if key not in record:
                raise ValueError(f"{path}: lacks the key {key!r}")
        dims = record["spatial_dims"]
        if dims not in _AXES:
            raise ValueError(f"{path}: key 'spatial_dims' is {dims!r}; expected 2 or 3")
        try:
            points = np.asarray(record["points"], dtype=float).reshape(-1, dims)
            return cls(points, record["scores"], record.get("extras", {}))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


def write_detections_csv(
    path: str | os.PathLike,
    detections: Mapping[str, Detections],
    affine: ArrayLike | Mapping[str, ArrayLike] | None = None,
    spacing: float | Sequence[float] | Mapping[str, float | Sequence[float]] | None = None,
) -> None:
    """Write the detections of many cases to one CSV with a ``case`` column.

    Parameters
    ----------
    path : path-like
        Output file, written atomically.
    detections : mapping of case name to Detections
        All of the same dimension and extras; cases are written in mapping order.
    affine, spacing : optional
        One value for every case or a mapping from case name to value; when given, the
        world columns (mm) are written, see :meth:`Detections.to_world`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "all.csv"
    >>> write_detections_csv(path, {
    ...     "a": Detections([[1.0, 2.0]], [0.9]),
    ...     "b": Detections([[3.0, 4.0], [5.0, 6.0]], [0.8, 0.4]),
    ... })
    >>> {case: len(found) for case, found in read_detections_csv(path).items()}
    {'a': 1, 'b': 2}
    """

    def pick(value, case):
        if not isinstance(value, Mapping):
            return value
        if case not in value:
            raise ValueError(f"affine, spacing: no entry for case {case!r}")
        return value[case]

    groups = [
        (case, found, pick(affine, case), pick(spacing, case)) for case, found in detections.items()
    ]
    if not groups:
        raise ValueError("detections: is empty; expected at least one case")
    _write_csv(path, groups, with_case=True)


def read_detections_csv(path: str | os.PathLike) -> dict[str, Detections]:
    """Read a detections CSV into a mapping from case name to :class:`Detections`.

    A file without a ``case`` column gives one entry under the name ``""``. Cases appear
    in the order of their first row; a case written with no detections has no rows and
    so does not come back.
    """
    return _read_csv(path)[1]


def _write_csv(path, groups, with_case: bool) -> None:
    """Write ``(case, detections, affine, spacing)`` groups as one CSV table."""
    first = groups[0][1]
    dims = first.spatial_dims
    world = [affine is not None or spacing is not None for _, _, affine, spacing in groups]
    if any(world) and not all(world):
        raise ValueError("affine, spacing: given for some cases only; expected all or none")
    axes = list(_AXES[dims])
    header = (
        (["case"] if with_case else [])
        + axes
        + (list(_WORLD_COLUMNS[dims]) if world[0] else [])
        + ["score", *first.extras]
    )
    for case, found, _, _ in groups:
        if found.spatial_dims != dims or list(found.extras) != list(first.extras):
            raise ValueError(
                f"detections[{case!r}]: {found.spatial_dims}D with extras {list(found.extras)}; "
                f"expected {dims}D with extras {list(first.extras)} like the first case"
            )
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for case, found, affine, spacing in groups:
            columns = [found.points]
            if world[0]:
                columns.append(found.to_world(affine, spacing))
            columns.append(found.scores[:, None])
            columns.extend(values[:, None] for values in found.extras.values())
            prefix = [case] if with_case else []
            for row in zip(*(c.tolist() for c in columns), strict=True):
                writer.writerow(prefix + [_format_number(v) for part in row for v in part])


def _format_number(value: float | int) -> str:
    # repr gives the shortest text that reads back to the same float.
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _empty_like_columns(columns: list[str]) -> Detections:
    dims = 3 if "z" in columns else 2
    return Detections.empty(dims, _extra_columns(columns))


def _extra_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c not in _RESERVED_COLUMNS]


def _read_csv(path) -> tuple[list[str], dict[str, Detections]]:
    """Parse a detections CSV into its header and detections grouped by case."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ValueError(f"{path}: is empty; expected a header row such as z,y,x,score")
    columns = [c.strip() for c in rows[0]]
    dims = 3 if "z" in columns else 2
    required = [*_AXES[dims], "score"]
    for name in required:
        if name not in columns:
            raise ValueError(
                f"{path}: header {','.join(columns)} lacks column {name!r}; "
                f"expected [case,] {','.join(required)}[, extras]"
            )
    if len(set(columns)) != len(columns):
        raise ValueError(f"{path}: header {','.join(columns)} repeats a column name")
    extras = _extra_columns(columns)
    numeric = [*_AXES[dims], "score", *extras]
    where = {name: columns.index(name) for name in columns}
    cases: dict[str, list[list[str]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(columns):
            raise ValueError(
                f"{path}: row {line - 1} (line {line}) has {len(row)} fields; "
                f"expected {len(columns)} as in the header"
            )
        case = row[where["case"]] if "case" in where else ""
        cases.setdefault(case, []).append([str(line), *(row[where[n]] for n in numeric)])
    groups = {}
    for case, table in cases.items():
        values = {}
        for j, name in enumerate(numeric, start=1):
            values[name] = _parse_column(path, name, [r[0] for r in table], [r[j] for r in table])
            if name not in extras and not np.isfinite(values[name]).all():
                bad = int(np.argmin(np.isfinite(values[name])))
                line = int(table[bad][0])
                raise ValueError(
                    f"{path}: row {line - 1} (line {line}), field {name!r}: got "
                    f"{table[bad][j]!r}; expected a finite number"
                )
        points = np.stack([values[a] for a in _AXES[dims]], axis=1).astype(float)
        groups[case] = Detections(points, values["score"], {k: values[k] for k in extras})
    return columns, groups


def _parse_column(path, name: str, lines: list[str], tokens: list[str]) -> np.ndarray:
    """Numbers of one CSV column; integers stay integers; bad text names row and field."""
    try:
        return np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        pass
    numbers = []
    for line, token in zip(lines, tokens, strict=True):
        try:
            numbers.append(float(token))
        except ValueError:
            line = int(line)
            raise ValueError(
                f"{path}: row {line - 1} (line {line}), field {name!r}: got {token!r}; "
                "expected a number"
            ) from None
    return np.array(numbers, dtype=float)


# --------------------------------------------------------------------------------------
# Iterative Gaussian fitting
# --------------------------------------------------------------------------------------

_FIT_TOLERANCE = 1e-6  # voxels; the fit stops once the proposed centre step is smaller
_FIT_ITERATIONS = 30


@functools.lru_cache(maxsize=256)
def _fit_constants(
    lengths: tuple[int, ...], sigma: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grid and Gaussian factors of a fitting window, shared by the fits of one map."""
    steps = np.arange(max(lengths), dtype=float)
    width = np.array(sigma)[:, None]
    inside = steps < np.array(lengths)[:, None]
    constants = (steps, -0.5 / width**2, 1.0 / width**2, inside / (math.sqrt(2 * math.pi) * width))
    for array in constants:
        array.flags.writeable = False
    return constants


def _fit_gaussian(
    values: np.ndarray,
    start: Sequence[int],
    peak: Sequence[int],
    sigma: Sequence[float],
) -> tuple[float, np.ndarray]:
    """Least-squares amplitude and centre of ``alpha * N(mu, diag(sigma^2))`` in a window.

    Minimises ``sum (values - alpha * g(mu))^2`` over the window, where ``g`` is the
    mass-1 Gaussian density sampled at voxel centres. For a fixed centre the best
    amplitude is ``<values, g> / <g, g>``; eliminating it leaves a problem in ``mu``
    alone, solved by Gauss-Newton steps with step halving. Because ``g`` factorises over
    the axes, every inner product is a product of 1D ones and the Gauss-Newton system is
    diagonal, so a step costs a few small matrix products. The start is the exact centre
    of an isolated Gaussian of known width, from the log-ratio of the maximum's
    neighbours: ``ln g(p + 1) - ln g(p - 1) = 2 (mu - p) / sigma^2``.

    Parameters
    ----------
    values : (n_0, ..., n_{D-1}) float array
        The map in the window.
    start : sequence of D ints
        Voxel index of the window's first voxel.
    peak : sequence of D ints
        Voxel index of the window's maximum.
    sigma : sequence of D floats
        Standard deviation per axis in voxels.

    Returns
    -------
    alpha : float
        Fitted amplitude (0 where no Gaussian with a positive amplitude fits).
    mu : (D,) float array
        Fitted centre in voxel coordinates, within the window's extent
        ``[start - 0.5, start + n - 0.5]``.
    """
    dims = values.ndim
    lengths = values.shape
    sigma = tuple(float(s) for s in sigma)
    steps, exponent, inverse_variance, scale = _fit_constants(lengths, sigma)
    local = [int(p) - int(s) for p, s in zip(peak, start, strict=True)]
    centre = [float(p) for p in local]  # in window coordinates until the end
    for axis in range(dims):
        if 0 < local[axis] < lengths[axis] - 1:
            index = list(local)
            index[axis] -= 1
            before = float(values[tuple(index)])
            index[axis] += 2
            after = float(values[tuple(index)])
            if before > 0 and after > 0:
                offset = 0.5 * sigma[axis] ** 2 * math.log(after / before)
                centre[axis] += min(max(offset, -0.5), 0.5)
    unit = [1 << (dims - 1 - axis) for axis in range(dims)]  # flat index of d/d mu_axis
    basis = np.empty((dims, 2, len(steps)))
    best = None  # (objective, centre, amplitude, last step) at the best centre so far
    for _ in range(_FIT_ITERATIONS):
        offsets = steps - np.array(centre)[:, None]
        density = np.multiply(np.exp(offsets * offsets * exponent), scale, out=basis[:, 0])
        np.multiply(density, offsets * inverse_variance, out=basis[:, 1])  # d density / d mu
        gram = (basis @ basis.transpose(0, 2, 1)).tolist()  # per axis [[g.g, g.g'], [., g'.g']]
        projection = _contract(values, basis, lengths).ravel().tolist()
        total = math.prod(g[0][0] for g in gram)
        alpha = projection[0] / total if total > 0 else 0.0
        objective = alpha * projection[0]  # the drop of the squared error
        if alpha > 0 and (best is None or objective >= best[0] * (1 - 1e-12)):
            moved = []
            for axis, ((norm, cross), (_, slope_norm)) in enumerate(gram):
                mean = cross / norm
                spread = slope_norm / norm - mean * mean
                gradient = projection[unit[axis]] / total - mean * alpha
                step = min(max(gradient / (alpha * spread), -1.0), 1.0) if spread > 0 else 0.0
                moved.append(min(max(centre[axis] + step, -0.5), lengths[axis] - 0.5))
            best = (objective, centre, alpha, [m - c for m, c in zip(moved, centre, strict=True)])
        elif best is None:
            best = (0.0, centre, 0.0, [0.0] * dims)  # no Gaussian of positive amplitude fits
        else:
            # The last step made the fit worse: halve it from the best centre.
            best = (*best[:3], [0.5 * s for s in best[3]])
            moved = [c + s for c, s in zip(best[1], best[3], strict=True)]
        if max(abs(s) for s in best[3]) < _FIT_TOLERANCE:
            break
        centre = moved
    return best[2], np.add(best[1], start, dtype=float)


def _contract(values: np.ndarray, basis: np.ndarray, lengths: tuple[int, ...]) -> np.ndarray:
    """``values`` contracted with the two 1D basis vectors of every axis: (2,) * D."""
    factors = [basis[axis, :, :n] for axis, n in enumerate(lengths)]
    if values.ndim == 2:
        return factors[0] @ values @ factors[1].T
    first = (factors[0] @ values.reshape(lengths[0], -1)).reshape(2, lengths[1], lengths[2])
    return factors[1] @ (first @ factors[2].T)


class _Residual:
    """A residual map with a two-level maximum, updated after local subtractions.

    The map is cut, in C order, into chunks of whole rows (along the last axis); each
    chunk keeps its maximum, so the global arg-max reads the chunk maxima and one chunk,
    and a local subtraction refreshes only the chunks it touched. The map itself is only
    read: the first time a window reads or changes a chunk, the chunk is copied (as
    float64) to the next free place of a pool, so the work is one pass over the map plus
    the chunks near lesions, and memory is paged in only for those. The arg-max is the
    first maximum in C order, as ``np.argmax`` gives.
    """

    def __init__(self, heatmap: np.ndarray) -> None:
        shape = heatmap.shape
        self.width = shape[-1]
        # Long chunks make the first pass fast, short ones the updates; ~1000 voxels.
        self.rows_per_chunk = max(1, 1024 // self.width)
        # Rows (of the last axis) per step along each axis but the last.
        self.row_strides = [math.prod(shape[a + 1 : -1]) for a in range(len(shape) - 1)]
        self.voxel_strides = [math.prod(shape[a + 1 :]) for a in range(len(shape))]
        chunk = self.rows_per_chunk * self.width
        size = heatmap.size
        count, full = -(-size // chunk), size // chunk
        source = heatmap.reshape(-1)
        self.source = source[: full * chunk].reshape(full, chunk)
        self.slot = np.full(count, -1, dtype=np.intp)  # pool place of each copied chunk
        # Filled from the front, so only the pages of copied chunks are ever touched.
        self.pool = np.empty((count, chunk))
        self.lines = self.pool.reshape(-1, self.width)
        self.used = 0
        self.maxima = np.empty(count)
        self.maxima[:full] = self.source.max(axis=1)
        if count > full:  # the last, partial chunk, padded with -inf
            self.slot[full], self.used = 0, 1
            self.pool[0] = -np.inf
            self.pool[0, : size - full * chunk] = source[full * chunk :]
            self.maxima[full] = self.pool[0].max()

    def argmax(self) -> tuple[int, ...]:
        """Voxel index of the first maximum of the residual in C order."""
        k = int(self.maxima.argmax())
        place = self.slot[k]
        values = self.pool[place] if place >= 0 else self.source[k]
        flat = k * self.pool.shape[1] + int(values.argmax())
        index = []
        for stride in self.voxel_strides:
            position, flat = divmod(flat, stride)
            index.append(position)
        return tuple(index)

    def _lines(self, window: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Chunks that ``window`` touches (copied in if new), and the pool line of each row."""
        rows = np.zeros(1, dtype=np.intp)
        for region, stride in zip(window[:-1], self.row_strides, strict=True):
            rows = (rows[:, None] + stride * np.arange(region.start, region.stop)).ravel()
        chunks, offsets = np.divmod(rows, self.rows_per_chunk)
        first = np.empty(len(chunks), dtype=bool)  # rows ascend, so chunks do too
        first[0] = True
        np.not_equal(chunks[1:], chunks[:-1], out=first[1:])
        ids = chunks[first]
        new = ids[self.slot[ids] < 0]
        if len(new):
            places = np.arange(self.used, self.used + len(new))
            self.pool[places] = self.source[new]
            self.slot[new] = places
            self.used += len(new)
        return ids, self.slot[chunks] * self.rows_per_chunk + offsets

    def read(self, window: tuple[slice, ...]) -> np.ndarray:
        """A copy of the residual in ``window``."""
        _, lines = self._lines(window)
        return self.lines[lines, window[-1]].reshape([s.stop - s.start for s in window])

    def subtract(self, window: tuple[slice, ...], values: np.ndarray) -> None:
        """Subtract ``values`` from the residual in ``window`` and refresh the maxima."""
        ids, lines = self._lines(window)
        self.lines[lines, window[-1]] -= values.reshape(len(lines), -1)
        self.maxima[ids] = self.pool[self.slot[ids]].max(axis=1)


_LINK_DISTANCE = 5.0  # sigmas; fits closer than this are refined together if
_LINK_ERROR = 1e-3  # their overlap could bias a separate fit by more than this
_MERGE_DISTANCE = 0.5  # sigmas; refined centres closer than this are one lesion
_MERGE_TRY = 1.5  # sigmas; closer refined centres are tried as one lesion
_BLOCK_SIZE = 16  # most fits refined jointly; larger clusters are cut into blocks
_REFINE_ITERATIONS = 30  # most Levenberg-Marquardt steps of one joint fit
_SPLIT_SPREAD = 0.1  # sigma^2; a fit spread wider than its Gaussian by this may split
_SPLIT_GAIN = 30.0  # least error drop of a split, per parameter and mean squared residual
_REFINE_ROUNDS = 6  # most rounds of refinement of clusters cut into blocks
_REFINE_TOLERANCE = 1e-4  # voxels and amplitude; the joint fit stops at smaller steps
_SETTLED = 0.005  # mass; a cut cluster whose fits change less is refined no further


def _squared_norm(values: np.ndarray) -> float:
    """Sum of the squares of ``values``, by einsum rather than BLAS.

    At the sizes here einsum's single-threaded loops are as fast, and they do not stall
    when other processes hold the cores (multi-threaded BLAS calls on boxes of ~10^4
    voxels were measured to take 100 times longer then).
    """
    flat = values.ravel()
    return float(np.einsum("i,i->", flat, flat))


def _greedy_fits(
    residual: _Residual,
    shape: tuple[int, ...],
    half: np.ndarray,
    sigma: np.ndarray,
    stop: float,
    budget: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The greedy pass: fit at the residual's maximum and subtract, until ``alpha < stop``.

    Returns at most ``budget`` fits: centres (M, D), amplitudes (M,) and the sum of the
    residual in each fitting window before its fit (M,).
    """
    centres, amplitudes, sums = [], [], []
    for _ in range(budget):
        peak = residual.argmax()
        start = [max(p - h, 0) for p, h in zip(peak, half, strict=True)]
        window = tuple(
            slice(s, min(p + h + 1, n)) for s, p, h, n in zip(start, peak, half, shape, strict=True)
        )
        local = residual.read(window)
        alpha, mu = _fit_gaussian(local, start, peak, sigma)
        if alpha < stop:
            break
        centres.append(mu)
        amplitudes.append(alpha)
        sums.append(float(local.sum()))
        support, density = gaussian_window(mu, sigma, shape)
        residual.subtract(support, alpha * density)
    return np.reshape(centres, (-1, len(shape))), np.array(amplitudes), np.array(sums)


def _refinement_blocks(
    centres: np.ndarray,
    amplitudes: np.ndarray,
    sigma: np.ndarray,
    fresh: np.ndarray,
    stagger: bool,
) -> list[tuple[np.ndarray, bool]]:
    """Groups of fits to refine jointly: (ascending fit indices, whether cut) pairs.

    Two fits are linked when their centres are within ``_LINK_DISTANCE`` sigmas and
    their overlap could bias separate fits by more than ``_LINK_ERROR``; each connected
    cluster of two or more fits that holds a ``fresh`` fit is one group. A cluster of
    more than ``_BLOCK_SIZE`` fits is cut into slabs of at most that many fits along its
    longest direction, so the cost stays bounded where many fits link up (dense lesions,
    noise); with ``stagger`` the cuts move by half a slab, so that repeated rounds
    refine across the previous cuts.
    """
    if len(centres) < 2:
        return []
    scaled = centres / sigma
    pairs = cKDTree(scaled).query_pairs(_LINK_DISTANCE, output_type="ndarray")
    # Two Gaussians d sigmas apart correlate by exp(-d^2 / 4): roughly the share of one
    # amplitude that a separate fit of the other takes up.
    squared = np.sum((scaled[pairs[:, 0]] - scaled[pairs[:, 1]]) ** 2, axis=1)
    strongest = np.maximum(np.abs(amplitudes[pairs[:, 0]]), np.abs(amplitudes[pairs[:, 1]]))
    pairs = pairs[strongest * np.exp(-squared / 4) > _LINK_ERROR]
    if len(pairs) == 0:
        return []
    count = len(centres)
    links = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    cluster = connected_components(links, directed=False)[1]
    order = np.argsort(cluster, kind="stable")
    blocks = []
    for members in np.split(order, np.flatnonzero(np.diff(cluster[order])) + 1):
        if len(members) < 2 or not fresh[members].any():
            continue
        if len(members) <= _BLOCK_SIZE:
            blocks.append((members, False))
            continue
        spread = scaled[members] - scaled[members].mean(axis=0)
        direction = np.linalg.eigh(spread.T @ spread)[1][:, -1]
        along = members[np.argsort(spread @ direction, kind="stable")]
        first = _BLOCK_SIZE // 2 if stagger else _BLOCK_SIZE
        cuts = np.arange(first, len(members), _BLOCK_SIZE)
        blocks.extend((np.sort(slab), True) for slab in np.split(along, cuts))
    return blocks


def _closest_pair(centres: np.ndarray, sigma: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Distance in sigmas of the two closest centres (at least two), and their indices."""
    scaled = centres / sigma
    distance = np.linalg.norm(scaled[:, None] - scaled[None], axis=2)
    distance[np.tril_indices(len(centres))] = np.inf
    first, second = np.unravel_index(np.argmin(distance), distance.shape)
    return float(distance[first, second]), (int(first), int(second))


def _merge_or_drop(
    alpha: np.ndarray,
    centres: np.ndarray,
    label: np.ndarray,
    sigma: np.ndarray,
    stop: float,
    pair: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Merge two components or drop one; ``label`` (start fit -> component) follows.

    Merges the given ``pair`` (first < second), or else the closest two components if
    nearer than ``_MERGE_DISTANCE`` sigmas; else drops the weakest if below ``stop``.
    A merged component carries the summed amplitude at the amplitude-weighted mean of
    the two centres. Returns the new amplitudes and centres, and whether any changed.
    """
    if pair is None and len(alpha) > 1:
        distance, closest = _closest_pair(centres, sigma)
        if distance < _MERGE_DISTANCE:
            pair = closest
    if pair is not None:
        first, second = pair  # first < second
        weights = np.maximum(alpha[[first, second]], 1e-12)
        centres = centres.copy()
        centres[first] = weights @ centres[[first, second]] / weights.sum()
        alpha = alpha.copy()
        alpha[first] += alpha[second]
        label[label == second] = first
        label[label > second] -= 1
        return np.delete(alpha, second), np.delete(centres, second, axis=0), True
    if len(alpha) and alpha.min() < stop:
        weakest = int(np.argmin(alpha))
        label[label == weakest] = -1
        label[label > weakest] -= 1
        return np.delete(alpha, weakest), np.delete(centres, weakest, axis=0), True
    return alpha, centres, False


def _joint_fit(
    values: np.ndarray,
    start: np.ndarray,
    alpha: np.ndarray,
    centres: np.ndarray,
    sigma: np.ndarray,
    stop: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares amplitudes and centres of a sum of Gaussians ``sum_k alpha_k g(mu_k)``.

    Levenberg-Marquardt on all amplitudes and centres at once. The Gaussians factorise
    over the axes, and so do their derivatives (``d g / d mu_a = g (x_a - mu_a) /
    sigma_a^2``), so the normal equations come from 1D inner products and contractions
    of the box with 1D factors; no (parameters x voxels) Jacobian is formed. Between
    steps, two components whose centres come within ``_MERGE_DISTANCE`` sigmas become
    one, and a component whose amplitude falls below ``stop`` is dropped (one change at
    a time).

    Parameters
    ----------
    values : (n_0, ..., n_{D-1}) float array
        The map in the box.
    start : (D,) int array
        Voxel index of the box's first voxel.
    alpha : (K,) float array
        Starting amplitudes.
    centres : (K, D) float array
        Starting centres in voxels, kept within the box's extent.
    sigma : (D,) float array
        Standard deviation per axis in voxels.
    stop : float
        Components weaker than this are dropped.

    Returns
    -------
    alpha : (M,) float array
        Fitted amplitudes, all >= stop.
    centres : (M, D) float array
        Fitted centres.
    label : (K,) int array
        The component each starting one ended in, -1 where it was dropped.
    residual : (n_0, ..., n_{D-1}) float array
        The map in the box less the fitted Gaussians.
    """
    dims = values.ndim
    lengths = values.shape
    axes = [start[a] + np.arange(n, dtype=float) for a, n in enumerate(lengths)]
    norm = 1.0 / (math.sqrt(2 * math.pi) * sigma)
    lower, upper = start - 0.5, start + np.array(lengths) - 0.5
    # Which factor (0: the Gaussian, 1: its derivative) each parameter takes per axis;
    # parameter 0 is the amplitude, parameter 1 + a the centre along axis a.
    pick = np.vstack([np.zeros(dims, dtype=int), np.eye(dims, dtype=int)])
    label = np.arange(len(alpha))

    def evaluate(alpha, centres):
        factors = []  # per axis (K, 2, n): the Gaussian's 1D factor and its derivative
        for a, x in enumerate(axes):
            offsets = x - centres[:, a, None]
            gaussian = norm[a] * np.exp(-0.5 * (offsets / sigma[a]) ** 2)
            factors.append(np.stack([gaussian, gaussian * offsets / sigma[a] ** 2], axis=1))
        model = alpha[:, None] * factors[0][:, 0]
        for factor in factors[1:-1]:
            rows = model.shape[1] * factor.shape[2]
            model = (model[:, :, None] * factor[:, None, 0]).reshape(len(alpha), rows)
        # einsum, not BLAS, as in _squared_norm.
        residual = values - np.einsum("km,kn->mn", model, factors[-1][:, 0]).reshape(lengths)
        return factors, residual, _squared_norm(residual)

    def normal_equations(alpha, factors, residual):
        count = len(alpha)
        normal = np.ones((count, dims + 1, count, dims + 1))
        for a, factor in enumerate(factors):
            inner = np.einsum("kin,ljn->kilj", factor, factor)
            normal *= inner[:, pick[:, a]][:, :, :, pick[:, a]]
        # The residual contracted with every product of 1D factors, (K, 2, ..., 2): the
        # last axis first, each new factor index placed before the ones already there.
        projection = np.einsum("kin,...n->ki...", factors[-1], residual)
        for factor in factors[-2::-1]:
            projection = np.einsum("k...n,kjn->kj...", projection, factor)
        weight = np.ones((count, dims + 1))
        weight[:, 1:] = alpha[:, None]  # d model / d mu carries the amplitude
        gradient = projection[(slice(None), *pick.T)] * weight  # (K, D + 1)
        normal *= weight[:, :, None, None] * weight[None, None]
        size = count * (dims + 1)
        return normal.reshape(size, size), gradient.ravel()

    state = evaluate(alpha, centres)
    damping, converged = 1e-3, False
    for _ in range(_REFINE_ITERATIONS):
        alpha, centres, changed = _merge_or_drop(alpha, centres, label, sigma, stop)
        if changed:
            state, damping, converged = evaluate(alpha, centres), 1e-3, False
            continue
        if converged or not len(alpha):
            break
        factors, residual, cost = state
        normal, gradient = normal_equations(alpha, factors, residual)
        # Marquardt's scaling, floored so that a vanishing component stays solvable.
        scale = np.diag(normal.diagonal() + 1e-12 * normal.diagonal().max() + 1e-300)
        while damping < 1e12:
            step = np.linalg.solve(normal + damping * scale, gradient).reshape(len(alpha), -1)
            trial_alpha = alpha + step[:, 0]
            trial_centres = np.clip(centres + step[:, 1:], lower, upper)
            trial = evaluate(trial_alpha, trial_centres)
            if trial[2] <= cost:
                break
            damping *= 4
        else:
            converged = True  # no step lowers the error
            continue
        moved = max(np.abs(trial_alpha - alpha).max(), np.abs(trial_centres - centres).max())
        converged = moved < _REFINE_TOLERANCE or cost - trial[2] < 1e-8 * cost
        alpha, centres, state = trial_alpha, trial_centres, trial
        damping = max(damping / 3, 1e-9)
    changed = True
    while changed:
        alpha, centres, changed = _merge_or_drop(alpha, centres, label, sigma, stop)
    return alpha, centres, label, evaluate(alpha, centres)[1]


def _split_candidate(
    fitted: np.ndarray,
    start: np.ndarray,
    alpha: np.ndarray,
    centres: np.ndarray,
    sigma: np.ndarray,
    half: np.ndarray,
    stop: float,
) -> tuple[int, np.ndarray, tuple[slice, ...], np.ndarray] | None:
    """The fitted Gaussian that looks most like two lesions, and where to put the two.

    Around each fitted Gaussian of amplitude >= 2 ``stop`` (so that both halves can
    stay), the positive part of the Gaussian plus the residual is compared with the
    Gaussian alone by their second moments: two lesions taken in by one fit spread wider
    along the line through them. For the largest excess, in sigma^2 along direction v,
    above ``_SPLIT_SPREAD``, returns the index, the shift ``sqrt(excess) sigma v`` of
    the two halves from the centre, the window (in the box) and the Gaussian in it;
    None if no fit spreads that much.
    """
    best, excess = None, _SPLIT_SPREAD
    for k in np.flatnonzero(alpha >= 2 * stop):
        nearest = np.rint(centres[k]).astype(int) - start
        low = np.maximum(nearest - half, 0)
        high = np.minimum(nearest + half + 1, fitted.shape)
        offsets = [
            np.arange(a, b) + s - c for a, b, s, c in zip(low, high, start, centres[k], strict=True)
        ]
        own = alpha[k]
        for axis, offset in enumerate(offsets):
            factor = np.exp(-0.5 * (offset / sigma[axis]) ** 2)
            own = np.multiply.outer(own, factor / (math.sqrt(2 * math.pi) * sigma[axis]))
        window = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        grid = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=-1).reshape(-1, len(offsets))
        grid /= sigma
        moments = [
            np.einsum("ni,n,nj->ij", grid, weights, grid) / max(weights.sum(), 1e-300)
            for weights in (np.maximum(fitted[window] + own, 0).ravel(), own.ravel())
        ]
        spread, direction = np.linalg.eigh(moments[0] - moments[1])
        if spread[-1] > excess:
            shift = math.sqrt(spread[-1]) * sigma * direction[:, -1]
            best, excess = (int(k), shift, window, own), spread[-1]
    return best


def _split_block(
    values: np.ndarray,
    start: np.ndarray,
    block: tuple[np.ndarray, ...],
    sigma: np.ndarray,
    half: np.ndarray,
    stop: float,
) -> tuple[np.ndarray, ...] | None:
    """Split the fit of a jointly fitted block that looks most like two lesions.

    ``block`` is (amplitudes, centres, window sums, order, residual box) after
    :func:`_joint_fit`. The fit of :func:`_split_candidate` is replaced by two of half
    its amplitude, fitted first alone in its window and then with the whole block again;
    the split is kept when both parts stay (no merge, no drop) and the squared error
    drops by more than ``_SPLIT_GAIN`` times the mean squared residual per added
    parameter (a penalty as in information criteria, without which fits on noise would
    split too). The halves share the window sum. Returns the new block, or None.
    """
    alpha, centres, sums, order, fitted = block
    candidate = _split_candidate(fitted, start, alpha, centres, sigma, half, stop)
    if candidate is None:
        return None
    k, shift, window, own = candidate
    penalty = _SPLIT_GAIN * (len(sigma) + 1) * _squared_norm(fitted) / fitted.size
    halves = np.array([alpha[k] / 2] * 2), centres[k] + np.array([-shift, shift])
    # First the two halves alone in the window, the rest held: a cheap test that most
    # candidates on noise fail.
    corner = start + np.array([region.start for region in window])
    local = _joint_fit(fitted[window] + own, corner, *halves, sigma, stop)
    if len(local[0]) < 2 or _squared_norm(fitted[window]) - _squared_norm(local[3]) <= penalty:
        return None
    starts = [
        np.concatenate([np.delete(part, k), [part[k] * factor] * 2])
        for part, factor in ((alpha, 0.5), (sums, 0.5), (order, 1))
    ]
    new_alpha, new_centres, label, new_fitted = _joint_fit(
        values, start, starts[0], np.vstack([np.delete(centres, k, axis=0), local[1]]), sigma, stop
    )
    gain = _squared_norm(fitted) - _squared_norm(new_fitted)
    if len(new_alpha) <= len(alpha) or gain <= penalty:
        return None
    new_sums, new_order = _combine(label, starts[1], starts[2], len(new_alpha))
    return new_alpha, new_centres, new_sums, new_order, new_fitted


def _merge_block(
    values: np.ndarray,
    start: np.ndarray,
    block: tuple[np.ndarray, ...],
    sigma: np.ndarray,
    stop: float,
) -> tuple[np.ndarray, ...] | None:
    """Merge the two closest fits of a jointly fitted block, if that fits better.

    ``block`` is as for :func:`_split_block`. Two fits less than ``_MERGE_TRY`` sigmas
    apart may share one lesion, one of them stuck (for instance at the image border)
    where no step of the joint fit frees it: they are replaced by one fit (amplitudes
    added, at their amplitude-weighted centre), the block is fitted again, and the merge
    is kept when the squared error does not rise. Returns the new block, or None.
    """
    alpha, centres, sums, order, fitted = block
    if len(alpha) < 2:
        return None
    distance, pair = _closest_pair(centres, sigma)
    if distance >= _MERGE_TRY:
        return None
    label = np.arange(len(alpha))
    merged = _merge_or_drop(alpha, centres, label, sigma, stop, pair)[:2]
    new_alpha, new_centres, relabel, new_fitted = _joint_fit(values, start, *merged, sigma, stop)
    if _squared_norm(new_fitted) > _squared_norm(fitted):
        return None
    label = relabel[label]  # a merge drops no start
    return new_alpha, new_centres, *_combine(label, sums, order, len(new_alpha)), new_fitted


def _combine(
    label: np.ndarray, sums: np.ndarray, order: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Window sums (added) and order (smallest) of ``count`` lesions from their sources."""
    kept = label >= 0
    combined_sums = np.bincount(label[kept], sums[kept], minlength=count)
    combined_order = np.full(count, np.iinfo(np.int64).max)
    np.minimum.at(combined_order, label[kept], order[kept])
    return combined_sums, combined_order


def _refine_fits(
    residual: _Residual,
    shape: tuple[int, ...],
    half: np.ndarray,
    sigma: np.ndarray,
    stop: float,
    fits: tuple[np.ndarray, ...],
    fresh: np.ndarray,
    stagger: bool,
    room: int,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Refit jointly, block by block, the clusters of fits that hold a fresh fit.

    ``fits`` is (centres, amplitudes, window sums, order), where ``order`` numbers each
    lesion by its first greedy fit. For each block: add its fitted Gaussians back to
    the residual, fit them jointly in the box that holds their fitting windows
    (:func:`_joint_fit`), try one merge (:func:`_merge_block`) and one split
    (:func:`_split_block`; at most ``room`` splits in all), and subtract the result, so
    later blocks see the refined neighbours. Merged lesions sum their window sums and
    keep the smaller order. ``stagger`` moves the cuts of large clusters, see
    :func:`_refinement_blocks`.

    Returns the new fits and, per fit, whether it is unsettled: it belongs to a cluster
    that was cut into blocks, and its block's fit changed it (by more than ``_SETTLED``
    in mass, or by merging, dropping or splitting), so that the cluster is worth
    refining again.
    """
    centres, amplitudes, sums, order = fits
    untouched = np.ones(len(amplitudes), dtype=bool)
    parts = []
    for block, cut in _refinement_blocks(centres, amplitudes, sigma, fresh, stagger):
        untouched[block] = False
        for k in block:
            support, density = gaussian_window(centres[k], sigma, shape)
            residual.subtract(support, -amplitudes[k] * density)
        nearest = np.rint(centres[block]).astype(int)
        start = np.maximum(nearest - half, 0).min(axis=0)
        end = np.minimum(nearest + half + 1, shape).max(axis=0)
        box = tuple(slice(a, b) for a, b in zip(start, end, strict=True))
        values = residual.read(box)
        alpha, mu, label, fitted = _joint_fit(
            values, start, amplitudes[block], centres[block], sigma, stop
        )
        refitted = (alpha, mu, *_combine(label, sums[block], order[block], len(alpha)), fitted)
        changed = len(alpha) < len(block)  # merged or dropped
        merged = _merge_block(values, start, refitted, sigma, stop)
        if merged is not None:
            refitted, changed = merged, True
        if room > 0:
            split = _split_block(values, start, refitted, sigma, half, stop)
            if split is not None:
                refitted, changed, room = split, True, room - 1
        alpha, mu = refitted[:2]
        for centre, amplitude in zip(mu, alpha, strict=True):
            support, density = gaussian_window(centre, sigma, shape)
            residual.subtract(support, amplitude * density)
        if cut and not changed:
            # The change of each fitted Gaussian in units of mass: the amplitude change
            # plus the amplitude times the centre shift in sigmas.
            shift = np.linalg.norm((mu - centres[block]) / sigma, axis=1)
            change = np.abs(alpha - amplitudes[block]) + np.abs(alpha) * shift
            changed = change.max() > _SETTLED
        parts.append((mu, alpha, *refitted[2:4], np.full(len(alpha), cut and changed)))
    if not parts:
        return fits, np.zeros(len(amplitudes), dtype=bool)
    parts.append((*(part[untouched] for part in fits), np.zeros(untouched.sum(), bool)))
    refined = tuple(np.concatenate([part[i] for part in parts]) for i in range(5))
    return refined[:4], refined[4]


def _voxel_sigma(sigma, spacing, dims: int) -> np.ndarray:
    values = np.asarray(_as_array(sigma, "sigma"), dtype=float)
    if values.ndim > 1 or values.size not in (1, dims):
        raise ValueError(f"sigma: got {sigma!r}; expected a number or {dims} numbers")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"sigma: got {sigma!r}; expected positive finite widths")
    return np.broadcast_to(values, (dims,)) / axis_spacing(spacing, dims, "spacing")


def fit_gaussians(
    heatmap: ArrayLike,
    sigma: float | Sequence[float],
    spacing: float | Sequence[float] | None = None,
    stop: float = 0.01,
    max_lesions: int = 1000,
    window: int | Sequence[int] | None = None,
    refine: bool = True,
) -> Detections:
    """Lesions of a mass-1 Gaussian heatmap by iterative Gaussian fitting.

    The method of Myers-Colet et al. (MICCAI 2022): (1) take the global maximum of the
    residual map (at first the heatmap); (2) fit the amplitude ``alpha`` and sub-voxel
    centre ``mu`` of ``alpha * N(mu, sigma)`` by least squares in a window around it,
    with ``N`` the mass-1 Gaussian of :func:`weaklesion.targets.gaussian_window` and
    ``sigma`` known; (3) subtract the fitted Gaussian from the residual within its
    support; (4) repeat until ``alpha < stop`` or ``max_lesions`` lesions are found.
    Since each lesion of the heatmap carries mass 1, ``alpha`` estimates the probability
    that the lesion exists. With ``refine`` (the default), neighbouring fits of this
    greedy pass are then fitted again jointly, which separates touching lesions.

    Parameters
    ----------
    heatmap : (Z, Y, X) or (Y, X) array or tensor
        Predicted heatmap, finite; the summed map is the expected lesion count.
    sigma : float or sequence of D floats
        Width of the lesion Gaussians: in voxels when ``spacing`` is None, else in mm.
    spacing : float or sequence of D floats, optional
        Voxel size in mm per axis.
    stop : float
        Stop at the first fit whose amplitude is below this level (not reported); the
        refinement drops lesions that fall below it.
    max_lesions : int
        Most lesions to extract.
    window : int or sequence of D ints, optional
        Half-width of the fitting window in voxels per axis; by default
        ``ceil(2 sigma)`` in voxels. The window is clipped at the image border, and the
        centre is fitted within the window's extent.
    refine : bool
        Fit neighbouring lesions again jointly after the greedy pass (see Notes); with
        False, the result is that of the greedy pass alone, as published.

    Returns
    -------
    Detections
        Ordered by the raw amplitude, highest first: ``points`` (N, D) fitted centres in
        voxels; ``scores`` the amplitudes clipped to [0, 1], the existence probabilities;
        ``extras["amplitude"]`` the raw amplitudes, which rank lesions whose clipped
        scores tie at 1; ``extras["window_sum"]`` the
        sum of the residual in the fitting window just before the greedy fit (the
        unfitted estimate of the same probability). The refinement does not recompute
        it: a refined lesion carries the summed window sums of the greedy fits it came
        from (half where a fit was split); as the windows of touching lesions overlap,
        it then holds mass of the neighbours too.

    Notes
    -----
    The residual keeps per-chunk maxima that are refreshed where a Gaussian was
    subtracted, so the global maximum is found without rescanning the map, and the map
    is read once and never copied whole; the lesions of the greedy pass are those of
    the plain algorithm that takes ``argmax`` of the whole residual at every step (the
    first maximum in C order on ties). The fit solves for ``mu`` with ``alpha``
    eliminated, by Gauss-Newton steps from a start that is exact for an isolated
    Gaussian, so a clean map needs one evaluation per lesion.

    The greedy pass sees one lesion at a time, so lesions closer than about 4 sigma are
    fitted badly: at 2 sigma apart their sum is flat-topped, and the first fit lands
    between them with about their summed amplitude, beside small side fits. Worst
    errors measured on noise-free pairs (amplitudes 0.5-1): 2.2 voxels and 0.63 in
    amplitude at 2 sigma apart, 0.8 and 0.12 at 3 sigma, 0.1 and 0.02 at 4 sigma.

    The refinement links fits whose centres are less than 5 sigma apart and overlap
    enough to bias separate fits by more than 0.001 in amplitude, and for each linked
    cluster solves the least-squares problem of all its amplitudes and centres at once,
    on the box that holds the cluster's fitting windows, from the greedy fits:
    Levenberg-Marquardt, with normal equations built from 1D factors since the Gaussians
    and their derivatives factorise over the axes. Meanwhile two fits whose centres come
    within 0.5 sigma merge (amplitudes add), and a fit whose amplitude falls below
    ``stop`` is dropped; so the greedy pass's middle fit and side fits turn into the
    lesions that are there. Two moves then get out of local minima, each kept only if
    it fits better: the two closest fits, if within 1.5 sigma, are merged and the
    cluster fitted again (a fit stuck at the image border), and the fit whose spread
    (second moments of its Gaussian plus the residual) most exceeds its Gaussian's is
    split in two along the excess and the cluster fitted again (a lesion whose side fits
    went to its neighbours in the greedy pass). A split must lower the squared error by
    more than 30 times the mean squared residual per added parameter, a penalty as in
    information criteria, so that fits on noise do not split. Fits without a linked
    neighbour are left as they are, so isolated lesions come out as without refinement.
    Clusters of more than 16 fits are refined in slabs of 16 along their longest
    direction (one joint fit costs the cube of its size), with the cuts moved by half a
    slab in the next round, for up to 6 rounds until no fit changes by more than 0.005
    in mass.

    Measured on noise-free maps: pairs and triples 2 sigma or more apart (amplitudes
    0.5-1, 2D and 3D, along the axes and oblique, at the border, with anisotropic
    spacing) come out within 0.001 voxel and 0.001 in amplitude, and random maps of
    lesions at least 2 sigma apart (up to one lesion per 4 sigma^2 in 2D) within 0.05
    voxel and 0.01. Pairs 1 to 2 sigma apart are separated as well when both amplitudes
    are well above ``stop``. Limits: closer lesions with amplitudes near ``stop`` can
    stay merged, for lack of a side fit above ``stop`` to start from; where noise above
    ``stop`` gives many linked fits, the refinement leaves their number about as it was
    but costs 2 to 6 times the greedy pass (10 times on a field of uniform noise with
    1000 fits).

    Examples
    --------
    >>> from weaklesion.targets import gaussian_window
    >>> def planted(shape, lesions, sigma):
    ...     heatmap = np.zeros(shape)
    ...     for centre, amplitude in lesions:
    ...         window, values = gaussian_window(centre, (sigma, sigma), shape)
    ...         heatmap[window] += amplitude * values
    ...     return heatmap
    >>> heatmap = planted((24, 24), [((6.3, 7.0), 0.9), ((15.0, 16.6), 0.4)], 1.5)
    >>> found = fit_gaussians(heatmap, sigma=1.5)
    >>> found.points.round(3)
    array([[ 6.3,  7. ],
           [15. , 16.6]])
    >>> found.scores.round(3)
    array([0.9, 0.4])

    Two lesions 2 sigma apart: the greedy pass alone finds a middle fit and side fits,
    the refinement the two lesions.

    >>> pair = planted((20, 20), [((10.0, 8.0), 0.8), ((10.0, 11.0), 0.6)], 1.5)
    >>> fit_gaussians(pair, sigma=1.5, refine=False).points.round(1)
    array([[10. ,  9.1],
           [10. , 12.4],
           [10. ,  6. ]])
    >>> found = fit_gaussians(pair, sigma=1.5)
    >>> found.points.round(3), found.scores.round(3)
    (array([[10.,  8.],
           [10., 11.]]), array([0.8, 0.6]))
    """
    values = _spatial_map(heatmap, "heatmap")
    dims = values.ndim
    sigma_voxels = _voxel_sigma(sigma, spacing, dims)
    if window is None:
        half = np.ceil(2 * sigma_voxels).astype(int)
    else:
        half = np.asarray(window)
        if half.dtype.kind not in "iu" or half.size not in (1, dims) or np.any(half < 1):
            raise ValueError(
                f"window: got {window!r}; expected one or {dims} half-widths >= 1 voxel"
            )
        half = np.broadcast_to(half.reshape(-1), (dims,))
    if not math.isfinite(stop):
        raise ValueError(f"stop: got {stop!r}; expected a finite amplitude level")
    if max_lesions < 0:
        raise ValueError(f"max_lesions: got {max_lesions}; expected a count >= 0")
    extras = ("amplitude", "window_sum")
    if values.size == 0 or max_lesions == 0:
        return Detections.empty(dims, extras)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    residual = _Residual(np.ascontiguousarray(values))
    half = np.array([int(h) for h in half])
    shape = values.shape
    centres, amplitudes, sums = _greedy_fits(residual, shape, half, sigma_voxels, stop, max_lesions)
    fits = (centres, amplitudes, sums, np.arange(len(amplitudes)))
    fresh = np.ones(len(amplitudes), dtype=bool)
    for round_index in range(_REFINE_ROUNDS if refine else 0):
        room = max_lesions - len(fits[1])
        stagger = round_index % 2 == 1
        fits, fresh = _refine_fits(
            residual, shape, half, sigma_voxels, stop, fits, fresh, stagger, room
        )
        if not fresh.any():
            break
    centres, amplitudes, sums, order = fits
    if not len(amplitudes):
        return Detections.empty(dims, extras)
    by_order = np.argsort(order, kind="stable")
    centres, amplitudes, sums = centres[by_order], amplitudes[by_order], sums[by_order]
    # Ranked by the unclipped amplitude: amplitudes above 1 all score 1.
    by_amplitude = np.argsort(-amplitudes, kind="stable")
    return Detections(
        centres[by_amplitude],
        np.clip(amplitudes[by_amplitude], 0.0, 1.0),
        {"amplitude": amplitudes[by_amplitude], "window_sum": sums[by_amplitude]},
    )


# --------------------------------------------------------------------------------------
# Connected components, peaks and count-guided thresholds
# --------------------------------------------------------------------------------------


def _connectivity(connectivity: int | None, dims: int) -> int:
    if connectivity is None:
        return _FULL_CONNECTIVITY[dims]
    if connectivity not in _CONNECTIVITIES[dims]:
        raise ValueError(
            f"connectivity: got {connectivity!r}; expected one of "
            f"{_CONNECTIVITIES[dims]} for a {dims}D map"
        )
    return int(connectivity)


def _components(
    values: np.ndarray,
    labels: np.ndarray,
    count: int,
    location: str,
    score: str,
) -> Detections:
    """One detection per label 1..count of ``labels`` over the map ``values``.

    ``location`` is "max", "center_of_mass" (weighted by ``values``) or "centroid".
    """
    dims = values.ndim
    if count == 0:
        return Detections.empty(dims, ["size"])
    voxels = np.flatnonzero(labels)
    owner = labels.reshape(-1)[voxels].astype(np.int64) - 1
    weights = values.reshape(-1)[voxels].astype(float)
    size = np.bincount(owner, minlength=count)
    if location == "max" or score == "max":
        # Stable sort by (label, -value): the first voxel of each label is its maximum,
        # the first in C order among equal maxima.
        order = np.lexsort((-weights, owner))
        firsts = order[np.r_[0, np.cumsum(size)[:-1]]]
        peak_value = weights[firsts]
    if location == "max":
        points = np.stack(np.unravel_index(voxels[firsts], values.shape), axis=1).astype(float)
    elif location == "centroid":
        coordinates = np.unravel_index(voxels, values.shape)
        points = np.stack([np.bincount(owner, c, count) / size for c in coordinates], axis=1)
    else:
        mass = np.bincount(owner, weights=weights, minlength=count)
        coordinates = np.unravel_index(voxels, values.shape)
        points = np.empty((count, dims))
        for axis, coordinate in enumerate(coordinates):
            weighted = np.bincount(owner, weights=weights * coordinate, minlength=count)
            plain = np.bincount(owner, weights=coordinate, minlength=count) / size
            # A component of zero mass has no weighted centre; use its geometric one.
            points[:, axis] = np.where(mass != 0, weighted / np.where(mass != 0, mass, 1), plain)
    if score == "max":
        scores = peak_value
    else:
        scores = np.bincount(owner, weights=weights, minlength=count) / size
    return Detections(points, scores, {"size": size}).sorted()


def component_detections(
    prob_map: ArrayLike,
    threshold: float = 0.5,
    connectivity: int | None = None,
    min_size: int = 1,
    location: Literal["max", "center_of_mass"] = "max",
    score: Literal["max", "mean"] = "max",
) -> Detections:
    """One detection per connected component of the map above a threshold.

    Parameters
    ----------
    prob_map : (Z, Y, X) or (Y, X) array or tensor
        Probability map (or any finite score map).
    threshold : float
        Voxels strictly above it are foreground.
    connectivity : int, optional
        Neighbourhood of the components: 6, 18 or 26 in 3D, 4 or 8 in 2D; default the
        full one (26 or 8).
    min_size : int
        Components with fewer voxels are dropped.
    location : {"max", "center_of_mass"}
        Place each detection at the component's maximum voxel (the first in C order
        among equal maxima) or at its centre of mass weighted by the map.
    score : {"max", "mean"}
        Score each detection by the component's maximum or mean value.

    Returns
    -------
    Detections
        Sorted by score, highest first; ``extras["size"]`` the component size in voxels.

    Examples
    --------
    >>> prob = np.array([[0.9, 0.8, 0.0, 0.0],
    ...                  [0.0, 0.0, 0.0, 0.6],
    ...                  [0.0, 0.0, 0.0, 0.7]])
    >>> found = component_detections(prob, threshold=0.5)
    >>> found.points, found.scores, found.extras["size"]
    (array([[0., 0.],
           [2., 3.]]), array([0.9, 0.7]), array([2, 2]))
    >>> component_detections(prob, location="center_of_mass", score="mean").points.round(3)
    array([[0.   , 0.471],
           [1.538, 3.   ]])
    """
    values = _spatial_map(prob_map, "prob_map")
    dims = values.ndim
    connectivity = _connectivity(connectivity, dims)
    if location not in ("max", "center_of_mass"):
        raise ValueError(f"location: got {location!r}; expected 'max' or 'center_of_mass'")
    if score not in ("max", "mean"):
        raise ValueError(f"score: got {score!r}; expected 'max' or 'mean'")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold: got {threshold!r}; expected a finite number")
    foreground = values > threshold
    if not foreground.any():
        return Detections.empty(dims, ["size"])
    labels, count = cc3d.connected_components(foreground, connectivity=connectivity, return_N=True)
    if min_size > 1:
        size = np.bincount(labels.reshape(-1), minlength=count + 1)
        keep = size >= min_size
        keep[0] = False
        relabel = np.where(keep, np.cumsum(keep), 0)
        labels, count = relabel[labels], int(keep.sum())
    return _components(values, labels, int(count), location, score)


def peak_detections(
    map: ArrayLike,
    size: int | Sequence[int] = 6,
    threshold: float | None = None,
    top_n: int | None = None,
    exclude_border: bool | int = False,
) -> Detections:
    """Local maxima of a map by non-maximum suppression, ranked by value.

    A voxel is a peak where it equals the maximum of the map over a box of ``size``
    voxels around it (``scipy.ndimage.maximum_filter``) and is strictly above
    ``threshold``. A plateau of equal, connected maxima (full connectivity) gives one
    peak at its centre, so a flat region never gives a crowd of detections.

    Parameters
    ----------
    map : (Z, Y, X) or (Y, X) array or tensor
        Score map (an attention map, a heatmap, a probability map), finite.
    size : int or sequence of D ints
        Size of the suppression box in voxels.
    threshold : float, optional
        Absolute level the peaks must exceed; by default the map's minimum, so a
        constant map has no peaks.
    top_n : int, optional
        Keep the ``top_n`` highest peaks (e.g. the rounded predicted count).
    exclude_border : bool or int
        Drop maxima closer than this many voxels to the border; ``True`` means
        ``size // 2`` (the box would leave the image).

    Returns
    -------
    Detections
        Peak centres, sorted by value (the score), highest first; ties in the order of
        their first voxel in C order.

    Examples
    --------
    >>> image = np.zeros((7, 9))
    >>> image[1, 1], image[5, 6] = 0.4, 0.8
    >>> image[3, 3:5] = 0.6  # a two-voxel plateau gives one peak between its voxels
    >>> found = peak_detections(image, size=3)
    >>> found.points, found.scores
    (array([[5. , 6. ],
           [3. , 3.5],
           [1. , 1. ]]), array([0.8, 0.6, 0.4]))
    >>> peak_detections(image, size=3, top_n=1).points
    array([[5., 6.]])
    """
    values = _spatial_map(map, "map")
    dims = values.ndim
    if top_n is not None and top_n < 0:
        raise ValueError(f"top_n: got {top_n}; expected a count >= 0")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold: got {threshold!r}; expected a finite number")
    sizes = np.asarray(size)
    if sizes.dtype.kind not in "iu" or sizes.size not in (1, dims) or np.any(sizes < 1):
        raise ValueError(f"size: got {size!r}; expected one or {dims} box sizes >= 1 voxel")
    margin = int(sizes.max()) // 2 if exclude_border is True else int(exclude_border)
    if margin < 0:
        raise ValueError(f"exclude_border: got {exclude_border!r}; expected >= 0 voxels")
    if values.size == 0 or top_n == 0:
        return Detections.empty(dims)
    level = values.min() if threshold is None else threshold
    peaks = (values == ndimage.maximum_filter(values, size=size, mode="nearest")) & (values > level)
    if margin:
        inner = np.zeros_like(peaks)
        inner[tuple(slice(margin, n - margin) for n in values.shape)] = True
        peaks &= inner
    if not peaks.any():
        return Detections.empty(dims)
    # Label connected peak voxels of equal value together: one detection per plateau.
    _, plateau_value = np.unique(values[peaks], return_inverse=True)
    plateau_id = np.zeros(values.shape, dtype=np.uint32)
    plateau_id[peaks] = plateau_value.ravel() + 1
    labels, count = cc3d.connected_components(
        plateau_id, connectivity=_FULL_CONNECTIVITY[dims], return_N=True
    )
    found = _components(values, labels, int(count), "centroid", "max")
    found = Detections(found.points, found.scores)
    return found if top_n is None else found[: int(top_n)]


def _component_count(values: np.ndarray, level: float, connectivity: int) -> int:
    return int(
        cc3d.connected_components(values > level, connectivity=connectivity, return_N=True)[1]
    )


def count_guided_threshold(
    map: ArrayLike,
    count: int,
    connectivity: int | None = None,
) -> float:
    """The threshold at which the map has ``count`` connected components above it.

    The GP-Unet rule (Dubost et al., MICCAI 2017): with ``count`` the predicted lesion
    count, choose the threshold so that the components of ``map > threshold`` number
    ``count``. Candidate thresholds are the map's distinct values (any threshold between
    two neighbouring values gives the same components as the lower one), searched from
    the top: doubling steps down the sorted values until the component count reaches
    ``count``, then bisection, so about ``2 log2(#values)`` labellings.

    Parameters
    ----------
    map : (Z, Y, X) or (Y, X) array or tensor
        Score map, finite.
    count : int
        Wanted number of components, >= 0.
    connectivity : int, optional
        As in :func:`component_detections`; default the full neighbourhood.

    Returns
    -------
    float
        The highest map value whose threshold gives ``count`` components. The search
        assumes the number of components grows as the threshold falls, which holds
        until components start to merge; where no threshold found gives exactly
        ``count`` (a level where several components appear at once, or a map with
        fewer peaks), it returns the threshold whose count is nearest, the higher
        threshold on a tie. ``count = 0`` gives the map's maximum (nothing above it).

    Examples
    --------
    >>> image = np.array([[0.9, 0.0, 0.5, 0.0, 0.7],
    ...                   [0.0, 0.0, 0.4, 0.0, 0.0]])
    >>> count_guided_threshold(image, 2), count_guided_threshold(image, 3)
    (0.5, 0.4)
    """
    values = _spatial_map(map, "map")
    connectivity = _connectivity(connectivity, values.ndim)
    if count < 0:
        raise ValueError(f"count: got {count}; expected a count >= 0")
    if values.size == 0:
        return 0.0
    levels = np.unique(values)[::-1]  # descending; threshold levels[j] keeps the top j values
    if count == 0 or len(levels) == 1:
        return float(levels[0])
    counts: dict[int, int] = {0: 0}

    def components(j: int) -> int:
        if j not in counts:
            counts[j] = _component_count(values, levels[j], connectivity)
        return counts[j]

    last = len(levels) - 1
    below, j = 0, 1
    while components(j) < count and j < last:
        below, j = j, min(2 * j, last)
    if components(j) >= count:
        above = j  # components(below) < count <= components(above)
        while above - below > 1:
            middle = (below + above) // 2
            if components(middle) >= count:
                above = middle
            else:
                below = middle
        candidates = [below, above]
    else:
        candidates = list(counts)
    best = min(candidates, key=lambda i: (abs(counts[i] - count), i))
    return float(levels[best])


def count_guided_detections(
    map: ArrayLike,
    count: int,
    connectivity: int | None = None,
    location: Literal["max", "center_of_mass"] = "max",
    score: Literal["max", "mean"] = "max",
) -> Detections:
    """The connected components at the count-guided threshold, as detections.

    See :func:`count_guided_threshold` for the threshold and
    :func:`component_detections` for ``location``, ``score`` and the extras.

    Examples
    --------
    >>> image = np.array([[0.9, 0.0, 0.5, 0.0, 0.7],
    ...                   [0.0, 0.0, 0.4, 0.0, 0.0]])
    >>> count_guided_detections(image, 2).points
    array([[0., 0.],
           [0., 4.]])
    """
    values = _spatial_map(map, "map")
    threshold = count_guided_threshold(values, count, connectivity)
    return component_detections(values, threshold, connectivity, 1, location, score)
