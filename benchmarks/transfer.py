"""Transfer to segmentation on the phantom: a heatmap model fine-tuned on 1 % of the
masks against the same network trained from scratch on the same masks.

Myers-Colet et al. (MICCAI 2022) fine-tune a network trained from points into a
segmentation network on a few masks. Here:

1. Data: ``write_phantom_dataset(n_cases=48, seed=0)``, 32 x 64 x 64 volumes, 2 channels;
   split 36 training / 6 validation / 6 test cases.
2. Source: a heatmap model trained from the points of the 36 training cases, with the
   demo's recipe (``src/weaklesion/configs/demo.toml``) when it exists, else a 5-level
   U-Net of widths (8, 16, 32, 64, 128) with the default heatmap objective; the best
   validation epoch (detection F1 of Gaussian fitting on the validation points) is kept.
3. For each seed, the masks of 1 % of the training cases that hold at least one lesion
   (at least one case: one case, drawn with the seed; a lesion-free mask alone teaches
   a segmentation model nothing, and annotators spending 1 % of the effort would not
   outline an empty scan) train a segmentation model (weighted BCE, learning rate 3e-3,
   random 32^3 patches, a third of them on a lesion, dropout 0.1 for MC dropout) for
   the same number of epochs (one step each), in two arms: from the heatmap weights,
   whole network (``finetune``), or from a random initialisation with otherwise the same
   configuration (``scratch``); :data:`TRANSFER_ARMS` can add the decoder-only variant.
   With masks this scarce there are none to spare for validation: no validation masks
   are used, and each arm is evaluated at its last epoch.
4. On the 6 test cases, each segmentation model's probability map is binarised at 0.5
   and its connected components are scored: *segmentation F1* matches components to the
   true lesion masks one-to-one by overlap (a pair shares at least one voxel; the
   matching with most pairs); *detection F1* matches each component's maximum voxel to
   the true lesion centres within 3 voxels (``match_points``); and the Dice of the
   masks. The heatmap model's own test detection F1 (Gaussian fitting at its tuned
   threshold) is given for reference.
5. Uncertainty: on the test cases, the accuracy of the ``k`` most certain detections
   (``accuracy_by_certainty``): the heatmap model's lesions ranked by the entropy of
   their fitted amplitudes (``lesion_entropy``), against the fine-tuned segmentation
   model's (first seed) ranked by the entropy, or the mutual information, of their
   MC-dropout probability (``mc_dropout_lesion_uncertainty``, 10 samples); a detection
   is correct when it matches a true centre within 3 voxels.

Everything runs on the CPU with two torch threads; the machine is shared, so seconds are
wall-clock and the load average is recorded.

Run: ``.venv/bin/python -m benchmarks.transfer [--work DIR]``; writes
``benchmarks/results/transfer.json``. ``--work`` keeps the data and runs in ``DIR`` and
resumes what is there (an interrupted run loses nothing); ``--quick`` runs a smoke
version on tiny data and writes no result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from weaklesion.bench.points import segmentation_scores, training_datalist
from weaklesion.data.dataset import load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.data.phantom import write_phantom_dataset
from weaklesion.detection import fit_gaussians
from weaklesion.inference import predict_image
from weaklesion.io import affine_spacing, atomic_write
from weaklesion.metrics import accuracy_by_certainty, detection_scores, match_points
from weaklesion.training import load_config, load_run, train
from weaklesion.training.checkpoint import load_checkpoint
from weaklesion.training.data import fit_sigma_voxels
from weaklesion.training.finetune import finetune
from weaklesion.uncertainty import lesion_entropy, mc_dropout_lesion_uncertainty

RESULTS = Path(__file__).parent / "results" / "transfer.json"
DEMO_CONFIG = Path(__file__).parents[1] / "src" / "weaklesion" / "configs" / "demo.toml"
FALLBACK_FEATURES = [8, 16, 32, 64, 128]
SETTINGS = {
    "full": {
        "n_cases": 48,
        "shape": (32, 64, 64),
        "heatmap_epochs": None,  # the recipe's
        "segmentation_epochs": 40,
        "segmentation_patch": [32, 32, 32],
        "seeds": (0, 1, 2),
        "mc_samples": 10,
        "features": FALLBACK_FEATURES,
    },
    "quick": {
        "n_cases": 8,
        "shape": (16, 32, 32),
        "heatmap_epochs": 1,
        "segmentation_epochs": 2,
        "segmentation_patch": [16, 16, 16],
        "seeds": (0,),
        "mc_samples": 2,
        "features": [4, 8, 16],
    },
}
MASK_FRACTION = 0.01
# Both arms learn from one case's mask in one step per epoch: a higher learning rate
# than the heatmap's 1e-3 makes the few steps count.
SEGMENTATION_LR = 3e-3
MATCH_DISTANCE = 3.0
THREADS = 2
CERTAINTY_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
# Arms fine-tuned from the heatmap weights, and which part of the network each trains
# ({"finetune_decoder": "decoder"} adds the frozen-encoder variant).
TRANSFER_ARMS = {"finetune": "all"}
ARMS = (*TRANSFER_ARMS, "scratch")
SEGMENTATION_DROPOUT = 0.1
SCORES = ("segmentation_f1", "detection_f1", "dice")


class HeldOutCase(NamedTuple):
    name: str
    image: np.ndarray
    instances: np.ndarray
    points: np.ndarray
    spacing: np.ndarray


def held_out_cases(data: Path) -> list[HeldOutCase]:
    """The test split, normalised as the training cases are."""
    cases = []
    for case in load_dataset(data).split_cases("test"):
        arrays = case.load()
        image, spacing = zscore(arrays.image), affine_spacing(arrays.affine)
        cases.append(HeldOutCase(case.id, image, arrays.mask, case.points, spacing))
    return cases


def evaluate_segmentation(run_dir: Path, cases: list[HeldOutCase]) -> dict:
    """Test scores of a segmentation run's last epoch (see the module notes)."""
    model, _, _ = load_run(run_dir, "last")
    probabilities = [predict_image(model, c.image, "segmentation").map for c in cases]
    return segmentation_scores(
        probabilities,
        [c.instances for c in cases],
        [c.points for c in cases],
        MATCH_DISTANCE,
        threshold=0.5,
        location="max",
    )


