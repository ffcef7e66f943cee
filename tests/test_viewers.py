"""Viewer files: Slicer markups at the right LPS position and valid against Slicer's
schema, napari points CSV in napari's layout, and an outcome label map whose labels
count what `evaluate` counts."""

from __future__ import annotations

import csv
import json

import jsonschema
import nibabel
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.detection import Detections, read_detections_csv, write_detections_csv
from weaklesion.io import read_image, write_image
from weaklesion.report.viewers import (
    OUTCOMES,
    case_outcomes,
    load_markups_schema,
    outcome_label_map,
    voxels_to_lps,
)
from weaklesion.targets import gaussian_heatmap

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def oblique_affine() -> np.ndarray:
    """A voxel-to-RAS affine with rotation, anisotropic voxels, a shear and an offset."""
    angle = np.deg2rad(30.0)
    rotation = np.array(
        [
            [np.cos(angle), -np.sin(angle), 0.0],
            [np.sin(angle), np.cos(angle), 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    shear = np.array([[1.0, 0.0, 0.2], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ shear @ np.diag([2.5, 0.8, 1.2])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


def napari_points(path) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Read a points CSV as napari's built-in reader does: a points layer when the
    header has ``axis-0`` and ``axis-1`` (and not the shapes columns); the ``axis-*``
    columns are the coordinates, every other column but a leading ``index`` a property."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, table = rows[0], rows[1:]
    assert {"axis-0", "axis-1"} <= set(header)
    assert not {"shape-type", "vertex-index"} & set(header)
    axes = [i for i, name in enumerate(header) if name.startswith("axis-")]
    assert [header[i] for i in axes] == [f"axis-{k}" for k in range(len(axes))]
    data = np.array([[float(row[i]) for i in axes] for row in table]).reshape(-1, len(axes))
    skip = set(axes) | ({0} if header[0] == "index" else set())
    properties = {name: [row[i] for row in table] for i, name in enumerate(header) if i not in skip}
    return data, properties


def test_detect_writes_slicer_markups_at_the_lps_position_of_a_planted_lesion(tmp_path):
    planted = np.array([[5.0, 7.0, 9.0], [9.0, 12.0, 4.0]])
    affine = oblique_affine()
    write_image(tmp_path / "case.nii.gz", gaussian_heatmap(planted, (14, 18, 16), 1.5), affine)
    viewers = tmp_path / "viewers"
    out = tmp_path / "found.csv"
    result = invoke(
        "detect", tmp_path / "case.nii.gz", "--sigma", 1.5, "--threshold", 0.5, "--out", out,
        "--viewers", viewers,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads((viewers / "case.mrk.json").read_text())
    jsonschema.Draft7Validator(load_markups_schema()).validate(document)

    (markup,) = document["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    positions = np.array([point["position"] for point in markup["controlPoints"]])
    # nibabel gives RAS millimetres of the voxel indices; LPS negates R and A.
    nifti_affine = nibabel.load(tmp_path / "case.nii.gz").affine
    expected = nibabel.affines.apply_affine(nifti_affine, planted) * [-1.0, -1.0, 1.0]
    order = np.argsort(positions[:, 2])
    np.testing.assert_allclose(positions[order], expected[np.argsort(expected[:, 2])], atol=0.05)
    found = read_detections_csv(out)["case"]
    assert [point["label"] for point in markup["controlPoints"]] == [
        f"{score:.2f}" for score in found.scores
    ]

    points, properties = napari_points(viewers / "case_points.csv")
    np.testing.assert_allclose(points, found.points, atol=1e-9)
    np.testing.assert_allclose(np.array(properties["score"], float), found.scores)


def test_schema_rejects_what_slicer_cannot_read():
    document = {
        "@schema": "x",
        "markups": [{"type": "Fiducial", "controlPoints": [{"position": [1.0, 2.0]}]}],
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(load_markups_schema()).validate(document)


def test_voxels_to_lps_of_a_2d_image_puts_its_world_axes_first():
    affine = np.array([[0.0, 2.0, 5.0], [3.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(voxels_to_lps([[1.0, 4.0]], affine), [[-13.0, -2.0, 0.0]])


def test_label_map_counts_equal_the_outcome_counts():
    truth = np.array([[2.0, 2.0, 2.0], [2.0, 10.0, 10.0], [8.0, 2.0, 12.0]])
    found = np.array([[2.4, 2.0, 2.0], [8.0, 12.0, 2.0], [8.0, 2.0, 12.0], [8.0, 8.0, 8.0]])
    scores = np.array([0.9, 0.8, 0.7, 0.2])
    outcomes = case_outcomes(found, scores, truth, 1.0, 0.5)
    labels = outcome_label_map((12, 16, 16), outcomes)
    counts = {name: ndimage.label(labels == value)[1] for name, (value, _) in OUTCOMES.items()}
    assert counts == {"hit": 2, "false positive": 1, "miss": 1}
    assert labels[8, 12, 2] == OUTCOMES["false positive"][0]
    assert labels[2, 10, 10] == OUTCOMES["miss"][0]


def separated_points(rng, n, shape, others=(), gap=5.0) -> np.ndarray:
    """``n`` random points at least ``gap`` voxels from each other and from ``others``."""
    chosen = [np.asarray(point, dtype=float) for point in others]
    start = len(chosen)
    while len(chosen) < start + n:
        candidate = rng.uniform(1, np.asarray(shape) - 2)
        if all(np.linalg.norm(candidate - point) > gap for point in chosen):
            chosen.append(candidate)
    return np.array(chosen[start:]).reshape(n, len(shape))


@pytest.mark.slow
def test_evaluate_label_map_has_the_matched_and_unmatched_counts_of_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    shape, affine = (12, 24, 20), oblique_affine()
    entries, detections = [], {}
    for index in range(4):
        case = f"case_{index}"
        write_image(tmp_path / f"{case}_0000.nii.gz", rng.random(shape), affine)
        truth = separated_points(rng, 3 + index, shape)
        # Found: all but the first lesion of odd cases, a little off; false positives
        # far from every lesion; in the last case one more below the threshold.
        kept = truth[1:] if index % 2 else truth
        extra = separated_points(rng, index + 1, shape, others=truth)
        points = np.concatenate([kept + rng.uniform(-0.5, 0.5, kept.shape), extra])
        scores = np.concatenate([np.full(len(kept), 0.9), np.full(len(extra), 0.6)])
        scores[-1] = 0.1 if index == 3 else scores[-1]
        detections[case] = Detections(points, scores)
        entries.append({"image": [f"{case}_0000.nii.gz"], "points": truth.tolist()})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"channel_names": {"0": "t1"}, "training": entries}))
    write_detections_csv(tmp_path / "found.csv", detections)
    viewers = tmp_path / "viewers"
    result = invoke(
        "evaluate", tmp_path / "found.csv", "--truth", datalist, "--out", tmp_path / "m.json",
        "--viewers", viewers,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "m.json").read_text())
    schema = load_markups_schema()
    totals = {key: sum(case[key] for case in report["cases"].values()) for key in ("fp", "fn")}
    assert totals == {"fp": 9, "fn": 2}
    for case, scores in report["cases"].items():
        labels, label_affine = read_image(viewers / f"{case}_outcomes.nii.gz")
        assert labels.shape == shape
        np.testing.assert_allclose(label_affine, affine, atol=1e-6)
        for name, key in (("hit", "tp"), ("false positive", "fp"), ("miss", "fn")):
            assert ndimage.label(labels == OUTCOMES[name][0])[1] == scores[key], (case, name)

        document = json.loads((viewers / f"{case}_outcomes.mrk.json").read_text())
        jsonschema.Draft7Validator(schema).validate(document)
        sizes = [len(markup["controlPoints"]) for markup in document["markups"]]
        assert sizes == [scores["tp"], scores["fp"], scores["fn"]]
        points, properties = napari_points(viewers / f"{case}_outcomes.csv")
        assert properties["outcome"].count("miss") == scores["fn"]
        assert properties["outcome"].count("hit") == scores["tp"]
        assert len(points) == scores["tp"] + scores["fp"] + scores["fn"]
