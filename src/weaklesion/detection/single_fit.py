"""One Gaussian fitted to a heatmap around a peak (Gauss-Newton on centre and amplitude,
width fixed), and the residual of several fits that joint refinement minimises."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

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
