"""Experiment 1's design: the detection methods, the objectives and the sizes.

What a run of :func:`~weaklesion.bench.mnist.run_mnist` is made of, shared by its data
(:mod:`~weaklesion.bench.mnist.data`), its units (:mod:`~weaklesion.bench.mnist.units`)
and its report (:mod:`~weaklesion.bench.mnist.report`): each method's network and
attention, the two training objectives, the paper's numbers, and the full and quick
sizes (:data:`FULL`, :data:`QUICK`).
"""

from __future__ import annotations

from dataclasses import dataclass

# The networks trained: the model of ``weaklesion.models`` and its ``model_kwargs`` (the
# recipe's normalisation is added to them). The last two are the paper's architecture
# study (its Appendix C): GP-Unet without the blockwise skip connections, and with global
# max pooling in place of average pooling.
NETWORKS = {
    "gpunet": ("gpunet", {}),
    "gpunet_noresidual": ("gpunet_noresidual", {}),
    "gated_attention": ("gated_attention", {}),
    "gpunet_base": ("gpunet_base", {}),
    "gpunet_noskip": ("gpunet", {"blockwise_skips": False}),
    "gpunet_maxpool": ("gpunet", {"pooling": "max"}),
}
# The networks the paper trains on all ten digits; the others on 4 and 7.
ALL_DIGITS = ("gpunet", "gpunet_noskip", "gpunet_maxpool")
# Each detection method: the network it is computed on, its attention method and its
# reference (``weaklesion.attention.attention_maps``). The first six are the paper's
# comparison (its Table A.5) and run by default; the "_empty" methods subtract the map of
# each grid's empty image from the same trained network's map; the "_smooth" methods
# (:data:`SMOOTHED`) smooth the map with a Gaussian whose width is chosen on the
# validation grids.
METHODS = {
    "gpunet": ("gpunet", "cam", None),
    "gpunet_noresidual": ("gpunet_noresidual", "cam", None),
    "gated_attention": ("gated_attention", "cam", None),
    "gradcam": ("gpunet_base", "gradcam", None),
    "grad": ("gpunet_base", "grad", None),
    "guided": ("gpunet_base", "guided", None),
    "gpunet_noskip": ("gpunet_noskip", "cam", None),
    "gpunet_maxpool": ("gpunet_maxpool", "cam", None),
    "gpunet_empty": ("gpunet", "cam", "empty"),
    "gpunet_noresidual_empty": ("gpunet_noresidual", "cam", "empty"),
    "gpunet_smooth": ("gpunet", "cam", None),
    "gpunet_noresidual_empty_smooth": ("gpunet_noresidual", "cam", "empty"),
}
# Methods whose maps are smoothed (``attention_maps(..., smooth=σ)``), and the σ (pixels)
# they choose from: the one with the highest FAUC by threshold on the digit's validation
# grids (the first of equals). Not in the paper: its maps go to the non-maximum
# suppression as they are.
SMOOTH_SIGMAS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
SMOOTHED = ("gpunet_smooth", "gpunet_noresidual_empty_smooth")
DEFAULT_METHODS = ("gpunet", "gpunet_noresidual", "gated_attention", "gradcam", "grad", "guided")
METHOD_NAMES = {
    "gpunet": "GP-Unet",
    "gpunet_noresidual": "GP-Unet no residual",
    "gated_attention": "Gated Attention",
    "gradcam": "Grad-CAM",
    "grad": "Grad",
    "guided": "Guided backprop",
    "gpunet_noskip": "GP-Unet no blockwise skips",
    "gpunet_maxpool": "GP-Unet global max pooling",
    "gpunet_empty": "GP-Unet − empty image",
    "gpunet_noresidual_empty": "GP-Unet no residual − empty image",
    "gpunet_smooth": "GP-Unet, smoothed",
    "gpunet_noresidual_empty_smooth": "GP-Unet no residual − empty image, smoothed",
    "random": "random maxima (chance)",
}
OBJECTIVES = ("regression", "classification")
# The paper's FAUC (%) of every method on digits 0-9, regression objective (its Table A.5
# and, for the architecture variants, Table C.13).
PAPER_TABLE_A5 = {
    "gpunet": (97.4, 94.4, 91.7, 97.3, 97.8, 97.1, 98.6, 89.3, 98.8, 97.6),
    "gpunet_noresidual": (99.7, 99.5, 99.3, 99.6, 99.0, 98.9, 99.9, 99.1, 99.5, 98.6),
    "gated_attention": (90.5, 69.7, 87.5, 73.4, 83.9, 79.6, 86.5, 43.9, 73.6, 24.8),
    "gradcam": (89.2, 89.1, 87.8, 91.2, 95.0, 93.6, 98.4, 88.5, 98.2, 94.3),
    "grad": (76.1, 66.3, 61.0, 69.8, 86.4, 81.5, 89.3, 69.6, 81.3, 77.9),
    "guided": (85.8, 88.3, 81.3, 82.1, 93.5, 88.9, 97.3, 82.4, 95.2, 91.8),
    # Its architecture study, Table C.13 (no skip: digit 7 did not converge).
    "gpunet_noskip": (98.0, 86.9, 92.9, 97.9, 96.2, 97.6, 98.1, 0.8, 98.8, 96.9),
    "gpunet_maxpool": (89.2, 80.0, 80.3, 88.6, 82.9, 86.1, 87.6, 56.3, 87.7, 78.4),
}
# Its average over the ten digits (as the paper prints it: 96.0 and 99.3), in %.
PAPER_FAUC = {
    (method, "regression"): round(sum(PAPER_TABLE_A5[method]) / 10, 1)
    for method in ("gpunet", "gpunet_noresidual")
}


