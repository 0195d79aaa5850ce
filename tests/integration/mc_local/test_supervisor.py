"""`make run` supervises what it starts: real processes killed and started again, a real
embedded PostgreSQL stopped behind its back and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from polling import wait_until

from mc_local.embedded_pg import EmbeddedPostgres
from mc_local.supervisor import Component, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.mark.fast
def test_a_component_that_dies_is_started_again_and_the_terminal_says_so():
    said: list[str] = []
    supervisor = Supervisor([Component("triggerer", SLEEPER, dict(os.environ))],
                            min_uptime=0, log=said.append, prefix_output=False)
    supervisor.start()
    try:
        component = supervisor.components["triggerer"]
        first = component.process.pid
        os.kill(first, signal.SIGKILL)  # like the triggerer dying with the database
        component.process.wait()
        wait_until("the supervisor to restart the triggerer",
                   lambda: supervisor.check() == ["triggerer"], timeout=60)
        assert component.alive and component.process.pid != first
        assert said == ["triggerer exited (code -9); restarting it",
                        "triggerer started again (restart 1)"]
    finally:
        supervisor.stop(timeout=5)
    assert not component.alive


@pytest.mark.fast
def test_a_component_that_keeps_dying_is_restarted_with_growing_pauses():
    said: list[str] = []
    crasher = [sys.executable, "-c", "raise SystemExit(3)"]
    supervisor = Supervisor([Component("api-server", crasher, dict(os.environ))],
                            log=said.append, prefix_output=False, max_pause=2)
    supervisor.start()
    try:
        component = supervisor.components["api-server"]
        wait_until("a second restart", lambda: supervisor.check() is not None
                   and component.restarts == 2, timeout=60)
        assert said[0] == "api-server exited (code 3); restarting it in 1s"
        assert "api-server exited (code 3); restarting it in 2s" in said
    finally:
        supervisor.stop(timeout=5)


def test_the_embedded_postgres_is_started_again_when_it_stops(tmp_path: Path):
    from conftest import free_port

    server = EmbeddedPostgres(tmp_path / "postgres", free_port())
    server.start()
    said: list[str] = []
    supervisor = Supervisor([], postgres=server, log=said.append)
    try:
        server.stop()  # behind make run's back (pg_ctl stop, a crash, ...)
        assert not server.running()
        supervisor.check()
        assert server.is_ready() and server.owns_port()
        assert said[0].startswith(f"PostgreSQL (embedded, port {server.port}) is not running")
        assert said[-1] == "PostgreSQL started again"
    finally:
        server.stop()


def _supervised(session_file: Path) -> list[str]:
    """A `mc run` in miniature: a worker (warm shutdown, stopped first) and a triggerer
    (its session) on one Supervisor.run(), in a process of its own."""
    return [sys.executable, "-c", (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from mc_local.supervisor import FIRST, Component, Supervisor\n"
        f"sleeper = {SLEEPER!r}\n"
        "Supervisor([Component('worker1', sleeper, dict(os.environ), stop_stage=FIRST,\n"
        "                      warm_shutdown=True), Component('triggerer', sleeper,\n"
        "                      dict(os.environ))], prefix_output=False,\n"
        f"           session_file=Path({str(session_file)!r})).run()\n")]


def _runs(pid: int) -> bool:
    """Still running (a zombie waiting for an init that does not reap is not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _recorded(session_file: Path, count: int) -> list[tuple[str, int, bool]]:
    from mc_local.supervisor import session_status

    wait_until(f"{count} running processes in the session record", lambda: sum(
        running for _, _, running in session_status(session_file)) == count, timeout=60)
    return session_status(session_file)


@pytest.mark.fast
def test_ctrl_c_stops_every_component_and_the_session_record(tmp_path: Path):
    session_file = tmp_path / "run.json"
    run = subprocess.Popen(_supervised(session_file))
    rows = _recorded(session_file, 3)
    assert [name for name, _, _ in rows] == ["supervisor", "worker1", "triggerer"]
    run.send_signal(signal.SIGINT)
    assert run.wait(30) == 0
    assert not [pid for _, pid, _ in rows if _runs(pid)]
    assert not session_file.exists()


@pytest.mark.fast
def test_mc_stop_stops_the_components_of_a_supervisor_killed_hard(tmp_path: Path):
    """`make run` killed with SIGKILL leaves its components running (sessions of their
    own): the session record names them, and stopping it stops them, only them."""
    from mc_local.supervisor import stop_recorded_session

    session_file = tmp_path / "run.json"
    run = subprocess.Popen(_supervised(session_file))
    rows = _recorded(session_file, 3)
    run.kill()
    run.wait()
    bystander = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        assert _recorded(session_file, 2)[0][2] is False  # the supervisor is gone
        said: list[str] = []
        assert stop_recorded_session(session_file, log=said.append) is True
        assert not [pid for _, pid, _ in rows if _runs(pid)]
        assert said == [f"stopping worker1 (pid {rows[1][1]}), left behind",
                        f"stopping triggerer (pid {rows[2][1]}), left behind"]
        assert bystander.poll() is None and not session_file.exists()
        assert stop_recorded_session(session_file) is False  # nothing left
    finally:
        bystander.kill()
        bystander.wait()
