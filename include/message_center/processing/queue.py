"""Splitting the queue and linking events to templates: set-based SQL, nothing in memory.

**Claim and link, one write per event.** One statement takes up to
``routing_batch_size`` due events (``pending``, ``next_attempt`` passed, ``scheduled``
passed) with ``FOR UPDATE SKIP LOCKED``, so two runs, two workers or a retried task never
take the same event, and in the same ``UPDATE`` links each of them: (event type, wished
channel) is matched to the latest active published template of this execution instance
(a template in the event's language wins over one in another language; then the most
recently published). Matched events get the template name and version, ``pending_delivery``,
a claim ``token`` and a ``shard`` number (round robin); unmatched ones become
``not_taken_into_account`` with the reason and are never looked at again; events that
expired while queued become ``expired``. Claiming and linking used to be two
``UPDATE`` statements; each costs about one full row write (PostgreSQL writes a new row
version per update), so doing both in one statement halves the work. The claim is
persisted on the rows, so it survives between Airflow tasks: only ``(token, shard)``
travels through XCom.

The claim lease is ``next_attempt`` itself: claiming pushes it ``claim_lease_seconds``
into the future (shards renew it while they work), so a claimed event is not due for
anybody else. (An event claimed but left unlinked by an older version is still ``pending``:
it becomes due again when its lease runs out and is claimed and linked then.)

**Stale claims.** An event linked (``pending_delivery``) whose lease ran out and that has
no ledger row in flight or final went through a worker that died before delivering it:
:func:`release_stale_claims` puts it back to ``pending``. Events with a ledger row are
the ledger's business (:mod:`message_center.delivery.ledger`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text

from message_center.claims import ShardClaim, new_token
from message_center.processing.settings import ProcessingSettings
from message_center.statuses import event_table

EXPIRED_REASON = "expired before it could be delivered"


@dataclass(frozen=True)
class ClaimResult:
    """What one claim statement did to the events it took (each written exactly once).

    ``per_shard`` counts the ``pending_delivery`` events per shard number: what the
    shard tasks will deliver.
    """

    linked: int = 0
    not_taken: int = 0
    expired: int = 0
    per_shard: dict[int, int] = field(default_factory=dict)

    @property
    def claimed(self) -> int:
        """Events taken into processing (linked or not taken into account)."""
        return self.linked + self.not_taken

    @property
    def taken(self) -> int:
        """Every due event the statement took, expired ones included."""
        return self.linked + self.not_taken + self.expired


def claim_due(conn: Connection, kind: str, *, token: int, limit: int, lease_seconds: float,
              shards: int = 1, shard_base: int = 0, offset: int = 0) -> ClaimResult:
    """Claim and link up to ``limit`` due events for ``token`` in one statement (see the
    module doc); linked events go to shard ``base + (n + offset) % shards``.

    Due order is ``next_attempt`` (the partial index ``<kind>_event_due_idx``), so the
    oldest events and the retries that are due go first.
    """
    table = event_table(kind)
    rows = conn.execute(text(f"""
        WITH due AS (
            SELECT id, type, wished_channel, language,
                   coalesce(expiration <= now(), false) AS is_expired
            FROM {table}
            WHERE status = 'pending' AND next_attempt <= now()
              AND (scheduled IS NULL OR scheduled <= now())
            ORDER BY next_attempt
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        ), active AS (
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
            SELECT d.id, d.is_expired,
                   coalesce(l.internal_name, a.internal_name) AS internal_name,
                   coalesce(l.version, a.version) AS version
            FROM due d
            LEFT JOIN by_language l ON l.event_type = d.type
                 AND l.channel = d.wished_channel AND l.language = d.language
            LEFT JOIN latest a ON a.event_type = d.type AND a.channel = d.wished_channel
        ), numbered AS (
            -- only linked events are dealt round robin: shards get even deliveries
            SELECT *, row_number() OVER (PARTITION BY is_expired OR internal_name IS NULL
                                         ORDER BY id) - 1 AS n
            FROM matched
        ), claimed AS (
            UPDATE {table} e SET
                claim_token = :token,
                claim_shard = :base + ((m.n + :offset) % :shards),
                processing = now(),
                next_attempt = now() + make_interval(secs => :lease),
                status = CASE WHEN m.is_expired THEN 'expired'
                              WHEN m.internal_name IS NULL THEN 'not_taken_into_account'
                              ELSE 'pending_delivery' END,
                template_name = CASE WHEN m.is_expired THEN e.template_name
                                     ELSE m.internal_name END,
                template_version = CASE WHEN m.is_expired THEN e.template_version
                                        ELSE m.version END,
                processed = CASE WHEN m.is_expired OR m.internal_name IS NULL THEN now()
                                 ELSE e.processed END,
                error_reason = CASE
                    WHEN m.is_expired THEN :expired_reason
                    WHEN m.internal_name IS NULL THEN
                        format('no published %s template for event type %s',
                               e.wished_channel, e.type)
                    ELSE e.error_reason END
            FROM numbered m WHERE e.id = m.id
            RETURNING e.status, e.claim_shard
        )
        SELECT status, claim_shard, count(*) FROM claimed GROUP BY status, claim_shard
    """), {"limit": limit, "token": token, "base": shard_base, "offset": offset,
           "shards": shards, "lease": float(lease_seconds),
           "expired_reason": EXPIRED_REASON}).all()
    counts: dict[str, int] = {}
    per_shard: dict[int, int] = {}
    for status, shard, count in rows:
        counts[status] = counts.get(status, 0) + int(count)
        if status == "pending_delivery":
            per_shard[int(shard)] = int(count)
    return ClaimResult(linked=counts.get("pending_delivery", 0),
                       not_taken=counts.get("not_taken_into_account", 0),
                       expired=counts.get("expired", 0), per_shard=per_shard)


def split_queue(engine: Engine, kind: str, settings: ProcessingSettings,
                token: int | None = None) -> list[ShardClaim]:
    """Claim and link due events in routing batches (one committed transaction each)
    until the queue is empty or ``max_events_per_run`` is reached; return the shards with
    events to deliver and their ``pending_delivery`` counts."""
    token = token or new_token()
    total = offset = 0
    per_shard: dict[int, int] = {}
    while total < settings.max_events_per_run:
        limit = min(settings.routing_batch_size, settings.max_events_per_run - total)
        with engine.begin() as conn:
            result = claim_due(conn, kind, token=token, limit=limit, shards=settings.shards,
                               offset=offset, lease_seconds=settings.claim_lease_seconds)
        total += result.claimed
        offset = (offset + result.linked) % settings.shards
        for shard, count in result.per_shard.items():
            per_shard[shard] = per_shard.get(shard, 0) + count
        if result.taken < limit:
            break
    return [ShardClaim(kind, token, shard, count)
            for shard, count in sorted(per_shard.items()) if count]


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
