"""Synthetic brain-MRI-like volumes with white-matter lesions and exact ground truth.

A phantom case imitates a multi-contrast brain scan with multiple-sclerosis or
small-vessel-disease lesions: a head-like ellipsoid with scalp, cerebrospinal fluid,
grey and white matter, ventricles and sulci (or, optionally, the MNI152 template's
anatomy), a smooth bias field, Rician noise, and lesions of many sizes in the white
matter, some of them touching. Every lesion is one
6-connected instance, so masks, points (centres of mass) and counts all agree.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
from rich.progress import track
from scipy import ndimage

from weaklesion.data.dataset import instance_centres
from weaklesion.io import atomic_write, write_counts_csv, write_image, write_points_csv
from weaklesion.writing import output_folder

# Tissue classes of the phantom's anatomy, in the order of the intensity tables below.
AIR, SCALP, FLUID, GREY, WHITE, LESION = range(6)

# Mean intensity of each tissue class per contrast, before bias field and noise.
# FLAIR: lesions bright, fluid dark; T1: lesions dark, scalp bright; T2: fluid bright.
TISSUE_INTENSITY = {
    "flair": (0.0, 0.80, 0.10, 0.62, 0.48, 0.95),
    "t1": (0.0, 0.90, 0.20, 0.50, 0.75, 0.40),
    "t2": (0.0, 0.55, 0.95, 0.65, 0.45, 0.85),
}

# Lesion size strata in voxels (small, medium, large) and how often each is drawn.
SIZE_STRATA = ((3, 10), (11, 50), (51, 400))
STRATUM_PROBABILITY = (0.45, 0.35, 0.20)
TOUCHING_PROBABILITY = 0.25
NOISE_LEVEL = 0.03


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """One synthetic case.

    Attributes
    ----------
    image : ndarray, shape (C, Z, Y, X), float32
        One channel per requested contrast, intensities roughly in [0, 1.3].
    instances : ndarray, shape (Z, Y, X), int32
        0 for background, ``1..count`` for the voxels of each lesion (6-connected).
    points : ndarray, shape (count, 3), float64
        Centre of mass of each lesion in voxel coordinates (z, y, x); row ``k`` is
        instance ``k + 1``.
    count : int
        Number of lesions.
    spacing : tuple of 3 floats
        Voxel size in mm along (z, y, x).
    affine : ndarray, shape (4, 4)
        Maps voxel indices to world coordinates in mm (a diagonal of the spacing).
    channels : tuple of str
        Contrast name of each image channel.
    """

    image: np.ndarray
    instances: np.ndarray
    points: np.ndarray
    count: int
    spacing: tuple[float, float, float]
    affine: np.ndarray
    channels: tuple[str, ...]


def make_phantom_case(
    seed: int | Sequence[int],
    shape: Sequence[int] = (32, 64, 64),
    spacing: float | Sequence[float] = (1.0, 1.0, 1.0),
    n_lesions: int | None = None,
    channels: Sequence[str] = ("flair", "t1"),
    background: str = "synthetic",
) -> PhantomCase:
    """Make one deterministic synthetic brain volume with labelled lesions.

    Parameters
    ----------
    seed : int or sequence of ints
        Seed of the case; the same seed (and arguments) gives the same arrays.
    shape : sequence of 3 ints
        Volume shape (Z, Y, X) in voxels; each at least 16.
    spacing : float or sequence of 3 floats
        Voxel size in mm. Anatomy and lesion sizes in voxels are kept; the shapes are
        laid out in mm so anisotropic voxels give anisotropic-looking blobs.
    n_lesions : int, optional
        Number of lesions; drawn uniformly from 0..12 when ``None``.
    channels : sequence of str
        Contrasts to render, each one of ``"flair"``, ``"t1"``, ``"t2"``.
    background : {"synthetic", "mni152"}
        Anatomy: a brain-like ellipsoid with folds and ventricles drawn from the seed, or
        the MNI152 2009 template's grey and white matter (the 1 mm files nilearn ships,
        taken at 2 mm; nilearn must be installed: ``pip install 'weaklesion[brain]'``),
        stretched to ``shape`` with a random scale, shift and left-right flip.

    Returns
    -------
    PhantomCase
        Image, instance labels, centre points, count, spacing and affine.

    Notes
    -----
    Lesion sizes are drawn from three strata, 3-10, 11-50 and 51-400 voxels. Each
    lesion is the set of voxels with the lowest value of (distance to the centre of a
    randomly oriented ellipsoid) + (smoothed noise), restricted to white matter and
    cut to its largest 6-connected part. With probability 0.25 a lesion is grown
    against an earlier one (the two share a face); otherwise lesions keep at least one
    voxel of background between them. Lesion contrast is blurred over half a voxel
    (partial volume), and small lesions get a weaker contrast.

    Examples
    --------
    >>> case = make_phantom_case(0, shape=(24, 32, 32), n_lesions=3)
    >>> case.image.shape, case.instances.shape, case.points.shape, case.count
    ((2, 24, 32, 32), (24, 32, 32), (3, 3), 3)
    >>> sorted(set(case.instances.ravel().tolist()))
    [0, 1, 2, 3]
    """
    shape = tuple(int(size) for size in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape: got {shape}; expected 3 sizes (Z, Y, X), each at least 16")
    spacing_mm = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    if not np.all(np.isfinite(spacing_mm)) or np.any(spacing_mm <= 0):
        raise ValueError(f"spacing: got {spacing!r}; expected positive finite spacing in mm")
    if n_lesions is not None and n_lesions < 0:
        raise ValueError(f"n_lesions: got {n_lesions}; expected a non-negative integer")
    channels = tuple(channels)
    unknown = [name for name in channels if name not in TISSUE_INTENSITY]
    if unknown or not channels:
        raise ValueError(
            f"channels: got {channels!r}; expected names among {tuple(TISSUE_INTENSITY)}"
        )

    rng = np.random.default_rng(seed)
    if n_lesions is None:
        n_lesions = int(rng.integers(0, 13))
    if background == "synthetic":
        tissue, head = _anatomy(rng, shape, spacing_mm)
    elif background == "mni152":
        tissue, head = _mni152_anatomy(rng, shape)
    else:
        raise ValueError(f"background: got {background!r}; expected 'synthetic' or 'mni152'")
    instances = _place_lesions(rng, tissue == WHITE, n_lesions, spacing_mm)
    image = _render(rng, tissue, head, instances, spacing_mm, channels)
    points = instance_centres(instances)
    affine = np.diag([*spacing_mm, 1.0])
    return PhantomCase(
        image=image,
        instances=instances,
        points=points,
        count=len(points),
        spacing=tuple(float(s) for s in spacing_mm),
        affine=affine,
        channels=channels,
    )


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    n_cases: int = 48,
    seed: int = 0,
    shape: Sequence[int] = (32, 64, 64),
    spacing: float | Sequence[float] = (1.0, 1.0, 1.0),
    splits: Sequence[float] = (0.75, 0.125, 0.125),
    channels: Sequence[str] = ("flair", "t1"),
    n_lesions: int | None = None,
    background: str = "synthetic",
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a phantom dataset folder in the layout :func:`load_dataset` reads.

    Parameters
    ----------
    out_dir : str or path
        Folder to write, missing or empty unless ``overwrite``. It appears complete or
        not at all (see :func:`weaklesion.writing.output_folder`).
    n_cases : int
        Number of cases, named ``phantom_000``, ``phantom_001``, ...
    seed : int
        Dataset seed; case ``i`` is :func:`make_phantom_case` with seed ``(seed, i)``.
    shape, spacing, channels, n_lesions, background
        As for :func:`make_phantom_case`.
    splits : sequence of 3 numbers
        Sizes of the training, validation and test splits: fractions summing to 1, or
        case counts summing to ``n_cases``. Cases are assigned in order.
    progress : bool
        Show a progress bar.
    overwrite : bool
        Replace a folder ``out_dir`` that holds files, as a whole (never merged with it).

    Returns
    -------
    Path
        ``out_dir``, holding ``imagesTr/CASE_0000.nii.gz`` (one float32 file per
        channel), ``labelsTr/CASE.nii.gz`` (int16 instance ids), ``points.csv`` (voxel
        centres of mass), ``counts.csv`` and ``dataset.json`` (channel names, spacing,
        split).

    Notes
    -----
    The files are identical byte for byte for the same arguments.

    Examples
    --------
    >>> import tempfile
    >>> root = write_phantom_dataset(tempfile.mkdtemp(), n_cases=4, shape=(16, 20, 20),
    ...                              splits=(2, 1, 1), n_lesions=1)
    >>> sorted(path.name for path in (root / "imagesTr").iterdir())[:2]
    ['phantom_000_0000.nii.gz', 'phantom_000_0001.nii.gz']
    >>> json.loads((root / "dataset.json").read_text())["split"]["validation"]
    ['phantom_002']
    """
    sizes = _split_sizes(splits, n_cases)
    with output_folder(out_dir, overwrite) as root:
        case_ids = [f"phantom_{i:03d}" for i in range(n_cases)]
        points, counts = {}, {}
        indices = range(n_cases)
        if progress:
            indices = track(indices, description="Writing phantom cases")
        for i in indices:
            case = make_phantom_case((seed, i), shape, spacing, n_lesions, channels, background)
            for c, channel in enumerate(case.image):
                channel_path = root / "imagesTr" / f"{case_ids[i]}_{c:04d}.nii.gz"
                write_image(channel_path, channel, case.affine)
            labels = case.instances.astype(np.int16)
            write_image(root / "labelsTr" / f"{case_ids[i]}.nii.gz", labels, case.affine)
            points[case_ids[i]] = case.points
            counts[case_ids[i]] = case.count
        write_points_csv(root / "points.csv", points)
        write_counts_csv(root / "counts.csv", counts)
        ends = np.cumsum([0, *sizes])
        description = {
            "name": "weaklesion phantom",
            "description": "Synthetic brain MRI with white-matter lesions; labelsTr holds "
            "instance ids (0 background, 1..K one per lesion).",
            "channel_names": {str(c): name for c, name in enumerate(channels)},
            "file_ending": ".nii.gz",
            "numTraining": n_cases,
            "spacing": [float(s) for s in np.broadcast_to(np.asarray(spacing, float), (3,))],
            "split": {
                name: case_ids[ends[k] : ends[k + 1]]
                for k, name in enumerate(("training", "validation", "test"))
            },
            "phantom": {
                "seed": seed,
                "shape": [int(s) for s in shape],
                "n_lesions": n_lesions,
                "background": background,
            },
        }
        with atomic_write(root / "dataset.json", "w", encoding="utf-8") as handle:
            json.dump(description, handle, indent=2)
            handle.write("\n")
    return Path(out_dir)


