"""Database clean-up (ACC's *Database cleanup* workflow): retention of events, delivery
logs and idempotency keys on an execution instance, never losing an unarchived row, and of
the archive and the hourly statistics on the control instance.

**Execution instance.** A *final* event (Sent, Ignored, Delivery failed, Event not taken
into account, Event expired) whose row last changed more than ``event_days`` ago is
deleted together with its delivery log, but only when the control instance holds that
very version of both rows in its archive:

1. the archive's progress for the instance's cell (the newest ``last_modified`` archived
   per kind, what mcSynch's catch-up reads) bounds the candidates: a row that changed
   after it cannot be archived yet;
2. every candidate is then checked row by row against ``archived_event`` /
   ``archived_delivery_log`` on the control database: archived under this cell with a
   ``last_modified`` at least the execution row's (a late commit below the progress mark
   or a status that moved after archiving keeps the row);
3. the delete re-checks ``last_modified`` and the final status under a row lock taken
   with ``SKIP LOCKED``, so a row changed or held by processing in between is kept for a
   later run, and processing never waits for the clean-up.

Before any of this the instance's cell must be an *enabled* execution account of the
registry (``dags/execution_accounts.yaml``) and the control database must answer; if
not, nothing is deleted and the report says why. Events still Pending or Pending
delivery, and final events whose delivery log is still queued, sending or waiting for a
retry, are never candidates.

Idempotency keys (``api_idempotency``) are deleted once older than their replay window
(``idempotency_key_hours``): a key repeated after that is a new request.

**Control instance.** Archived events created more than ``archived_event_days`` ago go
with their archived delivery logs (and archived delivery logs left without an event);
hourly statistics older than ``statistics_days`` go a week of hours per transaction, the
queue size still open at the cut-off carried over
(:func:`message_center.reporting.statistics.purge_statistics`).

Everything deletes in bounded batches (``batch_rows`` rows per transaction, keyset pages
in ``(last_modified, id)`` order), each batch committed on its own, so a crash loses at
most one batch's work and a re-run simply continues. A dry run does all the reading and
checks and deletes nothing. Table sizes (``pg_total_relation_size``) before and after are
part of the report; after deleting, a plain ``VACUUM (ANALYZE)`` (no exclusive lock) makes
the freed space reusable at once instead of waiting for autovacuum.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from message_center import audit
from message_center.audit import DEFAULT_KEEP_DAYS as DEFAULT_AUDIT_DAYS
from message_center.db import first_line
from message_center.registry import Registry
from message_center.statuses import (
    EVENT_KINDS,
    FINAL_DELIVERY,
    FINAL_EVENT,
    WEBHOOK_DONE,
    event_table,
    sql_in,
)

log = logging.getLogger(__name__)

EVENT_TABLES = ("rt_event", "batch_event", "delivery_log")
KEY_TABLES = ("api_idempotency", "webhook_outbox", "webhook_attempt")

_FINAL_EVENTS = sql_in(FINAL_EVENT)
_FINAL_LOGS = sql_in(FINAL_DELIVERY)

#: (minimum, maximum, default) per setting: the DAG's params take their bounds from here.
BOUNDS: dict[str, tuple[int, int, int]] = {
    "event_days": (1, 3650, 30),
    "idempotency_key_hours": (1, 8760, 24),
    "webhook_days": (1, 3650, 7),
    "archived_event_days": (1, 36500, 365),
    "statistics_days": (1, 36500, 1095),
    "audit_days": (1, 36500, DEFAULT_AUDIT_DAYS),
    "airflow_metadata_days": (1, 3650, 14),
    "batch_rows": (100, 1_000_000, 10_000),
}


class CleanupError(ValueError):
    """Bad clean-up settings; the message names the setting."""


@dataclass(frozen=True)
class CleanupSettings:
    """The delays of every kind of data and how the deletes are cut.

    * ``event_days`` - final events and their delivery logs on an execution instance,
      counted from the row's last change (ACC's ``NmsCleanup_EventPurgeDelay``).
    * ``idempotency_key_hours`` - the push API's replay window for ``Idempotency-Key``.
    * ``webhook_days`` - webhook messages done with (delivered, or failed: replayable
      until then), their attempts, and deleted subscriptions' tombstones.
    * ``archived_event_days`` - archived events and delivery logs on the control instance
      (``NmsCleanup_EventHistoPurgeDelay``, ``NmsCleanup_BroadLogPurgeDelay``).
    * ``statistics_days`` - hourly event statistics (``NmsCleanup_EventStatPurgeDelay``);
      at least ``archived_event_days``: the statistics outlive the archive they sum up.
    * ``audit_days`` - the audit trail (who did what by hand) on both instances.
    * ``airflow_metadata_days`` - Airflow's DAG runs, task instances, XComs, ... of the
      Message Center's DAGs.
    * ``batch_rows`` - rows deleted per transaction.
    * ``dry_run`` - report what would go, change nothing.
    """

    event_days: int = BOUNDS["event_days"][2]
    idempotency_key_hours: int = BOUNDS["idempotency_key_hours"][2]
    webhook_days: int = BOUNDS["webhook_days"][2]
    archived_event_days: int = BOUNDS["archived_event_days"][2]
    statistics_days: int = BOUNDS["statistics_days"][2]
    audit_days: int = BOUNDS["audit_days"][2]
    airflow_metadata_days: int = BOUNDS["airflow_metadata_days"][2]
    batch_rows: int = BOUNDS["batch_rows"][2]
    dry_run: bool = False

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "dry_run":
                if not isinstance(value, bool):
                    raise CleanupError(f"cleanup param dry_run: {value!r} is not true or false")
                continue
            low, high, _ = BOUNDS[item.name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise CleanupError(f"cleanup param {item.name}: {value!r} is not a whole number")
            if not low <= value <= high:
                raise CleanupError(f"cleanup param {item.name}: {value} is outside {low}..{high}")
        if self.statistics_days < self.archived_event_days:
            raise CleanupError(
                f"cleanup param statistics_days ({self.statistics_days}) is shorter than "
                f"archived_event_days ({self.archived_event_days}): the hourly statistics "
                "must outlive the archive they are computed from")

        if self.event_days >= self.archived_event_days:
            raise CleanupError(
                f"cleanup param event_days ({self.event_days}) is not shorter than "
                f"archived_event_days ({self.archived_event_days}): the archive must keep "
                "an event longer than the execution instance does")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CleanupSettings:
        """From DAG params (unknown keys ignored); whole numbers given as strings or
        floats without a fraction are accepted, anything else names the param."""
        kwargs: dict[str, Any] = {}
        for item in fields(cls):
            if item.name not in values or values[item.name] is None:
                continue
            value = values[item.name]
            if item.name == "dry_run":
                if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                    value = value.strip().lower() == "true"
            elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value.strip())
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
            kwargs[item.name] = value
        return cls(**kwargs)

    @property
    def event_delay(self) -> timedelta:
        return timedelta(days=self.event_days)

    @property
    def idempotency_window(self) -> timedelta:
        return timedelta(hours=self.idempotency_key_hours)

    @property
    def archive_delay(self) -> timedelta:
        return timedelta(days=self.archived_event_days)

    @property
    def statistics_delay(self) -> timedelta:
        return timedelta(days=self.statistics_days)

    def as_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


def purge_audit(engine: Engine, settings: CleanupSettings, *, now: datetime) -> int:
    """Audit rows older than ``audit_days`` (either instance); counted in a dry run."""
    cutoff = now - timedelta(days=settings.audit_days)
    with engine.begin() as conn:
        if settings.dry_run:
            return int(conn.execute(text("SELECT count(*) FROM audit_log WHERE at < :cutoff"),
                                    {"cutoff": cutoff}).scalar_one())
        return audit.purge(conn, cutoff)


# --- table sizes -------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSize:
    table: str
    total_bytes: int
    live_rows: int
    dead_rows: int

    def summary(self) -> str:
        return (f"{self.table}: {_mb(self.total_bytes)} (pg_total_relation_size), "
                f"about {self.live_rows} live / {self.dead_rows} dead rows")


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


def table_sizes(engine: Engine, tables: Iterable[str]) -> dict[str, TableSize]:
    """Size with indexes and TOAST, and live/dead row estimates, of each existing table."""
    tables = list(tables)
    with engine.connect() as conn:
        rows = conn.execute(text("""
            SELECT t.name, pg_total_relation_size(c.oid),
                   coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0)
            FROM unnest(CAST(:tables AS text[])) WITH ORDINALITY AS t(name, n)
            JOIN pg_class c ON c.oid = to_regclass(t.name)
            LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
            ORDER BY t.n"""), {"tables": tables}).all()
    return {r[0]: TableSize(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows}


def vacuum(engine: Engine, tables: Iterable[str]) -> None:
    """``VACUUM (ANALYZE)`` each table: freed space reusable now, statistics fresh. Takes
    no lock that inserts, updates or deletes wait for."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in tables:
            conn.execute(text(f'VACUUM (ANALYZE) "{table}"'))


