"""Event validation and the queue writes/reads, on the real execution databases."""

from __future__ import annotations

import json
import select
import threading
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from sqlalchemy import text

from message_center import events
from message_center.events import EventValidationError, parse_batch, parse_event
from message_center.ids import cell_of, to_public, to_stored

EVENT = {"type": "ORDER_CONFIRMED", "email": "jane@example.com", "ctx": {"orderId": "A-1"}}


def rows(engine, table: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))
                .mappings()]


def push(engine, kind: str, *bodies: dict) -> list[int]:
    with engine.begin() as conn:
        return events.insert_events(conn, kind, [parse_event(body) for body in bodies])


@pytest.mark.fast
def test_a_full_event_is_read_with_acc_names_and_defaults():
    event = parse_event({
        "type": "OTP", "mobilePhone": "+33 6 12 34 56 78", "wishedChannel": "sms",
        "externalId": "x-1", "language": "fr", "country": "FR", "origin": "web",
        "scheduled": "2026-12-01T10:00:00", "expiration": "2026-12-01T12:00:00+01:00",
    })
    assert event.mobile_phone == "+33 6 12 34 56 78"
    assert event.scheduled == datetime(2026, 12, 1, 10, tzinfo=UTC)  # no offset: UTC
    assert event.ctx == {}
    assert parse_event(EVENT).wished_channel == "email"


@pytest.mark.fast
@pytest.mark.parametrize(("body", "field", "words"), [
    ({"email": "a@example.com"}, "type", "required"),
    ({"type": "  ", "email": "a@example.com"}, "type", "blank"),
    ({"type": 7, "email": "a@example.com"}, "type", "string"),
    ({"type": "T"}, "email", "required when wishedChannel is 'email'"),
    ({"type": "T", "email": "jane.example.com"}, "email", "not a valid email"),
    ({"type": "T", "email": "jane@localhost"}, "email", "not a valid email"),
    ({"type": "T", "wishedChannel": "sms", "email": "a@example.com"}, "mobilePhone",
     "required when wishedChannel is 'sms'"),
    ({"type": "T", "wishedChannel": "sms", "mobilePhone": "call me"}, "mobilePhone",
     "not a valid phone"),
    ({"type": "T", "wishedChannel": "fax", "email": "a@example.com"}, "wishedChannel",
     "'email', 'sms' or 'webpush'"),
    ({**EVENT, "ctx": [1, 2]}, "ctx", "JSON object"),
    ({**EVENT, "ctx": "{}"}, "ctx", "JSON object"),
    ({**EVENT, "ctx": {"blob": "x" * events.MAX_CTX_BYTES}}, "ctx", "larger than 65536"),
    ({**EVENT, "ctx": {"nul": "a\x00b"}}, "ctx", "NUL"),
    ({**EVENT, "origin": "a\x00b"}, "origin", "NUL"),
    ({**EVENT, "scheduled": "next tuesday"}, "scheduled", "ISO 8601"),
    ({**EVENT, "scheduled": 1764000000}, "scheduled", "ISO 8601"),
    ({**EVENT, "expiration": "2026-13-01T00:00:00Z"}, "expiration", "ISO 8601"),
    ({**EVENT, "scheduled": "2026-12-02T00:00:00Z", "expiration": "2026-12-01T00:00:00Z"},
     "expiration", "before scheduled"),
    ({**EVENT, "priority": 1}, "priority", "unknown field"),
    ({**EVENT, "mobile_phone": "+33612345678"}, "mobile_phone", "unknown field"),
])
def test_bad_event_names_the_field_and_the_reason(body, field, words):
    with pytest.raises(EventValidationError) as exc:
        parse_event(body)
    error = exc.value.errors[0]
    assert error["field"] == field
    assert words in error["msg"]
    assert field in error["msg"]


@pytest.mark.fast
def test_a_batch_reports_every_bad_index():
    with pytest.raises(EventValidationError) as exc:
        parse_batch({"events": [EVENT, {"type": "T"}, EVENT, {**EVENT, "ctx": []}]})
    assert [(e["index"], e["field"]) for e in exc.value.errors] == [
        (1, "events[1].email"), (3, "events[3].ctx")]


@pytest.mark.fast
@pytest.mark.parametrize(("body", "words"), [
    ([EVENT], "JSON object"),
    ({}, "events is required"),
    ({"events": EVENT}, "JSON array"),
    ({"events": []}, "1 to 1000"),
    ({"events": [EVENT] * 1001}, "got 1001"),
    ({"events": [EVENT], "mode": "fast"}, "unknown field 'mode'"),
])
def test_a_bad_batch_envelope_is_refused(body, words):
    with pytest.raises(EventValidationError) as exc:
        parse_batch(body)
    assert words in exc.value.errors[0]["msg"]


@pytest.mark.fast
@pytest.mark.parametrize("body", [b"{", b'{"type": NaN}', b'{"n": 1e400}', b"\xff\xfe"])
def test_json_that_postgresql_cannot_store_is_refused(body):
    with pytest.raises(EventValidationError) as exc:
        events.loads(body)
    assert exc.value.errors[0]["type"] == "json_invalid"


def test_insert_is_one_statement_per_batch_and_keeps_the_order(execution_db):
    bodies = [{**EVENT, "externalId": f"o-{i}"} for i in range(50)]
    ids = push(execution_db, "batch", *bodies)
    stored = {to_public(r["id"]): r for r in rows(execution_db, "batch_event")}
    assert [stored[i]["external_id"] for i in ids] == [f"o-{i}" for i in range(50)]
    assert all(r["status"] == "pending" and r["ctx"] == {"orderId": "A-1"}
               for r in stored.values())
    assert rows(execution_db, "rt_event") == []


