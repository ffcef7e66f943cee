"""JSON results: NumPy values made plain JSON, written atomically."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import numpy as np

from weaklesion.writing import atomic_write


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
    (see :func:`~weaklesion.writing.atomic_write`).

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