# --- reports -----------------------------------------------------------------------------
@dataclass
class KindPurge:
    """One event kind's purge on an execution instance."""

    kind: str
    cutoff: datetime | None = None  # age cutoff
    archived_until: datetime | None = None  # the archive's progress for this cell and kind
    candidates: int = 0  # old final events looked at (within the archive's progress)
    events: int = 0  # deleted (or, dry run, that would be)
    delivery_logs: int = 0
    not_archived: int = 0  # kept: the archive lacks this version of the event or its log
    changed: int = 0  # kept: changed or locked between the check and the delete
    batches: int = 0

    def summary(self, dry_run: bool) -> str:
        verb = "would delete" if dry_run else "deleted"
        progress = (self.archived_until.isoformat() if self.archived_until
                    else "nothing archived yet")
        return (f"{self.kind} events: {verb} {self.events} event(s) and {self.delivery_logs} "
                f"delivery log(s) in {self.batches} batch(es); {self.candidates} final "
                f"event(s) older than {self.cutoff.isoformat() if self.cutoff else '-'} "
                f"within the archive's progress ({progress}); kept {self.not_archived} not "
                f"(yet) archived in their current version and {self.changed} changed or "
                "busy meanwhile")


@dataclass
class ExecutionPurgeReport:
    """What the purge of one execution instance did (or, dry run, would do)."""

    name: str
    dry_run: bool
    cell_id: int | None = None
    skipped: str | None = None  # why nothing was deleted at all
    kinds: dict[str, KindPurge] = field(default_factory=dict)
    sizes_before: dict[str, TableSize] = field(default_factory=dict)
    sizes_after: dict[str, TableSize] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(k.events for k in self.kinds.values())

    @property
    def delivery_logs(self) -> int:
        return sum(k.delivery_logs for k in self.kinds.values())

    def lines(self) -> list[str]:
        mode = "DRY RUN, nothing deleted: " if self.dry_run else ""
        out = [f"{self.name} (cell {self.cell_id}): {mode}"
               + (f"events kept: {self.skipped}" if self.skipped else
                  f"{self.events} event(s), {self.delivery_logs} delivery log(s) "
                  f"{'would go' if self.dry_run else 'deleted'}")]
        out += [f"  {k.summary(self.dry_run)}" for k in self.kinds.values()]
        return out

    def as_dict(self) -> dict[str, Any]:
        """Small and JSON-able: the task's XCom and the UI's last result."""
        return {
            "instance": self.name, "cell_id": self.cell_id, "dry_run": self.dry_run,
            "skipped": self.skipped, "events": self.events,
            "delivery_logs": self.delivery_logs,
            "kinds": {k: {"events": p.events, "delivery_logs": p.delivery_logs,
                          "candidates": p.candidates, "not_archived": p.not_archived,
                          "changed": p.changed,
                          "archived_until": p.archived_until.isoformat()
                          if p.archived_until else None}
                      for k, p in self.kinds.items()},
            "bytes_before": {t: s.total_bytes for t, s in self.sizes_before.items()},
            "bytes_after": {t: s.total_bytes for t, s in self.sizes_after.items()},
            "seconds": round(self.seconds, 3),
        }


