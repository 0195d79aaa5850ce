"""The delivery log as a ledger: the one place that decides whether a message may be sent.

Every message goes through four committed steps::

    1. start_sending   INSERT ... ON CONFLICT DO UPDATE ... WHERE status IN (queued, retry)
                       -> the row is 'sending', not handed yet (sending_started NULL),
                          or 'ignored' (quarantine, no address)
    2. mark_handed     UPDATE ... SET sending_started = now() WHERE status = 'sending'
                       AND sending_started IS NULL AND the event is still this shard's
                       -> committed before the point of no return (the final "." of SMTP
                          DATA, the gateway request)
    3. (send over SMTP / the SMS gateway)
    4. finalize        UPDATE ... WHERE status = 'sending'
                       -> 'sent' | 'failed' | 'retry' (event back to pending, backoff)

Step 1 is a compare-and-set on the ledger row (one row per event, unique on
``(event_kind, event_id)``): of two runs, two workers or a retried task racing for the
same event, exactly one moves the row to ``sending``; the others get nothing back and
do not send. Step 2 is a compare-and-set too (a row released meanwhile is not handed).
A message is therefore never sent twice by the Message Center.

Steps 2 and 4 are written in grouped commits by the shard's
:class:`~message_center.processing.recorder.OutcomeRecorder`, while the SMTP transaction
runs (MAIL, RCPT, DATA and the content go out before the mark must be committed), so
they cost one commit per group, not one per message, and mostly no waiting.

**Unknown outcome after a crash.** A worker that dies between steps 2 and 4 leaves a
handed row in ``sending``: the message may or may not have reached the provider. We
choose *never send twice*: :func:`recover_unknown_outcomes` marks such rows ``failed``
with the reason "outcome unknown ..." (the Message-ID / SMS reference derived from the
row id tells where to look at the provider) and copies that onto the event; it does
not resend. Because step 2 of the next message commits the outcome of the previous
one, that is at most one message per SMTP session (the one in progress when the worker
died). Rows armed in step 1 but never handed were not sent: :func:`release_unhanded`
gives them back (the retried task re-arms and sends its own claim's at once; a dead
worker's go back to the queue when its claim lease runs out). A shard that is asked to stop
(SIGTERM) or that runs out of time finishes the message in hand and gives the rest
back, leaving nothing unknown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from message_center import channel as registry
from message_center.claims import ShardClaim
from message_center.delivery.outcome import Outcome
from message_center.delivery.quarantine import (
    ACTIVE_SQL,
    DEFAULT_RULES,
    Bounce,
    QuarantineRules,
    record_bounces,
)
from message_center.ids import NEXT_ID_SQL
from message_center.statuses import event_table

UNKNOWN_OUTCOME = (
    "outcome unknown: the worker stopped while this message was being sent; it is not "
    "sent again so that the recipient never gets it twice (look it up at the provider: "
    "e-mail Message-ID <mc.DELIVERY_LOG_ID@sender domain>, SMS reference mc-DELIVERY_LOG_ID)"
)


def _send_columns() -> str:
    """Event columns a template may use, plus the linked template's parts (each
    channel's columns)."""
    parts = sorted({f"t.{column}" for channel in registry.all_channels()
                    for column in channel.template_columns.values()})
    return f"""
        e.type, e.email, e.mobile_phone, e.wished_channel, e.external_id,
        e.language, e.country, e.origin, e.ctx, e.scheduled, e.expiration, e.created,
        t.id AS published_id, t.sender, t.parts{"".join(f", {part}" for part in parts)}
    """


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: ``max_tries`` attempts in all, the n-th retry
    after ``base * 2**(n-1)`` seconds, capped at ``backoff_max_seconds``."""

    max_tries: int = 5
    backoff_base_seconds: float = 60.0
    backoff_max_seconds: float = 3_600.0

    def backoff_seconds(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1`` after ``attempt`` transient failures."""
        return min(self.backoff_base_seconds * 2 ** max(attempt - 1, 0),
                   self.backoff_max_seconds)


