"""The webhook outbox, as :mod:`message_center.state` writes it: one message per status
change it reports and per matching subscription, in the very statement that changes the
status (a transactional outbox: a message exists if and only if its change committed).

:mod:`message_center.state` adds :func:`outbox_ctes` to a transition statement whose
CTE ``source`` returns :data:`RETURNING` (the changed events, columns ``wh_*``); the
fragment is two more CTEs: the changes to report and the ``INSERT INTO webhook_outbox``
(fan-out to every enabled subscription whose ``events`` and ``event_types`` filters
match). Subscriptions are read in the same statement, so a filter change applies from
the next change on.

Sequence numbers come from a counter on the event row (``webhook_seq``): the UPDATE that
changes the status adds :func:`seq_set` to its SET list, so the number is taken under the
event's row lock (a concurrent writer waits for the commit and then counts on from the
committed value) and returned as ``wh_seq``. It counts the reported changes only, so one
event's numbers are contiguous across its messages (a subscription whose filter skips
some sees gaps).

A deployment without webhooks must not pay for them: :func:`active` tells whether any
enabled subscription exists (one indexed query, remembered :data:`CHECK_SECONDS` per
database and process), and the state module uses the statement without the fragment
when none does. So a change made within those seconds of the *first* subscription's
creation may not be reported (``MC_WEBHOOK_CHECK_SECONDS``, default 5; 0 asks every time).

:func:`enqueue` (one message) and :func:`enqueue_many` (a batch, one statement) are the
entry point for anything else that reports on an event (the tracking of opens and clicks:
``event.opened`` / ``event.clicked``, :mod:`message_center.tracking.hits`): they write
messages in the caller's transaction with the same fan-out and sequence numbers (the
counter raised by the number of messages per event, events locked in id order).
"""

from __future__ import annotations

import json
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from message_center.ids import NEXT_ID_SQL
from message_center.statuses import EVENT_KINDS, REPORTED_EVENT, event_table, sql_in

#: Seconds the answer of :func:`active` is kept per database (``MC_WEBHOOK_CHECK_SECONDS``).
CHECK_SECONDS = 5.0
BOUNCED = "event.bounced"
OPENED = "event.opened"
CLICKED = "event.clicked"
#: A message sent by "Send a test" (only to the subscription tested, whatever its filter).
TEST = "webhook.test"

#: The columns the source CTE of :func:`outbox_ctes` returns (over event ``e``; a
#: statement with a delivery-log row adds ``wh_class`` / ``wh_reason`` itself, see
#: :data:`NO_FAILURE`).
RETURNING = """, e.id AS wh_id, e.status AS wh_status, e.external_id AS wh_external_id,
              e.type AS wh_type, e.wished_channel AS wh_channel,
              e.template_name AS wh_template, e.template_version AS wh_version,
              e.error_reason AS wh_error, e.processed AS wh_at, e.sandbox AS wh_sandbox,
              e.webhook_seq AS wh_seq"""
#: ... for a statement that knows no failure class.
NO_FAILURE = ", NULL::text AS wh_class, NULL::text AS wh_reason"

#: A sandbox event's messages say so (``"sandbox": true``); others are as they were.
_SANDBOX_FIELD = """
                   || CASE WHEN c.wh_sandbox THEN jsonb_build_object('sandbox', true)
                           ELSE jsonb_build_object() END"""

_REPORTED = sql_in(REPORTED_EVENT)
#: The subscriptions a message named ``c.wh_name`` about event type ``c.wh_type`` goes to.
_MATCHING = """webhook_subscription s
              ON s.enabled AND NOT s.deleted AND c.wh_name = ANY(s.events)
             AND (cardinality(s.event_types) = 0 OR c.wh_type = ANY(s.event_types))"""


def seq_set(reported: str = "") -> str:
    """The SET item (after the statement's own) that takes the event's next sequence
    number: ``reported`` is the SQL condition under which the new status is one that is
    reported (empty: always), so the counter only moves for the changes that write
    messages."""
    step = f"CASE WHEN {reported} THEN 1 ELSE 0 END" if reported else "1"
    return f", webhook_seq = e.webhook_seq + {step}"


def outbox_ctes(kind: str, source: str, *, bounced: bool = False) -> str:
    """The CTEs that write the outbox messages of the events ``source`` changed (kind
    ``kind``; ``bounced``: a *sent* event failed by a late bounce, ``event.bounced``).
    Starts with a comma: it follows the statement's own CTEs."""
    event_table(kind)  # refuses anything but a known kind (it is put into SQL)
    name = f"'{BOUNCED}'" if bounced else "'event.' || c.wh_status"
    return f""", wh_changes AS (
            SELECT c.*, {name} AS wh_name
            FROM {source} c WHERE c.wh_status IN {_REPORTED}
        ), wh_out AS (
            INSERT INTO webhook_outbox (id, subscription_id, event_kind, event_id, seq, name,
                                        data, occurred_at)
            SELECT {NEXT_ID_SQL}, s.id, '{kind}', c.wh_id, c.wh_seq, c.wh_name,
                   jsonb_build_object(
                       'externalId', c.wh_external_id, 'type', c.wh_type,
                       'channel', c.wh_channel, 'status', c.wh_status,
                       'failureClass', c.wh_class, 'failureReason', c.wh_reason,
                       'reason', c.wh_error, 'template', c.wh_template,
                       'templateVersion', c.wh_version){_SANDBOX_FIELD},
                   coalesce(c.wh_at, now())
            FROM wh_changes c JOIN {_MATCHING}
        )"""


_known: weakref.WeakKeyDictionary[Engine, tuple[float, bool]] = weakref.WeakKeyDictionary()
_ACTIVE = text("SELECT EXISTS (SELECT 1 FROM webhook_subscription "
               "WHERE enabled AND NOT deleted)")


