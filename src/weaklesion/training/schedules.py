"""Schedules of the optimisation: the learning rate and the weight average, by step.

Both are functions of the optimiser step alone, so a resumed run follows the same
schedule as one that was never interrupted.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from weaklesion.config import TrainConfig

# The one-cycle schedule: warm-up fraction, peak / initial rate, initial / final rate.
ONECYCLE_WARMUP, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    ``"constant"`` gives ``config.lr``; ``"cosine"`` anneals from ``lr`` at step 0 to 0
    at step ``total_steps``; ``"onecycle"`` rises from ``lr / 25`` to ``lr`` over the
    first 30 % of the steps and falls to ``lr / 25 / 1e4`` at the last step, both by cosine
    annealing (``torch.optim.lr_scheduler.OneCycleLR`` with its defaults). The rate is a
    function of the step alone, so a resumed run follows the same schedule.

    Examples
    --------
    >>> config = TrainConfig(lr=0.01, lr_schedule="cosine")
    >>> [round(learning_rate(config, step, 4), 5) for step in range(4)]
    [0.01, 0.00854, 0.005, 0.00146]
    """
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "cosine":
        return _cosine(config.lr, 0.0, step / total_steps)
    initial = config.lr / ONECYCLE_DIV
    final = initial / ONECYCLE_FINAL_DIV
    peak_step = float(ONECYCLE_WARMUP * total_steps) - 1.0
    if step <= peak_step:
        return _cosine(initial, config.lr, step / peak_step)
    return _cosine(config.lr, final, (step - peak_step) / (total_steps - 1.0 - peak_step))


def _cosine(start: float, end: float, fraction: float) -> float:
    """Cosine annealing from ``start`` (fraction 0) to ``end`` (fraction 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def ema_decay_at(decay: float, step: int) -> float:
    """Decay of the weight average at optimiser step ``step`` (0-based), warmed up.

    ``min(decay, (1 + step) / (10 + step))``: early averages forget the random start
    quickly.

    Examples
    --------
    >>> ema_decay_at(0.999, 0), ema_decay_at(0.999, 10_000)
    (0.1, 0.999)
    """
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_average(average: nn.Module, network: nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * network``, parameter by parameter.

    Floating-point buffers are averaged too; others (counters) are copied.
    """
    for mean, value in zip(average.parameters(), network.parameters(), strict=True):
        mean.lerp_(value.detach(), 1.0 - decay)
    for mean, value in zip(average.buffers(), network.buffers(), strict=True):
        if mean.is_floating_point():
            mean.lerp_(value.detach(), 1.0 - decay)
        else:
            mean.copy_(value)
