"""Dataset folders and datalists: loading, checking, and normalisation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import PIL.Image
import pytest
from nibabel.affines import apply_affine

from weaklesion.data.dataset import Case, check_dataset, load_dataset
from weaklesion.data.normalize import zscore
from weaklesion.data.phantom import make_phantom_case, write_phantom_dataset
from weaklesion.io import read_image, write_counts_csv, write_image, write_points_csv

SHAPE = (16, 24, 24)
N_CASES = 4


@pytest.fixture(scope="module")
def phantom_root(phantom_dataset):
    return phantom_dataset(n_cases=N_CASES, shape=SHAPE, splits=(2, 1, 1), n_lesions=3)


@pytest.fixture
def copy(phantom_root, tmp_path):
    return shutil.copytree(phantom_root, tmp_path / "dataset")


def test_phantom_dataset_loads_with_its_labels_and_split(phantom_root):
    dataset = load_dataset(phantom_root)
    ids = [f"phantom_{i:03d}" for i in range(N_CASES)]
    assert [case.id for case in dataset] == ids
    assert dataset.channel_names == ("flair", "t1") and dataset.spacing == (1.0, 1.0, 1.0)
    assert dataset.split == {"training": ids[:2], "validation": ids[2:3], "test": ids[3:]}
    assert [case.id for case in dataset.split_cases("validation")] == ["phantom_002"]
    for i, case in enumerate(dataset):
        truth = make_phantom_case((0, i), SHAPE, n_lesions=3)
        assert [p.name for p in case.channels] == [
            f"{case.id}_0000.nii.gz",
            f"{case.id}_0001.nii.gz",
        ]
        assert case.mask.name == f"{case.id}.nii.gz"
        np.testing.assert_array_equal(case.points, truth.points)
        assert case.count == truth.count == 3
        arrays = case.load()
        np.testing.assert_array_equal(arrays.image, truth.image)
        assert arrays.image.dtype == np.float32
        np.testing.assert_array_equal(arrays.mask, truth.instances)
        np.testing.assert_allclose(arrays.affine, truth.affine)
    assert dataset["phantom_001"] is dataset[1]
    with pytest.raises(KeyError, match="ghost"):
        dataset["ghost"]


def test_phantom_dataset_is_byte_for_byte_deterministic(phantom_root, tmp_path):
    again = write_phantom_dataset(
        tmp_path, n_cases=N_CASES, shape=SHAPE, splits=(2, 1, 1), n_lesions=3
    )
    files = sorted(p.relative_to(phantom_root) for p in phantom_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (phantom_root / name).read_bytes() == (again / name).read_bytes(), name


def test_sound_phantom_dataset_has_no_problems(phantom_root):
    assert check_dataset(phantom_root) == []


def test_every_corruption_is_reported_at_once(copy):
    root = copy
    (root / "imagesTr" / "phantom_001_0001.nii.gz").unlink()
    write_image(
        root / "labelsTr" / "phantom_002.nii.gz", np.zeros((16, 24, 20), np.int16), np.eye(4)
    )
    points = (root / "points.csv").read_text().splitlines()
    first = points[1].split(",")
    points[1] = ",".join([first[0], "99.0", *first[2:]])  # row 2: phantom_000, z far outside
    points.append("ghost,1,1,1")
    (root / "points.csv").write_text("\n".join(points) + "\n")
    (root / "counts.csv").write_text(
        "case,count\nphantom_000,-1\nphantom_001,2.5\nphantom_002,3\nphantom_003,3\nghost,2\n"
    )
    image, affine = read_image(root / "imagesTr" / "phantom_003_0000.nii.gz")
    image[3, 4, 5] = np.nan
    write_image(root / "imagesTr" / "phantom_003_0000.nii.gz", image, affine)

    problems = check_dataset(root)
    expected = [
        f"{root}/imagesTr/phantom_001_0001.nii.gz: missing (channel 1 of case 'phantom_001'",
        f"{root}/labelsTr/phantom_002.nii.gz: has spatial shape (16, 24, 20); expected "
        f"(16, 24, 24)",
        f"{root}/points.csv, row 2: point (99.0, ",
        f"{root}/points.csv, row {len(points)}, field 'case': 'ghost' has no image",
        f"{root}/counts.csv, row 2, field 'count': '-1' is negative",
        f"{root}/counts.csv, row 3, field 'count': '2.5' is not a whole number",
        f"{root}/counts.csv, row 6, field 'case': 'ghost' has no image",
        f"{root}/imagesTr/phantom_003_0000.nii.gz: 1 voxel(s) are NaN or infinite",
    ]
    for message in expected:
        assert sum(p.startswith(message) for p in problems) == 1, (message, problems)
    assert len(problems) == len(expected), problems
    assert all("\n" not in p for p in problems)
    # Without reading images, loading sees the layout and label problems only.
    with pytest.raises(ValueError, match=r"missing .* \(and 4 more problem\(s\); check_dataset"):
        load_dataset(root)


def test_label_disagreements_and_file_problems(copy):
    root = copy
    write_counts_csv(root / "counts.csv", {"phantom_000": 2, "phantom_001": 3})
    first, affine = read_image(root / "imagesTr" / "phantom_001_0000.nii.gz")
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    write_image(root / "imagesTr" / "phantom_001_0001.nii.gz", first, shifted)
    mask, _ = read_image(root / "labelsTr" / "phantom_002.nii.gz")
    mask_path = root / "labelsTr" / "phantom_002.nii.gz"
    write_image(mask_path, mask.astype(np.float32) * 0.5, affine)
    (root / "imagesTr" / "phantom_003_0001.nii.gz").write_bytes(b"garbage")
    (root / "imagesTr" / "notes.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"phantom_002.nii.gz: has fractional values"):
        Case("x", (root / "imagesTr" / "phantom_002_0000.nii.gz",), mask=mask_path).load()
    problems = check_dataset(root)
    expected = [
        f"{root}/counts.csv, row 2, field 'count': case 'phantom_000' has count 2 but 3 point(s)",
        f"{root}/imagesTr/phantom_001_0001.nii.gz: its affine differs from that of "
        f"{root}/imagesTr/phantom_001_0000.nii.gz",
        f"{root}/labelsTr/phantom_002.nii.gz: has negative or fractional values",
        f"{root}/imagesTr/phantom_003_0001.nii.gz: cannot be read as .nii.gz",
        f"{root}/imagesTr/notes.nii.gz: name lacks a channel number; expected CASE_0000.nii.gz",
    ]
    for message in expected:
        assert sum(p.startswith(message) for p in problems) == 1, (message, problems)
    assert len(problems) == len(expected), problems


def test_channel_count_and_spacing_checks_without_and_with_dataset_json(copy):
    root = copy
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").unlink()
    image, affine = read_image(root / "imagesTr" / "phantom_000_0000.nii.gz")
    write_image(root / "imagesTr" / "phantom_000_0002.nii.gz", image, affine)
    problems = check_dataset(root)
    assert len(problems) == 3  # every other case lacks a third channel file
    assert all("_0002.nii.gz: missing (channel 2 of case" in p for p in problems)
    with pytest.raises(ValueError, match=r"_0002.nii.gz: missing .* \(and 2 more"):
        load_dataset(root)
    (root / "imagesTr" / "phantom_000_0002.nii.gz").unlink()
    meta["spacing"] = [2.0, 1.0, 1.0]
    (root / "dataset.json").write_text(json.dumps(meta))
    problems = check_dataset(root)
    assert len(problems) == N_CASES
    assert problems[0] == (
        f"{root}/imagesTr/phantom_000_0000.nii.gz: voxel spacing (1.0, 1.0, 1.0) mm differs "
        f"from the declared (2.0, 1.0, 1.0) of {root}"
    )


def test_malformed_csv_row_is_named_and_load_refuses(copy):
    (copy / "points.csv").write_text("case,z,y,x\nphantom_000,1,2,abc\n")
    problems = check_dataset(copy)
    assert f"{copy}/points.csv, row 2, field 'x': 'abc' is not a number" in problems
    with pytest.raises(ValueError, match=r"points.csv, row 2, field 'x': 'abc' is not a number"):
        load_dataset(copy)


def datalist_for(root):
    """A MONAI-style datalist describing the phantom folder's cases by hand."""
    meta = json.loads((root / "dataset.json").read_text())
    points = {}
    for line in (root / "points.csv").read_text().splitlines()[1:]:
        case, *coordinates = line.split(",")
        points.setdefault(case, []).append([float(c) for c in coordinates])
    counts = dict(line.split(",") for line in (root / "counts.csv").read_text().splitlines()[1:])
    datalist = {"channel_names": meta["channel_names"], "spacing": meta["spacing"]}
    for section, ids in meta["split"].items():
        datalist[section] = [
            {
                "image": [f"imagesTr/{case}_0000.nii.gz", f"imagesTr/{case}_0001.nii.gz"],
                "label": f"labelsTr/{case}.nii.gz",
                "points": points[case],
                "count": int(counts[case]),
            }
            for case in ids
        ]
    return datalist