def _split_sizes(splits: Sequence[float], n_cases: int) -> list[int]:
    """Training, validation and test sizes from fractions or counts."""
    values = np.asarray(splits, dtype=float)
    if n_cases < 0 or values.shape != (3,) or not np.all(np.isfinite(values)) or (values < 0).any():
        raise ValueError(f"splits: got {splits!r}; expected 3 non-negative fractions or counts")
    if np.all(values == np.round(values)) and values.sum() == n_cases and values.sum() > 1:
        return [int(v) for v in values]
    if abs(values.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"splits: got {splits!r}; expected fractions summing to 1 or counts summing "
            f"to n_cases={n_cases}"
        )
    validation, test = (round(f * n_cases) for f in values[1:])
    return [n_cases - validation - test, validation, test]


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma) -> np.ndarray:
    """Gaussian noise smoothed by ``sigma`` voxels and rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return field / max(float(field.std()), 1e-12)


def _anatomy(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue class of every voxel, and the head (everything but air)."""
    extent = np.asarray(shape) * spacing
    centre = (np.asarray(shape) - 1) / 2 + rng.uniform(-0.5, 0.5, 3)
    semi_axes = 0.40 * extent * rng.uniform(0.95, 1.05, 3)
    offsets = [
        ((np.arange(size) - c) * s).reshape([-1 if a == axis else 1 for a in range(3)])
        for axis, (size, c, s) in enumerate(zip(shape, centre, spacing, strict=True))
    ]
    radius = np.sqrt(sum((o / a) ** 2 for o, a in zip(offsets, semi_axes, strict=True)))

    # Smoothing widths are in mm so the anatomy looks the same at any spacing.
    outline = _smooth_noise(rng, shape, 6.0 / spacing)
    folds = _smooth_noise(rng, shape, 3.0 / spacing)
    sulci = _smooth_noise(rng, shape, 1.2 / spacing)
    head = radius + 0.03 * outline

    tissue = np.full(shape, AIR, dtype=np.uint8)
    tissue[head <= 1.18] = SCALP
    tissue[head <= 1.06] = FLUID
    tissue[head <= 1.0] = GREY
    tissue[(sulci > 1.1) & (head > 0.8) & (head <= 1.0)] = FLUID
    tissue[radius + 0.06 * folds < 0.72] = WHITE

    # Two lateral ventricles either side of the midline (the last axis is left-right).
    side = 0.16 * semi_axes[2] * rng.uniform(0.85, 1.15)
    ventricle_axes = semi_axes * np.array([0.25, 0.45, 0.12]) * rng.uniform(0.85, 1.15, 3)
    for sign in (-1.0, 1.0):
        shift = np.array([0.0, 0.05 * semi_axes[1], sign * side])
        inside = sum(
            ((o - d) / a) ** 2 for o, d, a in zip(offsets, shift, ventricle_axes, strict=True)
        )
        tissue[inside + 0.15 * folds < 1.0] = FLUID
    return tissue, radius < 1.1


