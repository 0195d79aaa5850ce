"""updateEventStatus logic: incremental, set-based, idempotent - on real PostgreSQL."""

from __future__ import annotations

import pytest
from processing_factory import events, insert_events
from sqlalchemy import text

from message_center.state import copy_statuses
from message_center.status_sync import WATERMARK, sync_event_statuses


def outcome(engine, kind: str, event_id: int, status: str, error: str | None = None,
            age_seconds: float = 0) -> int:
    """An event handed to delivery whose ledger row got ``status`` ``age_seconds`` ago."""
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {kind}_event SET status = 'pending_delivery' "
                          "WHERE id = :id"), {"id": event_id})
        log_id = conn.execute(text("""
            INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status,
                                      error, last_modified)
            VALUES (:id + 1000000, :kind, :id, 'email', 'a@example.test', :status, :error,
                    clock_timestamp() - make_interval(secs => :age))
            RETURNING id
        """), {"id": event_id, "kind": kind, "status": status, "error": error,
               "age": age_seconds}).scalar_one()
    return int(log_id)


def watermark(engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT value FROM mc_watermark WHERE name = :n"),
                            {"n": WATERMARK}).scalar()


def test_copies_final_outcomes_with_the_processed_time(execution_db):
    rt = insert_events(execution_db, "rt", 3)
    (batch,) = insert_events(execution_db, "batch", 1)
    outcome(execution_db, "rt", rt[0], "sent")
    outcome(execution_db, "rt", rt[1], "ignored", "address is in quarantine")
    outcome(execution_db, "rt", rt[2], "sending")  # not final: untouched
    log_id = outcome(execution_db, "batch", batch, "failed", "550 no such user")
    stats = sync_event_statuses(execution_db)
    assert stats.copied == {"sent": 1, "ignored": 1, "failed": 1}
    rows = {row["id"]: row for row in events(execution_db, "rt")}
    assert [rows[i]["status"] for i in rt] == ["sent", "ignored", "pending_delivery"]
    assert rows[rt[1]]["error_reason"] == "address is in quarantine"
    (batch_row,) = events(execution_db, "batch")
    assert (batch_row["status"], batch_row["delivery_log_id"]) == ("failed", log_id)
    with execution_db.connect() as conn:
        logged = conn.execute(text("SELECT last_modified FROM delivery_log WHERE id = :id"),
                              {"id": log_id}).scalar_one()
    assert batch_row["processed"] == logged
    assert watermark(execution_db) is not None


def test_a_rerun_changes_nothing(execution_db):
    ids = insert_events(execution_db, "rt", 3)
    for event_id in ids:
        outcome(execution_db, "rt", event_id, "sent")
    sync_event_statuses(execution_db)
    before = events(execution_db, "rt")
    mark = watermark(execution_db)
    again = sync_event_statuses(execution_db)
    assert again.total == 0
    assert events(execution_db, "rt") == before  # not even last_modified moved
    assert watermark(execution_db) == mark


def test_it_reads_from_the_watermark_not_the_whole_table(execution_db):
    first, old, late = insert_events(execution_db, "rt", 3)
    outcome(execution_db, "rt", first, "sent")
    sync_event_statuses(execution_db, overlap_seconds=60)
    # a row older than watermark - overlap is not looked at again (no full scan) ...
    outcome(execution_db, "rt", old, "sent", age_seconds=3600)
    # ... while a late commit inside the overlap window is caught
    outcome(execution_db, "rt", late, "sent", age_seconds=5)
    stats = sync_event_statuses(execution_db, overlap_seconds=60)
    assert stats.copied["sent"] == 1
    rows = {row["id"]: row["status"] for row in events(execution_db, "rt")}
    assert (rows[old], rows[late]) == ("pending_delivery", "sent")


def test_batches_are_bounded_and_progress(execution_db):
    ids = insert_events(execution_db, "batch", 5)
    for n, event_id in enumerate(ids):
        outcome(execution_db, "batch", event_id, "sent", age_seconds=10 - n)
    stats = sync_event_statuses(execution_db, batch_size=2)
    assert (stats.batches, stats.total) == (3, 5)


def test_an_event_that_moved_on_keeps_its_status(execution_db):
    (event_id,) = insert_events(execution_db, "rt", 1)
    log_id = outcome(execution_db, "rt", event_id, "failed", "gave up after 5 attempts")
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE rt_event SET status = 'expired'"))
        assert copy_statuses(conn, "rt", [log_id]) == 0
    sync_event_statuses(execution_db)
    assert events(execution_db, "rt")[0]["status"] == "expired"


def test_bad_arguments_are_refused(execution_db):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        sync_event_statuses(execution_db, batch_size=0)
