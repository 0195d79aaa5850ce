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

from sqlalchemy import Engine

from message_center import state
from message_center.claims import ShardClaim, new_token
from message_center.processing.settings import ProcessingSettings


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
            result = state.claim_due(conn, kind, token=token, limit=limit,
                                     shards=settings.shards, offset=offset,
                                     lease_seconds=settings.claim_lease_seconds)
        total += result.claimed
        offset = (offset + result.linked) % settings.shards
        for shard, count in result.per_shard.items():
            per_shard[shard] = per_shard.get(shard, 0) + count
        if result.taken < limit:
            break
    return [ShardClaim(kind, token, shard, count)
            for shard, count in sorted(per_shard.items()) if count]

