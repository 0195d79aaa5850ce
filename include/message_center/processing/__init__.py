"""Event processing on an execution instance: split and link the queue, deliver, recover.

* :mod:`.queue` - claiming due events (``FOR UPDATE SKIP LOCKED``) into shards and
  linking them to published templates in the same statement, stale-claim release;
* :mod:`.runner` - a shard's delivery loop, the real-time loop, crash recovery;
* :mod:`.settings` - the validated knobs (batch size, shards, retries, leases);
* :mod:`.notify` - ``LISTEN`` wake-ups from the push API.

The delivery log (the ledger that makes sends exactly-once) is in
:mod:`message_center.delivery.ledger`; copying outcomes onto events in
:mod:`message_center.status_sync`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy re-exports: the delivery ledger imports processing.queue, and processing.runner
# imports the delivery package; resolving names on first use keeps that cycle harmless.
_EXPORTS = {
    "ProcessingSettings": "settings",
    "ShardClaim": "queue",
    "claim_due": "queue",
    "new_token": "queue",
    "release_stale_claims": "queue",
    "split_queue": "queue",
    "ShardStats": "runner",
    "deliver_shard": "runner",
    "recover": "runner",
    "run_realtime_shard": "runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