@dataclass(frozen=True)
class Attempt:
    """One ledger row moved to ``sending`` by this worker: it is ours to send."""

    log_id: int
    event_id: int
    attempts: int
    channel: str
    address: str
    template_name: str | None
    template_version: int | None
    row: dict[str, Any]


@dataclass(frozen=True)
class Started:
    to_send: list[Attempt]
    ignored_log_ids: list[int]
    # Chunk events whose ledger row was not ours to arm (in flight elsewhere or final).
    skipped_event_ids: list[int]
    # The highest event id of the chunk (where the next chunk starts); None: shard done.
    last_id: int | None


def start_sending(conn: Connection, claim: ShardClaim, after: int, limit: int) -> Started:
    """Step 1 for the next chunk: the shard's next ``limit`` linked events after id
    ``after`` (keyset paging on the claim index); their ledger rows are created or
    re-armed (see module doc), ``sending`` but not handed (``sending_started`` NULL).

    Quarantined and missing addresses are decided here, set-based, and written as
    final ``ignored`` rows. The caller must commit before sending anything.
    """
    table = event_table(claim.kind)
    rows = conn.execute(text(f"""
        WITH chunk AS MATERIALIZED (
            SELECT e.id, e.wished_channel AS channel, e.template_name, e.template_version,
                   nullif(btrim({registry.event_address_sql("e")}), '') AS address
            FROM {table} e
            WHERE e.claim_token = :token AND e.claim_shard = :shard
              AND e.status = 'pending_delivery' AND e.id > :after
            ORDER BY e.id LIMIT :limit
        ), decided AS MATERIALIZED (
            SELECT c.*, CASE
                WHEN c.address IS NULL THEN format('no %s address on the event',
                    CAST(:nouns AS jsonb) ->> c.channel)
                ELSE (SELECT 'address is in quarantine: ' || q.reason FROM quarantine q
                      WHERE q.channel = c.channel
                        AND q.address IN (c.address, lower(c.address)) AND {ACTIVE_SQL}
                      LIMIT 1)
                END AS ignore_reason
            FROM chunk c
        ), marked AS (
            INSERT INTO delivery_log AS d (id, event_kind, event_id, template_name,
                template_version, channel, address, status, attempts, error, sending_started)
            SELECT {NEXT_ID_SQL}, :kind, id, template_name, template_version, channel, address,
                   CASE WHEN ignore_reason IS NULL THEN 'sending' ELSE 'ignored' END,
                   CASE WHEN ignore_reason IS NULL THEN 1 ELSE 0 END,
                   ignore_reason, NULL
            FROM decided
            ON CONFLICT (event_kind, event_id) DO UPDATE SET
                status = EXCLUDED.status, attempts = d.attempts + EXCLUDED.attempts,
                error = EXCLUDED.error, address = EXCLUDED.address,
                template_name = EXCLUDED.template_name,
                template_version = EXCLUDED.template_version,
                sending_started = EXCLUDED.sending_started
            WHERE d.status IN ('queued', 'retry')
            RETURNING d.id, d.event_id, d.status, d.attempts, d.channel, d.address,
                      d.template_name, d.template_version
        )
        SELECT c.id AS chunk_event_id, m.id AS log_id, m.event_id, m.status AS log_status,
               m.attempts, m.channel, m.address, m.template_name, m.template_version,
               {_send_columns()}
        FROM chunk c
        LEFT JOIN marked m ON m.event_id = c.id
        LEFT JOIN {table} e ON e.id = m.event_id
        LEFT JOIN published_template t
               ON t.internal_name = m.template_name AND t.version = m.template_version
        ORDER BY c.id
    """), {"after": after, "limit": limit, "token": claim.token, "shard": claim.shard,
           "kind": claim.kind, "nouns": json.dumps(registry.address_nouns())}
    ).mappings().all()
    to_send: list[Attempt] = []
    ignored: list[int] = []
    skipped: list[int] = []
    for row in rows:
        if row["log_id"] is None:
            skipped.append(int(row["chunk_event_id"]))
        elif row["log_status"] == "ignored":
            ignored.append(int(row["log_id"]))
        else:
            to_send.append(Attempt(
                log_id=int(row["log_id"]), event_id=int(row["event_id"]),
                attempts=int(row["attempts"]), channel=row["channel"],
                address=row["address"], template_name=row["template_name"],
                template_version=row["template_version"], row=dict(row)))
    last_id = int(rows[-1]["chunk_event_id"]) if rows else None
    return Started(to_send, ignored, skipped, last_id)


