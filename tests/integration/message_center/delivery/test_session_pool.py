"""Many SMTP sessions per shard (message_center.delivery.pool), against the real SMTP sink
on loopback and the real execution database: each message exactly once, the relay's
caps honoured, "slow down" answers waited out instead of failing messages, and a shard
killed with SIGKILL mid-delivery sends nothing twice."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import replace
from email.message import EmailMessage
from types import SimpleNamespace

import pytest
from polling import wait_until
from processing_factory import (
    SMS_TEMPLATE,
    delivery_logs,
    events,
    insert_events,
    insert_many,
    publish_templates,
    recipients,
)

from mc_local.localenv import PROJECT_ROOT
from message_center.delivery.channels import Channels
from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import Dispatch, RelayGate, SessionPool, is_throttle
from message_center.delivery.sms import SmsSettings
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.state import UNKNOWN_OUTCOME
from message_center.status_sync import sync_event_statuses

POOLED = ProcessingSettings(shards=1, delivery_chunk=20, smtp_sessions=8,
                            retry_backoff_seconds=0, retry_backoff_max_seconds=0)


def deliver(engine, settings: ProcessingSettings, smtp: SmtpSettings | None,
            kind: str = "batch", sms: SmsSettings | None = None):
    """One batchEventsProcessing run at the domain level (split, every shard, status)."""
    total = Counter()
    with Channels(smtp, sms, kind) as channels:
        for claim in split_queue(engine, kind, settings):
            stats = deliver_shard(engine, claim, settings, channels, copy_status=False)
            total.update(stats.as_dict())
    sync_event_statuses(engine)
    return total


def peers(messages: list[EmailMessage]) -> set[str]:
    """The client ends of the SMTP connections the messages came over."""
    return {str(message["X-Peer"]) for message in messages}


def accepted_at(sink) -> list[float]:
    """When the sink accepted each message (seconds; from its file names), in order."""
    return sorted(int(path.name.split("-")[0]) / 1e9 for path in sink.mail_dir.glob("*.eml"))


def test_many_sessions_deliver_each_message_exactly_once(execution_db, smtp_sink,
                                                         test_deployment):
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 60)
    smtp_sink.latency = 0.05  # a relay that takes 50 ms per message
    stats = deliver(execution_db, POOLED, SmtpSettings(port=test_deployment.smtp_port))
    assert stats["sent"] == 60 and stats["failed"] == stats["retried"] == 0
    assert Counter(row["status"] for row in events(execution_db, "batch")) == {"sent": 60}
    got = recipients(smtp_sink)
    assert len(got) == 60 and set(got.values()) == {1}
    used = peers(smtp_sink.messages())
    assert 1 < len(used) <= 8  # several connections at once, never more than the sessions
    logs = delivery_logs(execution_db)
    assert {(log["status"], log["attempts"]) for log in logs} == {("sent", 1)}
    mail_ids = {str(message["Message-ID"]) for message in smtp_sink.messages()}
    assert {log["provider_id"] for log in logs} == mail_ids


def test_the_relay_session_cap_is_shared_by_the_shards(execution_db, smtp_sink,
                                                       test_deployment):
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 40)
    smtp_sink.latency = 0.02
    settings = replace(POOLED, shards=2, smtp_sessions=8)
    smtp = SmtpSettings(port=test_deployment.smtp_port, max_sessions=4)
    with Channels(smtp, None, "batch") as channels:
        claims = split_queue(execution_db, "batch", settings)
        assert len(claims) == 2
        first = deliver_shard(execution_db, claims[0], settings, channels, copy_status=True)
        first_peers = peers(smtp_sink.messages())
        second = deliver_shard(execution_db, claims[1], settings, channels, copy_status=True)
    assert first.sent + second.sent == 40
    assert 1 < len(first_peers) <= 2  # 4 sessions for the relay, 2 shards: 2 each
    assert set(recipients(smtp_sink).values()) == {1}


def test_the_relay_rate_cap_is_honoured(execution_db, smtp_sink, test_deployment):
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 31)
    smtp = SmtpSettings(port=test_deployment.smtp_port, max_messages_per_second=20)
    stats = deliver(execution_db, POOLED, smtp)
    assert stats["sent"] == 31
    times = accepted_at(smtp_sink)
    # 8 sessions could send these in a few milliseconds; paced at 20/s, 31 messages span
    # at least 1.5 s (checked loosely: 20% slack for the sink's own clock and scheduling).
    assert times[-1] - times[0] >= 0.8 * 30 / 20
    per_second = Counter(int((t - times[0]) * 2) for t in times)  # half-second buckets
    assert max(per_second.values()) <= 10 + 3


def test_a_throttling_relay_delays_messages_without_failing_them(execution_db, smtp_sink,
                                                                 test_deployment):
    publish_templates(execution_db)
    ids = insert_events(execution_db, "batch", 24)
    for n in range(1, 7):  # the relay says "slow down" for a while, at every stage
        smtp_sink.script(f"user{n}@example.test", "421 4.7.0 Try again later, closing")
    smtp_sink.script("user7@example.test", "450 4.7.1 Rate limited, slow down")
    smtp_sink.script("user8@example.test", "451 4.7.1 Too many messages", "421 4.7.0 later")
    stats = deliver(execution_db, POOLED, SmtpSettings(port=test_deployment.smtp_port))
    assert stats["throttled"] >= 8
    assert (stats["sent"], stats["failed"], stats["retried"], stats["released"]) == (
        24, 0, 0, 0)
    rows = events(execution_db, "batch", ids)
    assert {(row["status"], row["error_count"]) for row in rows} == {("sent", 0)}
    assert {(log["status"], log["attempts"]) for log in delivery_logs(execution_db)} == {
        ("sent", 1)}
    got = recipients(smtp_sink)
    assert len(got) == 24 and set(got.values()) == {1}


def test_a_relay_that_never_stops_throttling_is_an_ordinary_transient_failure(
        execution_db, smtp_sink, test_deployment):
    """Throttling longer than the chunk's sending budget counts one attempt (so the
    event still expires after max_tries); the messages the pause held back are given
    back to the queue uncounted and go out with the next run."""
    publish_templates(execution_db)
    (stubborn,) = insert_events(execution_db, "batch", 1, email="slow@example.test")
    others = insert_events(execution_db, "batch", 3)
    smtp_sink.script("slow@example.test", "always 421 4.7.0 slow down")
    settings = replace(POOLED, smtp_sessions=2, sending_timeout_seconds=2,
                       retry_backoff_seconds=3600, retry_backoff_max_seconds=3600)
    stats = deliver(execution_db, settings, SmtpSettings(port=test_deployment.smtp_port))
    row = events(execution_db, "batch", [stubborn])[0]
    assert (row["status"], row["error_count"]) == ("pending", 1)
    assert row["error_reason"].startswith("the relay kept asking to slow down: ")
    assert stats["sent"] + stats["released"] == 3 and stats["failed"] == 0
    deliver(execution_db, settings, SmtpSettings(port=test_deployment.smtp_port))
    assert {(r["status"], r["error_count"])
            for r in events(execution_db, "batch", others)} == {("sent", 0)}
    got = recipients(smtp_sink)
    assert "slow@example.test" not in got and set(got.values()) == {1} and len(got) == 3


def insert_sms(engine, count: int) -> list[int]:
    return insert_events(engine, "batch", count, type="OTP", wished_channel="sms",
                         email=None, mobile_phone="+3361000{n}", ctx={"code": "C{n}"})


def test_sms_requests_run_concurrently_within_the_gateway_cap(execution_db, sms_sink):
    publish_templates(execution_db, SMS_TEMPLATE)
    insert_sms(execution_db, 30)
    sms_sink.latency = 0.03
    gateway = SmsSettings(base_url=sms_sink.url, sender="Shop", max_concurrent=3)
    stats = deliver(execution_db, POOLED, None, sms=gateway)
    assert (stats["sent"], stats["failed"], stats["retried"]) == (30, 0, 0)
    assert 1 < sms_sink.peak_in_flight <= 3  # 8 sessions, the gateway allows 3
    sent = Counter(message["to"] for message in sms_sink.messages())
    assert len(sent) == 30 and set(sent.values()) == {1}


def test_an_sms_gateway_answering_429_delays_messages_without_failing_them(execution_db,
                                                                          sms_sink):
    publish_templates(execution_db, SMS_TEMPLATE)
    ids = insert_sms(execution_db, 10)
    sms_sink.script("+33610003", "429", "429")
    sms_sink.script("+33610005", "429")
    gateway = SmsSettings(base_url=sms_sink.url, sender="Shop")
    stats = deliver(execution_db, POOLED, None, sms=gateway)
    assert stats["throttled"] >= 3 and (stats["sent"], stats["retried"]) == (10, 0)
    assert {(row["status"], row["error_count"])
            for row in events(execution_db, "batch", ids)} == {("sent", 0)}
    sent = Counter(message["to"] for message in sms_sink.messages())
    assert len(sent) == 10 and set(sent.values()) == {1}


KILLED_SHARD = textwrap.dedent("""
    import sys
    from message_center.db import engine_for
    from message_center.delivery.channels import Channels
    from message_center.delivery.smtp import SmtpSettings
    from message_center.processing import ProcessingSettings, ShardClaim, deliver_shard
    url, port, token, sessions, chunk = sys.argv[1:6]
    settings = ProcessingSettings(shards=1, smtp_sessions=int(sessions),
                                  delivery_chunk=int(chunk))
    with Channels(SmtpSettings(port=int(port)), None, "batch") as channels:
        deliver_shard(engine_for(url), ShardClaim("batch", int(token), 0), settings,
                      channels, copy_status=False)
    print("SHARD DONE")