def check_seconds() -> float:
    raw = os.environ.get("MC_WEBHOOK_CHECK_SECONDS", "").strip()
    try:
        return max(float(raw), 0.0) if raw else CHECK_SECONDS
    except ValueError:
        raise ValueError(f"MC_WEBHOOK_CHECK_SECONDS must be a number of seconds; got "
                         f"{raw!r}") from None


def active(conn: Connection) -> bool:
    """Does any enabled subscription exist on this database (asked at most every
    :func:`check_seconds` per engine)?"""
    now = time.monotonic()
    engine = conn.engine
    known = _known.get(engine)
    if known is not None and known[0] > now:
        return known[1]
    on = bool(conn.execute(_ACTIVE).scalar())
    _known[engine] = (now + check_seconds(), on)
    return on


def forget() -> None:
    """Ask again at the next change (after a subscription was created or enabled here)."""
    _known.clear()


#: The events' counters raised by their number of messages, rows locked in id order first
#: (a status copy locks its events too: one order, no deadlock between two enqueues).
_ENQUEUE_COUNT = """
    {kind}_locked AS MATERIALIZED (
        SELECT e.id FROM {table} e JOIN k ON k.event_kind = '{kind}' AND e.id = k.event_id
        ORDER BY e.id FOR UPDATE OF e
    ), {kind}_counted AS (
        UPDATE {table} e SET webhook_seq = e.webhook_seq + k.k
        FROM k JOIN {kind}_locked l ON k.event_kind = '{kind}' AND l.id = k.event_id
        WHERE e.id = l.id
        RETURNING k.event_kind, e.id AS event_id, e.webhook_seq - k.k AS seq_before,
                  e.status AS wh_status, e.type AS wh_type, e.external_id, e.wished_channel,
                  e.template_name, e.template_version, e.sandbox AS wh_sandbox
    )"""
_ENQUEUE = f"""
    WITH m AS (
        SELECT * FROM unnest(CAST(:kinds AS text[]), CAST(:ids AS bigint[]),
                             CAST(:names AS text[]), CAST(:extras AS jsonb[]),
                             CAST(:ats AS timestamptz[])) WITH ORDINALITY
             AS m(event_kind, event_id, wh_name, extra, at, n)
    ), k AS (
        SELECT event_kind, event_id, count(*)::integer AS k FROM m GROUP BY 1, 2
    ), {", ".join(_ENQUEUE_COUNT.format(kind=kind, table=event_table(kind))
                  for kind in EVENT_KINDS)}, numbered AS (
        SELECT m.*, e.wh_status, e.wh_type, e.external_id, e.wished_channel,
               e.template_name, e.template_version, e.wh_sandbox,
               e.seq_before + row_number() OVER (PARTITION BY m.event_kind, m.event_id
                                                 ORDER BY m.n) AS wh_seq
        FROM m JOIN ({" UNION ALL ".join(f"SELECT * FROM {kind}_counted"
                                          for kind in EVENT_KINDS)}) e
             ON e.event_kind = m.event_kind AND e.event_id = m.event_id
    )
    INSERT INTO webhook_outbox (id, subscription_id, event_kind, event_id, seq, name, data,
                                occurred_at)
    SELECT {NEXT_ID_SQL}, s.id, c.event_kind, c.event_id, c.wh_seq, c.wh_name,
           jsonb_build_object('externalId', c.external_id, 'type', c.wh_type,
                              'channel', c.wished_channel, 'status', c.wh_status,
                              'template', c.template_name,
                              'templateVersion', c.template_version){_SANDBOX_FIELD}
           || c.extra,
           coalesce(c.at, now())
    FROM numbered c JOIN {_MATCHING}
    ORDER BY c.n
    RETURNING id
"""


@dataclass(frozen=True)
class Report:
    """One message about an event for :func:`enqueue_many`: ``name`` (``event.opened``,
    ...), ``extra`` fields added to its ``data``, ``at`` when it happened (None: now)."""

    kind: str
    event_id: int
    name: str
    extra: Mapping[str, Any] | None = None
    at: Any = None


def enqueue(conn: Connection, kind: str, event_id: int, name: str, *,
            extra: Mapping[str, Any] | None = None, at: Any = None) -> list[int]:
    """Write the ``name`` message (``event.opened``, ``event.clicked``, ...) about event
    ``event_id`` of ``kind`` for every enabled subscription that wants it, in the
    caller's transaction (commit it with the change it reports). ``extra``: fields added
    to the message's ``data`` (``{"automated": true, "url": ...}``); ``at``: when it
    happened (default now). Returns the message ids (none when nobody subscribed)."""
    return enqueue_many(conn, [Report(kind, event_id, name, extra, at)])


def enqueue_many(conn: Connection, reports: Sequence[Report]) -> list[int]:
    """:func:`enqueue` for a batch, in one statement (the tracking's hit batches: the
    first opens and first clicks they record). Messages about the same event take
    consecutive sequence numbers in the order given (from its counter, raised here even
    when no subscription wants them: the caller asks :func:`active` first)."""
    for report in reports:
        event_table(report.kind)  # refuses an unknown kind
        if not report.name.startswith("event.") or \
                not report.name[6:].replace("_", "").isalnum():
            raise ValueError(f"not a webhook event name: {report.name!r}")
    if not reports:
        return []
    return [int(i) for i in conn.execute(text(_ENQUEUE), {
        "kinds": [r.kind for r in reports], "ids": [r.event_id for r in reports],
        "names": [r.name for r in reports],
        "extras": [json.dumps(dict(r.extra or {})) for r in reports],
        "ats": [r.at for r in reports]}).scalars()]
