"""Reading and writing images, points and counts."""

from __future__ import annotations

import gzip
import os

import nibabel
import numpy as np
import PIL.Image
import pytest
import tifffile
from nibabel.affines import apply_affine

from weaklesion import io
from weaklesion.io import (
    affine_spacing,
    image_suffix,
    parse_counts_csv,
    parse_points_csv,
    read_counts_csv,
    read_image,
    read_points_csv,
    write_counts_csv,
    write_image,
    write_points_csv,
)

RNG = np.random.default_rng(0)


def oblique_affine(dims: int) -> np.ndarray:
    """A rotated, anisotropic, translated voxel-to-world affine."""
    q, _ = np.linalg.qr(RNG.standard_normal((dims, dims)))
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = q @ np.diag(np.linspace(0.5, 2.0, dims))
    affine[:dims, dims] = RNG.uniform(-50, 50, dims)
    return affine


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_nifti_round_trip_keeps_values_dtype_and_affine(tmp_path, suffix, dtype):
    array = (RNG.uniform(0, 100, (4, 5, 6))).astype(dtype)
    affine = oblique_affine(3)
    path = tmp_path / f"scan{suffix}"
    write_image(path, array, affine)
    back, back_affine = read_image(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_affine, affine, atol=1e-5)
    # nibabel sees the same array and affine, so other tools do too.
    image = nibabel.load(path)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), array)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)


def test_nifti_gzip_is_deterministic(tmp_path):
    array = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    write_image(tmp_path / "a.nii.gz", array, np.eye(4))
    write_image(tmp_path / "b.nii.gz", array, np.eye(4))
    first = (tmp_path / "a.nii.gz").read_bytes()
    assert first == (tmp_path / "b.nii.gz").read_bytes()
    assert first[4:8] == b"\0\0\0\0"  # gzip time stamp
    assert gzip.decompress(first)[:4] == (348).to_bytes(4, "little")


def test_nifti_2d_and_channels(tmp_path):
    flat = RNG.standard_normal((5, 6)).astype(np.float32)
    affine2 = oblique_affine(2)
    write_image(tmp_path / "flat.nii.gz", flat, affine2)
    back, back_affine = read_image(tmp_path / "flat.nii.gz")
    np.testing.assert_array_equal(back, flat)
    assert back_affine.shape == (3, 3)
    np.testing.assert_allclose(back_affine, affine2, atol=1e-5)

    channels = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    write_image(tmp_path / "multi.nii", channels, np.eye(4))
    back, _ = read_image(tmp_path / "multi.nii")
    np.testing.assert_array_equal(back, channels)
    assert nibabel.load(tmp_path / "multi.nii").shape == (3, 4, 5, 2)
    with pytest.raises(ValueError, match="one channel for 2D"):
        write_image(tmp_path / "bad.nii", np.zeros((2, 4, 5)), np.eye(3))


def test_npy_round_trip_takes_geometry_from_spacing(tmp_path):
    array = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    write_image(tmp_path / "scan.npy", array, oblique_affine(3))
    back, affine = read_image(tmp_path / "scan.npy")
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(affine, np.eye(4))
    _, affine = read_image(tmp_path / "scan.npy", spacing=(2.0, 1.0, 0.5))
    np.testing.assert_array_equal(affine, np.diag([2.0, 1.0, 0.5, 1.0]))
    # Two spacings: a 2D image of 3 channels.
    back, affine = read_image(tmp_path / "scan.npy", spacing=(0.5, 0.5))
    assert back.shape == (3, 4, 5) and affine.shape == (3, 3)


@pytest.mark.parametrize(
    ("array", "dims"),
    [
        (RNG.standard_normal((3, 4, 5)).astype(np.float32), 3),
        (RNG.integers(0, 60000, (7, 9)).astype(np.uint16), 2),
        (RNG.integers(0, 255, (3, 7, 9)).astype(np.uint8), 2),
        (RNG.integers(0, 255, (4, 5, 3)).astype(np.uint8), 3),
    ],
)
def test_tiff_round_trip_keeps_affine(tmp_path, array, dims):
    affine = oblique_affine(dims)
    write_image(tmp_path / "image.tif", array, affine)
    back, back_affine = read_image(tmp_path / "image.tif")
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(back_affine, affine)


