"""The clean-up over real PostgreSQL: an execution instance (cell 1) archived into the control
database by the real archiving code, then purged. Nothing unarchived is ever deleted (archive
lagging, rows changed after archiving, late commits, control unreachable, account disabled or
not registered); pending and in-delivery events stay; a second run deletes nothing more; each
delay's boundary; the dry run changes nothing; locked rows are skipped, never waited for.

The second instance (cell 1) is used: the processing DAGs of a running test stack work on the
first instance's pending events."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from message_center.archiving import archive_window
from message_center.cleanup import (
    CleanupError,
    CleanupSettings,
    purge_archive,
    purge_execution,
    purge_idempotency,
    purge_statistics_before,
)
from message_center.db import engine_for
from message_center.ids import NEXT_ID_SQL
from message_center.registry import ExecutionAccount, Registry

NOW = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
DAY = timedelta(days=1)
OLD = NOW - 40 * DAY  # past the default 30-day event delay
RECENT = NOW - 5 * DAY
CELL = 1


def registry(*, enabled: bool = True, cell: int = CELL) -> Registry:
    return Registry(path=Path("execution_accounts.yaml"), accounts=[
        ExecutionAccount(name="mcExec2", label="Two", conn_id="mc_execution2", cell_id=cell,
                         enabled=enabled)])


def add_event(engine: Engine, kind: str, status: str, last_modified: datetime, *,
              log: str | None = None, log_modified: datetime | None = None) -> int:
    """One event (and, with ``log``, its delivery log in that status)."""
    with engine.begin() as conn:
        event_id = conn.execute(text(f"""
            INSERT INTO {kind}_event (id, type, email, ctx, status, created, last_modified,
                                      next_attempt)
            VALUES ({NEXT_ID_SQL}, 'ORDER_CONFIRMED', 'u@example.com', '{{}}', :status,
                    :lm - interval '1 minute', :lm, :lm + interval '3650 days')
            RETURNING id"""), {"status": status, "lm": last_modified}).scalar_one()
        if log is not None:
            log_id = conn.execute(text(f"""
                INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status,
                                          attempts, created, last_modified)
                VALUES ({NEXT_ID_SQL}, :kind, :event, 'email', 'u@example.com', :status, 1,
                        :lm, :lm) RETURNING id"""),
                {"kind": kind, "event": event_id, "status": log,
                 "lm": log_modified or last_modified}).scalar_one()
            conn.execute(text(f"UPDATE {kind}_event SET delivery_log_id = :log WHERE id = :id"),
                         {"log": log_id, "id": event_id})
            # the UPDATE's trigger moved last_modified to now: put the intended time back
            set_modified(conn, f"{kind}_event", event_id, last_modified)
    return event_id


def set_modified(conn, table: str, row_id: int, at: datetime) -> None:
    """Set ``last_modified`` past the touch trigger (as a row changed at ``at``)."""
    conn.execute(text("SET LOCAL session_replication_role = replica"))
    conn.execute(text(f"UPDATE {table} SET last_modified = :at WHERE id = :id"),
                 {"at": at, "id": row_id})
    conn.execute(text("SET LOCAL session_replication_role = origin"))


def archive(execution: Engine, control: Engine, until: datetime = NOW) -> None:
    """The real archiving (mcSynch's code) of everything changed before ``until``."""
    archive_window(execution, control, CELL, NOW - 400 * DAY, until, statistics=False)


def ids(engine: Engine, table: str) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(text(f"SELECT id FROM {table}")).scalars())


def snapshot(engine: Engine) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {table: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
                for table in ("rt_event", "batch_event", "delivery_log", "api_idempotency")}


