"""The outcome recorder on the real execution database: grouped commits shared by several
sender threads, the "handed" mark committed before the barrier lets a message go, and a
row released meanwhile never handed."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from polling import wait_until
from processing_factory import delivery_logs, events, insert_events, publish_templates

from message_center.delivery.ledger import start_sending
from message_center.delivery.outcome import Outcome
from message_center.processing import ProcessingSettings, split_queue
from message_center.processing.recorder import NotHanded, OutcomeRecorder
from message_center.state import release_unsent

SETTINGS = ProcessingSettings(shards=1, retry_backoff_seconds=0, retry_backoff_max_seconds=0)


def _armed(engine, count: int, kind: str = "batch"):
    publish_templates(engine)
    insert_events(engine, kind, count)
    (claim,) = split_queue(engine, kind, SETTINGS)
    with engine.begin() as conn:
        return claim, start_sending(conn, claim, -(2**63), count).to_send


def test_outcomes_from_several_threads_are_written_in_groups(execution_db):
    claim, attempts = _armed(execution_db, 200, "rt")
    recorder = OutcomeRecorder(execution_db, claim, SETTINGS.retry_policy, copy_status=True)

    def sender(mine) -> None:
        for n, attempt in enumerate(mine):
            recorder.handing(attempt)()
            recorder.add(attempt, Outcome.sent(f"<{attempt.log_id}@x>") if n % 10
                         else Outcome.retry("451 try later"))

    threads = [threading.Thread(target=sender, args=(attempts[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.close()
    totals = recorder.totals
    assert (totals.sent, totals.retried) == (180, 20)
    assert recorder.commits < 2 * len(attempts)  # marks and outcomes share commits
    assert Counter(log["status"] for log in delivery_logs(execution_db)) == {
        "sent": 180, "retry": 20}
    assert all(log["sending_started"] is not None for log in delivery_logs(execution_db))
    # real time: copied onto the events in the same transactions
    assert Counter(e["status"] for e in events(execution_db, "rt")) == {
        "sent": 180, "pending": 20}


def test_two_writers_keep_every_rows_writes_in_order(execution_db):
    """Several sessions: the recorder commits on two connections at once, yet a message
    refused before its final "." (outcome handed over while its mark may still be being
    committed) and one sent after its barrier each end with their own outcome."""
    claim, attempts = _armed(execution_db, 240)
    recorder = OutcomeRecorder(execution_db, claim, SETTINGS.retry_policy, copy_status=False,
                               sessions=6)
    assert len(recorder._threads) == 2

    def sender(mine) -> None:
        for n, attempt in enumerate(mine):
            barrier = recorder.handing(attempt)
            if n % 3 == 0:  # refused at RCPT: no barrier, the outcome follows the mark
                recorder.add(attempt, Outcome.failed("550 no such user"))
                continue
            barrier()
            recorder.add(attempt, Outcome.sent(f"<{attempt.log_id}@x>"))

    threads = [threading.Thread(target=sender, args=(attempts[i::6],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.close()
    assert (recorder.totals.sent, recorder.totals.failed) == (156, 84)
    assert recorder.commits < len(attempts)  # still grouped
    statuses = {log["id"]: log["status"] for log in delivery_logs(execution_db)}
    for i in range(6):
        for n, attempt in enumerate(attempts[i::6]):
            assert statuses[attempt.log_id] == ("failed" if n % 3 == 0 else "sent")


def test_a_group_stuck_on_one_connection_delays_only_its_own_rows(execution_db):
    """Two writers, made deterministic with a row lock: while the group carrying X's mark
    is stuck, a mark a sender waits for (Y) is committed on the other connection, but X's
    outcome waits for X's mark (never written on the other connection first, nor in a
    second group stuck behind the same lock); once X's group is through, X's outcome is
    written after it. So a kill at any moment leaves only marks without outcomes of
    messages a session had in hand (issue 24, the Celery kill test)."""
    claim, (x, y, *_) = _armed(execution_db, 3)
    recorder = OutcomeRecorder(execution_db, claim, SETTINGS.retry_policy, copy_status=False,
                               sessions=4)
    assert len(recorder._threads) == 2
    with execution_db.connect() as locker:
        lock = locker.begin()
        locker.exec_driver_sql("SELECT id FROM delivery_log WHERE id = %s FOR UPDATE",
                               (x.log_id,))
        recorder.handing(x)  # gathered for gather_seconds, then committed: stuck
        wait_until("X's group to be stuck on the lock", lambda: recorder._inflight == 1)
        recorder.add(x, Outcome.failed("550 no such user"))  # refused before the "."
        marked_y = threading.Thread(target=recorder.handing(y))
        marked_y.start()
        marked_y.join(60)  # a hang ends the test; what it proves is the order below
        assert not marked_y.is_alive(), "Y's mark waited for X's stuck group"
        assert recorder.pending == 1  # X's outcome still waits for X's mark
        statuses = {log["id"]: log for log in delivery_logs(execution_db)}
        assert statuses[y.log_id]["sending_started"] is not None
        assert statuses[x.log_id]["sending_started"] is None
        lock.rollback()
    recorder.add(y, Outcome.sent("<y@x>"))
    recorder.close()
    statuses = {log["id"]: log for log in delivery_logs(execution_db)}
    assert statuses[x.log_id]["status"] == "failed"
    assert statuses[x.log_id]["sending_started"] is not None  # the mark went first
    assert statuses[y.log_id]["status"] == "sent"
    assert (recorder.totals.sent, recorder.totals.failed) == (1, 1)


def test_the_barrier_returns_once_the_mark_is_committed(execution_db):
    claim, (attempt, *_) = _armed(execution_db, 2)
    with OutcomeRecorder(execution_db, claim, SETTINGS.retry_policy,
                         copy_status=False) as recorder:
        ready = recorder.handing(attempt)
        ready()
        (log,) = [row for row in delivery_logs(execution_db) if row["id"] == attempt.log_id]
        assert log["status"] == "sending" and log["sending_started"] is not None
        others = [row for row in delivery_logs(execution_db) if row["id"] != attempt.log_id]
        assert all(row["sending_started"] is None for row in others)  # armed, not handed


def test_a_row_released_meanwhile_is_not_handed(execution_db):
    claim, (attempt, *_) = _armed(execution_db, 1)
    with execution_db.begin() as conn:  # e.g. its lease ran out and a recovery gave it back
        assert release_unsent(conn, "batch", [attempt.log_id]) == 1
    with OutcomeRecorder(execution_db, claim, SETTINGS.retry_policy,
                         copy_status=False) as recorder:
        ready = recorder.handing(attempt)
        with pytest.raises(NotHanded):
            ready()
    (log,) = delivery_logs(execution_db)
    assert log["status"] == "retry" and log["sending_started"] is None


def test_the_group_statement_is_prepared_once_and_survives_a_reset(execution_db):
    """The recorder's statement runs as a server-side prepared statement; a connection
    that lost it (DISCARD ALL, a pooler's reset) prepares it again, and one that loses it
    every time (PgBouncer in transaction mode) falls back to plain statements."""
    from sqlalchemy import text

    from message_center.delivery.ledger import record

    claim, attempts = _armed(execution_db, 3)
    with execution_db.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        marked, _ = record(conn, claim, [attempts[0]], [], SETTINGS.retry_policy)
        assert marked == {attempts[0].log_id}
        prepared = conn.execute(text(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'mc_batch_%'"
        )).scalar_one()
        assert prepared == 1
        conn.exec_driver_sql("DEALLOCATE ALL")  # the connection forgets it
        _, done = record(conn, claim, [], [(attempts[0], Outcome.sent("<a@x>"))],
                         SETTINGS.retry_policy)
        assert done.sent == 1
        conn.connection.info["mc_no_prepare"] = True  # as after losing it twice
        _, done = record(conn, claim, [attempts[1]],
                         [(attempts[1], Outcome.sent("<b@x>"))], SETTINGS.retry_policy)
        assert done.sent == 1
        conn.connection.info.pop("mc_no_prepare")
    statuses = {log["id"]: log["status"] for log in delivery_logs(execution_db)}
    assert [statuses[a.log_id] for a in attempts] == ["sent", "sent", "sending"]
