"""Render and send one message on its channel; every problem becomes an :class:`Outcome`.

A shard owns one :class:`Channels`: the SMTP connection and the HTTP client are opened on
first use and reused for the whole shard. Rendering happens here, per message, with the
shared sandboxed renderer, so a template error or a missing variable fails only that
message (with a readable reason in its delivery log) and never stops the shard.
"""

from __future__ import annotations

import logging
from typing import Any

from message_center.delivery.ledger import Attempt
from message_center.delivery.outcome import Outcome
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
        self._smtp: SmtpSender | None = None
        self._sms: SmsSender | None = None

    def __enter__(self) -> Channels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for sender in (self._smtp, self._sms):
            if sender is not None:
                sender.close()
        self._smtp = self._sms = None

    def deliver(self, attempt: Attempt) -> Outcome:
        """Render and send; never raises for a message-level problem."""
        row = attempt.row
        if row["published_id"] is None:
            return Outcome.failed(f"template {attempt.template_name} version "
                                  f"{attempt.template_version} is not published here")
        variables = event_variables(template_event(row, attempt.event_id))
        name = f"{attempt.template_name} v{attempt.template_version}"
        try:
            if attempt.channel == "sms":
                return self._send_sms(attempt, row, variables)
            return self._send_email(attempt, row, variables)
        except RenderError as exc:
            return Outcome.failed(f"template {name} cannot be rendered: {exc}")
        except ValueError as exc:
            return Outcome.failed(f"message from template {name} is invalid: {exc}")

    def _send_email(self, attempt: Attempt, row: dict[str, Any],
                    variables: dict[str, Any]) -> Outcome:
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
        if self._smtp is None:
            self._smtp = SmtpSender(self.smtp_settings)
        return self._smtp.send_bytes(data, message_id, envelope, attempt.address)

    def _send_sms(self, attempt: Attempt, row: dict[str, Any],
                  variables: dict[str, Any]) -> Outcome:
        if self.sms_settings is None:
            return Outcome.retry("no SMS gateway connection is configured (sms_gateway)")
        body = render_part(row["sms_body"], variables)
        if not body:
            return Outcome.failed(f"template {attempt.template_name} has no SMS text")
        if self._sms is None:
            self._sms = SmsSender(self.sms_settings)
        return self._sms.send(log_id=attempt.log_id, to=attempt.address, text=body,
                              sender=row["sender"])
