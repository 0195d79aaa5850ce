"""Bulk actions at the domain level on the real execution database: cancel while the
batch processing runs, retry of known-not-sent failures through the real SMTP sink, the
unknown-outcome and expiration rules, the count guard, re-runs, replay and the audit."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from processing_factory import events, insert_events, publish_templates, recipients
from sqlalchemy import text

from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.operations import actions
from message_center.operations.filters import OperationInputError, parse_filter
from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
from message_center.status_sync import sync_event_statuses

FAST = ProcessingSettings(shards=2, delivery_chunk=50, retry_backoff_seconds=0,
                          retry_backoff_max_seconds=0, max_tries=1)


@pytest.fixture
def channels(test_deployment):
    with Channels(SmtpSettings(port=test_deployment.smtp_port), kind="batch") as chans:
        yield chans


def drain(engine, channels, kind="batch") -> None:
    recover(engine, FAST, kinds=(kind,))
    for claim in split_queue(engine, kind, FAST):
        deliver_shard(engine, claim, FAST, channels, copy_status=False)
    sync_event_statuses(engine)


def request(action, filter_, user="ops.jane", **extra):
    return actions.parse_request({"action": action, "filter": filter_, **extra}, user=user)


def audit_rows(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT actor, action, target, details FROM audit_log ORDER BY id")).mappings()]


def insert_pending(engine, count: int, prefix: str, *, later: bool) -> None:
    """``count`` batch events with external ids ``<prefix>N`` in one statement; ``later``:
    scheduled in an hour (pending, not yet due)."""
    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO batch_event (id, type, email, external_id, ctx, scheduled, next_attempt)
            SELECT ((SELECT cell_id FROM mc_instance)::bigint << 56) | nextval('mc_id_seq'),
                   'ORDER', :prefix || g || '@example.test', :prefix || g,
                   jsonb_build_object('firstName', 'B' || g, 'orderId', 'O-' || g),
                   CASE WHEN :later THEN now() + interval '1 hour' END,
                   CASE WHEN :later THEN now() + interval '1 hour' ELSE now() END
            FROM generate_series(1, :count) g"""),
            {"prefix": prefix, "count": count, "later": later})


def test_cancel_10000_pending_batch_events_while_the_processing_runs(
        execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    insert_pending(execution_db, 10_000, "mistake-", later=True)
    insert_pending(execution_db, 60, "real-", later=False)
    req = request("cancel", {"queue": "batch", "externalIdPrefix": "mistake-"})
    with execution_db.connect() as conn:
        dry = actions.preview(conn, req)
    assert dry.count == 10_000 and len(dry.sample) == actions.SAMPLE_SIZE
    assert {row["status"] for row in dry.sample} == {"pending"}

    processing = threading.Thread(target=lambda: [drain(execution_db, channels)
                                                  for _ in range(3)])
    processing.start()
    result = actions.run_action(execution_db, "manual__cancel-1", req,
                                expected_count=dry.count, batch_size=2500)
    processing.join()
    drain(execution_db, channels)

    assert result.done == 10_000
    by_status = Counter((row["external_id"].split("-")[0], row["status"], row["error_reason"])
                        for row in events(execution_db, "batch"))
    assert by_status == {("mistake", "expired", "cancelled by ops.jane"): 10_000,
                         ("real", "sent", None): 60}
    assert not [a for a in recipients(smtp_sink) if a.startswith("mistake-")]
    assert len(recipients(smtp_sink)) == 60

    # Re-running the same action (a cleared task) changes nothing and audits nothing more.
    again = actions.run_action(execution_db, "manual__cancel-1", req, expected_count=dry.count)
    assert again.done == 10_000
    (row,) = audit_rows(execution_db)
    assert row["actor"] == "ops.jane" and row["action"] == "bulk.cancel"
    assert row["target"] == "manual__cancel-1"
    assert row["details"]["dryRunCount"] == 10_000 and row["details"]["done"] == 10_000
    assert row["details"]["filter"] == {"queue": "batch", "externalIdPrefix": "mistake-"}


def fail_everything(engine, smtp_sink, channels, addresses, reply="554 5.7.1 Rejected by policy"):
    for address in addresses:
        smtp_sink.script(address, reply)
    drain(engine, channels)


def test_retry_sends_known_not_sent_failures_once_and_unknown_only_when_confirmed(
        execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    ids = insert_events(execution_db, "batch", 4)
    fail_everything(execution_db, smtp_sink, channels,
                    [f"user{n}@example.test" for n in range(1, 5)])
    assert {row["status"] for row in events(execution_db, "batch")} == {"failed"}
    smtp_sink.clear()
    # The fourth one's outcome is unknown (a worker died while sending it).
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE delivery_log SET failure_class = 'unknown' "
                          "WHERE event_id = :id"), {"id": ids[3]})
    req = request("retry", {"status": "failed"})
    with execution_db.connect() as conn:
        dry = actions.preview(conn, req)
    assert dry.count == 3 and dry.excluded["unknownOutcome"] == 1

    actions.run_action(execution_db, "manual__retry-1", req, expected_count=3)
    drain(execution_db, channels)
    assert recipients(smtp_sink) == Counter({f"user{n}@example.test": 1 for n in (1, 2, 3)})
    status = {row["id"]: row["status"] for row in events(execution_db, "batch")}
    assert [status[i] for i in ids] == ["sent", "sent", "sent", "failed"]

    # A re-run of the same action retries nothing again.
    actions.run_action(execution_db, "manual__retry-1", req, expected_count=3)
    drain(execution_db, channels)
    assert sum(recipients(smtp_sink).values()) == 3

    # Unknown outcome: only with the explicit confirmation.
    confirmed = request("retry", {"status": "failed"}, confirmUnknown=True)
    with execution_db.connect() as conn:
        assert actions.preview(conn, confirmed).count == 1
    actions.run_action(execution_db, "manual__retry-2", confirmed, expected_count=1)
    drain(execution_db, channels)
    assert recipients(smtp_sink)["user4@example.test"] == 1


