"""`make run` supervises what it starts: real processes killed and started again, a real
embedded PostgreSQL stopped behind its back and started again."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from mc_local.embedded_pg import EmbeddedPostgres
from mc_local.supervisor import Component, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


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
        _until(lambda: supervisor.check() == ["triggerer"])
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
        _until(lambda: supervisor.check() is not None and component.restarts == 2)
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
