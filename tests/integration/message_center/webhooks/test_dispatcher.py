"""The dispatcher against a real receiver on loopback that verifies every signature with
the ``standardwebhooks`` library: real PostgreSQL, real SMTP, the real processing code.
No timed asserts: waits only end a hang; order is asserted by what arrived first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import replace

import pytest
from processing_factory import ORDER_TEMPLATE, insert_events, publish_templates
from sqlalchemy import text
from webhook_support import QUICK, Receiver, dispatching, outbox, subscribe

from message_center import state, webhook_outbox
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.net_guard import WEBHOOK_ALLOWED_HOSTS, HostList
from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
from message_center.status_sync import sync_event_statuses
from message_center.webhooks import store
from message_center.webhooks.model import (
    WebhookValidationError,
    message_id,
    parse_subscription,
)

FAST = ProcessingSettings(shards=1, delivery_chunk=5, retry_backoff_seconds=0,
                          retry_backoff_max_seconds=0, max_tries=2)


@pytest.fixture
def channels(test_deployment):
    with Channels(SmtpSettings(port=test_deployment.smtp_port), kind="batch") as chans:
        yield chans


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def drain(engine, channels, kind: str) -> None:
    recover(engine, FAST, kinds=(kind,))
    for claim in split_queue(engine, kind, FAST):
        deliver_shard(engine, claim, FAST, channels, copy_status=(kind == "rt"))
    sync_event_statuses(engine)


def test_every_status_arrives_once_signed_rt_and_batch(execution_db, smtp_sink, channels,
                                                       receiver):
    _sub, receiver.secret = subscribe(execution_db, receiver.url)
    publish_templates(execution_db, ORDER_TEMPLATE)
    rt = insert_events(execution_db, "rt", 3)
    batch = insert_events(execution_db, "batch", 3)
    (untaken,) = insert_events(execution_db, "batch", 1, type="NO_TEMPLATE")
    with dispatching(execution_db):
        drain(execution_db, channels, "rt")
        drain(execution_db, channels, "batch")
        receiver.wait_for(lambda: len(receiver.received) >= 7)
    assert all(r.verified for r in receiver.received)
    assert Counter(receiver.ids()).most_common(1)[0][1] == 1  # once per webhook-id
    bodies = {r.body["data"]["id"]: r.body for r in receiver.received}
    assert set(bodies) == set(rt + batch + [untaken])
    assert {bodies[i]["type"] for i in rt + batch} == {"event.sent"}
    assert bodies[untaken]["type"] == "event.not_taken_into_account"
    sent = bodies[rt[0]]["data"]
    assert sent["status"] == "sent" and sent["statusLabel"] == "Sent"
    assert sent["kind"] == "rt" and sent["sequence"] == 1 and sent["channel"] == "email"
    assert sent["template"] == ORDER_TEMPLATE.internal_name
    assert {r["status"] for r in outbox(execution_db)} == {"delivered"}
    with execution_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM webhook_attempt "
                                 "WHERE status_code = 200")).scalar() == 7


def test_receiver_down_then_up_all_arrive_in_order_per_event(execution_db, smtp_sink,
                                                             channels):
    failing = {"left": 12}

    def answer(_n):
        if failing["left"] > 0:
            failing["left"] -= 1
            return 500, 0.0, {}
        return 200, 0.0, {}

    settings = replace(QUICK, schedule=(0.05,) * 20)
    with Receiver(answer=answer) as receiver:
        _sub, receiver.secret = subscribe(execution_db, receiver.url)
        publish_templates(execution_db, ORDER_TEMPLATE)
        ids = insert_events(execution_db, "rt", 4)
        drain(execution_db, channels, "rt")
        with execution_db.connect() as conn:
            logs = list(conn.execute(text(
                "SELECT delivery_log_id FROM rt_event ORDER BY id")).scalars())
        with execution_db.begin() as conn:  # every event also bounces: two messages each
            state.fail_after_bounce(conn, log_ids=logs, errors=["550"] * 4,
                                    classes=["hard"] * 4, reasons=["user_unknown"] * 4)
        with dispatching(execution_db, settings):
            receiver.wait_for(lambda: len({r.webhook_id for r in receiver.received
                                           if r.verified}) >= 8 and failing["left"] == 0
                              and len(receiver.received) >= 20)
    delivered = [r for r in receiver.received[12:]]
    per_event: dict[int, list[str]] = defaultdict(list)
    for r in delivered:
        per_event[r.body["data"]["id"]].append(r.body["type"])
    assert set(per_event) == set(ids)
    for names in per_event.values():  # sent always before bounced, each exactly once
        assert names == ["event.sent", "event.bounced"]
    assert {r["status"] for r in outbox(execution_db)} == {"delivered"}


def subscriptions(engine):
    with engine.connect() as conn:
        return store.list_subscriptions(conn)


def test_retry_after_is_honoured_and_410_disables(execution_db, receiver):
    receiver.answer = lambda n: (503, 0.0, {"Retry-After": "30"}) if n == 0 else (410, 0.0, {})
    sub, receiver.secret = subscribe(execution_db, receiver.url)
    with execution_db.begin() as conn:
        store.enqueue_test(conn, sub)
    with dispatching(execution_db):
        receiver.wait_for(lambda: outbox(execution_db)[0]["last_code"] == 503)
    (row,) = outbox(execution_db)
    assert row["status"] == "pending" and row["attempts"] == 1
    wait = (row["next_attempt"] - row["last_attempt"]).total_seconds()
    assert wait >= 29  # Retry-After (30 s) beats the 0.05 s schedule
    with execution_db.begin() as conn:  # due now: the receiver says 410 Gone
        conn.execute(text("UPDATE webhook_outbox SET next_attempt = now()"))
    with dispatching(execution_db):
        receiver.wait_for(lambda: len(receiver.received) >= 2)
        receiver.wait_for(lambda: not subscriptions(execution_db)[0]["enabled"])
    (sub_row,) = subscriptions(execution_db)
    assert "410" in sub_row["disabled_reason"]
    assert outbox(execution_db)[0]["status"] == "failed"


def test_retries_end_failed_and_replay_sends_the_same_ids(execution_db, receiver):
    receiver.answer = lambda n: (500, 0.0, {}) if n < 5 else (200, 0.0, {})
    sub, receiver.secret = subscribe(execution_db, receiver.url)
    with execution_db.begin() as conn:
        store.enqueue_test(conn, sub)
    settings = replace(QUICK, schedule=(0.05, 0.05, 0.05, 0.05))  # 5 tries in all
    with dispatching(execution_db, settings):
        receiver.wait_for(lambda: outbox(execution_db)[0]["status"] == "failed")
    assert len(receiver.received) == 5 and len(set(receiver.ids())) == 1
    (first_id,) = set(receiver.ids())
    with execution_db.begin() as conn:
        assert store.replay(conn, sub, message_ids=[outbox(execution_db)[0]["id"]]) == 1
    with dispatching(execution_db, settings):
        receiver.wait_for(lambda: outbox(execution_db)[0]["status"] == "delivered")
    assert receiver.received[-1].webhook_id == first_id and receiver.received[-1].verified
    assert receiver.received[-1].body == receiver.received[0].body  # the same message


def test_a_slow_receiver_does_not_delay_another_endpoint(execution_db, smtp_sink, channels):
    with Receiver(answer=lambda n: (200, 2.0, {})) as slow, Receiver() as fast:
        subscribe(execution_db, slow.url)
        _fast, fast.secret = subscribe(execution_db, fast.url)
        publish_templates(execution_db, ORDER_TEMPLATE)
        insert_events(execution_db, "rt", 20)
        with dispatching(execution_db):
            drain(execution_db, channels, "rt")
            fast.wait_for(lambda: len(fast.received) >= 20)
            slow_count = len(slow.received)
            slow.wait_for(lambda: len(slow.received) >= 8)
    # the slow endpoint (4 in flight, 2 s each) had answered at most a few when the fast
    # one had everything
    assert slow_count < 20 and all(r.verified for r in fast.received)


def test_a_loopback_url_is_refused_without_the_allowlist(execution_db, receiver):
    nothing = HostList.parse("", WEBHOOK_ALLOWED_HOSTS)
    with pytest.raises(WebhookValidationError) as refused:
        parse_subscription({"url": receiver.url, "events": ["event.sent"]}, hosts=nothing,
                           creating=True)
    assert refused.value.errors[0]["field"] == "url"
    for url in ("https://localhost/x", "https://10.0.0.1/x", "https://169.254.169.254/x",
                "http://example.org/x"):
        with pytest.raises(WebhookValidationError):
            parse_subscription({"url": url, "events": ["event.sent"]}, hosts=nothing,
                               creating=True)
    # allowed when it was registered, refused at the send once the allowlist is gone
    sub, receiver.secret = subscribe(execution_db, receiver.url)
    with execution_db.begin() as conn:
        store.enqueue_test(conn, sub)
    with dispatching(execution_db, hosts=nothing):
        receiver.wait_for(lambda: (outbox(execution_db)[0]["last_error"] or "") != "")
    assert receiver.received == []
    assert "refused" in outbox(execution_db)[0]["last_error"]


# The dispatcher process of the kill -9 test: the secrets are decrypted with the Fernet
# key Airflow's FernetBox uses, without importing Airflow (seconds per start).
DISPATCH_SCRIPT = """
import os, sys
from cryptography.fernet import Fernet, MultiFernet
from message_center.db import engine_for
from message_center.net_guard import HostList
from message_center.webhooks.dispatcher import DispatchSettings, run_dispatcher
settings = DispatchSettings(schedule=(0.05,) * 5, jitter=0, poll_seconds=0.1,
                            refresh_seconds=0.2, max_in_flight=2, rate_per_second=1000)
