"""Event lookup: find one customer's events and show what they received.

Searches the **live execution instances** (the truth for anything recent) and the
**control archive** (everything archived, from every instance). Queries stay bounded on
the execution side, which is busy processing: an id is a primary-key probe on the
instance of its cell; an address or an external id is searched there only among rows
modified in the last ``recent_hours`` (an index range on ``last_modified``), everything
older comes from the archive, which the hourly archiving keeps at most an hour behind.

:func:`event_detail` assembles an event with its status timeline, delivery log row(s),
the template version it was linked to, and the message **as the recipient got it**,
rendered again from that same template version (``published_template`` on the
instance, else the version stored on the control instance) and the event's context,
with the renderer and the e-mail builder the delivery uses.

No Airflow here: callers pass SQLAlchemy engines.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from message_center import channel as channels
from message_center.ids import cell_of, to_public, to_stored
from message_center.rendering import (
    RenderError,
    event_variables,
    template_event,
)
from message_center.statuses import EVENT_KINDS, EventStatus
from message_center.tracking import options as tracking_options
from message_center.tracking import tokens as tracking_tokens
from message_center.tracking.summary import event_tracking

LOOKUP_FIELDS = {
    "id": "Event id",
    "email": "E-mail",
    "mobile_phone": "Mobile phone",
    "external_id": "External id",
}
DEFAULT_RECENT_HOURS = 6
MAX_RESULTS = 200
MAX_VALUE_LENGTH = 255
_DIGITS = re.compile(r"^\d+$")
_PHONE_LIKE = re.compile(r"^\+?[0-9][0-9 ().-]{4,}$")


class LookupInputError(ValueError):
    """Bad lookup input; ``field`` names the form field (``by`` or ``q``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class LookupQuery:
    by: str
    value: str

    @property
    def event_id(self) -> int | None:
        return int(self.value) if self.by == "id" else None


def parse_query(by: str | None, value: str | None) -> LookupQuery:
    """Validate the form: ``by`` is one of :data:`LOOKUP_FIELDS` or ``auto`` (guessed
    from the value: digits = id, ``@`` = e-mail, phone-like = mobile phone, else
    external id)."""
    value = (value or "").strip()
    by = (by or "auto").strip().lower()
    if not value:
        raise LookupInputError("q", "enter an event id, an e-mail address, a mobile phone "
                                    "number or an external id")
    if len(value) > MAX_VALUE_LENGTH:
        raise LookupInputError("q", f"the value is longer than {MAX_VALUE_LENGTH} characters")
    if "\x00" in value:
        raise LookupInputError("q", "the value contains a NUL character")
    if by == "auto":
        by = ("id" if _DIGITS.match(value) else "email" if "@" in value
              else "mobile_phone" if _PHONE_LIKE.match(value) else "external_id")
    if by not in LOOKUP_FIELDS:
        raise LookupInputError("by", f"search by one of: auto, {', '.join(LOOKUP_FIELDS)}; "
                                     f"got {by!r}")
    if by == "id":
        if not _DIGITS.match(value):
            raise LookupInputError("q", f"an event id is a whole number; got {value!r}")
        try:
            to_stored(int(value))
        except ValueError:
            raise LookupInputError("q", f"event id {value} is not an unsigned 64-bit "
                                        "number") from None
    return LookupQuery(by=by, value=value)


@dataclass(frozen=True)
class LiveSource:
    """One execution instance to search: ``cell_id`` None when not known in advance."""

    name: str
    label: str
    engine: Engine
    cell_id: int | None = None


@dataclass
class SearchResult:
    items: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False
    searched: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "problems": self.problems, "truncated": self.truncated,
                "searched": self.searched}