def test_retry_past_expiration_needs_a_new_expiration(execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    (event_id,) = insert_events(execution_db, "batch", 1)
    fail_everything(execution_db, smtp_sink, channels, ["user1@example.test"])
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE batch_event SET expiration = now() - interval '1 minute'"))
    smtp_sink.clear()
    with execution_db.connect() as conn:
        dry = actions.preview(conn, request("retry", {"ids": [event_id]}))
        assert (dry.count, dry.excluded["pastExpiration"]) == (0, 1)
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    req = request("retry", {"ids": [event_id]}, expiration=later)
    actions.run_action(execution_db, "manual__retry-exp", req, expected_count=1)
    drain(execution_db, channels)
    assert recipients(smtp_sink) == Counter({"user1@example.test": 1})


def test_a_cancelled_event_is_reported_to_the_webhooks_like_any_expiry(execution_db):
    from webhook_support import add_subscription, outbox

    add_subscription(execution_db, "https://hooks.example.org/a", ["event.expired"])
    insert_pending(execution_db, 3, "wh-", later=True)
    req = request("cancel", {"externalIdPrefix": "wh-"})
    actions.run_action(execution_db, "manual__wh", req, expected_count=3)
    actions.run_action(execution_db, "manual__wh", req, expected_count=3)
    rows = outbox(execution_db)
    assert len(rows) == 3 and {r["name"] for r in rows} == {"event.expired"}


def test_the_guard_refuses_when_the_count_moved_and_changes_nothing(execution_db):
    publish_templates(execution_db)
    insert_pending(execution_db, 5, "x-", later=True)
    req = request("cancel", {"externalIdPrefix": "x-"})
    with pytest.raises(actions.GuardRefused, match="5 events match now, the dry run counted 3"):
        actions.run_action(execution_db, "manual__guard", req, expected_count=3, tolerance=1)
    assert {row["status"] for row in events(execution_db, "batch")} == {"pending"}
    # Re-running the refused run refuses again; it never starts.
    with pytest.raises(actions.GuardRefused):
        actions.run_action(execution_db, "manual__guard", req, expected_count=5)
    assert {row["status"] for row in events(execution_db, "batch")} == {"pending"}
    (row,) = audit_rows(execution_db)
    assert row["details"]["state"] == "refused" and row["details"]["done"] == 0
    # Within the tolerance it goes.
    assert actions.run_action(execution_db, "manual__guard-2", req, expected_count=4,
                              tolerance=1).done == 5


def test_replay_creates_a_linked_new_event_once(execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    (original,) = insert_events(execution_db, "batch", 1)
    drain(execution_db, channels)
    req = request("replay", {"ids": [original]})
    actions.run_action(execution_db, "manual__replay", req, expected_count=1)
    actions.run_action(execution_db, "manual__replay", req, expected_count=1)
    drain(execution_db, channels)
    rows = events(execution_db, "batch")
    assert len(rows) == 2
    (copy,) = [r for r in rows if r["id"] != original]
    assert copy["replayed_from"] == original and copy["status"] == "sent"
    assert copy["ctx"] == rows[0]["ctx"]
    assert recipients(smtp_sink) == Counter({"user1@example.test": 2})
    from message_center.events import get_event
    from message_center.ids import to_public

    with execution_db.connect() as conn:
        assert get_event(conn, to_public(copy["id"]))["replayedFrom"] == to_public(original)


@pytest.mark.parametrize(("body", "field"), [
    ({"action": "delete", "filter": {"status": "failed"}}, "action"),
    ({"action": "cancel", "filter": {}}, "filter"),
    ({"action": "cancel", "filter": {"status": "lost"}}, "filter.status"),
    ({"action": "cancel", "filter": {"instance": 300}}, "filter.instance"),
    ({"action": "cancel", "filter": {"ids": ["x"]}}, "filter.ids"),
    ({"action": "cancel", "filter": {"colour": "red"}}, "filter.colour"),
    ({"action": "cancel", "filter": {"from": "yesterday"}}, "filter.from"),
    ({"action": "replay", "filter": {"status": "sent"}, "confirmUnknown": True},
     "confirmUnknown"),
    ({"action": "retry", "filter": {"status": "failed"}, "expiration": "2000-01-01T00:00:00Z"},
     "expiration"),
])
def test_bad_input_names_the_field(body, field):
    with pytest.raises(OperationInputError) as caught:
        actions.parse_request(body, user="ops")
    assert caught.value.field == field


def test_a_filter_round_trips_as_json():
    given = {"instance": 0, "queue": "rt", "eventType": ["ORDER"], "status": ["failed"],
             "failureClass": ["soft"], "externalIdPrefix": "A-", "ids": ["42"]}
    parsed = parse_filter(given)
    assert parsed.to_dict() == given and parse_filter(parsed.to_dict()) == parsed


def test_manual_quarantine_changes_are_audited_and_copied_to_control_once(
        execution_db, control_db):
    from message_center import audit
    from message_center.cleanup import CleanupSettings, purge_audit
    from message_center.delivery import quarantine

    with execution_db.begin() as conn:
        quarantine.add(conn, "email", "a@example.test", "complained", decided_by="ops.jane")
        quarantine.release(conn, "email", "a@example.test", decided_by="ops.joe")
        quarantine.release(conn, "email", "a@example.test", decided_by="ops.joe")  # no-op
    assert [(r["actor"], r["action"], r["target"]) for r in audit_rows(execution_db)] == [
        ("ops.jane", "quarantine.add", "email a@example.test"),
        ("ops.joe", "quarantine.release", "email a@example.test")]
    for _ in range(2):  # the archiving re-runs: copied once
        with execution_db.connect() as src, control_db.begin() as dst:
            audit.copy_to_control(src, dst, 0)
    with control_db.connect() as conn:
        rows, total = audit.entries(conn, audit.AuditQuery(action="quarantine."))
        with pytest.raises(Exception, match="append-only"):
            conn.execute(text("UPDATE audit_log SET actor = 'someone else'"))
    assert total == 2 and rows[0]["instance"] == "cell 0"
    assert audit.to_csv(rows).splitlines()[0] == "at,instance,actor,action,target,details"
    # The clean-up keeps it 1,095 days by default.
    later = datetime.now(UTC) + timedelta(days=1000)
    assert purge_audit(control_db, CleanupSettings(), now=later) == 0
    assert purge_audit(control_db, CleanupSettings(audit_days=10), now=later) == 2
