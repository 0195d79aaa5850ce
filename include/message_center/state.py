"""One owner of an event's state: every statement that moves an event or its delivery-log row.

An event (``rt_event`` / ``batch_event``) and its delivery-log row (the ledger, one per
event) change status here and nowhere else; the sets of statuses come from
:mod:`message_center.statuses`. Each transition is one named statement below, set-based
(one statement per batch, never per row). The callers decide *when* and *what*:
:mod:`message_center.processing.queue` claims, :mod:`message_center.delivery.ledger`
arms and records outcomes (retry policy, bounces), :mod:`message_center.processing.runner`
gives back and recovers, :mod:`message_center.status_sync` copies outcomes,
:mod:`message_center.delivery.bounce_mail` fails what bounced late. This module calls none
of them. The state machine, drawn: ``docs/architecture/event-state.md``.

Event::

    pending --claim_due--> pending_delivery   (linked and claimed: token, shard, lease)
                      \\--> not_taken_into_account | expired                    (final)
    pending_delivery --release_claim / release_stale_claims------------> pending
                     --release_unsent / release_unhanded (requeue)------> pending
                     --reschedule / record_group (transient failure)---> pending | expired
                     --copy_statuses* / record_group (copy)------------> sent | ignored | failed
    sent --fail_after_bounce--> failed
    (final: failed hard | expired after tries | ignored in quarantine)
        --recycling (same statement)--> a new pending event on the template's fallback
                                         channel (``on_failure``), linked both ways

Delivery-log row::

    (none) | queued | retry --arm--> sending (armed, not handed) | ignored        (final)
    sending --mark_handed / record_group--> sending, handed (``sending_started``)
    sending --write_outcomes / record_group--> sent | failed (final) | retry
                                  (provider down: retry, not handed, attempt not counted)
    sending, not handed --release_unsent / release_unhanded--> retry (attempt not counted)
    sending, handed, worker gone --recover_unknown_outcomes--> failed (outcome unknown)
    sent --fail_after_bounce--> failed

A claim (``claim_token``, ``claim_shard``) is only given back over an event whose ledger
row has not started (:data:`~message_center.statuses.DELIVERY_STARTED`): from then on the
ledger decides, which is what makes a message go out at most once.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, TextClause, text
from sqlalchemy.exc import DBAPIError

from message_center import channel as registry
from message_center import webhook_outbox
from message_center.claims import ShardClaim
from message_center.ids import NEXT_ID_SQL
from message_center.statuses import (
    ARMABLE_DELIVERY,
    DELIVERY_STARTED,
    EVENT_KINDS,
    FINAL_DELIVERY,
    FINAL_EVENT,
    NOTIFY_CHANNELS,
    OPEN_EVENT,
    RECYCLE_AFTER,
    DeliveryStatus,
    EventStatus,
    event_table,
    sql_in,
)

EXPIRED_REASON = "expired before it could be delivered"
UNKNOWN_OUTCOME = (
    "outcome unknown: the worker stopped while this message was being sent; it is not "
    "sent again so that the recipient never gets it twice (look it up at the provider: "
    "e-mail Message-ID <mc.DELIVERY_LOG_ID@sender domain>, SMS reference mc-DELIVERY_LOG_ID)"
)
RELEASED = "not attempted: the worker stopped before sending it"
#: How the ledger's reason for an ignored message starts when the address is in quarantine
#: (recycling tells the *quarantined* outcome by it).
QUARANTINED_PREFIX = "address is in quarantine: "



@functools.lru_cache(maxsize=256)
def _sql(template: str, kind: str | None = None, **parts: str) -> TextClause:
    """Statement ``template`` on event kind ``kind``'s table, ``parts`` filled in, built
    once per process: building a TextClause parses its binds, which costs more CPU than
    the recorder's whole group statement otherwise does on the client."""
    if kind is not None:
        parts["table"] = event_table(kind)
    return text(template.format(**parts))


_NO_WEBHOOKS = {"returning": "", "webhooks": "", "failure": "", "set": ""}


def _webhooks(conn: Connection, kind: str, *sources: str, failure: str = "",
              bounced: bool = False, reported: str = "") -> dict[str, str]:
    """The statement parts that write the webhook outbox (:mod:`message_center.
    webhook_outbox`) for the events the CTEs ``sources`` changed, or empty parts when no
    enabled subscription exists: ``set`` (the event's sequence counter, raised in the
    UPDATE where ``reported``: the SQL condition under which the new status is reported,
    empty: always), ``returning`` (the columns the sources return), ``failure``
    (``failure`` or NULLs: their failure class and reason) and ``webhooks`` (the outbox
    CTEs, after the statement's own)."""
    if not webhook_outbox.active(conn):
        return _NO_WEBHOOKS
    if len(sources) > 1:
        union = " UNION ALL ".join(f"SELECT * FROM {name}" for name in sources)
        ctes = f", wh_sources AS ({union})" + webhook_outbox.outbox_ctes(
            kind, "wh_sources", bounced=bounced)
    else:
        ctes = webhook_outbox.outbox_ctes(kind, sources[0], bounced=bounced)
    return {"returning": webhook_outbox.RETURNING, "set": webhook_outbox.seq_set(reported),
            "failure": failure or webhook_outbox.NO_FAILURE, "webhooks": ctes}


#: SQLSTATE 26000: the prepared statement is not (or no longer) on this connection.
_NO_SUCH_PREPARED = "26000"


@functools.lru_cache(maxsize=64)
def _prepare_sql(template: str, kind: str, types: tuple[tuple[str, str], ...],
                 parts: tuple[tuple[str, str], ...] = ()) -> tuple[str, str, str]:
    """(name, PREPARE, EXECUTE) of ``template`` on ``kind``'s table, ``parts`` filled in:
    ``:name`` binds become ``$n`` of the declared ``types``; the name carries a hash of
    the text, so a connection never runs another variant (or an older statement) of
    the same name."""
    body = template.format(table=event_table(kind), **dict(parts))
    for number, (param, _) in enumerate(types, 1):
        body = re.sub(rf"(?<!:):{param}\b", f"${number}", body)
    digest = hashlib.sha1(body.encode()).hexdigest()[:10]
    name = f"mc_{kind}_{digest}"
    declared = ", ".join(sql_type for _, sql_type in types)
    arguments = ", ".join(f"CAST(%({param})s AS {sql_type})" for param, sql_type in types)
    # Through the driver, whose parameter syntax takes "%": a literal one is doubled.
    prepare = f"PREPARE {name} ({declared}) AS {body}".replace("%", "%%")
    return name, prepare, f"EXECUTE {name}({arguments})"


