"""``make run-execution2``: a second execution instance (cell 1) beside the first, both
archived by the control instance.

The server test runs the real topology on the test databases: the session's Airflow
(``airflow_stack``: control instance + execution instance cell 0) and a second Airflow
started as ``make run-execution2`` starts it (:mod:`mc_local.execution2` under its
supervisor: execution DAGs only, its own metadata database, push API and execution
database ``<profile>_mc_execution2``, cell 1) on the same PostgreSQL, once for the
module's server tests. Events are pushed to both push APIs; the second instance delivers its own;
the control instance's ``mcSynch_mcExec1`` / ``mcSynch_mcExec2`` runs archive both; the
history report of the UI shows both cells.
"""

from __future__ import annotations

import contextlib
import csv
import io
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from mc_local import execution2
from mc_local.localenv import deployment

EVENTS_PER_CELL = 15
ORDER = {"type": "ORDER_CONFIRMED", "ctx": {"firstName": "Ada", "orderId": "A-1",
                                             "total": 42.5}}


@pytest.mark.fast
def test_profile_names_its_databases_ports_and_roles(monkeypatch):
    monkeypatch.delenv("MC_EXECUTION2_API_PORT", raising=False)
    monkeypatch.delenv("MC_API_PORT", raising=False)
    monkeypatch.delenv("MC_SMTP_PORT", raising=False)
    second = deployment("execution2")
    assert isinstance(second, execution2.SecondExecution)
    assert (second.database("airflow"), second.database("execution")) == (
        "airflow_execution2", "mc_execution2")
    assert second.api_port == 8090 and second.smtp_port == deployment("run").smtp_port
    assert second.airflow_home.name == "airflow-execution2"
    env = second.environment()
    assert env["MC_DEPLOYMENT_ROLES"] == "execution"
    assert env["AIRFLOW_CONN_MC_EXECUTION"].endswith("/mc_execution2")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/airflow_execution2")
    assert env["AIRFLOW__API__PORT"] == "8090"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] != deployment("run").environment()[
        "AIRFLOW__API_AUTH__JWT_SECRET"]  # its own secrets and passwords
    test_second = deployment("test_execution2")
    assert test_second.database("execution") == "test_mc_execution2"
    assert test_second.airflow_home.name == "airflow-test-execution2"
    with pytest.raises(ValueError, match="no 'control' database"):
        second.database("control")


def _client(base_url: str, password: str) -> httpx.Client:
    token = httpx.post(f"{base_url}/auth/token", timeout=120, json={
        "username": "admin", "password": password}).json()["access_token"]
    # 120 s: two API servers on a loaded machine have answered a push after more than 30 s.
    return httpx.Client(base_url=base_url, timeout=120,
                        headers={"Authorization": f"Bearer {token}"})


def _polled(check):
    try:
        return check()
    except httpx.TimeoutException:  # a loaded API server: ask again, until the deadline
        return None


def wait_for(what: str, check, timeout: float, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (result := _polled(check)):
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(1)
    return result


class SecondInstance:
    """``make run-execution2`` of the test profile (``mc run --profile
    <profile>_execution2``, a real process under its supervisor), shared by the module's
    server tests: its Airflow starts once. The last test stops it with Ctrl-C."""

    def __init__(self, deployment, run: subprocess.Popen, log: Path) -> None:
        self.deployment, self.run, self.log = deployment, run, log
        self._api: httpx.Client | None = None

    @property
    def profile(self) -> str:
        return self.deployment.profile

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.deployment.api_port}"

    def listed(self) -> dict[str, tuple[int, bool]]:
        """``mc ps``'s rows: component -> (pid, running)."""
        from mc_local.cli import main as mc

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert mc(["ps", "--profile", self.profile]) == 0
        rows = [line.split() for line in out.getvalue().splitlines()[1:]]
        return {row[0]: (int(row[1]), row[2] == "running") for row in rows if len(row) == 3}

    def api(self) -> httpx.Client:
        if self._api is None:
            self._api = _client(self.base_url, self.deployment.password("admin"))
        return self._api


