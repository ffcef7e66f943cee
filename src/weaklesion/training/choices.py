"""The named choices of a training configuration, described for ``weaklesion train --help``.

The names come from the registries that training checks against
(:data:`~weaklesion.config.CHOICES` and :data:`~weaklesion.models.MODEL_NAMES`),
so a network, target or count head added there is listed with the ``--set`` key that
picks it.
"""

from __future__ import annotations

import dataclasses

from weaklesion.config import CHOICES, TrainConfig
from weaklesion.models import MODEL_NAMES

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "labels": {
        "points": "lesion centres (points.csv)",
        "counts": "a lesion count per image (counts.csv)",
        "masks": "lesion masks (labelsTr)",
        "masks+counts": "masks, with the count loss added (multi-task)",
    },
    "target": {
        "heatmap": "Gaussian heatmap, weighted MSE; Gaussian fitting",
        "euclidean": "Euclidean distance map, MSE; components",
        "geodesic": "geodesic distance map, MSE; components",
        "segmentation": "probabilities, weighted BCE (+ count loss)",
        "count": "image-level count; attention maps locate lesions",
    },
    "model": {
        "unet": "U-Net, for heatmaps, distance maps, segmentation",
        "gpunet": "GP-Unet: residual, global pooling, one count unit",
        "gpunet_noresidual": "GP-Unet without residual (deeper, 2 poolings)",
        "gpunet_base": "two-scale base network (GP-Unet baseline)",
        "gated_attention": "two-scale network with gated attention",
    },
    "count_head": {
        "poisson_binomial": "Poisson-binomial count of regions; count NLL",
        "bottleneck": "classifier on the bottleneck; cross-entropy",
        "multihead": "classifier on last decoder features; cross-entropy",
        "downstream": "classifier on the segmentation map; cross-entropy",
    },
    "count_objective": {
        "regression": "MSE of the predicted count",
        "classification": "BCE of lesion presence (count > 0)",
    },
    "count_gradient": {
        "plain": "the loss's gradient as it is (the papers')",
        "centred": "batch-centred pooled features; leaves the plateau",
    },
    "lr_schedule": {
        "constant": "the rate lr throughout",
        "cosine": "cosine annealing from lr to 0",
        "onecycle": "warm-up to lr over 30 % of the steps, then annealing",
    },
}
"""What each name means, by configuration key; the loss it trains with where it sets one."""

KEY_NOTES = {
    "labels": "the weak labels to learn from",
    "target": "what the network regresses, and its loss (default: from labels)",
    "model": "the network",
    "count_head": "how masks+counts training counts (and its loss)",
    "count_objective": "the loss of a count target",
    "count_gradient": "how a count network or count head learns",
    "lr_schedule": "learning rate over the epochs",
}


def registered_choices() -> dict[str, tuple[str, ...]]:
    """Every named choice of a configuration, by key, as the registries hold them.

    Examples
    --------
    >>> registered_choices()["target"]
    ('heatmap', 'euclidean', 'geodesic', 'segmentation', 'count')
    """
    return {key: tuple(MODEL_NAMES) if key == "model" else tuple(CHOICES[key]) for key in KEY_NOTES}


def choices_help() -> str:
    """The choices as text for ``weaklesion train --help``: one line per name.

    Each line gives the ``--set KEY=NAME`` that picks the name and what it means; the
    name a configuration takes when it names none is marked ``(default)``.

    Examples
    --------
    >>> print(choices_help().splitlines()[1])
      --set labels=points                   lesion centres (points.csv) (default)
    """
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    choices = registered_choices()
    width = max(len(f"--set {key}={name}") for key, names in choices.items() for name in names)
    lines = []
    for key, names in choices.items():
        lines.append(f"{key}: {KEY_NOTES[key]}")
        for name in names:
            meaning = DESCRIPTIONS.get(key, {}).get(name, "")
            if defaults.get(key) == name:
                meaning = f"{meaning} (default)"
            lines.append(f"  {f'--set {key}={name}':<{width}}  {meaning}".rstrip())
    return "\n".join(lines)