_SUMMARY = ("id, type, email, mobile_phone, wished_channel, external_id, status, created, "
            "processed, error_reason, address")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _summary(row: Any, kind: str, cell_id: int, source: str) -> dict[str, Any]:
    status = EventStatus(row["status"])
    return {
        "id": to_public(row["id"]), "cellId": cell_id, "kind": kind, "type": row["type"],
        "channel": row["wished_channel"], "email": row["email"],
        "mobilePhone": row["mobile_phone"], "address": channels.address_of(row),
        "externalId": row["external_id"], "status": status.value,
        "statusLabel": status.label, "created": _iso(row["created"]),
        "processed": _iso(row["processed"]), "errorReason": row["error_reason"],
        "source": source,
    }


def _where(query: LookupQuery) -> tuple[str, dict[str, Any]]:
    if query.by == "id":
        return "id = :id", {"id": to_stored(int(query.value))}
    if query.by == "email":
        return "lower(email) = lower(:value)", {"value": query.value}
    return f"{query.by} = :value", {"value": query.value}


def _instance_cell(conn: Any) -> int | None:
    return conn.execute(text("SELECT cell_id FROM mc_instance")).scalar()


def search(query: LookupQuery, live: Sequence[LiveSource], control: Engine | None, *,
           recent_hours: int = DEFAULT_RECENT_HOURS, limit: int = 50,
           kinds: Collection[str] = EVENT_KINDS) -> SearchResult:
    """Events matching ``query``, newest first, one entry per (cell, id): the live
    version when the instance has it, else the archived one. An unreachable source is
    reported in ``problems`` and the others are still searched. ``kinds``: the queues
    searched ("rt", "batch"; the caller's readable ones)."""
    limit = max(1, min(limit, MAX_RESULTS))
    kinds = [kind for kind in EVENT_KINDS if kind in kinds]
    condition, params = _where(query)
    found: dict[tuple[int, int], dict[str, Any]] = {}
    result = SearchResult()
    wanted_cell = cell_of(int(query.value)) if query.by == "id" else None
    for source in live if kinds else ():
        if wanted_cell is not None and source.cell_id not in (None, wanted_cell):
            continue
        recent = "" if query.by == "id" else (
            " AND last_modified >= now() - make_interval(hours => :hours)")
        try:
            with source.engine.connect() as conn:
                conn.execute(text("SET LOCAL statement_timeout = '10s'"))
                cell = source.cell_id if source.cell_id is not None else _instance_cell(conn)
                if wanted_cell is not None and cell != wanted_cell:
                    continue
                for kind in kinds:
                    rows = conn.execute(text(
                        f"SELECT {_SUMMARY} FROM {kind}_event WHERE {condition}{recent} "
                        "ORDER BY id DESC LIMIT :limit"),
                        {**params, "hours": recent_hours, "limit": limit + 1}).mappings()
                    for row in rows:
                        found[(cell or 0, row["id"])] = _summary(row, kind, cell or 0,
                                                                 f"live: {source.label}")
            result.searched.append(f"{source.label} (live" + (
                ")" if query.by == "id" else f", modified in the last {recent_hours} h)"))
        except SQLAlchemyError as exc:
            result.problems.append(f"{source.label}: not searched ({_first_line(exc)})")
    if control is not None and kinds:
        archive_condition = condition
        archive_params = dict(params)
        if len(kinds) < len(EVENT_KINDS):
            archive_condition += " AND event_kind = ANY(:kinds)"
            archive_params["kinds"] = kinds
        if wanted_cell is not None:
            archive_condition += " AND cell_id = :cell"
            archive_params["cell"] = wanted_cell
        try:
            with control.connect() as conn:
                conn.execute(text("SET LOCAL statement_timeout = '10s'"))
                rows = conn.execute(text(
                    f"SELECT cell_id, event_kind, {_SUMMARY} FROM archived_event "
                    f"WHERE {archive_condition} ORDER BY created DESC, id DESC LIMIT :limit"),
                    {**archive_params, "limit": limit + 1}).mappings()
                for row in rows:
                    found.setdefault((row["cell_id"], row["id"]), _summary(
                        row, row["event_kind"], row["cell_id"], "archive"))
            result.searched.append("control archive (every instance)")
        except SQLAlchemyError as exc:
            result.problems.append(f"control archive: not searched ({_first_line(exc)})")
    items = sorted(found.values(), key=lambda item: (item["created"] or "", item["id"]),
                   reverse=True)
    result.truncated = len(items) > limit
    result.items = items[:limit]
    return result


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(original).__name__])[0]