def purge(execution: Engine, control: Engine | None, *, reg: Registry | None = None,
          now: datetime = NOW, **settings):
    return purge_execution(execution, control, reg if reg is not None else registry(),
                           CleanupSettings(**settings), now=now, name="execution2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- what goes and what stays -------------------------------------------------------------

def test_archived_final_events_past_the_delay_go_with_their_logs(execution2_db, control_db):
    gone = {
        add_event(execution2_db, "rt", "sent", OLD, log="sent"),
        add_event(execution2_db, "rt", "not_taken_into_account", OLD),
        add_event(execution2_db, "batch", "failed", OLD, log="failed"),
        add_event(execution2_db, "batch", "ignored", OLD, log="ignored"),
        add_event(execution2_db, "rt", "expired", OLD, log="failed"),  # retries exhausted
        add_event(execution2_db, "batch", "expired", OLD),  # past its expiration
    }
    stays = {
        add_event(execution2_db, "rt", "pending", OLD),
        add_event(execution2_db, "rt", "pending", OLD, log="retry"),  # waiting for a retry
        add_event(execution2_db, "batch", "pending_delivery", OLD, log="sending"),
        add_event(execution2_db, "batch", "pending_delivery", OLD, log="queued"),
        add_event(execution2_db, "rt", "sent", RECENT, log="sent"),  # within the delay
        add_event(execution2_db, "rt", "failed", OLD, log="queued"),  # log not final
    }
    logs_before = ids(execution2_db, "delivery_log")
    archive(execution2_db, control_db)

    report = purge(execution2_db, control_db)

    assert report.skipped is None
    assert (report.events, report.delivery_logs) == (6, 4)
    assert ids(execution2_db, "rt_event") | ids(execution2_db, "batch_event") == stays
    with execution2_db.connect() as conn:
        remaining_logs = set(conn.execute(text("SELECT event_id FROM delivery_log")).scalars())
    assert remaining_logs <= stays and len(ids(execution2_db, "delivery_log")) == 5
    assert len(logs_before) == 9
    # the archive keeps everything
    with control_db.connect() as conn:
        archived = set(conn.execute(text(
            "SELECT id FROM archived_event WHERE cell_id = :c"), {"c": CELL}).scalars())
    assert gone | stays <= archived
    assert report.sizes_before["rt_event"].total_bytes > 0
    assert set(report.sizes_after) == {"rt_event", "batch_event", "delivery_log"}

    before = snapshot(execution2_db)
    again = purge(execution2_db, control_db)  # a second run deletes nothing more
    assert (again.events, again.delivery_logs) == (0, 0)
    assert snapshot(execution2_db) == before


def test_nothing_goes_that_the_archive_lacks(execution2_db, control_db):
    """The archive's progress and its rows decide, not the clock."""
    archived_old = add_event(execution2_db, "rt", "sent", OLD - DAY, log="sent")
    lagging = add_event(execution2_db, "rt", "sent", OLD, log="sent")  # after the progress
    archive(execution2_db, control_db, until=OLD - DAY / 2)  # archive is lagging behind
    late = add_event(execution2_db, "rt", "sent", OLD - 2 * DAY)  # committed late: below
    changed = add_event(execution2_db, "batch", "sent", OLD - 4 * DAY, log="sent")
    log_changed = add_event(execution2_db, "batch", "sent", OLD - 3 * DAY, log="sent")
    archive(execution2_db, control_db, until=OLD - DAY / 2)  # the late one is missed
    with control_db.begin() as conn:  # ... as a late commit would be
        conn.execute(text("DELETE FROM archived_event WHERE id = :id"), {"id": late})
    with execution2_db.begin() as conn:  # changed after it was archived, still old
        set_modified(conn, "batch_event", changed, OLD - 4 * DAY + timedelta(seconds=1))
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("UPDATE delivery_log SET status = 'failed', "
                          "last_modified = last_modified + interval '1 second' "
                          "WHERE event_id = :id"), {"id": log_changed})

    report = purge(execution2_db, control_db)

    assert report.events == 1 and report.delivery_logs == 1
    assert ids(execution2_db, "rt_event") == {lagging, late}
    assert ids(execution2_db, "batch_event") == {changed, log_changed}
    assert archived_old not in ids(execution2_db, "rt_event")
    assert report.kinds["rt"].archived_until < OLD  # the lagging event was not even read
    assert report.kinds["batch"].not_archived == 2

    archive(execution2_db, control_db)  # the archive catches up: now they may go
    report = purge(execution2_db, control_db)
    assert report.events == 4
    assert ids(execution2_db, "rt_event") == ids(execution2_db, "batch_event") == set()
    assert ids(execution2_db, "delivery_log") == set()


