"""The local deployment: set-up is repeatable, and a second terminal's `mc airflow ...`
talks to the same Airflow (same metadata DB, same connections)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def test_stop_session_returns_once_every_process_of_the_session_is_gone(tmp_path):
    """Like `airflow standalone`: a session leader whose children (here one in its own
    process group, as Airflow's task processes are) take a while to stop after SIGTERM."""
    import psutil
    from polling import wait_until

    from mc_local.launcher import stop_session

    # The slow one finishes its SIGTERM handler (a second and a half), then says so.
    slow = ("import os, signal, sys, time\n"
            "def stop(*_):\n"
            "    time.sleep(1.5)\n"
            "    open(sys.argv[1] + '.stopped', 'w').close()\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "open(sys.argv[1], 'w').close()\n"
            "time.sleep(60)\n")
    leader = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         f"subprocess.Popen([sys.executable, '-c', {slow!r}, sys.argv[1]], "
         "process_group=0)\n"
         "time.sleep(60)\n", str(tmp_path / "ready")],
        start_new_session=True)
    wait_until("the slow child to start", (tmp_path / "ready").exists, timeout=60)
    (child,) = psutil.Process(leader.pid).children()
    stop_session(leader.pid, time.monotonic() + 60)
    # It waited for the slow one: a clean stop, not a kill, and nothing left running.
    assert (tmp_path / "ready.stopped").exists()
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    leader.wait(5)