# --- one event in full ---------------------------------------------------------------
_EVENT_COLUMNS = ("id, type, email, mobile_phone, wished_channel, address, external_id, "
                  "language, "
                  "country, origin, ctx, scheduled, expiration, status, created, "
                  "last_modified, processing, processed, error_count, next_attempt, "
                  "template_name, template_version, delivery_log_id, error_reason, "
                  "recycled_from")
_LOG_COLUMNS = ("id, event_kind, event_id, template_name, template_version, channel, "
                "address, status, attempts, error, provider_id, created, last_modified, "
                "sending_started, sent_at, sandbox")


@dataclass(frozen=True)
class Template:
    internal_name: str
    label: str
    channel: str
    version: int
    sender: str | None
    #: The channel's template parts by name (``subject``, ``html``, ...).
    parts: dict[str, str | None]
    language: str | None
    source: str
    active: bool | None = None
    published_at: datetime | None = None
    #: Tracking options (``tracking``, ``mirror_page``, ``unsubscribe``); None: none.
    options: dict[str, Any] | None = None
    #: The version's files (e-mail attachments): name, kind, type, size and hash.
    files: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        try:
            shown = channels.content_parts(self.channel)
        except channels.UnknownChannelError:
            shown = tuple(self.parts)
        return {"name": self.internal_name, "label": self.label, "channel": self.channel,
                "version": self.version, "language": self.language, "sender": self.sender,
                **{part: self.parts.get(part) for part in shown},
                "source": self.source, "active": self.active,
                "publishedAt": _iso(self.published_at), "attachments": list(self.files)}


def _parts(channel: str, row: Mapping[str, Any] | None = None,
           content: Mapping[str, Any] | None = None) -> dict[str, str | None]:
    """A template's parts, from a ``published_template`` row or a stored version."""
    try:
        spec = channels.get(channel)
    except channels.UnknownChannelError:
        return {}
    if row is not None:
        return spec.parts_from_row(row)
    return {part: (content or {}).get(part) for part in spec.template_parts}


def _live_event(engine: Engine, stored: int) -> tuple[str, dict[str, Any]] | None:
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL statement_timeout = '10s'"))
        for kind in ("rt", "batch"):
            row = conn.execute(text(f"SELECT {_EVENT_COLUMNS} FROM {kind}_event WHERE id = :id"),
                               {"id": stored}).mappings().first()
            if row is not None:
                return kind, dict(row)
    return None


