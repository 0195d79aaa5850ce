"""``mc test``'s number of pytest workers: several for the whole suite, one for a selection."""

from __future__ import annotations

import pytest

from mc_local.cli.local import test_workers as workers


@pytest.fixture(autouse=True)
def _no_setting(monkeypatch):
    monkeypatch.delenv("MC_TEST_WORKERS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)


@pytest.mark.parametrize("args", [
    [], ["--durations=0"], ["-p", "no:cacheprovider", "--durations", "20"],
    ["--tb", "short", "-q"], ["-o", "log_cli=true", "-x"]])
def test_the_whole_suite_runs_on_several_workers(args):
    assert workers(args) == 4


@pytest.mark.parametrize("args", [
    ["tests/unit"], ["-q", "tests/integration/test_readme.py::test_x"], ["-k", "cleanup"],
    ["-m", "slow"], ["-p", "no:cacheprovider", "tests/unit"], ["-n", "0"]])
def test_a_selection_runs_one(args):
    assert workers(args) == 1


@pytest.mark.parametrize("args", [
    ["-n", "2"], ["tests/browser", "-n2"], ["--numprocesses=2", "-q"], ["-n", "auto"]])
def test_an_explicit_n_sets_up_a_deployment_per_worker(args):
    """`mc test -- tests/x -n 2` once set up one deployment for two workers: the second
    failed on databases that did not exist."""
    assert workers(args) == 2


def test_a_bad_n_is_named():
    with pytest.raises(SystemExit, match="-n 'many'"):
        workers(["-n", "many"])


def test_the_setting_wins(monkeypatch):
    monkeypatch.setenv("MC_TEST_WORKERS", "4")
    assert workers(["tests/unit"]) == 4
    monkeypatch.setenv("MC_TEST_WORKERS", "none")
    with pytest.raises(SystemExit, match="MC_TEST_WORKERS='none'"):
        workers([])