class FernetBox:
    def __init__(self):
        keys = os.environ["AIRFLOW__CORE__FERNET_KEY"].split(",")
        self.fernet = MultiFernet([Fernet(key.strip()) for key in keys])
    def decrypt(self, value):
        return self.fernet.decrypt(value.encode()).decode()
print("started", flush=True)
run_dispatcher(engine_for(sys.argv[1]), settings, FernetBox(),
               HostList.parse("127.0.0.1", "MC_WEBHOOK_ALLOWED_HOSTS"), loop_seconds=600)
"""


def test_kill_9_of_the_dispatcher_loses_nothing(execution_db, smtp_sink, channels,
                                                test_deployment):
    with Receiver(answer=lambda n: (200, 0.3, {})) as receiver:
        _sub, receiver.secret = subscribe(execution_db, receiver.url)
        publish_templates(execution_db, ORDER_TEMPLATE)
        ids = insert_events(execution_db, "batch", 30)
        drain(execution_db, channels, "batch")
        url = test_deployment.database_url("execution")
        run = [sys.executable, "-c", DISPATCH_SCRIPT, url]
        first = subprocess.Popen(run, env=dict(os.environ), start_new_session=True)
        try:
            receiver.wait_for(lambda: len(receiver.received) >= 3)
        finally:
            os.kill(first.pid, signal.SIGKILL)  # mid-batch: requests in flight
            first.wait(30)
        claimed = [r for r in outbox(execution_db) if r["claimed_at"] is not None]
        assert claimed  # it died holding messages
        second = subprocess.Popen(run, env=dict(os.environ), start_new_session=True)
        try:
            receiver.wait_for(lambda: all(r["status"] == "delivered"
                                          for r in outbox(execution_db)), timeout=120)
        finally:
            second.send_signal(signal.SIGKILL)
            second.wait(30)
    got = {r.body["data"]["id"] for r in receiver.received}
    assert got == set(ids)  # nothing lost
    bodies: dict[str, set[str]] = defaultdict(set)
    for r in receiver.received:
        assert r.verified
        bodies[r.webhook_id].add(json.dumps(r.body, sort_keys=True))
    assert len(bodies) == 30  # duplicates only ever with the same webhook-id and body
    assert all(len(b) == 1 for b in bodies.values())


def test_a_postgres_restart_with_a_backlog_loses_nothing_and_keeps_the_order(
        restartable_db):
    """The database of a dispatcher with a backlog restarts (every connection cut, an
    outcome write failing): every message still arrives, later messages of an event
    after earlier ones, a duplicate only ever with its webhook-id."""
    server, engine = restartable_db
    with Receiver(answer=lambda n: (200, 0.02, {})) as receiver:
        _sub, receiver.secret = subscribe(engine, receiver.url, max_in_flight=2)
        ids = insert_events(engine, "rt", 20, notify=False)
        with engine.begin() as conn:  # two messages per event: opened (1), clicked (2)
            for name in ("event.opened", "event.clicked"):
                for event_id in ids:
                    webhook_outbox.enqueue(conn, "rt", event_id, name)
        with dispatching(engine):
            receiver.wait_for(lambda: len(receiver.received) >= 8)
            server.stop()  # mid-backlog: requests in flight, outcomes not written yet
            server.start()
            receiver.wait_for(lambda: all(r["status"] == "delivered"
                                          for r in outbox(engine)), timeout=120)
    rows = outbox(engine)
    assert len(rows) == 40
    expected = {message_id(r["id"]) for r in rows}
    assert set(receiver.ids()) == expected  # nothing lost
    bodies: dict[str, set[str]] = defaultdict(set)
    first: dict[int, list[str]] = defaultdict(list)
    for r in receiver.received:
        assert r.verified
        bodies[r.webhook_id].add(json.dumps(r.body, sort_keys=True))
        if r.body["type"] not in first[r.body["data"]["id"]]:
            first[r.body["data"]["id"]].append(r.body["type"])
    assert all(len(b) == 1 for b in bodies.values())  # a duplicate is the same message
    assert set(first) == set(ids)
    assert all(names == ["event.opened", "event.clicked"] for names in first.values())