@dataclass(frozen=True)
class Finalized:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    expired: int = 0
    final_log_ids: tuple[int, ...] = ()


@dataclass
class _Outcomes:
    """The arrays of one ``finalize`` / ``record`` statement and what they count."""

    log_ids: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    providers: list[str | None] = field(default_factory=list)
    classes: list[str | None] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    bounces: list[Bounce] = field(default_factory=list)
    retry_events: list[int] = field(default_factory=list)
    retry_logs: list[int] = field(default_factory=list)
    retry_delays: list[float] = field(default_factory=list)
    retry_errors: list[str] = field(default_factory=list)
    give_up: list[bool] = field(default_factory=list)
    counted: list[bool] = field(default_factory=list)  # False: the provider was down
    final_ids: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {
        "sent": 0, "failed": 0, "retry": 0, "expired": 0})

    def finalized(self) -> Finalized:
        c = self.counts
        return Finalized(sent=c["sent"], failed=c["failed"], retried=c["retry"],
                         expired=c["expired"], final_log_ids=tuple(self.final_ids))


def _outcomes(results: Sequence[tuple[Attempt, Outcome]], retry: RetryPolicy) -> _Outcomes:
    out = _Outcomes()
    for attempt, outcome in results:
        status, error = outcome.status, outcome.error
        if status == "retry":
            # Not counted (the provider was unavailable): no try used, due again at once.
            exhausted = outcome.counted and attempt.attempts >= retry.max_tries
            out.retry_events.append(attempt.event_id)
            out.retry_logs.append(attempt.log_id)
            out.retry_delays.append(retry.backoff_seconds(attempt.attempts)
                                    if outcome.counted else 0.0)
            out.give_up.append(exhausted)
            out.counted.append(outcome.counted)
            if exhausted:
                error = f"gave up after {attempt.attempts} attempts: {error}"
                status = "failed"
                out.counts["expired"] += 1
            else:
                out.counts["retry"] += 1
            out.retry_errors.append(error or "")
        else:
            out.counts[status] += 1
            out.final_ids.append(attempt.log_id)
        out.log_ids.append(attempt.log_id)
        out.statuses.append(status)
        out.errors.append(error)
        out.providers.append(outcome.provider_id)
        out.classes.append(outcome.failure_class)
        out.reasons.append(outcome.failure_reason)
        if outcome.classification is not None and outcome.classification.is_bounce:
            out.bounces.append(Bounce(
                channel=attempt.channel, address=attempt.address,
                failure_class=outcome.classification.klass.value,
                failure_reason=outcome.classification.reason, error=outcome.error,
                delivery_log_id=attempt.log_id, attempt=attempt.attempts))
    return out


def _reschedule(conn: Connection, kind: str, out: _Outcomes) -> None:
    if out.retry_events:
        conn.execute(text(f"""
            UPDATE {event_table(kind)} e SET
                status = CASE WHEN v.give_up THEN 'expired' ELSE 'pending' END,
                error_count = e.error_count + 1,
                next_attempt = now() + make_interval(secs => v.delay),
                processed = CASE WHEN v.give_up THEN now() ELSE e.processed END,
                error_reason = v.error,
                delivery_log_id = v.log_id,
                claim_token = NULL, claim_shard = NULL
            FROM unnest(CAST(:ids AS bigint[]), CAST(:logs AS bigint[]),
                        CAST(:delays AS float8[]), CAST(:give_up AS boolean[]),
                        CAST(:errors AS text[])) AS v(id, log_id, delay, give_up, error)
            WHERE e.id = v.id AND e.status = 'pending_delivery'
        """), {"ids": out.retry_events, "logs": out.retry_logs, "delays": out.retry_delays,
               "give_up": out.give_up, "errors": out.retry_errors})