def test_datalist_loads_to_the_same_cases_as_the_folder(phantom_root):
    path = phantom_root / "datalist.json"
    path.write_text(json.dumps(datalist_for(phantom_root)))
    try:
        folder, listed = load_dataset(phantom_root), load_dataset(path)
        assert check_dataset(path) == []
    finally:
        path.unlink()
    assert listed.channel_names == folder.channel_names and listed.spacing == folder.spacing
    assert listed.split == folder.split
    assert [c.id for c in listed] == [c.id for c in folder]
    for a, b in zip(folder, listed, strict=True):
        assert [p.resolve() for p in a.channels] == [p.resolve() for p in b.channels]
        assert a.mask.resolve() == b.mask.resolve()
        np.testing.assert_allclose(a.points, b.points, rtol=1e-15)
        assert a.count == b.count
        np.testing.assert_array_equal(a.load().image, b.load().image)


def test_datalist_problems_are_named(tmp_path):
    image = np.zeros((6, 7, 8), np.float32)
    write_image(tmp_path / "a_0000.nii.gz", image)
    write_image(tmp_path / "b_0000.nii.gz", image)
    datalist = {
        "training": [
            {"image": "a_0000.nii.gz", "points": [[1, 2, 3], [9, 2, 3]], "count": 2},
            {"image": ["b_0000.nii.gz", "b_0001.nii.gz"], "count": -1},
            {"points": [[1, 2, 3]]},
        ],
        "test": ["a_0000.nii.gz"],
    }
    path = tmp_path / "list.json"
    path.write_text(json.dumps(datalist))
    problems = check_dataset(path)
    assert problems == [
        f"{path}, training[1], field 'count': -1 is negative; expected >= 0",
        f"{path}, training[2], field 'image': expected a path or a list of paths",
        f"{path}, test[0], field 'id': case 'a' appears twice in the datalist",
        f"{tmp_path}/b_0001.nii.gz: missing (channel 1 of case 'b', {path}, training[1])",
        f"{path}, training[1], field 'image': case 'b' has 2 channel file(s) but case 'a' has 1",
        f"{path}, training[0], field 'points', point 1: point (9.0, 2.0, 3.0) of case 'a' "
        "lies outside its image of shape (6, 7, 8)",
    ]


