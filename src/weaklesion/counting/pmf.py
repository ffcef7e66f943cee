"""The exact Poisson-binomial pmf of a sum of independent Bernoulli variables: batched,
differentiable, with an absorbing \"M or more\" bin."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from weaklesion._validation import check_probabilities
from weaklesion.counting._common import _BLOCK, ArrayLike


def _check_max_count(max_count: int | None) -> None:
    if max_count is None:
        return
    if isinstance(max_count, bool) or not isinstance(max_count, int | np.integer):
        raise ValueError(f"max_count: got {max_count!r}; expected a non-negative integer")
    if max_count < 0:
        raise ValueError(f"max_count: got {max_count}; expected a non-negative integer")


def _absorb(coefficients: torch.Tensor, last: int) -> torch.Tensor:
    """Sum the coefficients of degree ``last`` and above into bin ``last``."""
    if coefficients.shape[-1] <= last + 1:
        return coefficients
    tail = coefficients[..., last:].sum(-1, keepdim=True)
    return torch.cat((coefficients[..., :last], tail), dim=-1)


def _shift_rows(rows: torch.Tensor, step: int) -> torch.Tensor:
    """Place row ``i`` of ``(..., n, w)`` at column ``i * step`` of ``(..., n, (n-1)*step + w)``.

    Zero-padding each row to ``width + step`` and reading the flat buffer back in rows
    that are ``step`` shorter moves every row ``step`` further right than the one above,
    without an index tensor or a Python loop.
    """
    n, width = rows.shape[-2:]
    out = (n - 1) * step + width
    flat = F.pad(rows, (0, out + step - width)).flatten(-2)
    return flat[..., : n * out].unflatten(-1, (n, out))


def _polynomial_product(a: torch.Tensor, b: torch.Tensor, last: int) -> torch.Tensor:
    """Coefficients of ``a(z) * b(z)`` for ``(..., La)`` and ``(..., Lb)``, absorbed at ``last``.

    ``a`` is cut into blocks of ``_BLOCK`` coefficients; one batched matrix product with
    the Toeplitz matrix of ``b`` convolves every block with ``b``, and the blocks' results
    are added at their offsets. Direct (not FFT) convolution keeps every coefficient a
    sum of non-negative terms, so small tail probabilities keep their relative accuracy.
    """
    length_a, length_b = a.shape[-1], b.shape[-1]
    block = min(_BLOCK, length_a)
    blocks = -(-length_a // block)
    a = F.pad(a, (0, blocks * block - length_a)).unflatten(-1, (blocks, block))
    toeplitz = _shift_rows(b.unsqueeze(-2).expand(*b.shape[:-1], block, length_b), 1)
    product = _shift_rows(a @ toeplitz, block).sum(-2)[..., : length_a + length_b - 1]
    return _absorb(product, last)


def poisson_binomial_pmf(p: ArrayLike, max_count: int | None = None) -> ArrayLike:
    """Exact pmf of the number of successes among independent Bernoulli trials.

    Parameters
    ----------
    p : (..., K) array or tensor
        Success probabilities in [0, 1]; the leading axes are a batch. Rows with fewer
        trials are padded with ``p = 0``: a trial that never succeeds leaves the
        distribution unchanged, so padding is exact and only adds bins of probability
        exactly 0 above the row's own K.
    max_count : int, optional
        If given, return the truncated pmf over ``0 .. max_count`` whose last bin holds
        the probability of ``max_count`` *or more* successes (an absorbing bin, as for
        count classes 0, 1, 2, 3, 4+). Costs O(K * max_count) instead of O(K^2).

    Returns
    -------
    pmf : (..., K + 1) or (..., max_count + 1) array or tensor
        ``pmf[..., k]`` is the probability of exactly ``k`` successes. NumPy (or list)
        input gives a float64 NumPy array; a tensor gives a tensor of its dtype and
        device, differentiable with respect to ``p``.

    Notes
    -----
    The pmf is the coefficient list of ``prod_k (1 - p_k + p_k z)``. The factors are
    multiplied pairwise in a balanced tree, about log2(K) batched steps with no Python
    loop over the batch or over K, each step a direct convolution done as a matrix
    product. The work is O(K^2) per row like the textbook recursion, but in a few large
    tensor operations; all terms are non-negative, so the result agrees with exact
    enumeration to rounding (about 1e-16 in float64 for K = 2000). On a GPU, float32
    matrix products follow ``torch.backends.cuda.matmul.allow_tf32``.

    Examples
    --------
    >>> poisson_binomial_pmf([0.5, 0.5])
    array([0.25, 0.5 , 0.25])
    >>> poisson_binomial_pmf([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]], max_count=2)
    array([[0.125, 0.375, 0.5  ],
           [0.   , 1.   , 0.   ]])
    >>> poisson_binomial_pmf(np.zeros((2, 0)))
    array([[1.],
           [1.]])
    """
    _check_max_count(max_count)
    probabilities, from_numpy = _as_float_tensor(p)
    if probabilities.ndim < 1:
        raise ValueError(f"p: has shape {tuple(probabilities.shape)}; expected (..., K)")
    check_probabilities(probabilities, "p")
    trials = probabilities.shape[-1]
    last = trials if max_count is None else int(max_count)
    if trials == 0:
        ones = probabilities.new_ones((*probabilities.shape[:-1], 1))
        pmf = F.pad(ones, (0, last))
        return pmf.numpy() if from_numpy else pmf
    factors = _absorb(torch.stack((1 - probabilities, probabilities), dim=-1), last)
    while factors.shape[-2] > 1:
        if factors.shape[-2] % 2:
            unit = F.pad(torch.ones_like(factors[..., :1, :1]), (0, factors.shape[-1] - 1))
            factors = torch.cat((factors, unit), dim=-2)
        factors = _polynomial_product(factors[..., 0::2, :], factors[..., 1::2, :], last)
    # With max_count above K fewer bins remain than asked for; the missing ones are 0.
    pmf = F.pad(factors[..., 0, :], (0, last + 1 - factors.shape[-1]))
    return pmf.numpy() if from_numpy else pmf


def _as_float_tensor(array: ArrayLike) -> tuple[torch.Tensor, bool]:
    """``array`` as a floating tensor, and whether it came from NumPy (or a list)."""
    if isinstance(array, torch.Tensor):
        return (array if array.is_floating_point() else array.double()), False
    return torch.from_numpy(np.array(array, dtype=np.float64)), True