# In the statements below, "(d.status = 'sending') IS TRUE" is "d.status = 'sending'" that
# the planner cannot match to the partial index delivery_log_sending_idx: they touch a few
# rows by primary key, where a scan of every row in flight would cost far more (stale
# statistics make the tiny-looking partial index tempting).

def finalize(conn: Connection, kind: str, results: Sequence[tuple[Attempt, Outcome]],
             retry: RetryPolicy, rules: QuarantineRules = DEFAULT_RULES) -> Finalized:
    """Step 4: record each outcome; transient ones are rescheduled.

    A transient failure puts the event back to ``pending`` with ``error_count + 1`` and
    ``next_attempt = now() + backoff`` (the ledger row stays, in ``retry``, so the next
    attempt re-arms the same row and keeps the same Message-ID). After ``max_tries``
    attempts the ledger row becomes ``failed`` and the event ``expired``.
    (:func:`record` does the same and step 2 in one statement, checking the claim.)
    """
    if not results:
        return Finalized()
    out = _outcomes(results, retry)
    conn.execute(text("""
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
    """), {"ids": out.log_ids, "statuses": out.statuses, "errors": out.errors,
           "providers": out.providers, "classes": out.classes, "reasons": out.reasons})
    if out.bounces:  # classes and bounces: see message_center.delivery.quarantine
        record_bounces(conn, out.bounces, rules)
    _reschedule(conn, kind, out)
    return out.finalized()


def record(conn: Connection, claim: ShardClaim, handed: Sequence[int],
           results: Sequence[tuple[Attempt, Outcome]], retry: RetryPolicy, *,
           copy_status: bool = False,
           rules: QuarantineRules = DEFAULT_RULES) -> tuple[set[int], Finalized]:
    """Steps 2 and 4 in ONE statement (what the shard's recorder commits per group, in
    autocommit: one round trip): mark the ``handed`` rows (as :func:`mark_handed`),
    record ``results`` (as :func:`finalize`, transient ones rescheduled) and, with
    ``copy_status``, copy the final ones onto their events (as
    :func:`message_center.status_sync.copy_statuses`) - all only on rows still
    ``sending`` for this very claim. Returns the ids marked and what was recorded."""
    out = _outcomes(results, retry)
    ids = list(dict.fromkeys([*handed, *out.log_ids]))
    if not ids:
        return set(), Finalized()
    by_id = {log_id: i for i, log_id in enumerate(out.log_ids)}
    retry_by_id = {log_id: i for i, log_id in enumerate(out.retry_logs)}
    mark_set = set(handed)

    def column(values: list[Any], index: dict[int, int] = by_id) -> list[Any]:
        return [values[index[i]] if i in index else None for i in ids]

    table = event_table(claim.kind)
    rows = conn.execute(text(f"""
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
            FROM v, {table} e
            WHERE d.id = v.id AND (d.status = 'sending') IS TRUE AND d.event_kind = :kind
              AND e.id = d.event_id AND (e.status = 'pending_delivery') IS TRUE
              AND e.claim_token = :token AND e.claim_shard = :shard
            RETURNING d.id, d.event_id, d.status, d.error, d.last_modified, v.mark,
                      v.delay, v.give_up, v.retry_error, v.counted
        ), rescheduled AS (
            UPDATE {table} e SET
                status = CASE WHEN r.give_up THEN 'expired' ELSE 'pending' END,
                error_count = e.error_count + CASE WHEN r.counted IS FALSE THEN 0 ELSE 1 END,
                -- not counted: due again at once, in its place (when it was claimed)
                next_attempt = CASE WHEN r.counted IS FALSE
                                    THEN least(coalesce(e.processing, now()), now())
                                    ELSE now() + make_interval(secs => r.delay) END,
                processed = CASE WHEN r.give_up THEN now() ELSE e.processed END,
                error_reason = r.retry_error, delivery_log_id = r.id,
                claim_token = NULL, claim_shard = NULL
            FROM rec r WHERE r.delay IS NOT NULL AND e.id = r.event_id
            RETURNING e.id
        ), copied AS (
            UPDATE {table} e SET
                status = r.status, processed = r.last_modified, delivery_log_id = r.id,
                error_reason = CASE WHEN r.status = 'sent' THEN NULL ELSE r.error END
            FROM rec r WHERE :copy AND r.delay IS NULL
              AND r.status IN ('sent', 'ignored', 'failed') AND e.id = r.event_id
            RETURNING e.id
        )
        SELECT r.id, r.mark FROM rec r
    """), {"ids": ids, "marks": [i in mark_set for i in ids],
           "statuses": column(out.statuses), "errors": column(out.errors),
           "providers": column(out.providers),
           "delays": column(out.retry_delays, retry_by_id),
           "give_up": column(out.give_up, retry_by_id),
           "counted": column(out.counted, retry_by_id),
           "retry_errors": column(out.retry_errors, retry_by_id),
           "classes": column(out.classes), "reasons": column(out.reasons),
           "kind": claim.kind, "token": claim.token, "shard": claim.shard,
           "copy": copy_status}).all()
    written = {int(log_id) for log_id, _ in rows}
    if len(written) < len(ids):  # rows no longer ours: their outcomes were not written
        out = _outcomes([r for r in results if r[0].log_id in written], retry)
    if out.bounces:  # rare: a second statement, idempotent (one bounce per attempt)
        record_bounces(conn, out.bounces, rules)
    return {int(log_id) for log_id, mark in rows if mark}, out.finalized()


