"""Quarantine in real DAG runs (`dag.test()` of batchEventsProcessing): a hard bounce from
the real SMTP server quarantines, the next run ignores the address with the reason; the
rules come from the ``mc_quarantine_rules`` Airflow Variable."""

from __future__ import annotations

import json

import pytest
from processing_factory import events, insert_events, publish_templates, recipients

from message_center.delivery import quarantine as q

DAG_ID = "batchEventsProcessing"


@pytest.fixture
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def run(dag):
    return dag.test(run_conf={"retry_backoff_seconds": 0, "retry_backoff_max_seconds": 0})


def test_hard_and_soft_bounces_in_runs(dag, execution_db, smtp_sink, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_MC_QUARANTINE_RULES", json.dumps(
        {"email": {"soft_threshold": 2, "soft_window_days": 1, "release_after_days": 3}}))
    publish_templates(execution_db)
    smtp_sink.script("gone@example.test", "550 5.1.1 user unknown")
    smtp_sink.script("full@example.test", "always 452 4.2.2 mailbox full")
    gone = insert_events(execution_db, "batch", 1, email="gone@example.test")
    full = insert_events(execution_db, "batch", 1, email="full@example.test")
    assert run(dag).state == "success"
    assert [e["status"] for e in events(execution_db, "batch", gone + full)] == [
        "failed", "pending"]
    assert run(dag).state == "success"  # second soft bounce: threshold 2 from the Variable
    with execution_db.connect() as conn:
        assert q.get(conn, "email", "full@example.test")["failure_class"] == "soft"
        record = q.get(conn, "email", "gone@example.test")
    assert record["active"] and (record["release_at"] - record["updated"]).days in (2, 3)
    later = insert_events(execution_db, "batch", 1, email="gone@example.test")
    assert run(dag).state == "success"
    rows = {row["id"]: row for row in events(execution_db, "batch", later + full)}
    assert [rows[i]["status"] for i in later + full] == ["ignored", "ignored"]
    assert rows[later[0]]["error_reason"].startswith("address is in quarantine: hard bounce "
                                              "(user_unknown)")
    assert recipients(smtp_sink) == {}

