"""Event ingestion: validating pushed events and writing them into the queues.

The push API (``message_center.api``) and the ``mc push`` command share this module, so
an event file is checked locally with exactly the rules the server applies. Writes are
set-based: a whole batch is one ``INSERT ... SELECT`` over a JSON array, so a
1,000-event request costs one statement, and the ``NOTIFY`` that wakes the processing
loop rides in the same round trip and transaction.

Wire format is camelCase (like ACC's ``PushEvent``); columns are snake_case.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError
from sqlalchemy import Connection, text

from message_center import channel as channels
from message_center.channel import Channel
from message_center.ids import NEXT_ID_SQL, to_public, to_stored
from message_center.statuses import EVENT_KINDS, NOTIFY_CHANNELS, EventStatus, event_table

# --- documented limits -------------------------------------------------------------
MAX_BATCH_EVENTS = 1000
"""Most events one ``POST /v1/batchEvents`` request may carry."""
MAX_CTX_BYTES = 64 * 1024
"""Largest ``ctx`` of one event, measured as compact UTF-8 JSON."""
MAX_EVENT_BODY_BYTES = 256 * 1024
"""Largest request body of ``POST /v1/rtEvents`` (refused with 413 before parsing)."""
MAX_BATCH_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body of ``POST /v1/batchEvents`` (refused with 413 before parsing)."""
MAX_ERRORS_REPORTED = 100
"""A 422 lists at most this many problems (a bad 1,000-event batch stays readable)."""

MAX_TYPE_LENGTH = 128
MAX_TEXT_LENGTH = 255
MAX_IDEMPOTENCY_KEY_LENGTH = 255

class EventValidationError(ValueError):
    """Bad input: ``errors`` are FastAPI-style entries (loc, field, msg, type)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors[:MAX_ERRORS_REPORTED]
        super().__init__("; ".join(error["msg"] for error in self.errors[:5]))


# --- field checks ------------------------------------------------------------------
# PostgreSQL text cannot hold NUL (checked in Rust by pydantic, not per field in Python).
_TEXT_PATTERN = r"^[^\x00]*$"
_TYPE_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def parse_datetime(value: Any, field: str) -> datetime | None:
    """ISO 8601 text only (no epoch numbers); a time without offset is taken as UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PydanticCustomError(
            "datetime_type", "{field} must be an ISO 8601 date-time string",
            {"field": field})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError(
            "datetime_format",
            "{field} is not an ISO 8601 date-time (e.g. 2026-11-25T10:00:00Z)",
            {"field": field}) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:  # stored in UTC: PostgreSQL refuses offsets past +-15:59 that Python accepts
        return parsed.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_range", "{field} is out of range once converted to UTC",
            {"field": field}) from None


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class EncodedCtx(dict[str, Any]):
    """A validated ``ctx`` that keeps the JSON it was measured as, for the insert payload."""

    __slots__ = ("json",)

    def __init__(self, value: dict[str, Any], encoded: str) -> None:
        super().__init__(value)
        self.json = encoded


#: ACC's address attributes (wire name -> model field).
_ACC_FIELDS = {"email": "email", "mobilePhone": "mobile_phone"}
_ACC_ADDRESSES: dict[str, Channel] = {}


def _acc_address(field: str) -> Any:
    """The model field of one of ACC's address attributes, as its channel states it."""
    channel = channels.by_address_field(field)
    if channel is None:  # pragma: no cover - the built-in channels own them
        raise RuntimeError(f"no channel owns ACC's address attribute {field}")
    _ACC_ADDRESSES[_ACC_FIELDS[field]] = channel
    return Field(None, max_length=channel.address_max_length,
                 json_schema_extra={k: v for k, v in channel.address_json_schema.items()
                                    if k != "type"} or None,
                 description=channel.address_doc)


def _check_address(channel: Channel, value: Any, field: str | None = None) -> None:
    """``field``: name the field (a channel's own wire field, checked after the others)."""
    error = channel.address_error(value)
    if error is not None:
        raise PydanticCustomError(channel.address_error_type, error,
                                  {"field": field} if field else None)