def heatmap_detections(run_dir: Path, cases: list[HeldOutCase]):
    """Gaussian fitting on the best heatmap epoch's test maps, at its tuned threshold."""
    model, config, info = load_run(run_dir)
    threshold = info.get("best_threshold") or 0.5
    found = []
    for case in cases:
        heatmap = predict_image(model, case.image, "heatmap", scale=info["heatmap_scale"]).map
        fitted = fit_gaussians(heatmap, fit_sigma_voxels(config, case.spacing))
        found.append(fitted.above(threshold))
    return found, threshold


def certainty_curve(found, uncertainties, cases: list[HeldOutCase]) -> dict:
    correct = np.concatenate(
        [
            match_points(f.points, c.points, MATCH_DISTANCE).pred_matched
            for f, c in zip(found, cases, strict=True)
        ]
    )
    curve = accuracy_by_certainty(correct, np.concatenate(uncertainties), CERTAINTY_FRACTIONS)
    return {
        "n_detections": len(correct),
        "retained": curve.retained.tolist(),
        "accuracy": curve.accuracy.tolist(),
    }


def segmentation_arms(source: Path, datalist: Path, work: Path, seed: int, settings: dict):
    """Train the arms of one seed; returns {arm: (run folder, seconds)}."""
    runs = {}
    common = {
        "seed": seed,
        "lr": SEGMENTATION_LR,
        "patch_size": settings["segmentation_patch"],
        "model_kwargs.dropout": SEGMENTATION_DROPOUT,
        "val_fraction": 0.0,
        "num_threads": THREADS,
        "device": "cpu",
    }
    for arm, part in TRANSFER_ARMS.items():
        started = time.perf_counter()
        run = finetune(
            source,
            datalist,
            work / f"{arm}_{seed}",
            mask_fraction=MASK_FRACTION,
            part=part,
            epochs=settings["segmentation_epochs"],
            overrides=common,
            resume=True,
            progress=False,
        ).run_dir
        runs[arm] = (run, time.perf_counter() - started)
    scratch_config = load_config(runs["finetune"][0] / "config.toml", {"init_from": None})
    started = time.perf_counter()
    scratch = work / f"scratch_{seed}"
    run = train(scratch_config, datalist, scratch, resume=True, progress=False).run_dir
    runs["scratch"] = (run, time.perf_counter() - started)
    return runs


def lesion_cases_only(datalist: Path) -> Path:
    """A copy of a datalist without its lesion-free cases (``DATA/training_lesions.json``)."""
    description = json.loads(datalist.read_text(encoding="utf-8"))
    description["training"] = [case for case in description["training"] if case["points"]]
    path = datalist.with_name("training_lesions.json")
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=2)
    return path


def _train_cases(run_dir: Path) -> list[str]:
    return list(load_checkpoint(run_dir / "last.pt")["info"]["train_cases"])


