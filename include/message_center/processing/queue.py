"""Splitting the queue and linking events to templates: set-based SQL, nothing in memory.

**Claim.** One statement takes up to ``routing_batch_size`` due events (``pending``,
``next_attempt`` passed, ``scheduled`` passed) with ``FOR UPDATE SKIP LOCKED``, so two
runs, two workers or a retried task never take the same event, and stamps them with a
claim ``token`` and a ``shard`` number (round robin). The claim is persisted on the rows,
so it survives between Airflow tasks: only ``(token, shard)`` travels through XCom.

The claim lease is ``next_attempt`` itself: claiming pushes it ``claim_lease_seconds``
into the future, so a claimed event is not due for anybody else, and if its worker dies
it becomes due again by itself - no janitor needed for events that were not linked yet.
Events that expired while queued are marked ``expired`` by the same statement.

**Link.** One statement per shard matches (event type, wished channel) to the latest
active published template of this execution instance (a template in the event's
language wins over one in another language; then the most recently published), records
the template name and version and sets ``pending_delivery``. Unmatched events become
``not_taken_into_account`` with the reason and are never looked at again.

**Stale claims.** An event linked (``pending_delivery``) whose lease ran out and that has
no ledger row in flight or final went through a worker that died before delivering it:
:func:`release_stale_claims` puts it back to ``pending``. Events with a ledger row are
the ledger's business (:mod:`message_center.delivery.ledger`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from message_center.processing.settings import ProcessingSettings
from message_center.statuses import event_table

EXPIRED_REASON = "expired before it could be delivered"


def new_token() -> int:
    """A random positive 63-bit claim token (fits a signed bigint)."""
    return secrets.randbits(62) + 1


@dataclass(frozen=True)
class ShardClaim:
    """What a shard task needs to find its events again: small enough for XCom."""

    kind: str
    token: int
    shard: int
    events: int = 0

    def __post_init__(self) -> None:
        event_table(self.kind)  # validates the kind
        if self.shard < 0:
            raise ValueError(f"shard must be >= 0; got {self.shard}")

    def to_xcom(self) -> dict[str, Any]:
        # The token is sent as a string: XCom JSON round-trips are safe for any size.
        return {"kind": self.kind, "token": str(self.token), "shard": self.shard,
                "events": self.events}

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> ShardClaim:
        return cls(kind=str(value["kind"]), token=int(value["token"]),
                   shard=int(value["shard"]), events=int(value.get("events", 0)))


@dataclass(frozen=True)
class ClaimResult:
    claimed: int
    expired: int


@dataclass(frozen=True)
class LinkResult:
    linked: int = 0
    not_taken: int = 0
    expired: int = 0


def claim_due(conn: Connection, kind: str, *, token: int, limit: int, lease_seconds: float,
              shards: int = 1, shard_base: int = 0, offset: int = 0) -> ClaimResult:
    """Claim up to ``limit`` due events for ``token``; shard = base + (n + offset) % shards.

    Due order is ``next_attempt`` (the partial index ``<kind>_event_due_idx``), so the
    oldest events and the retries that are due go first.
    """
    table = event_table(kind)
    row = conn.execute(text(f"""
        WITH due AS (
            SELECT id FROM {table}
            WHERE status = 'pending' AND next_attempt <= now()
              AND (scheduled IS NULL OR scheduled <= now())
            ORDER BY next_attempt
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        ), numbered AS (
            SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM due
        ), claimed AS (
            UPDATE {table} e SET
                claim_token = :token,
                claim_shard = :base + ((numbered.n + :offset) % :shards),
                processing = now(),
                next_attempt = now() + make_interval(secs => :lease),
                status = CASE WHEN e.expiration <= now() THEN 'expired' ELSE 'pending' END,
                processed = CASE WHEN e.expiration <= now() THEN now() ELSE e.processed END,
                error_reason = CASE WHEN e.expiration <= now() THEN :expired_reason
                                    ELSE e.error_reason END
            FROM numbered WHERE e.id = numbered.id
            RETURNING e.status
        )
        SELECT count(*) FILTER (WHERE status = 'pending'),
               count(*) FILTER (WHERE status = 'expired')
        FROM claimed
    """), {"limit": limit, "token": token, "base": shard_base, "offset": offset,
           "shards": shards, "lease": float(lease_seconds),
           "expired_reason": EXPIRED_REASON}).one()
    return ClaimResult(claimed=int(row[0]), expired=int(row[1]))


def split_queue(engine: Engine, kind: str, settings: ProcessingSettings,
                token: int | None = None) -> list[ShardClaim]:
    """Claim due events in routing batches (one committed transaction each) until the
    queue is empty or ``max_events_per_run`` is reached; return the non-empty shards."""
    token = token or new_token()
    total = offset = 0
    while total < settings.max_events_per_run:
        limit = min(settings.routing_batch_size, settings.max_events_per_run - total)
        with engine.begin() as conn:
            result = claim_due(conn, kind, token=token, limit=limit, shards=settings.shards,
                               offset=offset, lease_seconds=settings.claim_lease_seconds)
        total += result.claimed
        offset = (offset + result.claimed) % settings.shards
        if result.claimed + result.expired < limit:
            break
    if total == 0:
        return []
    with engine.connect() as conn:
        counts = conn.execute(text(f"""
            SELECT claim_shard, count(*) FROM {event_table(kind)}
            WHERE claim_token = :token AND status = 'pending'
            GROUP BY claim_shard ORDER BY claim_shard
        """), {"token": token}).all()
    return [ShardClaim(kind, token, int(shard), int(count)) for shard, count in counts]


def link_shard(conn: Connection, claim: ShardClaim) -> LinkResult:
    """Link the shard's claimed events to templates in one statement (see module doc)."""
    table = event_table(claim.kind)
    rows = conn.execute(text(f"""
        WITH active AS (
            SELECT id, internal_name, version, event_type, channel, language
            FROM published_template WHERE active
        ), by_language AS (
            SELECT DISTINCT ON (event_type, channel, language) *
            FROM active WHERE language IS NOT NULL
            ORDER BY event_type, channel, language, id DESC
        ), latest AS (
            SELECT DISTINCT ON (event_type, channel) *
            FROM active ORDER BY event_type, channel, id DESC
        ), matched AS (
            SELECT e.id,
                   coalesce(l.internal_name, a.internal_name) AS internal_name,
                   coalesce(l.version, a.version) AS version,
                   coalesce(e.expiration <= now(), false) AS is_expired
            FROM {table} e
            LEFT JOIN by_language l ON l.event_type = e.type
                 AND l.channel = e.wished_channel AND l.language = e.language
            LEFT JOIN latest a ON a.event_type = e.type AND a.channel = e.wished_channel
            WHERE e.claim_token = :token AND e.claim_shard = :shard AND e.status = 'pending'
        ), linked AS (
            UPDATE {table} e SET
                status = CASE WHEN m.is_expired THEN 'expired'
                              WHEN m.internal_name IS NULL THEN 'not_taken_into_account'
                              ELSE 'pending_delivery' END,
                template_name = m.internal_name,
                template_version = m.version,
                processed = CASE WHEN m.is_expired OR m.internal_name IS NULL THEN now()
                                 ELSE e.processed END,
                error_reason = CASE
                    WHEN m.is_expired THEN :expired_reason
                    WHEN m.internal_name IS NULL THEN
                        format('no published %s template for event type %s',
                               e.wished_channel, e.type)
                    ELSE e.error_reason END
            FROM matched m WHERE e.id = m.id
            RETURNING e.status
        )
        SELECT status, count(*) FROM linked GROUP BY status
    """), {"token": claim.token, "shard": claim.shard,
           "expired_reason": EXPIRED_REASON}).all()
    counts = {status: int(count) for status, count in rows}
    return LinkResult(linked=counts.get("pending_delivery", 0),
                      not_taken=counts.get("not_taken_into_account", 0),
                      expired=counts.get("expired", 0))


