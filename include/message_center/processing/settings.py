"""The knobs of event processing, validated once, so a bad manual-run param fails the split
with a message naming the param instead of half-processing a queue."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from message_center.delivery.ledger import RetryPolicy
from message_center.delivery.quarantine import QuarantineRules

#: (minimum, maximum) per field: wide enough for production, narrow enough to catch typos.
#: The one table: the DAGs' params (``mc_airflow.params``) take their bounds from it.
BOUNDS: dict[str, tuple[int, int]] = {
    "routing_batch_size": (1, 1_000_000),
    "shards": (1, 64),
    "max_events_per_run": (1, 100_000_000),
    "delivery_chunk": (1, 10_000),
    "smtp_sessions": (1, 256),
    "claim_lease_seconds": (1, 7 * 86_400),
    "max_tries": (1, 100),
    "retry_backoff_seconds": (0, 86_400),
    "retry_backoff_max_seconds": (0, 7 * 86_400),
    "sending_timeout_seconds": (1, 86_400),
}
#: The settings that take fractions of a second; the others are whole numbers.
FRACTIONAL = ("retry_backoff_seconds", "retry_backoff_max_seconds")


@dataclass(frozen=True)
class ProcessingSettings:
    """How much to claim, how to split it, and how delivery retries.

    * ``routing_batch_size`` - events claimed by one claim statement (one transaction).
    * ``shards`` - parallel shard tasks a claim is split into.
    * ``max_events_per_run`` - batch: stop claiming after this many in one DAG run, so a
      run ends in bounded time and the next run picks up the rest.
    * ``delivery_chunk`` - messages armed (``sending``, not yet handed) per ledger
      transaction: bounds memory; outcomes are recorded as they come, and after a crash
      only the messages in progress (one per SMTP session) have an unknown outcome.
    * ``smtp_sessions`` - delivery sessions of one shard task working at once (each with
      its own SMTP connection; SMS requests too), within the relays' limits (see
      :mod:`message_center.delivery.pool`).
    * ``claim_lease_seconds`` - a claimed event becomes due again after this long if its
      worker died (shards renew the lease while they work).
    * ``max_tries`` - delivery attempts before a transiently failing event expires.
    * ``retry_backoff_seconds`` / ``retry_backoff_max_seconds`` - exponential backoff:
      ``base * 2**(attempt-1)``, capped.
    * ``sending_timeout_seconds`` - a message handed to the provider this long ago with
      no outcome belongs to a dead worker: its outcome is unknown (see
      :mod:`message_center.delivery.ledger`). A live shard stops a chunk after half of it
      and gives the rest back, and waits at most this long for an unreachable database
      (its recorder gives up a little earlier, so the recovery never races it). It must
      outlast the longest SMTP transaction the relay's timeouts allow: :meth:`covering`
      raises it to that, which the Airflow layer does from the ``smtp_default``
      connection unless a run sets it explicitly (see ``docs/operations/relay-faults.md``).
    * ``quarantine`` - the quarantine rules per channel (not a run param: the Airflow
      layer reads them from the ``mc_quarantine_rules`` Variable).
    """

    routing_batch_size: int = 10_000
    shards: int = 4
    max_events_per_run: int = 200_000
    delivery_chunk: int = 100
    smtp_sessions: int = 1
    claim_lease_seconds: int = 1_800
    max_tries: int = 5
    retry_backoff_seconds: float = 60.0
    retry_backoff_max_seconds: float = 3_600.0
    sending_timeout_seconds: int = 600
    quarantine: QuarantineRules = field(default_factory=QuarantineRules)

    def __post_init__(self) -> None:
        if not isinstance(self.quarantine, QuarantineRules):
            raise ValueError("processing setting quarantine: expected QuarantineRules")
        for item in fields(self):
            if item.name not in BOUNDS:
                continue
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"processing setting {item.name}: {value!r} is not a number")
            low, high = BOUNDS[item.name]
            if not low <= value <= high:
                raise ValueError(f"processing setting {item.name}: {value} is outside "
                                 f"{low:g}..{high:g}")
        if self.retry_backoff_max_seconds < self.retry_backoff_seconds:
            raise ValueError("processing setting retry_backoff_max_seconds is smaller than "
                             "retry_backoff_seconds")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **defaults: Any) -> ProcessingSettings:
        """Build from DAG params (or any mapping); unknown keys are ignored, so the DAGs can
        keep their other params (loop duration, ...) in the same mapping."""
        known = {item.name: item.type for item in fields(cls) if item.name in BOUNDS}
        kwargs: dict[str, Any] = dict(defaults)
        for name in known:
            if name not in values or values[name] is None:
                continue
            value = values[name]
            is_int = name not in FRACTIONAL
            try:
                if isinstance(value, bool):
                    raise ValueError
                kwargs[name] = int(value) if is_int else float(value)
                if is_int and isinstance(value, float) and value != int(value):
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(f"processing setting {name}: {value!r} is not a "
                                 f"{'whole number' if is_int else 'number'}") from None
        if "retry_backoff_max_seconds" not in kwargs and "retry_backoff_seconds" in kwargs:
            kwargs["retry_backoff_max_seconds"] = max(cls.retry_backoff_max_seconds,
                                                      kwargs["retry_backoff_seconds"])
        return cls(**kwargs)

    def covering(self, transaction_seconds: float) -> ProcessingSettings:
        """These settings, with ``sending_timeout_seconds`` raised to outlast one message
        whose relay takes every timeout in full (``transaction_seconds``, e.g.
        :attr:`SmtpSettings.transaction_seconds
        <message_center.delivery.smtp.SmtpSettings.transaction_seconds>``) plus a margin
        (10 %, at least a minute) for writing its outcome: the crash recovery never calls
        a message still waiting for its relay's reply unknown. (The claim lease need not
        follow: a shard whose lease ran out while a session waited loses its unstarted
        events to other workers, and its own attempt to hand one is refused.)"""
        needed = min(math.ceil(transaction_seconds + max(60.0, 0.1 * transaction_seconds)),
                     BOUNDS["sending_timeout_seconds"][1])
        return replace(self, sending_timeout_seconds=max(self.sending_timeout_seconds,
                                                         needed))

    @property
    def retry_policy(self) -> RetryPolicy:
        """The part of these settings the delivery ledger needs to reschedule a message."""
        return RetryPolicy(max_tries=self.max_tries,
                           backoff_base_seconds=self.retry_backoff_seconds,
                           backoff_max_seconds=self.retry_backoff_max_seconds)

    def backoff_seconds(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1`` after ``attempt`` transient failures."""
        return self.retry_policy.backoff_seconds(attempt)
