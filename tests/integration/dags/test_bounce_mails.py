"""bounceMails in real DAG runs (`dag.test()`): a real-world DSN about a message really
sent through the SMTP server on loopback, in a real IMAP mailbox (pymap), turns the Sent
event into Delivery failed and quarantines the address; without the connection the run
is skipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from processing_factory import events, insert_events, publish_templates

from message_center.delivery import quarantine as q

DAG_ID = "bounceMails"
CORPUS = Path(__file__).parents[2] / "data" / "bounces" / "flufl"


@pytest.fixture
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_dag_shape(dag):
    assert dag.dag_display_name == "Bounce mail processing"
    assert set(dag.task_ids) == {"read_bounce_mailbox"}
    assert dag.params["limit"] == 1000


def test_a_bounce_in_the_mailbox_fails_the_sent_event(dag, dagbag, execution_db, smtp_sink,
                                                      bounce_mailbox):
    publish_templates(execution_db)
    event_id = insert_events(execution_db, "batch", 1, email="gone@example.test")[0]
    assert dagbag.dags["batchEventsProcessing"].test().state == "success"
    assert events(execution_db, "batch", [event_id])[0]["status"] == "sent"
    (mail,) = smtp_sink.messages()
    raw = (CORPUS / "dsn_15.txt").read_bytes().replace(b"userx@example.com",
                                                          b"gone@example.test")
    last = list(re.finditer(rb"(?im)^(\s*Message-I[dD]:\s*)<[^>]+>", raw))[-1]
    raw = raw[:last.start()] + last.group(1) + str(mail["Message-ID"]).encode() + \
        raw[last.end():]
    bounce_mailbox.drop(raw)

    dagrun = dag.test()
    assert dagrun.state == "success"
    (ti,) = dagrun.get_task_instances()
    assert ti.state == "success"
    row = events(execution_db, "batch", [event_id])[0]
    assert row["status"] == "failed" and "5.1.1" in row["error_reason"]
    with execution_db.connect() as conn:
        assert q.get(conn, "email", "gone@example.test")["source"] == "bounce_mail"
    assert bounce_mailbox.unseen() == 0


def test_without_a_mailbox_connection_the_run_is_skipped(dag, execution_db, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_MC_BOUNCE_MAILBOX", raising=False)
    dagrun = dag.test()
    (ti,) = dagrun.get_task_instances()
    assert ti.state == "skipped"