def event_detail(public_id: int, live: Sequence[LiveSource], control: Engine | None, *,
                 default_sender: str | None = None) -> dict[str, Any] | None:
    """The event (live version first, else archived) with its timeline, delivery log
    row(s), template version and the message rendered again; None when not found."""
    stored = to_stored(public_id)
    cell = cell_of(public_id)
    problems: list[str] = []
    event: dict[str, Any] | None = None
    kind = source_label = ""
    source: LiveSource | None = None
    for candidate in live:
        if candidate.cell_id not in (None, cell):
            continue
        try:
            if candidate.cell_id is None:
                with candidate.engine.connect() as conn:
                    if _instance_cell(conn) != cell:
                        continue
            found = _live_event(candidate.engine, stored)
        except SQLAlchemyError as exc:
            problems.append(f"{candidate.label}: unreachable ({_first_line(exc)})")
            continue
        if found is not None:
            kind, event = found
            source, source_label = candidate, f"live: {candidate.label}"
            break
    if event is None and control is not None:
        try:
            with control.connect() as conn:
                row = conn.execute(text(
                    f"SELECT event_kind, archived_at, {_EVENT_COLUMNS} FROM archived_event "
                    "WHERE cell_id = :cell AND id = :id"), {"cell": cell, "id": stored}
                ).mappings().first()
        except SQLAlchemyError as exc:
            problems.append(f"control archive: unreachable ({_first_line(exc)})")
            row = None
        if row is not None:
            event = dict(row)
            kind, source_label = row["event_kind"], "archive"
    if event is None:
        return None

    logs = _delivery_logs(kind, stored, cell, source, control, problems)
    tracking = _tracking(kind, stored, cell, source, control, problems) if logs else None
    recycled_to, recycling = _recycling(kind, stored, cell, source, control, problems)
    template = _template(event, source, control, problems)
    message = _rendered(event, stored, kind, logs, template, default_sender)
    status = EventStatus(event["status"])
    detail = {
        "id": public_id, "cellId": cell, "kind": kind, "source": source_label,
        "type": event["type"], "email": event["email"], "mobilePhone": event["mobile_phone"],
        "channel": event["wished_channel"], "externalId": event["external_id"],
        "language": event["language"], "country": event["country"], "origin": event["origin"],
        "ctx": event["ctx"], "status": status.value, "statusLabel": status.label,
        "errorCount": event["error_count"], "errorReason": event["error_reason"],
        "templateName": event["template_name"], "templateVersion": event["template_version"],
        "archivedAt": _iso(event.get("archived_at")),
        "recycledFrom": (None if event.get("recycled_from") is None
                         else to_public(event["recycled_from"])),
        "recycledTo": None if recycled_to is None else to_public(recycled_to),
        "recycling": recycling,
        "timeline": _timeline(event, logs),
        "deliveryLogs": [_log_dict(log) for log in logs],
        "template": template.to_dict() if template else None,
        "message": message,
        "tracking": tracking,
        "problems": problems,
    }
    if event.get("address") is not None:  # a channel's own address (not one of ACC's)
        try:
            spec = channels.get(event["wished_channel"])
            detail.setdefault(spec.address_field, spec.address_on_wire(event["address"]))
            detail["addressField"] = spec.address_field  # the page shows it by this name
        except channels.UnknownChannelError:
            detail["address"] = event["address"]
    return detail


def _tracking(kind: str, stored: int, cell: int, source: LiveSource | None,
              control: Engine | None, problems: list[str]) -> dict[str, Any] | None:
    """The event's opens and clicks: live (the execution instance) first, else archived."""
    if source is not None:
        try:
            with source.engine.connect() as conn:
                return event_tracking(conn, kind, stored)
        except SQLAlchemyError as exc:
            problems.append(f"{source.label}: tracking not read ({_first_line(exc)})")
    if control is None:
        return None
    try:
        with control.connect() as conn:
            return event_tracking(conn, kind, stored, cell_id=cell)
    except SQLAlchemyError as exc:
        problems.append(f"control archive: tracking not read ({_first_line(exc)})")
        return None


def _recycling(kind: str, stored: int, cell: int, source: LiveSource | None,
               control: Engine | None, problems: list[str]) -> tuple[int | None, str | None]:
    """The event made from this one by recycling (stored id), or why it was not made:
    live from the execution instance's ``event_recycling``, else from the archive (the
    recycled event's ``recycled_from``; the reason is not archived)."""
    try:
        if source is not None:
            with source.engine.connect() as conn:
                row = conn.execute(text(
                    "SELECT recycled_id, reason FROM event_recycling "
                    "WHERE event_kind = :kind AND event_id = :id"),
                    {"kind": kind, "id": stored}).first()
            if row is not None:
                return row.recycled_id, row.reason
        if control is not None:
            with control.connect() as conn:
                found = conn.execute(text(
                    "SELECT id FROM archived_event WHERE cell_id = :cell "
                    "AND recycled_from = :id AND event_kind = :kind LIMIT 1"),
                    {"cell": cell, "id": stored, "kind": kind}).scalar()
            return found, None
    except SQLAlchemyError as exc:
        problems.append(f"recycling link: unreachable ({_first_line(exc)})")
    return None, None