def main(quick: bool = False, work: Path | None = None) -> dict:
    settings = SETTINGS["quick" if quick else "full"]
    torch.set_num_threads(THREADS)
    keep = work is not None
    work = Path(work) if keep else Path(tempfile.mkdtemp(prefix="transfer-"))
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    try:
        data = work / "data"
        if not (data / "dataset.json").exists():
            write_phantom_dataset(
                data, n_cases=settings["n_cases"], seed=0, shape=settings["shape"]
            )
        split = {k: len(v) for k, v in load_dataset(data).split.items()}
        recipe = "demo.toml" if DEMO_CONFIG.exists() and not quick else "fallback"
        overrides = {
            "labels": "points",
            "num_threads": THREADS,
            "device": "cpu",
        }
        if settings["heatmap_epochs"] is not None:
            overrides["epochs"] = settings["heatmap_epochs"]
        if recipe == "fallback":
            overrides["model_kwargs.features"] = settings["features"]
        config = load_config(DEMO_CONFIG if recipe == "demo.toml" else None, overrides)
        started = time.perf_counter()
        trained = train(config, data, work / "heatmap", resume=True, progress=not quick)
        source, heatmap_seconds = trained.run_dir, time.perf_counter() - started

        test_cases = held_out_cases(data)
        heatmap_found, heatmap_threshold = heatmap_detections(source, test_cases)
        scores = detection_scores(
            [
                match_points(f.points, c.points, MATCH_DISTANCE)
                for f, c in zip(heatmap_found, test_cases, strict=True)
            ]
        )
        heatmap_source = {
            "best_epoch": trained.best_epoch,
            "validation_detection_f1": trained.best_value,
            "threshold": heatmap_threshold,
            "test_detection_f1": scores.f1,
            "test_detection_precision": scores.precision,
            "test_detection_recall": scores.recall,
            "seconds": heatmap_seconds,
        }

        datalist = lesion_cases_only(training_datalist(data))
        runs = []
        for seed in settings["seeds"]:
            arms = segmentation_arms(source, datalist, work, seed, settings)
            used = {arm: _train_cases(run) for arm, (run, _) in arms.items()}
            assert all(cases == used["finetune"] for cases in used.values())
            record = {"seed": seed, "mask_cases": used["finetune"]}
            for arm, (run, seconds) in arms.items():
                record[arm] = {**evaluate_segmentation(run, test_cases), "seconds": seconds}
            runs.append(record)
            print(json.dumps(record), flush=True)

        model, _, _ = load_run(work / f"finetune_{settings['seeds'][0]}", "last")
        mc_found = [
            mc_dropout_lesion_uncertainty(model, case.image, settings["mc_samples"], seed=0)
            for case in test_cases
        ]
        uncertainty = {
            "heatmap_amplitude_entropy": certainty_curve(
                heatmap_found, [lesion_entropy(f) for f in heatmap_found], test_cases
            ),
            "finetuned_segmentation_mc_dropout_entropy": certainty_curve(
                mc_found, [f.extras["entropy"] for f in mc_found], test_cases
            ),
            "finetuned_segmentation_mc_dropout_mutual_information": certainty_curve(
                mc_found, [f.extras["mutual_information"] for f in mc_found], test_cases
            ),
        }
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    summary = {
        arm: {key: float(np.mean([run[arm][key] for run in runs])) for key in SCORES}
        for arm in ARMS
    }
    for arm in TRANSFER_ARMS:
        summary[f"{arm}_minus_scratch"] = {
            key: summary[arm][key] - summary["scratch"][key] for key in SCORES
        }
        summary[f"{arm}_beats_scratch_in_seeds"] = {
            key: int(sum(run[arm][key] > run["scratch"][key] for run in runs)) for key in SCORES
        }
    result = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": THREADS,
            "load_average_after": list(os.getloadavg()),
            "note": "shared machine; seconds are wall-clock",
        },
        "settings": {
            "phantom": {
                "n_cases": settings["n_cases"],
                "seed": 0,
                "shape": list(settings["shape"]),
                "split": split,
            },
            "heatmap_recipe": recipe,
            "heatmap_config": dataclasses.asdict(config),
            "segmentation_epochs": settings["segmentation_epochs"],
            "segmentation_steps_per_epoch": 1,
            "segmentation_lr": SEGMENTATION_LR,
            "segmentation_patch_size": settings["segmentation_patch"],
            "segmentation_dropout": SEGMENTATION_DROPOUT,
            "mask_fraction": MASK_FRACTION,
            "mask_pool": "training cases with at least one lesion",
            "segmentation_validation": "none (no validation masks); last epoch evaluated",
            "seeds": list(settings["seeds"]),
            "match_distance_voxels": MATCH_DISTANCE,
            "binarisation_threshold": 0.5,
            "mc_samples": settings["mc_samples"],
        },
        "heatmap_source": heatmap_source,
        "runs": runs,
        "summary": summary,
        "uncertainty_accuracy_of_most_certain": uncertainty,
        "timings": {
            "wall_seconds": time.perf_counter() - wall_started,
            "cpu_seconds": time.process_time() - cpu_started,
        },
    }
    if not quick:
        with atomic_write(RESULTS, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
    print(json.dumps({"summary": summary, "heatmap_source": heatmap_source}, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on tiny data")
    parser.add_argument("--work", type=Path, help="keep data and runs here and resume them")
    arguments = parser.parse_args()
    main(arguments.quick, arguments.work)
