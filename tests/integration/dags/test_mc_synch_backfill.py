"""A backfill of an archiving DAG through the real `airflow backfill create`, with a
running scheduler (the session's Airflow stack), archives exactly its windows and rebuilds
their statistics. (The DAG's dag.test() runs: test_mc_synch.py; a second backfill of the
same windows changing nothing: test_readme.py, whose walk-through runs two.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from test_mc_synch import add_events, add_logs, archive_of, source_of

DAG_ID = "mcSynch_mcExec2"


def wait_for(what: str, check, timeout: float = 240, state=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except httpx.TimeoutException:  # a loaded API server: ask again, until the deadline
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {state()}")
        time.sleep(1)


@pytest.mark.server
def test_backfill_through_the_cli_archives_exactly_its_windows(
        airflow_stack, execution2_db, control_db):
    api = httpx.Client(base_url=f"{airflow_stack.base_url}/api/v2", timeout=30,
                       headers={"Authorization": f"Bearer {airflow_stack.token()}"})

    def dag_known():
        response = api.get(f"/dags/{DAG_ID}")
        return response.status_code == 200 and not response.json()["is_stale"] and response

    dag = wait_for("the DAG to be parsed", dag_known).json()
    assert dag["is_paused"] is False  # started without a click

    def runs(**params) -> list[dict]:
        return api.get(f"/dags/{DAG_ID}/dagRuns", params={"limit": 100, **params}
                       ).json()["dag_runs"]

    wait_for("its first scheduled run", lambda: any(
        r["run_type"] == "scheduled" for r in runs()))
    wait_for("no active run", lambda: not any(
        r["state"] in ("queued", "running") for r in runs()))
    with control_db.begin() as conn:  # whatever the scheduled runs archived
        conn.execute(text("DELETE FROM archived_event WHERE cell_id = 1"))
        conn.execute(text("DELETE FROM archived_delivery_log WHERE cell_id = 1"))

    t10 = datetime(2024, 4, 1, 10, tzinfo=UTC)  # other tests use March
    for hour in range(5):  # 10:00-15:00, one batch of each kind per hour
        at = t10 + timedelta(hours=hour)
        rt = add_events(execution2_db, "rt", at, 6, step=timedelta(minutes=10))
        add_events(execution2_db, "batch", at + timedelta(minutes=7), 4,
                   step=timedelta(minutes=13))
        add_logs(execution2_db, "rt", rt[:3], at + timedelta(minutes=30))

    def backfill() -> list[dict]:
        # "completed": runs of these dates left by earlier sessions are re-run as well.
        result = airflow_stack.airflow(
            "backfill", "create", "--dag-id", DAG_ID, "--from-date", "2024-04-01T11:00:00+00:00",
            "--to-date", "2024-04-01T12:00:00+00:00", "--reprocess-behavior", "completed",
            # 2024 is beyond the default statistics horizon (365 days back)
            "--dag-run-conf", '{"statistics_horizon_days": 3660}')
        assert result.returncode == 0, result.stdout + result.stderr
        window = {"logical_date_gte": "2024-04-01T11:00:00Z",
                  "logical_date_lte": "2024-04-01T12:00:00Z"}

        def done():
            found = [r for r in runs(**window) if r["run_type"] == "backfill"]
            return (len(found) == 2 and all(r["state"] in ("success", "failed") for r in found)
                    and not any(b["completed_at"] is None for b in api.get(
                        "/backfills", params={"dag_id": DAG_ID}).json()["backfills"])
                    and found)
        return wait_for("the backfill", done, state=lambda: (
            runs(**window), api.get("/backfills", params={"dag_id": DAG_ID}).json(),
            airflow_stack.log_path.read_text()[-4000:]))

    backfill_runs = backfill()
    assert {r["state"] for r in backfill_runs} == {"success"}
    windows = sorted((r["data_interval_start"], r["data_interval_end"]) for r in backfill_runs)
    assert windows == [("2024-04-01T11:00:00Z", "2024-04-01T12:00:00Z"),
                       ("2024-04-01T12:00:00Z", "2024-04-01T13:00:00Z")]
    start, end = t10 + timedelta(hours=1), t10 + timedelta(hours=3)
    archived = archive_of(control_db, 1)
    assert archived == source_of(execution2_db, start, end)
    assert [len(archived[k]) for k in ("rt", "batch", "delivery_log")] == [12, 8, 6]

    def statistics() -> list[tuple]:
        with control_db.connect() as conn:
            return [tuple(r) for r in conn.execute(text("""
                SELECT * FROM event_stats_hourly WHERE cell_id = 1 AND hour >= :s
                   AND hour < :e ORDER BY hour, event_kind, event_type, status"""),
                {"s": t10, "e": t10 + timedelta(days=1)})]
    # each backfill run rebuilt its hour: the 6 rt + 4 batch events received in it
    assert [(row[0], row[2], row[6]) for row in statistics()] == [
        (start, "batch", 4), (start, "rt", 6), (end - timedelta(hours=1), "batch", 4),
        (end - timedelta(hours=1), "rt", 6)]
    # A second backfill of the same windows changes nothing (archived_at included, and the
    # statistics): test_readme.py checks it on the README's own backfill, run twice anyway.