def test_world_points_in_a_folder_use_each_case_affine(tmp_path):
    rng = np.random.default_rng(1)
    affines, voxels = {}, {}
    for case in ("a", "b"):
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        affines[case] = np.eye(4)
        affines[case][:3, :3] = q * [0.8, 1.0, 2.5]
        affines[case][:3, 3] = rng.uniform(-20, 20, 3)
        write_image(
            tmp_path / "imagesTr" / f"{case}_0000.nii.gz",
            np.ones((8, 9, 10), np.float32),
            affines[case],
        )
        voxels[case] = rng.uniform(0, 7, (3, 3))
    write_points_csv(tmp_path / "points.csv", voxels, affines)
    dataset = load_dataset(tmp_path)
    for case in dataset:
        world = apply_affine(affines[case.id], voxels[case.id])
        expected = apply_affine(np.linalg.inv(read_image(case.channels[0])[1]), world)
        np.testing.assert_allclose(case.points, expected, atol=1e-9)
        np.testing.assert_allclose(case.points, voxels[case.id], atol=1e-4)  # float32 header
    assert dataset.channel_names == ("channel_0",) and dataset.split == {"training": ["a", "b"]}
    assert check_dataset(tmp_path) == []


def test_2d_rgb_png_dataset(tmp_path):
    rng = np.random.default_rng(2)
    for case in ("x", "y"):
        rgb = rng.integers(0, 255, (3, 10, 12)).astype(np.uint8)
        (tmp_path / "imagesTr").mkdir(exist_ok=True)
        PIL.Image.fromarray(np.moveaxis(rgb, 0, -1)).save(
            tmp_path / "imagesTr" / f"{case}_0000.png"
        )
        (tmp_path / "labelsTr").mkdir(exist_ok=True)
        PIL.Image.fromarray(np.eye(10, 12, dtype=np.uint8)).save(
            tmp_path / "labelsTr" / f"{case}.png"
        )
    (tmp_path / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"}, "spacing": [0.5, 0.5]})
    )
    write_points_csv(tmp_path / "points.csv", {"x": [[1.0, 2.0]], "y": np.zeros((0, 2))})
    assert check_dataset(tmp_path) == []
    dataset = load_dataset(tmp_path)
    arrays = dataset["x"].load()
    assert arrays.image.shape == (3, 10, 12) and arrays.mask.shape == (10, 12)
    np.testing.assert_array_equal(arrays.affine, np.diag([0.5, 0.5, 1.0]))
    assert dataset["y"].points.shape == (0, 2) and dataset["x"].count is None
    (tmp_path / "points.csv").write_text("case,y,x\nx,10,2\n")
    assert check_dataset(tmp_path) == [
        f"{tmp_path}/points.csv, row 2: point (10.0, 2.0) of case 'x' lies outside its "
        "image of shape (10, 12)"
    ]