COMPONENTS = {"scheduler", "dag-processor", "triggerer", "api-server"}


@pytest.fixture(scope="module")
def second_instance(tmp_path_factory):
    """The second execution deployment of the test profile, running as `make
    run-execution2` runs it: every component started, the push API answering."""
    import os
    import sys

    from conftest import PROFILE, free_port

    from mc_local.supervisor import stop_recorded_session

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MC_EXECUTION2_API_PORT", str(free_port()))
        second = deployment(f"{PROFILE}_execution2")
        log = tmp_path_factory.mktemp("execution2") / "run-execution2.log"
        with log.open("wb") as out:
            run = subprocess.Popen([str(Path(sys.executable).parent / "mc"), "run",
                                    "--profile", second.profile], env=dict(os.environ),
                                   stdout=out, stderr=subprocess.STDOUT)
        instance = SecondInstance(second, run, log)
        try:
            def ready() -> bool:
                if run.poll() is not None:
                    raise AssertionError(f"mc run exited ({run.returncode}):\n"
                                         f"{log.read_text(errors='replace')[-3000:]}")
                if not {name for name, (_, running) in instance.listed().items()
                                      if running} >= COMPONENTS:
                    return False
                try:
                    health = httpx.get(f"{instance.base_url}/api/v2/monitor/health",
                                       timeout=3).json()
                    if health.get("scheduler", {}).get("status") != "healthy":
                        return False
                    return instance.api().get("/api/v2/dags/rtEventsProcessing").status_code \
                        == 200
                except (httpx.HTTPError, ValueError, KeyError):
                    return False

            wait_for("the second execution instance", ready, 300, log)
            yield instance
        finally:
            if run.poll() is None:
                run.terminate()
                try:
                    run.wait(180)
                except subprocess.TimeoutExpired:
                    run.kill()
            stop_recorded_session(second.session_file)  # what a killed run left behind


@pytest.mark.server
@pytest.mark.slow
def test_two_execution_instances_archived_by_the_control_instance(
        airflow_stack, second_instance, execution_db, execution2_db, control_db, smtp_sink):
    from mc_local.launcher import publish_to_deployment

    second_api, log = second_instance.api(), second_instance.log
    print(publish_to_deployment(deployment()))  # templates again, after the truncations
    first_api = _client(airflow_stack.base_url, airflow_stack.password_of("admin"))
    # The second instance runs only the execution DAGs.
    dag_ids = {d["dag_id"] for d in second_api.get("/api/v2/dags", params={
        "limit": 100}).json()["dags"]}
    assert {"rtEventsProcessing", "batchEventsProcessing", "updateEventStatus"} <= dag_ids
    assert not {d for d in dag_ids if d.startswith("mcSynch_") or d == "mcPublishTemplates"}

    pushed: dict[int, set[int]] = {0: set(), 1: set()}
    for cell, api in ((0, first_api), (1, second_api)):
        for n in range(EVENTS_PER_CELL):
            response = api.post("/message-center/v1/rtEvents", json={
                **ORDER, "email": f"cell{cell}-{n}@example.test"})
            assert response.status_code == 201, response.text
            pushed[cell].add(int(response.json()["id"]))
        batch = api.post("/message-center/v1/batchEvents", json={"events": [
            {**ORDER, "email": f"cell{cell}-batch{n}@example.test"}
            for n in range(EVENTS_PER_CELL)]})
        assert batch.status_code == 201, batch.text
        pushed[cell].update(int(i) for i in batch.json()["ids"])
    for cell, ids in pushed.items():
        assert {event_id >> 56 for event_id in ids} == {cell}  # the cell id is the high byte

    # The second instance delivers its events with its own scheduler (the first one's
    # processing DAGs stay paused in the test session: its events wait, pending).
    def second_done():
        with execution2_db.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM (SELECT status FROM rt_event UNION ALL "
                "SELECT status FROM batch_event) e WHERE status = 'sent'")).scalar_one() == \
                2 * EVENTS_PER_CELL

    wait_for("the second instance to send its events", second_done, 240, log)
    received = Counter(str(m["To"]) for m in smtp_sink.messages())
    cell1 = {to: n for to, n in received.items() if to.startswith("cell1-")}
    assert len(cell1) == 2 * EVENTS_PER_CELL and set(cell1.values()) == {1}  # each once

    # The control instance archives both (manual runs archive up to now).
    runs = {}
    for dag_id in ("mcSynch_mcExec1", "mcSynch_mcExec2"):
        response = first_api.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        assert response.status_code == 200, response.text
        runs[dag_id] = response.json()["dag_run_id"]

    def archived():
        states = {dag_id: first_api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()[
            "state"] for dag_id, run_id in runs.items()}
        assert "failed" not in states.values(), states
        return set(states.values()) == {"success"}

    wait_for("both archiving runs", archived, 300, airflow_stack.log_path)
    with control_db.connect() as conn:
        rows = conn.execute(text("SELECT cell_id, id, status FROM archived_event")).all()
        logs = conn.execute(text("SELECT cell_id, count(*) FROM archived_delivery_log "
                                 "GROUP BY cell_id")).all()
    by_cell = {cell: {row.id for row in rows if row.cell_id == cell} for cell in (0, 1)}
    assert by_cell == pushed  # every event of both cells, nothing else, nothing lost
    assert {row.status for row in rows if row.cell_id == 1} == {"sent"}
    assert dict(logs).get(1) == 2 * EVENTS_PER_CELL

    # The UI's history report shows both instances (per cell filter).
    for cell in (0, 1):
        report = first_api.get("/message-center/ui/history.csv", params={
            "period": "24h", "cells": str(cell)})
        assert report.status_code == 200, report.text
        table = list(csv.DictReader(io.StringIO(report.text)))
        assert sum(int(row["events"]) for row in table) == 2 * EVENTS_PER_CELL, table
        if cell == 1:
            assert sum(int(row["sent"]) for row in table) == 2 * EVENTS_PER_CELL, table


