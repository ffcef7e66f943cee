"""Joint refinement of Gaussian fits that overlap: clusters refined together
(Levenberg-Marquardt), close fits merged, wide fits split."""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from weaklesion.detection.single_fit import _fit_gaussian, _Residual
from weaklesion.targets import gaussian_window

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
