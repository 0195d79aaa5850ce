"""After a crash, every status tells the truth: a delivery process killed with ``kill -9``
in the middle of a chunk, against a real, slow SMTP server; statuses compared one by one
with what the server received.

The process killed runs what a ``batchEventsProcessing`` shard task runs
(:func:`message_center.processing.deliver_shard`), in a process of its own; the
"retried task" is the same function again, as Airflow's retry would run it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.state import UNKNOWN_OUTCOME
from message_center.status_sync import sync_event_statuses

# The defaults of the batch DAG where it matters: 100-message chunks.
SETTINGS = ProcessingSettings(shards=1, delivery_chunk=100)
EVENTS = 60
SLOW_SMTP_SECONDS = 0.02  # the server: 20 ms per message

CHILD = """
import json, os, sys
from message_center.claims import ShardClaim
from message_center.db import engine_for
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, deliver_shard

claim = ShardClaim.from_xcom(json.loads(sys.argv[1]))
engine = engine_for(os.environ["MC_CRASH_TEST_DB"])
settings = ProcessingSettings(shards=1, delivery_chunk=100, smtp_sessions=int(sys.argv[2]))
with Channels(SmtpSettings(port=int(os.environ["MC_CRASH_TEST_SMTP_PORT"])), None,
              "batch") as channels:
    deliver_shard(engine, claim, settings, channels, copy_status=False)
"""


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def _address(event: dict) -> str:
    return str(event["email"])


@pytest.mark.parametrize(("sessions", "after_messages", "extra_ms"),
                         [(1, 5, 0), (1, 17, 9), (1, 31, 19), (4, 23, 7)])
def test_kill_9_mid_chunk_leaves_only_the_messages_in_flight_unknown(
        execution_db, smtp_sink, test_deployment, sessions, after_messages, extra_ms):
    """At most one unknown outcome per open SMTP session; every other event's status
    matches what the server received; the retried task sends the rest, nothing twice."""
    publish_templates(execution_db)
    insert_events(execution_db, "batch", EVENTS)
    (claim,) = split_queue(execution_db, "batch", SETTINGS)
    smtp_sink.latency = SLOW_SMTP_SECONDS
    env = {**os.environ, "MC_CRASH_TEST_DB": test_deployment.database_url("execution"),
           "MC_CRASH_TEST_SMTP_PORT": str(test_deployment.smtp_port)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(claim.to_xcom()),
                              str(sessions)], env=env)
    try:
        _wait_for(lambda: smtp_sink.count() >= after_messages, 60, "the first messages")
        time.sleep(extra_ms / 1000)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    time.sleep(3 * SLOW_SMTP_SECONDS)  # a message in flight at the server completes there
    received = recipients(smtp_sink)
    assert after_messages <= len(received) < EVENTS and set(received.values()) == {1}

    # updateEventStatus right after the crash: the statuses match what the server got
    sync_event_statuses(execution_db)
    by_address = {_address(event): event for event in events(execution_db, "batch")}
    logs = {log["event_id"]: log for log in delivery_logs(execution_db)}
    unsure = []  # handed to the server, no outcome recorded: the one in progress
    for address, event in by_address.items():
        log = logs.get(event["id"])
        if log is not None and log["status"] == "sending" and log["sending_started"]:
            unsure.append(address)
            continue
        assert (event["status"] == "sent") == (address in received), (address, event, log)
    assert len(unsure) <= sessions, unsure  # at most one in progress per SMTP session

    # The retried task: settles the unknown one, sends the rest, nothing twice
    smtp_sink.latency = 0
    with Channels(SmtpSettings(port=test_deployment.smtp_port), None, "batch") as channels:
        stats = deliver_shard(execution_db, claim, SETTINGS, channels, copy_status=False)
    assert stats.unknown == len(unsure)
    sync_event_statuses(execution_db)
    received = recipients(smtp_sink)
    assert set(received.values()) == {1}  # nobody got a message twice
    rows = events(execution_db, "batch")
    assert Counter(row["status"] for row in rows) == {
        "sent": EVENTS - len(unsure), **({"failed": len(unsure)} if unsure else {})}
    for row in rows:
        if _address(row) in unsure:
            assert row["status"] == "failed" and row["error_reason"] == UNKNOWN_OUTCOME
        else:  # every other event: sent, and received exactly once
            assert row["status"] == "sent" and received[_address(row)] == 1
