"""``python -m message_center.migrations``: schema upgrades for deployment jobs."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "message_center.migrations", *args],
                          capture_output=True, text=True, timeout=120)


def test_upgrade_is_idempotent_and_keeps_the_cell_id(test_deployment):
    url = test_deployment.database_url("execution2")  # cell 1 since `mc setup`
    done = _run("upgrade", "execution", url, "--cell-id", "1")
    assert done.returncode == 0, done.stderr
    assert "execution schema up to date (cell id 1)" in done.stdout
    other = _run("upgrade", "execution", url, "--cell-id", "7")
    assert other.returncode == 1
    assert "already has cell id 1, not 7" in other.stderr
    control = _run("upgrade", "control", test_deployment.database_url("control"))
    assert control.returncode == 0, control.stderr


@pytest.mark.fast
def test_bad_arguments_are_refused():
    assert _run("upgrade", "archive", "postgresql://x/y").returncode == 2
    refused = _run("upgrade", "control", "postgresql://x/y", "--cell-id", "1")
    assert refused.returncode == 2 and "--cell-id is for execution databases" in refused.stderr
