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
:func:`~message_center.state.release_stale_claims` puts it back to ``pending``. Events
with a ledger row are the ledger's business (:mod:`message_center.delivery.ledger`).

The statements themselves (claim and link, lease renewal, giving claims back) are in
:mod:`message_center.state`, with every other transition of an event; this module
decides how much to claim per transaction and how the shards are dealt.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from message_center import state
from message_center.claims import ShardClaim, new_token
from message_center.processing.settings import ProcessingSettings

#: Claim statements run at once on a big backlog: one statement keeps one PostgreSQL
#: backend (one core) busy, so a million-event split took 16 s on two cores with one of
#: them idle (issue 24). Only when the first routing batch came back full and batches
#: are at least ``PARALLEL_MIN_BATCH`` (smaller ones are mostly statement overhead).
PARALLEL_CLAIMS = 2
PARALLEL_MIN_BATCH = 10_000


class _Split:
    """The claim statements of one split: how much each may still take (``reserve``),
    what they took (``record``), the per-shard counts; shared by the claiming threads."""

    def __init__(self, engine: Engine, kind: str, token: int,
                 settings: ProcessingSettings) -> None:
        self.engine, self.kind, self.token, self.settings = engine, kind, token, settings
        self._lock = threading.Lock()
        self.total = 0  # claimed (linked or not taken into account), as the limit counts
        self._reserved = 0  # limits of the statements in flight
        self.empty = False  # a statement took less than asked: the queue is drained
        self.per_shard: dict[int, int] = {}

    def _reserve(self) -> int:
        with self._lock:
            if self.empty:
                return 0
            limit = min(self.settings.routing_batch_size,
                        self.settings.max_events_per_run - self.total - self._reserved)
            limit = max(limit, 0)
            self._reserved += limit
            return limit

    def claim(self, offset: int, *, once: bool = False) -> int:
        """Claim routing batch after routing batch (just one with ``once``) until the
        queue is empty or the run's maximum is reached; returns the next shard offset
        (shards are dealt round robin, each claiming thread keeping its own turn)."""
        settings = self.settings
        while limit := self._reserve():
            try:
                with self.engine.begin() as conn:
                    result = state.claim_due(conn, self.kind, token=self.token, limit=limit,
                                             shards=settings.shards, offset=offset,
                                             lease_seconds=settings.claim_lease_seconds)
            finally:
                with self._lock:
                    self._reserved -= limit
            offset = (offset + result.linked) % settings.shards
            with self._lock:
                self.total += result.claimed
                for shard, count in result.per_shard.items():
                    self.per_shard[shard] = self.per_shard.get(shard, 0) + count
                if result.taken < limit:
                    self.empty = True
            if once:
                break
        return offset

    @property
    def more(self) -> bool:
        return not self.empty and self.total < self.settings.max_events_per_run


def split_queue(engine: Engine, kind: str, settings: ProcessingSettings,
                token: int | None = None) -> list[ShardClaim]:
    """Claim and link due events in routing batches (one committed transaction each)
    until the queue is empty or ``max_events_per_run`` is reached; return the shards with
    events to deliver and their ``pending_delivery`` counts. On a big backlog,
    :data:`PARALLEL_CLAIMS` statements run at once (``SKIP LOCKED``: they take disjoint
    events)."""
    split = _Split(engine, kind, token or new_token(), settings)
    offset = split.claim(0, once=True)
    if split.more and settings.routing_batch_size >= PARALLEL_MIN_BATCH:
        with ThreadPoolExecutor(PARALLEL_CLAIMS, thread_name_prefix="mc-split") as pool:
            running = [pool.submit(split.claim, offset if n == 0 else 0)
                       for n in range(PARALLEL_CLAIMS)]
            for future in running:  # every thread ends (the queue drained or an error)
                future.exception()
            for future in running:
                future.result()  # the first error, if any, once all have stopped
    elif split.more:
        split.claim(offset)
    return [ShardClaim(kind, split.token, shard, count)
            for shard, count in sorted(split.per_shard.items()) if count]
