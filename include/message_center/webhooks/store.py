"""Subscriptions (managed on the control instance, copied to every execution instance)
and the outbox's read side: listing, statistics, replay, a test message.

A subscription row is a *decision* with its time (``updated``): a copy keeps that time,
so the newest decision wins on every database whatever order copies arrive in, and a
delete is a tombstone (``deleted``) so that it reaches every instance too. The tables
are small (one row per endpoint): :func:`copy_subscriptions` copies them whole.
Secrets are stored encrypted (``secret_enc``) by the :class:`~message_center.webhooks.
model.SecretBox` the caller passes; they are never returned except once, on creation or
rotation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text

from message_center import audit
from message_center.db import engine_for, first_line
from message_center.ids import NEXT_ID_SQL, to_public, to_stored
from message_center.statuses import WebhookStatus
from message_center.webhook_outbox import TEST, forget
from message_center.webhooks.model import (
    DEFAULT_OVERLAP,
    SecretBox,
    SubscriptionChange,
    new_secret,
    new_subscription_id,
    test_payload,
)

#: The columns copied between instances (``failing_since`` and ``last_modified`` are
#: each database's own).
COLUMNS = ("id", "url", "events", "event_types", "description", "enabled",
           "disabled_reason", "disabled_at", "secret_enc", "previous_secret_enc",
           "previous_expires", "max_in_flight", "rate_per_second", "created_by", "created",
           "updated", "deleted")
_TYPES = {"events": "text", "event_types": "text", "enabled": "boolean",
          "deleted": "boolean", "disabled_at": "timestamptz", "previous_expires":
          "timestamptz", "created": "timestamptz", "updated": "timestamptz",
          "max_in_flight": "integer", "rate_per_second": "float8"}
_ARRAYS = ("events", "event_types")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def api_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A subscription as the API shows it (never its secrets)."""
    return {"id": row["id"], "url": row["url"], "events": list(row["events"]),
            "eventTypes": list(row["event_types"] or []),
            "description": row["description"], "enabled": row["enabled"],
            "disabledReason": row["disabled_reason"],
            "disabledAt": _iso(row["disabled_at"]),
            "maxInFlight": row["max_in_flight"], "ratePerSecond": row["rate_per_second"],
            "secretRotation": ({"previousValidUntil": _iso(row["previous_expires"])}
                               if row["previous_expires"] else None),
            "createdBy": row["created_by"], "created": _iso(row["created"]),
            "updated": _iso(row["updated"])}


def known_event_types(conn: Connection) -> list[str]:
    """The event types a filter may name: those of every template of the control
    instance (published or not)."""
    return list(conn.execute(text("SELECT DISTINCT event_type FROM template")).scalars())


def create(conn: Connection, change: SubscriptionChange, *, box: SecretBox,
           created_by: str | None) -> tuple[dict[str, Any], str]:
    """Store a new subscription (control instance); returns it and its secret (shown
    once)."""
    secret = new_secret()
    row = conn.execute(text("""
        INSERT INTO webhook_subscription (id, url, events, event_types, description, enabled,
                                          secret_enc, max_in_flight, rate_per_second,
                                          created_by)
        VALUES (:id, :url, :events, :types, :description, :enabled, :secret, :cap, :rate,
                :by)
        RETURNING *
    """), {"id": new_subscription_id(), "url": change.url, "events": list(change.events or ()),
           "types": list(change.event_types or ()), "description": change.description or "",
           "enabled": True if change.enabled is None else change.enabled,
           "secret": box.encrypt(secret), "cap": change.max_in_flight,
           "rate": change.rate_per_second, "by": created_by}).mappings().one()
    audit.record(conn, actor=created_by, action=audit.WEBHOOK_PREFIX + "create",
                 target=row["id"], details={"url": row["url"], "events": list(row["events"])})
    return dict(row), secret


def get(conn: Connection, subscription_id: str) -> dict[str, Any] | None:
    row = conn.execute(text("SELECT * FROM webhook_subscription WHERE id = :id "
                            "AND NOT deleted"), {"id": subscription_id}).mappings().first()
    return dict(row) if row else None


def list_subscriptions(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(text(
        "SELECT * FROM webhook_subscription WHERE NOT deleted ORDER BY created, id")
    ).mappings()]


def update(conn: Connection, subscription_id: str,
           change: SubscriptionChange, *, by: str | None = None) -> dict[str, Any] | None:
    """Apply a PATCH; enabling again clears the reason it was disabled for."""
    sets = ["updated = clock_timestamp()"]
    params: dict[str, Any] = {"id": subscription_id}
    for name in ("url", "description", "enabled", "max_in_flight", "rate_per_second"):
        if name in change.given:
            sets.append(f"{name} = :{name}")
            params[name] = getattr(change, name)
    for name in _ARRAYS:
        if name in change.given:
            sets.append(f"{name} = :{name}")
            params[name] = list(getattr(change, name) or ())
    if change.enabled is not None:
        sets.append("disabled_reason = CASE WHEN :enabled THEN NULL ELSE :reason END")
        sets.append("disabled_at = CASE WHEN :enabled THEN NULL ELSE clock_timestamp() END")
        params["reason"] = "disabled by hand"
    row = conn.execute(text(f"UPDATE webhook_subscription SET {', '.join(sets)} "
                            "WHERE id = :id AND NOT deleted RETURNING *"),
                       params).mappings().first()
    if row:
        audit.record(conn, actor=by, action=audit.WEBHOOK_PREFIX + "update",
                     target=subscription_id, details={
                         name: params[name] for name in sorted(params)
                         if name not in ("id", "reason")})
    return dict(row) if row else None