@pytest.mark.server
def test_make_run_execution2_starts_a_killed_component_again_and_ctrl_c_stops_all(
        second_instance):
    """`make run-execution2` (`mc run --profile <profile>_execution2`, a real process):
    the triggerer killed with SIGKILL is started again and heartbeats again; Ctrl-C then
    stops every component. `mc ps` lists them."""
    import signal

    from mc_local.supervisor import kill_session
    from message_center.db import engine_for

    run, log, listed = second_instance.run, second_instance.log, second_instance.listed
    airflow_db = engine_for(second_instance.deployment.database_url("airflow"))
    try:
        assert {name for name, (_, running) in listed().items() if running} >= COMPONENTS
        killed, _ = listed()["triggerer"]
        with airflow_db.connect() as conn:
            killed_at = conn.execute(text("SELECT now()")).scalar_one()
        kill_session(killed)  # like `kill -9` of the triggerer and what it started

        def started_again() -> bool:
            pid, running = listed().get("triggerer", (killed, False))
            return running and pid != killed

        wait_for("the triggerer started again", started_again, 60, log)
        assert "triggerer exited (code -9); restarting it" in log.read_text()

        def heartbeats() -> bool:  # the new triggerer works: a job of its own, alive
            with airflow_db.connect() as conn:
                return bool(conn.execute(text(
                    "SELECT count(*) FROM job WHERE job_type = 'TriggererJob' "
                    "AND state = 'running' AND start_date > :t AND latest_heartbeat > :t"),
                    {"t": killed_at}).scalar_one())

        wait_for("the new triggerer's heartbeat", heartbeats, 240, log)
        pids = [pid for pid, _ in listed().values()]
        run.send_signal(signal.SIGINT)  # Ctrl-C
        assert run.wait(180) == 0, log.read_text()[-3000:]
        assert not [pid for pid in pids if _runs(pid)]
        assert listed() == {}  # nothing recorded any more
    finally:
        airflow_db.dispose()


def _runs(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