def test_foreign_rgb_tiff_is_channel_first(tmp_path):
    rgb = RNG.integers(0, 255, (6, 7, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "photo.tiff", rgb, photometric="rgb", metadata=None)
    back, affine = read_image(tmp_path / "photo.tiff", spacing=0.25)
    np.testing.assert_array_equal(back, np.moveaxis(rgb, -1, 0))
    np.testing.assert_array_equal(affine, np.diag([0.25, 0.25, 1.0]))


@pytest.mark.parametrize(
    "array",
    [
        RNG.integers(0, 255, (7, 9)).astype(np.uint8),
        RNG.integers(256, 65535, (7, 9)).astype(np.uint16),
        RNG.integers(0, 255, (3, 7, 9)).astype(np.uint8),
        RNG.integers(0, 255, (4, 7, 9)).astype(np.uint8),
    ],
)
def test_png_round_trip_grey_and_colour(tmp_path, array):
    affine = np.array([[0.5, 0.0, 10.0], [0.0, 0.7, -3.0], [0.0, 0.0, 1.0]])
    write_image(tmp_path / "picture.png", array, affine)
    back, back_affine = read_image(tmp_path / "picture.png")
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(back_affine, affine)


def test_foreign_png_uses_spacing_and_is_channel_first(tmp_path):
    rgb = RNG.integers(0, 255, (5, 6, 3)).astype(np.uint8)
    PIL.Image.fromarray(rgb).save(tmp_path / "photo.png")
    back, affine = read_image(tmp_path / "photo.png", spacing=(0.5, 2.0))
    np.testing.assert_array_equal(back, np.moveaxis(rgb, -1, 0))
    np.testing.assert_array_equal(affine, np.diag([0.5, 2.0, 1.0]))
    grey, affine = read_image(tmp_path / "photo.png")  # no spacing: 1 mm
    assert grey.shape == (3, 5, 6) and affine.shape == (3, 3)


def test_png_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="array: has dtype float32"):
        write_image(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="PNG holds a 2D image"):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"expected integers in \[0, 255\]"):
        write_image(tmp_path / "a.png", np.full((3, 4, 4), 300), np.eye(3))
    assert not (tmp_path / "a.png").exists()


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "image.tif"
    write_image(path, np.ones((4, 4), np.uint8))
    before = path.read_bytes()

    def broken_sync(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_sync)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, np.zeros((4, 4), np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["image.tif"]


def test_bad_paths_and_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"scan\.jpg: unknown image type"):
        image_suffix(tmp_path / "scan.jpg")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken\.nii\.gz: cannot be read"):
        read_image(broken)
    with pytest.raises(ValueError, match=r"affine: has shape \(2, 2\)"):
        write_image(tmp_path / "a.npy", np.zeros((3, 3)), np.eye(2))
    with pytest.raises(ValueError, match="array: has shape"):
        write_image(tmp_path / "a.npy", np.zeros((3, 3)), np.eye(4))


def test_affine_spacing_is_column_length():
    affine = oblique_affine(3)
    np.testing.assert_allclose(affine_spacing(affine), np.linspace(0.5, 2.0, 3))


