"""The local deployment: set-up is repeatable, and a second terminal's `mc airflow ...`
talks to the same Airflow (same metadata DB, same connections)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mc_local.launcher import set_cell_id

MC = str(Path(sys.executable).parent / "mc")


def test_cell_id_is_set_once_and_kept(test_deployment):
    url = test_deployment.database_url("execution")
    assert set_cell_id(url, 0) == 0
    assert set_cell_id(url, 42) == 0  # an instance never changes its cell id


def test_airflow_cli_sees_the_deployment_connections(test_deployment):
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    result = subprocess.run(
        [MC, "airflow", "--profile", test_deployment.profile, "connections", "get",
         "mc_execution", "-o", "json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert test_deployment.database("execution") in result.stdout


def test_env_prints_exports_for_a_shell(test_deployment):
    result = subprocess.run([MC, "env", "--profile", test_deployment.profile],
                            capture_output=True, text=True, timeout=60, check=True)
    lines = result.stdout.splitlines()
    assert f"export AIRFLOW_HOME={test_deployment.airflow_home}" in lines
    assert any(line.startswith("export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=") for line in lines)