def mark_handed(conn: Connection, claim: ShardClaim, log_ids: Sequence[int]) -> set[int]:
    """Step 2: these armed rows are about to reach the provider (``sending_started`` is
    the time). Only rows still armed for this very claim are marked: a row released
    meanwhile is not (released rows lose their claim token; re-arming needs a new claim).
    Idempotent (a retry after a commit whose answer was lost keeps the first time).
    Returns the ids marked."""
    if not log_ids:
        return set()
    return set(conn.execute(text(f"""
        UPDATE delivery_log d SET sending_started = coalesce(d.sending_started,
                                                             clock_timestamp())
        FROM {event_table(claim.kind)} e
        WHERE d.id = ANY(CAST(:ids AS bigint[])) AND (d.status = 'sending') IS TRUE
          AND d.event_kind = :kind AND e.id = d.event_id
          AND e.claim_token = :token AND e.claim_shard = :shard
          AND (e.status = 'pending_delivery') IS TRUE
        RETURNING d.id
    """), {"ids": list(log_ids), "kind": claim.kind, "token": claim.token,
           "shard": claim.shard}).scalars())


_RELEASED = "not attempted: the worker stopped before sending it"


def _release_events(conn: Connection, kind: str, event_ids: Sequence[int]) -> None:
    if event_ids:
        conn.execute(text(f"""
            UPDATE {event_table(kind)} SET status = 'pending', next_attempt = now(),
                   claim_token = NULL, claim_shard = NULL
            WHERE id = ANY(:ids) AND status = 'pending_delivery'
        """), {"ids": list(event_ids)})