def _execute_prepared(conn: Connection, template: str, kind: str,
                      types: tuple[tuple[str, str], ...], params: Mapping[str, Any],
                      parts: Mapping[str, str] | None = None) -> Sequence[Any]:
    """Run a hot statement as a server-side prepared statement of this connection.

    The recorder's group statement runs hundreds of times a second per shard: parsing
    and planning it each time cost PostgreSQL about as much as executing it, and
    SQLAlchemy's compilation of a text() clause costs the sender threads the GIL
    (issue 24). Prepared once per database connection (``PREPARE``), then each run is
    one ``EXECUTE`` through the driver; errors still come through SQLAlchemy (a lost
    connection is an ``OperationalError``, as the callers expect)."""
    parts = dict(parts or {})
    info = conn.connection.info
    if info.get("mc_no_prepare"):
        return conn.execute(_sql(template, kind, **parts), dict(params)).all()
    name, prepare, execute = _prepare_sql(template, kind, types, tuple(sorted(parts.items())))
    prepared: set[str] = info.setdefault("mc_prepared", set())
    for _ in range(2):
        if name not in prepared:
            conn.exec_driver_sql(prepare)
            prepared.add(name)
        try:
            return _execute_raw(conn, execute, params)
        except DBAPIError as exc:  # the connection lost it (a reset): prepare again
            # (psycopg2 reports it as an OperationalError, which would otherwise read as
            # "database unreachable")
            if getattr(exc.orig, "pgcode", None) != _NO_SUCH_PREPARED:
                raise
            prepared.discard(name)
    # Lost twice in a row: a pooler between us and PostgreSQL (PgBouncer in transaction
    # mode) hands each statement to another server connection. Plain statements then.
    info["mc_no_prepare"] = True
    return conn.execute(_sql(template, kind, **parts), dict(params)).all()


def _execute_raw(conn: Connection, statement: str, params: Mapping[str, Any]
                 ) -> Sequence[Any]:
    """``statement`` on the driver's own cursor, its rows as tuples. SQLAlchemy built a
    result object (column metadata, row processors) per run of the recorder's group
    statement, the largest share of the writer thread's CPU under the GIL (issue 24); a
    driver error is still raised as SQLAlchemy's (``OperationalError`` for a lost
    connection, as the callers expect)."""
    return _on_driver_cursor(conn, statement, params, as_dicts=False)


def _on_driver_cursor(conn: Connection, statement: str, params: Mapping[str, Any], *,
                      as_dicts: bool) -> list[Any]:
    dbapi = conn.connection.dbapi_connection
    if dbapi is None:  # an invalidated connection: let SQLAlchemy reconnect and report
        result = conn.exec_driver_sql(statement, dict(params))
        return ([dict(row) for row in result.mappings().all()] if as_dicts
                else list(result.all()))
    try:
        with dbapi.cursor() as cursor:
            cursor.execute(statement, params)
            if not cursor.description:
                return []
            if not as_dicts:
                return cursor.fetchall()
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(statement, dict(params), exc,
                                  conn.dialect.loaded_dbapi.Error,
                                  dialect=conn.dialect) from exc


def _driver_sql(conn: Connection, template: str, kind: str | None = None,
                **parts: str) -> str:
    """:func:`_sql`'s statement as the driver takes it (``%(name)s`` binds), compiled
    once per process (for :func:`_fetch_dicts`)."""
    key = (template, kind, tuple(sorted(parts.items())))
    compiled = _DRIVER_SQL.get(key)
    if compiled is None:
        compiled = _DRIVER_SQL[key] = str(_sql(template, kind, **parts).compile(
            dialect=conn.dialect))
    return compiled


_DRIVER_SQL: dict[tuple[str, str | None, tuple[tuple[str, str], ...]], str] = {}


def _fetch_dicts(conn: Connection, statement: str, params: Mapping[str, Any]
                 ) -> list[dict[str, Any]]:
    """``statement`` (:func:`_driver_sql`) on the driver's cursor, each row a dict by
    column name: a shard arms a chunk of a hundred rows of some thirty columns many times a
    second, and SQLAlchemy's result rows and mappings were half the arming's CPU under
    the GIL (issue 24). Errors come as :func:`_execute_raw`'s do."""
    return _on_driver_cursor(conn, statement, params, as_dicts=True)


# -- fragments every statement that needs them shares -------------------------------------
_OPEN_EVENT = sql_in(OPEN_EVENT)
_ARMABLE = sql_in(ARMABLE_DELIVERY)
_FINAL_DELIVERY = sql_in(FINAL_DELIVERY)
_DELIVERY_STARTED = sql_in(DELIVERY_STARTED)
#: The failure class and reason of ledger row ``d``, for the webhook outbox.
_LOG_FAILURE = ", d.failure_class AS wh_class, d.failure_reason AS wh_reason"

#: Event ``e`` back to the queue: unclaimed and due at once.
_REQUEUE = "status = 'pending', claim_token = NULL, claim_shard = NULL, next_attempt = now()"
#: Event ``e`` has no ledger row whose delivery started: a claim may be given back.
_NOT_STARTED = f"""NOT EXISTS (
              SELECT 1 FROM delivery_log d
              WHERE d.event_kind = :kind AND d.event_id = e.id
                AND d.status IN {_DELIVERY_STARTED})"""
#: Ledger row ``d`` armed but never handed: not sent.
_UNHANDED = "d.status = 'sending' AND d.sending_started IS NULL"
#: ... given back: waiting again, and the attempt it was armed for does not count.
_UNARM = "status = 'retry', attempts = d.attempts - 1, error = :reason"
#: Event ``e`` after a transient failure of ``r`` (``id``: its ledger row, ``delay``,
#: ``give_up``: retries exhausted, ``retry_error``, ``counted``: FALSE when the provider
#: was down, which uses no try): due again after the backoff, or expired.
_RESCHEDULE = """
                status = CASE WHEN r.give_up THEN 'expired' ELSE 'pending' END,
                error_count = e.error_count + CASE WHEN r.counted IS FALSE THEN 0 ELSE 1 END,
                -- not counted: due again at once, in its place (when it was claimed)
                next_attempt = CASE WHEN r.counted IS FALSE
                                    THEN least(coalesce(e.processing, now()), now())
                                    ELSE now() + make_interval(secs => r.delay) END,
                processed = CASE WHEN r.give_up THEN now() ELSE e.processed END,
                error_reason = r.retry_error, delivery_log_id = r.id,
                claim_token = NULL, claim_shard = NULL"""
#: A reschedule reports the events it gives up on (expired), not the ones due again.
_RESCHEDULE_REPORTED = "r.give_up"
#: Event ``e`` takes the final outcome of its ledger row ``d``.
_COPY = """
                status = d.status, processed = d.last_modified, delivery_log_id = d.id,
                error_reason = CASE WHEN d.status = 'sent' THEN NULL ELSE d.error END"""


