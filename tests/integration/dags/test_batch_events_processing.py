"""batchEventsProcessing in real DAG runs (`dag.test()`), on real PostgreSQL and SMTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from processing_factory import (
    delivery_logs,
    events,
    insert_events,
    insert_many,
    publish_templates,
    quarantine,
    recipients,
    statuses,
)

from mc_local.localenv import PROJECT_ROOT
from message_center.state import UNKNOWN_OUTCOME

DAG_ID = "batchEventsProcessing"


@pytest.fixture
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def run(dag, **conf):
    dagrun = dag.test(run_conf={"retry_backoff_seconds": 0, **conf})
    return dagrun


def test_dag_shape_for_the_ui(dag):
    assert dag.dag_display_name == "Processing batch events"
    assert dag.max_active_runs == 1 and not dag.catchup
    assert {"routing_batch_size", "shards"} <= set(dag.params)
    assert set(dag.task_ids) == {"split_queue", "render_and_deliver", "update_event_status"}
    assert dag.get_task("split_queue").task_display_name == "Split the queue and link templates"
    assert dag.get_task("render_and_deliver").map_index_template == "{{ shard_label }}"
    assert dag.params["routing_batch_size"] == 50_000


def test_pushed_events_are_sent_once_each(dag, execution_db, smtp_sink):
    publish_templates(execution_db)
    ids = insert_events(execution_db, "batch", 7)
    quarantine(execution_db, "user3@example.test")
    dagrun = run(dag, shards=3, routing_batch_size=2, delivery_chunk=2)
    assert dagrun.state == "success"
    rows = events(execution_db, "batch", ids)
    assert [row["status"] for row in rows] == ["sent", "sent", "ignored"] + ["sent"] * 4
    got = recipients(smtp_sink)
    assert set(got.values()) == {1} and "user3@example.test" not in got and len(got) == 6
    assert all(row["processed"] and row["delivery_log_id"] for row in rows)
    labels = {ti.task_id: set() for ti in dagrun.get_task_instances()}
    for ti in dagrun.get_task_instances():
        labels[ti.task_id].add(ti.rendered_map_index)
    assert labels["render_and_deliver"] == {"shard 0", "shard 1", "shard 2"}
    assert {log["status"] for log in delivery_logs(execution_db)} == {"sent", "ignored"}


def test_an_empty_queue_is_a_successful_run(dag, execution_db, smtp_sink):
    assert run(dag).state == "success"
    assert smtp_sink.messages() == []


# --- Real runs in separate processes: killed mid-shard, and two at once -----------------

RUN_IN_SUBPROCESS = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dagrun = bag.dags["batchEventsProcessing"].test(run_conf=json.loads(sys.argv[2]))
print("RUN STATE", dagrun.state)
"""


def start_run(conf: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN_IN_SUBPROCESS, str(PROJECT_ROOT / "dags"),
         json.dumps({"retry_backoff_seconds": 0, **conf})],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, text=True)


def wait_until(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_a_run_killed_mid_shard_then_rerun_sends_nothing_twice_and_loses_nothing(
        dag, execution_db, smtp_sink):
    publish_templates(execution_db)
    insert_many(execution_db, "batch", 400)
    # After kill -9, at most the message each SMTP session had in hand is unknown: with
    # 5 sessions per shard, that is at most one chunk of 5 per shard.
    victim = start_run({"shards": 2, "delivery_chunk": 5, "smtp_sessions": 5,
                        "claim_lease_seconds": 2})
    try:
        wait_until(lambda: len(list(smtp_sink.mail_dir.glob("*.eml"))) >= 40
                   or victim.poll() is not None)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(30)
    delivered_before = len(smtp_sink.messages())
    assert delivered_before < 400, "the run finished before it could be killed"
    assert statuses(execution_db, "batch")["pending_delivery"] > 0  # really mid-shard

    # Time passes: the dead run's claim leases (2 s) run out, and the messages it had in
    # hand were handed longer than the rerun's sending timeout ago. (That timeout is also
    # the rerun's own budget: a chunk still sending after half of it gives its rest back to
    # the queue for a later run, so it must leave time for 5 messages on a loaded machine.)
    wait_until(lambda: not lease_running(execution_db), timeout=30)
    wait_until(lambda: handed_within(execution_db, RERUN_SENDING_TIMEOUT) == 0, timeout=60)
    dagrun = run(dag, shards=2, delivery_chunk=5, smtp_sessions=5,
                 sending_timeout_seconds=RERUN_SENDING_TIMEOUT)
    assert dagrun.state == "success"

    rows = events(execution_db, "batch")
    got = recipients(smtp_sink)
    assert set(got.values()) == {1}, "a message was sent twice"
    by_status = Counter(row["status"] for row in rows)
    assert set(by_status) <= {"sent", "failed"} and sum(by_status.values()) == 400
    unknown = [row for row in rows if row["status"] == "failed"]
    assert all(row["error_reason"] == UNKNOWN_OUTCOME for row in unknown)
    assert len(unknown) <= 2 * 5  # at most one chunk per killed shard
    assert all(got[row["email"]] == 1 for row in rows if row["status"] == "sent")
    assert len(got) >= by_status["sent"]  # unknown ones may or may not have gone out


RERUN_SENDING_TIMEOUT = 8  # seconds


def handed_within(engine, seconds: float) -> int:
    """Messages still ``sending`` that were handed to the relay less than ``seconds`` ago."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM delivery_log WHERE status = 'sending' AND sending_started"
            " >= clock_timestamp() - make_interval(secs => :age)"), {"age": seconds})
            .scalar_one())


def lease_running(engine) -> bool:
    from sqlalchemy import text

    with engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM batch_event WHERE status IN ('pending', 'pending_delivery')"
            " AND next_attempt > now()")).scalar())


def test_two_runs_at_once_deliver_every_event_exactly_once(execution_db, smtp_sink):
    publish_templates(execution_db)
    insert_many(execution_db, "batch", 300)
    conf = {"shards": 2, "routing_batch_size": 20, "max_events_per_run": 150,
            "delivery_chunk": 10}
    runs = [start_run(conf), start_run(conf)]
    outputs = [process.communicate(timeout=300)[0] for process in runs]
    assert all("RUN STATE success" in output for output in outputs), outputs[0][-2000:]
    assert Counter(row["status"] for row in events(execution_db, "batch")) == {"sent": 300}
    got = recipients(smtp_sink)
    assert len(got) == 300 and set(got.values()) == {1}