def renew_lease(conn: Connection, claim: ShardClaim, lease_seconds: float) -> int:
    """Keep a long-running shard's remaining events claimed (pushes their lease forward)."""
    return conn.execute(text(f"""
        UPDATE {event_table(claim.kind)} SET next_attempt = now() + make_interval(secs => :lease)
        WHERE claim_token = :token AND claim_shard = :shard
          AND status IN ('pending', 'pending_delivery')
    """), {"token": claim.token, "shard": claim.shard, "lease": float(lease_seconds)}).rowcount


def release_stale_claims(conn: Connection, kind: str) -> int:
    """Linked events whose worker died before their delivery started go back to pending."""
    table = event_table(kind)
    return conn.execute(text(f"""
        UPDATE {table} e SET status = 'pending', claim_token = NULL, claim_shard = NULL,
               next_attempt = now()
        WHERE e.status = 'pending_delivery' AND e.next_attempt <= now()
          AND NOT EXISTS (
              SELECT 1 FROM delivery_log d
              WHERE d.event_kind = :kind AND d.event_id = e.id
                AND d.status IN ('sending', 'sent', 'ignored', 'failed'))
    """), {"kind": kind}).rowcount


def release_claim(conn: Connection, claim: ShardClaim) -> int:
    """Give a stopping shard's untouched events back to the queue at once (no waiting for
    the lease): claimed or linked events with no ledger row in flight or final."""
    table = event_table(claim.kind)
    return conn.execute(text(f"""
        UPDATE {table} e SET status = 'pending', claim_token = NULL, claim_shard = NULL,
               next_attempt = now()
        WHERE e.claim_token = :token AND e.claim_shard = :shard
          AND e.status IN ('pending', 'pending_delivery')
          AND NOT EXISTS (
              SELECT 1 FROM delivery_log d
              WHERE d.event_kind = :kind AND d.event_id = e.id
                AND d.status IN ('sending', 'sent', 'ignored', 'failed'))
    """), {"token": claim.token, "shard": claim.shard, "kind": claim.kind}).rowcount
