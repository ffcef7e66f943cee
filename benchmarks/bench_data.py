"""Speed of the data layer: phantom generation, image writing and reading, dataset checks.

1. ``make_phantom_case`` at the default 32 x 64 x 64 (synthetic and, when nilearn is
   installed, MNI152 anatomy) against its budget of 0.5 s per case.
2. ``write_image`` to ``.nii.gz`` (gzip level 1 as nibabel, no time stamp, temporary
   file, fsync, rename) against ``nibabel.save``; ``read_image`` (which reads the gzip
   stream to its end to check its CRC) against ``np.asanyarray(nibabel.load(path).dataobj)``,
   both on one phantom channel.
3. ``check_dataset`` on a 48-case phantom dataset (2 channels + mask per case) against
   the floor of reading every image once with nibabel; ``load_dataset`` (no image read)
   is timed too.

Times are medians of several repeats, ``ratio`` = baseline / ours (above 1: ours is
faster). The machine is shared, so the load average at the end of the run is recorded.

Run: ``.venv/bin/python -m benchmarks.bench_data``; writes
``benchmarks/results/data.json``.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel
import numpy as np

from benchmarks.timing import median_time
from weaklesion.data import check_dataset, load_dataset, make_phantom_case, write_phantom_dataset
from weaklesion.io import atomic_write, read_image, write_image

RESULTS = Path(__file__).parent / "results" / "data.json"
BUDGET_S = 0.5


def time_phantom(background: str) -> float:
    """Median seconds of one case, a new seed each call."""
    seeds = itertools.count()
    return median_time(lambda: make_phantom_case(next(seeds), background=background))


def phantom_cases() -> list[dict]:
    backgrounds = ["synthetic"]
    if importlib.util.find_spec("nilearn") is not None:
        backgrounds.append("mni152")
    results = []
    for background in backgrounds:
        seconds = time_phantom(background)
        results.append(
            {
                "name": f"make_phantom_case 32x64x64, {background}",
                "ours_s": seconds,
                "budget_s": BUDGET_S,
                "ratio": BUDGET_S / seconds,
            }
        )
    return results


def image_cases(folder: Path) -> list[dict]:
    case = make_phantom_case(0)
    channel = case.image[0]
    ours_path, theirs_path = folder / "ours.nii.gz", folder / "theirs.nii.gz"
    image = nibabel.Nifti1Image(channel, case.affine)
    write_s = median_time(lambda: write_image(ours_path, channel, case.affine))
    save_s = median_time(lambda: nibabel.save(image, theirs_path))
    read_s = median_time(lambda: read_image(ours_path))
    load_s = median_time(lambda: np.asanyarray(nibabel.load(ours_path).dataobj))
    return [
        {
            "name": "write_image .nii.gz vs nibabel.save",
            "ours_s": write_s,
            "baseline_s": save_s,
            "ratio": save_s / write_s,
            "ours_bytes": ours_path.stat().st_size,
            "baseline_bytes": theirs_path.stat().st_size,
        },
        {
            "name": "read_image .nii.gz vs nibabel.load dataobj",
            "ours_s": read_s,
            "baseline_s": load_s,
            "ratio": load_s / read_s,
        },
    ]


def dataset_cases(folder: Path) -> list[dict]:
    start = time.perf_counter()
    root = write_phantom_dataset(folder / "phantom", n_cases=48)
    write_s = time.perf_counter() - start
    files = sorted((root / "imagesTr").iterdir()) + sorted((root / "labelsTr").iterdir())
    problems = check_dataset(root)
    check_s = median_time(lambda: check_dataset(root), repeats=3)
    floor_s = median_time(
        lambda: [np.asanyarray(nibabel.load(path).dataobj) for path in files], repeats=3
    )
    load_s = median_time(lambda: load_dataset(root), repeats=3)
    return [
        {
            "name": "check_dataset, 48 phantom cases vs reading every file with nibabel",
            "files": len(files),
            "problems": len(problems),
            "ours_s": check_s,
            "baseline_s": floor_s,
            "ratio": floor_s / check_s,
        },
        {"name": "load_dataset, 48 phantom cases (no image read)", "ours_s": load_s},
        {"name": "write_phantom_dataset, 48 cases (once)", "ours_s": write_s},
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        results = {
            "machine": f"{platform.machine()}, Python {platform.python_version()}, shared "
            "2-core CPU",
            "statistic": "median seconds",
            "phantom": phantom_cases(),
            "images": image_cases(folder),
            "dataset": dataset_cases(folder),
            "load_average_after": os.getloadavg()[0],
        }
    with atomic_write(RESULTS) as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