@dataclass(frozen=True)
class MnistSettings:
    """Size of the experiment: grids, images, training budget, resampling.

    Attributes
    ----------
    grid : (rows, columns)
        Cells per image; each cell is 28×28 pixels.
    images : (training, validation, test)
        Images per target digit in each split.
    max_epochs : int
        Epoch budget of a training.
    min_epochs : int
        Epochs always trained: a count network first sits at the mean count for a while
        before it finds the digits.
    patience : int
        Training stops after this many epochs without a better validation metric
        (count MAE for regression, presence NLL for classification).
    batch_size : int
        Images per optimiser step.
    lr : float
        Adam learning rate.
    nms_size : int
        Non-maximum suppression box, pixels.
    max_fp : float
        Upper end of the FAUC, false positives per image.
    n_boot : int
        Bootstrap resamples of the FAUC interval.
    pool_seed : int
        Seed of the split of the digits into pools and of the grids.
    threads : int
        Torch CPU threads.
    count_gradient : {"plain", "centred"}
        How the count networks learn (``TrainConfig.count_gradient``): the papers'
        plain gradient, or batch-centred pooled features.
    normalization : {None, "batch"}
        Normalisation inside the networks' convolution blocks (``model_kwargs``): none,
        as the papers' networks, or batch normalisation.
    """

    grid: tuple[int, int] = (7, 5)
    images: tuple[int, int, int] = (400, 100, 500)
    max_epochs: int = 50
    min_epochs: int = 25
    patience: int = 8
    batch_size: int = 4
    lr: float = 3e-3
    nms_size: int = 6
    max_fp: float = 5.0
    n_boot: int = 1000
    pool_seed: int = 0
    threads: int = 1
    count_gradient: str = "plain"
    normalization: str | None = None


# The full run's epoch budget: a count network first sits at the mean count before it
# finds the digits (measured here on 7×5 grids of digit 4, 400 images, batch 4,
# learning rate 3e-3: 28 epochs with PyTorch's default initialisation, 9 with He
# initialisation for GP-Unet and 16 for Gated Attention), so every run gets 25 epochs
# before early stopping applies.
FULL = MnistSettings()
# Two cells per image: with few distractor digits a count network finds the target in
# a few hundred steps, so the quick run shows the planted structure within seconds.
QUICK = MnistSettings(
    grid=(1, 2),
    images=(320, 40, 80),
    max_epochs=6,
    min_epochs=6,
    patience=1,
    batch_size=8,
    lr=3e-3,
    n_boot=200,
)
QUICK_DIGITS = (1,)
