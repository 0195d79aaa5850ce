"""The audit trail: who changed what by hand, append-only (``audit_log``).

Every instance has its own ``audit_log``: a change is recorded in the same transaction as
the change itself, on the database it changes (a bulk action or a quarantine change on an
execution instance, a publish or a webhook change on the control instance), so there is
never a change without its row nor a row without its change. The execution instances'
rows reach the control instance's ``audit_log`` with the archiving
(:func:`copy_to_control`, keyed by cell and id: copied once whatever re-runs), where the
*Audit* page and its CSV export read them. Automatic decisions (a bounce quarantining an
address) keep their own history and are not audited here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

#: ``cell_id`` of the rows written on the control instance itself.
CONTROL_CELL = -1
#: The clean-up keeps the audit trail this long by default (three years).
DEFAULT_KEEP_DAYS = 1095
CSV_COLUMNS = ("at", "instance", "actor", "action", "target", "details")

# The actions recorded (``action`` column), by area.
BULK_PREFIX = "bulk."
QUARANTINE_ADD = "quarantine.add"
QUARANTINE_RELEASE = "quarantine.release"
SUPPRESSION_REMOVE = "suppression.remove"
ACCOUNT_CHANGE = "account.change"
PUBLISH = "templates.publish"
WEBHOOK_PREFIX = "webhook."

_INSERT = text("""
    INSERT INTO audit_log (actor, action, target, details)
    VALUES (:actor, :action, :target, CAST(:details AS jsonb))
""")


def record(conn: Connection, *, actor: str | None, action: str, target: str = "",
           details: Mapping[str, Any] | None = None) -> None:
    """Append one row, in the caller's transaction (the change and its row commit
    together)."""
    conn.execute(_INSERT, {"actor": actor or "unknown", "action": action,
                           "target": target or "",
                           "details": json.dumps(dict(details or {}), default=str)})


def copy_to_control(source: Connection, control: Connection, cell_id: int,
                    limit: int = 10_000) -> int:
    """Copy an execution instance's audit rows not yet on the control instance (ids
    after the newest copied one of that cell), ``limit`` at a time until none is left.
    Idempotent: the control key is ``(cell_id, id)``. Returns how many were copied."""
    copied = 0
    while True:
        after = control.execute(text(
            "SELECT coalesce(max(id), 0) FROM audit_log WHERE cell_id = :cell"),
            {"cell": cell_id}).scalar_one()
        rows = source.execute(text(
            "SELECT id, at, actor, action, target, CAST(details AS text) AS details, "
            "last_modified FROM audit_log WHERE id > :after ORDER BY id LIMIT :limit"),
            {"after": after, "limit": limit}).mappings().all()
        if not rows:
            return copied
        control.execute(text("""
            INSERT INTO audit_log (cell_id, id, at, actor, action, target, details,
                                   last_modified)
            VALUES (:cell, :id, :at, :actor, :action, :target, CAST(:details AS jsonb),
                    :last_modified)
            ON CONFLICT (cell_id, id) DO NOTHING"""),
            [{**row, "cell": cell_id} for row in rows])
        copied += len(rows)
        if len(rows) < limit:
            return copied


@dataclass(frozen=True)
class AuditQuery:
    """What the Audit page and its CSV export show: a period on ``at``, an action prefix
    (``bulk.``, ``quarantine.``, ...), an actor."""

    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    actor: str | None = None
    limit: int = 200
    offset: int = 0

    def sql(self) -> tuple[str, dict[str, Any]]:
        parts, params = ["TRUE"], {}
        if self.since is not None:
            parts.append("at >= :since")
            params["since"] = self.since
        if self.until is not None:
            parts.append("at < :until")
            params["until"] = self.until
        if self.action:
            parts.append("starts_with(action, :action)")
            params["action"] = self.action
        if self.actor:
            parts.append("actor = :actor")
            params["actor"] = self.actor
        return " AND ".join(parts), params


def entries(control: Connection, query: AuditQuery) -> tuple[list[dict[str, Any]], int]:
    """The control instance's audit rows, newest first, and how many match."""
    where, params = query.sql()
    total = control.execute(text(f"SELECT count(*) FROM audit_log WHERE {where}"),
                            params).scalar_one()
    rows = control.execute(text(
        f"SELECT cell_id, id, at, actor, action, target, details FROM audit_log "
        f"WHERE {where} ORDER BY at DESC, cell_id, id DESC LIMIT :limit OFFSET :offset"),
        {**params, "limit": query.limit, "offset": query.offset}).mappings().all()
    return [api_record(r) for r in rows], int(total)


def api_record(row: Mapping[str, Any]) -> dict[str, Any]:
    cell = row["cell_id"]
    return {"at": row["at"].isoformat(), "instance": "control" if cell == CONTROL_CELL
            else f"cell {cell}", "actor": row["actor"], "action": row["action"],
            "target": row["target"], "details": row["details"]}


def to_csv(records: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV (``details`` as JSON), for the export."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow([r["at"], r["instance"], r["actor"], r["action"], r["target"],
                         json.dumps(r["details"], sort_keys=True)])
    return out.getvalue()


def purge(conn: Connection, cutoff: datetime) -> int:
    """Delete the rows older than ``cutoff`` (the clean-up, after its delay)."""
    return conn.execute(text("DELETE FROM audit_log WHERE at < :cutoff"),
                        {"cutoff": cutoff}).rowcount
