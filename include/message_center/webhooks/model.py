"""What a webhook subscription is and what a webhook message looks like: the event
names, the validation of a subscription (422 naming the field), the signing secrets
(``whsec_...``) and the signed request (Standard Webhooks, with the ``standardwebhooks``
library: receivers verify with any of its SDKs).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from standardwebhooks.webhooks import Webhook

from message_center.ids import to_public
from message_center.net_guard import WEBHOOK_ALLOWED_HOSTS, HostList, UrlRefused, check_url
from message_center.statuses import EVENT_STATUS_LABELS, REPORTED_EVENT
from message_center.webhook_outbox import BOUNCED, CLICKED, OPENED, TEST

#: Every event name a subscription may ask for (DESIGN.md §8). ``event.opened`` and
#: ``event.clicked`` are written by the tracking (:func:`message_center.webhook_outbox.
#: enqueue`).
EVENT_NAMES: tuple[str, ...] = (*(f"event.{status}" for status in REPORTED_EVENT),
                                BOUNCED, OPENED, CLICKED)
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
#: How long the previous secret still signs after a rotation, by default.
DEFAULT_OVERLAP = timedelta(hours=24)
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION = 500
MAX_EVENT_TYPES = 200
#: Per-endpoint caps (``MC_WEBHOOK_MAX_IN_FLIGHT``, ``MC_WEBHOOK_RATE``), unless the
#: subscription sets its own.
DEFAULT_MAX_IN_FLIGHT = 4
DEFAULT_RATE = 50.0


class WebhookValidationError(ValueError):
    """Bad subscription input: ``errors`` are FastAPI-style entries (loc, field, msg,
    type), answered as a 422."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(error["msg"] for error in errors))


