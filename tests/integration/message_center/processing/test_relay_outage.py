"""A relay that is down for longer than it takes to burn every try: nothing fails, nothing
expires, nothing is sent twice, and delivery resumes as soon as it is back.

Real parts: an SMTP server on loopback that is stopped and started again, the real
real-time shard loop (:func:`message_center.processing.run_realtime_shard`) and batch
runs (split + shard deliveries, as ``batchEventsProcessing`` runs them) working at the
same time on the real execution database, and the health endpoint of the push API. The
relay's circuit breaker is shared by both through the database.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import free_port
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from processing_factory import (
    SMS_TEMPLATE,
    delivery_logs,
    events,
    insert_events,
    insert_many,
    publish_templates,
    recipients,
)
from sqlalchemy import text

from mc_local.sms_sink import SmsSink
from mc_local.smtp_sink import SmtpSink
from message_center.api import Authorization, HealthThresholds, create_app
from message_center.delivery.channels import Channels
from message_center.delivery.sms import SmsSettings
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import (
    ProcessingSettings,
    deliver_shard,
    run_realtime_shard,
    split_queue,
)
from message_center.status_sync import sync_event_statuses

BATCH, RT = 1_000, 100
# Without the breaker, three tries 5 s apart: a relay down for longer than the breaker's
# threshold plus two backoffs would expire every event.
COMMON = dict(max_tries=3, retry_backoff_seconds=5, retry_backoff_max_seconds=5,
              sending_timeout_seconds=20, claim_lease_seconds=60)
RT_SETTINGS = ProcessingSettings(shards=1, routing_batch_size=50, delivery_chunk=50,
                                 smtp_sessions=4, **COMMON)
BATCH_SETTINGS = ProcessingSettings(shards=2, routing_batch_size=1_000, delivery_chunk=100,
                                    smtp_sessions=4, **COMMON)
DOWN_FOR = 15.0  # seconds the relay stays down after its breaker opened (2 backoffs + 5 s)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def breaker(engine, relay: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM relay_breaker WHERE relay = :r"),
                           {"r": relay}).mappings().first()
    return dict(row) if row else None


class Processing:
    """The real-time loop and repeated batch runs in threads, until stopped."""

    def __init__(self, engine, smtp: SmtpSettings | None, sms: SmsSettings | None = None,
                 batch: bool = True) -> None:
        self.engine, self.smtp, self.sms = engine, smtp, sms
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._guard(self._realtime))]
        if batch:
            self.threads.append(threading.Thread(target=self._guard(self._batch)))

    def _guard(self, work):
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)
        return run

    def _realtime(self) -> None:
        with Channels(self.smtp, self.sms, "rt") as channels:
            run_realtime_shard(self.engine, 0, RT_SETTINGS, channels, loop_seconds=600,
                               poll_seconds=0.5, should_stop=self.stop.is_set)

    def _batch(self) -> None:
        while not self.stop.is_set():
            shards = []
            for claim in split_queue(self.engine, "batch", BATCH_SETTINGS):
                def shard(claim=claim) -> None:
                    with Channels(self.smtp, self.sms, "batch") as channels:
                        deliver_shard(self.engine, claim, BATCH_SETTINGS, channels,
                                      copy_status=False, should_stop=self.stop.is_set)
                shards.append(threading.Thread(target=self._guard(shard)))
            for thread in shards:
                thread.start()
            for thread in shards:
                thread.join()
            sync_event_statuses(self.engine)
            self.stop.wait(1.0)  # the DAG's short schedule

    def __enter__(self) -> Processing:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in self.threads)
        assert not self.errors, self.errors


def _refuse() -> None:
    raise HTTPException(403, "only the health check is open in this test")


@pytest.fixture
def health(execution_db, test_deployment) -> TestClient:
    """GET /v1/health of the push API on this database (public: no token needed)."""
    url = test_deployment.database_url("execution")
    nobody = Authorization(push=lambda kind: _refuse, read=_refuse,
                           check_push=lambda user, kind: _refuse())
    app = create_app(_refuse, lambda: url, authorization=nobody,
                     thresholds=HealthThresholds(warning=5_000, alert=10_000,
                                                 age_warning=5, age_alert=3_600),
                     public_health=True)
    root = FastAPI()
    root.mount("/message-center", app)
    return TestClient(root, base_url="http://testserver/message-center/v1")


def test_a_relay_down_for_longer_than_the_tries_last_loses_nothing_and_burns_no_try(
        execution_db, health, tmp_path: Path):
    publish_templates(execution_db)
    port = free_port()
    relay = f"smtp://127.0.0.1:{port}"
    smtp = SmtpSettings(port=port)
    insert_many(execution_db, "batch", BATCH)
    insert_events(execution_db, "rt", RT)
    mail_dir = tmp_path / "mail"
    with Processing(execution_db, smtp):
        # The relay refuses connections: after 5 failures in a row its breaker opens.
        _wait_for(lambda: (breaker(execution_db, relay) or {}).get("state") == "open", 60,
                  "the relay's breaker to open")
        down = health.get("/health").json()
        assert down["relaysDown"] == [relay]
        (shown,) = [r for r in down["relays"] if r["relay"] == relay]
        assert shown["down"] and shown["state"] == "open" and shown["failures"] >= 5
        assert "cannot connect to SMTP server" in shown["lastError"]
        assert down["status"] in ("warning", "alert")
        assert f"relay {relay} down" in down["message"]
        time.sleep(DOWN_FOR)  # the outage goes on: the events wait, nothing is attempted
        waiting = health.get("/health").json()
        assert waiting["status"] == "warning"  # by the queue's age, and the relay
        assert "oldest waiting" in waiting["message"]
        assert Counter(e["status"] for e in events(execution_db, "rt")).keys() <= {
            "pending", "pending_delivery"}
        with SmtpSink(mail_dir, port=port) as sink:  # the relay is back
            back = time.monotonic()
            _wait_for(lambda: sink.count() >= BATCH + RT, 240, "every message delivered")
            delivered_in = time.monotonic() - back
            _wait_for(lambda: all(e["status"] == "sent" for e in events(execution_db, "rt"))
                      and all(e["status"] == "sent" for e in events(execution_db, "batch")),
                      60, "every event sent")
            got = recipients(sink)
    print(f"relay back: {BATCH + RT} messages delivered in {delivered_in:.1f} s")
    assert len(got) == BATCH + RT and set(got.values()) == {1}  # each once, none lost
    for kind in ("rt", "batch"):  # none expired, none failed, no try used
        rows = events(execution_db, kind)
        assert {(row["status"], row["error_count"]) for row in rows} == {("sent", 0)}
    assert {(log["status"], log["attempts"]) for log in delivery_logs(execution_db)} == {
        ("sent", 1)}
    assert breaker(execution_db, relay)["state"] == "closed"
    after = health.get("/health").json()
    assert after["relaysDown"] == [] and after["status"] == "ok"


def test_an_sms_gateway_refusing_connections_keeps_the_messages_waiting(
        execution_db, tmp_path: Path):
    publish_templates(execution_db, SMS_TEMPLATE)
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    insert_events(execution_db, "rt", 20, type="OTP", email=None,
                  mobile_phone="+336100{n}",
                  wished_channel="sms", ctx={"code": "{n}"})
    with Processing(execution_db, None, SmsSettings(base_url=gateway), batch=False):
        _wait_for(lambda: (breaker(execution_db, gateway) or {}).get("state") == "open", 60,
                  "the gateway's breaker to open")
        with SmsSink(tmp_path / "sms", port=port) as sink:
            _wait_for(lambda: all(e["status"] == "sent" for e in events(execution_db, "rt")),
                      60, "every SMS sent")
            sent = Counter(message["to"] for message in sink.messages())
    assert len(sent) == 20 and set(sent.values()) == {1}
    assert {(r["status"], r["error_count"]) for r in events(execution_db, "rt")} == {
        ("sent", 0)}
    assert breaker(execution_db, gateway)["state"] == "closed"