def release_unsent(conn: Connection, kind: str, attempts: Sequence[Attempt]) -> int:
    """Give back rows armed but never handed to a provider (the worker is stopping): the
    ledger row returns to ``retry`` without counting an attempt and the event is due
    again at once, so a graceful stop leaves no unknown outcome behind. Rows already
    handed (step 2) are left alone."""
    if not attempts:
        return 0
    released = list(conn.execute(text("""
        UPDATE delivery_log SET status = 'retry', attempts = attempts - 1, error = :reason
        WHERE id = ANY(:ids) AND status = 'sending' AND sending_started IS NULL
        RETURNING event_id
    """), {"ids": [a.log_id for a in attempts], "reason": _RELEASED}).scalars())
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
    table = event_table(kind)
    if claim is not None:
        owner = "e.claim_token = :token AND e.claim_shard = :shard"
        params: dict[str, Any] = {"token": claim.token, "shard": claim.shard}
    else:
        owner, params = "e.next_attempt <= now()", {}
    released = list(conn.execute(text(f"""
        UPDATE delivery_log d SET status = 'retry', attempts = d.attempts - 1, error = :reason
        FROM {table} e
        WHERE d.status = 'sending' AND d.sending_started IS NULL AND d.event_kind = :kind
          AND e.id = d.event_id AND e.status = 'pending_delivery' AND {owner}
        RETURNING d.event_id
    """), {**params, "kind": kind, "reason": _RELEASED}).scalars())
    if requeue:
        _release_events(conn, kind, released)
    return len(released)


def _dead_rows(claim: ShardClaim | None) -> tuple[str, dict[str, Any]]:
    """WHERE clause (on delivery_log) of handed rows whose worker is gone."""
    params: dict[str, Any] = {}
    where = "sending_started < clock_timestamp() - make_interval(secs => :age)"
    if claim is not None:
        where = (f"({where}) OR (event_kind = :kind AND sending_started IS NOT NULL "
                 f"AND event_id IN (SELECT id FROM {event_table(claim.kind)} "
                 "WHERE claim_token = :token AND claim_shard = :shard "
                 "AND status = 'pending_delivery'))")
        params.update(kind=claim.kind, token=claim.token, shard=claim.shard)
    return f"status = 'sending' AND ({where})", params


def unknown_candidates(conn: Connection, *, older_than_seconds: float,
                       claim: ShardClaim | None = None,
                       channels: Sequence[str] | None = None,
                       limit: int = 500) -> list[tuple[str, Attempt]]:
    """The rows :func:`recover_unknown_outcomes` would settle, on these channels (by
    default those whose provider can be asked): what a provider may be asked about
    before they are called unknown. (kind, attempt) pairs."""
    if channels is None:
        channels = registry.reconciling()
    where, params = _dead_rows(claim)
    rows = conn.execute(text(f"""
        SELECT id, event_kind, event_id, attempts, channel, address, template_name,
               template_version
        FROM delivery_log WHERE {where} AND channel = ANY(:channels)
        ORDER BY id LIMIT :limit
    """), {**params, "age": float(older_than_seconds), "channels": list(channels),
           "limit": limit}).mappings().all()
    return [(row["event_kind"], Attempt(
        log_id=int(row["id"]), event_id=int(row["event_id"]), attempts=int(row["attempts"]),
        channel=row["channel"], address=row["address"], template_name=row["template_name"],
        template_version=row["template_version"], row={})) for row in rows]


def recover_unknown_outcomes(conn: Connection, *, older_than_seconds: float,
                             claim: ShardClaim | None = None) -> list[int]:
    """Mark handed ``sending`` rows of dead workers ``failed`` (outcome unknown); never
    resend.

    A row qualifies when it was handed to the provider more than ``older_than_seconds``
    ago (a live worker records an outcome, or gives up trying, before that), or - given
    ``claim`` - when it belongs to that shard's claim: a shard task that starts again
    (Airflow retry) knows its previous try is gone. Rows armed but never handed are not
    unknown: see :func:`release_unhanded`. Returns the log ids.
    """
    where, params = _dead_rows(claim)
    return list(conn.execute(text(f"""
        UPDATE delivery_log SET status = 'failed', error = :reason,
               failure_class = 'unknown', failure_reason = 'outcome_unknown'
        WHERE {where}
        RETURNING id
    """), {**params, "age": float(older_than_seconds), "reason": UNKNOWN_OUTCOME}).scalars())
