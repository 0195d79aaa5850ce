"""Quarantines shared between two real execution databases and the control database: a
hard bounce on instance 1 (real SMTP server) makes instance 2 ignore the address after the
next synchronisation; a release on the control instance reaches both and sends again;
the newest decision wins; a second run changes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from processing_factory import events, insert_events, publish_templates, recipients
from sqlalchemy import text

from message_center import quarantine_sync
from message_center.delivery import quarantine as q
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.status_sync import sync_event_statuses

SETTINGS = ProcessingSettings(shards=1, max_tries=1)


def deliver(engine, port):
    with Channels(SmtpSettings(port=port), None, kind="batch") as channels:
        for claim in split_queue(engine, "batch", SETTINGS):
            deliver_shard(engine, claim, SETTINGS, channels, copy_status=False)
    sync_event_statuses(engine)


def status_of(engine, event_id):
    return events(engine, "batch", [event_id])[0]


def get(engine, address, channel="email"):
    with engine.connect() as conn:
        return q.get(conn, channel, address)


@pytest.fixture
def instances(execution_db, execution2_db, control_db):
    return {0: execution_db, 1: execution2_db}


def test_a_bounce_on_instance_1_is_ignored_on_instance_2_and_a_release_reaches_all(
        instances, control_db, smtp_sink, test_deployment):
    one, two = instances[0], instances[1]
    for engine in (one, two):
        publish_templates(engine)
    smtp_sink.script("gone@example.test", "550 5.1.1 user unknown")
    first = insert_events(one, "batch", 1, email="gone@example.test")[0]
    deliver(one, test_deployment.smtp_port)
    assert status_of(one, first)["status"] == "failed"

    report = quarantine_sync.sync_all(instances, control_db)
    assert (report.up[0].read, report.up[0].applied) == (1, 1)
    assert report.down[1].applied == 1 and report.errors == {}
    copied = get(two, "gone@example.test")
    assert copied["active"] and copied["origin_cell"] == 0 and copied["source"] == "delivery"
    assert copied["updated"] == get(one, "gone@example.test")["updated"]  # the decision's time

    on_two = insert_events(two, "batch", 1, email="gone@example.test")[0]
    deliver(two, test_deployment.smtp_port)
    row = status_of(two, on_two)
    assert row["status"] == "ignored"
    assert row["error_reason"].startswith("address is in quarantine: hard bounce (user_unknown)")

    again = quarantine_sync.sync_all(instances, control_db)  # idempotent
    assert sum(s.applied for s in [*again.up.values(), *again.down.values()]) == 0

    with control_db.begin() as conn:  # released on the control instance
        q.release(conn, "email", "gone@example.test", decided_by="ops")
    quarantine_sync.sync_all(instances, control_db)
    for engine in (one, two):
        record = get(engine, "gone@example.test")
        assert record["status"] == "released" and record["decided_by"] == "ops"
        assert record["origin_cell"] is None  # decided on the control instance
    later = insert_events(two, "batch", 1, email="gone@example.test")[0]
    deliver(two, test_deployment.smtp_port)
    assert status_of(two, later)["status"] == "sent"  # a release sends again
    assert recipients(smtp_sink)["gone@example.test"] == 1


def test_the_newest_decision_wins_whatever_the_order(instances, control_db):
    one, two = instances[0], instances[1]
    with two.begin() as conn:  # older: quarantined on instance 2
        q.add(conn, "email", "x@example.test", "complaint")
    with one.begin() as conn:  # newer: quarantined then released on instance 1
        q.add(conn, "email", "x@example.test", "typo")
        q.release(conn, "email", "x@example.test", decided_by="ops")
    quarantine_sync.sync_all({1: two, 0: one}, control_db)  # instance 2 first
    for engine in (one, two, control_db):
        record = get(engine, "x@example.test")
        assert (record["status"], record["decided_by"]) == ("released", "ops")
    # a newer decision on instance 2 wins in turn, and its soft data travel with it
    with two.begin() as conn:
        q.add(conn, "email", "x@example.test", "complaint again", release_after_days=3)
    quarantine_sync.sync_all(instances, control_db)
    for engine in (one, two, control_db):
        record = get(engine, "x@example.test")
        assert record["active"] and record["reason"] == "complaint again"
        assert record["origin_cell"] == 1 and record["release_at"] is not None


def test_watermarks_and_pages(instances, control_db):
    one = instances[0]
    with one.begin() as conn:
        for n in range(7):
            q.add(conn, "sms", f"+3360000000{n}", "by hand")
    up = quarantine_sync.sync_up(one, control_db, 0, chunk_rows=3)
    assert (up.read, up.applied) == (7, 7)
    with control_db.connect() as conn:
        mark = conn.execute(text("SELECT watermark FROM quarantine_sync WHERE cell_id = 0 "
                                 "AND direction = 'up'")).scalar_one()
    with one.connect() as conn:
        newest = conn.execute(text("SELECT max(last_modified) FROM quarantine")).scalar_one()
    assert mark == newest
    # next run: only what changed since (minus the lookback)
    assert quarantine_sync.sync_up(one, control_db, 0, lookback=timedelta(0)).read == 1
    with one.begin() as conn:
        q.release(conn, "sms", "+33600000003")
    step = quarantine_sync.sync_up(one, control_db, 0, lookback=timedelta(0))
    assert (step.applied, get(control_db, "+33600000003", "sms")["status"]) == (1, "released")


def test_an_unreachable_instance_is_reported_and_the_others_synchronised(instances,
                                                                         control_db):
    with instances[0].begin() as conn:
        q.add(conn, "email", "y@example.test", "by hand")
    report = quarantine_sync.sync_all(
        {0: instances[0], 7: "postgresql://nobody@127.0.0.1:1/nothing", 1: instances[1]},
        control_db)
    assert report.errors[7].startswith("up: OperationalError")
    assert get(instances[1], "y@example.test")["active"]


def test_an_unsubscribe_on_instance_1_is_suppressed_on_instance_2_and_lifted_everywhere(
        instances, control_db):
    from message_center.delivery import suppression

    one, two = instances[0], instances[1]
    with one.begin() as conn:
        suppression.suppress(conn, "email", "ada@example.test", "news")
    quarantine_sync.sync_all(instances, control_db)
    with two.connect() as conn:
        rows, _ = suppression.list_suppressions(conn)
    assert [(r["address"], r["category"], r["origin_cell"]) for r in rows] == [
        ("ada@example.test", "news", 0)]
    with two.begin() as conn:  # lifted on instance 2 (its own id)
        suppression.remove(conn, rows[0]["id"])
    report = quarantine_sync.sync_all(instances, control_db)
    assert not report.errors
    for engine in (one, two, control_db):
        with engine.connect() as conn:
            status = conn.execute(text("SELECT status FROM suppression")).scalar_one()
        assert status == "removed"
