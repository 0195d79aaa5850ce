"""The delivery log as a ledger: the one place that decides whether a message may be sent.

Every message goes through four committed steps (the statements are
:mod:`message_center.state`'s; this module decides what goes into them)::

    1. start_sending   INSERT ... ON CONFLICT DO UPDATE ... WHERE status IN (queued, retry)
                       -> the row is 'sending', not handed yet (sending_started NULL),
                          or 'ignored' (quarantine, no address)          (state.arm)
    2. mark_handed     UPDATE ... SET sending_started = now() WHERE status = 'sending'
                       AND sending_started IS NULL AND the event is still this shard's
                       -> committed before the point of no return (the final "." of SMTP
                          DATA, the gateway request)             (state.mark_handed)
    3. (send over SMTP / the SMS gateway)
    4. finalize        UPDATE ... WHERE status = 'sending'
                       -> 'sent' | 'failed' | 'retry' (event back to pending, backoff)
                                               (state.write_outcomes, state.reschedule)

Step 1 is a compare-and-set on the ledger row (one row per event, unique on
``(event_kind, event_id)``): of two runs, two workers or a retried task racing for the
same event, exactly one moves the row to ``sending``; the others get nothing back and
do not send. Step 2 is a compare-and-set too (a row released meanwhile is not handed).
A message is therefore never sent twice by the Message Center.

Steps 2 and 4 are written in grouped commits by the shard's
:class:`~message_center.processing.recorder.OutcomeRecorder` (:func:`record`, one
statement: :func:`message_center.state.record_group`), while the SMTP transaction
runs (MAIL, RCPT, DATA and the content go out before the mark must be committed), so
they cost one commit per group, not one per message, and mostly no waiting.

**Unknown outcome after a crash.** A worker that dies between steps 2 and 4 leaves a
handed row in ``sending``: the message may or may not have reached the provider. We
choose *never send twice*: :func:`~message_center.state.recover_unknown_outcomes` marks
such rows ``failed`` with the reason "outcome unknown ..." (the Message-ID / SMS
reference derived from the row id tells where to look at the provider) and the runner
copies that onto the event; nothing is resent. Because step 2 of the next message
commits the outcome of the previous one, that is at most one message per SMTP session
(the one in progress when the worker died). Rows armed in step 1 but never handed were
not sent: :func:`~message_center.state.release_unhanded` gives them back (the retried
task re-arms and sends its own claim's at once; a dead worker's go back to the queue
when its claim lease runs out). A shard that is asked to stop (SIGTERM) or that runs out
of time finishes the message in hand and gives the rest back
(:func:`~message_center.state.release_unsent`), leaving nothing unknown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from message_center import channel as registry
from message_center import state
from message_center.claims import ShardClaim
from message_center.delivery.outcome import Outcome
from message_center.delivery.quarantine import (
    ACTIVE_SQL,
    DEFAULT_RULES,
    Bounce,
    QuarantineRules,
    record_bounces,
)
from message_center.delivery.suppression import IGNORE_SQL as SUPPRESSION_IGNORE_SQL
from message_center.statuses import DeliveryStatus

# What the delivery knows, put into the arming statement (message_center.state.arm).
# The event's address for its channel (event ``e``): the registry says where each
# channel keeps it (:func:`message_center.channel.event_address_sql`).


def _address() -> str:
    return f"nullif(btrim({registry.event_address_sql('e')}), '')"


# Why not to send (chunk row ``c``), or NULL: no address (the channel's words for it, in
# the :nouns bind), or an address in quarantine (by its channel's quarantine key).
def _ignore_reason() -> str:
    key = registry.quarantine_key_sql("c.channel", "c.address")
    return f"""CASE
                WHEN c.address IS NULL THEN format('no %s address on the event',
                    CAST(:nouns AS jsonb) ->> c.channel)
                ELSE coalesce((SELECT '{state.QUARANTINED_PREFIX}' || q.reason
                      FROM quarantine q
                      WHERE q.channel = c.channel
                        AND q.address IN ({key}, lower({key})) AND {ACTIVE_SQL}
                      LIMIT 1), {SUPPRESSION_IGNORE_SQL})
                END"""


def _send_columns() -> str:
    """Event columns a template may use, plus the linked template's parts (each
    channel's columns, and the generic ``parts``)."""
    parts = sorted({f"t.{column}" for channel in registry.all_channels()
                    for column in channel.template_columns.values()})
    channel_parts = "".join(f", {part}" for part in parts)
    return f"""
        e.type, e.email, e.mobile_phone, e.wished_channel, e.external_id,
        e.language, e.country, e.origin, e.ctx, e.scheduled, e.expiration, e.created,
        t.id AS published_id, t.sender, t.parts, t.options, t.extras{channel_parts},
        e.attachments AS event_files,
        CASE WHEN e.attachments IS NOT NULL THEN (
            SELECT jsonb_object_agg(a.position, encode(a.content, 'base64'))
            FROM event_attachment a WHERE a.event_kind = :kind AND a.event_id = e.id)
        END AS event_file_contents
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


def start_sending(conn: Connection, claim: ShardClaim, after: int, limit: int, *,
                  sandbox: bool = False) -> Started:
    """Step 1 for the next chunk: the shard's next ``limit`` linked events after id
    ``after`` (keyset paging on the claim index); their ledger rows are created or
    re-armed (see module doc), ``sending`` but not handed (``sending_started`` NULL).

    Quarantined and missing addresses are decided here, set-based, and written as
    final ``ignored`` rows. The caller must commit before sending anything.

    Sandbox (:mod:`message_center.delivery.sandbox`) is decided here too, once: a row is
    a sandbox delivery when its event was pushed as one or ``sandbox`` (the instance is in
    sandbox mode); each :class:`Attempt` row says it (``row["sandbox"]``).
    """
    rows = state.arm(conn, claim, after=after, limit=limit, address=_address(),
                     ignore_reason=_ignore_reason(), columns=_send_columns(),
                     params={"nouns": json.dumps(registry.address_nouns())},
                     sandbox=sandbox)
    to_send: list[Attempt] = []
    ignored: list[int] = []
    skipped: list[int] = []
    for row in rows:
        if row["log_id"] is None:
            skipped.append(int(row["chunk_event_id"]))
        elif row["log_status"] == DeliveryStatus.IGNORED:
            ignored.append(int(row["log_id"]))
        else:
            to_send.append(Attempt(
                log_id=int(row["log_id"]), event_id=int(row["event_id"]),
                attempts=int(row["attempts"]), channel=row["channel"],
                address=row["address"], template_name=row["template_name"],
                template_version=row["template_version"], row=row))
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
            # The provider's Retry-After, when it said one, if longer than the back-off.
            out.retry_delays.append(max(retry.backoff_seconds(attempt.attempts),
                                        outcome.retry_after or 0.0)
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
                channel=attempt.channel,
                address=registry.get(attempt.channel).quarantine_key(attempt.address),
                failure_class=outcome.classification.klass.value,
                failure_reason=outcome.classification.reason, error=outcome.error,
                delivery_log_id=attempt.log_id, attempt=attempt.attempts))
    return out


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
    state.write_outcomes(conn, ids=out.log_ids, statuses=out.statuses, errors=out.errors,
                         providers=out.providers, classes=out.classes, reasons=out.reasons)
    if out.bounces:  # classes and bounces: see message_center.delivery.quarantine
        record_bounces(conn, out.bounces, rules)
    state.reschedule(conn, kind, event_ids=out.retry_events, log_ids=out.retry_logs,
                     delays=out.retry_delays, give_up=out.give_up, errors=out.retry_errors,
                     counted=out.counted)
    return out.finalized()


def record(conn: Connection, claim: ShardClaim, handed: Sequence[Attempt],
           results: Sequence[tuple[Attempt, Outcome]], retry: RetryPolicy, *,
           copy_status: bool = False,
           rules: QuarantineRules = DEFAULT_RULES) -> tuple[set[int], Finalized]:
    """Steps 2 and 4 in ONE statement (what the shard's recorder commits per group, in
    autocommit: one round trip, :func:`message_center.state.record_group`): mark the
    ``handed`` rows (as :func:`~message_center.state.mark_handed`), record ``results``
    (as :func:`finalize`, transient ones rescheduled) and, with ``copy_status``, copy the
    final ones onto their events (as :func:`~message_center.state.copy_statuses`) - all
    only on rows still ``sending`` for this very claim. Returns the ids marked and what
    was recorded."""
    out = _outcomes(results, retry)
    events = {a.log_id: a.event_id for a in handed}
    events.update((a.log_id, a.event_id) for a, _ in results)
    ids = list(dict.fromkeys([*(a.log_id for a in handed), *out.log_ids]))
    if not ids:
        return set(), Finalized()
    by_id = {log_id: i for i, log_id in enumerate(out.log_ids)}
    retry_by_id = {log_id: i for i, log_id in enumerate(out.retry_logs)}
    mark_set = {a.log_id for a in handed}

    def column(values: list[Any], index: dict[int, int] = by_id) -> list[Any]:
        return [values[index[i]] if i in index else None for i in ids]

    rows = state.record_group(
        conn, claim, ids=ids, event_ids=[events[i] for i in ids],
        marks=[i in mark_set for i in ids],
        statuses=column(out.statuses), errors=column(out.errors),
        providers=column(out.providers), delays=column(out.retry_delays, retry_by_id),
        give_up=column(out.give_up, retry_by_id),
        retry_errors=column(out.retry_errors, retry_by_id), classes=column(out.classes),
        reasons=column(out.reasons), counted=column(out.counted, retry_by_id),
        copy=copy_status)
    written = {int(log_id) for log_id, _ in rows}
    if len(written) < len(ids):  # rows no longer ours: their outcomes were not written
        out = _outcomes([r for r in results if r[0].log_id in written], retry)
    if out.bounces:  # rare: a second statement, idempotent (one bounce per attempt)
        record_bounces(conn, out.bounces, rules)
    return {int(log_id) for log_id, mark in rows if mark}, out.finalized()


def unknown_candidates(conn: Connection, *, older_than_seconds: float,
                       claim: ShardClaim | None = None,
                       channels: Sequence[str] | None = None,
                       limit: int = 500) -> list[tuple[str, Attempt]]:
    """The rows :func:`~message_center.state.recover_unknown_outcomes` would settle, on
    these channels (by default those whose provider can be asked): what a provider may be
    asked about before they are called unknown. (kind, attempt) pairs."""
    if channels is None:
        channels = registry.reconciling()
    rows = state.unknown_rows(conn, older_than_seconds=older_than_seconds, claim=claim,
                              channels=channels, limit=limit)
    return [(row["event_kind"], Attempt(
        log_id=int(row["id"]), event_id=int(row["event_id"]), attempts=int(row["attempts"]),
        channel=row["channel"], address=row["address"], template_name=row["template_name"],
        template_version=row["template_version"], row={})) for row in rows]
