"""Putting the steps together: deliver a shard, run a real-time shard loop, maintenance.

Memory stays bounded by ``delivery_chunk``: a shard pages through its claimed events by
id (keyset), arms one chunk in the ledger, sends it while its recorder writes each
outcome (grouped commits), and moves on. No step reads a whole queue or a whole shard
into Python.

Every status change is a call into :mod:`message_center.state` (``state.*`` below, or
through the ledger, which decides what an outcome means): this module decides when.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sqlalchemy import Engine

from message_center import state
from message_center.claims import ShardClaim, new_token
from message_center.db import first_line
from message_center.delivery.breaker import DatabaseBreakerStore
from message_center.delivery.channels import Channels
from message_center.delivery.ledger import (
    Attempt,
    finalize,
    record,
    start_sending,
    unknown_candidates,
)
from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import Dispatch, SessionPool
from message_center.processing.notify import Listener
from message_center.processing.recorder import (
    NotHanded,
    OutcomeRecorder,
    RecorderFailed,
    is_connection_error,
    wait_for_database,
)
from message_center.processing.settings import ProcessingSettings
from message_center.statuses import EVENT_KINDS, NOTIFY_CHANNELS

log = logging.getLogger(__name__)
MIN_ID = -(1 << 63)
# Asked between messages and rounds: True means "stop soon, cleanly" (SIGTERM from the
# scheduler, the supervising process gone, ...). The Airflow layer provides it.
StopCheck = Callable[[], bool]
# Asks the provider what became of a message a dead worker was sending (None: cannot tell).
Reconcile = Callable[[Attempt], Outcome | None]


def _never() -> bool:
    return False


@dataclass
class ShardStats:
    claimed: int = 0
    linked: int = 0
    not_taken: int = 0
    expired: int = 0
    sent: int = 0
    failed: int = 0
    ignored: int = 0
    retried: int = 0
    unknown: int = 0
    released: int = 0
    chunks: int = 0
    throttled: int = 0  # "slow down" answers (421 / 4.7.x / HTTP 429) waited out
    unavailable: int = 0  # attempts on a relay that was down (not counted as tries)
    reconciled: int = 0  # messages of a stopped worker settled with the provider

    def add(self, other: ShardStats) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def outcomes(self) -> str:
        """The counts per outcome, for a progress line."""
        return (f"sent {self.sent}, failed {self.failed}, ignored {self.ignored}, retried "
                f"{self.retried}, not taken into account {self.not_taken}, expired "
                f"{self.expired}, unknown {self.unknown} (claimed {self.claimed})")


def recover(engine: Engine, settings: ProcessingSettings, kinds: tuple[str, ...] = EVENT_KINDS,
            claim: ShardClaim | None = None,
            reconcile: Reconcile | None = None) -> ShardStats:
    """Crash recovery, cheap enough to run at every split and every few seconds:
    unknown outcomes (messages handed to the provider by a worker that died) are
    settled (failed, never resent) and copied onto their events; messages armed but
    never handed, and linked events whose worker died before delivering, go back to
    pending. With ``claim``: that shard's rows at once (its previous try is gone); its
    messages armed but never handed stay with the claim, to be sent by the caller.

    ``reconcile`` (:meth:`Channels.reconcile
    <message_center.delivery.channels.Channels.reconcile>`) first asks the provider
    about each such message where it can answer (an SMS gateway's lookup by reference):
    what it accepted is *sent*, what it never received is sent again; only what nobody
    can tell (e-mail) is called unknown."""
    stats = ShardStats()
    if reconcile is not None:
        stats.reconciled += _reconcile(engine, settings, claim, reconcile)
    with engine.begin() as conn:
        unknown = state.recover_unknown_outcomes(
            conn, older_than_seconds=settings.sending_timeout_seconds, claim=claim)
        for kind in EVENT_KINDS:
            state.copy_statuses(conn, kind, unknown)
        stats.unknown = len(unknown)
        if claim is not None:  # not sent: this retried shard sends them itself
            state.release_unhanded(conn, claim.kind, claim, requeue=False)
    for kind in kinds:
        with engine.begin() as conn:
            stats.released += state.release_unhanded(conn, kind)
            stats.released += state.release_stale_claims(conn, kind)
    if stats.unknown or stats.released:
        log.warning("recovery: %d message(s) with an unknown outcome marked failed (not "
                    "resent), %d event(s) never sent given back to the queue",
                    stats.unknown, stats.released)
    return stats


def _reconcile(engine: Engine, settings: ProcessingSettings, claim: ShardClaim | None,
               reconcile: Reconcile) -> int:
    with engine.begin() as conn:
        candidates = unknown_candidates(
            conn, older_than_seconds=settings.sending_timeout_seconds, claim=claim)
    by_kind: dict[str, list[tuple[Attempt, Outcome]]] = {}
    for kind, attempt in candidates:  # one provider request each, outside a transaction
        outcome = reconcile(attempt)
        if outcome is not None:
            by_kind.setdefault(kind, []).append((attempt, outcome))
    settled = 0
    with engine.begin() as conn:
        for kind, results in by_kind.items():
            done = finalize(conn, kind, results, settings.retry_policy, settings.quarantine)
            state.copy_statuses(conn, kind, done.final_log_ids)
            settled += len(results)
    if settled:
        log.warning("recovery: %d message(s) of a stopped worker settled with the provider "
                    "(sent, or sent again when it never received them)", settled)
    return settled


def deliver_shard(engine: Engine, claim: ShardClaim, settings: ProcessingSettings,
                  channels: Channels, *, copy_status: bool, recover_own: bool = True,
                  should_stop: StopCheck = _never) -> ShardStats:
    """Render and deliver every linked event of the shard, chunk by chunk (the ledger
    steps of :mod:`message_center.delivery.ledger`).

    Each chunk is armed (``sending``, not handed) and committed, then sent over
    ``settings.smtp_sessions`` concurrent sessions (:mod:`message_center.delivery.pool`,
    within the relays' limits); the next chunk is armed by one session as soon as no
    more messages wait than there are sessions, so the others never stand idle. The shard's
    :class:`~message_center.processing.recorder.OutcomeRecorder` marks each message
    handed just before its point of no return and records each outcome as soon as it is
    known, in grouped commits shared by the sessions and overlapping the SMTP exchanges.
    ``copy_status`` copies final outcomes onto the events in those same transactions
    (real time); otherwise ``updateEventStatus`` does it. ``recover_own`` first settles
    rows left by a previous try of this same shard (a task retry). When
    ``should_stop()`` turns true, the messages in hand are finished, the rest of the
    chunk is given back to the queue and the function returns.

    **Database outage.** Nothing new is sent while outcomes cannot be written (the
    recorder holds them and retries); when the database answers again - within
    ``sending_timeout_seconds`` - the outcomes are written and the shard resumes where
    it was (its claim is still held), so an outage leaves no unknown outcome behind.
    """
    stats = ShardStats()
    pool = channels.session_pool(settings.smtp_sessions, shards=settings.shards,
                                 breakers=DatabaseBreakerStore(engine))
    throttles_before = pool.throttles
    unavailable_before = pool.unavailable
    resume, unrecorded = recover_own, []
    try:
        while True:
            recorder = OutcomeRecorder(
                engine, claim, settings.retry_policy, copy_status=copy_status,
                sending_timeout_seconds=settings.sending_timeout_seconds,
                sessions=settings.smtp_sessions, rules=settings.quarantine)
            try:
                if unrecorded:  # known outcomes the last recorder could not write
                    _write_late(engine, claim, settings, unrecorded, copy_status, stats)
                if resume:
                    stats.add(recover(engine, settings, kinds=(), claim=claim,
                                      reconcile=channels.reconcile))
                _deliver_chunks(engine, claim, settings, channels, pool, recorder, stats,
                                copy_status, should_stop)
                return stats
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                log.warning("shard %s: database unreachable (%s); sending nothing, "
                            "waiting up to %d s for it", claim.shard, first_line(exc),
                            settings.sending_timeout_seconds)
                if not wait_for_database(engine, timeout=settings.sending_timeout_seconds,
                                         should_stop=should_stop):
                    raise
                log.warning("shard %s: database reachable again, resuming", claim.shard)
                resume, unrecorded = True, recorder.unrecorded
            finally:
                done = recorder.totals
                stats.sent += done.sent
                stats.failed += done.failed
                stats.retried += done.retried
                stats.expired += done.expired
    finally:
        stats.throttled += pool.throttles - throttles_before
        stats.unavailable += pool.unavailable - unavailable_before


def _write_late(engine: Engine, claim: ShardClaim, settings: ProcessingSettings,
                results: list[tuple[Attempt, Outcome]], copy_status: bool,
                stats: ShardStats) -> None:
    """Outcomes a recorder held past its deadline: still the truth, written if the rows
    are still ours (nobody settled them meanwhile)."""
    with engine.begin() as conn:
        _, done = record(conn, claim, [], results, settings.retry_policy,
                         rules=settings.quarantine)
        if copy_status:
            state.copy_statuses(conn, claim.kind, done.final_log_ids)
    stats.sent += done.sent
    stats.failed += done.failed
    stats.retried += done.retried
    stats.expired += done.expired


def _deliver_chunks(engine: Engine, claim: ShardClaim, settings: ProcessingSettings,
                    channels: Channels, pool: SessionPool, recorder: OutcomeRecorder,
                    stats: ShardStats, copy_status: bool, should_stop: StopCheck) -> None:
    kind = claim.kind

    async def send(attempt: Attempt) -> Outcome | None:
        try:
            return await channels.deliver(attempt, recorder.handing(attempt))
        except NotHanded:  # released meanwhile (its lease ran out): not ours to send
            log.warning("delivery log %s was released meanwhile: not sent", attempt.log_id)
            return None
        except RecorderFailed:
            raise
        except Exception as exc:  # a bug must fail one message, not the shard
            log.exception("delivery of log %s failed unexpectedly", attempt.log_id)
            return Outcome.failed(f"internal error: {type(exc).__name__}: {exc}")

    def give_back(unsent: list[Attempt]) -> None:
        try:
            with engine.begin() as conn:
                stats.released += state.release_unsent(conn, kind,
                                                       [a.log_id for a in unsent])
        except Exception as exc:  # the database may be why we are stopping
            log.warning("could not give back %d unsent message(s) now (%s); they are "
                        "given back when the shard resumes or its claim lease runs out",
                        len(unsent), first_line(exc))

    after = MIN_ID
    lease_renewed = time.monotonic()

    def refill() -> tuple[list[Attempt], float] | None:
        """Arm the shard's next chunk (one session at a time, while the others send)."""
        nonlocal after, lease_renewed
        with engine.begin() as conn:
            # Asynchronous commit (the one statement here that may be): a PostgreSQL
            # crash within ~0.6 s of it may lose the arm, and then nothing is sent - the
            # marks the sessions ask for are refused, the rows being no longer 'sending' -
            # while any mark committed (synchronously) flushed the log up to it, arm
            # included. So no duplicate and no loss; one WAL flush less per chunk.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            if time.monotonic() - lease_renewed > settings.claim_lease_seconds / 3:
                state.renew_lease(conn, claim, settings.claim_lease_seconds)
                lease_renewed = time.monotonic()
            started = start_sending(conn, claim, after, settings.delivery_chunk,
                                    sandbox=channels.sandboxed)
            if started.last_id is None:
                return None
            after = started.last_id
            state.copy_statuses_for_events(conn, kind, started.skipped_event_ids)
            if copy_status:
                state.copy_statuses(conn, kind, started.ignored_log_ids)
        # Committed: these rows are ours ('sending'); nobody else will send them.
        stats.ignored += len(started.ignored_log_ids)
        stats.chunks += 1
        # A chunk stops sending after half the sending timeout (slow or hanging
        # provider): the rest goes back to the queue, so no live row is ever mistaken
        # for a crash.
        return started.to_send, time.monotonic() + settings.sending_timeout_seconds / 2

    with recorder:
        while True:
            # The next chunk is armed as soon as no more messages wait than there are
            # sessions: the sessions never stand idle while the ledger arms a chunk.
            dispatch = Dispatch(refill=refill, low_water=settings.smtp_sessions)
            try:
                pool.run(dispatch, send, recorder.add, should_stop=should_stop)
            except BaseException:
                # Execution timeout (AirflowTaskTimeout), KeyboardInterrupt, the database
                # gone for too long: what was sent is recorded (the recorder's close),
                # what was not started is given back; a message still in a session's
                # hands stays unknown.
                give_back(dispatch.unsent())
                raise
            if unsent := dispatch.unsent():
                give_back(unsent)
            if should_stop():
                recorder.flush()
                with engine.begin() as conn:
                    stats.released += state.release_claim(conn, claim)
                break
            if dispatch.exhausted:
                break
            # else a chunk's sending budget ran out: its rest went back; go on


def run_realtime_shard(engine: Engine, shard: int, settings: ProcessingSettings,
                       channels: Channels, *, loop_seconds: float, poll_seconds: float,
                       kind: str = "rt", maintenance_seconds: float = 30.0,
                       should_stop: StopCheck = _never, progress_seconds: float = 60.0,
                       progress: Callable[[str], object] | None = None) -> ShardStats:
    """Process events as they arrive for ``loop_seconds``, then return (the continuous DAG
    starts the next run).

    Each round claims and links up to ``routing_batch_size`` due events in one statement
    (SKIP LOCKED: several shards share one queue without coordination), delivers them and copies
    their outcomes at once. Between rounds the shard sleeps on ``LISTEN`` - a push wakes
    it immediately - or at most ``poll_seconds`` (for scheduled events and retries that
    become due without a notification). ``should_stop`` ends the loop early and cleanly
    (checked between rounds, between messages, and at least every ``poll_seconds``).
    Every ``progress_seconds`` the shard reports its counts per outcome so far to
    ``progress`` (default: this module's log, INFO), so a running loop shows what it did
    without waiting for its end.
    """
    if loop_seconds < 0 or poll_seconds <= 0 or progress_seconds <= 0:
        raise ValueError("loop_seconds must be >= 0, poll_seconds and progress_seconds > 0")
    stats = ShardStats()
    started = time.monotonic()
    deadline = started + loop_seconds
    next_maintenance = 0.0
    next_progress = started + progress_seconds
    with Listener(engine, NOTIFY_CHANNELS[kind]) as listener:
        while True:
            if time.monotonic() >= next_progress:
                (progress or log.info)(f"{kind} shard {shard} after "
                                       f"{time.monotonic() - started:.0f} s: {stats.outcomes()}")
                next_progress = time.monotonic() + progress_seconds
            claim = ShardClaim(kind, new_token(), shard)
            try:
                result = _realtime_round(engine, claim, settings, channels, stats, kind,
                                         next_maintenance, should_stop)
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + maintenance_seconds
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                # The database went away between two rounds or while claiming: wait
                # for it, then finish what this round may have claimed.
                log.warning("real-time shard %s: database unreachable (%s); waiting for it",
                            shard, first_line(exc))
                if not wait_for_database(engine, should_stop=should_stop,
                                         timeout=max(deadline - time.monotonic(), 0)):
                    break
                log.warning("real-time shard %s: database reachable again, resuming", shard)
                stats.add(deliver_shard(engine, claim, settings, channels, copy_status=True,
                                        recover_own=True, should_stop=should_stop))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or should_stop():
                break
            if result.taken >= settings.routing_batch_size:
                continue  # more is waiting: no sleep
            listener.wait(min(poll_seconds, remaining))
    return stats


def _realtime_round(engine: Engine, claim: ShardClaim, settings: ProcessingSettings,
                    channels: Channels, stats: ShardStats, kind: str, next_maintenance: float,
                    should_stop: StopCheck) -> state.ClaimResult:
    if time.monotonic() >= next_maintenance:
        stats.add(recover(engine, settings, kinds=(kind,), reconcile=channels.reconcile))
    with engine.begin() as conn:  # claims and links in one statement
        result = state.claim_due(conn, kind, token=claim.token, shard_base=claim.shard,
                           limit=settings.routing_batch_size,
                           lease_seconds=settings.claim_lease_seconds)
    stats.claimed += result.claimed
    stats.linked += result.linked
    stats.not_taken += result.not_taken
    stats.expired += result.expired
    if result.linked:
        stats.add(deliver_shard(engine, claim, settings, channels, copy_status=True,
                                recover_own=False, should_stop=should_stop))
    return result
