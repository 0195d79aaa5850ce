"""Event processing on an execution instance: split and link the queue, deliver, recover.

* :mod:`.queue` - claiming due events (``FOR UPDATE SKIP LOCKED``) into shards and
  linking them to published templates in the same statement;
* :mod:`.runner` - a shard's delivery loop, the real-time loop, crash recovery;
* :mod:`.settings` - the validated knobs (batch size, shards, retries, leases);
* :mod:`.notify` - ``LISTEN`` wake-ups from the push API.

The delivery log (the ledger that makes sends exactly-once) is in
:mod:`message_center.delivery.ledger`, a layer below (it takes a
:class:`~message_center.delivery.ledger.RetryPolicy`, not these settings); claims in
:mod:`message_center.claims`; every statement that changes an event's or a delivery
log's status (claim, link, hand, release, reschedule, finalise, copy) in
:mod:`message_center.state`; the incremental copy of outcomes onto events in
:mod:`message_center.status_sync`.
"""

from __future__ import annotations

from message_center.claims import ShardClaim, new_token
from message_center.processing.queue import split_queue
from message_center.processing.runner import (
    ShardStats,
    deliver_shard,
    recover,
    run_realtime_shard,
)
from message_center.processing.settings import ProcessingSettings
from message_center.state import claim_due, release_stale_claims

__all__ = [
    "ProcessingSettings",
    "ShardClaim",
    "ShardStats",
    "claim_due",
    "deliver_shard",
    "new_token",
    "recover",
    "release_stale_claims",
    "run_realtime_shard",
    "split_queue",
]
