"""Render and send one message on its channel; every problem becomes an :class:`Outcome`.

A shard owns one :class:`Channels`: SMTP connections and the HTTP client are opened on
first use and reused for the whole shard. :meth:`Channels.deliver` may be called from
several session threads at once (:mod:`message_center.delivery.pool`): each call borrows
an SMTP connection nobody else is using and gives it back afterwards, so a shard holds at
most as many connections as messages it ever had in flight at once. Rendering happens
here, per message, with the shared sandboxed renderer, so a template error or a missing
variable fails only that message (with a readable reason in its delivery log) and never
stops the shard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from message_center.delivery.breaker import BreakerStore, RelayBreaker
from message_center.delivery.ledger import Attempt
from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import RelayGate, SessionPool
from message_center.delivery.sms import SmsSender, SmsSettings
from message_center.delivery.smtp import (
    SmtpSender,
    SmtpSettings,
    build_email,
    envelope_address,
)
from message_center.ids import to_public
from message_center.rendering import (
    RenderError,
    event_variables,
    render_message,
    render_part,
    template_event,
)

log = logging.getLogger(__name__)


class Channels:
    """The senders of one shard. ``smtp``/``sms`` of ``None`` mean "not configured": such
    messages are retried later (an operator can add the connection) and then expire."""

    def __init__(self, smtp: SmtpSettings | None, sms: SmsSettings | None,
                 kind: str = "rt") -> None:
        self.smtp_settings, self.sms_settings, self.kind = smtp, sms, kind
        self._lock = threading.Lock()
        self._smtp_idle: list[SmtpSender] = []  # open connections nobody is using
        self._smtp_all: list[SmtpSender] = []
        self._sms: SmsSender | None = None
        self._pool: SessionPool | None = None
        self._pool_key: tuple[int, int] | None = None

    def __enter__(self) -> Channels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pool = self._pool_key = None
        with self._lock:
            senders: list[SmtpSender | SmsSender] = [*self._smtp_all]
            if self._sms is not None:
                senders.append(self._sms)
            self._smtp_all, self._smtp_idle, self._sms = [], [], None
        for sender in senders:
            sender.close()

    def session_pool(self, sessions: int, *, shards: int = 1,
                     breakers: BreakerStore | None = None) -> SessionPool:
        """The shard's pool of ``sessions`` delivery sessions, kept while the settings stay
        the same (a real-time loop reuses its sessions and connections round after round).

        The relays' limits (``max_sessions`` / ``max_messages_per_second`` of the SMTP
        connection, ``max_concurrent`` / ``max_messages_per_second`` of the SMS gateway)
        are for the whole DAG run: each of its ``shards`` shard tasks takes an even share
        (at least one session). ``breakers``: where the relays' circuit breakers are
        shared (the execution database); without it each gate has its own."""
        key = (sessions, shards)
        if self._pool is None or self._pool_key != key:
            if self._pool is not None:
                self._pool.close()
            self._pool = SessionPool(self.relay_gates(shards, breakers), sessions)
            self._pool_key = key
        return self._pool

    def relay_gates(self, shards: int = 1,
                    breakers: BreakerStore | None = None) -> dict[str, RelayGate]:
        """One :class:`RelayGate` per configured channel, with this shard's share of the
        relay's limits and the relay's circuit breaker (in ``breakers``)."""
        gates: dict[str, RelayGate] = {}
        smtp, sms = self.smtp_settings, self.sms_settings
        if smtp is not None:
            name = f"smtp://{smtp.host}:{smtp.port}"
            gates["email"] = RelayGate(
                name, max_concurrent=_share(smtp.max_sessions, shards),
                per_second=smtp.max_messages_per_second / shards
                if smtp.max_messages_per_second else None,
                breaker=RelayBreaker(name, "email", breakers), channel="email")
        if sms is not None:
            gates["sms"] = RelayGate(
                sms.base_url, max_concurrent=_share(sms.max_concurrent, shards),
                per_second=sms.max_messages_per_second / shards
                if sms.max_messages_per_second else None,
                breaker=RelayBreaker(sms.base_url, "sms", breakers), channel="sms")
        return gates

    def reconcile(self, attempt: Attempt) -> Outcome | None:
        """Ask the provider what became of a message whose worker died while sending it:
        the SMS gateway's lookup by reference (:meth:`SmsSender.lookup
        <message_center.delivery.sms.SmsSender.lookup>`); None when it cannot tell
        (e-mail: SMTP has no such question)."""
        if attempt.channel != "sms" or self.sms_settings is None:
            return None
        with self._lock:
            if self._sms is None:
                self._sms = SmsSender(self.sms_settings)
            sms = self._sms
        return sms.lookup(attempt.log_id)

    def deliver(self, attempt: Attempt, ready: Callable[[], None] | None = None) -> Outcome:
        """Render and send; never raises for a message-level problem.

        ``ready`` is called just before the point of no return (the final "." of SMTP
        DATA, the gateway request): the shard's recorder commits there that the message
        is handed (:meth:`message_center.processing.recorder.OutcomeRecorder.handing`).
        An exception from it propagates and means "not sent"."""
        row = attempt.row
        if row["published_id"] is None:
            return Outcome.failed(f"template {attempt.template_name} version "
                                  f"{attempt.template_version} is not published here")
        variables = event_variables(template_event(row, attempt.event_id))
        name = f"{attempt.template_name} v{attempt.template_version}"
        try:
            if attempt.channel == "sms":
                return self._send_sms(attempt, row, variables, ready)
            return self._send_email(attempt, row, variables, ready)
        except RenderError as exc:
            return Outcome.failed(f"template {name} cannot be rendered: {exc}")
        except ValueError as exc:
            return Outcome.failed(f"message from template {name} is invalid: {exc}")

    def _send_email(self, attempt: Attempt, row: dict[str, Any], variables: dict[str, Any],
                    ready: Callable[[], None] | None = None) -> Outcome:
        if self.smtp_settings is None:
            return Outcome.retry("no SMTP connection is configured (smtp_default)")
        rendered = render_message(row["subject"], row["html_body"], row["text_body"],
                                  variables)
        sender = row["sender"] or self.smtp_settings.from_email
        envelope = envelope_address(sender)
        message_id, data = build_email(
            log_id=attempt.log_id, sender=sender, recipient=attempt.address,
            subject=rendered.subject, html=rendered.html, text=rendered.text,
            headers={"X-Message-Center-Event": f"{self.kind}:{to_public(attempt.event_id)}"},
        )
        sender = self._borrow_smtp()
        try:
            return sender.send_bytes(data, message_id, envelope, attempt.address,
                                     ready)
        finally:
            with self._lock:
                self._smtp_idle.append(sender)

    def _borrow_smtp(self) -> SmtpSender:
        """An SMTP sender (connection) no other session is using: the last one given back
        (still connected), or a new one."""
        assert self.smtp_settings is not None
        with self._lock:
            if self._smtp_idle:
                return self._smtp_idle.pop()
            sender = SmtpSender(self.smtp_settings)
            self._smtp_all.append(sender)
            return sender


    def _send_sms(self, attempt: Attempt, row: dict[str, Any], variables: dict[str, Any],
                  ready: Callable[[], None] | None = None) -> Outcome:
        if self.sms_settings is None:
            return Outcome.retry("no SMS gateway connection is configured (sms_gateway)")
        body = render_part(row["sms_body"], variables, part="sms")
        if not body:
            return Outcome.failed(f"template {attempt.template_name} has no SMS text")
        with self._lock:
            if self._sms is None:  # one pooled HTTP client, safe to share between threads
                self._sms = SmsSender(self.sms_settings)
            sms = self._sms
        return sms.send(log_id=attempt.log_id, to=attempt.address, text=body,
                        sender=row["sender"], ready=ready)


def _share(limit: int | None, shards: int) -> int | None:
    """A shard task's share of a relay's concurrency limit (at least one)."""
    return None if limit is None else max(1, limit // max(1, shards))