def _delivery_logs(kind: str, stored: int, cell: int, source: LiveSource | None,
                   control: Engine | None, problems: list[str]) -> list[dict[str, Any]]:
    if source is not None:
        try:
            with source.engine.connect() as conn:
                rows = conn.execute(text(
                    f"SELECT {_LOG_COLUMNS} FROM delivery_log WHERE event_kind = :kind "
                    "AND event_id = :id ORDER BY id"), {"kind": kind, "id": stored}).mappings()
                found = [dict(row) for row in rows]
            if found:
                return found
        except SQLAlchemyError as exc:
            problems.append(f"{source.label}: delivery log not read ({_first_line(exc)})")
    if control is None:
        return []
    try:
        with control.connect() as conn:
            rows = conn.execute(text(
                f"SELECT {_LOG_COLUMNS} FROM archived_delivery_log WHERE cell_id = :cell "
                "AND event_id = :id AND event_kind = :kind ORDER BY id"),
                {"cell": cell, "id": stored, "kind": kind}).mappings()
            return [dict(row) for row in rows]
    except SQLAlchemyError as exc:
        problems.append(f"control archive: delivery log not read ({_first_line(exc)})")
        return []


def _files(channel: str, extras: Mapping[str, Any] | None) -> tuple[dict[str, Any], ...]:
    try:
        return tuple(channels.get(channel).files_summary(extras))
    except channels.UnknownChannelError:
        return ()


def _template(event: dict[str, Any], source: LiveSource | None, control: Engine | None,
              problems: list[str]) -> Template | None:
    name, version = event["template_name"], event["template_version"]
    if name is None or version is None:
        return None
    if source is not None:
        try:
            with source.engine.connect() as conn:
                row = conn.execute(text(
                    "SELECT * FROM published_template "
                    "WHERE internal_name = :name AND version = :version"),
                    {"name": name, "version": version}).mappings().first()
            if row is not None:
                return Template(
                    internal_name=row["internal_name"], label=row["label"],
                    channel=row["channel"], version=row["version"], sender=row["sender"],
                    parts=_parts(row["channel"], row=row),
                    language=row["language"], active=row["active"],
                    published_at=row["published_at"], options=row.get("options"),
                    source=f"published on {source.label}",
                    files=_files(row["channel"], row.get("extras")))
        except SQLAlchemyError as exc:
            problems.append(f"{source.label}: template not read ({_first_line(exc)})")
    if control is None:
        return None
    try:
        with control.connect() as conn:
            row = conn.execute(text(
                "SELECT content, created FROM template_version "
                "WHERE internal_name = :name AND version = :version"),
                {"name": name, "version": version}).mappings().first()
    except SQLAlchemyError as exc:
        problems.append(f"control instance: template not read ({_first_line(exc)})")
        return None
    if row is None:
        problems.append(f"template {name} version {version} is neither published on the "
                        "instance nor stored on the control instance")
        return None
    content = row["content"]
    return Template(
        internal_name=name, label=content.get("label", name), channel=content["channel"],
        version=version, sender=content.get("sender"),
        parts=_parts(content["channel"], content=content), language=content.get("language"),
        options=tracking_options.from_content(content).as_content() or None,
        published_at=row["created"], source="version stored on the control instance",
        files=_files(content["channel"], content))


def _rendered(event: dict[str, Any], stored: int, kind: str, logs: list[dict[str, Any]],
              template: Template | None, default_sender: str | None) -> dict[str, Any]:
    """The message rebuilt like the delivery builds it (same renderer, same builder)."""
    if template is None:
        reason = ("no template was linked to this event" if event["template_name"] is None
                  else "the template version is not available")
        return {"available": False, "reason": reason}
    log = logs[-1] if logs else None
    try:
        spec = channels.get(template.channel)
    except channels.UnknownChannelError as exc:
        return {"available": False, "reason": str(exc)}
    variables = event_variables(template_event(event, stored))
    try:
        rendered = _render_as_sent(spec, template, variables, log)
        message = spec.lookup_message(
            rendered, to=(log or {}).get("address") or spec.event_address(event),
            sender=template.sender, default_sender=default_sender,
            log_id=None if log is None else log["id"],
            event_ref=f"{kind}:{to_public(stored)}")
        return {"available": True, "channel": spec.name, **message}
    except RenderError as exc:
        return {"available": False, "reason": f"the template cannot be rendered for this "
                                               f"event: {exc}"}
    except ValueError as exc:
        return {"available": False, "reason": f"the message is invalid: {exc}"}


