"""The truth a dataset holds about its lesions, in the form the metrics take."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.progress import track

from weaklesion.data.dataset import load_dataset, mask_instances
from weaklesion.io import affine_spacing, read_affine, read_image
from weaklesion.metrics import lesion_sizes


def lesion_truth(
    source: str | os.PathLike, cases: Sequence[str] | None = None, progress: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, dict[str, np.ndarray]]:
    """Truth lesion centres, their sizes and the voxel spacing of a dataset's cases.

    Parameters
    ----------
    source : path
        Dataset folder or JSON datalist with point labels.
    cases : sequence of str, optional
        Cases to return; by default every case with point labels. A case named here
        must exist and have points.
    progress : bool
        Show a progress bar over the cases (on stderr).

    Returns
    -------
    points : dict of case to (K, D) float array
        Lesion centres in voxel coordinates.
    sizes : dict of case to (K,) int array, or None
        Voxels of the mask instance under each centre (0 on background); None unless
        every case has a mask. A binary mask is split into connected components first
        (see :func:`~weaklesion.data.dataset.mask_instances`).
    spacing : dict of case to (D,) float array
        Voxel size in mm.
    """
    dataset = load_dataset(source)
    chosen = [case.id for case in dataset if case.points is not None] if cases is None else cases
    points, sizes, spacing = {}, {}, {}
    if progress:
        chosen = track(chosen, description="Reading truth", console=Console(stderr=True))
    for name in chosen:
        try:
            case = dataset[name]
        except KeyError:
            raise ValueError(f"{source}: has no case {name!r}") from None
        if case.points is None:
            raise ValueError(f"{source}: case {name!r} has no point labels")
        points[name] = case.points
        affine = read_affine(case.channels[0], case.spacing)
        spacing[name] = affine_spacing(affine)
        if case.mask is not None and sizes is not None:
            mask, _ = read_image(case.mask, case.spacing)
            sizes[name] = lesion_sizes(mask_instances(mask), case.points)
        else:
            sizes = None
    return points, sizes, spacing