# == event: recycling after a failed delivery ===============================================
# A final failure (hard, retries exhausted, quarantined; never "unknown": the message may
# have arrived) of an event whose template has ``on_failure`` creates a new event on the
# fallback channel, from the same ctx, in the very statement that writes the final status
# (no window in which a crash could lose it or a retry make two). The primary key of
# ``event_recycling`` (one row per event) makes it exactly once whoever writes the status
# again (a backfill, a retried task); a recycled event (``recycled_from`` set) is never
# recycled itself. An event without the fallback channel's address (or whose fallback
# template is not published) gets a link row with the reason and no new event.
_OUTCOME_HARD = "hard"
_OUTCOME_EXHAUSTED = "retries_exhausted"
_OUTCOME_QUARANTINED = "quarantined"
assert (_OUTCOME_HARD, _OUTCOME_EXHAUSTED, _OUTCOME_QUARANTINED) == RECYCLE_AFTER
#: A final event row's recycling outcome from its status, its ledger row's failure class
#: (``c``) and error (``r``): SQL over columns ``status``, ``failure_class``, ``error``.
_OUTCOME_SQL = f"""CASE WHEN status = 'failed' AND failure_class = '{_OUTCOME_HARD}'
                     THEN '{_OUTCOME_HARD}'
                     WHEN status = 'expired' THEN '{_OUTCOME_EXHAUSTED}'
                     WHEN status = 'ignored' AND starts_with(error, '{QUARANTINED_PREFIX}')
                     THEN '{_OUTCOME_QUARANTINED}' END"""


@functools.cache
def _recycle(kind: str, source: str) -> str:
    """CTEs (to append to a ``WITH``) recycling the events of CTE ``source`` (columns
    ``id``, ``outcome``: NULL where nothing is to be done) on event kind ``kind``."""
    table = event_table(kind)
    channel = "t.on_failure ->> 'channel'"
    address = registry.event_address_sql("e", channel)
    nouns = " ".join(f"WHEN '{c.name}' THEN '{c.address_noun}'"
                     for c in registry.all_channels())
    return f"""
        , rc_src AS MATERIALIZED (
            SELECT e.id, f.outcome, e.email, e.mobile_phone, e.address, e.external_id,
                   e.language, e.country, e.origin, e.ctx, e.expiration, e.sandbox,
                   {channel} AS channel, t.on_failure ->> 'template' AS fallback,
                   (SELECT p.event_type FROM published_template p
                    WHERE p.internal_name = t.on_failure ->> 'template' AND p.active
                      AND p.channel = {channel}
                    ORDER BY p.version DESC LIMIT 1) AS fallback_type,
                   nullif(btrim({address}), '') AS fallback_address
            FROM {source} f
            JOIN {table} e ON e.id = f.id
            JOIN published_template t
              ON t.internal_name = e.template_name AND t.version = e.template_version
            WHERE f.outcome IS NOT NULL AND e.recycled_from IS NULL
              AND t.on_failure -> 'after' @> jsonb_build_array(f.outcome)
        ), rc_link AS (
            INSERT INTO event_recycling (event_kind, event_id, recycled_id, channel,
                                         outcome, reason)
            SELECT '{kind}', s.id,
                   CASE WHEN s.fallback_type IS NULL OR s.fallback_address IS NULL
                        THEN NULL ELSE {NEXT_ID_SQL} END,
                   s.channel, s.outcome,
                   CASE WHEN s.fallback_type IS NULL
                        THEN 'not recycled: the fallback template ' || s.fallback
                             || ' is not published for ' || s.channel
                        WHEN s.fallback_address IS NULL
                        THEN 'not recycled: no ' || (CASE s.channel {nouns} ELSE s.channel
                             END) || ' address on the event' END
            FROM rc_src s
            ON CONFLICT (event_kind, event_id) DO NOTHING
            RETURNING event_id, recycled_id
        ), rc_new AS (
            INSERT INTO {table} (id, type, email, mobile_phone, address, wished_channel,
                                 external_id, language, country, origin, ctx, expiration,
                                 recycled_from, sandbox)
            SELECT l.recycled_id, s.fallback_type, s.email, s.mobile_phone, s.address,
                   s.channel, s.external_id, s.language, s.country, s.origin, s.ctx,
                   s.expiration, s.id, s.sandbox
            FROM rc_link l JOIN rc_src s ON s.id = l.event_id
            WHERE l.recycled_id IS NOT NULL
            RETURNING id
        )"""


# == event: claim and link =================================================================
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


CLAIM_AND_LINK = """
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
                    ELSE e.error_reason END{set}
            FROM numbered m WHERE e.id = m.id
            RETURNING e.status, e.claim_shard{returning}{failure}
        ){webhooks}
        SELECT status, claim_shard, count(*) FROM claimed GROUP BY status, claim_shard
"""


#: A claim reports the events it ends (expired, not taken), not the ones it links.
_CLAIM_REPORTED = "m.is_expired OR m.internal_name IS NULL"


def claim_due(conn: Connection, kind: str, *, token: int, limit: int, lease_seconds: float,
              shards: int = 1, shard_base: int = 0, offset: int = 0) -> ClaimResult:
    """``pending`` -> ``pending_delivery`` | ``not_taken_into_account`` | ``expired``: claim
    and link up to ``limit`` due events for ``token`` in one statement (see
    :mod:`message_center.processing.queue`); linked events go to shard
    ``base + (n + offset) % shards``.

    Due order is ``next_attempt`` (the partial index ``<kind>_event_due_idx``), so the
    oldest events and the retries that are due go first.
    """
    rows = conn.execute(_sql(CLAIM_AND_LINK, kind, **_webhooks(
            conn, kind, "claimed", reported=_CLAIM_REPORTED)), {
        "limit": limit, "token": token, "base": shard_base, "offset": offset,
        "shards": shards, "lease": float(lease_seconds),
        "expired_reason": EXPIRED_REASON}).all()
    counts: dict[str, int] = {}
    per_shard: dict[int, int] = {}
    for status, shard, count in rows:
        counts[status] = counts.get(status, 0) + int(count)
        if status == EventStatus.PENDING_DELIVERY:
            per_shard[int(shard)] = int(count)
    return ClaimResult(linked=counts.get(EventStatus.PENDING_DELIVERY, 0),
                       not_taken=counts.get(EventStatus.NOT_TAKEN_INTO_ACCOUNT, 0),
                       expired=counts.get(EventStatus.EXPIRED, 0), per_shard=per_shard)


RENEW_LEASE = f"""
        UPDATE {{table}} SET next_attempt = now() + make_interval(secs => :lease)
        WHERE claim_token = :token AND claim_shard = :shard
          AND status IN {_OPEN_EVENT}
"""


def renew_lease(conn: Connection, claim: ShardClaim, lease_seconds: float) -> int:
    """Keep a long-running shard's remaining events claimed (pushes their lease forward)."""
    return conn.execute(_sql(RENEW_LEASE, claim.kind), {
        "token": claim.token, "shard": claim.shard,
        "lease": float(lease_seconds)}).rowcount


# == event: give a claim back ==============================================================
RELEASE_CLAIM = f"""
        UPDATE {{table}} e SET {_REQUEUE}
        WHERE e.claim_token = :token AND e.claim_shard = :shard
          AND e.status IN {_OPEN_EVENT}
          AND {_NOT_STARTED}
"""
RELEASE_STALE_CLAIMS = f"""
        UPDATE {{table}} e SET {_REQUEUE}
        WHERE e.status = 'pending_delivery' AND e.next_attempt <= now()
          AND {_NOT_STARTED}
"""
RELEASE_EVENTS = f"""
            UPDATE {{table}} e SET {_REQUEUE}
            WHERE e.id = ANY(:ids) AND e.status = 'pending_delivery'
"""


