"""A relay that stalls, against a real SMTP server on loopback and the real execution
database: no reply to the final "." is an unknown outcome (failed, class ``unknown``,
never sent again), a stall before it is a safe retry, and each SMTP phase waits as long
as its own timeout says."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from processing_factory import (
    delivery_logs,
    events,
    expire_leases,
    insert_events,
    publish_templates,
)
from relay_support import STALL
from sqlalchemy import text

from message_center.delivery.breaker import BreakerPolicy, RelayBreaker
from message_center.delivery.channels import Channels
from message_center.delivery.ledger import start_sending
from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import RelayGate
from message_center.delivery.sms import SmsSender, SmsSettings
from message_center.delivery.smtp import (
    PHASE_TIMEOUTS,
    SmtpSender,
    SmtpSettings,
    build_email,
    smtp_settings_from_connection,
)
from message_center.events import get_event
from message_center.ids import to_public
from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
from message_center.state import mark_handed
from message_center.status_sync import sync_event_statuses

SETTINGS = ProcessingSettings(shards=1, delivery_chunk=20, smtp_sessions=2,
                              sending_timeout_seconds=60, retry_backoff_seconds=0,
                              retry_backoff_max_seconds=0)
def deliver(engine, smtp: SmtpSettings, settings: ProcessingSettings = SETTINGS) -> Counter:
    """One batchEventsProcessing run at the domain level (split, every shard, status)."""
    total: Counter = Counter()
    with Channels(smtp, None, "batch") as channels:
        for claim in split_queue(engine, "batch", settings):
            total.update(deliver_shard(engine, claim, settings, channels,
                                       copy_status=False).as_dict())
    sync_event_statuses(engine)
    return total


def log_of(engine, event_id: int) -> dict:
    return next(log for log in delivery_logs(engine) if log["event_id"] == event_id)


def test_no_reply_to_the_final_dot_is_an_unknown_outcome_and_never_sent_again(
        execution_db, relay):
    publish_templates(execution_db)
    (stalled,) = insert_events(execution_db, "batch", 1, email=STALL)
    others = insert_events(execution_db, "batch", 6)
    relay.after_dot = 1
    smtp = SmtpSettings(port=relay.port, data_termination_timeout=1.5)
    stats = deliver(execution_db, smtp)
    assert (stats["sent"], stats["failed"], stats["retried"]) == (6, 1, 0)
    row = events(execution_db, "batch", [stalled])[0]
    assert (row["status"], row["error_count"]) == ("failed", 0)
    log = log_of(execution_db, stalled)
    assert (log["status"], log["failure_class"], log["failure_reason"]) == (
        "failed", "unknown", "outcome_unknown")
    assert "outcome unknown" in log["error"] and "may have delivered it" in log["error"]
    assert "after the final '.'" in log["error"] and "1.5 s" in log["error"]
    # The one waiting session held nothing else: the others went out meanwhile.
    assert all(log_of(execution_db, other)["sent_at"] < log["last_modified"]
               for other in others)
    # The API shows the class.
    with execution_db.connect() as conn:
        shown = get_event(conn, to_public(stalled))
    assert shown["status"] == "failed"
    assert shown["delivery"]["failureClass"] == "unknown"

    deliver(execution_db, smtp)  # a later run: nothing to send again
    assert relay.count(STALL) == 1
    assert events(execution_db, "batch", [stalled])[0]["status"] == "failed"
    assert {relay.count(f"user{n}@example.test") for n in range(1, 7)} == {1}


def test_after_dot_timeout_retry_prefers_a_duplicate_to_a_loss(execution_db, relay):
    publish_templates(execution_db)
    (stalled,) = insert_events(execution_db, "batch", 1, email=STALL)
    relay.after_dot = 1
    smtp = SmtpSettings(port=relay.port, data_termination_timeout=1.0,
                        after_dot_timeout="retry")
    deliver(execution_db, smtp)
    row = events(execution_db, "batch", [stalled])[0]
    assert (row["status"], row["error_count"]) == ("pending", 1)
    assert "sent again (after_dot_timeout: retry)" in row["error_reason"]
    deliver(execution_db, smtp)
    assert events(execution_db, "batch", [stalled])[0]["status"] == "sent"
    assert relay.count(STALL) == 2  # the trade-off: the relay got it twice


def test_a_relay_stalling_at_rcpt_is_retried_and_the_message_sent_once(execution_db, relay):
    publish_templates(execution_db)
    (stalled,) = insert_events(execution_db, "batch", 1, email=STALL)
    relay.at_rcpt = 1
    smtp = SmtpSettings(port=relay.port, rcpt_timeout=1.0)
    first = deliver(execution_db, smtp)
    assert (first["sent"], first["failed"], first["retried"]) == (0, 0, 1)
    row = events(execution_db, "batch", [stalled])[0]
    assert (row["status"], row["error_count"]) == ("pending", 1)
    assert row["error_reason"].startswith("SMTP connection lost at RCPT TO")
    assert relay.count(STALL) == 0
    deliver(execution_db, smtp)
    assert events(execution_db, "batch", [stalled])[0]["status"] == "sent"
    assert (log_of(execution_db, stalled)["attempts"], relay.count(STALL)) == (2, 1)


def test_the_crash_recovery_records_unknown_outcomes_with_their_class(execution_db):
    publish_templates(execution_db)
    (event_id,) = insert_events(execution_db, "batch", 1)
    (claim,) = split_queue(execution_db, "batch", SETTINGS)
    with execution_db.begin() as conn:
        started = start_sending(conn, claim, -(1 << 63), 10)
        mark_handed(conn, claim, [a.log_id for a in started.to_send])
    expire_leases(execution_db, "batch")  # the worker died long ago
    assert recover(execution_db, SETTINGS, kinds=("batch",)).unknown == 1
    log = log_of(execution_db, event_id)
    assert (log["status"], log["failure_class"], log["failure_reason"]) == (
        "failed", "unknown", "outcome_unknown")
    assert events(execution_db, "batch", [event_id])[0]["status"] == "failed"


def test_unknown_is_a_stored_failure_class(execution_db):
    publish_templates(execution_db)
    (_event_id,) = insert_events(execution_db, "batch", 1)
    (claim,) = split_queue(execution_db, "batch", SETTINGS)
    with execution_db.begin() as conn:
        start_sending(conn, claim, -(1 << 63), 10)
        conn.execute(text("UPDATE delivery_log SET failure_class = 'unknown'"))
    with pytest.raises(Exception, match="delivery_log_failure_class_check"), \
            execution_db.begin() as conn:
        conn.execute(text("UPDATE delivery_log SET failure_class = 'maybe'"))


@pytest.mark.fast
def test_phase_timeouts_and_after_dot_choice_come_from_the_connection_extras():
    default = smtp_settings_from_connection({"host": "relay.example", "extra": {}})
    assert (default.greeting_timeout, default.mail_timeout, default.rcpt_timeout,
            default.data_init_timeout, default.data_block_timeout,
            default.data_termination_timeout) == (300, 300, 300, 120, 180, 600)
    assert default.after_dot_timeout == "unknown" and default.timeout == 30
    assert default.transaction_seconds == 30 + 300 + 300 + 300 + 120 + 180 + 600
    tuned = smtp_settings_from_connection({"host": "relay.example", "extra": json.dumps({
        **{name: 7 for name in PHASE_TIMEOUTS}, "timeout": "3",
        "after_dot_timeout": "Retry"})})
    assert {getattr(tuned, name) for name in PHASE_TIMEOUTS} == {7.0}
    assert (tuned.timeout, tuned.after_dot_timeout) == (3.0, "retry")
    with pytest.raises(ValueError, match="after_dot_timeout: 'maybe' is not one of unknown, "
                                         "retry"):
        smtp_settings_from_connection({"extra": {"after_dot_timeout": "maybe"}})
    with pytest.raises(ValueError, match="extra rcpt_timeout: -1 is not a positive number"):
        smtp_settings_from_connection({"extra": {"rcpt_timeout": -1}})
    with pytest.raises(ValueError, match="data_termination_timeout 0 is not a positive"):
        replace(default, data_termination_timeout=0)


@pytest.mark.fast
def test_the_breaker_opens_after_five_failures_lets_one_probe_through_and_closes_on_an_answer():
    policy = BreakerPolicy(threshold=5, probe_seconds=0.3, refresh_seconds=0.05)
    gate = RelayGate("smtp://relay:25", breaker=RelayBreaker("smtp://relay:25", "email",
                                                             policy=policy))
    refused = Outcome.unavailable("cannot connect to SMTP server relay:25: refused")
    assert not refused.counted and refused.status == "retry"
    for _ in range(4):
        gate.unavailable(refused)
    assert not gate.is_down  # four in a row: still closed
    gate.answered()  # an answer resets the count
    for _ in range(5):
        gate.unavailable(refused)
    assert gate.is_down and gate.unavailable_count == 9
    soon = time.monotonic() + 0.1
    assert not gate.wait_turn(soon, lambda: False)  # open: nobody starts before the probe
    assert gate.wait_turn(time.monotonic() + 5, lambda: False)  # this caller is the probe
    assert not gate.wait_turn(time.monotonic() + 0.1, lambda: False)  # one probe at a time
    gate.unavailable(refused)  # the probe failed: still open
    assert gate.is_down
    assert gate.wait_turn(time.monotonic() + 5, lambda: False)  # the next probe
    gate.answered()  # the relay answered it
    assert not gate.is_down
    assert gate.wait_turn(time.monotonic() + 1, lambda: False)  # everybody goes again


def test_an_sms_gateway_answering_503_with_retry_after_is_down_not_a_try():
    """A gateway that says "unavailable, come back in N s" never got the message: the
    answer feeds the breaker with the pause it asked for, and is not counted as a try;
    a plain 503 stays an ordinary transient failure."""
    answers = [(503, {"Retry-After": "2"}), (503, {}), (201, {})]

    class Gateway(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status, headers = answers.pop(0)
            body = b'{"id": "gw-1"}' if status == 201 else b'{"error": "unavailable"}'
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with SmsSender(SmsSettings(base_url=url)) as sms:
            down, busy, sent = [sms.send(log_id=1, to="+33600000001", text="code 1")
                                for _ in range(3)]
    finally:
        server.shutdown()
        server.server_close()
    assert (down.status, down.counted, down.retry_after) == ("retry", False, 2.0)
    assert (busy.status, busy.counted, busy.failure_class) == ("retry", True, "transient")
    assert (sent.status, sent.provider_id) == ("sent", "gw-1")
    gate = RelayGate(url, channel="sms")
    gate.unavailable(down)  # the pause it asked for holds the gateway's sessions
    assert not gate.wait_turn(time.monotonic() + 1, lambda: False)


@pytest.mark.parametrize("can_look_up", [True, False])
def test_an_sms_request_without_an_answer_is_settled_by_the_gateways_lookup(can_look_up):
    """The request went out and no answer came in time: a gateway that can be asked
    (lookup by reference) says it took it, so it is sent; one that cannot tell leaves the
    outcome unknown, as a lost final reply of SMTP: never sent again."""
    taken: list[dict] = []

    class SlowGateway(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            taken.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            time.sleep(1.5)  # longer than the client waits (it has gone meanwhile)
            with contextlib.suppress(OSError):
                self.send_response(201)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        def do_GET(self) -> None:
            ref = self.path.rpartition("reference=")[2]
            if can_look_up and any(body["reference"] == ref for body in taken):
                body = json.dumps({"reference": ref, "found": True, "id": "gw-7"}).encode()
                self.send_response(200)
            else:
                body = b"<html>not found</html>"
                self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = SmsSettings(base_url=f"http://127.0.0.1:{server.server_address[1]}",
                               timeout=0.5)
        with SmsSender(settings) as sms:
            outcome = sms.send(log_id=7, to="+33600000007", text="code 7")
    finally:
        server.shutdown()
        server.server_close()
    assert len(taken) == 1
    if can_look_up:
        assert (outcome.status, outcome.provider_id) == ("sent", "gw-7")
    else:
        assert (outcome.status, outcome.failure_class) == ("failed", "unknown")
        assert outcome.error.startswith("outcome unknown: the SMS gateway did not answer "
                                        "within 0.5 s")


def test_a_reused_connection_the_relay_closed_meanwhile_is_reopened_not_a_failure(relay):
    """A relay closes idle connections (Postfix answers the next command ``421 4.4.2
    timeout exceeded``): the sender opens a new connection and the message goes out."""
    with SmtpSender(SmtpSettings(port=relay.port)) as sender:
        def send(n: int):
            mid, data = build_email(log_id=n, sender="shop@example.test",
                                    recipient=f"user{n}@example.test", subject="s",
                                    html=None, text="hello")
            return sender.send_bytes(data, mid, "shop@example.test", f"user{n}@example.test")
        assert send(1).status == "sent"
        relay.mail_421 = 1  # the connection went idle for too long
        second = send(2)
    assert (second.status, relay.count("user2@example.test")) == ("sent", 1)
