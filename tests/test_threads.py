import pytest
import torch
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.threads import apply_thread_policy, choose_threads


@pytest.fixture(autouse=True)
def _keep_threads():
    """The tests here change torch's threads; the others run with the one set now."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [
        (2, 0.0, 2),  # idle: every core
        (2, 0.4, 2),
        (2, 0.6, 1),  # another process holds a core more than half the time
        (2, 1.0, 1),
        (2, 9.0, 1),  # overloaded: never fewer than one
        (16, 4.3, 12),
        (16, 0.0, 16),
        (1, 0.0, 1),
    ],
)
def test_without_a_request_the_free_cores_decide(cores, load, expected):
    assert choose_threads(environment={}, cores=cores, load=load) == expected


def test_a_request_wins_over_environment_and_load():
    environment = {"WEAKLESION_NUM_THREADS": "3", "OMP_NUM_THREADS": "4"}
    assert choose_threads(2, environment, cores=8, load=7.0) == 2


def test_weaklesion_variable_comes_before_omp_and_both_before_the_load():
    both = {"WEAKLESION_NUM_THREADS": "3", "OMP_NUM_THREADS": "4"}
    assert choose_threads(None, both, cores=2, load=5.0) == 3
    assert choose_threads(None, {"OMP_NUM_THREADS": "4"}, cores=2, load=5.0) == 4
    # An empty variable counts as unset.
    assert choose_threads(None, {"WEAKLESION_NUM_THREADS": " "}, cores=2, load=0.0) == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_number_is_refused_naming_its_source(value):
    with pytest.raises(ValueError, match=f"WEAKLESION_NUM_THREADS: got '{value}'"):
        choose_threads(None, {"WEAKLESION_NUM_THREADS": value}, cores=2, load=0.0)
    with pytest.raises(ValueError, match=f"threads: got '{value}'"):
        choose_threads(value, {}, cores=2, load=0.0)


def test_apply_sets_torch_and_returns_the_number(monkeypatch):
    monkeypatch.setenv("WEAKLESION_NUM_THREADS", "2")
    assert apply_thread_policy() == 2 == torch.get_num_threads()
    assert apply_thread_policy(1) == 1 == torch.get_num_threads()


def test_command_line_threads_reach_torch_and_a_bad_variable_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("WEAKLESION_NUM_THREADS", "1")
    runner = CliRunner()
    missing = tmp_path / "missing"
    result = runner.invoke(app, ["--threads", "2", "check", str(missing)])
    assert torch.get_num_threads() == 2
    assert result.exit_code != 0
    monkeypatch.setenv("WEAKLESION_NUM_THREADS", "many")
    result = runner.invoke(app, ["check", str(missing)])
    assert result.exit_code == 2
    assert "WEAKLESION_NUM_THREADS: got 'many'" in result.output
    assert "Traceback" not in result.output
