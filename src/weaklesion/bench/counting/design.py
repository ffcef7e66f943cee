"""Experiment 3's design: the models, the count classes, the thresholds and the sizes.

What a run of :func:`~weaklesion.bench.counting.run_counting` is made of, shared by its
units (:mod:`~weaklesion.bench.counting.units`), its counts
(:mod:`~weaklesion.bench.counting.counts`) and its report
(:mod:`~weaklesion.bench.counting.report`): the models and their labels, the count
classes and thresholds, the seeds of the data, the attack, and the full and quick
sizes (:data:`SETTINGS`) with the record of them that a resumed run compares
(:func:`settings_record`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from weaklesion.config import HEAD_COUNT_WEIGHT, POISSON_BINOMIAL_COUNT_WEIGHT

METHODS = ("segmentation", "poisson_binomial", "bottleneck", "multihead", "downstream")
MULTITASK = METHODS[1:]
LABELS = {
    "segmentation": "segmentation only",
    "poisson_binomial": "multi-task, Poisson-binomial (ours)",
    "bottleneck": "multi-task, bottleneck head",
    "multihead": "multi-task, multi-head",
    "downstream": "multi-task, downstream head",
    "segmentation_cc": "segmentation only, components at 0.5",
    "segmentation_mc": "segmentation only, MC-dropout components",
}
THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))
STABLE_UP_TO = 0.5  # the spread is measured over thresholds 0.1 .. 0.5
MAX_COUNT = 4  # count classes 0, 1, 2, 3 and "4 or more"
COUNT_THRESHOLD = 0.1  # candidate regions of the Poisson-binomial count
SEGMENTATION_THRESHOLD = 0.5
CERTAINTY_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
CALIBRATION_BINS = 10
DATA_SEED = 3000
COUNT_WEIGHT = POISSON_BINOMIAL_COUNT_WEIGHT
PLANTED_SEED = 7


@dataclass(frozen=True)
class CountingSettings:
    """Sizes of one version of the experiment; the defaults are the full version.

    ``SETTINGS["full"]`` is ``CountingSettings()``; ``SETTINGS["quick"]`` changes the
    sizes and the schedule, and keeps the recipe (count weight, heads, learning rate,
    positive weight, low-data fraction).

    Attributes
    ----------
    shape : (Z, Y, X) ints
        Phantom volume size in voxels.
    max_lesions : int
        Counts 0 .. ``max_lesions`` are drawn, each for the same number of volumes.
    split_per_count : (int, int, int)
        Training, validation and test volumes of each count.
    features : tuple of int
        U-Net widths per level.
    epochs, count_warmup_epochs, count_ramp_epochs : int
        Training schedule of every model (warm-up and ramp: multi-task models only).
    head_warmup_epochs : int
        Warm-up of the count heads, in place of ``count_warmup_epochs``: a head's
        features must learn the count while the learning rate is still high (with the
        Poisson-binomial loss the map's regions must first mean something).
    count_weight : float
        Weight of the Poisson-binomial count NLL once ramped in (the paper's starting
        weight). At weight 1 its gradient on the U-Net's parameters is 40 to 200 times
        the segmentation BCE's (measured after 10 epochs of segmentation) and the
        segmentation collapses; at 0.01 lesion F1 fell by 0.04 in one seed of three
        (``benchmarks/counting_recipes.py``).
    head_count_weight : float
        Weight of the count heads' cross-entropy once ramped in.
    standardize_heads : bool
        Standardise the count heads' pooled features
        (``TrainConfig.count_head_standardize``).
    count_gradient : {"centred", "plain"}
        The heads' pooled features take the batch-centred gradient, or the plain one
        (``TrainConfig.count_gradient``).
    lr : float
        Adam learning rate (batches of two volumes), annealed by ``lr_schedule``.
    lr_schedule : {"cosine", "constant"}
        Learning rate over the epochs (``TrainConfig.lr_schedule``): annealed to 0, so
        that the epoch chosen on the validation volumes and its neighbours are nearly
        the same network.
    positive_weight : float
        Weight of lesion voxels in the segmentation BCE.
    low_data_fraction : float
        Fraction of the training volumes of the low-data regime.
    low_data_epoch_factor : int
        Epochs (and warm-up and ramp) of the low-data regime, as a multiple of ``epochs``.
    attack_images : int
        Test volumes attacked per model (the first ones of the test split).
    attack_steps : int
        Adam steps of each attack.
    mc_samples : int
        MC-dropout passes of the segmentation model.
    """

    shape: tuple[int, int, int] = (24, 48, 48)
    max_lesions: int = 5
    split_per_count: tuple[int, int, int] = (8, 4, 12)
    features: tuple[int, ...] = (8, 16, 32, 64)
    epochs: int = 30
    count_warmup_epochs: int = 10
    count_ramp_epochs: int = 5
    head_warmup_epochs: int = 5
    count_weight: float = COUNT_WEIGHT
    head_count_weight: float = HEAD_COUNT_WEIGHT
    standardize_heads: bool = True
    count_gradient: str = "centred"
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    positive_weight: float = 10.0
    low_data_fraction: float = 0.1
    low_data_epoch_factor: int = 4
    attack_images: int = 12
    attack_steps: int = 20
    mc_samples: int = 10


SETTINGS = {
    "full": CountingSettings(),
    "quick": CountingSettings(
        shape=(16, 32, 32),
        max_lesions=4,
        split_per_count=(2, 1, 1),
        features=(4, 8, 16, 32),
        epochs=3,
        count_warmup_epochs=1,
        count_ramp_epochs=1,
        head_warmup_epochs=0,
        low_data_epoch_factor=2,
        attack_images=2,
        attack_steps=2,
        mc_samples=2,
    ),
}
# The attack (weaklesion.adversarial.count_attack): push the count away from the clean
# prediction with Adam steps of 0.01 (z-scored intensity), noise at most 0.1 per voxel,
# and the squared l2 change of the probability map as penalty.
ATTACK_OPTIONS = {"target": "away", "step_size": 0.01, "epsilon": 0.1, "l2_weight": 1.0}


def settings_record(name: str, settings: CountingSettings) -> dict:
    """What must be the same for units to be pooled (not the seeds or the methods).

    Parameters
    ----------
    name : {"full", "quick"}
        The version.
    settings : CountingSettings
        Its sizes.

    Returns
    -------
    dict
        What ``OUT/settings.json`` records and a resumed run compares.

    Examples
    --------
    >>> record = settings_record("quick", SETTINGS["quick"])
    >>> record["version"], record["epochs"], record["max_count"]
    ('quick', 3, 4)
    """
    return {
        "experiment": "counting",
        "version": name,
        **dataclasses.asdict(settings),
        "thresholds": list(THRESHOLDS),
        "max_count": MAX_COUNT,
        "attack": ATTACK_OPTIONS,
    }