def _event_schema(schema: dict[str, Any], extra: dict[str, Any]) -> None:
    """The event's JSON Schema as the API checks it: every channel's own address field
    (an extra of the model) is a property, and no other field is accepted."""
    schema.update(extra)
    properties = schema.setdefault("properties", {})
    for channel in channels.all_channels():
        properties.setdefault(channel.address_field, {
            **channel.address_json_schema, "description": channel.address_doc})
    schema["additionalProperties"] = False


class EventIn(BaseModel):
    """One pushed event, as ACC's ``PushEvent`` takes it (camelCase on the wire)."""

    model_config = ConfigDict(
        extra="allow", strict=True, alias_generator=to_camel, populate_by_name=False,
        frozen=True,
        json_schema_extra=lambda schema: _event_schema(schema, {
            "examples": [{
                "type": "ORDER_CONFIRMED", "email": "jane@example.com", "language": "en",
                "externalId": "A-1001",
                "ctx": {"orderId": "A-1001", "firstName": "Jane", "total": 42.0},
            }],
            # The channel's address is required (checked by _cross_fields below).
            "anyOf": [
                {"required": [*(() if channel is channels.default() else ("wishedChannel",)),
                              channel.address_field],
                 "properties": {"wishedChannel": {"const": channel.name},
                                channel.address_field: dict(
                                    channel.address_json_schema)}}
                for channel in channels.all_channels()
            ],
        }),
    )

    type: str = Field(min_length=1, max_length=MAX_TYPE_LENGTH, pattern=_TYPE_PATTERN,
                      description="Event type; links the event to its published template.")
    # ACC's two address attributes, described and checked by the channel whose address
    # each is (format / pattern stated for clients; the errors name the field in the
    # project's words). Another channel's address is its own wire field (an extra,
    # checked by _cross_fields).
    email: str | None = _acc_address("email")
    mobile_phone: str | None = _acc_address("mobilePhone")
    wished_channel: str = Field(
        channels.default().name,
        description=f"{' or '.join(f'`{name}`' for name in channels.names())} (default "
                    f"`{channels.default().name}`).",
        json_schema_extra={"enum": list(channels.names())})
    external_id: str | None = Field(None, max_length=MAX_TEXT_LENGTH, pattern=_TEXT_PATTERN,
                                    description="The caller's own id for the event.")
    language: str | None = Field(None, max_length=35, pattern=_TEXT_PATTERN)
    country: str | None = Field(None, max_length=35, pattern=_TEXT_PATTERN)
    origin: str | None = Field(None, max_length=MAX_TEXT_LENGTH, pattern=_TEXT_PATTERN)
    ctx: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"type": "object"},
        description=f"Personalisation data: a JSON object of at most {MAX_CTX_BYTES} bytes.")
    scheduled: datetime | None = Field(
        None, description="ISO 8601; the event is not processed before this time.")
    expiration: datetime | None = Field(
        None, description="ISO 8601, not before `scheduled`; the event expires if not "
                          "processed by then.")

    # Few Python validators on purpose: a 1,000-event batch runs each of them 1,000 times.
    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None:
            _check_address(_ACC_ADDRESSES["email"], value)
        return value

    @field_validator("mobile_phone")
    @classmethod
    def _mobile_phone(cls, value: str | None) -> str | None:
        if value is not None:
            _check_address(_ACC_ADDRESSES["mobile_phone"], value)
        return value

    @field_validator("wished_channel", mode="plain")
    @classmethod
    def _wished_channel(cls, value: Any) -> str:
        if value.__class__ is not str or value not in channels.names():
            raise PydanticCustomError("literal_error", "wishedChannel must be {expected}",
                                      {"expected": channels.expected()})
        return value

    @field_validator("ctx", mode="plain")
    @classmethod
    def _ctx(cls, value: Any) -> dict[str, Any]:
        if value is None:
            return EncodedCtx({}, "{}")
        if not isinstance(value, dict):
            raise PydanticCustomError("ctx_type", "ctx must be a JSON object")
        try:
            encoded = compact_json(value)
        except (TypeError, ValueError):
            raise PydanticCustomError("ctx_type", "ctx must be a JSON object") from None
        if len(encoded.encode()) > MAX_CTX_BYTES:
            raise PydanticCustomError(
                "ctx_too_large", "ctx is larger than {limit} bytes", {"limit": MAX_CTX_BYTES})
        if "\\u0000" in encoded and _JSON_NUL.search(encoded):
            # PostgreSQL's jsonb cannot hold NUL; refuse it here rather than fail at insert.
            raise PydanticCustomError("ctx_nul", "ctx must not contain NUL (\\u0000) characters")
        return EncodedCtx(value, encoded)

    @field_validator("scheduled", "expiration", mode="before")
    @classmethod
    def _dates(cls, value: Any, info: Any) -> datetime | None:
        return parse_datetime(value, to_camel(info.field_name))

    @model_validator(mode="after")
    def _cross_fields(self) -> EventIn:
        extra = self.__pydantic_extra__
        if extra:
            for key, value in extra.items():
                owner = channels.by_address_field(key)
                if owner is None or key in _ACC_FIELDS:
                    raise PydanticCustomError("extra_forbidden", "unknown field '{field}'",
                                              {"field": key})
                _check_address(owner, value, key)
        channel = channels.get(self.wished_channel)
        acc = _ACC_FIELDS.get(channel.address_field)
        if (getattr(self, acc) if acc else (extra or {}).get(channel.address_field)) is None:
            raise PydanticCustomError(
                "address_missing", "{field} is required when wishedChannel is '{channel}'",
                {"field": channel.address_field, "channel": self.wished_channel})
        if self.scheduled and self.expiration and self.expiration < self.scheduled:
            raise PydanticCustomError(
                "expiration_before_scheduled",
                "expiration must not be before scheduled", {"field": "expiration"})
        return self

    @property
    def address(self) -> Any:
        """The address the event's channel needs (None: missing)."""
        field = channels.get(self.wished_channel).address_field
        if field in _ACC_FIELDS:
            return getattr(self, _ACC_FIELDS[field])
        return (self.__pydantic_extra__ or {}).get(field)

    def stored_address(self) -> str | None:
        """What the ``address`` column keeps: the address of a channel that is not one of
        ACC's (those are in ``email`` / ``mobile_phone``), JSON text when structured."""
        field = channels.get(self.wished_channel).address_field
        if field in _ACC_FIELDS:
            return None
        value = (self.__pydantic_extra__ or {}).get(field)
        return value if value is None or isinstance(value, str) else compact_json(value)

    def to_row(self) -> dict[str, Any]:
        """The event as the insert statement reads it (snake_case, ISO dates)."""
        return {**self._scalars(), "ctx": self.ctx}

    def _scalars(self) -> dict[str, Any]:
        return {
            "type": self.type, "email": self.email, "mobile_phone": self.mobile_phone,
            "wished_channel": self.wished_channel, "address": self.stored_address(),
            "external_id": self.external_id,
            "language": self.language, "country": self.country, "origin": self.origin,
            "scheduled": self.scheduled.isoformat() if self.scheduled else None,
            "expiration": self.expiration.isoformat() if self.expiration else None,
        }

    def to_json(self) -> str:
        """``to_row`` as JSON, reusing the ctx encoding made during validation."""
        ctx = self.ctx.json if isinstance(self.ctx, EncodedCtx) else compact_json(self.ctx)
        return f'{compact_json(self._scalars())[:-1]},"ctx":{ctx}}}'


