"""Bulk actions on the queue: cancel, retry or replay every event a filter selects.

Always in two steps. :func:`preview` (the dry run) counts what the action would change
and shows a sample; :func:`run_action` then does it, set-based in batches (one statement
per batch: :func:`message_center.state.bulk_step`, the owner of every status change),
with the count the operator saw as a guard: refused when the count moved by more than
the tolerance. The action's id is the ``mcBulkAction`` DAG run's: its row in
``bulk_action`` and the events it touched (``bulk_action_event``) make a re-run resume
where it stopped and never act twice on an event. Its audit row is written with the
transaction that marks it done.

- **cancel**: pending events no shard has claimed end *Event expired*, "cancelled by
  <user>" (a claimed event is the delivery's: it may be in a relay's hands).
- **retry**: failed or expired events known not sent go back to the queue. An outcome
  ``unknown`` (the relay or a crash left it open whether it went out) only with
  ``confirmUnknown``: the recipient may get it twice. An event past its expiration only
  with a new ``expiration``.
- **replay**: a new event from a final event's body, ``replayed_from`` linking it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from message_center import audit, state
from message_center.ids import to_public
from message_center.operations.filters import (
    BulkFilter,
    OperationInputError,
    invalid,
    parse_filter,
)
from message_center.statuses import event_table

ACTIONS = ("cancel", "retry", "replay")
SAMPLE_SIZE = 10
DEFAULT_BATCH = 1000
MAX_TOLERANCE = 1_000_000
#: Rounds of "count what is left and go again" after the batches ran dry (events locked
#: by a shard's claim at that moment are skipped, then seen again or gone).
_SWEEPS = 5


class GuardRefused(RuntimeError):
    """The count moved by more than the tolerance since the dry run: nothing was done."""

    def __init__(self, count: int, expected: int, tolerance: int) -> None:
        self.count, self.expected, self.tolerance = count, expected, tolerance
        super().__init__(f"refused: {count} events match now, the dry run counted "
                         f"{expected} (tolerance {tolerance}); run the dry run again")


@dataclass(frozen=True)
class ActionRequest:
    """A validated action: what, on which events, with which confirmations, by whom."""

    action: str
    filter: BulkFilter
    user: str
    confirm_unknown: bool = False
    expiration: datetime | None = None

    @property
    def reason(self) -> str:
        return {"cancel": f"cancelled by {self.user}",
                "retry": f"retried by {self.user}",
                "replay": f"replayed by {self.user}"}[self.action]

    def to_params(self) -> dict[str, Any]:
        """The DAG params (and the audit's record) of this request."""
        return {"action": self.action, "filter": self.filter.to_dict(), "user": self.user,
                "confirmUnknown": self.confirm_unknown,
                "expiration": self.expiration.isoformat() if self.expiration else None}


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, f"{name} must be true or false", where="")
    return value


