"""Why count networks sit at the mean count, and which recipe leaves it: MNIST grids.

Trains GP-Unet-family count networks on 7×5 grids of MNIST digits (the data of
``weaklesion bench mnist``: 400 training and 100 validation grids per target digit, half
without the digit) with one recipe per run, and records per epoch

- the training loss and the validation count MAE, beside the MAE of predicting the mean
  training count (the plateau);
- on a fixed batch of 32 training grids: the gradient norm of every layer; the fraction
  of dead units (ReLU outputs that are zero for every pixel of every grid) in the last
  feature maps, and the fraction of pooled features that are zero; the spread of the
  pooled features across grids (standard deviation over grids divided by the mean, per
  channel, median over channels); the relative step ``‖Δθ‖ / ‖θ‖`` of every parameter
  group over the epoch.

Training and validation grids, and the 500 test grids, are those of ``weaklesion bench
mnist`` (:func:`bench_grids`); the network of the best validation epoch is scored on
the test grids (FAUC of its class activation maps, by threshold and by rank). Each run
is one JSON file in ``--out`` (default ``benchmarks/results/count_training``), written
when it finishes; a rerun skips finished runs, so the command resumes.

    python -m benchmarks.count_training --digits 4 7 --seeds 0 1 2 \\
        --recipes paper_adam density_batchnorm --epochs 30
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from weaklesion.bench.mnist import (
    SPLITS,
    attention_and_outputs,
    dataset_cells,
    digit_pools,
    draw_grids,
    load_mnist_digits,
    render_grid,
    score_attention,
    target_cell_labels,
)
from weaklesion.io import write_json
from weaklesion.models import build_model
from weaklesion.training.objectives import level_shift

RESULTS = Path(__file__).parent / "results" / "count_training"


@dataclass(frozen=True)
class Recipe:
    """How one count network is trained (see ``RECIPES``)."""

    model: str = "gpunet"
    model_kwargs: dict = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 3e-3
    batch_size: int = 4
    loss: str = "mse"
    intensities: str = "zscore"
    augment: bool = False
    warmup_epochs: int = 0
    centred: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"


RECIPES = {
    # weaklesion's MNIST recipe before this study: Adam 3e-3, batch 4, z-scored.
    "adam": Recipe(),
    # The paper's protocol: [0, 1] intensities, Adadelta (lr 1), batch 64, augmentation.
    "paper": Recipe(optimizer="adadelta", lr=1.0, batch_size=64, intensities="unit", augment=True),
    # weaklesion's default for count networks: the batch-centred count gradient.
    "centred": Recipe(centred=True),
    "centred_batch64": Recipe(centred=True, batch_size=64),
    "batchnorm": Recipe(model_kwargs={"normalization": "batch"}),
    "density": Recipe(model_kwargs={"output": "density"}),
    "density_batchnorm": Recipe(model_kwargs={"output": "density", "normalization": "batch"}),
    "density_batchnorm_poisson": Recipe(
        model_kwargs={"output": "density", "normalization": "batch"}, loss="poisson"
    ),
    "centred_augment": Recipe(centred=True, augment=True),
    "density_augment": Recipe(model_kwargs={"output": "density"}, augment=True),
    "density_batchnorm_augment": Recipe(
        model_kwargs={"output": "density", "normalization": "batch"}, augment=True
    ),
    "density_poisson": Recipe(model_kwargs={"output": "density"}, loss="poisson"),
    "density_lr1e3": Recipe(model_kwargs={"output": "density"}, lr=1e-3),
    "density_batch16": Recipe(model_kwargs={"output": "density"}, batch_size=16),
    "centred_batchnorm": Recipe(centred=True, model_kwargs={"normalization": "batch"}),
    "centred_batchnorm_augment": Recipe(
        centred=True, model_kwargs={"normalization": "batch"}, augment=True
    ),
    "noresidual_centred": Recipe(model="gpunet_noresidual", centred=True),
    "centred_lr1e3": Recipe(centred=True, lr=1e-3),
    "centred_batchnorm_cosine": Recipe(
        centred=True, model_kwargs={"normalization": "batch"}, schedule="cosine"
    ),
    "centred_batchnorm_cosine_f16": Recipe(
        centred=True, model_kwargs={"normalization": "batch", "filters": 16}, schedule="cosine"
    ),
    "noresidual_centred_batchnorm_cosine": Recipe(
        model="gpunet_noresidual",
        centred=True,
        model_kwargs={"normalization": "batch"},
        schedule="cosine",
    ),
}


def grid_data(digit: int, seed: int = 0, images: tuple[int, int] = (400, 100)):
    """Training and validation grids ``(N, 1, 196, 140)`` uint8 and their counts ``(N,)``.

    The same pools and drawing as ``weaklesion bench mnist`` (pool seed 0, 7×5 grids).
    """
    digits, labels = load_mnist_digits()
    pools = digit_pools(len(digits), 0)
    rng = np.random.default_rng([0, digit])
    out = {}
    for split, n in zip(SPLITS[:2], images, strict=True):
        cells = draw_grids(labels, pools[split], digit, n, (7, 5), rng)
        grids = np.stack([render_grid(digits, c) for c in cells])[:, None]
        out[split] = (grids, (labels[cells] == digit).sum(axis=(1, 2)).astype(np.float32))
    return out


def bench_grids(digit: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The grids of ``weaklesion bench mnist`` for one target digit, drawn in memory.

    The same pools, seed and drawing as :func:`~weaklesion.bench.mnist.write_grid_dataset`
    with the full settings, so the test images are the bench's. Returns, per split,
    the grids ``(N, 1, 196, 140)`` uint8, their counts ``(N,)`` and the target-cell
    labels ``(N, 196, 140)`` (0 outside target cells).
    """
    digits, labels = load_mnist_digits()
    out = {}
    for split, cells in dataset_cells(labels, digit).items():
        is_target = labels[cells] == digit
        grids = np.stack([render_grid(digits, c) for c in cells])[:, None]
        targets = np.stack([target_cell_labels(t) for t in is_target]).astype(np.int32)
        out[split] = (grids, is_target.sum(axis=(1, 2)).astype(np.float32), targets)
    return out


