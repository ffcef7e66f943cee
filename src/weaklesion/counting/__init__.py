"""Exact, differentiable count distributions from probability maps.

Segmentation-consistent probabilistic counting (Schroeter, Myers-Colet et al., MIDL
2022): a probability map is binarised at a *low* threshold (0.1 by default), each
connected component is a candidate lesion, and the lesion exists with probability
``p_k``, the largest voxel probability in region ``k``. Taking the regions as
independent, the number of lesions follows the Poisson-binomial distribution of
``p_1 .. p_K``, computed here exactly.

Every step from the map to the count likelihood is differentiable in torch, and the
gradient reaches each region's arg-max voxel only, so :class:`CountLoss` can train any
segmentation network next to its usual loss, while :func:`count_distribution` works post
hoc on any model's output, including probability maps made by other tools.

- :func:`poisson_binomial_pmf` -- exact pmf of a sum of independent Bernoulli variables;
- :func:`candidate_regions` -- regions, their existence probabilities, sizes, arg-maxima;
- :func:`count_distribution` -- pmf, mean, mode, variance, entropy, credible interval;
- :func:`count_statistics` -- the same statistics from any pmf (e.g. MC dropout);
- :func:`count_nll` and :class:`CountLoss` -- negative log-likelihood of count labels;
  :func:`existence_probabilities` -- the differentiable region maxima they score;
- :func:`component_count` and :func:`sample_count_distribution` -- post-hoc
  baselines: the connected-component count at a threshold, and the histogram of counts
  over samples (drawn with MC dropout by
  :func:`weaklesion.uncertainty.mc_dropout_count_distribution`).

One module per idea: :mod:`~weaklesion.counting.pmf`, :mod:`~weaklesion.counting.regions`,
:mod:`~weaklesion.counting.distribution`, :mod:`~weaklesion.counting.loss` and
:mod:`~weaklesion.counting.baselines`; every public name is importable from
:mod:`weaklesion.counting`.
"""

from weaklesion.counting._common import ArrayLike
from weaklesion.counting.baselines import component_count, sample_count_distribution
from weaklesion.counting.distribution import (
    PMF_ROUNDING,
    CountDistribution,
    count_distribution,
    count_statistics,
)
from weaklesion.counting.loss import CountLoss, count_nll, existence_probabilities
from weaklesion.counting.pmf import poisson_binomial_pmf
from weaklesion.counting.regions import CandidateRegions, candidate_regions

__all__ = [
    "PMF_ROUNDING",
    "ArrayLike",
    "CandidateRegions",
    "CountDistribution",
    "CountLoss",
    "candidate_regions",
    "component_count",
    "count_distribution",
    "count_nll",
    "count_statistics",
    "existence_probabilities",
    "poisson_binomial_pmf",
    "sample_count_distribution",
]
