"""The `cleanup` DAG under the real scheduler (`airflow standalone`), triggered through the
REST API: every task succeeds in a real worker. Airflow 3 runs tasks without metadata DB
access, so this is where the `airflow db clean` subprocess proves it gets the database
from the `airflow_db` connection.

A module of its own, apart from test_cleanup_dag.py's dag.test() runs: the stack is
session-wide, and a dag.test() of a DAG the running scheduler also schedules (the archiving
DAGs are unpaused at creation) races it for the same task instances."""

from __future__ import annotations

import time

import httpx
import pytest
from test_cleanup_dag import AIRFLOW_TASKS, CONTROL_TASKS, TASKS


def wait_for(what: str, check, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except httpx.TimeoutException:  # a loaded API server: ask again, until the deadline
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


@pytest.mark.server
def test_every_task_runs_under_the_real_scheduler(airflow_stack, execution_db, control_db):
    """Airflow 3 runs tasks without metadata DB access: the `airflow db clean` subprocess
    must get it from the `airflow_db` connection, in a real worker."""
    import httpx

    api = httpx.Client(base_url=f"{airflow_stack.base_url}/api/v2", timeout=30,
                       headers={"Authorization": f"Bearer {airflow_stack.token()}"})
    wait_for("the cleanup DAG to be parsed", lambda: api.get("/dags/cleanup").status_code == 200)

    def runs() -> list[dict]:
        return api.get("/dags/cleanup/dagRuns", params={"limit": 100}).json()["dag_runs"]

    try:
        assert api.patch("/dags/cleanup", json={"is_paused": False}).status_code == 200
        response = api.post("/dags/cleanup/dagRuns",
                            json={"logical_date": None, "conf": {"dry_run": True}})
        assert response.status_code in (200, 201), response.text
        run_id = response.json()["dag_run_id"]
        # also the nightly run the scheduler may start on unpausing: wait for every run
        wait_for("the runs to finish", lambda: all(
            r["state"] in ("success", "failed") for r in runs()) and runs())
    finally:
        api.patch("/dags/cleanup", json={"is_paused": True})
    tis = api.get(f"/dags/cleanup/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    assert {ti["task_id"]: ti["state"] for ti in tis} == {
        task: "success" for task in TASKS | CONTROL_TASKS | AIRFLOW_TASKS}
    log = str(api.get(f"/dags/cleanup/dagRuns/{run_id}/taskInstances/"
                      "airflow_metadata.clean_airflow_metadata/logs/1").json())
    assert "airflow db clean:" in log and "Performing dry run" in log, log[-3000:]