def parse_count(body: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOLERANCE \
            * 1000:
        raise invalid(name, f"{name} must be a whole number, 0 or more", where="")
    return value


def parse_request(body: Any, *, user: str | None = None) -> ActionRequest:
    """``{"action", "filter", "confirmUnknown", "expiration", "user"}`` (``user`` given
    by the caller wins: the API's authenticated user); errors name the field."""
    if not isinstance(body, Mapping):
        raise invalid("body", "the body must be a JSON object", where="")
    action = body.get("action")
    if action not in ACTIONS:
        raise invalid("action", f"action must be one of: {', '.join(ACTIONS)}; got {action!r}",
                      where="")
    who = user or body.get("user")
    if not isinstance(who, str) or not who.strip() or len(who) > 255:
        raise invalid("user", "user must name who asks for the action", where="")
    expiration = None
    if body.get("expiration") not in (None, ""):
        try:
            expiration = datetime.fromisoformat(str(body["expiration"]).replace("Z", "+00:00"))
        except ValueError:
            raise invalid("expiration", "expiration must be an ISO 8601 date-time",
                          where="") from None
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        if expiration <= datetime.now(UTC):
            raise invalid("expiration", "expiration must be in the future", where="")
        if action == "cancel":
            raise invalid("expiration", "expiration applies to retry and replay only",
                          where="")
    confirm = _flag(body, "confirmUnknown")
    if confirm and action != "retry":
        raise invalid("confirmUnknown", "confirmUnknown applies to retry only", where="")
    return ActionRequest(action=action, filter=parse_filter(body.get("filter")),
                         user=who.strip(), confirm_unknown=confirm, expiration=expiration)


@dataclass
class Preview:
    """The dry run: how many events the action changes, a sample, and what it leaves out
    and why (a retry: ``unknownOutcome`` without ``confirmUnknown``, ``pastExpiration``
    without a new expiration)."""

    count: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sample": self.sample, "excluded": self.excluded}


def _params(request: ActionRequest, kind: str, where_params: dict[str, Any]) -> dict[str, Any]:
    return {**where_params, "kind": kind, "confirm_unknown": request.confirm_unknown,
            "expiration": request.expiration}


def _untouched(action_id: str | None) -> str:
    if action_id is None:
        return "TRUE"
    return ("NOT EXISTS (SELECT 1 FROM bulk_action_event b WHERE b.action_id = :action "
            "AND b.event_kind = :kind AND b.event_id = e.id)")


def count(conn: Connection, request: ActionRequest, action_id: str | None = None) -> int:
    """How many events the action would change now (not yet touched by ``action_id``)."""
    where, params = request.filter.sql()
    eligible = state.BULK_ELIGIBLE[request.action]
    total = 0
    for kind in request.filter.kinds:
        total += conn.execute(text(
            f"SELECT count(*) FROM {event_table(kind)} e WHERE ({where}) AND ({eligible}) "
            f"AND {_untouched(action_id)}"),
            {**_params(request, kind, params), "action": action_id}).scalar_one()
    return int(total)


def preview(conn: Connection, request: ActionRequest, sample_size: int = SAMPLE_SIZE) -> Preview:
    """The dry run (reads only)."""
    where, params = request.filter.sql()
    eligible = state.BULK_ELIGIBLE[request.action]
    result = Preview(count=count(conn, request))
    rows: list[dict[str, Any]] = []
    for kind in request.filter.kinds:
        found = conn.execute(text(f"""
            SELECT e.id, e.type, e.status, e.wished_channel, e.external_id, e.created,
                   e.error_reason, d.failure_class
            FROM {event_table(kind)} e
            LEFT JOIN delivery_log d ON d.event_kind = :kind AND d.event_id = e.id
            WHERE ({where}) AND ({eligible}) ORDER BY e.id LIMIT :n"""),
            {**_params(request, kind, params), "n": sample_size}).mappings().all()
        rows.extend({"id": str(to_public(r["id"])), "queue": kind, "type": r["type"],
                     "status": r["status"], "channel": r["wished_channel"],
                     "externalId": r["external_id"], "created": r["created"].isoformat(),
                     "failureClass": r["failure_class"], "errorReason": r["error_reason"]}
                    for r in found)
    result.sample = rows[:sample_size]
    if request.action == "retry":
        for name, predicate, applies in (
                ("unknownOutcome", state.UNKNOWN_OUTCOME_EVENT, not request.confirm_unknown),
                ("pastExpiration", state.PAST_EXPIRATION_EVENT, request.expiration is None)):
            if not applies:
                continue
            result.excluded[name] = sum(int(conn.execute(text(
                f"SELECT count(*) FROM {event_table(kind)} e WHERE ({where}) AND "
                f"({predicate})"), _params(request, kind, params)).scalar_one())
                for kind in request.filter.kinds)
    return result


def check_guard(found: int, expected: int | None, tolerance: int) -> None:
    """Raise :class:`GuardRefused` when ``found`` is further than ``tolerance`` from
    ``expected`` (no expectation: no guard)."""
    if expected is not None and abs(found - expected) > tolerance:
        raise GuardRefused(found, expected, tolerance)


@dataclass(frozen=True)
class ActionResult:
    action_id: str
    action: str
    state: str
    counted: int
    done: int

    def to_dict(self) -> dict[str, Any]:
        return {"actionId": self.action_id, "action": self.action, "state": self.state,
                "counted": self.counted, "done": self.done}


_READ_ACTION = text("SELECT action, state, counted, done_count, expected_count, tolerance "
                    "FROM bulk_action WHERE id = :id FOR UPDATE")


def _start(engine: Engine, action_id: str, request: ActionRequest, expected: int | None,
           tolerance: int) -> tuple[str, int]:
    """The action's row: created (guard checked) on the first run, read on a re-run."""
    with engine.begin() as conn:
        row = conn.execute(_READ_ACTION, {"id": action_id}).mappings().first()
        if row is not None:
            if row["action"] != request.action:
                raise OperationInputError([{
                    "loc": ["body", "action"], "field": "action", "type": "value_error",
                    "msg": f"action {action_id} is a {row['action']}, not a "
                           f"{request.action}"}])
            return str(row["state"]), int(row["counted"])
        found = count(conn, request)
        refused = None
        try:
            check_guard(found, expected, tolerance)
        except GuardRefused as exc:
            refused = exc
        conn.execute(text("""
            INSERT INTO bulk_action (id, action, filter, options, requested_by, state,
                                     counted, expected_count, tolerance, reason, finished)
            VALUES (:id, :action, CAST(:filter AS jsonb), CAST(:options AS jsonb), :user,
                    :state, :counted, :expected, :tolerance, :reason,
                    CASE WHEN :state = 'refused' THEN now() END)"""), {
            "id": action_id, "action": request.action,
            "filter": _json(request.filter.to_dict()),
            "options": _json({"confirmUnknown": request.confirm_unknown,
                              "expiration": request.expiration}),
            "user": request.user, "state": "refused" if refused else "running",
            "counted": found, "expected": expected, "tolerance": tolerance,
            "reason": str(refused) if refused else None})
        if refused:
            audit.record(conn, actor=request.user, action=audit.BULK_PREFIX + request.action,
                         target=action_id, details={
                             **_details(request, found, expected, tolerance), "done": 0,
                             "state": "refused", "reason": str(refused)})
            return "refused", found
        return "running", found


def _json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def _details(request: ActionRequest, counted: int, expected: int | None,
             tolerance: int) -> dict[str, Any]:
    return {"filter": request.filter.to_dict(), "dryRunCount": expected, "counted": counted,
            "tolerance": tolerance, "runId": None, "confirmUnknown": request.confirm_unknown,
            "expiration": request.expiration}


def run_action(engine: Engine, action_id: str, request: ActionRequest, *,
               expected_count: int | None, tolerance: int = 0,
               batch_size: int = DEFAULT_BATCH, run_id: str | None = None) -> ActionResult:
    """Do the action ``action_id`` (the DAG run id), in batches of ``batch_size`` events,
    each committed on its own. A re-run of the same id resumes it (events already
    touched are skipped; a finished or refused action changes nothing). Raises
    :class:`GuardRefused` when the count moved (recorded: refused, audited)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    current, counted = _start(engine, action_id, request, expected_count, tolerance)
    if current == "refused":
        raise GuardRefused(counted, expected_count if expected_count is not None else counted,
                           tolerance)
    where, params = request.filter.sql()
    if current == "running":
        for kind in request.filter.kinds:
            for _ in range(_SWEEPS):
                while True:
                    with engine.begin() as conn:
                        picked, _moved = state.bulk_step(
                            conn, request.action, kind, action_id=action_id, where=where,
                            params=params, limit=batch_size, reason=request.reason,
                            confirm_unknown=request.confirm_unknown,
                            expiration=request.expiration)
                    if picked == 0:
                        break
                with engine.connect() as conn:
                    left = count(conn, _only(request, kind), action_id)
                if left == 0:
                    break
    with engine.begin() as conn:
        done = int(conn.execute(text(
            "SELECT count(*) FROM bulk_action_event WHERE action_id = :id"),
            {"id": action_id}).scalar_one())
        finished = conn.execute(text(
            "UPDATE bulk_action SET state = 'done', done_count = :done, finished = now() "
            "WHERE id = :id AND state = 'running' RETURNING id"),
            {"id": action_id, "done": done}).first()
        if finished is not None:
            audit.record(conn, actor=request.user, action=audit.BULK_PREFIX + request.action,
                         target=action_id, details={
                             **_details(request, counted, expected_count, tolerance),
                             "runId": run_id or action_id, "done": done, "state": "done"})
    return ActionResult(action_id, request.action, "done", counted, done)


def _only(request: ActionRequest, kind: str) -> ActionRequest:
    from dataclasses import replace

    return replace(request, filter=replace(request.filter, kinds=(kind,)))


def submit(engine: Engine, body: Any, user: str,
           trigger: Callable[[dict[str, Any], str], str]) -> dict[str, Any]:
    """What ``POST /v1/actions`` and the *Bulk actions* page do with a request body
    ``{"action", "filter", "dryRun", "expectedCount", "tolerance", "confirmUnknown",
    "expiration"}``: the dry run's ``{"count", "sample", "excluded"}``; or, for the action
    (``expectedCount`` required), the guard checked on a fresh count and
    ``trigger(params, user)`` (an ``mcBulkAction`` run) whose id comes back as
    ``runId``. Raises :class:`OperationInputError` (a field named) or
    :class:`GuardRefused`."""
    parsed = parse_request(body, user=user)
    dry_run = body.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise invalid("dryRun", "dryRun must be true or false", where="")
    expected = parse_count(body, "expectedCount", None)
    tolerance = parse_count(body, "tolerance", 0) or 0
    if not dry_run and expected is None:
        raise invalid("expectedCount", "expectedCount is required: run the dry run first "
                                       "and give its count", where="")
    with engine.connect() as conn:
        answer = preview(conn, parsed).to_dict()
    if dry_run:
        return answer
    check_guard(answer["count"], expected, tolerance)
    params = {**parsed.to_params(), "expectedCount": expected, "tolerance": tolerance}
    answer["runId"] = trigger(params, user)
    return answer
