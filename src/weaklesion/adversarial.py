"""Adversarial robustness of count predictions.

Schroeter, Myers-Colet et al. (MIDL 2022) ask how easily a small change of the input
changes a model's lesion count while its segmentation hardly moves: a count that is
consistent with the segmentation should be hard to change without changing the
segmentation, while a separate count head can be fooled on its own. The attack adds a
noise ``delta`` to the image and minimises

    ``A(x + delta) + l2_weight * ||sigmoid(f(x + delta)) - sigmoid(f(x))||^2``

over ``delta`` (optionally with ``|delta| <= epsilon`` at every voxel), where ``f`` gives
the segmentation logits and ``A`` is the count objective:

- ``target="away"``: ``log p(c0 | x + delta)``, with ``c0`` the count predicted for the
  clean image, i.e. the negative log-likelihood of the current count is maximised;
- ``target="up"`` / ``"down"`` / an integer ``t``: ``-log p(t | x + delta)`` with
  ``t = c0 + 1`` / ``c0 - 1`` / ``t``, i.e. the count is pushed towards ``t``.

The second term is the squared l2 norm of the change of the probability map (a sum over
voxels, so one voxel flipping from 0 to 1 costs ``l2_weight``). The count distribution
comes from :func:`count_log_pmf`: the softmax of a count head's logits, or the
Poisson-binomial distribution of the map's candidate regions; any other
``count_fn(output) -> (N, C) log-probabilities`` works too. The Poisson-binomial
gradient reaches only the arg-max voxels of the candidate regions there are, so an
attack that needs a new region (``"up"`` beyond the number of candidates) has no
gradient and leaves the image as it is.

- :func:`count_attack` -- optimise the noise for one image (Adam or signed gradient steps);
- :func:`apply_noise` -- the same measurements for a given noise (e.g. random);
- :func:`random_noise_like` -- Gaussian noise with the l2 norm of another noise;
- :func:`attack_success_rate` -- success rate, accuracy drop and the random baseline
  over a set of images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from weaklesion._validation import check_finite
from weaklesion.counting import existence_probabilities, poisson_binomial_pmf

__all__ = [
    "AttackResult",
    "apply_noise",
    "attack_success_rate",
    "count_attack",
    "count_log_pmf",
    "random_noise_like",
]

Output = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
CountFunction = Callable[[Output], torch.Tensor]
TARGETS = ("away", "up", "down")
OPTIMIZERS = ("adam", "sign")
_TINY = torch.finfo(torch.float64).tiny


def count_log_pmf(
    output: Output, max_count: int = 4, threshold: float = 0.1, connectivity: int | None = None
) -> torch.Tensor:
    """Differentiable log-probabilities of the counts that a network's output predicts.

    Parameters
    ----------
    output : tensor or (tensor, tensor)
        What the network returns: segmentation logits ``(N, 1, *spatial)``, or with a
        count head (:mod:`weaklesion.models.heads`) ``(logits, count_logits)`` with
        count logits ``(N, bins)``.
    max_count : int
        Bins ``0 .. max_count`` (the last "or more") of the Poisson-binomial count; a
        count head has its own bins.
    threshold, connectivity
        Candidate regions of the sigmoid map (:func:`weaklesion.counting.candidate_regions`).

    Returns
    -------
    log_pmf : (N, bins) float64 tensor
        ``log p(count = k)``, at least ``log`` of the smallest positive float64.

    Examples
    --------
    >>> logits = torch.full((1, 1, 6, 6), -20.0)
    >>> logits[0, 0, 1, 1] = 0.0  # one region that exists with probability 1/2
    >>> print(count_log_pmf(logits, max_count=2).exp().numpy().round(4))
    [[0.5 0.5 0. ]]
    >>> print(count_log_pmf((logits, torch.zeros(1, 3))).exp().numpy().round(4))
    [[0.3333 0.3333 0.3333]]
    """
    if isinstance(output, tuple):
        return torch.log_softmax(output[1].double(), dim=-1)
    existence = existence_probabilities(torch.sigmoid(output[:, 0]), threshold, connectivity)
    pmf = poisson_binomial_pmf(existence.double(), max_count)
    return pmf.clamp_min(_TINY).log()


def _probability_map(output: Output) -> torch.Tensor:
    return torch.sigmoid(output[0] if isinstance(output, tuple) else output)


@dataclass(frozen=True, eq=False)
class AttackResult:
    """An input noise and what it does to a model's count and segmentation.

    Attributes
    ----------
    image : ndarray, shape (C, *spatial), float32
        The perturbed image, ``image + noise``.
    noise : ndarray, shape (C, *spatial), float32
        The additive noise.
    count_before, count_after : int
        The most probable count of the clean and of the perturbed image.
    pmf_before, pmf_after : ndarray, shape (bins,), float64
        The count distributions of the clean and of the perturbed image.
    nll_before, nll_after : float
        ``-log p(count_before)`` (nats) under the clean and the perturbed distribution.
    segmentation_change : float
        Squared l2 norm of the change of the probability map (sum over voxels).
    """

    image: np.ndarray
    noise: np.ndarray
    count_before: int
    count_after: int
    pmf_before: np.ndarray
    pmf_after: np.ndarray
    nll_before: float
    nll_after: float
    segmentation_change: float

    @property
    def changed(self) -> bool:
        """Whether the most probable count changed."""
        return self.count_after != self.count_before

    @property
    def noise_norm(self) -> float:
        """l2 norm of the noise."""
        return float(np.linalg.norm(self.noise.astype(np.float64)))


def _image_batch(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.ndim not in (3, 4):
        raise ValueError(f"image: has shape {tuple(x.shape)}; expected (C, Y, X) or (C, Z, Y, X)")
    check_finite(x, "image")
    return x.detach().to(device=device, dtype=torch.float32)[None]


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        return next(iter(model.parameters()), torch.empty(0)).device
    return torch.device(device)


def _measure(
    model: nn.Module,
    x: torch.Tensor,
    noise: torch.Tensor,
    count_fn: CountFunction,
    clean: tuple[torch.Tensor, torch.Tensor],
) -> AttackResult:
    """Counts and segmentation change of ``x + noise`` against the clean ``(log_pmf, map)``."""
    clean_log_pmf, clean_map = clean
    with torch.no_grad():
        output = model(x + noise)
        log_pmf = count_fn(output)
        change = float(((_probability_map(output) - clean_map).double() ** 2).sum())
    before, after = int(clean_log_pmf[0].argmax()), int(log_pmf[0].argmax())
    return AttackResult(
        image=(x + noise)[0].cpu().numpy(),
        noise=noise[0].cpu().numpy(),
        count_before=before,
        count_after=after,
        pmf_before=clean_log_pmf[0].exp().cpu().numpy(),
        pmf_after=log_pmf[0].exp().cpu().numpy(),
        nll_before=-float(clean_log_pmf[0, before]),
        nll_after=-float(log_pmf[0, before]),
        segmentation_change=change,
    )


def _clean(model: nn.Module, x: torch.Tensor, count_fn: CountFunction):
    with torch.no_grad():
        output = model(x)
        return count_fn(output), _probability_map(output)


def _target_count(target: str | int, before: int, bins: int) -> int | None:
    """The count to push towards, or None to push away from ``before``."""
    if target == "away":
        return None
    if target == "up":
        return min(before + 1, bins - 1)
    if target == "down":
        return max(before - 1, 0)
    return min(int(target), bins - 1)


def _check_attack_options(
    target, steps: int, step_size: float, l2_weight: float, epsilon, optimizer: str
) -> None:
    is_count = isinstance(target, int | np.integer) and not isinstance(target, bool)
    if not (target in TARGETS or (is_count and target >= 0)):
        raise ValueError(f"target: got {target!r}; expected 'away', 'up', 'down' or a count >= 0")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"steps: got {steps!r}; expected an integer >= 0")
    if not (isinstance(step_size, int | float) and step_size > 0):
        raise ValueError(f"step_size: got {step_size!r}; expected a positive number")
    if not (isinstance(l2_weight, int | float) and l2_weight >= 0):
        raise ValueError(f"l2_weight: got {l2_weight!r}; expected a number >= 0")
    if epsilon is not None and not (isinstance(epsilon, int | float) and epsilon > 0):
        raise ValueError(f"epsilon: got {epsilon!r}; expected a positive number or None")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: got {optimizer!r}; expected 'adam' or 'sign'")


def count_attack(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    count_fn: CountFunction | None = None,
    target: str | int = "away",
    steps: int = 50,
    step_size: float = 0.01,
    l2_weight: float = 1.0,
    epsilon: float | None = None,
    optimizer: str = "adam",
    max_count: int = 4,
    device: str | torch.device | None = None,
) -> AttackResult:
    """Optimise an additive input noise that changes a model's count prediction.

    Parameters
    ----------
    model : nn.Module
        A segmentation network returning logits ``(N, 1, *spatial)``, or
        ``(logits, count_logits)`` with a count head. Run in eval mode (restored after);
        its parameters are not changed.
    image : (C, Y, X) or (C, Z, Y, X) array or tensor
        One normalised image.
    count_fn : callable, optional
        Maps the model's output to ``(N, bins)`` count log-probabilities, differentiably;
        default :func:`count_log_pmf` with ``max_count``.
    target : {"away", "up", "down"} or int
        The count objective (module notes): away from the clean count, towards one
        more or one less (within the bins), or towards a given count.
    steps : int
        Gradient steps.
    step_size : float
        Adam's learning rate, or the size of each signed step, in image intensity units.
    l2_weight : float
        Weight of the squared l2 change of the probability map; 0 for none.
    epsilon : float, optional
        Largest absolute noise at any voxel (an l-infinity bound); None for none.
    optimizer : {"adam", "sign"}
        Adam on the noise, or steps of ``-step_size * sign(gradient)``.
    max_count : int
        Bins of the default Poisson-binomial count.
    device : str, torch.device or None
        Where to run; None uses the device of the model's parameters.

    Returns
    -------
    AttackResult
        The perturbed image, the noise, the counts and distributions before and after,
        and the change of the segmentation.

    Examples
    --------
    >>> net = torch.nn.Conv2d(1, 1, 1)
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(1.0), net.bias.fill_(-3.0)
    >>> image = np.zeros((1, 8, 8), np.float32)
    >>> image[0, 2, 2] = 3.0  # one region of probability 1/2
    >>> result = count_attack(net, image, target="up", steps=20, step_size=0.5,
    ...                       l2_weight=0.0, optimizer="sign")
    >>> result.count_before, result.count_after
    (0, 1)
    """
    _check_attack_options(target, steps, step_size, l2_weight, epsilon, optimizer)
    device = _device(model, device)
    x = _image_batch(image, device)
    count_fn = partial(count_log_pmf, max_count=max_count) if count_fn is None else count_fn
    was_training = model.training
    model.eval()
    try:
        clean_log_pmf, clean_map = clean = _clean(model, x, count_fn)
        before = int(clean_log_pmf[0].argmax())
        goal = _target_count(target, before, clean_log_pmf.shape[-1])
        delta = torch.zeros_like(x, requires_grad=True)
        adam = torch.optim.Adam([delta], lr=step_size) if optimizer == "adam" else None
        for _ in range(int(steps)):
            output = model(x + delta)
            log_pmf = count_fn(output)
            count_term = log_pmf[0, before] if goal is None else -log_pmf[0, goal]
            change = ((_probability_map(output) - clean_map) ** 2).sum()
            (gradient,) = torch.autograd.grad(count_term + l2_weight * change, delta)
            with torch.no_grad():
                if adam is not None:
                    delta.grad = gradient
                    adam.step()
                else:
                    delta -= step_size * gradient.sign()
                if epsilon is not None:
                    delta.clamp_(-epsilon, epsilon)
        return _measure(model, x, delta.detach(), count_fn, clean)
    finally:
        model.train(was_training)


def apply_noise(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    noise: np.ndarray | torch.Tensor,
    count_fn: CountFunction | None = None,
    max_count: int = 4,
    device: str | torch.device | None = None,
) -> AttackResult:
    """What a given additive noise does to a model's count and segmentation.

    The measurements of :func:`count_attack` without the optimisation, e.g. for random
    noise of the same norm as an attack's (:func:`random_noise_like`).

    Parameters
    ----------
    model, image, count_fn, max_count, device
        As in :func:`count_attack`.
    noise : array or tensor shaped like ``image``
        The noise to add.

    Returns
    -------
    AttackResult

    Examples
    --------
    >>> net = torch.nn.Conv2d(1, 1, 1)
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(1.0), net.bias.fill_(-3.0)
    >>> noise = np.zeros((1, 8, 8), np.float32)
    >>> noise[0, 2, 2] = noise[0, 5, 5] = 6.0  # two certain regions
    >>> result = apply_noise(net, np.zeros((1, 8, 8)), noise)
    >>> result.count_before, result.count_after
    (0, 2)
    """
    device = _device(model, device)
    x = _image_batch(image, device)
    delta = _image_batch(noise, device)
    if delta.shape != x.shape:
        raise ValueError(
            f"noise: has shape {tuple(delta.shape[1:])}; expected the image's {tuple(x.shape[1:])}"
        )
    count_fn = partial(count_log_pmf, max_count=max_count) if count_fn is None else count_fn
    was_training = model.training
    model.eval()
    try:
        return _measure(model, x, delta, count_fn, _clean(model, x, count_fn))
    finally:
        model.train(was_training)


def random_noise_like(noise: np.ndarray, seed: int = 0) -> np.ndarray:
    """Gaussian noise of the same shape and l2 norm as ``noise`` (float32).

    Examples
    --------
    >>> noise = np.zeros((1, 4, 4), np.float32)
    >>> noise[0, 0, 0] = 3.0
    >>> random = random_noise_like(noise, seed=1)
    >>> random.shape, round(float(np.linalg.norm(random)), 4)
    ((1, 4, 4), 3.0)
    """
    noise = np.asarray(noise, dtype=np.float64)
    direction = np.random.default_rng(seed).standard_normal(noise.shape)
    length = np.linalg.norm(direction)
    scale = np.linalg.norm(noise) / length if length > 0 else 0.0
    return (direction * scale).astype(np.float32)


def attack_success_rate(
    model: nn.Module,
    images: Sequence[np.ndarray | torch.Tensor],
    counts: Sequence[int] | None = None,
    seed: int = 0,
    **attack_options,
) -> dict[str, float]:
    """Attack every image; compare with random noise of the same l2 norm.

    Parameters
    ----------
    model : nn.Module
        As in :func:`count_attack`.
    images : sequence of (C, *spatial) arrays or tensors
        The normalised images to attack.
    counts : sequence of int, optional
        True counts, for the accuracy before and after (a count above the last bin is
        scored as that bin, "or more").
    seed : int
        Seed of the random noise of image ``i`` is ``seed + i``.
    **attack_options
        Passed to :func:`count_attack` (``count_fn``, ``target``, ``steps``,
        ``step_size``, ``l2_weight``, ``epsilon``, ``optimizer``, ``max_count``,
        ``device``).

    Returns
    -------
    dict of str to float
        ``n_images``; for the attack and (prefixed ``random_``) for the random noise:
        ``success_rate`` (fraction of images whose most probable count changed),
        ``mean_nll_increase`` (of the clean count, nats), ``mean_segmentation_change``;
        ``mean_noise_norm``; with ``counts``, ``accuracy_before`` and, for both,
        ``accuracy_after`` and ``accuracy_drop``. NaN for no images.
    """
    if counts is not None and len(counts) != len(images):
        raise ValueError(
            f"counts: has {len(counts)} entries; expected one per image ({len(images)})"
        )
    attack_keys = {"count_fn", "max_count", "device"}
    noise_options = {k: v for k, v in attack_options.items() if k in attack_keys}
    attacked, random = [], []
    for index, image in enumerate(images):
        result = count_attack(model, image, **attack_options)
        noise = random_noise_like(result.noise, seed + index)
        attacked.append(result)
        random.append(apply_noise(model, image, noise, **noise_options))

    def mean(values) -> float:
        return float(np.mean(values)) if len(values) else math.nan

    summary = {
        "n_images": float(len(attacked)),
        "mean_noise_norm": mean([r.noise_norm for r in attacked]),
    }
    for prefix, results in (("", attacked), ("random_", random)):
        summary[prefix + "success_rate"] = mean([r.changed for r in results])
        summary[prefix + "mean_nll_increase"] = mean([r.nll_after - r.nll_before for r in results])
        summary[prefix + "mean_segmentation_change"] = mean(
            [r.segmentation_change for r in results]
        )
        if counts is not None:
            last = [len(r.pmf_before) - 1 for r in results]
            truth = [min(int(c), b) for c, b in zip(counts, last, strict=True)]
            before = mean([r.count_before == t for r, t in zip(results, truth, strict=True)])
            after = mean([r.count_after == t for r, t in zip(results, truth, strict=True)])
            summary["accuracy_before"] = before
            summary[prefix + "accuracy_after"] = after
            summary[prefix + "accuracy_drop"] = before - after
    return summary
