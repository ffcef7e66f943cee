"""The training loop: one function for every kind of weak label.

:func:`train` checks the dataset, caches it, builds the network the configuration names,
and runs Adam for ``config.epochs`` epochs, with the learning rate of
:func:`~weaklesion.training.schedules.learning_rate` at every step, on the objective of
:func:`~weaklesion.training.objectives.objective_for`. After every ``config.val_every``
epochs (and the last) it validates with a metric that fits the task and keeps the best
validated epoch in ``best.pt``; every epoch goes to ``last.pt``, ``history.jsonl`` (and
``history.csv``) and ``metrics.json``. An interrupted run resumes from ``last.pt`` to the
same weights, bit for bit, as a run that was never interrupted (on CPU; on GPU up to the
determinism of its kernels).

Validation metrics (the first named is the one that picks the best epoch):

=====================  ===============================================================
target                 metrics
=====================  ===============================================================
heatmap                detection F1 (max) of iterative Gaussian fitting, the existence
                       threshold tuned on the validation cases; precision, recall,
                       count MAE of the summed heatmap
euclidean, geodesic    detection F1 (max) of connected components at their maximum,
                       the threshold tuned on the validation cases
segmentation (masks)   detection F1 (max) of connected components at their centre of
                       mass, the threshold tuned on the validation cases; Dice
segmentation           detection F1 (max) as for masks, from the epoch the count loss
(masks+counts)         starts (Schroeter, Myers-Colet et al. select by validation
                       segmentation F1); count NLL of the Poisson-binomial count
                       distribution, or of the count head's, over the bins
                       0 .. max_count (the last "or more"); count accuracy, Dice
count                  count MAE (min) of the GP-Unet count, negative counts taken as
                       0; count accuracy
count (classification) presence NLL (min): the BCE of the output as the logit of
                       count > 0; presence accuracy
=====================  ===============================================================

Detection is scored by :func:`weaklesion.scoring.operating_curve` with the run's
:func:`~weaklesion.scoring.settings_for_config`, the function and settings ``tune``,
``detect --run`` and ``evaluate --run`` use: a detection matches a true lesion (its point,
or the centre of its mask) within ``config.match_distance`` (in mm with
``sigma_units="mm"``, else in voxels), one-to-one, and the threshold is the one of
:data:`~weaklesion.scoring.DEFAULT_THRESHOLDS` with the best F1 (ties: the highest).

Transfer uses the same loop: ``config.init_from`` starts the network from another run's
weights, ``config.freeze_encoder`` trains the decoder only, and ``config.label_fraction``
keeps a seeded fraction of the training cases (see
:func:`weaklesion.training.finetune.finetune`).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from weaklesion.config import TrainConfig, config_from_dict, save_config
from weaklesion.data.dataset import instance_centres
from weaklesion.inference import predict_images, predicted_count_distribution, same_shape_runs
from weaklesion.io import atomic_write, json_ready, write_json
from weaklesion.metrics import count_accuracy, count_mae
from weaklesion.models import freeze_encoder
from weaklesion.run import device_for, place_network
from weaklesion.scoring import (
    DEFAULT_THRESHOLDS,
    choose_operating_point,
    operating_curve,
    settings_for_config,
)
from weaklesion.threads import apply_thread_policy
from weaklesion.training import parallel
from weaklesion.training.checkpoint import (
    build_model_for,
    load_checkpoint,
    load_weights,
    run_state,
    save_checkpoint,
)
from weaklesion.training.data import (
    DROPOUT_STREAM,
    LesionDataset,
    TrainingCase,
    collate,
    epoch_batches,
    heatmap_scale,
    load_training_cases,
    sigma_voxels,
    stream_seed,
)
from weaklesion.training.objectives import level_shift, objective_for
from weaklesion.training.schedules import ONECYCLE_DIV as ONECYCLE_DIV  # re-exported
from weaklesion.training.schedules import ONECYCLE_FINAL_DIV as ONECYCLE_FINAL_DIV  # re-exported
from weaklesion.training.schedules import ONECYCLE_WARMUP as ONECYCLE_WARMUP  # re-exported
from weaklesion.training.schedules import ema_decay_at, learning_rate, update_average

# Config fields a resumed run may change: they do not alter what is computed.
RESUMABLE_CHANGES = ("epochs", "device", "num_threads", "patience", "min_epochs")


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    run_dir : Path
        The run folder.
    epochs_completed : int
        Epochs trained so far, in this call and before it.
    best_epoch : int
        1-based epoch of ``best.pt``.
    metric : str
        Name of the validation metric that chose it.
    best_value : float
        Its value then.
    history : list of dict
        One record per epoch (as in ``history.jsonl``).
    model : nn.Module
        The network with the weights of the last epoch (of this process), in eval mode;
        :func:`~weaklesion.training.load_run` loads the best epoch's.
    """

    run_dir: Path
    epochs_completed: int
    best_epoch: int
    metric: str
    best_value: float
    history: list[dict[str, Any]]
    model: nn.Module

    def summary(self) -> str:
        """One line: epochs done and the best epoch with its validation metric."""
        return (
            f"{self.epochs_completed} epoch(s); best epoch {self.best_epoch} "
            f"({self.metric} {self.best_value:.4g})"
        )

    @property
    def best_path(self) -> Path:
        """The best checkpoint."""
        return self.run_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        """The checkpoint of the last epoch."""
        return self.run_dir / "last.pt"