def release_claim(conn: Connection, claim: ShardClaim) -> int:
    """Give a stopping shard's untouched events back to the queue at once (no waiting for
    the lease): claimed or linked events with no ledger row in flight or final."""
    return conn.execute(_sql(RELEASE_CLAIM, claim.kind), {
        "token": claim.token, "shard": claim.shard, "kind": claim.kind}).rowcount


def release_stale_claims(conn: Connection, kind: str) -> int:
    """Linked events whose worker died before their delivery started go back to pending
    (lease run out, no ledger row in flight or final)."""
    return conn.execute(_sql(RELEASE_STALE_CLAIMS, kind), {"kind": kind}).rowcount


def _release_events(conn: Connection, kind: str, event_ids: Sequence[int]) -> None:
    if event_ids:
        conn.execute(_sql(RELEASE_EVENTS, kind), {"ids": list(event_ids)})


# == ledger row: arm, hand =================================================================
ARM = f"""
        WITH chunk AS MATERIALIZED (
            SELECT e.id, e.wished_channel AS channel, e.template_name, e.template_version,
                   {{address}} AS address, (e.sandbox OR :sandbox) AS sandbox
            FROM {{table}} e
            WHERE e.claim_token = :token AND e.claim_shard = :shard
              AND e.status = 'pending_delivery' AND e.id > :after
            ORDER BY e.id LIMIT :limit
        ), decided AS MATERIALIZED (
            SELECT c.*, {{ignore_reason}} AS ignore_reason
            FROM chunk c
        ), marked AS (
            INSERT INTO delivery_log AS d (id, event_kind, event_id, template_name,
                template_version, channel, address, status, attempts, error, sending_started,
                sandbox)
            SELECT {NEXT_ID_SQL}, :kind, id, template_name, template_version, channel, address,
                   CASE WHEN ignore_reason IS NULL THEN 'sending' ELSE 'ignored' END,
                   CASE WHEN ignore_reason IS NULL THEN 1 ELSE 0 END,
                   ignore_reason, NULL, sandbox
            FROM decided
            ON CONFLICT (event_kind, event_id) DO UPDATE SET
                status = EXCLUDED.status, attempts = d.attempts + EXCLUDED.attempts,
                error = EXCLUDED.error, address = EXCLUDED.address,
                template_name = EXCLUDED.template_name,
                template_version = EXCLUDED.template_version,
                sending_started = EXCLUDED.sending_started,
                sandbox = d.sandbox OR EXCLUDED.sandbox
            WHERE d.status IN {_ARMABLE}
            RETURNING d.id, d.event_id, d.status, d.attempts, d.channel, d.address,
                      d.template_name, d.template_version, d.sandbox
        ){{sandbox_events}}
        SELECT c.id AS chunk_event_id, m.id AS log_id, m.event_id, m.status AS log_status,
               m.attempts, m.channel, m.address, m.template_name, m.template_version,
               m.sandbox, {{columns}}
        FROM chunk c
        LEFT JOIN marked m ON m.event_id = c.id
        LEFT JOIN {{table}} e ON e.id = m.event_id
        LEFT JOIN published_template t
               ON t.internal_name = m.template_name AND t.version = m.template_version
        ORDER BY c.id
"""


# On an instance in sandbox mode the events armed become sandbox events too (webhooks and
# the API report it from the event); a production instance's statement has no such write.
_SANDBOX_EVENTS = """, sandboxed AS (
            UPDATE {table} e SET sandbox = true
            FROM marked m WHERE m.sandbox AND e.id = m.event_id AND NOT e.sandbox
        )"""


def arm(conn: Connection, claim: ShardClaim, *, after: int, limit: int, address: str,
        ignore_reason: str, columns: str, params: Mapping[str, Any] | None = None,
        sandbox: bool = False) -> list[dict[str, Any]]:
    """Ledger row (none) | ``queued`` | ``retry`` -> ``sending`` (armed, not handed) or
    ``ignored`` (final): the shard's next ``limit`` linked events after id ``after`` (keyset
    paging on the claim index), one row per chunk event, in id order.

    A compare-and-set (``ON CONFLICT ... WHERE`` the row is armable): of two workers racing
    for an event exactly one arms it; the other gets ``log_id`` NULL. What the delivery
    knows is given as SQL expressions by :func:`message_center.delivery.ledger.start_sending`:
    ``address`` (over event ``e``), ``ignore_reason`` (over the chunk row ``c``: why not to
    send, or NULL) and ``columns`` (event ``e`` and template ``t`` columns to send with);
    ``params``: the bind parameters those expressions use, if any. ``sandbox``: this
    instance is in sandbox mode, every row armed is a sandbox delivery (and its event a
    sandbox event); otherwise only the events pushed as sandbox ones are. Once a
    sandbox row, always one (a retry never goes out for real).
    """
    parts = {"address": address, "ignore_reason": ignore_reason, "columns": columns,
             "sandbox_events": _SANDBOX_EVENTS.format(table=event_table(claim.kind))
             if sandbox else ""}
    return _fetch_dicts(conn, _driver_sql(conn, ARM, claim.kind, **parts), {
        **(params or {}), "after": after, "limit": limit, "token": claim.token,
        "shard": claim.shard, "kind": claim.kind, "sandbox": sandbox})


# In the statements below, "(d.status = 'sending') IS TRUE" is "d.status = 'sending'" that
# the planner cannot match to the partial index delivery_log_sending_idx: they touch a few
# rows by primary key, where a scan of every row in flight would cost far more (stale
# statistics make the tiny-looking partial index tempting).
MARK_HANDED = """
        UPDATE delivery_log d SET sending_started = coalesce(d.sending_started,
                                                             clock_timestamp())
        FROM {table} e
        WHERE d.id = ANY(CAST(:ids AS bigint[])) AND (d.status = 'sending') IS TRUE
          AND d.event_kind = :kind AND e.id = d.event_id
          AND e.claim_token = :token AND e.claim_shard = :shard
          AND (e.status = 'pending_delivery') IS TRUE
        RETURNING d.id
"""


def mark_handed(conn: Connection, claim: ShardClaim, log_ids: Sequence[int]) -> set[int]:
    """Step 2 of the ledger: these armed rows are about to reach the provider
    (``sending_started`` is the time). Only rows still armed for this very claim are
    marked: a row released meanwhile is not (released rows lose their claim token;
    re-arming needs a new claim). Idempotent (a retry after a commit whose answer was
    lost keeps the first time). Returns the ids marked."""
    if not log_ids:
        return set()
    return set(conn.execute(_sql(MARK_HANDED, claim.kind), {
        "ids": list(log_ids), "kind": claim.kind, "token": claim.token,
        "shard": claim.shard}).scalars())


