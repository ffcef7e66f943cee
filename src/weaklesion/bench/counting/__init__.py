"""Experiment 3: segmentation-consistent counting (Schroeter, Myers-Colet et al., MIDL 2022).

The paper counts gadolinium-enhancing lesions in private brain MRI; here the same
protocol runs on the 3D phantom (:func:`weaklesion.data.write_phantom_dataset`), whose
masks and counts are exact.

Data
    Lesion counts 0 .. ``max_lesions``, the same number of volumes for each count
    (one phantom dataset per count, seed ``DATA_SEED + count``), split per count into
    training, validation and test cases: the splits are stratified by count. A count is
    scored in the classes 0, 1, 2, 3 and "4 or more" (:data:`MAX_COUNT`), as in the paper.
Models (one set per seed)
    ``segmentation``: a U-Net trained on the masks alone (weighted BCE), best epoch by
    validation lesion F1. ``poisson_binomial`` (ours), ``bottleneck``, ``multihead`` and
    ``downstream``: the same U-Net trained on masks and counts with the multi-task
    schedule of :class:`~weaklesion.training.TrainConfig` (segmentation only for
    ``count_warmup_epochs``, then the count loss ramped in to ``count_weight``), counting
    by the Poisson-binomial distribution of the map's candidate regions or by a
    classifier on the bottleneck, the last decoder features or the map (pooled features
    standardised when ``standardize_heads``); best epoch by validation lesion F1 from the
    epoch the count loss starts, as in the paper. The low-data regime trains the four
    multi-task models on ``low_data_fraction`` of the training cases (validation cases
    kept) for ``low_data_epoch_factor`` times the epochs.
Tables
    1. Threshold sensitivity (paper Table C.1): on the segmentation model's test maps, count
       accuracy and F1 of the connected-component count at threshold ``t`` and of the
       mode of the Poisson-binomial distribution of the candidate regions above ``t``,
       for ``t`` = 0.1 .. 0.9; the spread (max - min and standard deviation) of each
       accuracy over ``t`` = 0.1 .. 0.5. The same on planted maps (lesions of known
       existence probability plus low-probability distractors, see
       :func:`planted_probability_map`), whose answer is known.
    2. Multi-task comparison: count accuracy, F1 and MAE, Dice and lesion F1 of every
       model, and of the segmentation model counted post hoc (Poisson-binomial at 0.1,
       components at 0.5, MC-dropout components); the same in the low-data regime.
    3. Count calibration: reliability of the probability of the predicted count class
       (top-label), expected calibration error over 10 bins.
    4. Accuracy of the ``k`` most certain test images, ranked by count entropy.
    5. The adversarial attack of :func:`weaklesion.adversarial.attack_success_rate`:
       success rate and accuracy drop against random noise of the same norm.

Every trained model, evaluation and attack is one unit with its own JSON file under
``OUT/units``, written atomically once the unit is done; a rerun reads finished units
instead of recomputing them, and an interrupted training resumes from its ``last.pt``.
Seeds are 0 .. ``seeds - 1``; tables give the mean and the sample standard deviation
over seeds.

One module per idea: :mod:`~weaklesion.bench.counting.design` (models, count classes,
thresholds and sizes), :mod:`~weaklesion.bench.counting.counts` (counts per threshold
and planted maps), :mod:`~weaklesion.bench.counting.units` (the units and
:func:`run_counting`) and :mod:`~weaklesion.bench.counting.report` (results, tables and
plots); every public name is importable from :mod:`weaklesion.bench.counting`.
"""

from weaklesion.bench.counting.counts import (
    count_record,
    planted_probability_map,
    region_count_pmf,
    threshold_counts,
    threshold_sensitivity,
)
from weaklesion.bench.counting.design import (
    ATTACK_OPTIONS,
    CALIBRATION_BINS,
    CERTAINTY_FRACTIONS,
    COUNT_THRESHOLD,
    COUNT_WEIGHT,
    DATA_SEED,
    LABELS,
    MAX_COUNT,
    METHODS,
    MULTITASK,
    PLANTED_SEED,
    SEGMENTATION_THRESHOLD,
    SETTINGS,
    STABLE_UP_TO,
    THRESHOLDS,
    CountingSettings,
    settings_record,
)
from weaklesion.bench.counting.report import (
    counting_tables,
    summarise_counting,
    write_counting_report,
)
from weaklesion.bench.counting.units import run_counting

__all__ = [
    "ATTACK_OPTIONS",
    "CALIBRATION_BINS",
    "CERTAINTY_FRACTIONS",
    "COUNT_THRESHOLD",
    "COUNT_WEIGHT",
    "DATA_SEED",
    "LABELS",
    "MAX_COUNT",
    "METHODS",
    "MULTITASK",
    "PLANTED_SEED",
    "SEGMENTATION_THRESHOLD",
    "SETTINGS",
    "STABLE_UP_TO",
    "THRESHOLDS",
    "CountingSettings",
    "count_record",
    "counting_tables",
    "planted_probability_map",
    "region_count_pmf",
    "run_counting",
    "settings_record",
    "summarise_counting",
    "threshold_counts",
    "threshold_sensitivity",
    "write_counting_report",
]
