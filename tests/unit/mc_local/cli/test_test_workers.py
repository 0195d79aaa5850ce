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
    ["-m", "slow"], ["-p", "no:cacheprovider", "tests/unit"], ["-n", "2"]])
def test_a_selection_or_an_explicit_n_runs_one(args):
    assert workers(args) == 1


def test_the_setting_wins(monkeypatch):
    monkeypatch.setenv("MC_TEST_WORKERS", "4")
    assert workers(["tests/unit"]) == 4
    monkeypatch.setenv("MC_TEST_WORKERS", "none")
    with pytest.raises(SystemExit, match="MC_TEST_WORKERS='none'"):
        workers([])
