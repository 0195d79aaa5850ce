"""Processing end to end at the domain level: real PostgreSQL, a real SMTP server and a
real SMS gateway on loopback. Each outcome a user relies on, plus exactly-once."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from processing_factory import (
    ORDER_TEMPLATE,
    SMS_TEMPLATE,
    delivery_logs,
    events,
    expire_leases,
    insert_events,
    publish_templates,
    quarantine,
    recipients,
)

from message_center.delivery.channels import Channels
from message_center.delivery.ledger import start_sending
from message_center.delivery.sms import SmsSettings
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import (
    ProcessingSettings,
    ShardStats,
    deliver_shard,
    recover,
    run_realtime_shard,
    split_queue,
)
from message_center.state import UNKNOWN_OUTCOME, mark_handed
from message_center.status_sync import sync_event_statuses

FAST = ProcessingSettings(shards=2, delivery_chunk=3, retry_backoff_seconds=0,
                          retry_backoff_max_seconds=0, max_tries=3)


@pytest.fixture
def channels(test_deployment, sms_sink):
    with Channels(SmtpSettings(port=test_deployment.smtp_port),
                  SmsSettings(base_url=sms_sink.url, sender="Shop"), kind="batch") as chans:
        yield chans


def drain(engine, channels, kind="batch", settings=FAST, rounds=1) -> ShardStats:
    """What one batchEventsProcessing run does, ``rounds`` times, then updateEventStatus."""
    total = ShardStats()
    for _ in range(rounds):
        total.add(recover(engine, settings, kinds=(kind,)))
        for claim in split_queue(engine, kind, settings):
            total.add(deliver_shard(engine, claim, settings, channels, copy_status=False))
    sync_event_statuses(engine)
    return total


def by_id(engine, kind="batch"):
    return {row["id"]: row for row in events(engine, kind)}


def test_events_are_sent_once_with_their_personalisation(execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    ids = insert_events(execution_db, "batch", 5)
    insert_events(execution_db, "batch", 1, email="x@example.test",
                  ctx={"firstName": "<script>alert(1)</script>", "orderId": "Z&9"})
    drain(execution_db, channels)
    assert {row["status"] for row in events(execution_db, "batch")} == {"sent"}
    assert recipients(smtp_sink) == Counter({f"user{n}@example.test": 1 for n in range(1, 6)}
                                            | {"x@example.test": 1})
    mail = {str(m["To"]): m for m in smtp_sink.messages()}
    third = mail["user3@example.test"]
    assert third["Subject"] == "Order A-3 confirmed, Ada3"
    assert third["From"] == "Shop <shop@example.test>"
    text = third.get_body(("plain",)).get_content()
    assert "Hello Ada3, order A-3 is confirmed." in text
    html = mail["x@example.test"].get_body(("html",)).get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "<b>Z&amp;9</b>" in html
    logs = {log["event_id"]: log for log in delivery_logs(execution_db)}
    row = by_id(execution_db)[ids[2]]
    log = logs[ids[2]]
    assert (log["status"], log["attempts"], log["address"]) == ("sent", 1, "user3@example.test")
    assert (log["template_name"], log["template_version"]) == ("orderConfirmation", 1)
    assert log["provider_id"] == third["Message-ID"] and log["sent_at"]
    assert row["delivery_log_id"] == log["id"] and row["processed"] == log["last_modified"]


def test_ignored_failed_and_not_taken(execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    quarantined, no_address, rejected, fine = (
        insert_events(execution_db, "batch", 1, email=address)[0]
        for address in ("q@example.test", None, "gone@example.test", "fine@example.test"))
    (unmatched,) = insert_events(execution_db, "batch", 1, type="UNKNOWN")
    quarantine(execution_db, "q@example.test")
    smtp_sink.script("gone@example.test", "always 550 5.1.1 no such user")
    drain(execution_db, channels)
    rows = by_id(execution_db)
    assert rows[quarantined]["status"] == "ignored"
    assert rows[quarantined]["error_reason"] == "address is in quarantine: hard bounce"
    assert rows[no_address]["status"] == "ignored"
    assert rows[no_address]["error_reason"] == "no email address on the event"
    assert rows[rejected]["status"] == "failed" and "550" in rows[rejected]["error_reason"]
    assert rows[unmatched]["status"] == "not_taken_into_account"
    assert rows[fine]["status"] == "sent"
    assert list(recipients(smtp_sink)) == ["fine@example.test"]


def test_4xx_is_retried_with_backoff_then_sent(execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    (event_id,) = insert_events(execution_db, "batch", 1, email="busy@example.test")
    # (421 / 4.7.x "slow down" is not a message failure: see test_session_pool.py)
    smtp_sink.script("busy@example.test", "451 4.3.0 busy", "452 4.3.1 out of storage")
    slow = replace(FAST, retry_backoff_seconds=3600, retry_backoff_max_seconds=3600)
    drain(execution_db, channels, settings=slow)
    row = by_id(execution_db)[event_id]
    assert (row["status"], row["error_count"]) == ("pending", 1)
    assert "451" in row["error_reason"] and row["claim_token"] is None
    drain(execution_db, channels, settings=slow)  # not due yet: the backoff is respected
    assert by_id(execution_db)[event_id]["error_count"] == 1
    expire_leases(execution_db, "batch")  # an hour later ...
    drain(execution_db, channels, rounds=3)  # ... 452 (backoff 0 now), then sent
    row = by_id(execution_db)[event_id]
    assert (row["status"], row["error_count"], row["error_reason"]) == ("sent", 2, None)
    (log,) = delivery_logs(execution_db)
    assert (log["status"], log["attempts"]) == ("sent", 3)
    assert recipients(smtp_sink) == Counter({"busy@example.test": 1})


def test_endless_4xx_ends_expired(execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    (event_id,) = insert_events(execution_db, "batch", 1, email="busy@example.test")
    smtp_sink.script("busy@example.test", "always 452 4.2.2 mailbox full")
    drain(execution_db, channels, rounds=5)
    row = by_id(execution_db)[event_id]
    assert row["status"] == "expired" and row["error_count"] == 3
    assert row["error_reason"].startswith("gave up after 3 attempts: SMTP RCPT TO refused: 452")
    (log,) = delivery_logs(execution_db)
    assert (log["status"], log["attempts"]) == ("failed", 3)
    sync_event_statuses(execution_db)  # the failed log does not overwrite "expired"
    assert by_id(execution_db)[event_id]["status"] == "expired"


def test_scheduled_events_wait_and_expired_events_expire(execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    (later,) = insert_events(execution_db, "batch", 1, scheduled="2999-01-01T00:00:00Z")
    (past,) = insert_events(execution_db, "batch", 1, expiration="2001-01-01T00:00:00Z")
    (soon,) = insert_events(execution_db, "batch", 1, scheduled="2001-01-01T00:00:00Z",
                            expiration="2999-01-01T00:00:00Z")
    drain(execution_db, channels)
    rows = by_id(execution_db)
    assert rows[later]["status"] == "pending" and rows[later]["processing"] is None
    assert rows[past]["status"] == "expired"
    assert rows[soon]["status"] == "sent"
    assert len(smtp_sink.messages()) == 1


def test_a_bad_template_fails_its_message_not_the_shard(execution_db, smtp_sink, channels):
    publish_templates(execution_db, ORDER_TEMPLATE, replace(
        ORDER_TEMPLATE, internal_name="broken", event_type="BROKEN",
        subject="Hi {{ firstName }}", text_body="Code {{ missingVariable }}"))
    ok = insert_events(execution_db, "batch", 2)
    (broken,) = insert_events(execution_db, "batch", 1, type="BROKEN", email="b@example.test")
    drain(execution_db, channels, settings=replace(FAST, shards=1))
    rows = by_id(execution_db)
    assert rows[broken]["status"] == "failed"
    assert rows[broken]["error_reason"].startswith("template broken v1 cannot be rendered: "
                                                   "missing variable")
    assert "missingVariable" in rows[broken]["error_reason"]
    assert all(rows[event_id]["status"] == "sent" for event_id in ok)


MALICIOUS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ self.__init__.__globals__.__builtins__.open('/etc/passwd').read() }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os.system('touch {marker}') }}",
    "{{ lipsum.__globals__['os'].popen('touch {marker}').read() }}",
    "{{ ctx.__class__.__base__.__subclasses__() }}",
    "{{ (ctx.update({'x': 1})) }}",
    "{{ range(10**9)|list }}",
]


def test_malicious_templates_cannot_read_files_or_run_code(execution_db, smtp_sink,
                                                           channels, tmp_path: Path):
    marker = tmp_path / "pwned"
    templates = [replace(ORDER_TEMPLATE, internal_name=f"evil{n}", event_type=f"EVIL{n}",
                         text_body=body.replace("{marker}", str(marker)), html_body=None)
                 for n, body in enumerate(MALICIOUS)]
    publish_templates(execution_db, *templates)
    for n in range(len(MALICIOUS)):
        insert_events(execution_db, "batch", 1, type=f"EVIL{n}", email=f"v{n}@example.test")
    drain(execution_db, channels, settings=replace(FAST, shards=1))
    rows = events(execution_db, "batch")
    assert not marker.exists()
    for message in smtp_sink.messages():
        assert "root:" not in message.get_body(("plain",)).get_content()
    assert {row["status"] for row in rows} == {"failed"}, [
        (row["type"], row["status"], row["error_reason"]) for row in rows]
    assert all("cannot be rendered" in row["error_reason"] for row in rows)


def test_sms_goes_through_the_gateway(execution_db, sms_sink, channels):
    publish_templates(execution_db, SMS_TEMPLATE)
    ids = insert_events(execution_db, "batch", 2, type="OTP", wished_channel="sms",
                        email=None, mobile_phone="+3360000000{n}", ctx={"code": "C{n}"})
    (no_phone,) = insert_events(execution_db, "batch", 1, type="OTP", wished_channel="sms",
                                email="a@example.test")
    sms_sink.script("+33600000002", "503")
    drain(execution_db, channels, rounds=2)
    rows = by_id(execution_db)
    assert [rows[i]["status"] for i in ids] == ["sent", "sent"]
    assert rows[no_phone]["status"] == "ignored"
    assert rows[no_phone]["error_reason"] == "no mobile phone address on the event"
    sent = sorted((m["to"], m["text"], m["from"]) for m in sms_sink.messages())
    assert sent == [("+33600000001", "Your code is C1", "Shop"),
                    ("+33600000002", "Your code is C2", "Shop")]
    logs = {log["event_id"]: log for log in delivery_logs(execution_db)}
    assert logs[ids[0]]["provider_id"] == sms_sink.messages()[0]["id"] or \
        logs[ids[0]]["provider_id"] == sms_sink.messages()[1]["id"]


def test_two_runs_at_once_deliver_every_event_exactly_once(execution_db, smtp_sink,
                                                           test_deployment, sms_sink):
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 60)
    settings = replace(FAST, routing_batch_size=7, shards=3, delivery_chunk=4)
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def one_run() -> None:
        try:
            with Channels(SmtpSettings(port=test_deployment.smtp_port), None,
                          "batch") as own:
                start.wait()
                drain(execution_db, own, settings=settings)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    sync_event_statuses(execution_db)
    assert {row["status"] for row in events(execution_db, "batch")} == {"sent"}
    got = recipients(smtp_sink)
    assert len(got) == 60 and set(got.values()) == {1}


def test_a_crash_while_sending_is_never_resent(execution_db, smtp_sink, channels):
    """Rows handed to the provider by a worker that died (no outcome recorded): failed,
    outcome unknown, not resent; the rest of the shard is delivered by the retried task."""
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 5)
    settings = replace(FAST, shards=1, delivery_chunk=2)
    (claim,) = split_queue(execution_db, "batch", settings)  # claimed and linked
    with execution_db.begin() as conn:  # steps 1 and 2 committed, then the worker "dies"
        in_flight = start_sending(conn, claim, -(2**63), 2)
        assert mark_handed(conn, claim, [a.log_id for a in in_flight.to_send]) == {
            a.log_id for a in in_flight.to_send}
    assert len(in_flight.to_send) == 2
    # The Airflow retry of the same shard task: settles its own 'sending' rows first.
    stats = deliver_shard(execution_db, claim, settings, channels, copy_status=True)
    assert (stats.unknown, stats.sent) == (2, 3)
    rows = events(execution_db, "batch")
    lost = [row for row in rows if row["status"] == "failed"]
    assert len(lost) == 2 and all(row["error_reason"] == UNKNOWN_OUTCOME for row in lost)
    assert len(smtp_sink.messages()) == 3
    drain(execution_db, channels, rounds=2)
    assert len(smtp_sink.messages()) == 3


def test_rows_armed_but_never_handed_go_back_to_the_queue(execution_db, smtp_sink, channels):
    """A worker that died after arming a chunk but before handing its messages sent none
    of them: the retried task sends them, once; only the one in progress is unknown."""
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 5)
    settings = replace(FAST, shards=1, delivery_chunk=3)
    (claim,) = split_queue(execution_db, "batch", settings)  # claimed and linked
    with execution_db.begin() as conn:  # step 1 committed, then the worker "dies"
        armed = start_sending(conn, claim, -(2**63), 3)
        mark_handed(conn, claim, [armed.to_send[0].log_id])  # the one in progress
    stats = deliver_shard(execution_db, claim, settings, channels, copy_status=True)
    assert (stats.unknown, stats.released, stats.sent) == (1, 0, 4)
    sync_event_statuses(execution_db)
    assert Counter(row["status"] for row in events(execution_db, "batch")) == {
        "sent": 4, "failed": 1}
    assert len(smtp_sink.messages()) == 4 and set(recipients(smtp_sink).values()) == {1}
    logs = {log["event_id"]: log for log in delivery_logs(execution_db)}
    assert logs[armed.to_send[0].event_id]["error"] == UNKNOWN_OUTCOME
    assert all(logs[a.event_id]["attempts"] == 1 for a in armed.to_send[1:])


def test_unknown_outcomes_of_a_dead_run_are_settled_by_the_next(execution_db, smtp_sink,
                                                                channels):
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 4)
    settings = replace(FAST, shards=1, delivery_chunk=2)
    (claim,) = split_queue(execution_db, "batch", settings)  # claimed and linked
    with execution_db.begin() as conn:
        armed = start_sending(conn, claim, -(2**63), 2)
        mark_handed(conn, claim, [armed.to_send[0].log_id])
    drain(execution_db, channels)  # lease and sending timeout still running: nothing
    assert smtp_sink.messages() == []
    expire_leases(execution_db, "batch")  # and the handed row is a day old
    stats = drain(execution_db, channels)
    # 1 unknown; the armed one and the 2 never armed go back and are sent
    assert (stats.unknown, stats.released, stats.sent) == (1, 3, 3)
    assert Counter(row["status"] for row in events(execution_db, "batch")) == {
        "sent": 3, "failed": 1}


def test_a_stopping_worker_records_what_it_sent_and_gives_back_the_rest(
        execution_db, smtp_sink, test_deployment):
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 5)
    settings = replace(FAST, shards=1, delivery_chunk=5)
    (claim,) = split_queue(execution_db, "batch", settings)  # claimed and linked

    class Stopping(Channels):
        calls = 0

        def deliver(self, attempt, ready=None):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt  # like Airflow's SIGTERM handler
            return super().deliver(attempt, ready)

    with Stopping(SmtpSettings(port=test_deployment.smtp_port), None, "batch") as chans, \
            pytest.raises(KeyboardInterrupt):
        deliver_shard(execution_db, claim, settings, chans, copy_status=True)
    statuses = Counter(row["status"] for row in events(execution_db, "batch"))
    # 2 sent, the interrupted one unknown (still 'sending'), 2 given back to the queue
    assert statuses == {"sent": 2, "pending_delivery": 1, "pending": 2}
    assert Counter(log["status"] for log in delivery_logs(execution_db)) == {
        "sent": 2, "sending": 1, "retry": 2}


def test_realtime_shard_wakes_on_notify(execution_db, smtp_sink, test_deployment):
    """With a 60 s poll and a 3 s loop, only LISTEN/NOTIFY can deliver a pushed event."""
    publish_templates(execution_db)
    pushed = threading.Timer(0.5, insert_events, (execution_db, "rt", 2))
    with Channels(SmtpSettings(port=test_deployment.smtp_port), None, "rt") as chans:
        pushed.start()
        stats = run_realtime_shard(execution_db, 0, FAST, chans, loop_seconds=3,
                                   poll_seconds=60)
    pushed.join()
    assert stats.sent == 2
    # copied at once, without updateEventStatus
    assert {row["status"] for row in events(execution_db, "rt")} == {"sent"}
    assert len(smtp_sink.messages()) == 2


def test_a_slow_provider_never_holds_rows_in_sending_past_the_timeout(
        execution_db, smtp_sink, test_deployment):
    """A chunk stops after half the sending timeout and gives the rest back, so the crash
    recovery never mistakes a live, slow send for a dead worker."""
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 5)
    settings = replace(FAST, shards=1, delivery_chunk=5, sending_timeout_seconds=1)
    (claim,) = split_queue(execution_db, "batch", settings)  # claimed and linked

    class Slow(Channels):
        def deliver(self, attempt, ready=None):
            outcome = super().deliver(attempt, ready)
            threading.Event().wait(0.3)
            return outcome

    with Slow(SmtpSettings(port=test_deployment.smtp_port), None, "batch") as chans:
        stats = deliver_shard(execution_db, claim, settings, chans, copy_status=True)
    # Two sends take 0.6 s at least, past half the timeout: the chunk stops after one or
    # two (one on a loaded machine) and gives the rest back, none left 'sending'.
    assert stats.sent in (1, 2) and stats.sent + stats.released == 5
    assert Counter(row["status"] for row in events(execution_db, "batch")) == {
        "sent": stats.sent, "pending": stats.released}
    drain(execution_db, Channels(SmtpSettings(port=test_deployment.smtp_port), None, "batch"))
    assert len(smtp_sink.messages()) == 5 and set(recipients(smtp_sink).values()) == {1}


def test_a_stop_request_ends_the_shard_cleanly_and_frees_its_events(
        execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    insert_events(execution_db, "batch", 6)
    settings = replace(FAST, shards=1, delivery_chunk=4)
    (claim,) = split_queue(execution_db, "batch", settings)  # claimed and linked
    asked = iter([False, False, True])
    stats = deliver_shard(execution_db, claim, settings, channels, copy_status=True,
                          should_stop=lambda: next(asked, True))
    assert (stats.sent, stats.released) == (2, 4)
    rows = events(execution_db, "batch")
    assert Counter(row["status"] for row in rows) == {"sent": 2, "pending": 4}
    assert all(row["claim_token"] is None for row in rows if row["status"] == "pending")
    drain(execution_db, channels)  # due at once, no lease to wait for
    assert set(recipients(smtp_sink).values()) == {1} and len(smtp_sink.messages()) == 6


def test_realtime_shard_stops_when_asked(execution_db, smtp_sink, test_deployment):
    publish_templates(execution_db)
    insert_events(execution_db, "rt", 2)
    rounds = iter(range(100))
    with Channels(SmtpSettings(port=test_deployment.smtp_port), None, "rt") as chans:
        stats = run_realtime_shard(execution_db, 0, FAST, chans, loop_seconds=3600,
                                   poll_seconds=0.05,
                                   should_stop=lambda: next(rounds) > 20)
    assert stats.sent == 2  # an hour-long loop, ended by the stop request


def test_a_real_time_shard_logs_its_counts_per_outcome_while_it_runs(
        execution_db, smtp_sink, test_deployment, caplog):
    """Progress every ``progress_seconds``, not only when the (hour-long) loop ends."""
    publish_templates(execution_db)
    insert_events(execution_db, "rt", 2)
    caplog.set_level(logging.INFO, logger="message_center.processing.runner")
    with Channels(SmtpSettings(port=test_deployment.smtp_port), None, "rt") as chans:
        stats = run_realtime_shard(execution_db, 0, FAST, chans, loop_seconds=2.6,
                                   poll_seconds=0.05, progress_seconds=1)
    assert stats.sent == 2
    progress = [record.getMessage() for record in caplog.records
                if "rt shard 0 after" in record.getMessage()]
    assert len(progress) == 2, progress  # at about 1 s and 2 s, before the loop ended
    assert progress[-1].startswith("rt shard 0 after 2 s: sent 2, failed 0, ignored 0, "
                                   "retried 0, not taken into account 0, expired 0, "
                                   "unknown 0 (claimed 2)"), progress