@pytest.mark.parametrize(("case", "reason"), [
    ("unreachable", "the control database is unreachable"),
    ("no connection", "the control database is not configured (no Airflow connection"),
    ("disabled", "execution account mcExec2 (cell 1) is disabled"),
    ("not registered", "cell 1 is not registered as an execution account"),
    ("no registry", "the execution account registry is not available"),
])
def test_when_the_archive_cannot_be_confirmed_nothing_goes(execution2_db, control_db, case,
                                                           reason):
    for kind in ("rt", "batch"):
        add_event(execution2_db, kind, "sent", OLD, log="sent")
    archive(execution2_db, control_db)
    before = snapshot(execution2_db)
    control = control_db
    reg: Registry | None = registry()
    problem = None
    if case == "unreachable":
        control = engine_for(f"postgresql://mc:s3cret@127.0.0.1:{free_port()}/mc_control"
                             "?connect_timeout=3")
    elif case == "no connection":
        control, problem = None, "no Airflow connection 'mc_control'"
    elif case == "disabled":
        reg = registry(enabled=False)
    elif case == "not registered":
        reg = registry(cell=7)
    else:
        reg = None
    report = purge_execution(execution2_db, control, reg,
                             CleanupSettings(), now=NOW, name="execution2",
                             control_problem=problem)
    assert reason in (report.skipped or "")
    assert reason in " ".join(report.lines())
    assert "s3cret" not in " ".join(report.lines())
    assert report.events == 0 and report.kinds == {}
    assert snapshot(execution2_db) == before


# --- boundaries, batches, dry run, locks -----------------------------------------------------

@pytest.mark.parametrize("days", [1, 30, 90])
def test_event_delay_boundary(execution2_db, control_db, days):
    cutoff = NOW - timedelta(days=days)
    older = add_event(execution2_db, "rt", "sent", cutoff - timedelta(microseconds=1), log="sent")
    exactly = add_event(execution2_db, "rt", "sent", cutoff, log="sent")
    newer = add_event(execution2_db, "rt", "sent", cutoff + timedelta(microseconds=1))
    archive(execution2_db, control_db)
    report = purge(execution2_db, control_db, event_days=days)
    assert report.events == 1
    assert ids(execution2_db, "rt_event") == {exactly, newer}
    assert older not in ids(execution2_db, "rt_event")


def test_idempotency_keys_after_their_replay_window(execution2_db):
    cutoff = NOW - timedelta(hours=24)
    with execution2_db.begin() as conn:
        conn.execute(text("""
            INSERT INTO api_idempotency (key, endpoint, request_hash, status_code, response,
                                         created)
            SELECT 'old-' || g, 'rtEvents', 'h', 201, '{}', :cutoff - interval '1 hour' * g
            FROM generate_series(1, 250) g"""), {"cutoff": cutoff})
        conn.execute(text("""
            INSERT INTO api_idempotency (key, endpoint, request_hash, status_code, response,
                                         created)
            VALUES ('just-past', 'rtEvents', 'h', 201, '{}', :c - interval '1 microsecond'),
                   ('exactly', 'rtEvents', 'h', 201, '{}', :c),
                   ('within', 'rtEvents', 'h', 201, '{}', :c + interval '1 microsecond')"""),
            {"c": cutoff})
    dry = purge_idempotency(execution2_db, CleanupSettings(dry_run=True, batch_rows=100),
                            now=NOW)
    assert dry.keys == 251 and len(ids_keys(execution2_db)) == 253
    report = purge_idempotency(execution2_db, CleanupSettings(batch_rows=100), now=NOW)
    assert report.keys == 251
    assert ids_keys(execution2_db) == {"exactly", "within"}
    assert purge_idempotency(execution2_db, CleanupSettings(), now=NOW).keys == 0
    shorter = purge_idempotency(execution2_db, CleanupSettings(idempotency_key_hours=1),
                                now=NOW + timedelta(hours=1))
    assert shorter.keys == 2 and ids_keys(execution2_db) == set()
    assert "api_idempotency" in report.sizes_before