def _error(field_name: str, message: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", field_name], "field": field_name, "msg": message, "type": kind}


class SecretBox(Protocol):
    """Encrypts the signing secrets at rest (Airflow's Fernet key, in the adapter)."""

    def encrypt(self, value: str) -> str: ...

    def decrypt(self, value: str) -> str: ...


def new_secret() -> str:
    """A signing secret, ``whsec_`` + base64 of 32 random bytes (Standard Webhooks)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_subscription_id() -> str:
    return "wh_" + secrets.token_hex(12)


def allowed_hosts(environ: Mapping[str, str] | None = None) -> HostList:
    """``MC_WEBHOOK_ALLOWED_HOSTS``: hosts a webhook may call although they are loopback
    or private (and over plain http)."""
    return HostList.from_env(WEBHOOK_ALLOWED_HOSTS, os.environ if environ is None else environ)


def check_webhook_url(url: str, hosts: HostList, *, resolve_names: bool = True) -> None:
    """Raise :class:`~message_center.net_guard.UrlRefused` unless a webhook may call
    ``url`` (https to public hosts; anything to a listed host)."""
    check_url(url, hosts, public=True, allow_http=True, resolve_names=resolve_names)


@dataclass(frozen=True)
class SubscriptionChange:
    """A validated POST or PATCH body: only the fields given are set."""

    url: str | None = None
    events: tuple[str, ...] | None = None
    event_types: tuple[str, ...] | None = None
    description: str | None = None
    enabled: bool | None = None
    max_in_flight: int | None = None
    rate_per_second: float | None = None
    given: frozenset[str] = field(default_factory=frozenset)


_FIELDS = {"url": "url", "events": "events", "eventTypes": "event_types",
           "description": "description", "enabled": "enabled",
           "maxInFlight": "max_in_flight", "ratePerSecond": "rate_per_second"}


def parse_subscription(body: Any, *, hosts: HostList, creating: bool,
                       known_event_types: Sequence[str] | None = None,
                       resolve_names: bool = True) -> SubscriptionChange:
    """Validate a subscription body (``creating``: POST, ``url`` and ``events``
    required; else PATCH). ``known_event_types``: the event types a filter may name (the
    published templates'); None accepts any. Every problem is reported at once, naming
    its field."""
    if not isinstance(body, dict):
        raise WebhookValidationError([{"loc": ["body"], "field": "body",
                                       "msg": "the body must be a JSON object",
                                       "type": "dict_type"}])
    errors: list[dict[str, Any]] = []
    for key in body:
        if key not in _FIELDS:
            errors.append(_error(str(key), f"unknown field {key!r}; expected "
                                           f"{', '.join(_FIELDS)}", "extra_forbidden"))
    if creating:
        for key in ("url", "events"):
            if key not in body:
                errors.append(_error(key, f"{key} is required", "missing"))
    values: dict[str, Any] = {}
    if "url" in body:
        url = body["url"]
        if not isinstance(url, str) or not url.strip():
            errors.append(_error("url", "url must be a non-empty string", "string_type"))
        elif len(url) > MAX_URL_LENGTH:
            errors.append(_error("url", f"url is longer than {MAX_URL_LENGTH} characters"))
        else:
            try:
                check_webhook_url(url, hosts, resolve_names=resolve_names)
                values["url"] = url
            except UrlRefused as exc:
                errors.append(_error("url", f"url refused: {exc}"))
    if "events" in body:
        names = body["events"]
        if not isinstance(names, list) or not names or \
                not all(isinstance(n, str) for n in names):
            errors.append(_error("events", "events must be a non-empty list of event "
                                           f"names ({', '.join(EVENT_NAMES)})", "list_type"))
        else:
            unknown = [n for n in names if n not in EVENT_NAMES]
            if unknown:
                errors.append(_error("events", f"unknown event name(s) {unknown}; expected "
                                               f"some of {', '.join(EVENT_NAMES)}"))
            else:
                values["events"] = tuple(dict.fromkeys(names))
    if "eventTypes" in body and body["eventTypes"] is not None:
        types = body["eventTypes"]
        if not isinstance(types, list) or len(types) > MAX_EVENT_TYPES or \
                not all(isinstance(t, str) and t.strip() and "\x00" not in t for t in types):
            errors.append(_error("eventTypes", "eventTypes must be a list of at most "
                                               f"{MAX_EVENT_TYPES} event types", "list_type"))
        else:
            unknown = [t for t in types if known_event_types is not None
                       and t not in known_event_types]
            if unknown:
                errors.append(_error("eventTypes", f"unknown event type(s) {unknown}: no "
                                                   "template was ever published for them"))
            else:
                values["event_types"] = tuple(dict.fromkeys(types))
    elif "eventTypes" in body:
        values["event_types"] = ()
    if "description" in body:
        text = body["description"]
        if text is None:
            values["description"] = ""
        elif not isinstance(text, str) or len(text) > MAX_DESCRIPTION or "\x00" in text:
            errors.append(_error("description", "description must be a string of at most "
                                                f"{MAX_DESCRIPTION} characters"))
        else:
            values["description"] = text
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            errors.append(_error("enabled", "enabled must be true or false", "bool_type"))
        else:
            values["enabled"] = body["enabled"]
    if body.get("maxInFlight") is not None:
        cap = body["maxInFlight"]
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 1000:
            errors.append(_error("maxInFlight", "maxInFlight must be a whole number 1-1000"))
        else:
            values["max_in_flight"] = cap
    if body.get("ratePerSecond") is not None:
        rate = body["ratePerSecond"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1e6:
            errors.append(_error("ratePerSecond", "ratePerSecond must be a number > 0"))
        else:
            values["rate_per_second"] = float(rate)
    if errors:
        raise WebhookValidationError(errors)
    given = frozenset(_FIELDS[k] for k in body if k in _FIELDS)
    return SubscriptionChange(**values, given=given)


# -- the message -----------------------------------------------------------------------
def message_id(outbox_id: int) -> str:
    """The ``webhook-id`` of an outbox row: the same for every retry and replay."""
    return f"msg_{to_public(outbox_id)}"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Status -> label, by the status' text (a dict lookup per message, no enum call).
_LABELS: dict[str, str] = {str(status): label for status, label in EVENT_STATUS_LABELS.items()}
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def message_body(row: Mapping[str, Any]) -> bytes:
    """The JSON body of an outbox row (always the same bytes for the same row):
    ``{"type", "timestamp", "data": {"id", "externalId", "type", "status", ...}}``.
    Called once per request: one pass, one encoder (the dispatcher's hot path)."""
    stored = row.get("data") or {}
    if row.get("event_id") is not None:
        data = {"id": to_public(int(row["event_id"])), "kind": row.get("event_kind"),
                **stored}
    else:
        data = dict(stored)
    label = _LABELS.get(stored.get("status"))
    if label is not None:
        data["statusLabel"] = label
    if row.get("event_id") is not None:
        data["sequence"] = int(row["seq"])
    at = _iso(row["occurred_at"])
    data["changedAt"] = at
    return _ENCODER.encode({"type": row["name"], "timestamp": at, "data": data}).encode()


def test_payload() -> dict[str, Any]:
    """The ``data`` of a "Send a test" message."""
    return {"test": True, "message": "A test message from the Message Center"}


def signed_headers(msg_id: str, body: bytes, secrets_: Sequence[str],
                   when: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body``: one ``v1,`` signature per secret (the
    current one, and the previous one during a rotation's overlap)."""
    stamp = when or datetime.now(UTC)
    signatures = " ".join(Webhook(secret).sign(msg_id, stamp, body) for secret in secrets_)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": signatures, "content-type": "application/json",
            "user-agent": "MessageCenter-Webhooks/1"}


__all__ = ["BOUNCED", "CLICKED", "EVENT_NAMES", "OPENED", "TEST", "SecretBox",
           "SubscriptionChange", "WebhookValidationError", "message_body", "message_id",
           "new_secret", "parse_subscription", "signed_headers"]