# --- the archive guard -------------------------------------------------------------------
def instance_cell(execution: Engine) -> int:
    """The execution database's cell id (``mc_instance``)."""
    with execution.connect() as conn:
        cell = conn.execute(text("SELECT cell_id FROM mc_instance")).scalar()
    if cell is None:
        raise CleanupError("the execution database has no cell id (mc_instance is empty)")
    return int(cell)


def archive_guard(cell_id: int, registry: Registry | None,
                  control: Engine | None, control_problem: str | None = None) -> str | None:
    """Why the events of ``cell_id`` must all be kept, or None when the archive may be
    asked row by row. Reaches the control database once (short timeout in its URL)."""
    if registry is None:
        return ("the execution account registry is not available, so the archiving of "
                f"cell {cell_id} cannot be confirmed")
    account = next((a for a in registry.accounts if a.cell_id == cell_id), None)
    if account is None:
        return (f"cell {cell_id} is not registered as an execution account on the control "
                f"instance ({registry.path.name}): its events are never archived")
    if not account.enabled:
        return (f"execution account {account.name} (cell {cell_id}) is disabled: its "
                "archiving is stopped")
    if control is None:
        why = f" ({control_problem})" if control_problem else ""
        return f"the control database is not configured{why}: the archive cannot be checked"
    try:
        with control.connect() as conn:
            ok = conn.execute(text(
                "SELECT to_regclass('archived_event') IS NOT NULL "
                "AND to_regclass('archived_delivery_log') IS NOT NULL")).scalar_one()
    except (OperationalError, DBAPIError) as exc:
        return f"the control database is unreachable ({first_line(exc)})"
    if not ok:
        return "the control database has no archive tables (run the control migrations)"
    return None


