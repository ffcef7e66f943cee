"""Nothing lost, nothing mixed, nothing misread: every command refuses a bad file with one
line naming it (exit 2, no traceback), never merges into an existing output, and writes
files a colleague can read."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.config import TrainConfig
from weaklesion.data import load_dataset
from weaklesion.data.phantom import write_phantom_dataset
from weaklesion.detection import read_detections_csv
from weaklesion.io import read_image, write_image
from weaklesion.models import UNet
from weaklesion.training.checkpoint import run_state, save_checkpoint

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def refused(result, *names) -> str:
    """The one ``error:`` line of a refused command, which names every one of ``names``
    (a command may have said which settings it uses before it met the problem)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for name in names:
        assert str(name) in errors[0], errors[0]
    return errors[0]


def hidden(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(
        tmp_path_factory.mktemp("data") / "phantom",
        n_cases=3,
        shape=(16, 32, 32),
        splits=(2, 1, 0),
        n_lesions=2,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder holding an untrained tiny heatmap U-Net."""
    run_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(labels="points", model_kwargs={"features": [4, 8]}, spatial_dims=3)
    torch.manual_seed(0)
    model = UNet(3, 2, 1, features=(4, 8))
    info = {"in_channels": 2, "heatmap_scale": 4.0, "spacing": [1.0, 1.0, 1.0]}
    save_checkpoint(run_dir / "best.pt", run_state(model, None, 1, config, info, []))
    return run_dir


def bad_checkpoints(folder, good) -> dict[str, object]:
    content = good.read_bytes()
    files = {
        "garbage": np.random.default_rng(0).bytes(4096),
        "truncated": content[: len(content) // 2],
        "empty": b"",
        "text": b"model weights will be uploaded later\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "text"])
def test_a_bad_checkpoint_is_named_in_one_line(phantom, run, tmp_path, kind):
    path = bad_checkpoints(tmp_path, run / "best.pt")[kind]
    result = invoke("predict", phantom, "--run", run, "--out", tmp_path / "maps", "--which", path)
    refused(result, path)
    assert not (tmp_path / "maps").exists()

    result = invoke(
        "train", phantom, "--labels", "points", "--out", tmp_path / "new", "--set", "epochs=1",
        "--set", "model_kwargs.features=[4, 8]", "--set", f'init_from="{path}"',
    )  # fmt: skip
    refused(result, path)

    resumed = tmp_path / "stopped"
    resumed.mkdir()
    shutil.copy(path, resumed / "last.pt")
    result = invoke(
        "train", phantom, "--labels", "points", "--out", resumed, "--resume", "--set", "epochs=1"
    )
    refused(result, resumed / "last.pt")
    assert (resumed / "last.pt").read_bytes() == path.read_bytes()  # nothing lost


def test_an_unknown_network_argument_is_named(phantom, tmp_path):
    result = invoke(
        "train", phantom, "--labels", "points", "--out", tmp_path / "run",
        "--set", "model_kwargs.bogus=1",
    )  # fmt: skip
    refused(result, "model_kwargs.bogus")
    assert not (tmp_path / "run").exists()


def test_a_bad_network_argument_value_is_named(phantom, tmp_path):
    result = invoke(
        "train", phantom, "--labels", "points", "--out", tmp_path / "run",
        "--set", 'model_kwargs.features=[1,2,"x"]',
    )  # fmt: skip
    refused(result, "model_kwargs.features")


def test_nan_in_an_image_is_named(phantom, run, tmp_path):
    image = tmp_path / "scan_0000.nii.gz"
    values, affine = read_image(phantom / "imagesTr" / "phantom_000_0000.nii.gz")
    values[3, 4, 5] = np.nan
    write_image(image, values, affine)
    shutil.copy(phantom / "imagesTr" / "phantom_000_0001.nii.gz", tmp_path / "scan_0001.nii.gz")
    result = invoke(
        "predict", image, tmp_path / "scan_0001.nii.gz", "--run", run, "--out", tmp_path / "maps"
    )
    refused(result, image, "NaN")
    assert not (tmp_path / "maps").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_a_map_is_named(tmp_path, bad):
    path = tmp_path / "case_heatmap.nii.gz"
    values = np.zeros((8, 9, 10), np.float32)
    values[1, 2, 3] = bad
    write_image(path, values)
    refused(invoke("detect", path, "--out", tmp_path / "found.csv"), path)
    refused(invoke("count", path), path)
    assert not (tmp_path / "found.csv").exists()


@pytest.mark.parametrize(
    "content", [b"not a zip archive at all", b"PK\x03\x04" + bytes(40), b""], ids=str
)
def test_a_garbage_npz_is_named(tmp_path, content):
    path = tmp_path / "case.npz"
    path.write_bytes(content)
    refused(invoke("detect", path, "--out", tmp_path / "found.csv"), path)
    refused(invoke("count", path), path)


def test_an_npz_with_pickled_objects_is_named(tmp_path):
    path = tmp_path / "case.npz"
    np.savez(path, probabilities=np.array([{"a": 1}], dtype=object))
    refused(invoke("count", path), path)


def corrupt_gzip_trailer(path):
    """Flip one bit of the gzip CRC: the data decompress fine, only the check fails."""
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01
    path.write_bytes(bytes(data))


def test_check_verifies_the_gzip_crc(phantom, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(phantom, root)
    broken = root / "imagesTr" / "phantom_001_0001.nii.gz"
    corrupt_gzip_trailer(broken)
    result = invoke("check", root)
    assert result.exit_code == 2, result.output
    assert f"{broken}: " in result.output and "CRC" in result.output


def test_reading_a_nifti_verifies_the_gzip_crc(tmp_path):
    path = tmp_path / "map.nii.gz"
    write_image(path, np.ones((4, 5, 6), np.float32))
    corrupt_gzip_trailer(path)
    with pytest.raises(ValueError, match=r"map\.nii\.gz: .*CRC"):
        read_image(path)
    refused(invoke("count", path), path)
    truncated = tmp_path / "cut.nii.gz"
    write_image(truncated, np.ones((4, 5, 6), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-4])
    refused(invoke("count", truncated), truncated)


def test_synth_refuses_an_existing_dataset_and_replaces_it_with_overwrite(tmp_path):
    out = tmp_path / "data"
    shape = ("--shape", "16,32,32")
    assert invoke("synth", "phantom", "--out", out, "--cases", 3, *shape).exit_code == 0
    result = invoke("synth", "phantom", "--out", out, "--cases", 2, "--seed", 1, *shape)
    refused(result, out, "--overwrite")
    assert len(list((out / "imagesTr").iterdir())) == 6  # left as it was
    result = invoke(
        "synth", "phantom", "--out", out, "--cases", 2, "--seed", 1, "--overwrite", *shape
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        f"phantom_00{i}_000{c}.nii.gz" for i in range(2) for c in range(2)
    ]  # replaced, not merged
    assert hidden(tmp_path) == []


def test_predict_refuses_an_existing_folder_and_replaces_it_with_overwrite(phantom, run, tmp_path):
    maps = tmp_path / "maps"
    assert invoke("predict", phantom, "--run", run, "--out", maps).exit_code == 0
    assert len(list(maps.glob("*_heatmap.nii.gz"))) == 3
    single = phantom / "imagesTr" / "phantom_002_0000.nii.gz"
    second = phantom / "imagesTr" / "phantom_002_0001.nii.gz"
    refused(invoke("predict", single, second, "--run", run, "--out", maps), maps, "--overwrite")
    result = invoke("predict", single, second, "--run", run, "--out", maps, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in maps.iterdir()) == [
        "phantom_002_heatmap.nii.gz",
        "predictions.json",
    ]
    assert list(json.loads((maps / "predictions.json").read_text())["cases"]) == ["phantom_002"]
    assert hidden(tmp_path) == []


def test_a_failing_predict_writes_nothing(phantom, run, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(phantom, root)
    (root / "imagesTr" / "phantom_002_0000.nii.gz").write_bytes(b"not an image")
    result = invoke("predict", root, "--run", run, "--out", tmp_path / "maps")
    refused(result, root / "imagesTr" / "phantom_002_0000.nii.gz")
    assert sorted(os.listdir(tmp_path)) == ["copy"]


def test_predict_reads_a_json_datalist(phantom, run, tmp_path):
    datalist = tmp_path / "datalist.json"
    images = phantom / "imagesTr"
    entry = {
        "image": [str(images / "phantom_001_0000.nii.gz"), str(images / "phantom_001_0001.nii.gz")]
    }
    datalist.write_text(json.dumps({"test": [entry]}))
    result = invoke("predict", datalist, "--run", run, "--out", tmp_path / "maps")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "maps" / "phantom_001_heatmap.nii.gz").is_file()


@pytest.mark.parametrize("case", ["../../escaped", "/tmp/absolute", "a/b", "..", ""])
def test_case_ids_that_are_not_plain_names_are_refused_before_writing(phantom, run, tmp_path, case):
    images = phantom / "imagesTr"
    entry = {
        "id": case,
        "image": [str(images / "phantom_001_0000.nii.gz"), str(images / "phantom_001_0001.nii.gz")],
    }
    datalist = tmp_path / "lists" / "datalist.json"
    datalist.parent.mkdir()
    datalist.write_text(json.dumps({"test": [entry]}))
    with pytest.raises(ValueError, match="field 'id'"):
        load_dataset(datalist)
    out = tmp_path / "deep" / "er" / "maps"
    result = invoke("predict", datalist, "--run", run, "--out", out)
    refused(result, datalist, "field 'id'")
    assert sorted(os.listdir(tmp_path)) == ["lists"]
    assert os.listdir(tmp_path / "lists") == ["datalist.json"]


def test_written_files_follow_the_umask(phantom, run, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "data"
        assert (
            invoke("synth", "phantom", "--out", out, "--cases", 2, "--shape", "16,32,32").exit_code
            == 0
        )
        maps = tmp_path / "maps"
        assert invoke("predict", out, "--run", run, "--out", maps).exit_code == 0
    finally:
        os.umask(previous)
    for path in [*out.rglob("*"), *maps.rglob("*")]:
        expected = 0o755 if path.is_dir() else 0o644
        assert path.stat().st_mode & 0o777 == expected, path


def test_a_permission_error_names_the_target(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_hidden(path, flags, *args, **kwargs):
        if os.path.basename(os.fspath(path)).startswith(".") and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    source = tmp_path / "case_heatmap.nii.gz"
    write_image(source, np.zeros((4, 5, 6), np.float32))
    monkeypatch.setattr(os, "open", refuse_hidden)
    line = refused(invoke("count", source, "--out", tmp_path / "counts.json"))
    assert line == f"error: {tmp_path / 'counts.json'}: Permission denied"


def test_detections_csv_names_world_columns_for_what_they_are(tmp_path):
    affine = np.array(
        [[0.0, 0.0, 2.0, 10.0], [0.0, 1.5, 0.0, 20.0], [-1.0, 0.0, 0.0, 30.0], [0, 0, 0, 1]]
    )
    values = np.zeros((12, 12, 12), np.float32)
    values[3, 4, 5] = 1.0
    path = tmp_path / "case_heatmap.nii.gz"
    write_image(path, values, affine)
    out = tmp_path / "found.csv"
    result = invoke("detect", path, "--method", "peaks", "--threshold", 0.5, "--out", out)
    assert result.exit_code == 0, result.output
    header, row = out.read_text().splitlines()[:2]
    columns = dict(zip(header.split(","), row.split(","), strict=True))
    world = affine @ [3, 4, 5, 1]
    assert [float(columns[f"world_{a}_mm"]) for a in "xyz"] == pytest.approx(world[:3].tolist())
    assert [float(columns[a]) for a in "zyx"] == [3.0, 4.0, 5.0]
    old = tmp_path / "old.csv"
    old.write_text("case,z,y,x,z_mm,y_mm,x_mm,score\ncase,3.0,4.0,5.0,20.0,26.0,24.0,1.0\n")
    found = read_detections_csv(old)["case"]
    assert found.points.tolist() == [[3.0, 4.0, 5.0]] and found.extras == {}


def test_a_gzip_error_is_not_confused_with_the_file_type(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(gzip.compress(b"short"))
    with pytest.raises(ValueError, match=r"scan\.nii\.gz"):
        read_image(path)


def weaklesion_command(*args) -> list[str]:
    return [sys.executable, "-c", "from weaklesion.cli import main; main()", *map(str, args)]


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_command_says_so_in_one_line_and_leaves_nothing(
    tmp_path, number, interruptible
):
    out = tmp_path / "data"
    process = subprocess.Popen(
        weaklesion_command("synth", "phantom", "--out", out, "--cases", 40, "--shape", "16,32,32"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 120
    while not hidden(tmp_path) and time.monotonic() < deadline:  # writing has begun
        time.sleep(0.05)
    process.send_signal(number)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 128 + number
    assert errors.strip().splitlines() == [
        f"interrupted ({signal.Signals(number).name}); files being written were discarded"
    ]
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_concurrent_predicts_into_one_folder_do_not_mix(phantom, run, tmp_path):
    maps = tmp_path / "maps"
    images = phantom / "imagesTr"
    inputs = {
        "all": [phantom],
        "one": [images / "phantom_001_0000.nii.gz", images / "phantom_001_0001.nii.gz"],
    }
    processes = {
        name: subprocess.Popen(
            weaklesion_command("predict", *paths, "--run", run, "--out", maps),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for name, paths in inputs.items()
    }
    results = {name: (p.wait(timeout=300), p.stderr.read()) for name, p in processes.items()}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], results
    winner = next(name for name, (code, _) in results.items() if code == 0)
    cases = list(json.loads((maps / "predictions.json").read_text())["cases"])
    assert cases == (
        ["phantom_000", "phantom_001", "phantom_002"] if winner == "all" else ["phantom_001"]
    )
    assert sorted(p.name for p in maps.iterdir()) == sorted(
        [f"{case}_heatmap.nii.gz" for case in cases] + ["predictions.json"]
    )
    assert hidden(tmp_path) == []
