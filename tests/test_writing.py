"""Writing files: complete or not at all, never mixed, nothing left behind, the user's
permissions, errors naming the target."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from weaklesion.io import write_json
from weaklesion.writing import (
    atomic_write,
    check_output_folder,
    output_folder,
    sweep_temporaries,
)


def hidden(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write('{"version": 2')
        raise RuntimeError("disk full")
    assert target.read_text() == '{\n  "version": 1\n}\n'
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_and_folders_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {})
        with output_folder(tmp_path / "maps") as folder:
            write_json(folder / "b.json", {})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "maps").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "maps" / "b.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_permission_error_names_the_target_not_the_temporary(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError) as raised:
            write_json(locked / "out.json", {})
        assert raised.value.filename == str(locked / "out.json")
        with pytest.raises(PermissionError) as raised, output_folder(locked / "maps"):
            pass
        assert raised.value.filename == str(locked / "maps")
    finally:
        locked.chmod(0o700)


def test_a_refused_temporary_is_reported_as_the_target(tmp_path, monkeypatch):
    from weaklesion import writing

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(writing.os, "open", refuse)
    monkeypatch.setattr(writing.os, "mkdir", refuse)
    with pytest.raises(PermissionError) as raised:
        write_json(tmp_path / "out.json", {})
    assert raised.value.filename == str(tmp_path / "out.json")
    with pytest.raises(PermissionError) as raised, output_folder(tmp_path / "maps"):
        pass
    assert raised.value.filename == str(tmp_path / "maps")


def test_stale_temporaries_of_dead_processes_are_swept_on_the_next_write(tmp_path):
    from weaklesion import writing

    pid = dead_pid()
    stale = tmp_path / f".last.pt.{writing._HOST}-{pid}-0badf00d.part"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".last.pt.{writing._HOST}-{os.getpid()}-0badf00d.part"
    alive.write_bytes(b"being written")
    other_host = tmp_path / f".last.pt.0000abcd-{pid}-0badf00d.part"
    other_host.write_bytes(b"another machine")
    unrelated = tmp_path / f".best.pt.{writing._HOST}-{pid}-0badf00d.part"
    unrelated.write_bytes(b"another target")
    with atomic_write(tmp_path / "last.pt", "wb") as handle:
        handle.write(b"checkpoint")
    assert not stale.exists()
    assert alive.exists() and other_host.exists() and unrelated.exists()


def test_an_hour_old_temporary_of_an_earlier_version_is_swept(tmp_path):
    old = tmp_path / ".last.pt.k2j4_x9q"  # tempfile.mkstemp's name, no process named
    old.write_bytes(b"half a checkpoint")
    os.utime(old, (0, time.time() - 7200))
    recent = tmp_path / ".last.pt.a8b7c6d5"
    recent.write_bytes(b"perhaps being written")
    assert sweep_temporaries(tmp_path / "last.pt") == [old]
    assert not old.exists() and recent.exists()


def test_a_folder_interrupted_while_being_replaced_is_restored(tmp_path):
    from weaklesion import writing

    previous = tmp_path / f".maps.{writing._HOST}-{dead_pid()}-0badf00d.old"
    previous.mkdir()
    (previous / "a.nii.gz").write_bytes(b"old map")
    assert sweep_temporaries(tmp_path / "maps") == [previous]
    assert (tmp_path / "maps" / "a.nii.gz").read_bytes() == b"old map"


def test_a_non_empty_output_folder_is_refused_unless_overwrite(tmp_path):
    target = tmp_path / "maps"
    target.mkdir()
    check_output_folder(target)
    (target / "old.nii.gz").write_bytes(b"old")
    with pytest.raises(ValueError, match=r"maps: is not empty.*--overwrite"):
        check_output_folder(target)
    with output_folder(target, overwrite=True) as folder:
        (folder / "new.nii.gz").write_bytes(b"new")
    assert os.listdir(target) == ["new.nii.gz"]  # replaced, not merged
    assert hidden(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        check_output_folder(tmp_path / "file", overwrite=True)


def test_a_failed_folder_leaves_the_previous_one(tmp_path):
    target = tmp_path / "maps"
    with output_folder(target) as folder:
        (folder / "a").write_text("1")
    with pytest.raises(RuntimeError), output_folder(target, overwrite=True) as folder:
        (folder / "b").write_text("2")
        raise RuntimeError("model failed")
    assert os.listdir(target) == ["a"] and hidden(tmp_path) == []


def test_a_folder_filled_meanwhile_by_another_writer_is_not_mixed(tmp_path):
    target = tmp_path / "maps"
    with pytest.raises(ValueError, match="filled by another process"):
        with output_folder(target) as mine:
            (mine / "mine").write_text("1")
            with output_folder(target) as theirs:
                (theirs / "theirs").write_text("2")
    assert os.listdir(target) == ["theirs"] and hidden(tmp_path) == []
    with output_folder(target, overwrite=True) as mine:
        (mine / "mine").write_text("1")
        with output_folder(target, overwrite=True) as theirs:
            (theirs / "theirs").write_text("2")
    assert os.listdir(target) == ["mine"] and hidden(tmp_path) == []


SIGNALLED = textwrap.dedent(
    """
    import os, signal, sys, time
    from weaklesion.writing import atomic_write, raise_on_termination

    raise_on_termination()
    try:
        with atomic_write(sys.argv[1]) as handle:
            handle.write("partial")
            handle.flush()
            print("ready", flush=True)
            time.sleep(60)
    except KeyboardInterrupt as error:
        print("interrupted", getattr(error, "signal_number", signal.SIGINT), flush=True)
        sys.exit(3)
    """
)


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_remove_the_temporary(tmp_path, number, interruptible):
    target = tmp_path / "out.txt"
    process = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    assert process.stdout.readline().strip() == "ready"
    assert len(hidden(tmp_path)) == 1
    process.send_signal(number)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 3 and output.split() == ["interrupted", str(int(number))]
    assert os.listdir(tmp_path) == []
