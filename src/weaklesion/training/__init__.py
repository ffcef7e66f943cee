"""Training from weak labels: one loop for points, counts, masks and masks with counts.

- :mod:`~weaklesion.config` -- :class:`TrainConfig`, read from TOML with checked
  overrides and written into every run folder;
- :mod:`~weaklesion.training.data` -- cached cases, targets, patches, augmentation;
- :mod:`~weaklesion.training.objectives` -- one loss per kind of label, one signature;
- :mod:`~weaklesion.training.loop` -- :func:`train`, with validation, checkpoints and
  exact resume;
- :mod:`~weaklesion.training.schedules` -- the learning rate and the weight average,
  by optimiser step;
- :mod:`~weaklesion.training.checkpoint` -- atomic, ``weights_only`` checkpoints and
  :func:`load_run`;
- :mod:`~weaklesion.training.distributed` -- the same :func:`train` under ``torchrun``.
"""

from weaklesion.config import TrainConfig, load_config, save_config
from weaklesion.training.checkpoint import load_run
from weaklesion.training.loop import TrainResult, train
from weaklesion.training.objectives import objective_for

__all__ = [
    "TrainConfig",
    "TrainResult",
    "load_config",
    "load_run",
    "objective_for",
    "save_config",
    "train",
]