""")


def test_a_shard_killed_mid_delivery_sends_nothing_twice(execution_db, smtp_sink,
                                                         test_deployment):
    sessions, chunk, total = 4, 8, 300
    publish_templates(execution_db)
    insert_many(execution_db, "batch", total)
    settings = replace(POOLED, smtp_sessions=sessions, delivery_chunk=chunk)
    (claim,) = split_queue(execution_db, "batch", settings)
    smtp_sink.latency = 0.05
    victim = subprocess.Popen(
        [sys.executable, "-c", KILLED_SHARD, test_deployment.database_url("execution"),
         str(test_deployment.smtp_port), str(claim.token), str(sessions), str(chunk)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, text=True)
    try:
        wait_until("the shard to get going", lambda: len(list(
            smtp_sink.mail_dir.glob("*.eml"))) >= 40 or victim.poll() is not None,
            interval=0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGKILL)
        output = victim.communicate(timeout=30)[0]
    assert victim.returncode == -signal.SIGKILL, output[-3000:]
    time.sleep(0.2)  # the sink finishes the DATA it was answering
    received_at_kill = recipients(smtp_sink)
    assert set(received_at_kill.values()) == {1}

    # The Airflow retry of the same shard task: settles its own 'sending' rows first.
    smtp_sink.latency = 0
    with Channels(SmtpSettings(port=test_deployment.smtp_port), None, "batch") as channels:
        stats = deliver_shard(execution_db, claim, settings, channels, copy_status=False)
    sync_event_statuses(execution_db)

    got = recipients(smtp_sink)
    assert set(got.values()) == {1}, "a message was sent twice"
    rows = events(execution_db, "batch")
    by_status = Counter(row["status"] for row in rows)
    assert set(by_status) <= {"sent", "failed"} and sum(by_status.values()) == total
    unknown = [row for row in rows if row["status"] == "failed"]
    assert all(row["error_reason"] == UNKNOWN_OUTCOME for row in unknown)
    assert stats.unknown == len(unknown)
    assert len(unknown) <= sessions  # at most the message each session had in hand
    sent = {row["email"] for row in rows if row["status"] == "sent"}
    assert all(got[email] == 1 for email in sent)  # what says "sent" was received
    # and what was received says "sent", unless its outcome is honestly unknown
    assert set(got) - sent <= {row["email"] for row in unknown}
    assert set(received_at_kill) <= set(got)


# --- the pool and the gate on their own (no database, no network) ----------------


@pytest.mark.fast
@pytest.mark.parametrize(("channel", "error", "expected"), [
    ("email", "SMTP RCPT TO refused: 421 4.7.0 Try again later", True),
    ("email", "SMTP MAIL FROM refused: 450 4.7.1 rate limited", True),
    ("email", "cannot connect to SMTP server 10.0.0.1:25: (421, b'too busy')", True),
    ("email", "cannot connect to SMTP server 10.0.0.1:8421: Connection refused", False),
    ("email", "SMTP RCPT TO refused: 451 4.3.0 busy", False),
    ("email", "SMTP RCPT TO refused: 452 4.2.2 mailbox full", False),
    ("sms", "SMS gateway answered 429: slow down", True),
    ("sms", "SMS gateway answered 503: unavailable", False),
])
def test_throttle_answers(channel, error, expected):
    assert is_throttle(channel, Outcome.retry(error)) is expected
    assert not is_throttle(channel, Outcome.failed(error))


@pytest.mark.fast
def test_a_throttle_pauses_the_relay_and_doubles_while_it_lasts():
    gate = RelayGate("smtp://relay:25", backoff=0.05, backoff_max=0.15)
    gate.throttled()
    assert gate.pause == 0.05
    gate.throttled()  # another session during the same pause: not doubled
    assert gate.pause == 0.05
    assert not gate.wait_turn(time.monotonic(), lambda: False)  # paused past the deadline
    assert gate.wait_turn(time.monotonic() + 5, lambda: False)
    gate.throttled()  # still throttling after the pause: doubled
    assert gate.pause == 0.1
    assert gate.wait_turn(time.monotonic() + 5, lambda: False)
    gate.throttled()
    assert gate.pause == 0.15  # capped
    assert gate.wait_turn(time.monotonic() + 5, lambda: False)
    gate.accepted()  # a message went through after the pause: the relay recovered
    assert gate.pause == 0
    assert gate.throttles == 4


@pytest.mark.fast
def test_a_stop_request_leaves_unstarted_messages_in_the_dispatch():
    sent: list[int] = []

    def slow_deliver(attempt):
        time.sleep(0.01)
        return Outcome.sent(str(attempt))

    attempts = [SimpleNamespace(log_id=n, channel="email") for n in range(40)]
    dispatch = Dispatch(attempts)  # type: ignore[arg-type]
    with SessionPool({}, sessions=4) as pool:
        pool.run(dispatch, slow_deliver, lambda attempt, outcome: sent.append(attempt.log_id),
                 deadline=time.monotonic() + 60, should_stop=lambda: len(sent) >= 10)
    left = [attempt.log_id for attempt in dispatch.unsent()]
    assert 10 <= len(sent) < 40
    assert sorted(sent + left) == list(range(40))  # each reported or given back, once


@pytest.mark.fast
def test_the_dispatch_arms_the_next_chunk_while_the_sessions_keep_sending():
    chunks = iter([[SimpleNamespace(log_id=10 * c + n, channel="email") for n in range(7)]
                   for c in range(5)])
    calls: list[int] = []
    refilling = threading.Lock()

    def refill():
        assert refilling.acquire(blocking=False), "two sessions armed a chunk at once"
        try:
            calls.append(len(calls))
            time.sleep(0.005)
            chunk = next(chunks, None)
            return None if chunk is None else (chunk, time.monotonic() + 60)
        finally:
            refilling.release()

    sent: list[int] = []
    lock = threading.Lock()

    def report(attempt, outcome):
        with lock:
            sent.append(attempt.log_id)

    def deliver(attempt):
        time.sleep(0.002)
        return Outcome.sent(None)

    dispatch = Dispatch(refill=refill, low_water=4)
    with SessionPool({}, sessions=4) as pool:
        pool.run(dispatch, deliver, report)
    assert sorted(sent) == [10 * c + n for c in range(5) for n in range(7)]
    assert len(calls) == 6 and dispatch.exhausted and dispatch.unsent() == []
