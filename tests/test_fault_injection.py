"""Kill `predict`, `synth` and a checkpoint save at random points: afterwards the output
is the complete new result or the previous state, never a mix, and no temporary is left
(after SIGINT or SIGTERM at once; after SIGKILL once the next write has swept it).

Each kind runs in one process that imports the package once and forks a child per trial,
so that a trial costs the operation, not the start-up of Python and torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from weaklesion.config import TrainConfig
from weaklesion.data.phantom import write_phantom_dataset
from weaklesion.models import UNet
from weaklesion.training.checkpoint import run_state, save_checkpoint

TRIALS = 20

INJECTOR = textwrap.dedent(
    """
    import hashlib, json, os, random, shutil, signal, sys, time
    from pathlib import Path

    import torch

    import weaklesion.data.normalize, weaklesion.models.heads, weaklesion.training.distributed
    import weaklesion.tuning  # what predict imports when it runs, imported once here
    from weaklesion.data.phantom import write_phantom_dataset
    from weaklesion.inference import predict_cases
    from weaklesion.training.checkpoint import save_checkpoint
    from weaklesion.writing import raise_on_termination, sweep_temporaries

    kind, folder, settings = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    torch.set_num_threads(1)
    target = folder / ("last.pt" if kind == "checkpoint" else "out")
    previous = folder / "previous"
    weights = {"old": torch.arange(2_000_000.0) * 2, "new": torch.arange(2_000_000.0)}

    def operation(overwrite):
        if kind == "predict":
            predict_cases(settings["run"], settings["data"], target, device="cpu",
                          progress=False, overwrite=overwrite)
        elif kind == "synth":
            write_phantom_dataset(target, n_cases=3, seed=1, shape=(16, 32, 32),
                                  splits=(3, 0, 0), n_lesions=2, overwrite=overwrite)
        else:
            save_checkpoint(target, {"which": "new", "weights": weights["new"]})

    def snapshot():
        if kind == "checkpoint":
            state = torch.load(target, weights_only=True)
            assert torch.equal(state["weights"], weights[state["which"]])
            return state["which"]
        if not target.exists():
            return None
        return {str(p.relative_to(target)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(target.rglob("*")) if p.is_file()}

    def temporaries():
        return sorted(name for name in os.listdir(folder) if name.startswith("."))

    def set_previous(trial):
        if kind == "checkpoint":
            shutil.copyfile(previous, target)
            return "old", True
        if target.exists():
            shutil.rmtree(target)
        if trial % 2:
            shutil.copytree(previous, target)
            return snapshot(), True
        return None, False

    def run_child(overwrite, delay=None, number=None):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            raise_on_termination()
            code = 0
            try:
                operation(overwrite)
            except KeyboardInterrupt:
                code = 130
            except BaseException:
                code = 1
            os._exit(code)
        if delay is not None:
            time.sleep(delay)
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), time.perf_counter() - started

    set_previous(0)
    code, duration = run_child(overwrite=False)
    assert code == 0, code
    new = snapshot()
    rng = random.Random(settings["seed"])
    signals = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
    trials = []
    for trial in range(settings["trials"]):
        old, overwrite = set_previous(trial)
        number = signals[trial % 3]
        delay = rng.uniform(0, 1.5 * duration)  # some after the end
        code, _ = run_child(overwrite, delay, number)
        state = snapshot()
        left = temporaries()
        sweep_temporaries(target)
        trials.append({
            "signal": signal.Signals(number).name, "delay": delay, "exit": code,
            "state": "new" if state == new else "previous" if state == old else "mixed",
            "temporaries": left, "after_sweep": temporaries(),
        })
    print(json.dumps({"duration": duration, "trials": trials}))
    """
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    data = write_phantom_dataset(
        root / "data", n_cases=3, shape=(16, 32, 32), splits=(3, 0, 0), n_lesions=2
    )
    run = root / "run"
    config = TrainConfig(labels="points", model_kwargs={"features": [4, 8]}, spatial_dims=3)
    torch.manual_seed(0)
    model = UNet(3, 2, 1, features=(4, 8))
    info = {"in_channels": 2, "heatmap_scale": 4.0, "spacing": [1.0, 1.0, 1.0]}
    save_checkpoint(run / "best.pt", run_state(model, None, 1, config, info, []))
    return data, run


def previous_state(kind, folder, data, run):
    """The output as an earlier run left it: another dataset, other maps, other weights."""
    from weaklesion.inference import predict_cases

    if kind == "predict":
        images = sorted((data / "imagesTr").glob("phantom_000_*"))
        predict_cases(run, images, folder / "previous", device="cpu", progress=False)
    elif kind == "synth":
        write_phantom_dataset(folder / "previous", n_cases=2, seed=2, shape=(16, 32, 32))
    else:
        weights = torch.arange(2_000_000.0) * 2
        save_checkpoint(folder / "previous", {"which": "old", "weights": weights})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["predict", "synth", "checkpoint"])
def test_a_killed_writer_leaves_the_new_result_or_the_previous_one(inputs, tmp_path, kind):
    data, run = inputs
    folder = tmp_path / "work"
    folder.mkdir()
    previous_state(kind, folder, data, run)
    settings = {"data": str(data), "run": str(run), "seed": 14, "trials": TRIALS}
    completed = subprocess.run(
        [sys.executable, "-c", INJECTOR, kind, str(folder), json.dumps(settings)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    trials = json.loads(completed.stdout.splitlines()[-1])["trials"]
    assert len(trials) == TRIALS
    for trial in trials:
        assert trial["state"] in ("new", "previous"), trial
        if trial["signal"] != "SIGKILL":
            assert trial["temporaries"] == [], trial
        assert trial["after_sweep"] == [], trial
