"""rtEventsProcessing in real DAG runs (`dag.test()`), on real PostgreSQL and SMTP.

The shards' loop duration is a param, so a test run ends after a few seconds. (Under the
real scheduler: test_rt_events_under_scheduler.py, so that these tests need no Airflow
process and run on any pytest worker.)
"""

from __future__ import annotations

from collections import Counter

import pytest
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