def archive_progress(control: Engine, cell_id: int) -> dict[str, datetime | None]:
    """Per kind (rt, batch, delivery_log): the newest ``last_modified`` archived for the
    cell, i.e. how far mcSynch got (one index probe each)."""
    with control.connect() as conn:
        progress: dict[str, datetime | None] = {
            kind: conn.execute(text(
                "SELECT max(last_modified) FROM archived_event "
                "WHERE cell_id = :cell AND event_kind = :kind"),
                {"cell": cell_id, "kind": kind}).scalar()
            for kind in EVENT_KINDS}
        progress["delivery_log"] = conn.execute(text(
            "SELECT max(last_modified) FROM archived_delivery_log WHERE cell_id = :cell"),
            {"cell": cell_id}).scalar()
    return progress


# --- execution instance ------------------------------------------------------------------
def _candidates_sql(table: str, kind: str) -> str:
    return f"""
        SELECT e.id, e.last_modified, d.id, d.last_modified
        FROM {table} e
        LEFT JOIN delivery_log d ON d.event_kind = '{kind}' AND d.event_id = e.id
        WHERE e.last_modified < :cutoff AND e.last_modified <= :progress
          AND e.last_modified >= :after_lm AND (e.last_modified, e.id) > (:after_lm, :after_id)
          AND e.status IN {_FINAL_EVENTS}
          AND (d.id IS NULL OR d.status IN {_FINAL_LOGS})
        ORDER BY e.last_modified, e.id
        LIMIT :n"""


# ``a.id = ANY(:ids)``: primary-key probes for the batch, never a scan of the archive.
_ARCHIVED_EVENTS = text("""
    SELECT v.id FROM unnest(CAST(:ids AS bigint[]), CAST(:lms AS timestamptz[])) AS v(id, lm)
    JOIN archived_event a ON a.id = v.id
    WHERE a.cell_id = :cell AND a.id = ANY(CAST(:ids AS bigint[]))
      AND a.event_kind = :kind AND a.last_modified >= v.lm""")
_ARCHIVED_LOGS = text("""
    SELECT v.id FROM unnest(CAST(:ids AS bigint[]), CAST(:lms AS timestamptz[])) AS v(id, lm)
    JOIN archived_delivery_log a ON a.id = v.id
    WHERE a.cell_id = :cell AND a.id = ANY(CAST(:ids AS bigint[]))
      AND a.last_modified >= v.lm""")


def _delete_sql(table: str, kind: str) -> str:
    # One statement, one transaction: lock the checked events and their checked logs
    # (SKIP LOCKED: never wait for processing), keep an event whose row or log changed
    # since the archive check, delete the rest with their logs.
    return f"""
        WITH v AS (
            SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:lms AS timestamptz[]),
                                 CAST(:log_ids AS bigint[]), CAST(:log_lms AS timestamptz[]))
                   AS v(id, lm, log_id, log_lm)),
        ev AS (
            SELECT e.id, v.log_id, v.log_lm FROM {table} e JOIN v ON e.id = v.id
            WHERE e.id = ANY(CAST(:ids AS bigint[])) AND e.last_modified = v.lm
              AND e.status IN {_FINAL_EVENTS}
            ORDER BY e.id FOR UPDATE OF e SKIP LOCKED),
        lg AS (
            SELECT d.id FROM delivery_log d JOIN ev ON d.id = ev.log_id
            WHERE d.id = ANY(CAST(:log_ids AS bigint[])) AND d.event_kind = '{kind}'
              AND d.event_id = ev.id AND d.last_modified = ev.log_lm AND d.status IN {_FINAL_LOGS}
            ORDER BY d.id FOR UPDATE OF d SKIP LOCKED),
        ok AS (
            SELECT ev.id, ev.log_id FROM ev
            WHERE CASE WHEN ev.log_id IS NULL
                       THEN NOT EXISTS (SELECT 1 FROM delivery_log x
                                        WHERE x.event_kind = '{kind}' AND x.event_id = ev.id)
                       ELSE EXISTS (SELECT 1 FROM lg WHERE lg.id = ev.log_id) END),
        gone_logs AS (
            DELETE FROM delivery_log d USING ok WHERE d.id = ok.log_id RETURNING d.id),
        gone_hits AS (  -- tracking logs go with their event (archived with it)
            DELETE FROM tracking_log t USING ok
            WHERE t.event_kind = '{kind}' AND t.event_id = ok.id RETURNING 1),
        gone_firsts AS (
            DELETE FROM tracking_first f USING ok WHERE f.delivery_log_id = ok.log_id
            RETURNING 1),
        gone_links AS (  -- its recycling row (the recycled event is an event of its own)
            DELETE FROM event_recycling r USING ok
            WHERE r.event_kind = '{kind}' AND r.event_id = ok.id),
        gone AS (
            DELETE FROM {table} e USING ok WHERE e.id = ok.id RETURNING e.id)
        SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_logs)"""


_EPOCH_ID = -(1 << 63)


