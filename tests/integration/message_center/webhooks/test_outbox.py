"""The transactional outbox: every reported status change writes its webhook messages in
the statement that makes it (real PostgreSQL, real SMTP on loopback, the real processing
code), and only then."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from processing_factory import (
    ORDER_TEMPLATE,
    events,
    insert_events,
    insert_many,
    publish_templates,
)
from sqlalchemy import text
from webhook_support import add_subscription, outbox

from message_center import state, webhook_outbox
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.ids import NEXT_ID_SQL
from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
from message_center.status_sync import sync_event_statuses
from message_center.webhooks.model import EVENT_NAMES

FAST = ProcessingSettings(shards=1, delivery_chunk=5, retry_backoff_seconds=0,
                          retry_backoff_max_seconds=0, max_tries=2)
EVERYTHING = list(EVENT_NAMES)


@pytest.fixture
def channels(test_deployment):
    with Channels(SmtpSettings(port=test_deployment.smtp_port), kind="batch") as chans:
        yield chans


def drain(engine, channels, kind: str) -> None:
    recover(engine, FAST, kinds=(kind,))
    for claim in split_queue(engine, kind, FAST):
        deliver_shard(engine, claim, FAST, channels, copy_status=(kind == "rt"))
    sync_event_statuses(engine)


def test_no_subscription_writes_nothing(execution_db, smtp_sink, channels):
    publish_templates(execution_db, ORDER_TEMPLATE)
    insert_events(execution_db, "rt", 2)
    drain(execution_db, channels, "rt")
    assert {e["status"] for e in events(execution_db, "rt")} == {"sent"}
    assert outbox(execution_db) == []
    # nor does it pay for them: the sequence counter is not raised
    assert {e["webhook_seq"] for e in events(execution_db, "rt")} == {0}


@pytest.mark.parametrize("kind", ["rt", "batch"])
def test_every_final_status_is_written_once_with_its_details(execution_db, smtp_sink,
                                                             channels, kind):
    add_subscription(execution_db, "https://hooks.example.org/a", EVERYTHING)
    publish_templates(execution_db, ORDER_TEMPLATE)
    sent = insert_events(execution_db, kind, 2)
    (untaken,) = insert_events(execution_db, kind, 1, type="NO_TEMPLATE")
    (expired,) = insert_events(execution_db, kind, 1, expiration="2000-01-01T00:00:00Z")
    drain(execution_db, channels, kind)
    drain(execution_db, channels, kind)  # a re-run changes nothing and writes nothing
    rows = outbox(execution_db)
    by_event = {r["event_id"]: r for r in rows}
    assert len(rows) == 4 == len(by_event)
    assert {by_event[i]["name"] for i in sent} == {"event.sent"}
    assert by_event[untaken]["name"] == "event.not_taken_into_account"
    assert by_event[expired]["name"] == "event.expired"
    assert all(r["seq"] == 1 and r["status"] == "pending" and r["event_kind"] == kind
               for r in rows)
    data = by_event[sent[0]]["data"]
    assert data["status"] == "sent" and data["type"] == "ORDER" and data["channel"] == "email"
    assert data["template"] == ORDER_TEMPLATE.internal_name and data["templateVersion"] == 1
    assert "no published email template" in by_event[untaken]["data"]["reason"]


def test_filters_by_event_name_and_type(execution_db, smtp_sink, channels):
    add_subscription(execution_db, "https://hooks.example.org/a", ["event.sent"],
                     event_types=["OTHER"], sub_id="wh_other")
    add_subscription(execution_db, "https://hooks.example.org/b", ["event.sent"],
                     event_types=["ORDER"], sub_id="wh_order")
    add_subscription(execution_db, "https://hooks.example.org/c", ["event.failed"],
                     sub_id="wh_failed")
    publish_templates(execution_db, ORDER_TEMPLATE)
    insert_events(execution_db, "rt", 3)
    drain(execution_db, channels, "rt")
    assert {r["subscription_id"] for r in outbox(execution_db)} == {"wh_order"}
    assert len(outbox(execution_db)) == 3


def test_disabled_subscription_gets_nothing(execution_db, smtp_sink, channels):
    add_subscription(execution_db, "https://hooks.example.org/a", EVERYTHING)
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE webhook_subscription SET enabled = false"))
    webhook_outbox.forget()
    publish_templates(execution_db, ORDER_TEMPLATE)
    insert_events(execution_db, "rt", 1)
    drain(execution_db, channels, "rt")
    assert outbox(execution_db) == []


def test_a_rolled_back_change_writes_no_message(execution_db):
    add_subscription(execution_db, "https://hooks.example.org/a", EVERYTHING)
    insert_events(execution_db, "rt", 3, type="NO_TEMPLATE")
    with execution_db.connect() as conn, conn.begin() as tx:
        result = state.claim_due(conn, "rt", token=1, limit=10, lease_seconds=60)
        assert result.not_taken == 3
        assert conn.execute(text("SELECT count(*) FROM webhook_outbox")).scalar() == 3
        tx.rollback()
    assert outbox(execution_db) == []
    assert {e["status"] for e in events(execution_db, "rt")} == {"pending"}


def test_a_late_bounce_is_event_bounced_with_the_next_sequence_number(execution_db, smtp_sink,
                                                                       channels):
    add_subscription(execution_db, "https://hooks.example.org/a", EVERYTHING)
    publish_templates(execution_db, ORDER_TEMPLATE)
    (event_id,) = insert_events(execution_db, "rt", 1)
    drain(execution_db, channels, "rt")
    (log_id,) = [e["delivery_log_id"] for e in events(execution_db, "rt")]
    with execution_db.begin() as conn:
        failed = state.fail_after_bounce(conn, log_ids=[log_id], errors=["550 no such user"],
                                         classes=["hard"], reasons=["user_unknown"])
    assert failed == {log_id}
    with execution_db.begin() as conn:  # read again: nothing new
        state.fail_after_bounce(conn, log_ids=[log_id], errors=["550"], classes=["hard"],
                                reasons=["user_unknown"])
    rows = outbox(execution_db)
    assert [(r["name"], r["seq"]) for r in rows] == [("event.sent", 1), ("event.bounced", 2)]
    assert rows[1]["event_id"] == event_id
    assert rows[1]["data"]["status"] == "failed"
    assert rows[1]["data"]["failureClass"] == "hard"
    assert rows[1]["data"]["failureReason"] == "user_unknown"


def test_enqueue_hook_for_the_tracking(execution_db, smtp_sink, channels):
    add_subscription(execution_db, "https://hooks.example.org/a", ["event.opened"])
    publish_templates(execution_db, ORDER_TEMPLATE)
    (event_id,) = insert_events(execution_db, "rt", 1)
    drain(execution_db, channels, "rt")
    with execution_db.begin() as conn:
        ids = webhook_outbox.enqueue(conn, "rt", event_id, webhook_outbox.OPENED,
                                     extra={"automated": True})
    assert len(ids) == 1
    (row,) = outbox(execution_db)
    # the event's own counter: event.sent took 1 (not wanted by this subscription: a gap)
    assert row["name"] == "event.opened" and row["seq"] == 2
    assert row["data"]["automated"] is True
    with pytest.raises(ValueError), execution_db.begin() as conn:
        webhook_outbox.enqueue(conn, "rt", event_id, "drop table")


def test_subscriptions_are_shared_between_the_instances(control_db, execution_db,
                                                        execution2_db, test_deployment):
    from mc_airflow.webhooks import FernetBox
    from message_center.net_guard import HostList
    from message_center.webhooks import store
    from message_center.webhooks.model import parse_subscription

    change = parse_subscription({"url": "https://hooks.example.org/x",
                                 "events": ["event.sent"]}, hosts=HostList("X"),
                                creating=True, resolve_names=False)
    with control_db.begin() as conn:
        row, _secret = store.create(conn, change, box=FernetBox(), created_by="t")
    instances = {0: execution_db, 1: execution2_db}
    assert store.sync_all(instances, control_db)["errors"] == {}
    for engine in (execution_db, execution2_db):
        with engine.connect() as conn:
            assert [r["id"] for r in store.list_subscriptions(conn)] == [row["id"]]
    with execution2_db.begin() as conn:  # its dispatcher disables the endpoint
        conn.execute(text("UPDATE webhook_subscription SET enabled = false, "
                          "disabled_reason = 'the endpoint answered 410 Gone', "
                          "updated = clock_timestamp()"))
    store.sync_all(instances, control_db)
    for engine in (control_db, execution_db):
        with engine.connect() as conn:
            (copy,) = store.list_subscriptions(conn)
        assert copy["enabled"] is False and "410" in copy["disabled_reason"]
    with control_db.begin() as conn:  # enabled again by hand, later: that wins
        store.update(conn, row["id"], parse_subscription(
            {"enabled": True}, hosts=HostList("X"), creating=False))
        store.delete(conn, row["id"])
    store.sync_all(instances, control_db)
    with execution2_db.connect() as conn:
        assert store.list_subscriptions(conn) == []


def test_a_large_copy_into_an_empty_looking_outbox_stays_linear(execution_db):
    """updateEventStatus copying thousands of statuses into an outbox the planner believes
    empty (just truncated and analysed, as on a new instance or after a purge): the
    statement never rescans the pages it is writing (a max(seq) subplan per message did:
    100,000 changes took 26 s, 10,000 took 0.8 s; the number now comes from the event
    row's counter). Counted in heap blocks read from the outbox (deterministic, no
    clock)."""
    count = 3000
    add_subscription(execution_db, "https://hooks.example.org/a", EVERYTHING)
    insert_many(execution_db, "batch", count)
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE batch_event SET status = 'pending_delivery'"))
        conn.execute(text(f"""
            INSERT INTO delivery_log (id, event_kind, event_id, template_name,
                                      template_version, channel, address, status, attempts,
                                      created, last_modified, sent_at)
            SELECT {NEXT_ID_SQL}, 'batch', e.id, 'orderConfirmed', 1, 'email', e.email,
                   'sent', 1, now(), now(), now()
            FROM batch_event e
        """))
        conn.execute(text("ANALYZE webhook_outbox"))  # no pages, no rows
    with execution_db.begin() as conn:
        copied = state.copy_statuses_between(conn, "batch", None, datetime.now(UTC))
        read = conn.execute(text("SELECT pg_stat_get_xact_blocks_fetched("
                                 "'webhook_outbox'::regclass)")).scalar()
    assert copied == {"sent": count}
    # one block per row written and per sequence number read, at most (a rescan of what
    # is written would be count * pages / 2: about 100 times more)
    assert read <= 2 * count
    rows = outbox(execution_db)
    assert len(rows) == count and {r["seq"] for r in rows} == {1}


def test_sequence_numbers_of_one_event_increase_within_and_across_statements(
        execution_db, smtp_sink, channels):
    """Two messages about one event in one statement take consecutive numbers; a later
    statement continues after them (whatever order the insert writes its rows in)."""
    add_subscription(execution_db, "https://hooks.example.org/a", EVERYTHING)
    publish_templates(execution_db, ORDER_TEMPLATE)
    first, second = insert_events(execution_db, "rt", 2)
    drain(execution_db, channels, "rt")  # event.sent: 1 each
    with execution_db.begin() as conn:
        webhook_outbox.enqueue_many(conn, [
            webhook_outbox.Report("rt", second, webhook_outbox.OPENED),
            webhook_outbox.Report("rt", first, webhook_outbox.OPENED),
            webhook_outbox.Report("rt", second, webhook_outbox.CLICKED)])
    with execution_db.begin() as conn:
        webhook_outbox.enqueue(conn, "rt", second, webhook_outbox.CLICKED)
    seqs = {event: [(r["name"], r["seq"]) for r in sorted(outbox(execution_db),
                                                            key=lambda r: r["seq"])
                    if r["event_id"] == event] for event in (first, second)}
    assert seqs[first] == [("event.sent", 1), ("event.opened", 2)]
    assert seqs[second] == [("event.sent", 1), ("event.opened", 2), ("event.clicked", 3),
                            ("event.clicked", 4)]


def test_a_retry_takes_no_number_so_each_event_counts_its_messages(execution_db, smtp_sink,
                                                                    channels):
    """Only reported changes raise the event's counter: a claim that links, a retry that
    puts the event back to pending write no message and take no number."""
    add_subscription(execution_db, "https://hooks.example.org/a", EVERYTHING)
    publish_templates(execution_db, ORDER_TEMPLATE)
    (retried,) = insert_events(execution_db, "rt", 1, email="busy@example.test")
    (given_up,) = insert_events(execution_db, "rt", 1, email="full@example.test")
    smtp_sink.script("busy@example.test", "451 4.3.0 busy")
    smtp_sink.script("full@example.test", "always 452 4.2.2 mailbox full")
    for _ in range(4):
        drain(execution_db, channels, "rt")
    rows = {e["id"]: e for e in events(execution_db, "rt")}
    assert (rows[retried]["status"], rows[retried]["error_count"]) == ("sent", 1)
    assert rows[given_up]["status"] == "expired"
    assert {e["webhook_seq"] for e in rows.values()} == {1}
    assert sorted((r["event_id"], r["name"], r["seq"]) for r in outbox(execution_db)) == \
        sorted([(retried, "event.sent", 1), (given_up, "event.expired", 1)])


def test_two_concurrent_transactions_on_one_event_take_different_numbers(
        execution_db, smtp_sink, channels):
    """The number is taken under the event's row lock: a second transaction reporting on
    the same event waits for the first to commit, then counts on from its number (taken
    from the outbox's max(seq) in the statement's snapshot, both took 2)."""
    add_subscription(execution_db, "https://hooks.example.org/a", EVERYTHING)
    publish_templates(execution_db, ORDER_TEMPLATE)
    (event_id,) = insert_events(execution_db, "rt", 1)
    drain(execution_db, channels, "rt")  # event.sent: 1
    failures: list[BaseException] = []

    def second() -> None:
        try:
            with execution_db.begin() as two:
                two.execute(text("SET LOCAL lock_timeout = '120s'"))  # never hang the suite
                webhook_outbox.enqueue(two, "rt", event_id, webhook_outbox.CLICKED)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    with execution_db.connect() as one, one.begin():
        webhook_outbox.enqueue(one, "rt", event_id, webhook_outbox.OPENED)
        pid = one.execute(text("SELECT pg_backend_pid()")).scalar()
        thread = threading.Thread(target=second)
        thread.start()
        wait_until_blocked_by(execution_db, pid)  # the second is waiting: one commits now
    thread.join()
    assert failures == []
    rows = sorted(outbox(execution_db), key=lambda r: r["seq"])
    assert [(r["name"], r["seq"]) for r in rows] == [
        ("event.sent", 1), ("event.opened", 2), ("event.clicked", 3)]
    assert [e["webhook_seq"] for e in events(execution_db, "rt")] == [3]


def wait_until_blocked_by(engine, pid: int) -> None:
    """Return once a session waits for a lock held by backend ``pid``."""
    for _ in range(2400):
        with engine.connect() as conn:
            if conn.execute(text("SELECT count(*) FROM pg_stat_activity "
                                 "WHERE :pid = ANY(pg_blocking_pids(pid))"),
                            {"pid": pid}).scalar():
                return
        time.sleep(0.05)
    raise AssertionError(f"no session ever waited for backend {pid}")


def test_a_hit_batch_yields_to_a_writer_holding_its_event_and_is_written_after(
        execution_db, smtp_sink, channels):
    """The tracking's first open waits at most LOCK_WAIT for an event another writer holds
    (a recorder's group, a status copy), then keeps its hits for the next try: the delivery
    never waits on the tracking, and nothing is lost or misnumbered."""
    from message_center.tracking.hits import Hit, HitWriter

    add_subscription(execution_db, "https://hooks.example.org/a", EVERYTHING)
    publish_templates(execution_db, ORDER_TEMPLATE)
    (event_id,) = insert_events(execution_db, "rt", 1)
    drain(execution_db, channels, "rt")  # event.sent: 1
    with execution_db.connect() as conn:
        log_id = conn.execute(text("SELECT id FROM delivery_log WHERE event_id = :e"),
                              {"e": event_id}).scalar_one()
    writer = HitWriter(execution_db)
    writer.add(Hit(log_id, "open", datetime.now(UTC)))
    with execution_db.connect() as holder, holder.begin():  # another writer's transaction
        webhook_outbox.enqueue(holder, "rt", event_id, webhook_outbox.CLICKED)
        flushed: list[int] = []
        flushing = threading.Thread(target=lambda: flushed.append(writer.flush()))
        flushing.start()
        flushing.join(30)  # without the yield it waits for the holder's commit
        assert flushed == [0]  # yielded: nothing written, the hit kept
        with execution_db.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM tracking_log")).scalar_one() == 0
    assert writer.flush() == 1
    assert [(r["name"], r["seq"]) for r in sorted(outbox(execution_db),
                                                  key=lambda r: r["seq"])] == [
        ("event.sent", 1), ("event.clicked", 2), ("event.opened", 3)]
