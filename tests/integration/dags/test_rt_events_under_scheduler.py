"""rtEventsProcessing under the real scheduler (the session's Airflow stack): the
continuous DAG's shards loop and send what is pushed. (Its dag.test() runs:
test_rt_events_processing.py.)"""

from __future__ import annotations

from collections import Counter

import pytest
import sqlalchemy
from processing_factory import events, insert_events, recipients
from test_rt_events_processing import DAG_ID, ORDER


@pytest.mark.server
def test_under_the_scheduler_pushed_events_are_sent_within_seconds(
        airflow_stack, execution_db, smtp_sink, test_deployment):
    """The real thing: scheduler + LocalExecutor run the continuous DAG; events pushed
    (committed + NOTIFY, as the push API does) are sent while the shards loop."""
    import time

    import httpx

    from mc_local.launcher import publish_to_deployment

    api = httpx.Client(base_url=f"{airflow_stack.base_url}/api/v2", timeout=30,
                       headers={"Authorization": f"Bearer {airflow_stack.token()}"})

    def wait_for(what, condition, timeout=240.0):
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n"
                                     + airflow_stack.log_path.read_text()[-3000:])
            time.sleep(0.005)
        return result

    def running_shards():
        response = api.get(f"/dags/{DAG_ID}/dagRuns/~/taskInstances",
                           params={"task_id": "link_render_deliver", "state": "running"})
        return response.status_code == 200 and response.json()["total_entries"] >= 1

    wait_for("the DAG to be parsed", lambda: api.get(f"/dags/{DAG_ID}").status_code == 200)
    # The repository's templates, as `mc setup` publishes them: mcPublishTemplates (running
    # in this stack) keeps execution instances in sync with them.
    print(publish_to_deployment(test_deployment))
    api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
    try:
        wait_for("a shard loop to run", running_shards)
        insert_events(execution_db, "rt", 1, email="first@example.test", **ORDER)
        wait_for("a first event to be sent", lambda: {
            row["status"] for row in events(execution_db, "rt")} == {"sent"}, timeout=60)
        latencies = []
        for n in range(1, 6):  # one at a time, as applications push real-time events
            pushed_at = time.monotonic()
            (event_id,) = insert_events(execution_db, "rt", 1, email=f"user{n}@example.test",
                                        **ORDER)
            wait_for("the event to be sent", lambda event_id=event_id: events(
                execution_db, "rt", [event_id])[0]["status"] == "sent", timeout=30)
            latencies.append(time.monotonic() - pushed_at)
        print("push -> sent (s):", " ".join(f"{value:.3f}" for value in latencies))
        assert recipients(smtp_sink) == Counter(
            {f"user{n}@example.test": 1 for n in range(1, 6)} | {"first@example.test": 1})
    finally:
        api.patch(f"/dags/{DAG_ID}", json={"is_paused": True})
        for run in api.get(f"/dags/{DAG_ID}/dagRuns",
                           params={"state": "running"}).json().get("dag_runs", []):
            api.patch(f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})
        # The shard processes stop at their next heartbeat; wait until their LISTEN
        # connections are gone so no loop outlives this test and eats later tests' events.
        def loops_stopped() -> bool:
            with execution_db.connect() as conn:
                return bool(conn.execute(sqlalchemy.text(
                    "SELECT count(*) = 0 FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query IN "
                    "('LISTEN mc_rt_events', 'LISTEN mc_batch_events')"),
                ).scalar_one())

        wait_for("the shard loops to stop", loops_stopped, timeout=120)
