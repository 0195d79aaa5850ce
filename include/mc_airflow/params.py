"""The processing DAGs' params, built from the domain's one table of bounds.

DAG files import this module at parse time: it imports ``airflow.sdk`` and the
processing settings (no connection, no database).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from message_center.processing.settings import BOUNDS, FRACTIONAL


def processing_param(name: str, default: float, *, title: str, description: str,
                     maximum: float | None = None) -> Param:
    """A ``Param`` for the processing setting ``name``: its type and bounds are
    :class:`~message_center.processing.settings.ProcessingSettings`' (``maximum`` may
    only narrow the upper bound, for a DAG whose own limit is lower)."""
    low, high = BOUNDS[name]
    if maximum is not None and not low <= maximum <= high:
        raise ValueError(f"{name}: maximum {maximum} is outside {low}..{high}")
    return Param(default, type="number" if name in FRACTIONAL else "integer", minimum=low,
                 maximum=high if maximum is None else maximum, title=title,
                 description=description)


def processing_params(*, shards: int, routing_batch_size: int, routing_batch_max: int,
                      delivery_chunk: int, smtp_sessions: int,
                      retry_backoff_seconds: float,
                      claim_lease_seconds: int, sending_timeout_seconds: int,
                      shards_description: str) -> dict[str, Any]:
    """The params both processing DAGs share (defaults differ: latency vs throughput)."""
    return {
        "shards": processing_param("shards", shards, title="Shards",
                                   description=shards_description),
        "routing_batch_size": processing_param(
            "routing_batch_size", routing_batch_size, maximum=routing_batch_max,
            title="Routing batch size",
            description="Events claimed per claim statement (one transaction)."),
        "delivery_chunk": processing_param(
            "delivery_chunk", delivery_chunk, title="Delivery chunk",
            description="Messages armed per ledger transaction (bounds memory); outcomes "
                        "are recorded as they come."),
        "smtp_sessions": processing_param(
            "smtp_sessions", smtp_sessions, title="SMTP sessions per shard",
            description="Messages each shard task sends at once, each over its own SMTP "
                        "connection (SMS requests too). The relay's limits in the "
                        "connection extras (max_sessions, max_messages_per_second) are "
                        "shared by the shards and always win."),
        "max_tries": processing_param(
            "max_tries", 5, title="Max tries",
            description="Delivery attempts before a transiently failing event expires."),
        "retry_backoff_seconds": processing_param(
            "retry_backoff_seconds", retry_backoff_seconds, title="Retry backoff (s)",
            description="First retry delay; doubles per attempt, capped at one hour."),
        "claim_lease_seconds": processing_param(
            "claim_lease_seconds", claim_lease_seconds, title="Claim lease (s)",
            description="Claimed events whose worker died become due again after this long."),
        "sending_timeout_seconds": processing_param(
            "sending_timeout_seconds", sending_timeout_seconds, title="Sending timeout (s)",
            description="A message handed to the provider this long ago with no outcome "
                        "has an unknown outcome; also the longest a shard waits for an "
                        "unreachable database."),
    }
