"""Archiving over real PostgreSQL databases: two execution instances (cells 0 and 1) into
one control archive. The archive equals the source after runs; re-runs and overlapping
windows duplicate nothing; late updates and late commits arrive; bad sources are refused.

Rows whose content matters are final ('sent') or live on the second instance (cell 1): the
processing DAGs of a running test stack work on the first instance's pending events."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from message_center.archiving import (
    DELIVERY_LOG_COLUMNS,
    EVENT_COLUMNS,
    CellIdMismatch,
    ExecutionInstanceUnreachable,
    archive_window,
    effective_start,
)
from message_center.ids import NEXT_ID_SQL, cell_of

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def add_events(engine: Engine, kind: str, at: datetime, count: int, *, step=timedelta(0),
               status: str = "sent") -> list[int]:
    """``count`` events of ``kind`` last modified at ``at``, ``at + step``, ..."""
    with engine.begin() as conn:
        rows = conn.execute(text(f"""
            INSERT INTO {kind}_event (id, type, email, ctx, status, created, last_modified,
                                      next_attempt, external_id)
            SELECT {NEXT_ID_SQL}, 'ORDER_CONFIRMED', 'user' || g || '@example.com',
                   jsonb_build_object('order', g, 'note', E'tab\\there, line\\nbreak'),
                   :status, :at, :at + :step * g, :at, NULL
            FROM generate_series(0, :n - 1) AS g
            RETURNING id"""), {"at": at, "step": step, "n": count, "status": status})
        return [row[0] for row in rows]


def add_delivery_logs(engine: Engine, kind: str, event_ids: list[int], at: datetime,
                      status: str = "sent") -> None:
    with engine.begin() as conn:
        conn.execute(text(f"""
            INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status,
                                      created, last_modified, template_name, template_version)
            SELECT {NEXT_ID_SQL}, :kind, e, 'email', 'user@example.com', :status, :at, :at,
                   'orderConfirmed', 1
            FROM unnest(CAST(:ids AS bigint[])) AS e"""),
                     {"kind": kind, "ids": event_ids, "at": at, "status": status})


def source_rows(engine: Engine, table: str, start=None, end=None) -> list[tuple]:
    columns = DELIVERY_LOG_COLUMNS if table == "delivery_log" else EVENT_COLUMNS
    where = ""
    if start is not None:
        where = "WHERE last_modified >= :start AND last_modified < :end"
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            f"SELECT {', '.join(columns)} FROM {table} {where} ORDER BY id"),
            {"start": start, "end": end})]


def archived_rows(control: Engine, cell: int, kind: str, *, with_archived_at=False) -> list:
    if kind == "delivery_log":
        table, columns, extra = "archived_delivery_log", DELIVERY_LOG_COLUMNS, ""
    else:
        table, columns, extra = "archived_event", EVENT_COLUMNS, f"AND event_kind = '{kind}'"
    select = ", ".join(columns) + (", archived_at" if with_archived_at else "")
    with control.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            f"SELECT {select} FROM {table} WHERE cell_id = :cell {extra} ORDER BY id"),
            {"cell": cell})]


def snapshot(control: Engine) -> list:
    with control.connect() as conn:
        return [list(conn.execute(text(f"SELECT * FROM {table} ORDER BY cell_id, id")))
                for table in ("archived_event", "archived_delivery_log")]


def url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def two_instances(execution_db, execution2_db, control_db):
    """Three hours of traffic on both instances, plus rows just outside [T0, T0 + 3h)."""
    for engine in (execution_db, execution2_db):
        before = add_events(engine, "rt", T0 - timedelta(seconds=1), 2)
        rt = add_events(engine, "rt", T0, 30, step=timedelta(minutes=5))  # 2.5 h
        batch = add_events(engine, "batch", T0 + timedelta(minutes=30), 40,
                           step=timedelta(minutes=3))
        add_events(engine, "batch", T0 + 3 * HOUR, 3)  # the end is exclusive
        add_delivery_logs(engine, "rt", rt[:20], T0 + HOUR)
        add_delivery_logs(engine, "batch", batch[:25], T0 + 2 * HOUR + timedelta(minutes=59))
        add_delivery_logs(engine, "rt", before, T0 - timedelta(minutes=1))
    return execution_db, execution2_db, control_db


def archive_hours(source: Engine, control: Engine, cell: int, hours: int = 3, **kwargs):
    return [archive_window(url(source), url(control), cell, T0 + h * HOUR, T0 + (h + 1) * HOUR,
                           **kwargs) for h in range(hours)]


def test_archive_equals_source_after_hourly_runs(two_instances):
    exec1, exec2, control = two_instances
    for cell, source in ((0, exec1), (1, exec2)):
        reports = archive_hours(source, control, cell, chunk_rows=7)
        for kind, table in (("rt", "rt_event"), ("batch", "batch_event"),
                            ("delivery_log", "delivery_log")):
            expected = source_rows(source, table, T0, T0 + 3 * HOUR)
            assert archived_rows(control, cell, kind) == expected, (cell, kind)
            assert sum(r.counts[kind].read for r in reports) == len(expected)
            assert sum(r.counts[kind].inserted for r in reports) == len(expected)
        assert all(cell_of(row[0]) == cell for row in archived_rows(control, cell, "rt"))
    assert [len(archived_rows(control, 0, k)) for k in ("rt", "batch", "delivery_log")] == [
        30, 40, 45]
    # Rows modified before the first window or at the end of the last are not archived.
    assert reports[0].counts["rt"].read == 12 and reports[2].counts["batch"].read == 10


def test_rerun_overlap_and_lookback_duplicate_nothing(two_instances):
    _, exec1, control = two_instances  # archived as cell 1
    archive_hours(exec1, control, 1)
    before = snapshot(control)
    again = archive_hours(exec1, control, 1)
    overlapping = archive_window(url(exec1), url(control), 1, T0 + timedelta(minutes=30),
                                 T0 + 3 * HOUR, lookback=timedelta(minutes=30), chunk_rows=9)
    assert snapshot(control) == before  # identical, archived_at included
    for report in [*again, overlapping]:
        assert all(c.inserted == 0 and c.updated == 0 for c in report.counts.values())
    assert overlapping.counts["rt"].read == 30  # re-read, nothing rewritten
    assert overlapping.counts["rt"].unchanged == 30


def test_late_updates_replace_the_archived_version(execution2_db, control_db):
    exec1, control = execution2_db, control_db  # cell 1
    rt = add_events(exec1, "rt", T0, 30, step=timedelta(minutes=5), status="pending")
    add_events(exec1, "batch", T0, 5)
    add_delivery_logs(exec1, "rt", rt[:20], T0 + HOUR, status="queued")
    add_delivery_logs(exec1, "batch", rt[20:], T0 + HOUR, status="queued")
    add_delivery_logs(exec1, "rt", rt[20:22], T0 - HOUR)
    archive_hours(exec1, control, 1)
    with control.connect() as conn:
        first_archived_at = conn.execute(text("SELECT max(archived_at) FROM archived_event")
                                         ).scalar_one()
    changed_from = datetime.now(UTC)
    with exec1.begin() as conn:  # the trigger moves last_modified to now
        conn.execute(text("UPDATE rt_event SET status = 'sent', processed = now() "
                          "WHERE id IN (SELECT id FROM rt_event ORDER BY id LIMIT 5 OFFSET 2)"))
        conn.execute(text("UPDATE delivery_log SET status = 'sent', sent_at = now(), "
                          "attempts = 1 WHERE event_kind = 'batch'"))
    changed_until = datetime.now(UTC) + timedelta(seconds=1)
    report = archive_window(url(exec1), url(control), 1, changed_from, changed_until)
    assert (report.counts["rt"].inserted, report.counts["rt"].updated) == (0, 5)
    assert report.counts["delivery_log"].updated == 10
    sent = [row for row in archived_rows(control, 1, "rt") if row[12] == "sent"]
    assert len(sent) == 5
    assert archived_rows(control, 1, "delivery_log") == [
        row for row in source_rows(exec1, "delivery_log") if row[12] >= T0]
    with control.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM archived_event WHERE archived_at > :t"),
                            {"t": first_archived_at}).scalar_one() == 5

    # An old window never brings back an older version: the archive keeps the newest one.
    with control.begin() as conn:
        conn.execute(text("UPDATE archived_event SET status = 'failed', "
                          "last_modified = last_modified + interval '1 day' "
                          "WHERE id = (SELECT min(id) FROM archived_event)"))
    kept = snapshot(control)
    archive_hours(exec1, control, 1)
    assert snapshot(control) == kept


def test_a_late_commit_is_picked_up_by_the_next_run(execution2_db, control_db):
    source, control = execution2_db, control_db
    with source.connect() as late:  # a transaction that stays open across a run
        late.execute(text(f"""
            INSERT INTO rt_event (id, type, email)
            VALUES ({NEXT_ID_SQL}, 'LATE', 'late@example.com')"""))
        first_end = datetime.now(UTC)
        first = archive_window(url(source), url(control), 1, first_end - HOUR, first_end,
                               lookback=timedelta(minutes=15))
        assert first.counts["rt"].read == 0  # not committed yet
        late.commit()
    second_end = datetime.now(UTC) + timedelta(seconds=1)
    exact = archive_window(url(source), url(control), 1, first_end, second_end)
    assert exact.counts["rt"].read == 0  # its last_modified is before this window
    second = archive_window(url(source), url(control), 1, first_end, second_end,
                            lookback=timedelta(minutes=15))
    assert second.counts["rt"].inserted == 1
    assert [row[1] for row in archived_rows(control, 1, "rt")] == ["LATE"]


def test_chunks_split_rows_sharing_one_timestamp(execution_db, control_db):
    ids = add_events(execution_db, "batch", T0, 25)  # 25 rows, one last_modified
    report = archive_window(url(execution_db), url(control_db), 0, T0, T0 + HOUR,
                            chunk_rows=4, kinds=["batch"])
    count = report.counts["batch"]
    assert (count.read, count.inserted, count.chunks) == (25, 25, 7)
    assert [row[0] for row in archived_rows(control_db, 0, "batch")] == sorted(ids)
    assert list(report.counts) == ["batch"]


def test_catch_up_reaches_back_to_the_newest_archived_row(execution2_db, control_db):
    source, control = execution2_db, control_db
    start = T0 + 10 * 24 * HOUR
    old = add_events(source, "rt", start - 8 * 24 * HOUR, 1)  # beyond the 7-day horizon
    week = add_events(source, "rt", start - 3 * 24 * HOUR, 2)
    current = add_events(source, "rt", start + timedelta(minutes=10), 3)
    first = archive_window(url(source), url(control), 1, start, start + HOUR,
                           catch_up=timedelta(days=7), kinds=["rt"])
    assert first.counts["rt"].inserted == 5  # empty archive: the last week too
    # Hours missed (scheduler down): the next run starts at the newest archived row.
    missed = add_events(source, "rt", start + 2 * HOUR, 4)
    later = start + 6 * HOUR
    second = archive_window(url(source), url(control), 1, later, later + HOUR,
                            catch_up=timedelta(days=7), kinds=["rt"])
    assert second.counts["rt"].inserted == 4
    archived = {row[0] for row in archived_rows(control, 1, "rt")}
    assert archived == set(week + current + missed)
    assert not archived & set(old)


@pytest.mark.fast
def test_effective_start():
    start = T0
    lookback = timedelta(minutes=15)
    assert effective_start(start, newest_archived=None, lookback=lookback,
                           catch_up=None) == start - lookback
    assert effective_start(start, newest_archived=start - HOUR, lookback=timedelta(0),
                           catch_up=None) == start
    assert effective_start(start, newest_archived=None, lookback=lookback,
                           catch_up=timedelta(days=7)) == start - timedelta(days=7) - lookback
    assert effective_start(start, newest_archived=start - 3 * HOUR, lookback=lookback,
                           catch_up=timedelta(days=7)) == start - 3 * HOUR - lookback
    assert effective_start(start, newest_archived=start + HOUR, lookback=lookback,
                           catch_up=timedelta(days=7)) == start - lookback
    assert effective_start(start, newest_archived=start - 30 * 24 * HOUR, lookback=lookback,
                           catch_up=timedelta(days=7)) == start - timedelta(days=7) - lookback


def test_another_instance_behind_the_connection_is_refused(two_instances):
    _, exec2, control = two_instances
    with pytest.raises(CellIdMismatch, match=r"is the execution instance of cell 1, but the "
                                             r"account is registered with cell id 0"):
        archive_window(url(exec2), url(control), 0, T0, T0 + HOUR, name="account mcExec1")
    with pytest.raises(CellIdMismatch, match="not a Message Center execution database"):
        archive_window(url(control), url(control), 0, T0, T0 + HOUR)
    assert snapshot(control) == [[], []]


def test_an_unreachable_instance_fails_clearly(control_db, unused_tcp_port):
    source = f"postgresql://mc:s3cret@127.0.0.1:{unused_tcp_port}/mc_execution"
    with pytest.raises(ExecutionInstanceUnreachable) as raised:
        archive_window(source, url(control_db), 0, T0, T0 + HOUR, name="account mcExec9")
    message = str(raised.value)
    assert message.startswith("account mcExec9: execution instance unreachable at ")
    assert f"127.0.0.1:{unused_tcp_port}/mc_execution" in message
    assert "s3cret" not in message
    assert snapshot(control_db) == [[], []]


@pytest.mark.parametrize(("start", "end", "kwargs", "message"), [
    (T0.replace(tzinfo=None), T0 + HOUR, {}, "timezone-aware"),
    (T0 + HOUR, T0, {}, "before its start"),
    (T0, T0 + HOUR, {"lookback": timedelta(minutes=-1)}, "lookback cannot be negative"),
    (T0, T0 + HOUR, {"chunk_rows": 0}, "chunk_rows must be at least 1"),
    (T0, T0 + HOUR, {"kinds": ["emails"]}, "unknown archive kind 'emails'"),
])
def test_bad_arguments_are_refused(execution_db, control_db, start, end, kwargs, message):
    with pytest.raises(ValueError, match=message):
        archive_window(url(execution_db), url(control_db), 0, start, end, **kwargs)


@pytest.fixture
def unused_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def failed_events(engine: Engine, classes: list[str | None], at: datetime) -> list[int]:
    """Events that ended *Delivery failed* at ``at``, one per failure class of their
    delivery log (``None``: failed without a class)."""
    ids = []
    with engine.begin() as conn:
        for klass in classes:
            event_id, log_id = (conn.execute(text(f"SELECT {NEXT_ID_SQL}")).scalar_one()
                                for _ in range(2))
            error = ("outcome unknown: no reply to the final '.'; the relay may have "
                     "delivered it" if klass == "unknown" else f"550 5.1.1 ({klass})")
            conn.execute(text("""
                INSERT INTO rt_event (id, type, email, ctx, status, created, last_modified,
                                      next_attempt, processing, processed, delivery_log_id,
                                      error_reason)
                VALUES (:id, 'ORDER_CONFIRMED', 'user@example.com', '{}', 'failed', :at, :at,
                        :at, :at, :at, :log, :error)"""),
                         {"id": event_id, "log": log_id, "at": at, "error": error})
            conn.execute(text("""
                INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status,
                    created, last_modified, template_name, template_version, error,
                    sending_started, failure_class)
                VALUES (:log, 'rt', :id, 'email', 'user@example.com', 'failed', :at, :at,
                        'orderConfirmed', 1, :error, :at, :klass)"""),
                         {"id": event_id, "log": log_id, "at": at, "error": error,
                          "klass": klass})
            ids.append(event_id)
    return ids


def test_the_failure_class_is_archived_and_reported(execution2_db, control_db):
    from message_center.reporting import ReportFilter, service_level
    from message_center.reporting.statistics import refresh_statistics

    exec1, control = execution2_db, control_db
    at = T0 + timedelta(minutes=10)
    failed_events(exec1, ["unknown", "unknown", "hard", None], at)
    archive_window(url(exec1), url(control), 1, T0, T0 + HOUR)
    assert archived_rows(control, 1, "delivery_log") == source_rows(exec1, "delivery_log")
    with control.connect() as conn:
        classes = sorted(conn.execute(text(
            "SELECT coalesce(failure_class, '-') FROM archived_delivery_log")).scalars())
    assert classes == ["-", "hard", "unknown", "unknown"]

    # Rows archived before the archive had the column: a backfill of the window fills it
    # in (and only that: the archive equals the source again), idempotently.
    with control.begin() as conn:
        conn.execute(text("UPDATE archived_delivery_log SET failure_class = NULL"))
    refill = archive_window(url(exec1), url(control), 1, T0, T0 + HOUR)
    assert refill.counts["delivery_log"].updated == 3
    assert archived_rows(control, 1, "delivery_log") == source_rows(exec1, "delivery_log")
    before = snapshot(control)
    again = archive_window(url(exec1), url(control), 1, T0, T0 + HOUR)
    assert (again.counts["delivery_log"].inserted, again.counts["delivery_log"].updated) == (0, 0)
    assert snapshot(control) == before

    # The statistics and the service level report count the failures by class.
    refresh_statistics(control, 1, window=(T0, T0 + HOUR))
    with control.connect() as conn:
        report = service_level(conn, ReportFilter(start=T0, end=T0 + HOUR)).to_dict()
    failed = next(c for c in report["errorCauses"] if c["cause"] == "failed")
    assert failed["count"] == 4
    counts = {c["failureClass"]: c["count"] for c in failed["failureClasses"] if c["count"]}
    assert counts == {"unknown": 2, "hard": 1, None: 1}
    labels = {c["failureClass"]: c["label"] for c in failed["failureClasses"]}
    assert labels["unknown"] == "Outcome unknown (may have been delivered)"
