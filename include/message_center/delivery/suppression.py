"""Suppressions: an address that unsubscribed from a category of messages.

Apart from the quarantine (which blocks an address for every message): a suppression is
keyed by (channel, address, category), and only the templates whose ``unsubscribe``
category is that one are not sent (the event ends *Ignored by the delivery* with the
reason; :data:`IGNORE_SQL` is the arming statement's test). Like a quarantine, a row is a
*decision* (``suppressed`` / ``removed``) with the time it was made (``updated``): the
newest decision wins wherever it is copied (:mod:`message_center.quarantine_sync` shares
them between instances).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from message_center import audit
from message_center import channel as channels
from message_center.ids import to_public

SOURCES = ("unsubscribe", "manual", "api")
MAX_CATEGORY_CHARS = 64

#: Why the delivery does not send (chunk row ``c``, template ``pt`` of the chunk's event):
#: the address unsubscribed from the template's category; NULL otherwise.
IGNORE_SQL = """(SELECT format('address unsubscribed from the category %s (suppression %s)',
                              s.category, s.id)
                 FROM published_template pt
                 JOIN suppression s ON s.channel = c.channel
                      AND s.address IN (c.address, lower(c.address))
                      AND s.category = pt.options -> 'unsubscribe' ->> 'category'
                      AND s.status = 'suppressed'
                 WHERE pt.internal_name = c.template_name AND pt.version = c.template_version
                   AND pt.options ? 'unsubscribe'
                 LIMIT 1)"""


def _normalize(channel: str, address: str) -> str:
    spec = channels.get(channel)
    return spec.normalize_address(address)


def _cell(conn: Connection) -> int | None:
    if not conn.execute(text("SELECT to_regclass('mc_instance') IS NOT NULL")).scalar_one():
        return None
    return conn.execute(text("SELECT cell_id FROM mc_instance")).scalar()


def suppress(conn: Connection, channel: str, address: str, category: str, *,
             source: str = "unsubscribe", delivery_log_id: int | None = None,
             decided_by: str | None = None) -> dict[str, Any]:
    """Suppress ``address`` for ``category`` (idempotent: an active suppression keeps its
    decision time). Returns the row."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    category = (category or "").strip()
    if not category or len(category) > MAX_CATEGORY_CHARS:
        raise ValueError(f"category {category!r}: 1 to {MAX_CATEGORY_CHARS} characters")
    address = _normalize(channel, address)
    row = conn.execute(text("""
        INSERT INTO suppression AS s (channel, address, category, status, source,
            delivery_log_id, decided_by, origin_cell, updated)
        VALUES (:channel, :address, :category, 'suppressed', :source, :log, :by,
                CAST(:cell AS smallint), clock_timestamp())
        ON CONFLICT (channel, address, category) DO UPDATE SET
            status = 'suppressed', source = EXCLUDED.source,
            delivery_log_id = EXCLUDED.delivery_log_id, decided_by = EXCLUDED.decided_by,
            origin_cell = EXCLUDED.origin_cell, updated = EXCLUDED.updated,
            created = now()
        WHERE s.status <> 'suppressed'
        RETURNING s.*
    """), {"channel": channel, "address": address, "category": category, "source": source,
           "log": delivery_log_id, "by": decided_by, "cell": _cell(conn)}
    ).mappings().one_or_none()
    if row is None:  # already suppressed: unchanged
        row = conn.execute(text(
            "SELECT * FROM suppression WHERE channel = :c AND address = :a AND category = :k"),
            {"c": channel, "a": address, "k": category}).mappings().one()
    return dict(row)


def remove(conn: Connection, suppression_id: int, *,
           decided_by: str | None = None) -> dict[str, Any] | None:
    """Lift a suppression (kept as a ``removed`` decision so that it is shared). None: no
    such suppression here. Removing a removed one changes nothing."""
    row = conn.execute(text("""
        UPDATE suppression SET status = 'removed', updated = clock_timestamp(),
               decided_by = :by, source = 'manual', origin_cell = CAST(:cell AS smallint)
        WHERE id = :id AND status = 'suppressed'
        RETURNING *
    """), {"id": suppression_id, "by": decided_by, "cell": _cell(conn)}).mappings().one_or_none()
    if row is not None:
        audit.record(conn, actor=decided_by, action=audit.SUPPRESSION_REMOVE,
                     target=f"{row['channel']} {row['address']}",
                     details={"id": suppression_id, "category": row.get("category")})
    if row is None:
        row = conn.execute(text("SELECT * FROM suppression WHERE id = :id"),
                           {"id": suppression_id}).mappings().one_or_none()
    return None if row is None else dict(row)


def list_suppressions(conn: Connection, *, channel: str | None = None,
                      category: str | None = None, address: str | None = None,
                      status: str = "active", limit: int = 100,
                      offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Suppressions, newest decision first, and how many match in all. ``status``:
    ``active`` (suppressed), ``removed``, ``all``; ``address``: a case-insensitive
    substring."""
    if status not in ("active", "removed", "all"):
        raise ValueError(f"status {status!r}: expected active, removed or all")
    if channel is not None and channel not in channels.names():
        raise ValueError(f"channel {channel!r}: expected one of {', '.join(channels.names())}")
    if not 1 <= limit <= 10_000 or offset < 0:
        raise ValueError("limit must be 1..10000 and offset >= 0")
    where = ["true"]
    if status == "active":
        where.append("s.status = 'suppressed'")
    elif status == "removed":
        where.append("s.status = 'removed'")
    if channel:
        where.append("s.channel = :channel")
    if category:
        where.append("s.category = :category")
    if address:
        where.append("s.address ILIKE :pattern ESCAPE '\\'")
    pattern = "%" + (address or "").replace("\\", "\\\\").replace("%", "\\%").replace(
        "_", "\\_") + "%"
    params = {"channel": channel, "category": category, "pattern": pattern, "limit": limit,
              "offset": offset}
    condition = " AND ".join(where)
    total = conn.execute(text(f"SELECT count(*) FROM suppression s WHERE {condition}"),
                         params).scalar_one()
    rows = conn.execute(text(f"""
        SELECT s.* FROM suppression s WHERE {condition}
        ORDER BY s.updated DESC, s.channel, s.address, s.category LIMIT :limit OFFSET :offset
    """), params).mappings().all()
    return [dict(row) for row in rows], int(total)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def api_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A suppression in the push API's shape (camelCase, ISO 8601 UTC times)."""
    log_id = record.get("delivery_log_id")
    return {
        "id": int(record["id"]), "channel": record["channel"], "address": record["address"],
        "category": record["category"], "status": record["status"],
        "active": record["status"] == "suppressed", "source": record["source"],
        "decidedBy": record["decided_by"], "originCell": record["origin_cell"],
        "deliveryLogId": to_public(log_id) if log_id is not None else None,
        "created": _iso(record["created"]), "updated": _iso(record["updated"]),
    }
