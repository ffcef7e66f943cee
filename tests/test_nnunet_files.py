"""nnU-Net probabilities (.npz in SimpleITK's axis order, geometry in the .pkl beside
them) are read in the right order and frame: lesions planted in a NIfTI with an
anisotropic, oblique affine are found at their world coordinates."""

from __future__ import annotations

import csv
import os
import pickle

import nibabel
import numpy as np
import pytest
from nibabel.orientations import io_orientation
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.io import read_nnunet_probabilities

runner = CliRunner()
PLANTED = np.array([[4.3, 5.6, 9.2], [13.7, 15.1, 4.4], [9.0, 18.4, 12.6]])  # voxels i, j, k
SHAPE = (18, 22, 16)
SIGMA = 1.5


def oblique_affine() -> np.ndarray:
    """Voxels of 0.8 x 1.3 x 2.5 mm, axes permuted and flipped (far from RAS), rotated
    about all three axes, origin shifted."""
    a, b, c = 0.3, -0.2, 0.5
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine = np.eye(4)
    turn = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]])
    affine[:3, :3] = rz @ ry @ rx @ turn @ np.diag([0.8, 1.3, 2.5])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


def lesion_map() -> np.ndarray:
    """(I, J, K) probabilities: a Gaussian blob of peak 0.9 at each planted point."""
    grid = np.indices(SHAPE, dtype=float).transpose(1, 2, 3, 0)
    values = np.zeros(SHAPE)
    for point in PLANTED:
        values += 0.9 * np.exp(-np.sum((grid - point) ** 2, axis=-1) / (2 * SIGMA**2))
    return values


def sitk_geometry(affine: np.ndarray) -> dict:
    """What SimpleITK reports for a NIfTI with this affine: LPS spacing, origin and
    direction (checked against SimpleITK 2.5.7's ReadImage)."""
    to_lps = np.diag([-1.0, -1.0, 1.0])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = to_lps @ affine[:3, :3] / spacing
    return {
        "spacing": tuple(spacing.tolist()),
        "origin": tuple((to_lps @ affine[:3, 3]).tolist()),
        "direction": tuple(direction.ravel().tolist()),
    }


def write_nnunet_output(folder, properties: dict | None, array: np.ndarray, nifti=None):
    """CASE.npz as nnU-Net writes it: (classes, k, j, i), and CASE.pkl beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    probabilities = np.stack([1 - array, array]).transpose(0, 3, 2, 1).astype(np.float32)
    np.savez_compressed(folder / "case.npz", probabilities=probabilities)
    if properties is not None:
        with open(folder / "case.pkl", "wb") as handle:
            pickle.dump(properties, handle)
    if nifti is not None:
        nibabel.save(nifti, folder / "case.nii.gz")
    return folder / "case.npz"


def detected_world_and_voxels(npz, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    out = tmp_path / f"{npz.parent.name}.csv"
    arguments = ["detect", npz, "--sigma", SIGMA, "--threshold", 0.3, "--out", out]
    result = runner.invoke(app, [str(argument) for argument in arguments])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    world = np.array([[float(r[f"world_{a}_mm"]) for a in "xyz"] for r in rows])
    voxels = np.array([[float(r[a]) for a in "zyx"] for r in rows])
    order = np.lexsort(voxels.T[::-1])
    return world[order], voxels[order]


def assert_planted_found(world: np.ndarray, voxels: np.ndarray, affine: np.ndarray) -> None:
    planted = PLANTED[np.lexsort(PLANTED.T[::-1])]
    assert len(world) == len(planted)
    # World coordinates within half a voxel of the planted lesions, along each voxel axis.
    back = (np.linalg.inv(affine) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
    assert np.abs(back - planted).max() < 0.5
    assert np.abs(voxels - planted).max() < 0.5


@pytest.fixture
def image():
    affine = oblique_affine()
    return nibabel.Nifti1Image(lesion_map().astype(np.float32), affine), affine


def test_simpleitk_geometry_in_the_pkl_gives_world_coordinates(image, tmp_path):
    _, affine = image
    properties = {
        "sitk_stuff": sitk_geometry(affine),
        "spacing": list(np.linalg.norm(affine[:3, :3], axis=0)[::-1]),
        "shape_before_cropping": tuple(np.int64(s) for s in SHAPE[::-1]),
        "bbox_used_for_cropping": [[np.int64(0), np.int64(s)] for s in SHAPE[::-1]],
    }
    npz = write_nnunet_output(tmp_path / "sitk", properties, lesion_map())
    probabilities, read_affine = read_nnunet_probabilities(npz)
    assert probabilities.shape == (2, *SHAPE)
    np.testing.assert_allclose(read_affine, affine, atol=1e-9)
    assert_planted_found(*detected_world_and_voxels(npz, tmp_path), affine)


def test_nibabel_geometry_in_the_pkl_gives_world_coordinates(image, tmp_path):
    _, affine = image
    npz = write_nnunet_output(
        tmp_path / "nibabel", {"nibabel_stuff": {"original_affine": affine}}, lesion_map()
    )
    assert_planted_found(*detected_world_and_voxels(npz, tmp_path), affine)


def test_an_image_reoriented_by_nnunet_is_turned_back(image, tmp_path):
    nifti, affine = image
    reoriented = nifti.as_reoriented(io_orientation(affine))
    assert not np.allclose(reoriented.affine, affine)  # the test turns the image
    properties = {
        "nibabel_stuff": {"original_affine": affine, "reoriented_affine": reoriented.affine}
    }
    npz = write_nnunet_output(tmp_path / "ras", properties, np.asarray(reoriented.dataobj))
    assert_planted_found(*detected_world_and_voxels(npz, tmp_path), affine)


def test_the_matching_nifti_stands_in_for_a_missing_pkl(image, tmp_path):
    nifti, affine = image
    npz = write_nnunet_output(tmp_path / "nifti", None, lesion_map(), nifti=nifti)
    assert_planted_found(*detected_world_and_voxels(npz, tmp_path), affine)


def test_without_pkl_or_nifti_the_npz_is_refused(tmp_path):
    npz = write_nnunet_output(tmp_path / "bare", None, lesion_map())
    result = runner.invoke(app, ["detect", str(npz), "--out", str(tmp_path / "found.csv")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert str(npz) in line and "case.pkl" in line
    assert not os.path.exists(tmp_path / "found.csv")


def test_a_pkl_that_would_run_code_is_refused(tmp_path):
    npz = write_nnunet_output(tmp_path / "evil", {"sitk_stuff": os.getcwd}, lesion_map())
    result = runner.invoke(app, ["count", str(npz)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(npz.with_suffix(".pkl")) in result.output and "refusing" in result.output
