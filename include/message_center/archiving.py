"""Archiving (ACC's mcSynch): copy an execution instance's events and delivery logs into the
control instance's archive, incrementally, for reporting.

A run copies the rows *changed* in a window ``[start, end)`` of ``last_modified`` (set by
a trigger on every UPDATE, ``now()`` on INSERT) and upserts them keyed by
``(cell_id, id)``. The upsert keeps the newest version of each row: an archived row is
only overwritten by a version with a later ``last_modified``, so re-running a window, an
overlapping window or a backfill changes nothing that is already up to date (not even
``archived_at``), and an old window can never bring back a stale status.

Two things widen the window of a scheduled run, never of a backfill:

* a *lookback*: ``last_modified`` is taken when the statement runs, but the row only
  becomes visible when its transaction commits; a transaction that commits after the
  previous run read its window is found by the next run when its start is moved back by
  the lookback (default 15 minutes, longer than any transaction of the execution DAGs);
* a *catch-up*: the run also starts no later than the newest row already archived for
  that cell and kind (at most ``catch_up`` back, default 7 days), so hours missed while the
  scheduler was down or the DAG paused are archived by the next run without a backfill,
  and a newly registered account archives its last week on its first run.

Rows stream in chunks: each chunk is one keyset page of the source, ordered by
``(last_modified, id)``, read with ``COPY (SELECT ... LIMIT n) TO STDOUT``, loaded into a
temporary staging table on the control database with ``COPY FROM STDIN`` and upserted with
one ``INSERT ... SELECT ... ON CONFLICT`` per chunk. Memory is bounded by one chunk, each
source read is a short snapshot, and each chunk is committed on its own.

The same statement marks the (cell, hour) whose hourly statistics the changed rows feed
(``event_stats_dirty``); the run's statistics step recomputes those hours
(:mod:`message_center.reporting.statistics`). An unchanged row marks nothing.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from message_center.db import engine_for, first_line, with_connect_timeout

log = logging.getLogger(__name__)

ARCHIVE_KINDS = ("rt", "batch", "delivery_log", "tracking_log")
KIND_LABELS = {"rt": "real-time events", "batch": "batch events",
               "delivery_log": "delivery logs", "tracking_log": "tracking logs"}
DEFAULT_CHUNK_ROWS = 10_000

EVENT_COLUMNS = (
    "id", "type", "email", "mobile_phone", "wished_channel", "external_id", "language",
    "country", "origin", "ctx", "scheduled", "expiration", "status", "created",
    "last_modified", "processing", "processed", "error_count", "next_attempt",
    "template_name", "template_version", "delivery_log_id", "error_reason",
    "address",  # a channel's own address (not ACC's email / mobile_phone): the channel seam
    "recycled_from",  # event recycling: the event this one stands in for (e0011 / c0010)
    "sandbox",  # sandbox mode: delivered by nobody, counted apart (e0014 / c0013)
)
DELIVERY_LOG_COLUMNS = (
    "id", "event_kind", "event_id", "template_name", "template_version", "channel",
    "address", "status", "attempts", "error", "provider_id", "created", "last_modified",
    "sending_started", "sent_at", "failure_class", "sandbox",
)


# Statistics: every upsert marks the (cell, UTC hour: date_bin from a UTC midnight, no time
# zone lookup) whose figures the changed rows feed
# (see message_center.reporting.statistics) in the same statement, so marks commit with
# the rows; sorted, so concurrent chunks take the mark rows' locks in the same order.
_MARK_EVENT_HOURS = (
    "INSERT INTO event_stats_dirty (cell_id, hour)"
    " SELECT DISTINCT %(cell)s, date_bin('1 hour', v.t, TIMESTAMPTZ '2000-01-01Z') FROM upserted,"
    " LATERAL (VALUES (upserted.created), (upserted.due), (upserted.processed)) AS v(t)"
    " WHERE v.t IS NOT NULL ORDER BY 2 ON CONFLICT DO NOTHING"
)
_MARK_DELIVERY_HOURS = (  # a delivery log feeds the sending time of its finished event
    "INSERT INTO event_stats_dirty (cell_id, hour)"
    " SELECT DISTINCT %(cell)s, date_bin('1 hour', e.processed, TIMESTAMPTZ '2000-01-01Z')"
    " FROM upserted"
    " JOIN archived_event e ON e.cell_id = %(cell)s AND e.id = upserted.event_id"
    " AND e.event_kind = upserted.event_kind"
    " WHERE e.processed IS NOT NULL ORDER BY 2 ON CONFLICT DO NOTHING"
)

TRACKING_LOG_COLUMNS = (
    "id", "delivery_log_id", "event_kind", "event_id", "template_name", "template_version",
    "sent_at", "kind", "link", "url", "at", "automated", "automated_reason", "user_agent",
    "last_modified",
)
# Tracking statistics are kept per hour of sending: a tracking log and a sent delivery log
# mark the hour their message was sent (see message_center.reporting.tracking).
_MARK_TRACKING_HOURS = (
    "INSERT INTO tracking_stats_dirty (cell_id, hour)"
    " SELECT DISTINCT %(cell)s, date_bin('1 hour', upserted.sent_at, TIMESTAMPTZ '2000-01-01Z')"
    " FROM upserted WHERE upserted.sent_at IS NOT NULL ORDER BY 2 ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True)
class _KindSpec:
    source_table: str
    archive_table: str
    stage_table: str
    columns: tuple[str, ...]
    event_kind: str | None  # archived_event.event_kind; None for delivery logs
    returning: str  # what the upsert returns for the statistics marks
    mark_hours: str  # the INSERT marking those hours
    # An archived row the same version of which gains a value: a column added to the
    # archive after the row was archived is filled in by a backfill (idempotent).
    fill_in: str = ""


_EVENT_RETURNING = ("archived.created, greatest(archived.created, archived.scheduled) AS due, "
                    "archived.processed")
_SPECS = {
    "rt": _KindSpec("rt_event", "archived_event", "mc_stage_event", EVENT_COLUMNS, "rt",
                    _EVENT_RETURNING, _MARK_EVENT_HOURS),
    "batch": _KindSpec("batch_event", "archived_event", "mc_stage_event", EVENT_COLUMNS,
                       "batch", _EVENT_RETURNING, _MARK_EVENT_HOURS),
    "delivery_log": _KindSpec("delivery_log", "archived_delivery_log", "mc_stage_delivery_log",
                              DELIVERY_LOG_COLUMNS, None,
                              "archived.event_id, archived.event_kind, archived.sent_at",
                              _MARK_DELIVERY_HOURS + "), marked_tracking AS ("
                              + _MARK_TRACKING_HOURS,
                              " OR (archived.last_modified = EXCLUDED.last_modified"
                              " AND archived.failure_class IS NULL"
                              " AND EXCLUDED.failure_class IS NOT NULL)"),
    "tracking_log": _KindSpec("tracking_log", "archived_tracking_log", "mc_stage_tracking_log",
                              TRACKING_LOG_COLUMNS, None, "archived.sent_at",
                              _MARK_TRACKING_HOURS),
}


class ArchivingError(RuntimeError):
    """An account cannot be archived; the message says which and why."""


class ExecutionInstanceUnreachable(ArchivingError):
    """The execution instance's database does not answer (the run fails and retries)."""