# == ledger row: outcomes; event: reschedule, copy =========================================
WRITE_OUTCOMES = """
        UPDATE delivery_log d SET
            status = v.status, error = v.error, provider_id = coalesce(v.provider_id,
                                                                      d.provider_id),
            sent_at = CASE WHEN v.status = 'sent' THEN clock_timestamp() ELSE d.sent_at END,
            failure_class = v.failure_class, failure_reason = v.failure_reason
        FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]),
                    CAST(:errors AS text[]), CAST(:providers AS text[]),
                    CAST(:classes AS text[]), CAST(:reasons AS text[]))
             AS v(id, status, error, provider_id, failure_class, failure_reason)
        WHERE d.id = v.id AND (d.status = 'sending') IS TRUE
"""
RESCHEDULE = f"""
        WITH rescheduled AS (
            UPDATE {{table}} e SET{_RESCHEDULE}{{set}}
            FROM unnest(CAST(:ids AS bigint[]), CAST(:logs AS bigint[]),
                        CAST(:delays AS float8[]), CAST(:give_up AS boolean[]),
                        CAST(:errors AS text[]), CAST(:counted AS boolean[]))
                 AS r(event_id, id, delay, give_up, retry_error, counted)
            WHERE e.id = r.event_id AND e.status = 'pending_delivery'
            RETURNING e.id, e.status AS rc_status{{returning}}{{failure}}
        ){{webhooks}}, rc_fin AS (
            SELECT id, CASE WHEN rc_status = 'expired' THEN '{_OUTCOME_EXHAUSTED}' END
                       AS outcome
            FROM rescheduled
        ){{recycle}}
        SELECT count(*) FROM rescheduled
"""


def write_outcomes(conn: Connection, *, ids: Sequence[int], statuses: Sequence[str],
                   errors: Sequence[str | None], providers: Sequence[str | None],
                   classes: Sequence[str | None], reasons: Sequence[str | None]) -> None:
    """Ledger row ``sending`` -> ``sent`` | ``failed`` | ``retry`` (step 4), one entry per
    row in each array (rows no longer ``sending`` are left alone). Transient ones are
    then rescheduled (:func:`reschedule`); :func:`record_group` does both and the mark in
    one statement."""
    conn.execute(_sql(WRITE_OUTCOMES), {
        "ids": list(ids), "statuses": list(statuses), "errors": list(errors),
        "providers": list(providers), "classes": list(classes), "reasons": list(reasons)})


def reschedule(conn: Connection, kind: str, *, event_ids: Sequence[int],
               log_ids: Sequence[int], delays: Sequence[float], give_up: Sequence[bool],
               errors: Sequence[str], counted: Sequence[bool]) -> None:
    """Event ``pending_delivery`` -> ``pending`` after a transient failure (``error_count
    + 1``, due again after its delay, claim dropped; the ledger row stays in ``retry``, so
    the next attempt re-arms the same row) or ``expired`` where ``give_up`` (retries
    exhausted). Where not ``counted`` (the provider was down) no try is used: due again
    at once, in its place."""
    if event_ids:
        conn.execute(_sql(RESCHEDULE, kind, **_webhooks(conn, kind, "rescheduled",
                                                        reported=_RESCHEDULE_REPORTED),
                          recycle=_recycle(kind, "rc_fin")), {
            "ids": list(event_ids), "logs": list(log_ids), "delays": list(delays),
            "give_up": list(give_up), "errors": list(errors), "counted": list(counted)})


RECORD_GROUP = f"""
        WITH v AS MATERIALIZED (
            SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:marks AS boolean[]),
                                 CAST(:statuses AS text[]), CAST(:errors AS text[]),
                                 CAST(:providers AS text[]), CAST(:delays AS float8[]),
                                 CAST(:give_up AS boolean[]), CAST(:retry_errors AS text[]),
                                 CAST(:classes AS text[]), CAST(:reasons AS text[]),
                                 CAST(:counted AS boolean[]))
                 AS v(id, mark, status, error, provider_id, delay, give_up, retry_error,
                      failure_class, failure_reason, counted)
        ), rec AS (
            UPDATE delivery_log d SET
                sending_started = CASE WHEN v.counted IS FALSE THEN NULL
                                       WHEN v.mark THEN coalesce(d.sending_started,
                                                                 clock_timestamp())
                                       ELSE d.sending_started END,
                attempts = d.attempts - CASE WHEN v.counted IS FALSE THEN 1 ELSE 0 END,
                status = coalesce(v.status, d.status),
                error = CASE WHEN v.status IS NULL THEN d.error ELSE v.error END,
                provider_id = coalesce(v.provider_id, d.provider_id),
                sent_at = CASE WHEN v.status = 'sent' THEN clock_timestamp()
                               ELSE d.sent_at END,
                failure_class = CASE WHEN v.status IS NULL THEN d.failure_class
                                     ELSE v.failure_class END,
                failure_reason = CASE WHEN v.status IS NULL THEN d.failure_reason
                                      ELSE v.failure_reason END
            FROM v, {{table}} e
            WHERE d.id = ANY(CAST(:ids AS bigint[])) AND d.id = v.id
              AND (d.status = 'sending') IS TRUE AND (d.event_kind = :kind) IS TRUE
              AND e.id = ANY(CAST(:event_ids AS bigint[]))
              AND e.id = d.event_id AND (e.status = 'pending_delivery') IS TRUE
              AND e.claim_token = :token AND e.claim_shard = :shard
            RETURNING d.id, d.event_id, d.status, d.error, d.last_modified, v.mark,
                      v.delay, v.give_up, v.retry_error, v.counted,
                      d.failure_class AS rc_class{{rec_failure}}
        ), rescheduled AS (
            UPDATE {{table}} e SET{_RESCHEDULE}{{set}}
            FROM rec r WHERE r.delay IS NOT NULL AND e.id = r.event_id
            RETURNING e.id, e.status AS rc_status, NULL::text AS rc_class,
                      NULL::text AS rc_error{{returning}}{{failure}}
        ), copied AS (
            UPDATE {{table}} e SET{_COPY}{{copied_set}}
            FROM rec d WHERE :copy AND d.delay IS NULL
              AND d.status IN {_FINAL_DELIVERY} AND e.id = d.event_id
            RETURNING e.id, e.status AS rc_status, d.rc_class,
                      d.error AS rc_error{{returning}}{{copied_failure}}
        ){{webhooks}}, rc_fin AS (
            SELECT id, {_OUTCOME_SQL} AS outcome
            FROM (SELECT id, rc_status AS status, rc_class AS failure_class,
                         rc_error AS error FROM rescheduled
                  UNION ALL
                  SELECT id, rc_status, rc_class, rc_error FROM copied) AS f
        ){{recycle}}
        SELECT r.id, r.mark FROM rec r
"""