def rotate_secret(conn: Connection, subscription_id: str, *, box: SecretBox,
                  overlap: timedelta = DEFAULT_OVERLAP,
                  by: str | None = None) -> tuple[dict[str, Any], str] | None:
    """A new signing secret; the previous one keeps signing (a second signature in
    ``webhook-signature``) for ``overlap``, so receivers can switch without a gap."""
    secret = new_secret()
    row = conn.execute(text("""
        UPDATE webhook_subscription SET previous_secret_enc = secret_enc,
               previous_expires = clock_timestamp() + make_interval(secs => :overlap),
               secret_enc = :secret, updated = clock_timestamp()
        WHERE id = :id AND NOT deleted RETURNING *
    """), {"id": subscription_id, "secret": box.encrypt(secret),
           "overlap": overlap.total_seconds()}).mappings().first()
    if row:
        audit.record(conn, actor=by, action=audit.WEBHOOK_PREFIX + "rotate_secret",
                     target=subscription_id,
                     details={"overlapSeconds": overlap.total_seconds()})
    return (dict(row), secret) if row else None


def delete(conn: Connection, subscription_id: str, *, by: str | None = None) -> bool:
    """A tombstone (copied to every instance; the clean-up removes it later)."""
    deleted = conn.execute(text("""
        UPDATE webhook_subscription SET deleted = true, enabled = false,
               updated = clock_timestamp()
        WHERE id = :id AND NOT deleted
    """), {"id": subscription_id}).rowcount > 0
    if deleted:
        audit.record(conn, actor=by, action=audit.WEBHOOK_PREFIX + "delete",
                     target=subscription_id)
    return deleted


def secrets_of(row: Mapping[str, Any], box: SecretBox,
               now: datetime | None = None) -> list[str]:
    """The secrets that sign a message now: the current one, and the previous one while
    its rotation overlap lasts."""
    found = [box.decrypt(row["secret_enc"])]
    expires = row.get("previous_expires")
    if row.get("previous_secret_enc") and expires and expires > (now or datetime.now(UTC)):
        found.append(box.decrypt(row["previous_secret_enc"]))
    return found


# -- copies between instances ------------------------------------------------------------
def read_all(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(text(
        f"SELECT {', '.join(COLUMNS)} FROM webhook_subscription ORDER BY id")).mappings()]


