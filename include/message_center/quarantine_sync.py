"""Sharing quarantines: every execution instance -> the control instance -> every instance.

An address that bounced on one execution instance must be ignored by all of them, and a
release decided on the control instance must reach all of them. Each quarantine row is a
*decision* (quarantined or released) with the time it was made (``updated``); copies keep
that time, so **the newest decision wins** on every database, whatever the order the
copies arrive in, and copying a row twice changes nothing (idempotent).

One synchronisation of one instance (:func:`sync_instance`) has two steps:

1. **up** - the instance's rows changed (``last_modified``, its own clock) since the last
   up-step (minus a lookback for late commits) are upserted into the control instance's
   ``quarantine`` where they are newer (``updated``);
2. **down** - the control rows changed (``last_modified``, the control clock) since the
   last down-step to this instance are upserted into the instance where newer.

:func:`sync_all` runs the up-steps of every instance first, then the down-steps, so one
run carries a decision made on instance 1 to instance 2. Watermarks live on the control
instance (``quarantine_sync``, per cell and direction). Rows are moved in keyset pages of
``chunk_rows``; each page is one set-based upsert.

Suppressions (one-click unsubscribes, :mod:`message_center.delivery.suppression`) are
decisions of the same kind, keyed by (channel, address, category): every run shares them
the same way (``suppression``, watermarks in ``suppression_sync``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text

from message_center.db import engine_for

log = logging.getLogger(__name__)

#: The columns of a decision (the same on both roles); ``last_modified`` is local.
COLUMNS = ("channel", "address", "reason", "created", "status", "failure_class",
           "failure_reason", "bounce_count", "delivery_log_id", "source", "decided_by",
           "origin_cell", "updated", "release_at", "released_at")
_TYPES = {"created": "timestamptz", "updated": "timestamptz", "release_at": "timestamptz",
          "released_at": "timestamptz", "bounce_count": "int", "delivery_log_id": "bigint",
          "origin_cell": "smallint"}
SUPPRESSION_COLUMNS = ("channel", "address", "category", "status", "source",
                       "delivery_log_id", "decided_by", "origin_cell", "created", "updated")


@dataclass(frozen=True)
class _Decisions:
    """A table of shared decisions: its columns, its key, its watermark table."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    watermarks: str


QUARANTINE = _Decisions("quarantine", COLUMNS, ("channel", "address"), "quarantine_sync")
SUPPRESSION = _Decisions("suppression", SUPPRESSION_COLUMNS, ("channel", "address", "category"),
                         "suppression_sync")
DEFAULT_LOOKBACK = timedelta(minutes=15)
DEFAULT_CHUNK_ROWS = 5_000


@dataclass
class StepCount:
    read: int = 0
    applied: int = 0  # rows inserted or replaced by a newer decision

    def __str__(self) -> str:
        return f"{self.read} read, {self.applied} applied"


@dataclass
class SyncReport:
    """What one run did, per cell: ``up`` (instance -> control) and ``down``."""

    up: dict[int, StepCount] = field(default_factory=dict)
    down: dict[int, StepCount] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"up": {str(c): vars(s) for c, s in self.up.items()},
                "down": {str(c): vars(s) for c, s in self.down.items()},
                "errors": {str(c): e for c, e in self.errors.items()}}


def _engine(source: Engine | str) -> Engine:
    return source if isinstance(source, Engine) else engine_for(source)


def _watermark(conn: Connection, cell: int, direction: str,
               spec: _Decisions = QUARANTINE) -> datetime | None:
    return conn.execute(text(f"SELECT watermark FROM {spec.watermarks} WHERE cell_id = :c "
                             "AND direction = :d"), {"c": cell, "d": direction}).scalar()


def _save_watermark(conn: Connection, cell: int, direction: str, value: datetime,
                    spec: _Decisions = QUARANTINE) -> None:
    conn.execute(text(f"""
        INSERT INTO {spec.watermarks} (cell_id, direction, watermark, synced_at)
        VALUES (:c, :d, :w, now())
        ON CONFLICT (cell_id, direction) DO UPDATE SET
            watermark = greatest({spec.watermarks}.watermark, EXCLUDED.watermark),
            synced_at = now()
    """), {"c": cell, "d": direction, "w": value})


