"""Event and delivery-log statuses: the API values, the labels shown to people (ACC's) and
the sets of statuses the code reasons with (final, open, ...), SQL included.

The sets are defined here and nowhere else: SQL takes them through :func:`sql_in` (a
rendered ``IN`` list, so a statement reads the same as before and still matches the
partial indexes whose predicates name these values). Which statement moves a row from one
status to another is :mod:`message_center.state`; the state machine is drawn in
``docs/architecture/event-state.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    """Delivery-log (ledger) states; the final ones (:data:`FINAL_DELIVERY`) are copied onto
    the event."""

    QUEUED = "queued"
    SENDING = "sending"
    RETRY = "retry"
    SENT = "sent"
    IGNORED = "ignored"
    FAILED = "failed"



class AnswerClass(StrEnum):
    """What a provider's answer (or its absence) says: :mod:`message_center.delivery.
    classification` decides it; every class but *sent* is stored as the delivery log's
    ``failure_class`` (and archived with it), and the reports count failures by it."""

    SENT = "sent"
    HARD = "hard"
    SOFT = "soft"
    POLICY = "policy"
    THROTTLE = "throttle"
    TRANSIENT = "transient"
    ERROR = "error"
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        return FAILURE_CLASS_LABELS.get(self, "Sent")


#: Every stored failure class value (the delivery log's CHECK constraint uses the same list),
#: in the reports' order.
FAILURE_CLASSES = tuple(c.value for c in AnswerClass if c is not AnswerClass.SENT)
#: What the reports call each failure class.
FAILURE_CLASS_LABELS: dict[str, str] = {
    AnswerClass.HARD: "Hard bounce (the address does not exist)",
    AnswerClass.SOFT: "Soft bounce (the mailbox cannot take it now)",
    AnswerClass.POLICY: "Refused by policy (spam, reputation)",
    AnswerClass.THROTTLE: "Throttled by the provider",
    AnswerClass.TRANSIENT: "Temporary provider error",
    AnswerClass.ERROR: "Message or sender refused",
    AnswerClass.UNKNOWN: "Outcome unknown (may have been delivered)",
}
#: The delivery outcomes a template's ``on_failure`` may recycle an event after (a new event
#: on the fallback channel, :mod:`message_center.state`): a hard failure (class *hard*),
#: the retries used up (the event *expired* after delivery attempts), the address in
#: quarantine (*ignored*). Never *unknown*: the first message may have arrived.
RECYCLE_AFTER: tuple[str, ...] = ("hard", "retries_exhausted", "quarantined")
#: The label of failed events whose delivery log has no class (failed before any answer).
UNCLASSIFIED_LABEL = "No failure class"

# -- sets of event statuses -------------------------------------------------------------
#: Still to be handled: queued (or waiting for a retry), claimed, linked and handed to the
#: delivery. A claim is only ever given back from these (the claim index covers them).
OPEN_EVENT: tuple[EventStatus, ...] = (EventStatus.PENDING, EventStatus.PENDING_DELIVERY)
#: An event in one of these is done: never processed again, kept until the clean-up deletes
#: it (only a bounce arriving after *sent* still turns it *failed*). Reports count it as
#: finished at its ``processed`` time.
FINAL_EVENT: tuple[EventStatus, ...] = (
    EventStatus.SENT, EventStatus.IGNORED, EventStatus.FAILED,
    EventStatus.NOT_TAKEN_INTO_ACCOUNT, EventStatus.EXPIRED)
#: The final statuses that are errors (every one but *sent*), in the reports' order.
ERROR_EVENT: tuple[EventStatus, ...] = (
    EventStatus.NOT_TAKEN_INTO_ACCOUNT, EventStatus.EXPIRED, EventStatus.FAILED,
    EventStatus.IGNORED)

# -- sets of delivery-log (ledger) statuses ---------------------------------------------
#: A ledger row a shard may arm (``sending``): never tried yet, or waiting for its retry.
ARMABLE_DELIVERY: tuple[DeliveryStatus, ...] = (DeliveryStatus.QUEUED, DeliveryStatus.RETRY)
#: The ledger's final statuses: the outcome copied onto the event (updateEventStatus).
FINAL_DELIVERY: tuple[DeliveryStatus, ...] = (
    DeliveryStatus.SENT, DeliveryStatus.IGNORED, DeliveryStatus.FAILED)
#: A ledger row whose delivery started (in flight or final): its event is the ledger's
#: business from then on, so a claim is never given back over it (it could be sent twice).
DELIVERY_STARTED: tuple[DeliveryStatus, ...] = (DeliveryStatus.SENDING, *FINAL_DELIVERY)


def sql_in(statuses: Iterable[str]) -> str:
    """A set of statuses as an SQL ``IN`` list, ``('sent', 'ignored', 'failed')``.

    Rendered rather than bound (``= ANY(:x)``) so that the planner sees the values: the
    partial indexes (``WHERE status IN ('pending', 'pending_delivery')``, ...) match only
    a predicate it can read. Only this module's values go in (no quoting needed).
    """
    values = [str(s) for s in statuses]
    if not values or any(not v.replace("_", "").isalnum() for v in values):
        raise ValueError(f"not a set of statuses: {values!r}")
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


#: The statuses a delivery-status webhook reports (``event.<status>``): every final one. A
#: bounce that turns *sent* into *failed* later is reported as ``event.bounced``.
REPORTED_EVENT: tuple[EventStatus, ...] = FINAL_EVENT


class WebhookStatus(StrEnum):
    """A webhook message (one outbox row, for one subscription): waiting to be sent (or
    for its next retry), delivered (a 2xx answer), or failed (retries exhausted, the
    subscription disabled or deleted); a failed or delivered message can be replayed."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


#: Outbox rows that are done with (what the clean-up purges after its delay).
WEBHOOK_DONE: tuple[WebhookStatus, ...] = (WebhookStatus.DELIVERED, WebhookStatus.FAILED)

EVENT_KINDS = ("rt", "batch")
# Channels are not listed here: ask the registry (message_center.channel).
#: ``NOTIFY`` / ``LISTEN`` channel per event kind: the push API notifies after it commits
#: new events, real-time shards listen.
NOTIFY_CHANNELS = {"rt": "mc_rt_events", "batch": "mc_batch_events"}
#: ``NOTIFY`` channel of the webhook outbox: a commit that wrote webhook messages wakes the
#: dispatcher (``mcWebhooks``).
WEBHOOK_NOTIFY_CHANNEL = "mc_webhooks"


def event_table(kind: str) -> str:
    """The queue table of an event kind; refuses anything else (it is put into SQL)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
    return f"{kind}_event"
