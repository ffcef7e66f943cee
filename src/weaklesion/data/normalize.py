"""Intensity normalisation of multi-channel images."""

from __future__ import annotations

import numpy as np

from weaklesion._validation import check_finite, check_same_shape


def zscore(image: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-8) -> np.ndarray:
    """Shift and scale each channel to mean 0 and standard deviation 1.

    Parameters
    ----------
    image : ndarray, shape (C, *spatial)
        Channel-first image with finite values.
    mask : ndarray of bool, shape (*spatial), optional
        Voxels whose statistics are used (e.g. the brain); all voxels when ``None``. The
        whole image is transformed either way.
    eps : float
        Smallest standard deviation divided by, so a constant channel becomes zeros.

    Returns
    -------
    ndarray, shape (C, *spatial), float32
        The normalised image; statistics are computed in float64.

    Examples
    --------
    >>> image = np.array([[[1.0, 3.0], [5.0, 7.0]], [[2.0, 2.0], [2.0, 2.0]]])
    >>> zscore(image).round(3)
    array([[[-1.342, -0.447],
            [ 0.447,  1.342]],
    <BLANKLINE>
           [[ 0.   ,  0.   ],
            [ 0.   ,  0.   ]]], dtype=float32)
    >>> zscore(image, mask=np.array([[True, True], [False, False]]))[0].tolist()
    [[-1.0, 1.0], [3.0, 5.0]]
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"image: has shape {image.shape}; expected (C, *spatial)")
    check_finite(image, "image")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        check_same_shape(mask, image[0], "mask", "one channel of image")
    if image.size == 0:
        return image.astype(np.float32)
    values = image.reshape(len(image), -1).astype(np.float64)
    selected = values if mask is None else values[:, mask.ravel()]
    if selected.shape[1] == 0:
        raise ValueError("mask: selects no voxels; expected at least one")
    mean = selected.mean(axis=1, keepdims=True)
    std = np.maximum(selected.std(axis=1, keepdims=True), eps)
    return ((values - mean) / std).reshape(image.shape).astype(np.float32)