def record_group(conn: Connection, claim: ShardClaim, *, ids: Sequence[int],
                 event_ids: Sequence[int], marks: Sequence[bool], statuses: Sequence[str | None],
                 errors: Sequence[str | None], providers: Sequence[str | None],
                 delays: Sequence[float | None], give_up: Sequence[bool | None],
                 retry_errors: Sequence[str | None], classes: Sequence[str | None],
                 reasons: Sequence[str | None], counted: Sequence[bool | None],
                 copy: bool) -> Sequence[Any]:
    """:func:`mark_handed`, :func:`write_outcomes`, :func:`reschedule` and (``copy``)
    :func:`copy_statuses` in ONE statement, the recorder's group commit: one entry per
    ledger row in each array (NULL where it does not apply: a mark without an outcome, an
    outcome that is not a retry). Only rows still ``sending`` for this very claim are
    written. Returns ``(log id, marked)`` of the rows written.

    ``event_ids`` (each row's event) let the prepared statement's generic plan find the
    rows by primary key whatever the statistics said when it was made: planned on an
    empty ledger (a new or truncated table) it otherwise scanned the whole table on every
    group as it grew (issue 24)."""
    parts = _webhooks(conn, claim.kind, "rescheduled", "copied",
                      reported=_RESCHEDULE_REPORTED)
    on = bool(parts["webhooks"])
    parts = {**parts, "recycle": _recycle(claim.kind, "rc_fin"),
             "copied_set": webhook_outbox.seq_set() if on else "",
             "rec_failure": _LOG_FAILURE if on else "",
             "copied_failure": ", d.wh_class, d.wh_reason" if on else ""}
    return _execute_prepared(conn, RECORD_GROUP, claim.kind, _RECORD_GROUP_TYPES, {
        "ids": list(ids), "event_ids": list(event_ids), "marks": list(marks),
        "statuses": list(statuses),
        "errors": list(errors), "providers": list(providers), "delays": list(delays),
        "give_up": list(give_up), "retry_errors": list(retry_errors),
        "classes": list(classes), "reasons": list(reasons), "counted": list(counted),
        "kind": claim.kind, "token": claim.token, "shard": claim.shard, "copy": copy},
        parts)


_RECORD_GROUP_TYPES = (
    ("ids", "bigint[]"), ("event_ids", "bigint[]"), ("marks", "boolean[]"),
    ("statuses", "text[]"),
    ("errors", "text[]"), ("providers", "text[]"), ("delays", "float8[]"),
    ("give_up", "boolean[]"), ("retry_errors", "text[]"), ("classes", "text[]"),
    ("reasons", "text[]"), ("counted", "boolean[]"), ("kind", "text"),
    ("token", "bigint"), ("shard", "smallint"), ("copy", "boolean"))


COPY_STATUSES = f"""
        WITH copied AS (
            UPDATE {{table}} e SET{_COPY}{{set}}
            FROM delivery_log d
            WHERE {{where}} AND d.event_kind = :kind
              AND d.status IN {_FINAL_DELIVERY}
              AND e.id = d.event_id AND e.status = 'pending_delivery'
            RETURNING e.status, e.id AS rc_id, d.failure_class AS rc_class,
                      d.error AS rc_error{{returning}}{{failure}}
        ){{webhooks}}, rc_fin AS (
            SELECT rc_id AS id, {_OUTCOME_SQL} AS outcome
            FROM (SELECT rc_id, status, rc_class AS failure_class, rc_error AS error
                  FROM copied) AS f
        ){{recycle}}
        SELECT status, count(*) FROM copied GROUP BY status
"""


def _copy(conn: Connection, kind: str, where: str, params: dict[str, Any]) -> dict[str, int]:
    rows = conn.execute(_sql(COPY_STATUSES, kind, where=where, **_webhooks(
                            conn, kind, "copied", failure=_LOG_FAILURE),
                             recycle=_recycle(kind, "rc_fin")),
                        {**params, "kind": kind}).all()
    return {status: int(count) for status, count in rows}


def copy_statuses(conn: Connection, kind: str, log_ids: Sequence[int]) -> int:
    """Event ``pending_delivery`` -> the final outcome of its ledger row (``sent`` |
    ``ignored`` | ``failed``), for these delivery-log rows; returns how many. Only events
    still ``pending_delivery`` are touched: idempotent, and an event that moved on (expired
    after its last retry) keeps its status. ``processed`` is when the ledger recorded it."""
    if not log_ids:
        return 0
    return sum(_copy(conn, kind, "d.id = ANY(:ids)", {"ids": list(log_ids)}).values())


def copy_statuses_for_events(conn: Connection, kind: str, event_ids: Sequence[int]) -> int:
    """Same, looked up by event id (events whose ledger row was finalised elsewhere)."""
    if not event_ids:
        return 0
    return sum(_copy(conn, kind, "d.event_id = ANY(:ids)", {"ids": list(event_ids)}).values())


def copy_statuses_between(conn: Connection, kind: str, low: datetime | None,
                          high: datetime) -> dict[str, int]:
    """Same, for every ledger row last modified in ``(low, high]`` (``low`` None: from the
    start): updateEventStatus' batch. Returns the count per status copied."""
    where = ("(CAST(:low AS timestamptz) IS NULL OR d.last_modified > :low) "
             "AND d.last_modified <= :high")
    return _copy(conn, kind, where, {"low": low, "high": high})


# == ledger row: give back what was armed and never handed =================================
RELEASE_UNSENT = f"""
        UPDATE delivery_log d SET {_UNARM}
        WHERE d.id = ANY(:ids) AND {_UNHANDED}
        RETURNING d.event_id
"""
#: The rows armed and never handed are found first (delivery_log_sending_idx: a few
#: chunks per live shard at most), then each one's event by primary key: a scalar
#: sub-select, which the planner evaluates per ledger row and cannot turn into a join.
#: Written as a join, it started from the claim's events - 250,000 at the start of a
#: 1,000,000-event drain, estimated at one row because the statistics predate the claim
#: - and scanned the ledger once per event: seconds to minutes per shard (issue 24).
RELEASE_UNHANDED = f"""
        UPDATE delivery_log d SET {_UNARM}
        WHERE {_UNHANDED} AND d.event_kind = :kind
          AND (SELECT true FROM {{table}} e
               WHERE e.id = d.event_id AND e.status = 'pending_delivery' AND {{owner}}) IS TRUE
        RETURNING d.event_id
"""


def release_unsent(conn: Connection, kind: str, log_ids: Sequence[int]) -> int:
    """Give back rows armed but never handed to a provider (the worker is stopping): the
    ledger row returns to ``retry`` without counting an attempt and the event is due
    again at once, so a graceful stop leaves no unknown outcome behind. Rows already
    handed (step 2) are left alone."""
    if not log_ids:
        return 0
    released = list(conn.execute(_sql(RELEASE_UNSENT), {
        "ids": list(log_ids), "reason": RELEASED}).scalars())
    _release_events(conn, kind, released)
    return len(released)


def release_unhanded(conn: Connection, kind: str, claim: ShardClaim | None = None, *,
                     requeue: bool = True) -> int:
    """Give back rows armed (step 1) but never handed (step 2): they were not sent. The
    ledger row returns to ``retry`` without counting an attempt.

    With ``claim``: that claim's rows (its previous try is gone: a task retry). Without:
    rows whose event's claim lease ran out (``next_attempt`` passed while
    ``pending_delivery``), i.e. whose worker died; a live worker renews its lease long
    before. ``requeue`` puts the events back to the queue, due at once; without it they
    stay linked to the claim, for the retried shard task to send them itself. Returns
    how many rows were given back."""
    if claim is not None:
        owner = "e.claim_token = :token AND e.claim_shard = :shard"
        params: dict[str, Any] = {"token": claim.token, "shard": claim.shard}
    else:
        owner, params = "e.next_attempt <= now()", {}
    released = list(conn.execute(_sql(RELEASE_UNHANDED, kind, owner=owner), {
        **params, "kind": kind, "reason": RELEASED}).scalars())
    if requeue:
        _release_events(conn, kind, released)
    return len(released)