def _pg_array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal (``{1,2,NULL}``, timestamps in ISO 8601) sent as one text
    parameter and cast in SQL: about 3x faster to send and parse than psycopg2's
    ``ARRAY[...]`` expression of 10,000 elements."""
    items = []
    for value in values:
        if value is None:
            items.append("NULL")
        elif isinstance(value, datetime):
            items.append(f'"{value.isoformat()}"')
        else:
            items.append(str(int(value)))
    return "{" + ",".join(items) + "}"


def purge_events(execution: Engine, control: Engine, cell_id: int, kind: str, *,
                 cutoff: datetime, progress: datetime | None, batch_rows: int = 10_000,
                 dry_run: bool = False,
                 pause_seconds: float = 0.0,
                 should_stop: Callable[[], bool] = lambda: False) -> KindPurge:
    """Delete one kind's final events older than ``cutoff`` (and their delivery logs)
    that the archive of ``cell_id`` on ``control`` holds in their current version."""
    table = event_table(kind)
    report = KindPurge(kind=kind, cutoff=cutoff, archived_until=progress)
    if progress is None:
        return report  # nothing archived for this cell and kind: nothing may go
    candidates = text(_candidates_sql(table, kind))
    delete = text(_delete_sql(table, kind))
    after_lm, after_id = datetime(1, 1, 1, tzinfo=cutoff.tzinfo), _EPOCH_ID
    while not should_stop():
        with execution.connect() as conn:
            page = conn.execute(candidates, {
                "cutoff": cutoff, "progress": progress, "after_lm": after_lm,
                "after_id": after_id, "n": batch_rows}).all()
            conn.commit()  # a short snapshot per page
        if not page:
            break
        report.candidates += len(page)
        report.batches += 1
        after_lm, after_id = page[-1][1], page[-1][0]
        with control.connect() as conn:
            archived = set(conn.execute(_ARCHIVED_EVENTS, {
                "ids": _pg_array(r[0] for r in page), "lms": _pg_array(r[1] for r in page),
                "cell": cell_id, "kind": kind}).scalars())
            logged = [r for r in page if r[2] is not None]
            archived_logs = set(conn.execute(_ARCHIVED_LOGS, {
                "ids": _pg_array(r[2] for r in logged), "lms": _pg_array(r[3] for r in logged),
                "cell": cell_id}).scalars()) if logged else set()
        ready = [r for r in page if r[0] in archived and (r[2] is None or r[2] in archived_logs)]
        report.not_archived += len(page) - len(ready)
        if ready and dry_run:
            report.events += len(ready)
            report.delivery_logs += sum(1 for r in ready if r[2] is not None)
        elif ready:
            params = {name: _pg_array(r[i] for r in ready)
                      for i, name in enumerate(("ids", "lms", "log_ids", "log_lms"))}
            with execution.begin() as conn:
                events, logs = conn.execute(delete, params).one()
            report.events += int(events)
            report.delivery_logs += int(logs)
            report.changed += len(ready) - int(events)
        if len(page) < batch_rows:
            break
        if pause_seconds:
            time.sleep(pause_seconds)
    return report


def purge_idempotency_keys(execution: Engine, *, cutoff: datetime, batch_rows: int = 10_000,
                           dry_run: bool = False,
                           should_stop: Callable[[], bool] = lambda: False) -> int:
    """Delete the idempotency keys created before ``cutoff`` (their replay window is
    over), oldest first, ``batch_rows`` per transaction. Returns how many (would) go."""
    if dry_run:
        with execution.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM api_idempotency WHERE created < :cutoff"),
                {"cutoff": cutoff}).scalar_one())
    total = 0
    statement = text("""
        DELETE FROM api_idempotency WHERE key IN (
            SELECT key FROM api_idempotency WHERE created < :cutoff
            ORDER BY created LIMIT :n FOR UPDATE SKIP LOCKED)""")
    while not should_stop():
        with execution.begin() as conn:
            deleted = conn.execute(statement, {"cutoff": cutoff, "n": batch_rows}).rowcount
        total += deleted
        if deleted < batch_rows:
            break
    return total


#: What the webhook purge deletes: messages done with, attempts, subscription tombstones.
_WEBHOOK_PURGES = {
    "messages": ("webhook_outbox", "id", f"status IN {sql_in(WEBHOOK_DONE)} "
                                         "AND done_at < :cutoff"),
    "attempts": ("webhook_attempt", "id", "attempted_at < :cutoff"),
    "deleted_subscriptions": ("webhook_subscription", "id", "deleted AND updated < :cutoff"),
}


def purge_webhooks(execution: Engine, *, cutoff: datetime, batch_rows: int = 10_000,
                   dry_run: bool = False) -> dict[str, int]:
    """Webhook messages delivered or failed before ``cutoff`` (a failed one can be
    replayed until then), attempts made before it, and subscriptions deleted before it
    (their tombstones have reached every instance). Pending messages are never deleted.
    Returns how many (would) go per kind."""
    counts: dict[str, int] = {}
    for name, (table, key, where) in _WEBHOOK_PURGES.items():
        if dry_run:
            with execution.connect() as conn:
                counts[name] = int(conn.execute(text(
                    f"SELECT count(*) FROM {table} WHERE {where}"), {"cutoff": cutoff}
                ).scalar_one())
            continue
        statement = text(f"""
            DELETE FROM {table} WHERE {key} IN (
                SELECT {key} FROM {table} WHERE {where}
                LIMIT :n FOR UPDATE SKIP LOCKED)""")
        counts[name] = 0
        while True:
            with execution.begin() as conn:
                deleted = conn.execute(statement, {"cutoff": cutoff, "n": batch_rows}).rowcount
            counts[name] += deleted
            if deleted < batch_rows:
                break
    return counts


def purge_execution(execution: Engine, control: Engine | None, registry: Registry | None,
                    settings: CleanupSettings, *, now: datetime, name: str = "execution",
                    control_problem: str | None = None, vacuum_after: bool = True,
                    pause_seconds: float = 0.0,
                    should_stop: Callable[[], bool] = lambda: False) -> ExecutionPurgeReport:
    """The execution instance's final events and delivery logs, archive-guarded (see the
    module docs), with table sizes before and after."""
    if now.tzinfo is None:
        raise CleanupError("the clean-up needs a timezone-aware 'now'")
    started = time.monotonic()
    report = ExecutionPurgeReport(name=name, dry_run=settings.dry_run)
    report.sizes_before = table_sizes(execution, EVENT_TABLES)
    report.cell_id = instance_cell(execution)
    report.skipped = archive_guard(report.cell_id, registry, control, control_problem)
    if report.skipped is None:
        assert control is not None
        try:
            progress = archive_progress(control, report.cell_id)
        except (OperationalError, DBAPIError) as exc:
            report.skipped = f"the control database is unreachable ({first_line(exc)})"
        else:
            cutoff = now - settings.event_delay
            for kind in EVENT_KINDS:
                report.kinds[kind] = purge_events(
                    execution, control, report.cell_id, kind, cutoff=cutoff,
                    progress=progress[kind], batch_rows=settings.batch_rows,
                    dry_run=settings.dry_run, pause_seconds=pause_seconds,
                    should_stop=should_stop)
    if report.skipped:
        log.warning("%s (cell %s): nothing deleted from the event queues and delivery "
                    "logs: %s", name, report.cell_id, report.skipped)
    if vacuum_after and not settings.dry_run and report.events:
        vacuum(execution, EVENT_TABLES)
    report.sizes_after = table_sizes(execution, EVENT_TABLES)
    report.seconds = time.monotonic() - started
    return report


@dataclass
class KeyPurgeReport:
    """The idempotency keys' purge."""

    dry_run: bool
    cutoff: datetime
    keys: int = 0
    webhooks: dict[str, int] = field(default_factory=dict)
    sizes_before: dict[str, TableSize] = field(default_factory=dict)
    sizes_after: dict[str, TableSize] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "cutoff": self.cutoff.isoformat(),
                "idempotency_keys": self.keys, "webhooks": self.webhooks,
                "bytes_before": {t: s.total_bytes for t, s in self.sizes_before.items()},
                "bytes_after": {t: s.total_bytes for t, s in self.sizes_after.items()}}


