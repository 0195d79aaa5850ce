"""The Web Push channel: a browser's ``PushSubscription`` as the address, a notification
(``title``, ``body``, ``url``, ``icon``, ``tag``, ``ttl``, ``urgency``) as the template,
sent with ``pywebpush`` (:mod:`message_center.delivery.webpush`: RFC 8030 delivery, RFC
8291 encryption, RFC 8292 VAPID) through the ``webpush_default`` connection.

The address is the browser's subscription JSON (``{"endpoint", "keys": {"p256dh",
"auth"}}``), checked at push time (https endpoint, key lengths, no loopback / private /
metadata host unless listed in ``MC_WEBPUSH_INSECURE_HOSTS``) and again before each send;
it is kept as JSON text in the events' ``address`` column and quarantined by its endpoint
URL (the API reads and releases it with ``?endpoint=``). Each push service (the
endpoint's origin) is a relay of its own with the connection's caps, its own "slow down"
pause and circuit breaker. Answers: ``201`` sent; ``404`` / ``410`` hard (quarantine);
``413`` failed; ``429`` throttle (its ``Retry-After`` honoured); ``5xx``, timeouts retried.

ACC's code for its mobile app channel, ``41`` (``nms:messageType``; Adobe's transactional
push example sends ``wishedChannel="41"``), and the label ``mobileApp`` pick this channel
on SOAP, where the subscription is the event's ``<pushSubscription endpoint= p256dh=
auth=/>`` element.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from message_center.channel.base import Channel, LocalSink, RenderedParts
from message_center.channels.email import share
from message_center.delivery.ledger import Attempt
from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import RelayGate, RelayGates
from message_center.delivery.webpush import (
    CONNECTION_ID,
    MAX_PLAINTEXT,
    MAX_TTL,
    SUBSCRIPTION_FIELD,
    URGENCIES,
    SubscriptionError,
    WebPushSender,
    WebPushSettings,
    notification_json,
    parse_subscription,
    push_service,
    settings_from_connection,
    subscription_endpoint,
)
from message_center.rendering import RenderError, render_part

#: The notification's parts, in the payload's order; ``ttl`` and ``urgency`` are the
#: request's headers, not in the payload.
NOTIFICATION_PARTS = ("title", "body", "url", "icon", "tag")
DEFAULT_TTL = 24 * 3600
_TAG = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_HTTP_THROTTLE = re.compile(r"answered 429\b")
#: A relay key for a stored address that has no endpoint (never sent: refused first).
_NO_SERVICE = "webpush://invalid"


def _templated(value: str) -> bool:
    return "{{" in value or "{%" in value


def _link_error(name: str, value: str) -> str | None:
    """``url`` / ``icon``: an absolute http(s) URL or a path of the site ("/orders/1")."""
    if value.startswith("/") and not value.startswith("//"):
        return None
    if re.match(r"https?://[^/\s]+", value, re.I) and not re.search(r"\s", value):
        return None
    return (f"{name} {value[:100]!r} is not an http(s) URL or a path of the site such as "
            "/orders/42")


class WebPushChannel(Channel):
    name = "webpush"
    label = "Web Push"
    order = 2
    address_field = SUBSCRIPTION_FIELD
    address_json_schema = {
        "type": "object", "required": ["endpoint", "keys"],
        "properties": {"endpoint": {"type": "string", "format": "uri", "maxLength": 2048},
                       "keys": {"type": "object", "required": ["p256dh", "auth"],
                                "properties": {"p256dh": {"type": "string"},
                                               "auth": {"type": "string"}}}}}
    address_doc = ("The browser's PushSubscription (JSON of pushManager.subscribe()); "
                   "required for webpush.")
    address_error_type = "subscription_format"
    address_noun = "push subscription"
    address_description = "a push subscription endpoint URL"
    address_path = None  # a URL is no path segment: ?endpoint=
    address_query = "endpoint"
    # An http(s) URL with a plain host[:port] and no blanks: every such text is one
    # subscription_endpoint accepts (no bracket or non-ASCII host urlsplit refuses).
    # No control character either (PostgreSQL refuses a NUL in text).
    address_query_pattern = (r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~%!$&'()*+,;=:-]+"
                             r"(?:[/?#][^\s\x00-\x1f\x7f]*)?$")
    quarantine_key_sql = ("CASE WHEN left(btrim({address}), 1) = '{{' THEN "
                          "btrim(CAST({address} AS jsonb) ->> 'endpoint') "
                          "ELSE btrim({address}) END")
    xml_element = SUBSCRIPTION_FIELD
    acc_codes = ("41", "mobileApp")
    template_noun = "a webpush template"
    parts_hint = "title, body, url, icon, tag, ttl, urgency"
    template_parts = ("title", "body", "url", "icon", "tag", "ttl", "urgency")
    required_parts = ("title",)
    connection_id = CONNECTION_ID
    connection_label = "Web Push"
    connection_required = False
    provider_reference = "the push service's Location of the message"
    throttle_pattern = _HTTP_THROTTLE
    settings_type = WebPushSettings
    proofs_to_seeds = False
    local_sink = LocalSink(name="webpush-sink", module="mc_local.webpush_sink",
                           port_env="MC_WEBPUSH_PORT", default_port=8027,
                           dir_flag="--push-dir", dir_name="webpush",
                           what="push notifications")

    # --- addresses -------------------------------------------------------------------
    def address_error(self, value: Any) -> str | None:
        try:
            parse_subscription(value)
        except SubscriptionError as exc:
            return f"{exc.field} {exc.message}"
        return None

    def normalize_address(self, value: str) -> str:
        return subscription_endpoint(value)

    def quarantine_key(self, address: str) -> str:
        try:
            return subscription_endpoint(address)
        except ValueError:
            return address

    def seed_address_error(self, value: str) -> str | None:
        try:
            subscription_endpoint(value)
        except ValueError as exc:
            return f"{value[:100]!r}: {exc} (a seed is a push endpoint URL or a subscription)"
        return None

    def address_on_wire(self, stored: str) -> Any:
        try:
            return json.loads(stored)
        except ValueError:
            return stored

    def address_from_xml(self, attributes: Mapping[str, str]) -> Any:
        keys = {name: attributes[name] for name in ("p256dh", "auth") if name in attributes}
        return {"endpoint": attributes.get("endpoint"), "keys": keys}

    def xml_location(self, field: str) -> str:
        last = field.rsplit(".", 1)[-1]
        return f"{self.xml_element}/@{last}" if last in ("endpoint", "p256dh", "auth") \
            else str(self.xml_element)

    # --- templates -------------------------------------------------------------------
    def check_template(self, values: Mapping[str, str | None], flagged: Sequence[str],
                       problem: Callable[[str | None, str], None]) -> None:
        for name in ("url", "icon"):
            value = values.get(name)
            if value and not _templated(value) and (error := _link_error(name, value)):
                problem(name, error)
        ttl = values.get("ttl")
        if ttl and not _templated(ttl) and (error := _ttl_error(ttl)):
            problem("ttl", error)
        urgency = values.get("urgency")
        if urgency and not _templated(urgency) and urgency.strip() not in URGENCIES:
            problem("urgency", f"{urgency!r} is not one of {', '.join(URGENCIES)}")

    def render(self, parts: Mapping[str, str | None],
               variables: dict[str, Any]) -> RenderedParts:
        rendered = {name: render_part(parts.get(name), variables, part=name)
                    for name in self.template_parts}
        return {name: value.strip() if value is not None else None
                for name, value in rendered.items()}

    def preview_files(self, rendered: RenderedParts, out_dir: Path, stem: str,
                      header: str, sender: str | None, address: str) -> list[Path] | None:
        """The notification's payload (``.webpush.json``) and a picture of it as a
        browser shows it (``.webpush.html``, no remote asset: the icon is named, not
        loaded)."""
        payload = notification_payload(rendered)
        ttl, urgency = request_options(rendered)
        data = notification_json(payload)
        json_path = out_dir / f"{stem}.webpush.json"
        json_path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n",
                             encoding="utf-8")
        html_path = out_dir / f"{stem}.webpush.html"
        html_path.write_text(notification_card(
            payload, ttl=ttl, urgency=urgency, size=len(data), header=header,
            address=address), encoding="utf-8")
        return [html_path, json_path]

    def proof_content(self, rendered: RenderedParts, label: str,
                      address: str) -> tuple[str | None, str | None, str | None]:
        payload = notification_payload(rendered)
        ttl, urgency = request_options(rendered)
        return (f"Web Push {label}", notification_card(payload, ttl=ttl, urgency=urgency,
                                                       size=len(notification_json(payload)),
                                                       header="", address=address),
                "Web Push notification:\n\n" + json.dumps(payload, ensure_ascii=False,
                                                          indent=2))

    def lookup_message(self, rendered: RenderedParts, *, to: str | None,
                       sender: str | None, default_sender: str | None, log_id: int | None,
                       event_ref: str) -> dict[str, Any]:
        endpoint = self.quarantine_key(to) if to else None
        payload = notification_payload(rendered)
        ttl, urgency = request_options(rendered)
        return {"to": endpoint, "sender": sender, **payload, "ttl": ttl, "urgency": urgency,
                "payload": json.dumps(payload, ensure_ascii=False)}

    # --- delivery --------------------------------------------------------------------
    def settings_from_connection(self, conn: Mapping[str, Any]) -> WebPushSettings | None:
        """The VAPID keys of ``webpush_default`` (see
        :func:`~message_center.delivery.webpush.settings_from_connection`); None when it
        holds no private key: the channel is not configured (its messages wait, e-mail
        and SMS are unaffected)."""
        if not conn.get("password"):
            return None
        return settings_from_connection(conn)

    def open_sender(self, settings: WebPushSettings, kind: str) -> WebPushChannelSender:
        return WebPushChannelSender(settings)


def _ttl_error(value: str) -> str | None:
    text = value.strip()
    if not text.isdigit() or int(text) > MAX_TTL:
        return (f"ttl {value!r} is not a whole number of seconds from 0 to {MAX_TTL} "
                "(28 days)")
    return None


def notification_payload(rendered: Mapping[str, str | None]) -> dict[str, str]:
    """What the service worker receives: the rendered notification parts, empty ones
    left out."""
    return {name: value for name in NOTIFICATION_PARTS
            if (value := rendered.get(name)) not in (None, "")}


def request_options(rendered: Mapping[str, str | None]) -> tuple[int, str]:
    """``(ttl, urgency)`` of the push request from the rendered parts (defaults: a day,
    ``normal``); ``ValueError`` names a bad one (the message fails, not retried)."""
    ttl_text = (rendered.get("ttl") or "").strip()
    if ttl_text and (error := _ttl_error(ttl_text)):
        raise ValueError(error)
    urgency = (rendered.get("urgency") or "").strip() or "normal"
    if urgency not in URGENCIES:
        raise ValueError(f"urgency {urgency!r} is not one of {', '.join(URGENCIES)}")
    return (int(ttl_text) if ttl_text else DEFAULT_TTL), urgency


def check_notification(payload: Mapping[str, str]) -> None:
    """A rendered notification that cannot be sent: no title, a bad link, too large."""
    if not payload.get("title"):
        raise RenderError("the rendered title is empty")
    for name in ("url", "icon"):
        if name in payload and (error := _link_error(name, payload[name])):
            raise ValueError(error)
    if "tag" in payload and not _TAG.fullmatch(payload["tag"]):
        raise ValueError(f"tag {payload['tag'][:100]!r} is not 1-64 characters on one line")
    size = len(notification_json(payload))
    if size > MAX_PLAINTEXT:
        raise ValueError(f"the notification is {size} bytes of JSON, more than the "
                         f"{MAX_PLAINTEXT} a push message carries")


_CARD_STYLE = """
body{font:14px system-ui,sans-serif;background:#eef1f5;margin:0;padding:24px;color:#1f2933}
.meta{font-size:12px;color:#52606d;white-space:pre-wrap;margin:0 0 16px}
.notification{display:flex;gap:12px;max-width:360px;background:#fff;border-radius:10px;
 box-shadow:0 4px 16px rgba(0,0,0,.18);padding:14px 16px}
.icon{flex:none;width:40px;height:40px;border-radius:8px;background:#3e4c59;color:#fff;
 display:flex;align-items:center;justify-content:center;font-weight:600;font-size:18px}
.origin{font-size:11px;color:#7b8794;margin-bottom:2px}
.title{font-weight:600;margin:0 0 4px}
.body{margin:0;white-space:pre-wrap}
.link{font-size:11px;color:#2f6fde;margin-top:6px;word-break:break-all}
dl{font-size:12px;color:#52606d;display:grid;grid-template-columns:max-content 1fr;
 gap:2px 12px;max-width:360px}
dt{font-weight:600}
"""


def notification_card(payload: Mapping[str, str], *, ttl: int, urgency: str, size: int,
                      header: str, address: str) -> str:
    """A self-contained HTML picture of the notification as a desktop browser shows it
    (title, body, the icon's initial, the page it opens), with the request's options."""
    e = html.escape
    title, body = payload.get("title", ""), payload.get("body", "")
    initial = (title[:1] or "?").upper()
    link = payload.get("url")
    rows = [("Opens", link or "(the site's page)"), ("Icon", payload.get("icon") or "-"),
            ("Tag", payload.get("tag") or "-"), ("TTL", f"{ttl} s"), ("Urgency", urgency),
            ("Payload", f"{size} bytes of JSON (at most {MAX_PLAINTEXT})"),
            ("To", address)]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Web Push preview: {e(title)}</title><style>{_CARD_STYLE}</style></head>
<body>
<pre class="meta">{e(header)}</pre>
<div class="notification" role="alert" id="notification">
  <div class="icon" aria-hidden="true">{e(initial)}</div>
  <div>
    <div class="origin">Web Push notification</div>
    <p class="title" id="notification-title">{e(title)}</p>
    <p class="body" id="notification-body">{e(body)}</p>
    {f'<div class="link" id="notification-url">{e(link)}</div>' if link else ''}
  </div>
</div>
<dl id="notification-options">{''.join(f'<dt>{e(k)}</dt><dd>{e(v)}</dd>' for k, v in rows)}</dl>
</body></html>
"""


class WebPushChannelSender:
    """One :class:`~message_center.delivery.webpush.WebPushSender` (a pooled, guarded
    HTTP session, VAPID tokens per push service) shared by the shard's session threads;
    each push service is a relay of its own in the session pool."""

    def __init__(self, settings: WebPushSettings) -> None:
        self.settings = settings
        self._sender = WebPushSender(settings)

    def relay_gate(self, shards: int) -> RelayGates:
        settings = self.settings

        def make(service: str) -> RelayGate:
            return RelayGate(
                service, channel=CHANNEL.name,
                max_concurrent=share(settings.max_concurrent, shards),
                per_second=settings.max_messages_per_second / shards
                if settings.max_messages_per_second else None)

        return RelayGates(CHANNEL.name, _service_of, make)

    def send(self, attempt: Attempt, variables: dict[str, Any],
             ready: Callable[[], None] | None = None) -> Outcome:
        rendered = CHANNEL.render(CHANNEL.parts_from_row(attempt.row), variables)
        payload = notification_payload(rendered)
        check_notification(payload)
        ttl, urgency = request_options(rendered)
        result = self._sender.send(attempt.address, payload, ttl=ttl, urgency=urgency,
                                   ready=ready)
        outcome = result.outcome
        if result.retry_after is not None:
            outcome = replace(outcome, retry_after=result.retry_after)
        return outcome

    def reconcile(self, attempt: Attempt) -> Outcome | None:
        return None  # a push service cannot be asked about a message

    def close(self) -> None:
        self._sender.close()


def _service_of(attempt: Attempt) -> str:
    """The push service (endpoint origin) a message goes to: its relay."""
    try:
        return push_service(subscription_endpoint(attempt.address))
    except ValueError:
        return _NO_SERVICE


CHANNEL = WebPushChannel()