_EVENT_LIST = TypeAdapter(list[EventIn])

_MESSAGES = {
    "missing": "{field} is required",
    "extra_forbidden": "unknown field '{field}'",
}


def _field_name(loc: Sequence[Any]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _format_errors(exc: ValidationError, prefix: tuple[Any, ...]) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = list(error["loc"])
        ctx = error.get("ctx") or {}
        if "field" in ctx and (not loc or loc[-1] != ctx["field"]):
            loc.append(ctx["field"])  # cross-field checks name the field they are about
        field = _field_name(loc)
        short = str(loc[-1]) if loc else "body"
        msg = _MESSAGES.get(error["type"], "").format(field=short) or error["msg"]
        if error["type"] == "string_pattern_mismatch":
            msg = ("type must not be blank or contain NUL characters" if short == "type"
                   else f"{short} must not contain NUL characters")
        if error["type"] == "literal_error":
            msg = f"{short} must be {ctx.get('expected')}"
        if short not in msg:
            msg = f"{short}: {msg}"
        entry: dict[str, Any] = {"loc": ["body", *prefix, *loc], "field": field or "body",
                                 "msg": msg, "type": error["type"]}
        if prefix == ("events",) and loc and isinstance(loc[0], int):
            entry["index"] = loc[0]
            entry["field"] = f"events{field}" if field.startswith("[") else f"events.{field}"
        errors.append(entry)
    return errors


def _body_error(msg: str, loc: tuple[Any, ...] = (), kind: str = "body_invalid") -> \
        EventValidationError:
    field = _field_name(loc) or "body"
    return EventValidationError([{"loc": ["body", *loc], "field": field, "msg": msg,
                                  "type": kind}])


def _finite_float(text_value: str) -> float:
    value = float(text_value)
    if not math.isfinite(value):
        raise ValueError(f"number {text_value} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(body: bytes | str) -> Any:
    """JSON that PostgreSQL's jsonb can store: no NaN/Infinity, no overflowing floats."""
    try:
        return json.loads(body, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise _body_error(f"body is not valid JSON: {exc}", kind="json_invalid") from None


def parse_event(data: Any) -> EventIn:
    """One event (already JSON-decoded); raises ``EventValidationError``."""
    if not isinstance(data, dict):
        raise _body_error("body must be a JSON object (one event)", kind="object_type")
    try:
        return EventIn.model_validate(data)
    except ValidationError as exc:
        raise EventValidationError(_format_errors(exc, ())) from None


def parse_batch(data: Any) -> list[EventIn]:
    """``{"events": [...]}``; all-or-nothing: any bad event fails the whole batch."""
    if not isinstance(data, dict):
        raise _body_error('body must be a JSON object: {"events": [...]}', kind="object_type")
    unknown = sorted(set(data) - {"events"})
    if unknown:
        raise _body_error(f"unknown field '{unknown[0]}'", (unknown[0],), "extra_forbidden")
    events = data.get("events")
    if events is None:
        raise _body_error("events is required", ("events",), "missing")
    if not isinstance(events, list):
        raise _body_error("events must be a JSON array", ("events",), "list_type")
    if not 1 <= len(events) <= MAX_BATCH_EVENTS:
        raise _body_error(
            f"events must hold 1 to {MAX_BATCH_EVENTS} events; got {len(events)}",
            ("events",), "batch_size")
    try:
        return _EVENT_LIST.validate_python(events)
    except ValidationError as exc:
        raise EventValidationError(_format_errors(exc, ("events",))) from None


def request_hash(endpoint: str, data: Any) -> str:
    """What makes two requests 'the same' for an idempotency key: endpoint + JSON content."""
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{endpoint}\n{canonical}".encode()).hexdigest()


IDEMPOTENCY_KEY_PATTERN = "^[!-~]([ -~]*[!-~])?$"
"""Printable ASCII, spaces inside only: HTTP drops a header value's outer spaces."""


def check_idempotency_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable() \
            or not key.isascii() or key != key.strip():
        raise EventValidationError([{
            "loc": ["header", "Idempotency-Key"], "field": "Idempotency-Key",
            "msg": f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII "
                   "characters, with no space at either end", "type": "idempotency_key"}])
    return key


# --- writes ------------------------------------------------------------------------
_INSERT_COLUMNS = ("type", "email", "mobile_phone", "wished_channel", "address",
                   "external_id", "language", "country", "origin")


def _insert_sql(kind: str) -> str:
    table = event_table(kind)
    columns = ", ".join(_INSERT_COLUMNS)
    values = ", ".join(f"e.doc->>'{column}'" for column in _INSERT_COLUMNS)
    # NOTIFY first: only the last statement's rows come back; both commit together.
    return f"""
        NOTIFY {NOTIFY_CHANNELS[kind]};
        WITH src AS MATERIALIZED (
            SELECT {NEXT_ID_SQL} AS id, e.ord, e.doc
            FROM jsonb_array_elements(CAST(:events AS jsonb)) WITH ORDINALITY AS e(doc, ord)
        ), ins AS (
            INSERT INTO {table} (id, {columns}, ctx, scheduled, expiration, next_attempt,
                                 sandbox)
            SELECT e.id, {values}, e.doc->'ctx',
                   CAST(e.doc->>'scheduled' AS timestamptz),
                   CAST(e.doc->>'expiration' AS timestamptz),
                   coalesce(CAST(e.doc->>'scheduled' AS timestamptz), now()),
                   CAST(:sandbox AS boolean)
            FROM src AS e
        )
        SELECT id FROM src ORDER BY ord
    """


_INSERT_SQL = {kind: text(_insert_sql(kind)) for kind in EVENT_KINDS}


def insert_events(conn: Connection, kind: str, events: Sequence[EventIn], *,
                  sandbox: bool = False) -> list[int]:
    """Queue ``events`` in one statement; returns their public ids in the given order.

    Runs in the caller's transaction, which also carries the ``NOTIFY`` for the kind.
    ``sandbox``: they are sandbox events (pushed by a sandbox user): delivered by the
    sandbox transport, never by a provider (:mod:`message_center.delivery.sandbox`).
    """
    if not events:
        return []
    payload = f"[{','.join(event.to_json() for event in events)}]"
    rows = conn.execute(_INSERT_SQL[kind], {"events": payload, "sandbox": sandbox}).all()
    return [to_public(row[0]) for row in rows]


# --- idempotency -------------------------------------------------------------------
@dataclass(frozen=True)
class StoredResponse:
    endpoint: str
    request_hash: str
    status_code: int
    body: Any


_CLAIM_KEY = text("""
    INSERT INTO api_idempotency (key, endpoint, request_hash, status_code, response)
    VALUES (:key, :endpoint, :hash, 0, 'null') ON CONFLICT (key) DO NOTHING RETURNING key
""")
_READ_KEY = text("SELECT endpoint, request_hash, status_code, response FROM api_idempotency "
                 "WHERE key = :key")
_STORE_KEY = text("UPDATE api_idempotency SET status_code = :status, "
                  "response = CAST(:response AS jsonb) WHERE key = :key")


def claim_idempotency_key(conn: Connection, key: str, endpoint: str,
                          hash_: str) -> StoredResponse | None:
    """Claim ``key`` in the caller's transaction, or return what it already answered.

    ``ON CONFLICT DO NOTHING`` waits for a concurrent claim of the same key to commit or
    roll back, so two simultaneous requests with one key never both insert events.
    """
    for _ in range(3):
        if conn.execute(_CLAIM_KEY, {"key": key, "endpoint": endpoint, "hash": hash_}).first():
            return None
        row = conn.execute(_READ_KEY, {"key": key}).first()
        if row is not None:
            return StoredResponse(row.endpoint, row.request_hash, row.status_code, row.response)
    raise RuntimeError(f"idempotency key {key!r} could neither be claimed nor read")


def store_idempotent_response(conn: Connection, key: str, status_code: int, body: Any) -> None:
    conn.execute(_STORE_KEY, {"key": key, "status": status_code, "response": compact_json(body)})


# --- reads -------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


_EVENT_FIELDS = ("type", "email", "mobile_phone", "wished_channel", "address", "external_id",
                 "language",
                 "country", "origin", "ctx", "scheduled", "expiration", "status", "created",
                 "last_modified", "processing", "processed", "error_count", "next_attempt",
                 "template_name", "template_version", "delivery_log_id", "error_reason",
                 "recycled_from", "replayed_from", "sandbox")

_GET_EVENT = text(f"""
    WITH ev AS (
        SELECT 'rt' AS kind, {", ".join(_EVENT_FIELDS)} FROM rt_event WHERE id = :id
        UNION ALL
        SELECT 'batch', {", ".join(_EVENT_FIELDS)} FROM batch_event WHERE id = :id
    )
    SELECT ev.*, pt.label AS template_label, dl.id AS dl_id, dl.status AS dl_status,
           dl.channel AS dl_channel, dl.attempts AS dl_attempts, dl.error AS dl_error,
           dl.provider_id AS dl_provider_id, dl.created AS dl_created,
           dl.last_modified AS dl_last_modified, dl.sent_at AS dl_sent_at,
           dl.failure_class AS dl_failure_class, dl.failure_reason AS dl_failure_reason,
           dl.sandbox AS dl_sandbox, rc.recycled_id, rc.reason AS recycling_reason
    FROM ev
    LEFT JOIN delivery_log dl ON dl.event_kind = ev.kind AND dl.event_id = :id
    LEFT JOIN event_recycling rc ON rc.event_kind = ev.kind AND rc.event_id = :id
    LEFT JOIN published_template pt
        ON pt.internal_name = ev.template_name AND pt.version = ev.template_version
    LIMIT 1
""")


def _public(stored: int | None) -> int | None:
    return None if stored is None else to_public(stored)


def get_event(conn: Connection, public_id: int) -> dict[str, Any] | None:
    """The event with its status, template link and delivery outcome (API shape), or None."""
    try:
        stored = to_stored(public_id)
    except ValueError:
        return None
    row = conn.execute(_GET_EVENT, {"id": stored}).mappings().first()
    if row is None:
        return None
    status = EventStatus(row["status"])
    template = None
    if row["template_name"] is not None:
        template = {"name": row["template_name"], "version": row["template_version"],
                    "label": row["template_label"]}
    delivery = None
    if row["dl_id"] is not None:
        delivery = {"id": to_public(row["dl_id"]), "status": row["dl_status"],
                    "channel": row["dl_channel"], "attempts": row["dl_attempts"],
                    "error": row["dl_error"], "providerId": row["dl_provider_id"],
                    "created": _iso(row["dl_created"]),
                    "lastModified": _iso(row["dl_last_modified"]),
                    "sentAt": _iso(row["dl_sent_at"]),
                    "failureClass": row["dl_failure_class"],
                    "failureReason": row["dl_failure_reason"]}
        if row["dl_sandbox"]:  # nothing left the machine (sandbox mode)
            delivery["sandbox"] = True
    event = {
        "id": public_id, "kind": row["kind"], "type": row["type"], "email": row["email"],
        "mobilePhone": row["mobile_phone"], "wishedChannel": row["wished_channel"],
        "externalId": row["external_id"], "language": row["language"],
        "country": row["country"], "origin": row["origin"], "ctx": row["ctx"],
        "scheduled": _iso(row["scheduled"]), "expiration": _iso(row["expiration"]),
        "status": status.value, "statusLabel": status.label,
        "created": _iso(row["created"]), "lastModified": _iso(row["last_modified"]),
        "processing": _iso(row["processing"]), "processed": _iso(row["processed"]),
        "errorCount": row["error_count"], "nextAttempt": _iso(row["next_attempt"]),
        "template": template, "delivery": delivery, "errorReason": row["error_reason"],
        # event recycling (the template's on_failure): the event this one was made from,
        # the one made from it, or why it was not recycled
        "recycledFrom": _public(row["recycled_from"]),
        "recycledTo": _public(row["recycled_id"]), "recycling": row["recycling_reason"],
        # a bulk replay: the event this one was sent again from
        "replayedFrom": _public(row["replayed_from"]),
    }
    if row["sandbox"] or row["dl_sandbox"]:
        event["sandbox"] = True
    if row["address"] is not None:  # a channel's own address field (not one of ACC's)
        try:
            channel = channels.get(row["wished_channel"])
        except channels.UnknownChannelError:
            channel = None
        if channel is not None and channel.address_field not in event:
            event[channel.address_field] = channel.address_on_wire(row["address"])
    return event


@dataclass(frozen=True)
class QueueDepth:
    """Due pending events of one queue and how long the oldest has been due (seconds)."""

    pending: int
    oldest_pending_age: float | None


_DEPTH_SQL = {
    kind: text(f"""
        SELECT count(*) AS pending,
               extract(epoch FROM now() - min(next_attempt)) AS oldest
        FROM {event_table(kind)} WHERE status = 'pending' AND next_attempt <= now()
    """)
    for kind in EVENT_KINDS
}


def queue_depths(conn: Connection, kinds: Iterable[str] = EVENT_KINDS) -> dict[str, QueueDepth]:
    """Pending events that are due (scheduled ones count from their scheduled time)."""
    depths = {}
    for kind in kinds:
        row = conn.execute(_DEPTH_SQL[kind]).one()
        oldest = None if row.oldest is None else round(max(float(row.oldest), 0.0), 3)
        depths[kind] = QueueDepth(int(row.pending), oldest)
    return depths