class CellIdMismatch(ArchivingError):
    """The database behind the connection is not the instance registered with this cell id."""


@dataclass(frozen=True)
class InstanceInfo:
    cell_id: int
    server_version: str
    database: str


@dataclass(frozen=True)
class KindCount:
    """What one kind's copy did: rows read from the source and what the archive made of
    them (new rows, newer versions of archived rows, the rest already up to date)."""

    kind: str
    start: datetime
    end: datetime
    read: int = 0
    inserted: int = 0
    updated: int = 0
    chunks: int = 0

    @property
    def unchanged(self) -> int:
        return self.read - self.inserted - self.updated

    def summary(self) -> str:
        return (f"{KIND_LABELS[self.kind]}: {self.read} read from "
                f"[{self.start.isoformat()}, {self.end.isoformat()}) in {self.chunks} "
                f"chunk(s): {self.inserted} new, {self.updated} updated, "
                f"{self.unchanged} already up to date")


@dataclass
class ArchiveReport:
    cell_id: int
    counts: dict[str, KindCount] = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """Small, JSON-able counts per kind (what a task returns as its XCom)."""
        return {kind: {"read": c.read, "inserted": c.inserted, "updated": c.updated}
                for kind, c in self.counts.items()}


def safe_url(url: str) -> str:
    """The URL for messages: never the password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a message must not fail on a strange URL
        return "<unparsable database URL>"


def _engine(source: Engine | str, timeout: bool = False) -> Engine:
    if isinstance(source, Engine):
        return source
    return engine_for(with_connect_timeout(source) if timeout else source)


def check_instance(source: Engine | str, cell_id: int, *, name: str = "") -> InstanceInfo:
    """Connect to an execution database and check that it is the instance of ``cell_id``.

    Raises :class:`ExecutionInstanceUnreachable` (connection fails) or
    :class:`CellIdMismatch` (another instance, or not an execution database): archiving
    one instance's rows under another's cell id would corrupt the archive for good."""
    engine = _engine(source, timeout=True)
    what = name or "execution instance"
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
            database = conn.execute(text("SELECT current_database()")).scalar_one()
            has_table = conn.execute(text("SELECT to_regclass('mc_instance') IS NOT NULL"))
            if not has_table.scalar_one():
                raise CellIdMismatch(
                    f"{what}: database {database} is not a Message Center execution database "
                    "(no mc_instance table); run the execution migrations (mc setup) there")
            actual = conn.execute(text("SELECT cell_id FROM mc_instance")).scalar()
    except OperationalError as exc:
        raise ExecutionInstanceUnreachable(
            f"{what}: execution instance unreachable at {where}: {first_line(exc)}") from exc
    if actual is None:
        raise CellIdMismatch(f"{what}: database {database} has no cell id (mc_instance is "
                             "empty); set it when the instance is set up")
    if int(actual) != cell_id:
        raise CellIdMismatch(
            f"{what}: database {database} is the execution instance of cell {actual}, but the "
            f"account is registered with cell id {cell_id}; refusing to archive its rows "
            "under the wrong cell (fix the account's cell id or its connection)")
    return InstanceInfo(cell_id=int(actual), server_version=str(version), database=database)


def archived_until(control: Engine | str, cell_id: int, kind: str) -> datetime | None:
    """The newest ``last_modified`` archived for this cell and kind (None: nothing yet)."""
    spec = _spec(kind)
    where = "cell_id = :cell" + (" AND event_kind = :kind" if spec.event_kind else "")
    with _engine(control).connect() as conn:
        value = conn.execute(
            text(f"SELECT max(last_modified) FROM {spec.archive_table} WHERE {where}"),
            {"cell": cell_id, "kind": spec.event_kind},
        ).scalar()
    return value


def effective_start(start: datetime, *, newest_archived: datetime | None,
                    lookback: timedelta, catch_up: timedelta | None) -> datetime:
    """Where a run really starts reading: ``start`` moved back by the catch-up (to the
    newest archived row, bounded) and by the lookback. ``catch_up=None``: exact window."""
    begin = start
    if catch_up is not None:
        floor = start - catch_up
        begin = floor if newest_archived is None else max(min(start, newest_archived), floor)
    return begin - lookback


def archive_window(
    source: Engine | str,
    control: Engine | str,
    cell_id: int,
    start: datetime,
    end: datetime,
    *,
    lookback: timedelta = timedelta(0),
    catch_up: timedelta | None = None,
    kinds: Iterable[str] = ARCHIVE_KINDS,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    name: str = "",
    check: bool = True,
    statistics: bool = True,
) -> ArchiveReport:
    """Copy the rows of ``kinds`` changed in ``[start - lookback, end)`` (widened by
    ``catch_up``, see the module docs) from the execution database ``source`` into the
    archive on ``control`` under ``cell_id``. Returns the counts per kind.
    ``statistics=False`` does not mark the hours for the statistics (``make bench`` compares
    the cost; the statistics of those hours are then only rebuilt by a backfill)."""
    _check_window(start, end, lookback, chunk_rows)
    kinds = tuple(kinds)
    for kind in kinds:
        _spec(kind)
    source_engine = _engine(source, timeout=True)
    control_engine = _engine(control)
    if check:
        check_instance(source_engine, cell_id, name=name)
    report = ArchiveReport(cell_id=cell_id)
    for kind in kinds:
        newest = archived_until(control_engine, cell_id, kind) if catch_up is not None else None
        begin = effective_start(start, newest_archived=newest, lookback=lookback,
                                catch_up=catch_up)
        count = copy_kind(source_engine, control_engine, cell_id, kind, begin, end,
                          chunk_rows=chunk_rows, name=name, statistics=statistics)
        log.info("%scell %s %s", f"{name}: " if name else "", cell_id, count.summary())
        report.counts[kind] = count
    return report


def copy_kind(source: Engine, control: Engine, cell_id: int, kind: str, start: datetime,
              end: datetime, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
              name: str = "", statistics: bool = True) -> KindCount:
    """Stream one kind's rows with ``start <= last_modified < end`` into the archive."""
    spec = _spec(kind)
    _check_window(start, end, timedelta(0), chunk_rows)
    columns = ", ".join(spec.columns)
    first_page = (
        f"SELECT {columns} FROM {spec.source_table} "
        "WHERE last_modified >= %(start)s AND last_modified < %(end)s "
        f"ORDER BY last_modified, id LIMIT {int(chunk_rows)}"
    )
    next_page = (
        f"SELECT {columns} FROM {spec.source_table} "
        "WHERE last_modified >= %(after_lm)s AND last_modified < %(end)s "
        "AND (last_modified, id) > (%(after_lm)s, %(after_id)s) "
        f"ORDER BY last_modified, id LIMIT {int(chunk_rows)}"
    )
    updates = ", ".join(f"{col} = EXCLUDED.{col}" for col in spec.columns if col != "id")
    if spec.event_kind:
        insert_columns, select_prefix = "cell_id, event_kind, ", "%(cell)s, %(kind)s, "
        updates += ", event_kind = EXCLUDED.event_kind"
    else:
        insert_columns, select_prefix = "cell_id, ", "%(cell)s, "
    upsert = (
        f"WITH upserted AS ("
        f" INSERT INTO {spec.archive_table} AS archived ({insert_columns}{columns})"
        f" SELECT {select_prefix}{columns} FROM {spec.stage_table} ORDER BY id"
        f" ON CONFLICT (cell_id, id) DO UPDATE SET {updates}, archived_at = now()"
        f" WHERE archived.last_modified < EXCLUDED.last_modified{spec.fill_in}"
        f" RETURNING (xmax = 0) AS inserted, {spec.returning}),"
        + (f" marked AS ({spec.mark_hours})," if statistics else "") +
        f" last_row AS (SELECT last_modified, id FROM {spec.stage_table}"
        f" ORDER BY last_modified DESC, id DESC LIMIT 1)"
        f" SELECT (SELECT count(*) FILTER (WHERE inserted) FROM upserted),"
        f" (SELECT count(*) FILTER (WHERE NOT inserted) FROM upserted),"
        f" last_row.last_modified, last_row.id FROM last_row"
    )
    create_stage = (
        f"CREATE TEMP TABLE IF NOT EXISTS {spec.stage_table} ON COMMIT DELETE ROWS AS "
        f"SELECT {columns} FROM {spec.archive_table} WITH NO DATA"
    )
    params: dict[str, Any] = {"start": start, "end": end, "cell": cell_id,
                              "kind": spec.event_kind}
    read = inserted = updated = chunks = 0
    src = _raw(source, name, kind="execution instance")
    dst = _raw(control, name, kind="control")
    try:
        src_cur, dst_cur = src.cursor(), dst.cursor()
        dst_cur.execute(create_stage)
        dst.commit()
        query = first_page
        while True:
            buffer = io.BytesIO()
            copy_out = src_cur.mogrify(query, params).decode()
            src_cur.copy_expert(f"COPY ({copy_out}) TO STDOUT", buffer)
            src.commit()  # end the snapshot: no long-lived transaction on the source
            rows = src_cur.rowcount
            if rows <= 0:
                break
            buffer.seek(0)
            dst_cur.copy_expert(f"COPY {spec.stage_table} ({columns}) FROM STDIN", buffer)
            del buffer
            dst_cur.execute(upsert, params)
            new, changed, after_lm, after_id = dst_cur.fetchone()
            dst.commit()
            read, inserted, updated, chunks = (read + rows, inserted + new, updated + changed,
                                               chunks + 1)
            if rows < chunk_rows:
                break
            params.update(after_lm=after_lm, after_id=after_id)
            query = next_page
    except Exception:
        for conn in (src, dst):
            try:
                conn.rollback()
            except Exception:  # the original error is the one to report
                log.debug("rollback failed", exc_info=True)
        raise
    finally:
        src.close()
        dst.close()
    return KindCount(kind=kind, start=start, end=end, read=read, inserted=inserted,
                     updated=updated, chunks=chunks)


def _raw(engine: Engine, name: str, kind: str) -> Any:
    """A pooled DBAPI connection (COPY needs the driver's cursor)."""
    try:
        return engine.raw_connection()
    except (OperationalError, DBAPIError) as exc:
        what = f"{name}: " if name else ""
        where = engine.url.render_as_string(hide_password=True)
        error = ExecutionInstanceUnreachable if kind == "execution instance" else ArchivingError
        raise error(f"{what}{kind} database unreachable at {where}: {first_line(exc)}") from exc


def _spec(kind: str) -> _KindSpec:
    try:
        return _SPECS[kind]
    except KeyError:
        raise ValueError(f"unknown archive kind {kind!r}; expected one of {ARCHIVE_KINDS}") \
            from None


def _check_window(start: datetime, end: datetime, lookback: timedelta, chunk_rows: int) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("archiving windows need timezone-aware datetimes")
    if end < start:
        raise ValueError(f"window end {end.isoformat()} is before its start {start.isoformat()}")
    if lookback < timedelta(0):
        raise ValueError("lookback cannot be negative")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1; got {chunk_rows}")
