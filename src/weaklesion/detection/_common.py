"""Checks and constants the detectors share: array conversion, axes, connectivities."""

from __future__ import annotations

import numpy as np
import torch

from weaklesion._validation import (
    ArrayLike,
    check_finite,
    check_spatial,
)

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