def test_world_points_convert_through_the_inverse_affine(tmp_path):
    affines = {"a": oblique_affine(3), "b": oblique_affine(3)}
    world = {case: RNG.uniform(-40, 40, (4, 3)) for case in affines}
    lines = ["case,z,y,x,space"]
    lines += [f"{c},{z!r},{y!r},{x!r},world" for c in world for z, y, x in world[c].tolist()]
    lines += ["a,1,2,3,voxel", "a,4,5,6,"]
    path = tmp_path / "points.csv"
    path.write_text("\n".join(lines) + "\n")
    points = read_points_csv(path, affines)
    for case in affines:
        expected = apply_affine(np.linalg.inv(affines[case]), world[case])
        np.testing.assert_allclose(points[case][:4], expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(points["a"][4:], [[1, 2, 3], [4, 5, 6]])


def test_points_round_trip_in_voxel_and_world_space(tmp_path):
    points = {"a": RNG.uniform(0, 30, (5, 3)), "empty": np.zeros((0, 3)), "b": RNG.random((1, 3))}
    affines = {case: oblique_affine(3) for case in points}
    write_points_csv(tmp_path / "voxel.csv", points)
    back = read_points_csv(tmp_path / "voxel.csv")
    assert list(back) == list(points)
    for case in points:
        np.testing.assert_array_equal(back[case], points[case])  # exact: repr of floats
    write_points_csv(tmp_path / "world.csv", points, affines)
    assert "world" in (tmp_path / "world.csv").read_text()
    back = read_points_csv(tmp_path / "world.csv", affines)
    for case in points:
        np.testing.assert_allclose(back[case], points[case], atol=1e-9)
        assert back[case].shape == points[case].shape


def test_points_2d(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("x,case,y,note\n3,a,4,ok\n1.5,a,2.5,\n")
    np.testing.assert_array_equal(read_points_csv(path)["a"], [[4, 3], [2.5, 1.5]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("case,z,y,x\na,1,2,3\nb,1,2,abc\n", "points.csv, row 3, field 'x': 'abc' is not a number"),
        ("case,z,y,x\na,1,nan,3\n", "points.csv, row 2, field 'y': 'nan' is not a finite number"),
        ("case,z,y,x\na,1,,3\n", "points.csv, row 2, field 'y': is empty; expected a number"),
        ("case,z,y,x\n,1,2,3\n", "points.csv, row 2, field 'case': is empty"),
        ("case,z,y\na,1,2\n", "points.csv, row 1: header lacks column 'x'"),
        ("case,z,y,x,space\na,1,2,3,mm\n", "points.csv, row 2, field 'space': 'mm' is not"),
        ("case,z,y,x,space\na,1,2,3,world\n", "points.csv, row 2, field 'space': 'world' coo"),
        ("case,z,y,x\n\na,1,2,3,4\n", "points.csv, row 3: has 5 fields but the header has 4"),
    ],
)
def test_malformed_point_rows_name_file_row_and_field(tmp_path, text, message):
    path = tmp_path / "points.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        read_points_csv(path)
    assert str(error.value).startswith(str(path) + message.removeprefix("points.csv"))
    assert "\n" not in str(error.value)


def test_all_point_problems_are_collected(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("case,z,y,x\na,1,2,x1\nb,1,2,3\nc,y2,2,3\nd,1,2,inf\n")
    points, rows, problems = parse_points_csv(path)
    assert [p.split(",")[1] for p in problems] == [" row 2", " row 4", " row 5"]
    assert list(points) == ["b"] and rows == {"b": [3]}
    np.testing.assert_array_equal(points["b"], [[1, 2, 3]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("case,count\na,-1\n", "row 2, field 'count': '-1' is negative"),
        ("case,count\na,1\nb,2.5\n", "row 3, field 'count': '2.5' is not a whole number"),
        ("case,count\na,three\n", "row 2, field 'count': 'three' is not a number"),
        ("case,count\na,1\na,2\n", "row 3, field 'case': 'a' already has a count on row 2"),
        ("case,number\na,1\n", "row 1: header lacks column 'count'"),
    ],
)
def test_malformed_count_rows_name_file_row_and_field(tmp_path, text, message):
    path = tmp_path / "counts.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        read_counts_csv(path)
    assert str(error.value).startswith(f"{path}, row ")


def test_counts_round_trip_and_whole_floats(tmp_path):
    write_counts_csv(tmp_path / "counts.csv", {"a": 3, "b": 0, "c": 12})
    assert read_counts_csv(tmp_path / "counts.csv") == {"a": 3, "b": 0, "c": 12}
    (tmp_path / "more.csv").write_text("count,case\n3.0,a\n-2,b\n2.5,c\n")
    counts, rows, problems = parse_counts_csv(tmp_path / "more.csv")
    assert counts == {"a": 3} and rows == {"a": 2} and len(problems) == 2
    with pytest.raises(ValueError, match="counts: case 'x'"):
        write_counts_csv(tmp_path / "bad.csv", {"x": -1})


@pytest.mark.parametrize("name", ["scan.nii.gz", "flat.nii", "scan.tif", "scan.npy"])
def test_read_affine_matches_read_image(tmp_path, name):
    dims = 2 if name.startswith("flat") else 3
    write_image(tmp_path / name, np.zeros((3,) * dims, np.float32), oblique_affine(dims))
    np.testing.assert_array_equal(
        io.read_affine(tmp_path / name, 0.5), read_image(tmp_path / name, 0.5)[1]
    )