def ids_keys(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT key FROM api_idempotency")).scalars())


def test_bounded_batches_and_the_dry_run_changes_nothing(execution2_db, control_db):
    with execution2_db.begin() as conn:
        conn.execute(text(f"""
            INSERT INTO batch_event (id, type, email, ctx, status, created, last_modified)
            SELECT {NEXT_ID_SQL}, 'ORDER_CONFIRMED', 'u@example.com', '{{}}', 'sent',
                   :at, :at + interval '1 second' * g FROM generate_series(1, 250) g"""),
            {"at": OLD})
    archive(execution2_db, control_db)
    before = snapshot(execution2_db)

    dry = purge(execution2_db, control_db, batch_rows=100, dry_run=True)
    assert (dry.events, dry.kinds["batch"].batches) == (250, 3)
    assert snapshot(execution2_db) == before
    assert "DRY RUN, nothing deleted" in dry.lines()[0]
    assert "would delete 250 event(s)" in " ".join(dry.lines())

    report = purge(execution2_db, control_db, batch_rows=100)
    assert (report.events, report.kinds["batch"].batches) == (250, 3)
    assert ids(execution2_db, "batch_event") == set()


def test_rows_held_by_processing_are_skipped_not_waited_for(execution2_db, control_db):
    held = add_event(execution2_db, "rt", "sent", OLD, log="sent")
    free = add_event(execution2_db, "rt", "sent", OLD, log="sent")
    archive(execution2_db, control_db)
    locked, release, let_go = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with execution2_db.begin() as conn:
            conn.execute(text("SELECT 1 FROM rt_event WHERE id = :id FOR UPDATE"), {"id": held})
            locked.set()
            release.wait(300)
            let_go.set()  # before the commit that frees the row

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(60)
        report = purge(execution2_db, control_db)
        # The purge returned while the row was still locked: it skipped it (a purge that
        # waited would return only after the holder let go, and delete the row).
        assert not let_go.is_set()
    finally:
        release.set()
        holder.join()
    assert (report.events, report.kinds["rt"].changed) == (1, 1)
    assert ids(execution2_db, "rt_event") == {held}
    assert free not in ids(execution2_db, "rt_event")
    assert purge(execution2_db, control_db).events == 1  # the next run takes it


# --- settings ---------------------------------------------------------------------------

@pytest.mark.fast
def test_defaults():
    settings = CleanupSettings()
    assert (settings.event_days, settings.idempotency_key_hours, settings.archived_event_days,
            settings.statistics_days, settings.airflow_metadata_days, settings.batch_rows,
            settings.dry_run) == (30, 24, 365, 1095, 14, 10_000, False)


@pytest.mark.fast
@pytest.mark.parametrize(("values", "message"), [
    ({"event_days": 0}, "cleanup param event_days: 0 is outside 1..3650"),
    ({"event_days": "thirty"}, "cleanup param event_days: 'thirty' is not a whole number"),
    ({"idempotency_key_hours": 1.5}, "idempotency_key_hours: 1.5 is not a whole number"),
    ({"batch_rows": 10}, "cleanup param batch_rows: 10 is outside 100..1000000"),
    ({"dry_run": "maybe"}, "cleanup param dry_run: 'maybe' is not true or false"),
    ({"statistics_days": 30, "archived_event_days": 365},
     "statistics_days (30) is shorter than archived_event_days (365)"),
])
def test_bad_settings_name_the_param(values, message):
    with pytest.raises(CleanupError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CleanupSettings.from_mapping(values)


@pytest.mark.fast
def test_settings_from_params():
    settings = CleanupSettings.from_mapping(
        {"event_days": "7", "dry_run": "true", "batch_rows": 500.0, "other": "ignored"})
    assert (settings.event_days, settings.dry_run, settings.batch_rows) == (7, True, 500)


@pytest.mark.fast
def test_the_execution_instance_keeps_events_shorter_than_the_archive():
    with pytest.raises(CleanupError, match=r"event_days \(365\) is not shorter than "
                                           r"archived_event_days \(365\)"):
        CleanupSettings(event_days=365)


# --- control instance: archive and statistics ------------------------------------------------

def add_archived(control: Engine, cell: int, created: datetime, count: int = 1, *,
                 log: bool = True, step: timedelta = timedelta(0)) -> list[int]:
    """Archived events of ``cell`` created at ``created`` (+ ``step`` each), with logs."""
    with control.begin() as conn:
        base = conn.execute(text("SELECT coalesce(max(id), 0) FROM archived_event")).scalar()
        rows = list(conn.execute(text("""
            INSERT INTO archived_event (cell_id, id, event_kind, type, wished_channel, ctx,
                                        status, created, last_modified, error_count)
            SELECT :cell, :base + g, 'rt', 'ORDER_CONFIRMED', 'email', '{}', 'sent',
                   :at + :step * g, :at + :step * g, 0
            FROM generate_series(1, :n) g RETURNING id"""),
            {"cell": cell, "base": base, "at": created, "n": count, "step": step}).scalars())
        if log:
            conn.execute(text("""
                INSERT INTO archived_delivery_log (cell_id, id, event_kind, event_id, channel,
                                                   status, attempts, created, last_modified)
                SELECT :cell, e + 1000000, 'rt', e, 'email', 'sent', 1, :at, :at
                FROM unnest(CAST(:ids AS bigint[])) e"""),
                {"cell": cell, "ids": rows, "at": created})
    return rows


def archive_ids(control: Engine) -> tuple[set[int], set[int]]:
    with control.connect() as conn:
        return (set(conn.execute(text("SELECT id FROM archived_event")).scalars()),
                set(conn.execute(text("SELECT id FROM archived_delivery_log")).scalars()))


def test_the_archive_goes_after_its_delay_with_its_delivery_logs(control_db):
    cutoff = NOW - 365 * DAY
    old = add_archived(control_db, 0, cutoff - 10 * DAY, 150, step=timedelta(seconds=1))
    old += add_archived(control_db, 1, cutoff - 10 * DAY, 100, step=timedelta(seconds=1))
    just = add_archived(control_db, 1, cutoff - timedelta(microseconds=1))
    exactly = add_archived(control_db, 0, cutoff)
    recent = add_archived(control_db, 1, NOW - DAY)
    with control_db.begin() as conn:  # logs whose event is not archived (any more)
        conn.execute(text("""
            INSERT INTO archived_delivery_log (cell_id, id, event_kind, event_id, channel,
                                               status, attempts, created, last_modified)
            VALUES (1, 42, 'rt', 999999, 'email', 'sent', 1, :old, :old),
                   (1, 43, 'rt', 999998, 'email', 'sent', 1, :new, :new)"""),
            {"old": cutoff - DAY, "new": NOW - DAY})
    before = archive_ids(control_db)
    settings = {"batch_rows": 100}

    dry = purge_archive(control_db, CleanupSettings(dry_run=True, **settings), now=NOW)
    assert (dry.archived_events, dry.archived_delivery_logs, dry.orphan_delivery_logs) == (
        251, 251, 1)
    assert archive_ids(control_db) == before
    assert "DRY RUN, nothing deleted" in dry.lines()[0]

    report = purge_archive(control_db, CleanupSettings(**settings), now=NOW)
    assert (report.archived_events, report.archived_delivery_logs,
            report.orphan_delivery_logs) == (251, 251, 1)
    assert report.batches == 3
    events, logs = archive_ids(control_db)
    assert events == set(exactly + recent)
    assert logs == {e + 1_000_000 for e in exactly + recent} | {43}
    assert not set(old + just) & events
    assert set(report.sizes_after) == {"archived_event", "archived_delivery_log"}

    again = purge_archive(control_db, CleanupSettings(**settings), now=NOW)
    assert (again.archived_events, again.orphan_delivery_logs) == (0, 0)


def test_statistics_go_after_their_delay_and_queue_sizes_stay_right(control_db):
    from message_center.reporting.statistics import floor_hour

    cutoff = floor_hour(NOW - 1095 * DAY)
    hours = [cutoff - timedelta(hours=h) for h in (30 * 24, 48, 2, 1)] + [
        cutoff, cutoff + timedelta(hours=1)]
    with control_db.begin() as conn:
        for n, hour in enumerate(hours):
            conn.execute(text("""
                INSERT INTO event_stats_hourly (hour, cell_id, event_kind, event_type, channel,
                                                status, received, finished)
                VALUES (:h, 0, 'rt', 'ORDER_CONFIRMED', 'email', 'sent', 5, 5)"""), {"h": hour})
            conn.execute(text("""
                INSERT INTO flow_stats_hourly (hour, cell_id, event_kind, channel, received,
                                               finished, arrivals, departures)
                VALUES (:h, 0, 'rt', 'email', 5, 5, :a, 2)"""), {"h": hour, "a": 2 + n})
            conn.execute(text("INSERT INTO event_stats_dirty VALUES (0, :h)"), {"h": hour})

    def queue_after(hour: datetime) -> int:
        with control_db.connect() as conn:
            return int(conn.execute(text(
                "SELECT coalesce(sum(arrivals - departures), 0) FROM flow_stats_hourly "
                "WHERE hour <= :h"), {"h": hour}).scalar_one())

    def rows() -> tuple[list, list]:
        with control_db.connect() as conn:
            return ([r[0] for r in conn.execute(text(
                        "SELECT hour FROM event_stats_hourly ORDER BY hour"))],
                    [r[0] for r in conn.execute(text(
                        "SELECT hour FROM event_stats_dirty ORDER BY hour"))])

    queues = {h: queue_after(h) for h in hours[-2:]}
    dry = purge_statistics_before(control_db, CleanupSettings(dry_run=True), now=NOW)
    assert dry.statistics_rows == 8 and rows()[0] == sorted(hours)

    report = purge_statistics_before(control_db, CleanupSettings(), now=NOW)
    assert report.batches >= 2  # a week of hours per transaction
    assert rows() == (hours[-2:], hours[-2:])
    assert {h: queue_after(h) for h in hours[-2:]} == queues  # 0+1+2+3 carried over
    assert report.carried_queues == 1
    again = purge_statistics_before(control_db, CleanupSettings(), now=NOW)
    assert rows() == (hours[-2:], hours[-2:])
    assert {h: queue_after(h) for h in hours[-2:]} == queues
    assert again.lines()[0].startswith("hourly statistics before")


def test_tracking_logs_go_with_their_events(execution2_db, control_db):
    old = add_event(execution2_db, "rt", "sent", OLD, log="sent")
    recent = add_event(execution2_db, "rt", "sent", RECENT, log="sent")
    with execution2_db.begin() as conn:
        for event_id in (old, recent):
            log_id = conn.execute(text("SELECT id FROM delivery_log WHERE event_id = :e"),
                                  {"e": event_id}).scalar_one()
            hit = conn.execute(text(
                "INSERT INTO tracking_log (delivery_log_id, event_kind, event_id, kind, at, "
                "last_modified) VALUES (:log, 'rt', :e, 'open', :at, :at) RETURNING id"),
                {"log": log_id, "e": event_id, "at": OLD if event_id == old else RECENT}
            ).scalar_one()
            conn.execute(text("INSERT INTO tracking_first (delivery_log_id, kind, at, "
                              "tracking_log_id) VALUES (:log, 'open', now(), :hit)"),
                         {"log": log_id, "hit": hit})
    archive(execution2_db, control_db)
    purge(execution2_db, control_db)
    with execution2_db.connect() as conn:
        assert list(conn.execute(text("SELECT event_id FROM tracking_log")).scalars()) == [
            recent]
        assert conn.execute(text("SELECT count(*) FROM tracking_first")).scalar_one() == 1
    with control_db.connect() as conn:  # archived, kept by the archive until its own delay
        assert conn.execute(text("SELECT count(*) FROM archived_tracking_log")).scalar_one() == 2
    purge_archive(control_db, CleanupSettings(event_days=10, archived_event_days=30), now=NOW,
                  vacuum_after=False)
    with control_db.connect() as conn:
        assert list(conn.execute(text(
            "SELECT event_id FROM archived_tracking_log")).scalars()) == [recent]
def test_webhook_messages_done_with_are_purged_after_their_delay(execution2_db):
    with execution2_db.begin() as conn:
        conn.execute(text("""
            INSERT INTO webhook_outbox (id, subscription_id, name, status, done_at)
            VALUES (1, 'wh_a', 'event.sent', 'delivered', :old),
                   (2, 'wh_a', 'event.sent', 'failed', :old),
                   (3, 'wh_a', 'event.sent', 'pending', NULL),
                   (4, 'wh_a', 'event.sent', 'delivered', :new)
        """), {"old": NOW - timedelta(days=8), "new": NOW - timedelta(days=1)})
        conn.execute(text("""
            INSERT INTO webhook_attempt (outbox_id, subscription_id, attempted_at)
            VALUES (1, 'wh_a', :old), (4, 'wh_a', :new)
        """), {"old": NOW - timedelta(days=8), "new": NOW - timedelta(days=1)})
    dry = purge_idempotency(execution2_db, CleanupSettings(dry_run=True), now=NOW)
    assert dry.webhooks["messages"] == 2 and dry.webhooks["attempts"] == 1
    report = purge_idempotency(execution2_db, CleanupSettings(batch_rows=100), now=NOW)
    assert report.webhooks == {"messages": 2, "attempts": 1, "deleted_subscriptions": 0}
    with execution2_db.connect() as conn:
        assert list(conn.execute(text("SELECT id FROM webhook_outbox ORDER BY id")
                                 ).scalars()) == [3, 4]


def test_the_files_an_event_brought_go_with_it_and_the_archive_keeps_only_their_hash(
        execution2_db, control_db):
    """The bytes of an event's attachments are stored once (``event_attachment``) and
    deleted with the event; the archive keeps name, type, size and hash, not the bytes."""
    meta = [{"name": "ticket.pdf", "contentType": "application/pdf", "size": 9,
             "sha256": "0" * 64}]
    gone = add_event(execution2_db, "rt", "sent", OLD, log="sent")
    stays = add_event(execution2_db, "rt", "sent", RECENT, log="sent")
    with execution2_db.begin() as conn:
        for event_id, modified in ((gone, OLD), (stays, RECENT)):
            conn.execute(text("UPDATE rt_event SET attachments = CAST(:m AS jsonb) "
                              "WHERE id = :id"), {"m": json.dumps(meta), "id": event_id})
            set_modified(conn, "rt_event", event_id, modified)
            conn.execute(text("INSERT INTO event_attachment VALUES ('rt', :id, 0, :c)"),
                         {"id": event_id, "c": b"%PDF-1.4\n"})
    archive(execution2_db, control_db)

    assert purge(execution2_db, control_db).events == 1

    with execution2_db.connect() as conn:
        assert list(conn.execute(text("SELECT event_id FROM event_attachment")).scalars()) \
            == [stays]
    with control_db.connect() as conn:
        archived = conn.execute(text("SELECT attachments FROM archived_event "
                                     "WHERE cell_id = :c AND id = :id"),
                                {"c": CELL, "id": gone}).scalar_one()
    assert archived == meta  # names, types, sizes, hashes: never the bytes
