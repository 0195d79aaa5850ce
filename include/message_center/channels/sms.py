"""The SMS channel: a phone number (E.164-like, separators allowed), one ``sms`` text
part, posted to an HTTP gateway (:mod:`message_center.delivery.sms`) through the optional
``sms_gateway`` connection, with the gateway's ``max_concurrent`` /
``max_messages_per_second`` as caps.

Answers are classified by HTTP status and the gateway's ``code``
(:func:`~message_center.delivery.classification.classify_sms`); ``429`` means "slow
down". The gateway can be asked what became of a message (crash recovery). Numbers are
kept in the quarantine as given, without surrounding blanks.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from message_center.channel.base import AddressPath, Channel, LocalSink, RenderedParts
from message_center.channels.email import share
from message_center.delivery.ledger import Attempt
from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import RelayGate
from message_center.delivery.sms import SmsSender, SmsSettings, sms_segments
from message_center.delivery.smtp import relay_limit
from message_center.rendering import render_part

# 6-15 digits, the first after an optional +, separators between: one rule, also in the schema.
PHONE_PATTERN = r"^\+?[0-9](?:[ ().-]*[0-9]){5,14}[ ().-]*$"
_PHONE = re.compile(PHONE_PATTERN)
#: Template seeds: a looser check than at push time.
_SEED_PHONE = re.compile(r"^\+?[0-9][0-9 ().\-]{4,22}$")
#: What :meth:`SmsChannel.normalize_address` accepts (the quarantine API's path).
STORED_PHONE_PATTERN = r"^\+?[0-9][0-9 .()-]{0,28}[0-9)]$"
_STORED_PHONE = re.compile(r"\+?[0-9][0-9 .()-]{0,28}[0-9)]")
_HTTP_THROTTLE = re.compile(r"answered 429\b")

def is_valid_phone(value: str) -> bool:
    """E.164-like numbers, separators allowed: ``+33 6 12 34 56 78``, ``555 010-9999``."""
    return bool(_PHONE.match(value))


class SmsChannel(Channel):
    name = "sms"
    label = "SMS"
    order = 1
    address_field = "mobilePhone"
    address_json_schema = {"type": "string", "pattern": PHONE_PATTERN}
    address_max_length = 32
    address_doc = ("Recipient number (E.164, 6-15 digits, separators allowed); required "
                   "for sms.")
    address_column = "mobile_phone"
    address_error_type = "phone_format"
    address_noun = "mobile phone"
    address_description = "a phone number"
    address_path = AddressPath(STORED_PHONE_PATTERN, 3, 32,
                               "A phone number, as stored (e.g. +33612345678).")
    acc_codes = ("1", "mobile")
    template_noun = "an SMS template"
    parts_hint = "sms"
    template_parts = ("sms",)
    required_parts = ("sms",)
    template_columns = {"sms": "sms_body"}
    parts_in_every_content = True
    connection_id = "sms_gateway"
    connection_label = "SMS gateway"
    connection_required = False
    provider_reference = "SMS reference mc-DELIVERY_LOG_ID"
    reconciles = True
    throttle_pattern = _HTTP_THROTTLE
    settings_type = SmsSettings
    proofs_to_seeds = False
    local_sink = LocalSink(name="sms-sink", module="mc_local.sms_sink", port_env="MC_SMS_PORT",
                           default_port=8026, dir_flag="--sms-dir", dir_name="sms",
                           what="SMS")

    def address_error(self, value: str) -> str | None:
        return None if is_valid_phone(value) else (
            "mobilePhone is not a valid phone number (6-15 digits, e.g. +33612345678)")

    def normalize_address(self, value: str) -> str:
        address, value = value, (value or "").strip()
        if not value:
            raise ValueError("address is empty")
        if not _STORED_PHONE.fullmatch(value):
            raise ValueError(f"address {address!r} is not a phone number")
        return value

    def seed_address_error(self, value: str) -> str | None:
        return None if _SEED_PHONE.match(value) else (
            f"{value!r} is not a mobile phone number such as +33612345678")

    def check_template(self, values: Mapping[str, str | None], flagged: Sequence[str],
                       problem: Callable[[str | None, str], None]) -> None:
        pass

    def render(self, parts: Mapping[str, str | None], variables: dict[str, Any],
               options: Mapping[str, Any] | None = None) -> RenderedParts:
        return {"sms": render_part(parts.get("sms"), variables, part="sms")}

    def proof_content(self, rendered: RenderedParts, label: str,
                      address: str) -> tuple[str | None, str | None, str | None]:
        return f"SMS {label}", None, f"SMS to {address}:\n\n{rendered['sms']}"

    def preview_files(self, rendered: RenderedParts, out_dir: Path, stem: str,
                      header: str, sender: str | None, address: str) -> list[Path] | None:
        body = rendered["sms"] or ""
        encoding, parts = sms_segments(body)
        path = out_dir / f"{stem}.sms.txt"
        path.write_text(f"{header}Length: {len(body)} characters, {encoding}, "
                        f"{parts} SMS part(s)\n\n{body}", encoding="utf-8")
        return [path]

    def lookup_message(self, rendered: RenderedParts, *, to: str | None,
                       sender: str | None, default_sender: str | None, log_id: int | None,
                       event_ref: str) -> dict[str, Any]:
        body = rendered["sms"]
        return {"to": to, "sender": sender, "text": body, "length": len(body or "")}

    def settings_from_connection(self, conn: Mapping[str, Any]) -> SmsSettings:
        """Settings from the ``sms_gateway`` (``http``) connection: schema (http/https),
        host, port, login/password (Basic auth; a password without login is sent as a
        Bearer token); extras ``path`` (default ``/messages``), ``sender``, ``timeout``,
        ``max_concurrent``, ``max_messages_per_second``."""
        extra = conn.get("extra") or {}
        scheme = conn.get("schema") if conn.get("schema") in ("http", "https") else "http"
        port = f":{conn['port']}" if conn.get("port") else ""
        return SmsSettings(
            base_url=f"{scheme}://{conn.get('host') or 'localhost'}{port}",
            path=str(extra.get("path") or "/messages"),
            sender=extra.get("sender"),
            login=conn.get("login") or None,
            password=conn.get("password") or None,
            timeout=float(extra.get("timeout") or 10),
            max_concurrent=relay_limit(extra, "max_concurrent", int, "SMS gateway connection"),
            max_messages_per_second=relay_limit(extra, "max_messages_per_second", float,
                                                "SMS gateway connection"),
        )

    def open_sender(self, settings: SmsSettings, kind: str) -> SmsChannelSender:
        return SmsChannelSender(settings)


class SmsChannelSender:
    """One pooled HTTP client to the gateway, shared by the shard's session threads."""

    def __init__(self, settings: SmsSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client: SmsSender | None = None

    def _sender(self) -> SmsSender:
        with self._lock:
            if self._client is None:  # one pooled HTTP client, safe to share between threads
                self._client = SmsSender(self.settings)
            return self._client

    def relay_gate(self, shards: int) -> RelayGate:
        sms = self.settings
        return RelayGate(
            sms.base_url,
            max_concurrent=share(sms.max_concurrent, shards),
            per_second=sms.max_messages_per_second / shards
            if sms.max_messages_per_second else None)

    def send(self, attempt: Attempt, variables: dict[str, Any],
             ready: Callable[[], None] | None = None) -> Outcome:
        body = render_part(attempt.row["sms_body"], variables, part="sms")
        if not body:
            return Outcome.failed(f"template {attempt.template_name} has no SMS text")
        return self._sender().send(log_id=attempt.log_id, to=attempt.address, text=body,
                                   sender=attempt.row["sender"], ready=ready)

    def reconcile(self, attempt: Attempt) -> Outcome | None:
        return self._sender().lookup(attempt.log_id)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


CHANNEL = SmsChannel()