def test_set_scores(
    model: nn.Module, x: torch.Tensor, cells: np.ndarray, n_boot: int = 200
) -> dict:
    """FAUC by threshold and by rank of the class activation maps on the test grids."""
    model.eval()
    maps, counts = attention_and_outputs(model, x.numpy(), "cam")
    model.train()
    scored = score_attention(maps, cells, counts, n_boot=n_boot)
    return {
        "fauc_threshold": scored["fauc_threshold"]["estimate"],
        "fauc_rank": scored["fauc"]["estimate"],
        "at_count": scored["at_count"],
    }


def normalised(grids: np.ndarray, intensities: str) -> torch.Tensor:
    """Grids as float32 in [0, 1] (``"unit"``) or z-scored per grid (``"zscore"``)."""
    x = torch.from_numpy(grids.astype(np.float32))
    if intensities == "unit":
        return x / 255.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


def augmented(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips, translations up to 2 px and rotations up to 0.2 rad (the paper's)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * 0.2
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, 2] = shift[:, 0] * 2 / x.shape[3]
    theta[:, 1, 2] = shift[:, 1] * 2 / x.shape[2]
    grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = functional.grid_sample(x, grid, align_corners=False)
    flip_y = torch.rand(n, generator=generator) < 0.5
    flip_x = torch.rand(n, generator=generator) < 0.5
    x[flip_y] = x[flip_y].flip(2)
    x[flip_x] = x[flip_x].flip(3)
    return x


def count_loss(predicted: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """MSE of the count, or the Poisson NLL of the count with the prediction as its mean."""
    if loss == "poisson":
        return functional.poisson_nll_loss(predicted, target, log_input=False, eps=1e-4)
    return functional.mse_loss(predicted, target)


def _last_relu_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.features(x)


def diagnostics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> dict:
    """Gradient norms per layer and feature statistics on a fixed batch (train mode)."""
    model.zero_grad(set_to_none=True)
    count_loss(model(x), y, loss).backward()
    norms = {}
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.grad is not None]
        if params:
            norms[name] = float(torch.sqrt(sum((p.grad**2).sum() for p in params)))
    model.zero_grad(set_to_none=True)
    features = _last_relu_outputs(model, x)
    flat = features.flatten(2)
    pooled = flat.mean(dim=2)
    spread = pooled.std(dim=0) / pooled.mean(dim=0).abs().clamp_min(1e-12)
    alive = pooled.abs().sum(dim=0) > 0
    return {
        "grad_norm": norms,
        "dead_units": float((flat.amax(dim=(0, 2)) <= 0).float().mean()),
        "zero_voxel_fraction": float((flat <= 0).float().mean()),
        "zero_pooled_fraction": float((pooled <= 0).float().mean()),
        "pooled_spread_median": float(spread[alive].median()) if alive.any() else 0.0,
        "pooled_std_over_images_median": float(pooled.std(dim=0).median()),
    }


def gradient_snr(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, batch_size: int
) -> dict[str, float]:
    """Signal-to-noise ratio of a mini-batch gradient, per layer, at the current weights.

    ``‖E g‖ / sqrt(tr Cov g / B)`` over per-image gradients ``g`` of ``x`` (train mode,
    one image at a time): the expected gradient's norm against the norm of the noise of
    a mini-batch of ``B`` images. Below 1 the optimiser mostly steps at random; the
    number of steps needed to move a given distance grows as its inverse.
    """
    names = [n for n, p in model.named_parameters() if p.ndim > 1]
    sums = {n: 0.0 for n in names}
    squares = dict.fromkeys(names, 0.0)
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        count_loss(model(x[i : i + 1]), y[i : i + 1], loss).backward()
        for n, p in model.named_parameters():
            if n in sums:
                g = p.grad.detach().double()
                sums[n] = sums[n] + g
                squares[n] = squares[n] + (g**2).sum()
    model.zero_grad(set_to_none=True)
    n_images = len(x)
    out = {}
    for n in names:
        mean = sums[n] / n_images
        variance = float(squares[n] / n_images - (mean**2).sum())
        out[n] = float(mean.norm()) / math.sqrt(max(variance, 1e-30) / batch_size)
    return out


def plateau_snr(
    digit: int, images: int = 200, batch_sizes=(4, 16, 64), draws: int = 3000, seed: int = 0
) -> dict:
    """Signal-to-noise ratio of batch gradients at the mean-count plateau, plain and centred.

    The untrained GP-Unet's counts are shifted to the mean training count (the plateau),
    and the per-image Jacobians ``J_i = ∂count_i/∂θ`` of ``images`` training grids are
    computed once. For random batches of ``B`` grids the mean squared error's gradient is
    ``Σ r_i J_i / B`` (plain) or ``Σ (r_i - mean r) J_i / B`` (centred: what batch-centred
    pooled features give), ``r_i`` the residuals. The ratio is the norm of the mean
    gradient over ``draws`` batches to the root mean squared deviation from it.
    """
    data = grid_data(digit)
    x = normalised(data["training"][0][:images], "zscore")
    y = data["training"][1][:images].astype(np.float64)
    torch.manual_seed(seed)
    model = build_model("gpunet", 2, 1, 1).eval()
    jacobians, counts = [], []
    for i in range(images):
        model.zero_grad(set_to_none=True)
        count = model(x[i : i + 1]).sum()
        count.backward()
        counts.append(float(count.detach()))
        grads = [p.grad.flatten() for n, p in model.named_parameters() if n != "regressor.bias"]
        jacobians.append(torch.cat(grads).double().numpy())
    jacobian = np.stack(jacobians)
    counts = np.array(counts)
    residuals = y.mean() + (counts - counts.mean()) - y
    rng = np.random.default_rng(seed)
    out = {}
    for batch in batch_sizes:
        for kind in ("plain", "centred"):
            gradients = []
            for _ in range(draws):
                index = rng.choice(images, batch, replace=False)
                r = residuals[index] - (residuals[index].mean() if kind == "centred" else 0)
                gradients.append(r @ jacobian[index] / batch)
            gradients = np.array(gradients)
            mean = gradients.mean(axis=0)
            noise = np.sqrt(((gradients - mean) ** 2).sum(axis=1).mean())
            out[f"batch{batch}_{kind}"] = float(np.linalg.norm(mean) / noise)
    out["floor"] = 1 / math.sqrt(draws)
    return out


def _parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _relative_steps(before: dict, model: nn.Module) -> dict[str, float]:
    steps = {}
    for name, p in model.named_parameters():
        norm = float(before[name].norm())
        steps[name] = float((p.detach() - before[name]).norm()) / max(norm, 1e-12)
    return steps


def calibrate_level(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Inference mean of the pooled features and output level from the training grids."""
    model.eval()
    with torch.no_grad():
        pooled = torch.cat([model.pooled_features(x[i : i + 20]) for i in range(0, len(x), 20)])
        model.set_pooled_mean(pooled.mean(dim=0))
        predicted = torch.cat([model(x[i : i + 20]) for i in range(0, len(x), 20)])
    model.shift_level(level_shift(predicted, y, "regression"))
    model.train()


def evaluate_mae(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean absolute count error of ``model`` (eval mode) on ``x``."""
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + 20]) for i in range(0, len(x), 20)])
    model.train()
    return float((predicted - y).abs().mean())