# == ledger row: settle what a dead worker handed ==========================================
def _dead_rows(claim: ShardClaim | None) -> tuple[str, dict[str, Any]]:
    """WHERE clause (on delivery_log) of handed rows whose worker is gone. The claim's
    events are probed by primary key from the few handed rows (a scalar sub-select, see
    :data:`RELEASE_UNHANDED`), not listed (``IN``: every event of the claim, 250,000 in a
    1,000,000-event drain)."""
    params: dict[str, Any] = {}
    where = "sending_started < clock_timestamp() - make_interval(secs => :age)"
    if claim is not None:
        where = (f"({where}) OR (event_kind = :kind AND sending_started IS NOT NULL "
                 f"AND (SELECT true FROM {event_table(claim.kind)} e "
                 "WHERE e.id = delivery_log.event_id AND e.claim_token = :token "
                 "AND e.claim_shard = :shard AND e.status = 'pending_delivery') IS TRUE)")
        params.update(kind=claim.kind, token=claim.token, shard=claim.shard)
    return f"status = 'sending' AND ({where})", params


UNKNOWN_ROWS = """
        SELECT id, event_kind, event_id, attempts, channel, address, template_name,
               template_version
        FROM delivery_log WHERE {where} AND channel = ANY(:channels) AND NOT sandbox
        ORDER BY id LIMIT :limit
"""
RECOVER_UNKNOWN = """
        UPDATE delivery_log SET status = 'failed', error = :reason,
               failure_class = 'unknown', failure_reason = 'outcome_unknown'
        WHERE {where}
        RETURNING id
"""


def unknown_rows(conn: Connection, *, older_than_seconds: float, claim: ShardClaim | None,
                 channels: Sequence[str], limit: int) -> Sequence[RowMapping]:
    """The rows :func:`recover_unknown_outcomes` would settle, on these channels (a read:
    what a provider may be asked about first)."""
    where, params = _dead_rows(claim)
    return conn.execute(_sql(UNKNOWN_ROWS, where=where), {
        **params, "age": float(older_than_seconds), "channels": list(channels),
        "limit": limit}).mappings().all()


def recover_unknown_outcomes(conn: Connection, *, older_than_seconds: float,
                             claim: ShardClaim | None = None) -> list[int]:
    """Ledger row ``sending`` (handed, worker dead) -> ``failed`` (failure class
    ``unknown``: outcome unknown); never resent. The caller copies it onto the events
    (:func:`copy_statuses`).

    A row qualifies when it was handed to the provider more than ``older_than_seconds``
    ago (a live worker records an outcome, or gives up trying, before that), or - given
    ``claim`` - when it belongs to that shard's claim: a shard task that starts again
    (Airflow retry) knows its previous try is gone. Rows armed but never handed are not
    unknown: see :func:`release_unhanded`. Returns the log ids.
    """
    where, params = _dead_rows(claim)
    return list(conn.execute(_sql(RECOVER_UNKNOWN, where=where), {
        **params, "age": float(older_than_seconds), "reason": UNKNOWN_OUTCOME}).scalars())


# == ledger row and event: a bounce after "sent" ===========================================
FAIL_SENT_LOGS = """
            UPDATE delivery_log d SET status = 'failed', error = v.error,
                   failure_class = v.class, failure_reason = v.reason
            FROM unnest(CAST(:ids AS bigint[]), CAST(:errors AS text[]),
                        CAST(:classes AS text[]), CAST(:reasons AS text[]))
                 AS v(id, error, class, reason)
            WHERE d.id = v.id AND d.status = 'sent'
            RETURNING d.id, d.event_kind, d.event_id, d.error, d.failure_class,
                      d.failure_reason
"""
FAIL_SENT_EVENTS = """
        WITH bounced AS (
            UPDATE {table} e SET status = 'failed',
                   error_reason = v.error, processed = now(){set}
            FROM unnest(CAST(:events AS bigint[]), CAST(:logs AS bigint[]),
                        CAST(:errors AS text[]), CAST(:classes AS text[]),
                        CAST(:reasons AS text[]))
                 AS v(event_id, log_id, error, class, reason)
            WHERE e.id = v.event_id AND e.delivery_log_id = v.log_id
              AND e.status = 'sent'
            RETURNING e.id, v.class AS rc_class{returning}{failure}
        ){webhooks}, rc_fin AS (
            SELECT id, CASE WHEN rc_class = '""" + _OUTCOME_HARD + """' THEN rc_class END
                       AS outcome
            FROM bounced
        ){recycle}
        SELECT count(*) FROM bounced
"""


def fail_after_bounce(conn: Connection, *, log_ids: Sequence[int], errors: Sequence[str],
                      classes: Sequence[str], reasons: Sequence[str]) -> set[int]:
    """Ledger row and event ``sent`` -> ``failed``: a permanent bounce came back after the
    provider had accepted the message (the bounce mailbox). Rows no longer ``sent`` are
    left alone (a re-read bounce changes nothing). Returns the log ids failed."""
    changed = conn.execute(_sql(FAIL_SENT_LOGS), {
        "ids": list(log_ids), "errors": list(errors), "classes": list(classes),
        "reasons": list(reasons)}).mappings().all()
    for kind in EVENT_KINDS:
        rows = [r for r in changed if r["event_kind"] == kind]
        if rows:
            parts = _webhooks(conn, kind, "bounced", bounced=True,
                              failure=", v.class AS wh_class, v.reason AS wh_reason")
            conn.execute(_sql(FAIL_SENT_EVENTS, kind, **parts,
                              recycle=_recycle(kind, "rc_fin")), {
                "events": [r["event_id"] for r in rows], "logs": [r["id"] for r in rows],
                "errors": [r["error"] for r in rows],
                "classes": [r["failure_class"] for r in rows],
                "reasons": [r["failure_reason"] for r in rows]})
    return {int(r["id"]) for r in changed}


# == event: bulk actions (cancel, retry, replay by filter; message_center.operations) =======
# Each statement takes the next ``limit`` events of ``kind`` that the filter (``where``: an
# SQL predicate over event ``e``, from message_center.operations.filters) selects, that the
# action may change and that this action has not touched yet; it records them in
# ``bulk_action_event`` (its primary key: once per action, whatever re-runs) and moves them,
# all in one statement. Returns how many it moved.
#: Pending and no shard has claimed it (a claimed one is the delivery's business).
CANCELLABLE = "e.status = 'pending' AND e.claim_token IS NULL"
#: The final statuses a retry starts again from.
RETRYABLE_STATUSES = (EventStatus.FAILED, EventStatus.EXPIRED)
#: A ledger row whose message may be out: in flight, or accepted by the provider.
MAY_BE_OUT_DELIVERY = (DeliveryStatus.SENDING, DeliveryStatus.SENT)
#: The ledger rows a bulk retry puts back to ``retry``: failed, or never final.
RETRY_AGAIN_DELIVERY = (DeliveryStatus.FAILED, *ARMABLE_DELIVERY)
#: Failed or expired and known not sent: no ledger row in flight or sent, outcome known
#: (class ``unknown`` only when ``:confirm_unknown``), not past its expiration (unless a
#: new one is given, ``:expiration``), and not recycled into another event already.
RETRYABLE = f"""e.status IN {sql_in(RETRYABLE_STATUSES)}
          AND NOT EXISTS (
              SELECT 1 FROM delivery_log d
              WHERE d.event_kind = :kind AND d.event_id = e.id
                AND (d.status IN {sql_in(MAY_BE_OUT_DELIVERY)}
                     OR (d.status = 'failed' AND d.failure_class = 'unknown'
                         AND NOT :confirm_unknown)))
          AND (e.expiration IS NULL OR e.expiration > now()
               OR CAST(:expiration AS timestamptz) > now())
          AND NOT EXISTS (
              SELECT 1 FROM event_recycling r
              WHERE r.event_kind = :kind AND r.event_id = e.id AND r.recycled_id IS NOT NULL)"""
