"""The inputs of the verbs that read predicted maps: a map file and its case name, the
predicted counts of ``weaklesion predict``, and a run's lesion settings with the options
given over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def case_name(path: Path) -> str:
    """Case name of a map file: its name less the suffix and the ``_<kind>`` (or
    ``_<attention method>``) that ``weaklesion predict`` appends (``case_001_heatmap.nii.gz``
    and ``case_001_gradcam.nii.gz`` are case ``case_001``)."""
    from weaklesion.attention import METHODS
    from weaklesion.config import TARGETS

    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy", ".npz", ".tif", ".tiff", ".png"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for kind in (*TARGETS, *METHODS):
        if name.endswith(f"_{kind}"):
            return name[: -len(kind) - 1]
    return name


def read_map(
    path: Path, channel: int | None, geometry: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a map file: NIfTI, .npy, TIFF, PNG, or an nnU-Net ``.npz`` of probabilities.

    Returns the spatial map and its voxel-to-world affine (None for an nnU-Net file
    whose geometry is unknown, allowed only without ``geometry``). A multi-channel map
    (C, ...) gives channel ``channel`` (default 1, the first foreground class of nnU-Net).
    """
    from weaklesion._validation import check_finite
    from weaklesion.io import read_image, read_nnunet_probabilities

    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.name.endswith(".npz"):
        values, affine = read_nnunet_probabilities(path, require_geometry=geometry)
    else:
        values, affine = read_image(path)
    if affine is None or values.ndim == affine.shape[0]:
        index = 1 if channel is None else channel
        if not 0 <= index < values.shape[0]:
            raise ValueError(
                f"{path}: has {values.shape[0]} channels; --channel {index} does not exist"
            )
        values = values[index]
    elif channel not in (None, 0):
        raise ValueError(f"{path}: has one channel; --channel {channel} does not exist")
    check_finite(values, str(path))
    # Float maps keep their precision (float32 maps are fitted as validation fits them).
    values = np.asarray(values)
    return (values if values.dtype.kind == "f" else values.astype(np.float64)), affine


def predicted_counts(path: Path, cases: list[str]) -> dict[str, float]:
    """The predicted count of each case from the ``predictions.json`` of ``predict``."""
    import json

    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("cases")
    except (json.JSONDecodeError, AttributeError):
        entries = None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected the predictions.json of `weaklesion predict`")
    counts = {}
    for case in cases:
        entry = entries.get(case)
        count = entry.get("count") if isinstance(entry, dict) else None
        if not isinstance(count, int | float) or isinstance(count, bool):
            raise ValueError(
                f"{path}: case {case!r} has no predicted count; expected one for every map "
                "(a presence classifier predicts none)"
            )
        counts[case] = float(count)
    return counts


def lesion_settings(run: Path | None, **options):
    """The lesion settings of ``run`` (the defaults without one), with the options given
    (those not None) over them, each recorded as coming from the command line."""
    from weaklesion.scoring import LesionSettings
    from weaklesion.tuning import run_settings

    settings = LesionSettings() if run is None else run_settings(run)
    given = {name: value for name, value in options.items() if value is not None}
    return settings.replace("option", **given) if given else settings