def run(recipe_name: str, digit: int, seed: int, epochs: int, diagnose_epochs: int) -> dict:
    """Train one count network; per-epoch losses, MAE and diagnostics."""
    recipe = RECIPES[recipe_name]
    data = bench_grids(digit)
    x_train = normalised(data["training"][0], recipe.intensities)
    y_train = torch.from_numpy(data["training"][1])
    x_val = normalised(data["validation"][0], recipe.intensities)
    y_val = torch.from_numpy(data["validation"][1])
    mean_count = float(y_train.mean())
    plateau = float((y_val - mean_count).abs().mean())
    torch.manual_seed(seed)
    model = build_model(recipe.model, 2, 1, 1, **recipe.model_kwargs)
    if hasattr(model, "set_initial_count"):
        model.set_initial_count(mean_count)
    if recipe.centred:
        model.centre_batches()
        calibrate_level(model, x_train, y_train)
    if recipe.optimizer == "adadelta":
        optimizer = torch.optim.Adadelta(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
    best_mae, best_state, best_epoch = math.inf, None, 0
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[:32]
    history = []
    model.train()
    start = time.perf_counter()
    steps_per_epoch = math.ceil(len(x_train) / recipe.batch_size)
    for epoch in range(epochs):
        record: dict = {"epoch": epoch + 1}
        if epoch < diagnose_epochs:
            record.update(diagnostics(model, x_train[probe], y_train[probe], recipe.loss))
            before = _parameters(model)
        order = torch.randperm(len(x_train), generator=generator)
        losses = []
        for step, i in enumerate(range(0, len(order), recipe.batch_size)):
            index = order[i : i + recipe.batch_size]
            x = x_train[index]
            if recipe.augment:
                x = augmented(x, generator)
            if recipe.schedule == "cosine":
                fraction = (epoch * steps_per_epoch + step) / (epochs * steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * fraction))
            if recipe.warmup_epochs:
                fraction = (epoch * steps_per_epoch + step + 1) / (
                    recipe.warmup_epochs * steps_per_epoch
                )
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * min(1.0, fraction)
            loss = count_loss(model(x), y_train[index], recipe.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        if recipe.centred:
            calibrate_level(model, x_train, y_train)
        if epoch < diagnose_epochs:
            record["relative_step"] = _relative_steps(before, model)
        record["train_loss"] = float(np.mean(losses))
        record["val_mae"] = evaluate_mae(model, x_val, y_val)
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if record["val_mae"] < best_mae:
            best_mae, best_epoch = record["val_mae"], epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(
            f"{recipe_name} digit {digit} seed {seed} epoch {epoch + 1}: loss "
            f"{record['train_loss']:.3f} val MAE {record['val_mae']:.3f} "
            f"(mean-count MAE {plateau:.3f}) {record['seconds']:.0f} s",
            flush=True,
        )
    model.load_state_dict(best_state)
    x_test = normalised(data["test"][0], recipe.intensities)
    test = test_set_scores(model, x_test, data["test"][2])
    print(
        f"{recipe_name} digit {digit} seed {seed}: best epoch {best_epoch}, test FAUC "
        f"{100 * test['fauc_threshold']:.1f} by threshold, {100 * test['fauc_rank']:.1f} by rank",
        flush=True,
    )
    maes = [r["val_mae"] for r in history]
    left = [r["epoch"] for r in history if r["val_mae"] < plateau / 2]
    return {
        "recipe": recipe_name,
        "settings": asdict(recipe),
        "digit": digit,
        "seed": seed,
        "epochs": epochs,
        "mean_count": mean_count,
        "mean_count_mae": plateau,
        "best_val_mae": min(maes),
        "best_epoch": best_epoch,
        "test": test,
        "first_epoch_below_half_plateau": left[0] if left else None,
        "seconds": history[-1]["seconds"],
        "threads": torch.get_num_threads(),
        "history": history,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="+", default=[4, 7])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--diagnose-epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--snr", action="store_true", help="gradient SNR at the plateau only")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.snr:
        for digit in args.digits:
            path = args.out / f"plateau_snr_digit{digit}.json"
            if not path.exists():
                write_json(path, {"digit": digit, **plateau_snr(digit)})
        return
    for recipe in args.recipes:
        for digit in args.digits:
            for seed in args.seeds:
                path = args.out / f"{recipe}_digit{digit}_seed{seed}_e{args.epochs}.json"
                if path.exists():
                    continue
                write_json(path, run(recipe, digit, seed, args.epochs, args.diagnose_epochs))


if __name__ == "__main__":
    main()