#: Any final event may be sent again as a new one.
REPLAYABLE = f"e.status IN {sql_in(FINAL_EVENT)}"
#: The failed events whose outcome is unknown (refused without ``confirmUnknown``).
UNKNOWN_OUTCOME_EVENT = """e.status = 'failed' AND EXISTS (
              SELECT 1 FROM delivery_log d
              WHERE d.event_kind = :kind AND d.event_id = e.id
                AND d.status = 'failed' AND d.failure_class = 'unknown')"""
#: Failed or expired events past their expiration (retried only with a new expiration).
PAST_EXPIRATION_EVENT = (f"e.status IN {sql_in(RETRYABLE_STATUSES)} "
                         "AND e.expiration <= now()")

_PICK = """
        picked AS MATERIALIZED (
            SELECT e.id FROM {table} e
            WHERE ({where}) AND ({eligible})
              AND NOT EXISTS (SELECT 1 FROM bulk_action_event b
                              WHERE b.action_id = :action AND b.event_kind = :kind
                                AND b.event_id = e.id)
            ORDER BY e.id LIMIT :limit
            FOR UPDATE OF e SKIP LOCKED
        ), marked AS (
            INSERT INTO bulk_action_event (action_id, event_kind, event_id{new_column})
            SELECT :action, :kind, id{new_value} FROM picked
            ON CONFLICT DO NOTHING
            RETURNING event_id{new_column}
        )"""
CANCEL_PENDING = "WITH" + _PICK + """, cancelled AS (
            UPDATE {table} e SET status = 'expired', processed = now(),
                   error_reason = :reason{set}
            FROM marked m
            WHERE e.id = m.event_id AND e.status = 'pending' AND e.claim_token IS NULL
            RETURNING e.id{returning}{failure}
        ){webhooks}
        SELECT (SELECT count(*) FROM picked), (SELECT count(*) FROM cancelled)
"""
RETRY_FINISHED = "WITH" + _PICK + """, ledger AS (
            UPDATE delivery_log d SET status = 'retry', attempts = 0, error = :reason,
                   failure_class = NULL, failure_reason = NULL, sending_started = NULL
            FROM marked m
            WHERE d.event_kind = :kind AND d.event_id = m.event_id
              AND d.status IN """ + sql_in(RETRY_AGAIN_DELIVERY) + """
            RETURNING d.id
        ), retried AS (
            UPDATE {table} e SET status = 'pending', claim_token = NULL, claim_shard = NULL,
                   next_attempt = now(), processed = NULL, error_count = 0,
                   error_reason = NULL,
                   expiration = coalesce(CAST(:expiration AS timestamptz), e.expiration)
            FROM marked m
            WHERE e.id = m.event_id AND e.status IN """ + sql_in(RETRYABLE_STATUSES) + """
            RETURNING e.id
        )
        SELECT (SELECT count(*) FROM picked), (SELECT count(*) FROM retried)
"""
REPLAY_FINISHED = "WITH" + _PICK + """, replayed AS (
            INSERT INTO {table} (id, type, email, mobile_phone, address, wished_channel,
                                 external_id, language, country, origin, ctx, expiration,
                                 next_attempt, replayed_from, sandbox, attachments)
            SELECT m.new_id, e.type, e.email, e.mobile_phone, e.address, e.wished_channel,
                   e.external_id, e.language, e.country, e.origin, e.ctx,
                   coalesce(CAST(:expiration AS timestamptz),
                            CASE WHEN e.expiration > now() THEN e.expiration END),
                   now(), e.id, e.sandbox, e.attachments
            FROM marked m JOIN {table} e ON e.id = m.event_id
            RETURNING id, replayed_from
        ), replayed_files AS (
            -- the files the event brought go with its replay (their bytes copied once)
            INSERT INTO event_attachment (event_kind, event_id, position, content)
            SELECT a.event_kind, r.id, a.position, a.content
            FROM replayed r
            JOIN event_attachment a ON a.event_kind = :kind AND a.event_id = r.replayed_from
        )
        SELECT (SELECT count(*) FROM picked), (SELECT count(*) FROM replayed)
"""
#: What each bulk action may change (a predicate over event ``e``).
BULK_ELIGIBLE = {"cancel": CANCELLABLE, "retry": RETRYABLE, "replay": REPLAYABLE}


def bulk_step(conn: Connection, action: str, kind: str, *, action_id: str, where: str,
              params: Mapping[str, Any], limit: int, reason: str,
              confirm_unknown: bool = False,
              expiration: datetime | None = None) -> tuple[int, int]:
    """One batch of bulk action ``action`` (``cancel``: ``pending`` -> ``expired`` with
    ``reason``, unclaimed events only; ``retry``: ``failed`` | ``expired`` -> ``pending``,
    its ledger row back to ``retry`` with its attempts reset; ``replay``: a new pending
    event from a final one's body, ``replayed_from`` linking it) over up to ``limit``
    events of ``kind`` selected by ``where``. Returns (events picked, events moved); 0
    picked: nothing left for this action (locked rows are skipped, the caller counts
    again). The NOTIFY wakes the real-time shards for retried or replayed events."""
    template = {"cancel": CANCEL_PENDING, "retry": RETRY_FINISHED,
                "replay": REPLAY_FINISHED}[action]
    new_column, new_value = ("", "")
    parts: dict[str, str] = _NO_WEBHOOKS
    if action == "replay":
        new_column, new_value = ", new_id", f", {NEXT_ID_SQL}"
    if action == "cancel":
        parts = _webhooks(conn, kind, "cancelled")
    statement = _sql(template, kind, where=where, eligible=BULK_ELIGIBLE[action],
                     new_column=new_column, new_value=new_value, **parts)
    picked, moved = conn.execute(statement, {
        **params, "action": action_id, "kind": kind, "limit": limit, "reason": reason,
        "confirm_unknown": confirm_unknown, "expiration": expiration}).one()
    if moved and action != "cancel":
        conn.execute(text("SELECT pg_notify(:channel, '')"),
                     {"channel": NOTIFY_CHANNELS[kind]})
    return int(picked), int(moved)
