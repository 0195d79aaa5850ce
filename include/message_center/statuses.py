"""Event and delivery-log statuses: the API values and the labels shown to people (ACC's)."""

from __future__ import annotations

from enum import StrEnum


class EventStatus(StrEnum):
    PENDING = "pending"
    PENDING_DELIVERY = "pending_delivery"
    SENT = "sent"
    IGNORED = "ignored"
    FAILED = "failed"
    NOT_TAKEN_INTO_ACCOUNT = "not_taken_into_account"
    EXPIRED = "expired"

    @property
    def label(self) -> str:
        return EVENT_STATUS_LABELS[self]


EVENT_STATUS_LABELS: dict[EventStatus, str] = {
    EventStatus.PENDING: "Pending",
    EventStatus.PENDING_DELIVERY: "Pending delivery",
    EventStatus.SENT: "Sent",
    EventStatus.IGNORED: "Ignored by the delivery",
    EventStatus.FAILED: "Delivery failed",
    EventStatus.NOT_TAKEN_INTO_ACCOUNT: "Event not taken into account",
    EventStatus.EXPIRED: "Event expired",
}


class DeliveryStatus(StrEnum):
    """Delivery-log (ledger) states; the last three are final and copied onto the event."""

    QUEUED = "queued"
    SENDING = "sending"
    RETRY = "retry"
    SENT = "sent"
    IGNORED = "ignored"
    FAILED = "failed"


EVENT_KINDS = ("rt", "batch")
# Channels are not listed here: ask the registry (message_center.channel).
#: ``NOTIFY`` / ``LISTEN`` channel per event kind: the push API notifies after it commits
#: new events, real-time shards listen.
NOTIFY_CHANNELS = {"rt": "mc_rt_events", "batch": "mc_batch_events"}


def event_table(kind: str) -> str:
    """The queue table of an event kind; refuses anything else (it is put into SQL)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
    return f"{kind}_event"