def test_next_attempt_is_the_scheduled_time_or_now(execution_db):
    later = datetime.now(UTC) + timedelta(hours=2)
    now_id, later_id = push(execution_db, "rt", EVENT,
                            {**EVENT, "scheduled": later.isoformat()})
    by_id = {to_public(r["id"]): r for r in rows(execution_db, "rt_event")}
    assert by_id[later_id]["next_attempt"] == later
    assert by_id[now_id]["next_attempt"] == by_id[now_id]["created"]


def test_ids_carry_the_cell_of_their_instance_and_never_collide(execution_db, execution2_db):
    cell0 = push(execution_db, "rt", EVENT, EVENT)
    cell1 = push(execution2_db, "rt", EVENT, EVENT)
    assert {cell_of(i) for i in cell0} == {0}
    assert {cell_of(i) for i in cell1} == {1}
    assert all(i >= 1 << 56 for i in cell1)
    assert not set(cell0) & set(cell1)
    stored = rows(execution2_db, "rt_event")[0]["id"]
    assert to_stored(cell1[0]) == stored
    with execution2_db.connect() as conn:
        assert events.get_event(conn, cell1[0])["id"] == cell1[0]
    with execution_db.connect() as conn:
        assert events.get_event(conn, cell1[0]) is None  # lives on the other instance


def test_push_notifies_the_queue_channel_on_commit(test_deployment, execution_db):
    listener = psycopg2.connect(test_deployment.database_url("execution"))
    listener.autocommit = True
    try:
        with listener.cursor() as cur:
            cur.execute("LISTEN mc_rt_events; LISTEN mc_batch_events")
        push(execution_db, "rt", EVENT)
        push(execution_db, "batch", EVENT, EVENT)
        channels: set[str] = set()
        while len(channels) < 2 and select.select([listener], [], [], 10)[0]:
            listener.poll()
            channels |= {note.channel for note in listener.notifies}
        assert channels == {"mc_rt_events", "mc_batch_events"}
    finally:
        listener.close()


def test_get_event_shows_status_label_template_and_delivery(execution_db):
    (event_id,) = push(execution_db, "rt", EVENT)
    with execution_db.begin() as conn:
        conn.execute(text("""
            INSERT INTO published_template (internal_name, label, event_type, channel, version)
            VALUES ('orderConfirmed', 'Order confirmation', 'ORDER_CONFIRMED', 'email', 3)"""))
        conn.execute(text("""
            INSERT INTO delivery_log (id, event_kind, event_id, template_name, template_version,
                channel, address, status, attempts, error)
            VALUES (77, 'rt', :id, 'orderConfirmed', 3, 'email', 'jane@example.com', 'failed',
                3, '550 mailbox unavailable')"""), {"id": to_stored(event_id)})
        conn.execute(text("""
            UPDATE rt_event SET status = 'failed', template_name = 'orderConfirmed',
                template_version = 3, delivery_log_id = 77, error_reason = 'hard bounce'
            WHERE id = :id"""), {"id": to_stored(event_id)})
    with execution_db.connect() as conn:
        event = events.get_event(conn, event_id)
        assert events.get_event(conn, event_id + 1000) is None
        assert events.get_event(conn, 1 << 70) is None
    assert (event["status"], event["statusLabel"]) == ("failed", "Delivery failed")
    assert event["template"] == {"name": "orderConfirmed", "version": 3,
                                 "label": "Order confirmation"}
    assert event["delivery"]["status"] == "failed"
    assert event["delivery"]["error"] == "550 mailbox unavailable"
    assert event["errorReason"] == "hard bounce"
    assert event["wishedChannel"] == "email" and event["kind"] == "rt"
    json.dumps(event)  # the API returns it as is


def test_queue_depth_counts_due_pending_events_only(execution_db):
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    push(execution_db, "rt", EVENT, EVENT, {**EVENT, "scheduled": future})
    push(execution_db, "batch", EVENT)
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE batch_event SET status = 'sent'"))
    with execution_db.connect() as conn:
        depths = events.queue_depths(conn)
    assert depths["rt"].pending == 2
    assert depths["rt"].oldest_pending_age is not None
    assert depths["batch"] == events.QueueDepth(0, None)


def test_one_idempotency_key_claimed_twice_at_once_inserts_once(execution_db):
    """The second claim waits for the first transaction and then sees its answer."""
    first = execution_db.connect()
    transaction = first.begin()
    assert events.claim_idempotency_key(first, "k-race", "rtEvents", "h1") is None
    seen: list[events.StoredResponse | None] = []

    def second_request() -> None:
        with execution_db.begin() as conn:
            seen.append(events.claim_idempotency_key(conn, "k-race", "rtEvents", "h1"))

    waiter = threading.Thread(target=second_request)
    waiter.start()
    ids = events.insert_events(first, "rt", [parse_event(EVENT)])
    events.store_idempotent_response(first, "k-race", 201, {"id": ids[0], "status": "pending"})
    transaction.commit()
    first.close()
    waiter.join(30)
    assert seen == [events.StoredResponse("rtEvents", "h1", 201,
                                          {"id": ids[0], "status": "pending"})]
    assert len(rows(execution_db, "rt_event")) == 1


@pytest.mark.fast
def test_request_hash_ignores_key_order_and_whitespace_but_not_the_endpoint():
    a = events.request_hash("rtEvents", json.loads('{"type": "A", "email": "a@b.co"}'))
    b = events.request_hash("rtEvents", json.loads('{"email":"a@b.co","type":"A"}'))
    assert a == b
    assert a != events.request_hash("batchEvents", {"type": "A", "email": "a@b.co"})