def _mni152_anatomy(
    rng: np.random.Generator, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue classes from the MNI152 templates, resampled to ``shape``, and the head."""
    maps = _mni152_maps()
    brain = maps[2] > 0.5
    lower = np.array([np.flatnonzero(brain.any(axis=other)).min() for other in _others(3)])
    upper = np.array([np.flatnonzero(brain.any(axis=other)).max() for other in _others(3)])
    # Template voxels per output voxel: the brain fills 78 % of each axis, give or take.
    step = (upper - lower + 1) / (0.78 * np.asarray(shape)) * rng.uniform(0.95, 1.05, 3)
    centre = (lower + upper) / 2 + rng.uniform(-1.0, 1.0, 3)
    offset = centre - step * (np.asarray(shape) - 1) / 2
    grey, white, inside = (
        ndimage.affine_transform(m, step, offset, output_shape=shape, order=1) for m in maps
    )
    if rng.random() < 0.5:
        grey, white, inside = grey[..., ::-1], white[..., ::-1], inside[..., ::-1]
    fluid = np.clip(inside - grey - white, 0.0, None)
    tissue = np.full(shape, AIR, dtype=np.uint8)
    distance = ndimage.distance_transform_edt(inside <= 0.5)
    tissue[(distance > 2.0) & (distance <= 3.5)] = SCALP
    tissue[(distance > 0.0) & (distance <= 1.0)] = FLUID
    classes = np.array([FLUID, GREY, WHITE], dtype=np.uint8)
    brain = inside > 0.5
    tissue[brain] = classes[np.argmax(np.stack([fluid, grey, white])[:, brain], axis=0)]
    return tissue, distance <= 3.5


def _others(dims: int) -> list[tuple[int, ...]]:
    """For each axis, the other axes (to reduce over)."""
    return [tuple(a for a in range(dims) if a != axis) for axis in range(dims)]


MNI152_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@functools.lru_cache(maxsize=1)
def _mni152_maps() -> np.ndarray:
    """Grey matter, white matter and brain mask of MNI152 (3, Z, Y, X), 2 mm, read-only.

    The 1 mm templates that nilearn ships (``nilearn.datasets.MNI152_FILE_PATH`` and its
    grey- and white-matter siblings) are read directly: importing ``nilearn.datasets``
    takes seconds, reading the three files a fraction of one.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "background: 'mni152' needs nilearn, which is not installed; expected "
            "`pip install 'weaklesion[brain]'`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = {name: folder / file for name, file in MNI152_FILES.items()}
    if not all(path.is_file() for path in paths.values()):
        raise ValueError(
            f"background: nilearn's MNI152 templates are not in {folder}; expected nilearn>=0.10"
        )
    # nibabel's (x, y, z) becomes our (z, y, x), so axis 0 runs across axial slices.
    t1, grey, white = (
        np.asanyarray(nibabel.load(path).dataobj)[::2, ::2, ::2].T.astype(np.float32) / 255
        for path in paths.values()
    )
    brain = ndimage.binary_fill_holes(t1 > 0.2).astype(np.float32)
    maps = np.ascontiguousarray(np.stack([grey, white, brain]))
    maps.setflags(write=False)
    return maps


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _draw_volume(rng: np.random.Generator) -> int:
    """A lesion volume in voxels, from one of the size strata."""
    low, high = SIZE_STRATA[rng.choice(len(SIZE_STRATA), p=STRATUM_PROBABILITY)]
    if low > 50:
        return round(math.exp(rng.uniform(math.log(low), math.log(high))))
    return int(rng.integers(low, high + 1))


def _place_lesions(
    rng: np.random.Generator, allowed: np.ndarray, n_lesions: int, spacing: np.ndarray
) -> np.ndarray:
    """Instance labels of ``n_lesions`` lesions grown inside ``allowed``."""
    instances = np.zeros(allowed.shape, dtype=np.int32)
    if n_lesions == 0:
        return instances
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        raise ValueError("shape: the phantom has no white matter to place lesions in")
    voxel_volume = float(np.prod(spacing))
    centres, radii = [], []
    for label in range(1, n_lesions + 1):
        for _ in range(60):
            volume = _draw_volume(rng)
            radius_mm = (3 * volume * voxel_volume / (4 * math.pi)) ** (1 / 3)
            partner = 0
            if centres and rng.random() < TOUCHING_PROBABILITY:
                partner = int(rng.integers(1, len(centres) + 1))
                direction = rng.standard_normal(3)
                direction /= np.linalg.norm(direction)
                reach = 0.9 * (radii[partner - 1] + radius_mm)
                centre = centres[partner - 1] + direction * reach / spacing
            else:
                index = np.unravel_index(rng.choice(candidates), allowed.shape)
                centre = np.asarray(index, dtype=float) + rng.uniform(-0.5, 0.5, 3)
            placed = _grow_lesion(rng, allowed, instances, centre, volume, partner, spacing)
            if placed is not None:
                window, mask = placed
                instances[window][mask] = label
                centres.append(np.mean(np.nonzero(mask), axis=1) + [w.start for w in window])
                radii.append((3 * mask.sum() * voxel_volume / (4 * math.pi)) ** (1 / 3))
                break
        else:
            raise ValueError(
                f"n_lesions: could place only {label - 1} of {n_lesions} lesions in the "
                "white matter; expected fewer lesions or a larger shape"
            )
    return instances


def _grow_lesion(
    rng: np.random.Generator,
    allowed: np.ndarray,
    instances: np.ndarray,
    centre: np.ndarray,
    volume: int,
    partner: int,
    spacing: np.ndarray,
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Voxels of one new lesion near ``centre`` (window and mask), or None if it won't fit.

    With ``partner > 0`` the lesion must share a face with instance ``partner``; it never
    touches (even diagonally) any other instance.
    """
    shape = allowed.shape
    if np.any(centre < 0) or np.any(centre > np.asarray(shape) - 1):
        return None
    voxel_volume = float(np.prod(spacing))
    ratios = rng.uniform(0.55, 1.0, 3)
    ratios[0] = 1.0
    scale = (3 * volume * voxel_volume / (4 * math.pi * ratios.prod())) ** (1 / 3)
    semi_axes = ratios * scale
    rotation = _random_rotation(rng)

    half = np.ceil(1.8 * semi_axes.max() / spacing).astype(int) + 2
    lower = np.maximum(np.round(centre).astype(int) - half, 0)
    upper = np.minimum(np.round(centre).astype(int) + half + 1, shape)
    window = tuple(slice(lo, hi) for lo, hi in zip(lower, upper, strict=True))
    local_shape = tuple(upper - lower)

    offsets = np.stack(
        np.meshgrid(
            *[
                (np.arange(lo, hi) - c) * s
                for lo, hi, c, s in zip(lower, upper, centre, spacing, strict=True)
            ],
            indexing="ij",
        )
    )
    rotated = np.tensordot(rotation.T, offsets, axes=1)
    distance = np.sqrt(sum((rotated[a] / semi_axes[a]) ** 2 for a in range(3)))
    roughness = _smooth_noise(rng, local_shape, np.maximum(0.4 * semi_axes.min() / spacing, 0.7))
    score = distance + 0.3 * roughness

    # Other lesions block their 26-neighbourhood; look one voxel beyond the window.
    padded = tuple(
        slice(max(w.start - 1, 0), min(w.stop + 1, size))
        for w, size in zip(window, shape, strict=True)
    )
    near = instances[padded]
    others = (near > 0) & (near != partner)
    blocked = ndimage.binary_dilation(others, structure=np.ones((3, 3, 3), bool))
    inner = tuple(
        slice(w.start - p.start, w.start - p.start + n)
        for w, p, n in zip(window, padded, local_shape, strict=True)
    )
    eligible = allowed[window] & (instances[window] == 0) & ~blocked[inner]
    eligible &= score < 1.6
    if eligible.sum() < volume:
        return None
    flat = np.flatnonzero(eligible)
    chosen = flat[np.argpartition(score.ravel()[flat], volume - 1)[:volume]]
    mask = np.zeros(local_shape, dtype=bool)
    mask.ravel()[chosen] = True
    parts, n_parts = ndimage.label(mask)
    if n_parts > 1:
        mask = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    if mask.sum() < SIZE_STRATA[0][0]:
        return None
    if partner:
        grown = ndimage.binary_dilation(mask)
        if not np.any(grown & (instances[window] == partner)):
            return None
    return window, mask


def _bias_field(rng: np.random.Generator, shape: Sequence[int], strength: float) -> np.ndarray:
    """A smooth multiplicative field: exp of a random quadratic polynomial of position."""
    axes = [
        np.linspace(-1.0, 1.0, size).reshape([-1 if a == i else 1 for a in range(3)])
        for i, size in enumerate(shape)
    ]
    linear = rng.normal(0.0, strength, 3)
    quadratic = rng.normal(0.0, strength / 2, (3, 3))
    exponent = sum(linear[i] * axes[i] for i in range(3))
    exponent = exponent + sum(
        quadratic[i, j] * axes[i] * axes[j] for i in range(3) for j in range(i, 3)
    )
    return np.exp(exponent)


def _render(
    rng: np.random.Generator,
    tissue: np.ndarray,
    head: np.ndarray,
    instances: np.ndarray,
    spacing: np.ndarray,
    channels: tuple[str, ...],
) -> np.ndarray:
    """Intensities of each contrast: tissue means, texture, lesions, bias field, noise."""
    count = int(instances.max(initial=0))
    sizes = np.bincount(instances.ravel(), minlength=count + 1)
    # Partial volume: each lesion's share of a voxel, blurred over about half a voxel.
    # Small lesions get less contrast, as they do in real scans.
    contrast = rng.uniform(0.75, 1.0, count + 1) * np.minimum(1.0, 0.7 + 0.3 * sizes / 50)
    contrast[0] = 0.0
    share = ndimage.gaussian_filter(contrast[instances], 0.5 / spacing * spacing.min())
    texture = _smooth_noise(rng, tissue.shape, 1.5 / spacing)
    lesion_texture = _smooth_noise(rng, tissue.shape, 1.0 / spacing)

    image = np.empty((len(channels), *tissue.shape), dtype=np.float32)
    for c, name in enumerate(channels):
        table = np.asarray(TISSUE_INTENSITY[name])
        base = ndimage.gaussian_filter(table[tissue], 0.6)
        base *= 1.0 + 0.06 * texture * head
        lesion = table[LESION] * (1.0 + 0.05 * lesion_texture)
        signal = (1.0 - share) * base + share * lesion
        signal *= _bias_field(rng, tissue.shape, 0.12)
        real = signal + rng.normal(0.0, NOISE_LEVEL, tissue.shape)
        imaginary = rng.normal(0.0, NOISE_LEVEL, tissue.shape)
        image[c] = np.hypot(real, imaginary)
    return image
