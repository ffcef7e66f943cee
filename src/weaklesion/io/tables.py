"""Weak labels as CSV tables: point labels (lesion centres) and lesion counts by case.

Each table is read strictly (``read_*``: the first malformed row raises) or leniently
(``parse_*``: bad rows are skipped and every problem is listed, naming the file, row and
field), and written atomically.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping

import numpy as np

from weaklesion._validation import check_finite
from weaklesion.writing import atomic_write

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
        or empty; array indices, see :func:`~weaklesion.io.read_image`) or ``world``
        (mm). Other columns are ignored. A row with a case and empty coordinates marks a
        case with no points.
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
