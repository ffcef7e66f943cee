"""Transfer to segmentation: fine-tune a model trained from points on a few masks.

Myers-Colet et al. (MICCAI 2022) train a network from point labels (a Gaussian heatmap
or a distance map) and then fine-tune the same network as a segmentation model on a
small fraction (1-10 %) of the masks: the point-trained weights already know where
lesions are, so a handful of masks teaches their extent. :func:`finetune` builds the
configuration for that from the source run and hands it to the one training loop
(:func:`weaklesion.training.train`), which starts from the source weights
(``init_from``), draws the cases whose masks are used (``label_fraction``) and, for
``part="decoder"``, trains the decoder only (``freeze_encoder``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from weaklesion.config import config_from_dict, load_config
from weaklesion.training.checkpoint import load_checkpoint
from weaklesion.training.loop import TrainResult, train

PARTS = ("all", "decoder")
# Targets of dense networks whose output layer can become segmentation logits.
TRANSFERABLE_TARGETS = ("heatmap", "euclidean", "geodesic", "segmentation")


def _checkpoint_path(from_run: str | os.PathLike, which: str) -> Path:
    if which in ("best", "last"):
        return Path(from_run) / f"{which}.pt"
    return Path(which)


def finetune(
    from_run: str | os.PathLike,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    mask_fraction: float = 0.01,
    part: str = "all",
    epochs: int | None = None,
    which: str = "best",
    overrides: Mapping[str, Any] | Iterable[str] = (),
    resume: bool = False,
    progress: bool = True,
    max_epochs: int | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    log: TextIO | None = None,
) -> TrainResult:
    """Fine-tune a trained dense model as a segmentation model on a fraction of the masks.

    The new run has the source run's configuration (network, patches, augmentation,
    learning rate, seed, ...) with ``labels="masks"``, ``target="segmentation"``
    (weighted BCE), the network initialised from the source checkpoint, and the masks
    of ``mask_fraction`` of the training cases. Validation is that of a segmentation
    run, on the dataset's validation cases.

    Parameters
    ----------
    from_run : path
        Run folder of a model trained on a dense target (heatmap, Euclidean or geodesic
        distance map, or segmentation).
    data_root : path
        Dataset folder or datalist with masks (``labelsTr``).
    run_dir : path
        Run folder to write, as for :func:`weaklesion.training.train`.
    mask_fraction : float
        Fraction in (0, 1] of the training cases whose masks are used, drawn with the
        run's seed, at least one case.
    part : {"all", "decoder"}
        Train the whole network, or the decoder only with the encoder frozen at the
        source weights.
    epochs : int or None
        Epochs of fine-tuning; None keeps the source run's. An epoch is one pass over the
        cases used, so a small ``mask_fraction`` makes short epochs.
    which : {"best", "last"} or path
        Checkpoint of the source run to start from.
    overrides : dict or iterable of "key=value" strings
        Further configuration changes (see :func:`weaklesion.training.load_config`),
        e.g. ``{"lr": 3e-4}``; the network must stay the same.
    resume, progress, max_epochs, on_epoch_end, log
        As for :func:`weaklesion.training.train`.

    Returns
    -------
    TrainResult
        The fine-tuning run; its ``config.toml`` names the source checkpoint
        (``init_from``) and the fraction (``label_fraction``).

    Raises
    ------
    ValueError
        For a fraction outside (0, 1], an unknown ``part``, a source run that is not a
        dense model, or anything :func:`weaklesion.training.train` refuses.

    Examples
    --------
    >>> finetune("runs/heatmap", "data/phantom", "runs/transfer", part="encoder")
    Traceback (most recent call last):
    ...
    ValueError: part: got 'encoder'; expected 'all' or 'decoder'
    """
    if not 0 < mask_fraction <= 1:
        raise ValueError(f"mask_fraction: got {mask_fraction!r}; expected a value in (0, 1]")
    if part not in PARTS:
        raise ValueError(f"part: got {part!r}; expected 'all' or 'decoder'")
    source = _checkpoint_path(from_run, which)
    source_config = config_from_dict(load_checkpoint(source)["config"])
    if source_config.target not in TRANSFERABLE_TARGETS:
        raise ValueError(
            f"from_run: {from_run} trained a {source_config.target!r} model; expected one of "
            f"{', '.join(TRANSFERABLE_TARGETS)}"
        )
    base = dataclasses.asdict(source_config)
    base.update(
        labels="masks",
        target="segmentation",
        init_from=str(source.resolve()),
        label_fraction=float(mask_fraction),
        freeze_encoder=part == "decoder",
    )
    if epochs is not None:
        base["epochs"] = epochs
    config = load_config(None, overrides, base=base)
    return train(
        config,
        data_root,
        run_dir,
        resume=resume,
        progress=progress,
        max_epochs=max_epochs,
        on_epoch_end=on_epoch_end,
        log=log,
    )
