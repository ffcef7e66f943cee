"""Input checks shared by the post-processing core.

Each check raises a one-line :class:`ValueError` that names the argument and says what
was expected, so that a user calling the core on their own model's output learns at once
what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _values(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def check_finite(array: ArrayLike, name: str) -> None:
    """Raise ``ValueError`` if ``array`` holds NaN or infinite values."""
    values = _values(array)
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ValueError(f"{name}: {bad} value(s) are NaN or infinite; expected finite numbers")


def check_probabilities(array: ArrayLike, name: str) -> None:
    """Raise ``ValueError`` unless every value of ``array`` is a finite number in [0, 1]."""
    check_finite(array, name)
    values = _values(array)
    if values.size and (values.min() < 0 or values.max() > 1):
        raise ValueError(
            f"{name}: values range over [{values.min():.4g}, {values.max():.4g}]; "
            "expected probabilities in [0, 1]"
        )


def check_spatial(array: ArrayLike, name: str, dims: Sequence[int] = (2, 3)) -> None:
    """Raise ``ValueError`` unless ``array`` has one of the spatial ranks ``dims``."""
    if array.ndim not in dims:
        expected = " or ".join(f"{d}D" for d in dims)
        raise ValueError(f"{name}: has shape {tuple(array.shape)}; expected a {expected} array")


def check_points(points: ArrayLike, shape: Sequence[int] | None, name: str) -> np.ndarray:
    """Return ``points`` as a float ``(N, D)`` array, checked against an image ``shape``.

    ``points`` are voxel coordinates (z, y, x) or (y, x). A point inside the image lies
    in ``[-0.5, size - 0.5]`` along every axis (the voxel's extent around its centre).
    """
    values = np.asarray(_values(points), dtype=float)
    dims = len(shape) if shape is not None else None
    if values.size == 0:
        return values.reshape(0, dims if dims is not None else max(values.shape[-1:] or (0,)))
    if values.ndim != 2 or (dims is not None and values.shape[1] != dims):
        expected = f"(N, {dims})" if dims is not None else "(N, D)"
        raise ValueError(f"{name}: has shape {values.shape}; expected {expected}")
    check_finite(values, name)
    if shape is not None:
        upper = np.asarray(shape, dtype=float) - 0.5
        outside = np.any((values < -0.5) | (values > upper), axis=1)
        if outside.any():
            row = int(np.argmax(outside))
            raise ValueError(
                f"{name}: point {row} at {tuple(values[row].round(3))} lies outside the "
                f"image of shape {tuple(shape)}"
            )
    return values


def check_same_shape(a: ArrayLike, b: ArrayLike, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "expected the same shape"
        )


def axis_spacing(spacing: float | Sequence[float] | None, dims: int, name: str) -> np.ndarray:
    """Return per-axis voxel spacing (mm) as a ``(dims,)`` array; ``None`` means 1 voxel."""
    if spacing is None:
        return np.ones(dims)
    values = np.broadcast_to(np.asarray(spacing, dtype=float), (dims,)).copy()
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name}: got {spacing!r}; expected positive finite spacing in mm")
    return values


def check_batch(
    array: ArrayLike, name: str, spatial_dims: int, channels: int | None = None
) -> None:
    """Raise ``ValueError`` unless ``array`` is a channel-first batch ``(N, C, *spatial)``.

    ``spatial_dims`` is the number of spatial axes (2 or 3); ``channels``, when given, the
    number of channels expected along axis 1.
    """
    if array.ndim != spatial_dims + 2:
        axes = "(N, C, Z, Y, X)" if spatial_dims == 3 else "(N, C, Y, X)"
        raise ValueError(
            f"{name}: has shape {tuple(array.shape)}; expected a {spatial_dims}D batch {axes}"
        )
    if channels is not None and array.shape[1] != channels:
        raise ValueError(
            f"{name}: has {array.shape[1]} channel(s) in shape {tuple(array.shape)}; "
            f"expected {channels}"
        )