def test_empty_and_missing_datasets(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    dataset = load_dataset(tmp_path)
    assert len(dataset) == 0 and list(dataset) == [] and check_dataset(tmp_path) == []
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    assert check_dataset(tmp_path / "imagesTr") == [
        f"{tmp_path}/imagesTr: has no imagesTr folder; expected imagesTr/CASE_0000.nii.gz"
    ]


def test_zscore_matches_numpy_per_channel():
    rng = np.random.default_rng(3)
    image = rng.normal(5.0, 3.0, (2, 4, 5, 6))
    mask = rng.random((4, 5, 6)) > 0.5
    result = zscore(image, mask)
    assert result.dtype == np.float32 and result.shape == image.shape
    for c in range(2):
        inside = image[c][mask]
        expected = (image[c] - inside.mean()) / inside.std()
        np.testing.assert_allclose(result[c], expected, rtol=1e-5, atol=1e-5)
        assert abs(result[c][mask].mean()) < 1e-5 and abs(result[c][mask].std() - 1) < 1e-5
    np.testing.assert_allclose(zscore(image).reshape(2, -1).std(axis=1), 1.0, rtol=1e-5)


def test_zscore_edge_cases():
    constant = np.full((1, 3, 3), 7.0)
    np.testing.assert_array_equal(zscore(constant), np.zeros((1, 3, 3), np.float32))
    assert zscore(np.zeros((2, 0, 4))).shape == (2, 0, 4)
    with pytest.raises(ValueError, match="mask: selects no voxels"):
        zscore(np.ones((1, 2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="mask has shape"):
        zscore(np.ones((1, 2, 2)), np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="image: 1 value"):
        zscore(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"image: has shape \(4,\)"):
        zscore(np.ones(4))