def _render_as_sent(spec: channels.Channel, template: Template, variables: dict[str, Any],
                    log: dict[str, Any] | None) -> dict[str, str | None]:
    """The parts as the delivery rendered them: a tracked template with its tracked links,
    pixel and mirror URL of that delivery log (sample URLs when this process has no
    tracking key, or the event was never delivered)."""
    if not template.options:
        return spec.render(template.parts, variables)
    try:
        config = tracking_tokens.current()
    except tracking_tokens.TrackingKeyError:
        config = None
    if log is None or config is None:
        return spec.render(template.parts, variables, template.options)
    row: dict[str, Any] = {column: template.parts.get(part)
                           for part, column in spec.template_columns.items()}
    row.update(parts=template.parts, options=template.options)
    rendered, _headers = spec.render_sent(row, variables, log_id=int(log["id"]), config=config)
    return rendered


def _log_dict(log: dict[str, Any]) -> dict[str, Any]:
    return {"id": to_public(log["id"]), "status": log["status"], "channel": log["channel"],
            "address": log["address"], "attempts": log["attempts"], "error": log["error"],
            "providerId": log["provider_id"], "template": log["template_name"],
            "templateVersion": log["template_version"], "created": _iso(log["created"]),
            "lastModified": _iso(log["last_modified"]),
            "sendingStarted": _iso(log["sending_started"]), "sentAt": _iso(log["sent_at"]),
            "sandbox": bool(log.get("sandbox"))}


def _timeline(event: dict[str, Any], logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dated steps in time order: created, (scheduled), processing, delivery, final."""
    steps: list[tuple[datetime, str, str]] = [(event["created"], "created", "Received (Pending)")]
    if event["scheduled"] and event["scheduled"] > event["created"]:
        steps.append((event["scheduled"], "scheduled", "Scheduled: not processed before"))
    if event["processing"]:
        linked = (f"linked to template {event['template_name']} "
                  f"v{event['template_version']}" if event["template_name"] else "no template")
        steps.append((event["processing"], "processing", f"Processing ({linked})"))
    for log in logs:
        steps.append((log["created"], "delivery", f"Delivery log created ({log['channel']} to "
                                                 f"{log['address'] or 'no address'})"))
        if log["sending_started"]:
            steps.append((log["sending_started"], "sending",
                          f"Sending, attempt {log['attempts'] or 1}"))
        if log["sent_at"] and log.get("sandbox"):
            steps.append((log["sent_at"], "sent",
                          "Accepted by the sandbox (sandbox mode: nothing was sent)"))
        elif log["sent_at"]:
            provider = f" (id {log['provider_id']})" if log["provider_id"] else ""
            steps.append((log["sent_at"], "sent", f"Accepted by the provider{provider}"))
    status = EventStatus(event["status"])
    final = status not in (EventStatus.PENDING, EventStatus.PENDING_DELIVERY)
    if final and event["processed"]:
        reason = f": {event['error_reason']}" if event["error_reason"] else ""
        steps.append((event["processed"], "final", f"{status.label}{reason}"))
    elif not final and event["next_attempt"]:
        label = (f"{status.label}: next attempt after {event['error_count']} error(s)"
                 if event["error_count"] else f"{status.label}: due")
        steps.append((event["next_attempt"], "next", label))
    steps.sort(key=lambda step: step[0])
    return [{"at": _iso(at), "step": step, "label": label} for at, step, label in steps]
