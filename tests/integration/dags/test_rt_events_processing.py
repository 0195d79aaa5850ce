"""rtEventsProcessing in real DAG runs (`dag.test()`), on real PostgreSQL and SMTP.

The shards' loop duration is a param, so a test run ends after a few seconds.
"""

from __future__ import annotations

from collections import Counter

import pytest
import sqlalchemy
from processing_factory import events, insert_events, publish_templates, quarantine, recipients

DAG_ID = "rtEventsProcessing"
QUICK = {"loop_seconds": 2, "poll_seconds": 0.1, "retry_backoff_seconds": 0}
# An event for the repository's orderConfirmed template (include/message_templates).
ORDER = {"type": "ORDER_CONFIRMED",
         "ctx": {"firstName": "Ada{n}", "orderId": "A-{n}", "total": 42.5}}


@pytest.fixture
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_dag_shape_for_the_ui(dag):
    assert dag.dag_display_name == "Processing real time events"
    assert dag.max_active_runs == 1 and not dag.catchup
    assert type(dag.timetable).__name__ == "ContinuousTimetable"
    assert {"shards", "routing_batch_size", "loop_seconds", "poll_seconds"} <= set(dag.params)
    assert set(dag.task_ids) == {"recover_and_open_shards", "link_render_deliver",
                                 "update_event_status"}
    assert dag.get_task("recover_and_open_shards").task_display_name == (
        "Recover and open the shards")
    assert dag.get_task("link_render_deliver").map_index_template == "{{ shard_label }}"
    assert "LISTEN" in dag.doc_md


def test_every_outcome_in_one_run(dag, execution_db, smtp_sink):
    publish_templates(execution_db)
    plain = insert_events(execution_db, "rt", 3)

    def one(email, **fields):
        return insert_events(execution_db, "rt", 1, email=email, **fields)[0]

    busy = one("busy@example.test")
    full = one("full@example.test")
    gone = one("gone@example.test")
    quarantined = one("q@example.test")
    unmatched = one("u@example.test", type="NOT_PUBLISHED")
    later = one("later@example.test", scheduled="2999-01-01T00:00:00Z")
    past = one("past@example.test", expiration="2001-01-01T00:00:00Z")
    smtp_sink.script("busy@example.test", "451 4.3.0 busy")
    smtp_sink.script("full@example.test", "always 452 4.2.2 mailbox full")
    smtp_sink.script("gone@example.test", "always 550 5.1.1 no such user")
    quarantine(execution_db, "q@example.test")

    dagrun = dag.test(run_conf={**QUICK, "shards": 2, "max_tries": 3})
    assert dagrun.state == "success"
    rows = {row["id"]: row for row in events(execution_db, "rt")}
    status = {event_id: rows[event_id]["status"] for event_id in rows}
    assert [status[i] for i in plain] == ["sent"] * 3
    assert (status[busy], rows[busy]["error_count"]) == ("sent", 1)  # 4xx, retried, sent
    assert (status[full], rows[full]["error_count"]) == ("expired", 3)  # endless 4xx
    assert status[gone] == "failed" and "550" in rows[gone]["error_reason"]  # 5xx
    assert status[quarantined] == "ignored"
    assert status[unmatched] == "not_taken_into_account"
    assert status[later] == "pending"  # scheduled in the future: waits
    assert status[past] == "expired"
    got = recipients(smtp_sink)
    assert got == Counter({f"user{n}@example.test": 1 for n in (1, 2, 3)}
                          | {"busy@example.test": 1})
    mail = {str(m["To"]): m for m in smtp_sink.messages()}
    assert mail["user2@example.test"]["Subject"] == "Order A-2 confirmed, Ada2"
    labels = {ti.rendered_map_index for ti in dagrun.get_task_instances()
              if ti.task_id == "link_render_deliver"}
    assert labels == {"shard 0", "shard 1"}


def test_a_bad_param_is_refused_with_its_name(dag, execution_db, smtp_sink):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="param shards"):
        dag.test(run_conf={**QUICK, "shards": 0})
    assert smtp_sink.messages() == []


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