def purge_idempotency(execution: Engine, settings: CleanupSettings, *, now: datetime,
                      vacuum_after: bool = True) -> KeyPurgeReport:
    """Idempotency keys past the replay window, with the table's size before and after."""
    if now.tzinfo is None:
        raise CleanupError("the clean-up needs a timezone-aware 'now'")
    report = KeyPurgeReport(dry_run=settings.dry_run, cutoff=now - settings.idempotency_window)
    report.sizes_before = table_sizes(execution, KEY_TABLES)
    report.keys = purge_idempotency_keys(execution, cutoff=report.cutoff,
                                         batch_rows=settings.batch_rows,
                                         dry_run=settings.dry_run)
    report.webhooks = purge_webhooks(execution, cutoff=now - timedelta(
        days=settings.webhook_days), batch_rows=settings.batch_rows, dry_run=settings.dry_run)
    if vacuum_after and report.keys and not settings.dry_run:
        vacuum(execution, KEY_TABLES)
    report.sizes_after = table_sizes(execution, KEY_TABLES)
    return report


# --- control instance --------------------------------------------------------------------
ARCHIVE_TABLES = ("archived_event", "archived_delivery_log")
STATISTICS_TABLES = ("event_stats_hourly", "flow_stats_hourly", "event_stats_dirty")