def _metric_name(config: TrainConfig) -> tuple[str, str]:
    """Name and direction ("max" or "min") of the metric that picks the best epoch."""
    if config.target == "count" and config.count_objective == "classification":
        return "presence_nll", "min"
    if config.target == "count":
        return "count_mae", "min"
    return "f1", "max"


def _dice(probabilities: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Intersection and sum of sizes of the 0.5-binarised map and the true mask."""
    predicted = probabilities >= 0.5
    return float(np.logical_and(predicted, truth).sum()), float(predicted.sum() + truth.sum())


def validate(
    model: nn.Module, cases: Sequence[TrainingCase], config: TrainConfig, scale: float
) -> dict[str, float]:
    """Validation metrics of ``model`` on ``cases`` (see the module notes for which).

    Returns
    -------
    dict of str to float
        Always holds the metric of :func:`_metric_name`; ``"threshold"`` too where a
        detection threshold is tuned.
    """
    # Two images per network call: much faster than one for small 3D images on a CPU.
    predictions = predict_images(
        model, [case.image for case in cases], config.target, config.patch_size, scale=scale
    )
    if config.target == "count" and config.count_objective == "classification":
        logits = torch.tensor([p.count for p in predictions], dtype=torch.float64)
        present = torch.tensor([case.count > 0 for case in cases], dtype=torch.float64)
        nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, present)
        accuracy = ((logits > 0) == (present > 0)).double().mean()
        return {"presence_nll": nll.item(), "presence_accuracy": accuracy.item()}
    if config.target == "count":
        # An untrained network can predict negative counts; none is the nearest count.
        predicted = [max(p.count, 0.0) for p in predictions]
        truth = [case.count for case in cases]
        return {
            "count_mae": count_mae(predicted, truth),
            "count_accuracy": count_accuracy(predicted, truth),
        }
    settings = settings_for_config(config)
    truths = [_truth_points(case) for case in cases]
    curve = operating_curve(
        [p.map for p in predictions],
        truths,
        settings,
        [case.spacing for case in cases],
        DEFAULT_THRESHOLDS,
    )
    best = choose_operating_point(curve, "f1")
    scores = curve.scores()
    metrics = {name: float(scores[name][best]) for name in ("f1", "precision", "recall")}
    metrics["threshold"] = float(curve.values[best])
    if config.target == "heatmap":
        errors = [abs(p.count - len(t)) for p, t in zip(predictions, truths, strict=True)]
        metrics["count_mae"] = float(np.mean(errors))
    if config.target == "segmentation":
        metrics["dice"] = _pooled_dice(predictions, cases)
    if config.labels == "masks+counts":
        metrics.update(_count_distribution_metrics(predictions, cases, config))
    return metrics


def _truth_points(case: TrainingCase) -> np.ndarray:
    """True lesion centres of a case: its points, else its mask instances' centres."""
    if case.points is not None:
        return case.points
    labels = np.unique(case.instances, return_inverse=True)[1].reshape(case.instances.shape)
    return instance_centres(labels if (case.instances == 0).any() else labels + 1)


def _pooled_dice(predictions, cases: Sequence[TrainingCase]) -> float:
    intersection = total = 0.0
    for prediction, case in zip(predictions, cases, strict=True):
        overlap, size = _dice(prediction.map, case.instances > 0)
        intersection, total = intersection + overlap, total + size
    return 1.0 if total == 0 else 2 * intersection / total


def _count_distribution_metrics(predictions, cases, config: TrainConfig) -> dict[str, float]:

    nll, correct = [], []
    for prediction, case in zip(predictions, cases, strict=True):
        # Bins 0 .. max_count, the last "or more", as in training: a count head's
        # pmf and the Poisson-binomial one are scored alike.
        distribution = predicted_count_distribution(
            prediction, config.max_count, config.count_threshold
        )
        pmf = np.asarray(distribution.pmf, dtype=float)
        truth = min(int(case.count), len(pmf) - 1)
        nll.append(-math.log(max(pmf[truth], 1e-12)))
        correct.append(int(np.argmax(pmf)) == truth)
    return {
        "count_nll": float(np.mean(nll)),
        "count_accuracy": float(np.mean(correct)),
        "dice": _pooled_dice(predictions, cases),
    }


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def _write_history(run_dir: Path, history: Sequence[dict[str, Any]]) -> None:
    """Write ``history.jsonl`` and the same records as ``history.csv`` (one column per key)."""
    with atomic_write(run_dir / "history.jsonl", "w", encoding="utf-8") as handle:
        for record in history:
            handle.write(json.dumps(json_ready(record)) + "\n")
    columns = list(dict.fromkeys(key for record in history for key in record))
    with atomic_write(run_dir / "history.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(json_ready(record) for record in history)


def epoch_line(record: dict[str, Any], epochs: int, metric: str) -> str:
    """One plain log line for an epoch: loss, validation metric (when validated), seconds.

    Examples
    --------
    >>> epoch_line({"epoch": 3, "loss": 0.01234, "val_f1": 0.6, "seconds": 12.34}, 20, "f1")
    'epoch 3/20: loss 0.01234, val f1 0.600, 12.3 s'
    """
    parts = [f"loss {record['loss']:.4g}"]
    validation = _summary(record, metric)
    if validation:
        parts.append(validation)
    seconds = record.get("seconds", 0.0) + record.get("val_seconds", 0.0)
    return f"epoch {record['epoch']}/{epochs}: {', '.join(parts)}, {seconds:.1f} s"


def _check_resumable(stored: TrainConfig, config: TrainConfig, path: Path) -> None:
    old, new = dataclasses.asdict(stored), dataclasses.asdict(config)
    free = set(RESUMABLE_CHANGES)
    if old["lr_schedule"] != "constant":
        free.discard("epochs")  # a schedule spans the planned epochs
    changed = [k for k in old if k not in free and old[k] != new[k]]
    if changed:
        details = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in changed)
        raise ValueError(f"{path}: cannot resume with a different configuration ({details})")


def _progress(enabled: bool):

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TextColumn("{task.fields[speed]:.1f} samples/s"),
        TextColumn("{task.fields[validation]}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


def train(
    config: TrainConfig,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    max_epochs: int | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    log: TextIO | None = None,
) -> TrainResult:
    """Train a model from a dataset folder's weak labels.

    Parameters
    ----------
    config : TrainConfig
        What to train and how; ``spatial_dims`` is filled in from the data.
    data_root : path
        Dataset folder (see :func:`weaklesion.data.load_dataset`). It must pass
        :func:`weaklesion.data.check_dataset`.
    run_dir : path
        Run folder: ``config.toml``, ``last.pt``, ``best.pt``, ``history.jsonl`` (and
        the same as ``history.csv``), ``metrics.json``. A new run refuses a folder that
        already has ``last.pt``.
    resume : bool
        Continue from ``run_dir/last.pt`` (model, optimiser, epoch, history and best
        epoch), with the same data order, augmentation and dropout as an uninterrupted
        run. Without a ``last.pt`` the run starts afresh. Only ``epochs``, ``device``,
        ``num_threads``, ``patience`` and ``min_epochs`` may differ from the stored
        configuration; a run that ``patience`` ended stays ended.
    progress : bool
        Show a progress bar (rich) with the loss and samples per second.
    log : text stream or None
        Where to write one plain line per epoch (loss, validation metric, seconds; see
        :func:`epoch_line`), e.g. ``sys.stderr`` when it is a log file rather than a
        terminal that shows the bar.
    max_epochs : int or None
        Stop once this many epochs (in all) are done, even if ``config.epochs`` is more;
        a later ``resume=True`` continues to ``config.epochs``.
    on_epoch_end : callable ``(epoch, record) -> None`` or None
        Called after each epoch's checkpoint, with the 1-based epoch and its history
        record. An exception raised here stops training (the checkpoint is kept).

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        If the dataset has problems (all listed), lacks the labels ``config.labels``
        needs, the run folder holds another run, or the configuration does not fit the
        data.

    Notes
    -----
    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains on its share of every
    epoch in ``DistributedDataParallel``; only rank 0 validates and writes files. See
    :mod:`weaklesion.training.distributed`.
    """
    run_dir = Path(run_dir)
    config, device, train_cases, val_cases, state, info = _set_up_run(
        config, data_root, run_dir, resume
    )
    scale, metric = info["heatmap_scale"], info["metric"]
    network, average, optimizer = _networks(config, info, state, train_cases, device)
    centring = config.target == "count" and config.count_gradient == "centred"
    history: list[dict[str, Any]] = []
    start = 0
    if state is not None:
        history, start = list(state["history"]), int(state["epoch"])
        info.update({k: v for k, v in state["info"].items() if k.startswith("best")})
    objective = objective_for(config)
    dataset = LesionDataset(train_cases, config, scale)
    stop = min(config.epochs, max_epochs) if max_epochs is not None else config.epochs

    completed = start
    with parallel.process_group(device) as (rank, world_size):
        model = parallel.wrap(network, device)
        try:
            writer = rank == 0
            if writer and state is None:
                save_config(config, run_dir / "config.toml")
            steps = len(epoch_batches(len(dataset), config.batch_size, 0, 0, rank, world_size))
            with _progress(progress and writer) as bar:
                task = bar.add_task(
                    "training",
                    total=(stop - start) * steps,
                    loss=math.nan,
                    speed=0.0,
                    validation="",
                )
                for epoch in range(start, stop):
                    if _stops_early(config, info, history, writer, device):
                        break
                    bar.update(task, description=f"epoch {epoch + 1}/{config.epochs}")
                    record = _train_epoch(
                        model,
                        objective,
                        optimizer,
                        dataset,
                        config,
                        epoch,
                        device,
                        bar,
                        task,
                        average,
                    )
                    if centring:
                        # Every process computes the same shift from the same weights.
                        _calibrate_level(network, train_cases, config)
                    if writer:
                        record = _end_epoch(
                            network,
                            average,
                            optimizer,
                            epoch,
                            config,
                            info,
                            history,
                            record,
                            val_cases,
                            scale,
                            run_dir,
                        )
                        bar.update(task, validation=_summary(record, metric))
                        if log is not None:
                            print(epoch_line(record, config.epochs, metric), file=log, flush=True)
                    completed = epoch + 1
                    if on_epoch_end is not None:
                        on_epoch_end(epoch + 1, record)
        finally:
            del model  # before the group goes (see parallel.process_group)
    return TrainResult(
        run_dir=run_dir,
        epochs_completed=completed,
        best_epoch=int(info.get("best_epoch", 0)),
        metric=metric,
        best_value=float(info.get("best_value", math.nan)),
        history=history,
        model=(network if average is None else average).eval(),
    )


def _set_up_run(
    config: TrainConfig, data_root: str | os.PathLike, run_dir: Path, resume: bool
) -> tuple[
    TrainConfig,
    torch.device,
    list[TrainingCase],
    list[TrainingCase],
    dict[str, Any] | None,
    dict[str, Any],
]:
    """Threads, device and data of a run, before any network is built.

    Returns the configuration fitted to the data (``spatial_dims``), the device, the
    training and validation cases, the state to resume from (None for a new run) and
    the run's ``info``: what a checkpoint records of the data, the heatmap scale, and
    the metric that picks the best epoch with its ``mode``.
    """
    apply_thread_policy(config.num_threads)
    device = device_for(config.device)
    train_cases, val_cases, data_info = load_training_cases(data_root, config)
    config = dataclasses.replace(config, spatial_dims=data_info["spatial_dims"])
    if config.patch_size is not None and len(config.patch_size) != config.spatial_dims:
        raise ValueError(
            f"patch_size: got {config.patch_size}; expected {config.spatial_dims} sizes"
        )
    state = _previous_state(run_dir, config, resume)
    sigma = sigma_voxels(config, data_info["spacing"])
    scale = heatmap_scale(sigma) if config.target == "heatmap" else 1.0
    metric, mode = _metric_name(config) if val_cases else ("loss", "min")
    info = {
        **_data_info(config, data_info, train_cases, val_cases),
        "heatmap_scale": scale,
        "metric": metric,
        "mode": mode,
    }
    return config, device, train_cases, val_cases, state, info


def _data_info(
    config: TrainConfig,
    data_info: dict[str, Any],
    train_cases: Sequence[TrainingCase],
    val_cases: Sequence[TrainingCase],
) -> dict[str, Any]:
    """What a checkpoint records of the data (``info``): channels, dimensions, spacing,
    the kind of map and the cases of each split."""
    return {
        "in_channels": data_info["in_channels"],
        "spatial_dims": config.spatial_dims,
        "channels": list(data_info["channels"]),
        "spacing": [float(s) for s in data_info["spacing"]],
        "kind": config.target,
        "train_cases": [case.name for case in train_cases],
        "val_cases": [case.name for case in val_cases],
    }


def _previous_state(run_dir: Path, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """The state of ``run_dir/last.pt`` to resume from, None for a new run; refuses a
    folder that holds a run unless resuming, and a changed configuration."""
    last_path = run_dir / "last.pt"
    if not last_path.exists():
        return None
    if not resume:
        raise ValueError(f"{run_dir}: holds a run already (last.pt); resume it or use a new folder")
    state = load_checkpoint(last_path)
    _check_resumable(config_from_dict(state["config"]), config, last_path)
    return state


def _networks(
    config: TrainConfig,
    info: dict[str, Any],
    state: dict[str, Any] | None,
    train_cases: Sequence[TrainingCase],
    device: torch.device,
) -> tuple[nn.Module, nn.Module | None, torch.optim.Optimizer]:
    """The network to train (seeded, from ``init_from``, encoder frozen, count level
    calibrated as configured), its weight average (None without ``ema_decay``) and the
    optimiser, all restored from ``state`` when resuming."""
    torch.manual_seed(config.seed)
    network = build_model_for(config, info["in_channels"])
    if config.init_from is not None and state is None:
        load_weights(network, config.init_from)
    if config.freeze_encoder:
        freeze_encoder(network)
    network = place_network(network, device, config.spatial_dims)
    average = None
    if config.ema_decay > 0:
        average = copy.deepcopy(network).requires_grad_(False)
    if config.target == "count" and config.count_gradient == "centred":
        network.centre_batches()
        if state is None:
            _calibrate_level(network, train_cases, config)
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    if state is not None:
        network.load_state_dict(state.get("training_model", state["model"]))
        if average is not None:
            average.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    return network, average, optimizer


def _calibrate_level(
    network: nn.Module, cases: Sequence[TrainingCase], config: TrainConfig
) -> None:
    """Set a batch-centred count network's inference statistics from the training images.

    The pooled features' mean over ``cases`` becomes the network's ``pooled_mean``, and
    the output bias is shifted by :func:`level_shift` so that the predictions fit the
    labels' level (the mean count, or the fraction of images with a target).
    """
    training = network.training
    network.eval()
    images = [torch.from_numpy(case.image)[None] for case in cases]
    # Several images per call: one at a time, a small 3D image takes PyTorch's slow
    # convolution path on a CPU (see :func:`weaklesion.inference.predict_images`).
    most = max(2, config.batch_size)
    with torch.no_grad():
        pooled = [network.pooled_features(torch.cat(run)) for run in same_shape_runs(images, most)]
        network.set_pooled_mean(torch.cat(pooled).mean(dim=0))
        outputs = torch.cat([network(torch.cat(run)) for run in same_shape_runs(images, most)])
    network.train(training)
    counts = torch.tensor([float(case.count) for case in cases])
    network.shift_level(level_shift(outputs, counts, config.count_objective))


def stale_validations(history: Sequence[dict[str, Any]], metric: str, best_epoch: int) -> int:
    """Validations after the best epoch: the count that ``patience`` is compared with.

    Parameters
    ----------
    history : sequence of dict
        Epoch records as in ``history.jsonl``; a validated epoch holds
        ``val_<metric>`` (or, in a run without validation cases, the training loss,
        which stands in for it on every epoch).
    metric : str
        Name of the validation metric (``"loss"`` without validation cases).
    best_epoch : int
        1-based epoch of ``best.pt`` (0 when none was better than nothing yet).

    Returns
    -------
    int

    Examples
    --------
    >>> history = [{"epoch": 1, "val_f1": 0.5}, {"epoch": 2}, {"epoch": 3, "val_f1": 0.4}]
    >>> stale_validations(history, "f1", best_epoch=1)
    1
    """
    key = metric if metric == "loss" else f"val_{metric}"
    return sum(1 for record in history if record["epoch"] > best_epoch and key in record)


def _stops_early(
    config: TrainConfig,
    info: dict[str, Any],
    history: Sequence[dict[str, Any]],
    writer: bool,
    device: torch.device,
) -> bool:
    """Whether ``patience`` ends training before the next epoch; the writing process
    (which alone holds the history) decides for all."""
    if config.patience is None:
        return False
    stop = False
    if writer and history and history[-1]["epoch"] >= config.min_epochs:
        stale = stale_validations(history, info["metric"], int(info.get("best_epoch") or 0))
        stop = stale >= config.patience
    return parallel.sum_over_processes({"stop": float(stop)}, device)["stop"] > 0


def _summary(record: dict[str, Any], metric: str) -> str:
    value = record.get(f"val_{metric}", record.get(metric))
    return f"val {metric} {value:.3f}" if isinstance(value, float) else ""


def _train_epoch(
    model: nn.Module,
    objective,
    optimizer: torch.optim.Optimizer,
    dataset: LesionDataset,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    bar,
    task,
    average: nn.Module | None = None,
) -> dict[str, Any]:
    """One epoch of optimisation; returns the epoch's mean logs over all processes.

    With ``average``, the weight average is updated after every optimiser step.
    """
    rank, world_size, _ = parallel.world()
    dataset.set_epoch(epoch)
    torch.manual_seed(stream_seed(config.seed, DROPOUT_STREAM, epoch, rank))
    model.train()
    totals: dict[str, float] = {}
    samples = 0
    started = time.perf_counter()
    batches = epoch_batches(len(dataset), config.batch_size, config.seed, epoch, rank, world_size)
    rate = optimizer.param_groups[0]["lr"]
    for step, indices in enumerate(batches):
        rate = learning_rate(config, epoch * len(batches) + step, config.epochs * len(batches))
        for group in optimizer.param_groups:
            group["lr"] = rate
        batch = collate([dataset[int(i)] for i in indices])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss, logs = objective(model, batch, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            decay = ema_decay_at(config.ema_decay, epoch * len(batches) + step)
            update_average(average, getattr(model, "module", model), decay)
        for key, value in logs.items():
            totals[key] = totals.get(key, 0.0) + value * len(indices)
        samples += len(indices)
        elapsed = time.perf_counter() - started
        bar.update(task, advance=1, loss=logs["loss"], speed=samples * world_size / elapsed)
    totals = parallel.sum_over_processes({**totals, "samples": samples}, device)
    count = max(totals.pop("samples"), 1)
    seconds = time.perf_counter() - started
    record = {"epoch": epoch + 1, **{k: v / count for k, v in totals.items()}}
    record.update(seconds=seconds, samples_per_second=count / max(seconds, 1e-9), lr=rate)
    return record


def _end_epoch(
    network: nn.Module,
    average: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    config: TrainConfig,
    info: dict[str, Any],
    history: list[dict[str, Any]],
    record: dict[str, Any],
    val_cases: Sequence[TrainingCase],
    scale: float,
    run_dir: Path,
) -> dict[str, Any]:
    """Validate, update the best checkpoint, write last.pt and the logs (rank 0).

    With a weight ``average``, it is what is validated and saved as the model; last.pt
    keeps the trained weights as ``"training_model"`` for resuming.
    """
    metric, mode = info["metric"], info["mode"]
    model = network if average is None else average
    validating = (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs
    if val_cases and not validating:
        value = None
    elif val_cases:
        started = time.perf_counter()
        metrics = validate(model, val_cases, config, scale)
        record.update({f"val_{k}": v for k, v in metrics.items()})
        record["val_seconds"] = time.perf_counter() - started
        value = metrics[metric]
        info["threshold"] = metrics.get("threshold")
    else:
        value = record["loss"]
    history.append(record)
    if config.labels == "masks+counts" and epoch < min(
        config.count_warmup_epochs, config.epochs - 1
    ):
        value = None  # segmentation only so far: not yet a multi-task model
    if value is not None and _is_better(value, info.get("best_value"), mode):
        info.update(best_epoch=epoch + 1, best_value=value, best_threshold=info.get("threshold"))
        save_checkpoint(
            run_dir / "best.pt", run_state(model, None, epoch + 1, config, info, history)
        )
    last = run_state(model, optimizer, epoch + 1, config, info, history)
    if average is not None:
        last["training_model"] = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    save_checkpoint(run_dir / "last.pt", last)
    _write_history(run_dir, history)
    write_json(
        run_dir / "metrics.json",
        json_ready(
            {
                "epochs_completed": epoch + 1,
                "metric": metric,
                "mode": mode,
                "best_epoch": info.get("best_epoch"),
                "best_value": info.get("best_value"),
                "best_threshold": info.get("best_threshold"),
                "heatmap_scale": info["heatmap_scale"],
                "last": record,
            }
        ),
    )
    return record
