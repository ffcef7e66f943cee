"""The truth side of evaluation: lesion sizes from binary or instance-labelled masks."""

from __future__ import annotations

import numpy as np
import pytest

from weaklesion.data.truth import lesion_truth
from weaklesion.io import read_image, write_image, write_points_csv
from weaklesion.metrics import evaluate_detections


def planted_dataset(root, binary: bool):
    """Two cases with separate ball-shaped lesions of radius 1 to 4 voxels; the masks hold
    instance ids, or only 0 and 1."""
    rng = np.random.default_rng(3)
    shape = (20, 40, 40)
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    points = {}
    for case in ("a", "b"):
        mask = np.zeros(shape, np.int16)
        centres = np.array([[6, 8, 8], [6, 30, 10], [14, 10, 30], [13, 28, 28], [10, 20, 20]])
        radii = rng.permutation([1, 2, 3, 4, 2])
        for label, (centre, radius) in enumerate(zip(centres, radii, strict=True), 1):
            mask[np.sum((grid - centre) ** 2, axis=-1) <= radius**2] = label
        points[case] = centres.astype(float)
        image = rng.normal(size=shape).astype(np.float32)
        write_image(root / "imagesTr" / f"{case}_0000.nii.gz", image, np.diag([2.0, 1, 1, 1]))
        labels = (mask > 0).astype(np.uint8) if binary else mask
        write_image(root / "labelsTr" / f"{case}.nii.gz", labels, np.diag([2.0, 1, 1, 1]))
    write_points_csv(root / "points.csv", points)
    return root


@pytest.fixture(scope="module")
def instance_and_binary(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth")
    return planted_dataset(root / "instances", False), planted_dataset(root / "binary", True)


def test_binary_masks_give_each_lesion_its_own_size(instance_and_binary):
    labelled, binary = instance_and_binary
    points, sizes, _ = lesion_truth(labelled)
    _, binary_sizes, _ = lesion_truth(binary)
    for case, centres in points.items():
        instances, _ = read_image(labelled / "labelsTr" / f"{case}.nii.gz")
        under = [instances[tuple(np.floor(p + 0.5).astype(int))] for p in centres]
        expected = [int(np.sum(instances == label)) if label else 0 for label in under]
        assert sizes[case].tolist() == expected
        assert binary_sizes[case].tolist() == expected


def test_recall_by_size_is_the_same_from_binary_and_instance_masks(instance_and_binary):
    labelled, binary = instance_and_binary
    points, sizes, _ = lesion_truth(labelled)
    _, binary_sizes, _ = lesion_truth(binary)
    # Find every other lesion, so that recall differs between strata.
    found = {case: (centres[::2], np.ones(len(centres[::2]))) for case, centres in points.items()}
    strata = {"small": (1, 20), "medium": (21, 100), "large": (101, np.inf)}
    report = evaluate_detections(found, points, 2.0, truth_sizes=sizes, strata=strata, n_boot=10)
    from_binary = evaluate_detections(
        found, points, 2.0, truth_sizes=binary_sizes, strata=strata, n_boot=10
    )
    assert from_binary["recall_by_size"] == report["recall_by_size"]
    counts = report["recall_by_size"]["n_truth"]
    assert sum(counts.values()) == sum(len(c) for c in points.values())
    assert max(counts.values()) < sum(counts.values())  # the lesions span several strata