def apply(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Upsert subscriptions where they are newer (``updated``) than the copy here; one
    statement. Returns how many rows changed."""
    if not rows:
        return 0
    scalars = [c for c in COLUMNS if c not in _ARRAYS]
    params: dict[str, Any] = {c: [row[c] for row in rows] for c in scalars}
    # arrays of arrays do not unnest row by row: pass them as JSON text
    for c in _ARRAYS:
        params[c] = [json.dumps(list(row[c] or [])) for row in rows]
    source = ", ".join([f"CAST(:{c} AS {_TYPES.get(c, 'text')}[])" for c in scalars]
                       + [f"CAST(:{c} AS text[])" for c in _ARRAYS])
    columns = ", ".join(COLUMNS)
    select = ", ".join(c if c not in _ARRAYS else
                       f"ARRAY(SELECT jsonb_array_elements_text(CAST({c} AS jsonb)))"
                       for c in COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "id")
    names = ", ".join([*scalars, *_ARRAYS])
    changed = len(conn.execute(text(f"""
        INSERT INTO webhook_subscription AS s ({columns})
        SELECT {select} FROM unnest({source}) AS v({names})
        ON CONFLICT (id) DO UPDATE SET {updates}
        WHERE s.updated < EXCLUDED.updated
        RETURNING 1
    """), params).all())
    forget()
    return changed


def copy_subscriptions(source: Connection, target: Connection) -> int:
    """Every subscription of ``source`` onto ``target`` where newer."""
    return apply(target, read_all(source))


# -- the outbox's read side ---------------------------------------------------------------
def enqueue_test(conn: Connection, subscription_id: str) -> int | None:
    """"Send a test": a ``webhook.test`` message to this subscription only (execution
    instance). Returns its id, None when the subscription is not here (not copied yet)."""
    found = conn.execute(text(f"""
        INSERT INTO webhook_outbox (id, subscription_id, name, data)
        SELECT {NEXT_ID_SQL}, s.id, :name, CAST(:data AS jsonb)
        FROM webhook_subscription s WHERE s.id = :id AND NOT s.deleted
        RETURNING id
    """), {"id": subscription_id, "name": TEST,
           "data": json.dumps(test_payload())}).scalar()
    return int(found) if found is not None else None


def replay(conn: Connection, subscription_id: str, *, since: datetime | None = None,
           until: datetime | None = None, event_ids: Sequence[int] | None = None,
           message_ids: Sequence[int] | None = None) -> int:
    """Send again the messages of this subscription that changed in ``[since, until)``,
    or about these (public) event ids, or these message ids: the same ``webhook-id``s
    and bodies, in their order. Returns how many are queued again."""
    where = ["subscription_id = :id"]
    params: dict[str, Any] = {"id": subscription_id}
    if since is not None:
        where.append("occurred_at >= :since")
        params["since"] = since
    if until is not None:
        where.append("occurred_at < :until")
        params["until"] = until
    if event_ids is not None:
        where.append("event_id = ANY(:events)")
        params["events"] = [to_stored(i) for i in event_ids]
    if message_ids is not None:
        where.append("id = ANY(:messages)")
        params["messages"] = [to_stored(i) for i in message_ids]
    if len(where) == 1:
        raise ValueError("a replay needs a time range, event ids or message ids")
    return conn.execute(text(f"""
        UPDATE webhook_outbox SET status = '{WebhookStatus.PENDING}', attempts = 0,
               next_attempt = now(), done_at = NULL
        WHERE {' AND '.join(where)}
    """), params).rowcount


def endpoint_stats(conn: Connection, hours: float = 24.0) -> dict[str, dict[str, Any]]:
    """Per subscription: messages by status, attempts and successful attempts over the
    last ``hours``, the last attempt (execution instance)."""
    stats: dict[str, dict[str, Any]] = {}
    for row in conn.execute(text("""
        SELECT subscription_id, status, count(*) FROM webhook_outbox
        GROUP BY subscription_id, status
    """)):
        stats.setdefault(row[0], {"messages": {}})["messages"][row[1]] = int(row[2])
    for row in conn.execute(text("""
        SELECT subscription_id, count(*) AS attempts,
               count(*) FILTER (WHERE status_code BETWEEN 200 AND 299) AS ok,
               max(attempted_at) AS last
        FROM webhook_attempt
        WHERE attempted_at > now() - make_interval(secs => :secs)
        GROUP BY subscription_id
    """), {"secs": hours * 3600}).mappings():
        entry = stats.setdefault(row["subscription_id"], {"messages": {}})
        entry.update(attempts=int(row["attempts"]), succeeded=int(row["ok"]),
                     lastAttempt=_iso(row["last"]),
                     successRate=round(row["ok"] / row["attempts"], 4)
                     if row["attempts"] else None)
    return stats


def last_attempts(conn: Connection, subscription_id: str,
                  limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute(text("""
        SELECT a.outbox_id, a.attempted_at, a.status_code, a.error, a.duration_ms,
               o.name, o.event_id, o.status
        FROM webhook_attempt a LEFT JOIN webhook_outbox o ON o.id = a.outbox_id
        WHERE a.subscription_id = :id
        ORDER BY a.attempted_at DESC, a.id DESC LIMIT :limit
    """), {"id": subscription_id, "limit": limit}).mappings().all()
    return [{"webhookId": f"msg_{to_public(r['outbox_id'])}", "event": r["name"],
             "eventId": to_public(r["event_id"]) if r["event_id"] is not None else None,
             "at": _iso(r["attempted_at"]), "statusCode": r["status_code"],
             "error": r["error"], "durationMs": r["duration_ms"],
             "messageStatus": r["status"]} for r in rows]


def sync_all(instances: Mapping[int, Engine | str], control: Engine | str) -> dict[str, Any]:
    """Share the subscriptions between the control instance and every execution instance:
    each instance's copy up (an endpoint its dispatcher disabled, with the reason), then
    the control's rows down to each. The newest decision wins everywhere, so a change made
    on the control instance after the disable (enabled again) is kept. An unreachable
    instance is reported in ``errors`` and skipped."""
    hub = control if isinstance(control, Engine) else engine_for(control)
    engines = {cell: e if isinstance(e, Engine) else engine_for(e)
               for cell, e in instances.items()}
    report: dict[str, Any] = {"up": {}, "down": {}, "errors": {}}
    for cell, engine in engines.items():
        try:
            with engine.connect() as source, hub.begin() as target:
                report["up"][str(cell)] = copy_subscriptions(source, target)
        except Exception as exc:  # one unreachable instance must not stop the others
            report["errors"][str(cell)] = f"up: {type(exc).__name__}: {first_line(exc)}"
    for cell, engine in engines.items():
        if str(cell) in report["errors"]:
            continue
        try:
            with hub.connect() as source, engine.begin() as target:
                report["down"][str(cell)] = copy_subscriptions(source, target)
        except Exception as exc:
            report["errors"][str(cell)] = f"down: {type(exc).__name__}: {first_line(exc)}"
    return report
