"""A PostgreSQL restart during real-time delivery: zero unknown outcomes, nothing sent
twice, nothing lost, delivery resumed.

The server restarted is a real embedded PostgreSQL of its own (the ``restartable_db``
fixture: same binaries and options as the test deployment's, ``pg_ctl stop -m fast``
then start), so the Airflow processes other tests of the session may have started on
the deployment's server are not disturbed. The shard loop is the real one
(:func:`message_center.processing.run_realtime_shard`), against a real SMTP server that
takes 20 ms per message, with two SMTP sessions: messages are in flight when the
database goes away.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from processing_factory import (
    delivery_logs,
    events,
    insert_events,
    publish_templates,
    recipients,
)

from message_center.delivery.channels import Channels
from message_center.delivery.ledger import start_sending
from message_center.delivery.outcome import Outcome
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, recover, run_realtime_shard
from message_center.processing.queue import split_queue
from message_center.processing.recorder import OutcomeRecorder, RecorderFailed

SETTINGS = ProcessingSettings(shards=1, routing_batch_size=20, delivery_chunk=20,
                              smtp_sessions=2, sending_timeout_seconds=60,
                              claim_lease_seconds=60)
BEFORE, AFTER = 100, 20


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_postgres_restart_during_realtime_delivery_leaves_no_unknown_outcome(
        restartable_db, smtp_sink, test_deployment):
    server, engine = restartable_db
    publish_templates(engine)
    insert_events(engine, "rt", BEFORE)
    smtp_sink.latency = 0.02
    stop = threading.Event()
    result = {}

    def shard_loop() -> None:
        with Channels(SmtpSettings(port=test_deployment.smtp_port), None, "rt") as chans:
            result["stats"] = run_realtime_shard(engine, 0, SETTINGS, chans, loop_seconds=120,
                                                 poll_seconds=0.2, should_stop=stop.is_set)

    loop = threading.Thread(target=shard_loop)
    loop.start()
    try:
        _wait_for(lambda: smtp_sink.count() >= 20, 30, "the first messages")
        server.stop()  # pg_ctl stop -m fast: every connection is cut
        in_flight_at_restart = smtp_sink.count()
        server.start()
        back = time.monotonic()
        # Another worker's recovery pass, right away: the live shard holds its claim and
        # is only waiting for the database; nothing of it is settled or taken.
        other = recover(engine, SETTINGS, kinds=("rt",))
        assert (other.unknown, other.released) == (0, 0)
        insert_events(engine, "rt", AFTER, email="after{n}@example.test")  # NOTIFY too

        def all_final() -> bool:
            return Counter(e["status"] for e in events(engine, "rt")) == {
                "sent": BEFORE + AFTER}

        _wait_for(all_final, 30, "every event sent after the restart")
        resumed_in = time.monotonic() - back
    finally:
        stop.set()
        loop.join(60)
    assert not loop.is_alive()
    assert in_flight_at_restart < BEFORE  # the restart did hit delivery in progress
    assert resumed_in < 30
    stats = result["stats"]
    assert stats.unknown == 0 and stats.sent == BEFORE + AFTER
    logs = delivery_logs(engine)
    assert Counter(log["status"] for log in logs) == {"sent": BEFORE + AFTER}
    got = recipients(smtp_sink)  # nothing sent twice, nothing lost
    assert len(got) == BEFORE + AFTER and set(got.values()) == {1}


def test_a_recorder_gives_up_before_the_recovery_may_settle_its_rows(restartable_db):
    """Database away for longer than the sending timeout: the recorder keeps retrying,
    then gives up ``margin`` before the crash recovery could settle the message it holds
    (so the two never race), and hands its outcome back to be written later."""
    server, engine = restartable_db
    publish_templates(engine)
    insert_events(engine, "batch", 1)
    settings = ProcessingSettings(shards=1, sending_timeout_seconds=3)
    (claim,) = split_queue(engine, "batch", settings)
    with engine.begin() as conn:
        (attempt,) = start_sending(conn, claim, -(2**63), 10).to_send
    recorder = OutcomeRecorder(engine, claim, settings.retry_policy, copy_status=False,
                               sending_timeout_seconds=settings.sending_timeout_seconds)
    ready = recorder.handing(attempt)
    ready()  # the mark is committed: from now on the message may be at the provider
    handed = time.monotonic()
    server.stop()
    recorder.add(attempt, Outcome.sent("<id@example.test>"))
    with pytest.raises(RecorderFailed, match="unreachable"):
        recorder.flush()  # blocks while it retries
    gave_up_after = time.monotonic() - handed
    assert 1.5 <= gave_up_after < settings.sending_timeout_seconds
    assert [a.log_id for a, _ in recorder.unrecorded] == [attempt.log_id]
    with pytest.raises(RecorderFailed):
        recorder.close()
    server.start()
    (log,) = delivery_logs(engine)
    assert log["status"] == "sending" and log["sending_started"] is not None
