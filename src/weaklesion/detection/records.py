"""The record every detector returns, :class:`Detections`, and its CSV and JSON files."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from weaklesion._validation import (
    ArrayLike,
    axis_spacing,
    check_finite,
)
from weaklesion.detection._common import _AXES, _RESERVED_COLUMNS, _WORLD_COLUMNS, _as_array
from weaklesion.io import atomic_write


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
