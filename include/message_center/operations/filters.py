"""The filter of a bulk action, validated with errors naming the field.

A filter is a JSON object (the API's, the DAG's params, the CLI's ``--filter``) with any
of: ``instance`` (cell id 0-255), ``queue`` (``rt`` | ``batch``), ``eventType``,
``channel``, ``status``, ``failureClass`` (a value or a list of values each), ``from`` /
``to`` (ISO 8601: when the event was created, ``to`` excluded), ``externalIdPrefix``,
``ids`` (event ids). At least one criterion is required: an empty filter would act on
every event. It becomes one SQL predicate over the event ``e`` with bind parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from message_center import channel as channels
from message_center.ids import to_public, to_stored
from message_center.statuses import EVENT_KINDS, FAILURE_CLASSES, EventStatus

MAX_IDS = 100_000
MAX_TEXT = 255
FIELDS = ("instance", "queue", "eventType", "channel", "status", "failureClass", "from",
          "to", "externalIdPrefix", "ids")


class OperationInputError(ValueError):
    """Bad bulk action input: ``errors`` in the push API's shape (``loc``, ``field``,
    ``msg``, ``type``), the first one's message as the exception's."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(e["msg"] for e in errors))

    @property
    def field(self) -> str:
        return str(self.errors[0]["field"])


def invalid(name: str, message: str, where: str = "filter") -> OperationInputError:
    loc = ["body", where, name] if where else ["body", name]
    return OperationInputError([{"loc": loc, "field": f"{where}.{name}" if where else name,
                                 "msg": message, "type": "value_error"}])


@dataclass(frozen=True)
class BulkFilter:
    """A validated filter; ``kinds``: the queues it covers."""

    instance: int | None = None
    kinds: tuple[str, ...] = EVENT_KINDS
    event_types: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    failure_classes: tuple[str, ...] = ()
    created_from: datetime | None = None
    created_to: datetime | None = None
    external_id_prefix: str | None = None
    ids: tuple[int, ...] = field(default=())

    def sql(self) -> tuple[str, dict[str, Any]]:
        """The predicate over event ``e`` (of any queue; ``:kind`` is bound by the
        statement) and its parameters."""
        parts, params = ["TRUE"], {}
        if self.instance is not None:
            parts.append("((e.id >> 56) & 255) = :f_cell")
            params["f_cell"] = self.instance
        for column, name, values in (("type", "f_types", self.event_types),
                                     ("wished_channel", "f_channels", self.channels),
                                     ("status", "f_statuses", self.statuses)):
            if values:
                parts.append(f"e.{column} = ANY(:{name})")
                params[name] = list(values)
        if self.failure_classes:
            parts.append("EXISTS (SELECT 1 FROM delivery_log fd WHERE fd.event_kind = :kind "
                         "AND fd.event_id = e.id AND fd.failure_class = ANY(:f_classes))")
            params["f_classes"] = list(self.failure_classes)
        if self.created_from is not None:
            parts.append("e.created >= :f_from")
            params["f_from"] = self.created_from
        if self.created_to is not None:
            parts.append("e.created < :f_to")
            params["f_to"] = self.created_to
        if self.external_id_prefix:
            parts.append("starts_with(e.external_id, :f_prefix)")
            params["f_prefix"] = self.external_id_prefix
        if self.ids:
            parts.append("e.id = ANY(:f_ids)")
            params["f_ids"] = list(self.ids)
        return " AND ".join(parts), params

    def to_dict(self) -> dict[str, Any]:
        """The filter as given back (JSON): what the audit trail and the DAG params keep."""
        out: dict[str, Any] = {}
        if self.instance is not None:
            out["instance"] = self.instance
        if self.kinds != EVENT_KINDS:
            out["queue"] = self.kinds[0]
        for name, values in (("eventType", self.event_types), ("channel", self.channels),
                             ("status", self.statuses), ("failureClass", self.failure_classes)):
            if values:
                out[name] = list(values)
        if self.created_from is not None:
            out["from"] = self.created_from.isoformat()
        if self.created_to is not None:
            out["to"] = self.created_to.isoformat()
        if self.external_id_prefix:
            out["externalIdPrefix"] = self.external_id_prefix
        if self.ids:
            out["ids"] = [str(to_public(i)) for i in self.ids]
        return out


def _texts(name: str, value: Any, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(
            isinstance(v, str) and 0 < len(v) <= MAX_TEXT for v in values):
        raise invalid(name, f"{name} must be a non-empty text or a list of them")
    if allowed is not None:
        for v in values:
            if v not in allowed:
                raise invalid(name, f"{name} {v!r} is not one of: {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def _time(name: str, value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise invalid(name, f"{name} must be an ISO 8601 date-time; got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ids(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_IDS:
        raise invalid("ids", f"ids must be a list of 1 to {MAX_IDS} event ids")
    out = []
    for item in value:
        try:
            if isinstance(item, bool) or not isinstance(item, int | str):
                raise ValueError
            out.append(to_stored(int(item)))
        except ValueError:
            raise invalid("ids", f"ids: {item!r} is not an event id") from None
    return tuple(dict.fromkeys(out))


def parse_filter(raw: Any) -> BulkFilter:
    """Validate a filter object; :class:`OperationInputError` names the bad field."""
    if not isinstance(raw, Mapping):
        raise invalid("filter", "filter must be a JSON object", where="")
    unknown = [name for name in raw if name not in FIELDS]
    if unknown:
        raise invalid(str(unknown[0]), f"unknown filter field {unknown[0]!r}; expected "
                                       f"some of: {', '.join(FIELDS)}")
    given = {k: v for k, v in raw.items() if v not in (None, "", [])}
    if not set(given) - {"queue"}:
        raise invalid("filter", "give at least one criterion besides the queue (an empty "
                                "filter would act on every event)", where="")
    values: dict[str, Any] = {}
    if "instance" in given:
        cell = given["instance"]
        if isinstance(cell, str) and cell.isdigit():
            cell = int(cell)
        if isinstance(cell, bool) or not isinstance(cell, int) or not 0 <= cell <= 255:
            raise invalid("instance", "instance must be a cell id from 0 to 255")
        values["instance"] = cell
    if "queue" in given:
        values["kinds"] = _texts("queue", given["queue"], EVENT_KINDS)[:1] \
            if isinstance(given["queue"], str) else _texts("queue", given["queue"], EVENT_KINDS)
    if "eventType" in given:
        values["event_types"] = _texts("eventType", given["eventType"])
    if "channel" in given:
        values["channels"] = _texts("channel", given["channel"], tuple(channels.names()))
    if "status" in given:
        values["statuses"] = _texts("status", given["status"],
                                    tuple(s.value for s in EventStatus))
    if "failureClass" in given:
        values["failure_classes"] = _texts("failureClass", given["failureClass"],
                                           FAILURE_CLASSES)
    if "from" in given:
        values["created_from"] = _time("from", given["from"])
    if "to" in given:
        values["created_to"] = _time("to", given["to"])
        if values.get("created_from") and values["created_to"] <= values["created_from"]:
            raise invalid("to", "to must be after from")
    if "externalIdPrefix" in given:
        prefix = given["externalIdPrefix"]
        if not isinstance(prefix, str) or len(prefix) > MAX_TEXT:
            raise invalid("externalIdPrefix", "externalIdPrefix must be a text of at most "
                                              f"{MAX_TEXT} characters")
        values["external_id_prefix"] = prefix
    if "ids" in given:
        values["ids"] = _ids(given["ids"])
    return BulkFilter(**values)