# Oldest first by creation (keyset on (created, cell_id, id)); each archived event goes
# with its archived delivery log in the same statement.
_PURGE_ARCHIVE = text("""
    WITH victims AS (
        SELECT cell_id, id, event_kind, created FROM archived_event
        WHERE created < :cutoff AND created >= :after_created
          AND (created, cell_id, id) > (:after_created, :after_cell, :after_id)
        ORDER BY created, cell_id, id LIMIT :n
        FOR UPDATE SKIP LOCKED),
    gone_logs AS (
        DELETE FROM archived_delivery_log l USING victims v
        WHERE l.cell_id = v.cell_id AND l.event_id = v.id AND l.event_kind = v.event_kind
        RETURNING 1),
    gone_hits AS (
        DELETE FROM archived_tracking_log t USING victims v
        WHERE t.cell_id = v.cell_id AND t.event_id = v.id AND t.event_kind = v.event_kind
        RETURNING 1),
    gone AS (
        DELETE FROM archived_event e USING victims v
        WHERE e.cell_id = v.cell_id AND e.id = v.id RETURNING 1),
    last AS (SELECT created, cell_id, id FROM victims ORDER BY created DESC, cell_id DESC,
                                                               id DESC LIMIT 1)
    SELECT (SELECT count(*) FROM victims), (SELECT count(*) FROM gone),
           (SELECT count(*) FROM gone_logs), last.created, last.cell_id, last.id
    FROM (SELECT 1) AS one LEFT JOIN last ON true""")
_COUNT_ARCHIVE = text("""
    SELECT count(*), (SELECT count(*) FROM archived_delivery_log l JOIN archived_event e
                      ON l.cell_id = e.cell_id AND l.event_id = e.id
                      AND l.event_kind = e.event_kind WHERE e.created < :cutoff)
    FROM archived_event WHERE created < :cutoff""")
# Delivery logs whose event is not (or no longer) archived, per cell, through the
# (cell_id, last_modified) index: last_modified < cutoff implies created < cutoff.
_ORPHAN_LOGS = """
    {verb} archived_delivery_log l WHERE l.ctid = ANY(ARRAY(
        SELECT o.ctid FROM archived_delivery_log o
        WHERE o.cell_id = :cell AND o.last_modified < :cutoff
          AND NOT EXISTS (SELECT 1 FROM archived_event e WHERE e.cell_id = o.cell_id
                          AND e.id = o.event_id AND e.event_kind = o.event_kind)
        LIMIT :n {lock}))"""


@dataclass
class ControlPurgeReport:
    """The control instance's purge: archive and statistics."""

    dry_run: bool
    archive_cutoff: datetime | None = None
    statistics_cutoff: datetime | None = None
    archived_events: int = 0
    archived_delivery_logs: int = 0
    orphan_delivery_logs: int = 0
    statistics_rows: int = 0
    carried_queues: int = 0
    batches: int = 0
    sizes_before: dict[str, TableSize] = field(default_factory=dict)
    sizes_after: dict[str, TableSize] = field(default_factory=dict)

    def lines(self) -> list[str]:
        mode = "DRY RUN, nothing deleted: " if self.dry_run else ""
        verb = "would go" if self.dry_run else "deleted"
        out = []
        if self.archive_cutoff:
            out.append(f"{mode}archive created before {self.archive_cutoff.isoformat()}: "
                       f"{self.archived_events} event(s), {self.archived_delivery_logs} "
                       f"delivery log(s) and {self.orphan_delivery_logs} delivery log(s) "
                       f"without an archived event {verb} ({self.batches} batch(es))")
        if self.statistics_cutoff:
            out.append(f"{mode}hourly statistics before "
                       f"{self.statistics_cutoff.isoformat()}: {self.statistics_rows} row(s) "
                       f"{verb}; queue sizes carried over for {self.carried_queues} series")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "archived_events": self.archived_events,
                "archived_delivery_logs": self.archived_delivery_logs,
                "orphan_delivery_logs": self.orphan_delivery_logs,
                "statistics_rows": self.statistics_rows,
                "bytes_before": {t: s.total_bytes for t, s in self.sizes_before.items()},
                "bytes_after": {t: s.total_bytes for t, s in self.sizes_after.items()}}