def _pages(source: Engine, since: datetime | None, chunk_rows: int,
           spec: _Decisions = QUARANTINE) -> Iterable[list[Mapping[str, Any]]]:
    """The rows changed at or after ``since``, in keyset pages ordered by last_modified."""
    columns = ", ".join(spec.columns)
    key = ", ".join(spec.key)
    after: tuple[Any, ...] | None = None
    while True:
        where, params = "true", {"limit": chunk_rows}
        if since is not None:
            where = "last_modified >= :since"
            params["since"] = since
        if after is not None:
            marks = ", ".join(f":k{i}" for i in range(len(after)))
            where += f" AND (last_modified, {key}) > ({marks})"
            params.update({f"k{i}": value for i, value in enumerate(after)})
        with source.connect() as conn:
            rows = conn.execute(text(
                f"SELECT {columns}, last_modified FROM {spec.table} WHERE {where} "
                f"ORDER BY last_modified, {key} LIMIT :limit"), params
            ).mappings().all()
        if not rows:
            return
        yield list(rows)
        if len(rows) < chunk_rows:
            return
        last = rows[-1]
        after = (last["last_modified"], *(last[name] for name in spec.key))


def apply_decisions(conn: Connection, rows: Sequence[Mapping[str, Any]],
                    spec: _Decisions = QUARANTINE) -> int:
    """Upsert decisions where they are newer than what is there (``updated``); returns how
    many rows were inserted or replaced. One statement."""
    if not rows:
        return 0
    arrays = {name: [row[name] for row in rows] for name in spec.columns}
    source = ", ".join(f"CAST(:{name} AS {_TYPES.get(name, 'text')}[])"
                       for name in spec.columns)
    columns = ", ".join(spec.columns)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in spec.columns
                        if name not in spec.key)
    return len(conn.execute(text(f"""
        INSERT INTO {spec.table} AS q ({columns})
        SELECT {columns} FROM unnest({source}) AS v({columns})
        ON CONFLICT ({", ".join(spec.key)}) DO UPDATE SET {updates}
        WHERE q.updated < EXCLUDED.updated
        RETURNING 1
    """), arrays).all())


def _step(source: Engine, target: Engine, control: Engine, cell: int, direction: str,
          lookback: timedelta, chunk_rows: int) -> StepCount:
    """One direction for the quarantine, then for the suppressions (counted together)."""
    count = StepCount()
    for spec in (QUARANTINE, SUPPRESSION):
        with control.connect() as conn:
            mark = _watermark(conn, cell, direction, spec)
        since = mark - lookback if mark is not None else None
        newest: datetime | None = None
        for page in _pages(source, since, chunk_rows, spec):
            with target.begin() as conn:
                count.applied += apply_decisions(conn, page, spec)
            count.read += len(page)
            newest = page[-1]["last_modified"]
        if newest is not None:
            with control.begin() as conn:
                _save_watermark(conn, cell, direction, newest, spec)
    return count


def sync_up(execution: Engine | str, control: Engine | str, cell: int, *,
            lookback: timedelta = DEFAULT_LOOKBACK,
            chunk_rows: int = DEFAULT_CHUNK_ROWS) -> StepCount:
    """The instance's new decisions -> the control instance."""
    engine, hub = _engine(execution), _engine(control)
    return _step(engine, hub, hub, cell, "up", lookback, chunk_rows)


def sync_down(execution: Engine | str, control: Engine | str, cell: int, *,
              lookback: timedelta = DEFAULT_LOOKBACK,
              chunk_rows: int = DEFAULT_CHUNK_ROWS) -> StepCount:
    """The control instance's new decisions -> the instance."""
    engine, hub = _engine(execution), _engine(control)
    return _step(hub, engine, hub, cell, "down", lookback, chunk_rows)


def sync_instance(execution: Engine | str, control: Engine | str, cell: int, *,
                  lookback: timedelta = DEFAULT_LOOKBACK,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[StepCount, StepCount]:
    """Up, then down, for one instance."""
    up = sync_up(execution, control, cell, lookback=lookback, chunk_rows=chunk_rows)
    down = sync_down(execution, control, cell, lookback=lookback, chunk_rows=chunk_rows)
    return up, down


def sync_all(instances: Mapping[int, Engine | str], control: Engine | str, *,
             lookback: timedelta = DEFAULT_LOOKBACK,
             chunk_rows: int = DEFAULT_CHUNK_ROWS) -> SyncReport:
    """Every instance up, then every instance down. An instance that fails is reported in
    ``errors`` and skipped; the others are synchronised."""
    report = SyncReport()
    for cell, execution in instances.items():
        try:
            report.up[cell] = sync_up(execution, control, cell, lookback=lookback,
                                      chunk_rows=chunk_rows)
        except Exception as exc:  # one unreachable instance must not stop the others
            report.errors[cell] = f"up: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    for cell, execution in instances.items():
        if cell in report.errors:
            continue
        try:
            report.down[cell] = sync_down(execution, control, cell, lookback=lookback,
                                          chunk_rows=chunk_rows)
        except Exception as exc:
            report.errors[cell] = f"down: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return report