def purge_archive(control: Engine, settings: CleanupSettings, *, now: datetime,
                  vacuum_after: bool = True,
                  should_stop: Callable[[], bool] = lambda: False) -> ControlPurgeReport:
    """Archived events created more than ``archived_event_days`` ago, with their archived
    delivery logs (and delivery logs left without an archived event), ``batch_rows``
    events per transaction, oldest first."""
    if now.tzinfo is None:
        raise CleanupError("the clean-up needs a timezone-aware 'now'")
    cutoff = now - settings.archive_delay
    report = ControlPurgeReport(dry_run=settings.dry_run, archive_cutoff=cutoff)
    report.sizes_before = table_sizes(control, ARCHIVE_TABLES)
    if settings.dry_run:
        with control.connect() as conn:
            events, logs = conn.execute(_COUNT_ARCHIVE, {"cutoff": cutoff}).one()
        report.archived_events, report.archived_delivery_logs = int(events), int(logs)
    else:
        after = {"after_created": datetime(1, 1, 1, tzinfo=cutoff.tzinfo), "after_cell": -1,
                 "after_id": -(1 << 63)}
        while not should_stop():
            with control.begin() as conn:
                read, events, logs, last_created, last_cell, last_id = conn.execute(
                    _PURGE_ARCHIVE, {"cutoff": cutoff, "n": settings.batch_rows, **after}).one()
            report.batches += 1
            report.archived_events += int(events)
            report.archived_delivery_logs += int(logs)
            if read < settings.batch_rows:
                break
            after = {"after_created": last_created, "after_cell": last_cell,
                     "after_id": last_id}
    report.orphan_delivery_logs = _purge_orphan_logs(control, cutoff, settings, should_stop)
    if vacuum_after and not settings.dry_run and (
            report.archived_events or report.orphan_delivery_logs):
        vacuum(control, ARCHIVE_TABLES)
    report.sizes_after = table_sizes(control, ARCHIVE_TABLES)
    return report


def _purge_orphan_logs(control: Engine, cutoff: datetime, settings: CleanupSettings,
                       should_stop: Callable[[], bool]) -> int:
    total = 0
    count = text(_ORPHAN_LOGS.format(verb="SELECT count(*) FROM", lock="")
                 .replace("LIMIT :n", ""))
    delete = text(_ORPHAN_LOGS.format(verb="DELETE FROM", lock="FOR UPDATE SKIP LOCKED"))
    with control.connect() as conn:
        cells = [c for c in range(256) if conn.execute(text(
            "SELECT 1 FROM archived_delivery_log WHERE cell_id = :cell "
            "AND last_modified < :cutoff LIMIT 1"), {"cell": c, "cutoff": cutoff}).first()]
    for cell in cells:
        if settings.dry_run:
            with control.connect() as conn:
                total += int(conn.execute(count, {"cell": cell, "cutoff": cutoff}).scalar_one())
            continue
        while not should_stop():
            with control.begin() as conn:
                deleted = conn.execute(delete, {"cell": cell, "cutoff": cutoff,
                                                "n": settings.batch_rows}).rowcount
            total += deleted
            if deleted < settings.batch_rows:
                break
    return total


def purge_statistics_before(control: Engine, settings: CleanupSettings, *, now: datetime,
                            step: timedelta = timedelta(days=7)) -> ControlPurgeReport:
    """Hourly statistics older than ``statistics_days``, a week of hours per transaction
    (oldest first), carrying the queue size still open over (see
    :func:`message_center.reporting.statistics.purge_statistics`); and the recomputation
    marks of those hours."""
    from message_center.reporting.statistics import floor_hour, purge_statistics

    if now.tzinfo is None:
        raise CleanupError("the clean-up needs a timezone-aware 'now'")
    cutoff = floor_hour(now - settings.statistics_delay)
    report = ControlPurgeReport(dry_run=settings.dry_run, statistics_cutoff=cutoff)
    report.sizes_before = table_sizes(control, STATISTICS_TABLES)
    with control.connect() as conn:
        oldest = conn.execute(text(
            "SELECT least((SELECT min(hour) FROM event_stats_hourly),"
            " (SELECT min(hour) FROM flow_stats_hourly))")).scalar()
        if settings.dry_run:
            report.statistics_rows = int(conn.execute(text(
                "SELECT (SELECT count(*) FROM event_stats_hourly WHERE hour < :c)"
                " + (SELECT count(*) FROM flow_stats_hourly WHERE hour < :c"
                "    AND (received, finished) <> (0, 0))"), {"c": cutoff}).scalar_one())
    if not settings.dry_run and oldest is not None and oldest < cutoff:
        before = oldest
        while before < cutoff:
            before = min(floor_hour(before + step), cutoff)
            with control.begin() as conn:
                purged = purge_statistics(conn, before)
                conn.execute(text("DELETE FROM event_stats_dirty WHERE hour < :before"),
                             {"before": before})
            report.statistics_rows += purged.event_rows + purged.flow_rows
            report.carried_queues = purged.carried
            report.batches += 1
    report.sizes_after = table_sizes(control, STATISTICS_TABLES)
    return report
