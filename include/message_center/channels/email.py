"""The e-mail channel: an address per RFC 5321 (pragmatic check), subject / html / text
parts, sent over SMTP (:mod:`message_center.delivery.smtp`) through the ``smtp_default``
connection, with the relay's ``max_sessions`` / ``max_messages_per_second`` as caps.

Answers are classified by their SMTP reply code
(:func:`~message_center.delivery.classification.classify_smtp`); ``421`` and ``4.7.x``
mean "slow down". An address is kept in lower case in the quarantine.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from message_center.channel.base import (
    AddressPath,
    Channel,
    Handing,
    LocalSink,
    RenderedParts,
)
from message_center.channels import email_attachments
from message_center.delivery.classification import attachment_unavailable
from message_center.delivery.ledger import Attempt
from message_center.delivery.outcome import Outcome
from message_center.delivery.pool import RelayGate
from message_center.delivery.smtp import (
    SmtpSession,
    SmtpSettings,
    build_email,
    envelope_address,
    smtp_settings_from_connection,
)
from message_center.ids import to_public
from message_center.link_marks import LINK_START
from message_center.rendering import RenderedMessage, RenderError, render_message
from message_center.tracking import links as tracking_links
from message_center.tracking import options as tracking_options
from message_center.tracking import tokens as tracking_tokens

_EMAIL_FORBIDDEN = re.compile(r'[\s\x00<>(),;:"\[\]\\@]')
_DOMAIN_LABEL = re.compile(r"^[^\W_](?:[\w-]{0,61}[^\W_])?$")
#: Template seeds and senders: a looser check than at push time (``a@b.c``).
_SEED_EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")
#: What :meth:`EmailChannel.normalize_address` accepts (the quarantine API's path).
EMAIL_PATTERN = r"^[^@\s/\x00-\x1f\x7f-\x9f]+@[^@\s/\x00-\x1f\x7f-\x9f]+$"
# Outcomes built without a classified answer (tests, older callers): the reply code in the
# error text.
_SMTP_THROTTLE = re.compile(r"(?:^|[\s(])(?:421|4\.7\.\d{1,3})(?=[\s,)]|$)")


def is_valid_email(value: str) -> bool:
    """Pragmatic address check: one ``@``, a sane local part, a dotted domain (IDN ok)."""
    if len(value) > 254 or value.count("@") != 1:
        return False
    local, domain = value.split("@")
    if not local or len(local) > 64 or _EMAIL_FORBIDDEN.search(local):
        return False
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    labels = domain.split(".")
    return (len(labels) >= 2 and len(labels[-1]) >= 2 and not labels[-1].isdigit()
            and all(_DOMAIN_LABEL.match(label) for label in labels))


class EmailChannel(Channel):
    name = "email"
    label = "E-mail"
    order = 0
    address_field = "email"
    address_json_schema = {"type": "string", "format": "email"}
    address_max_length = 254
    address_doc = "Recipient address; required for the email channel."
    address_column = "email"
    address_case_insensitive = True
    address_error_type = "email_format"
    address_noun = "email"
    address_description = "an e-mail address"
    address_path = AddressPath(EMAIL_PATTERN, 3, 320, "An e-mail address (any case).")
    acc_codes = ("0",)
    template_noun = "an email template"
    parts_hint = "html and/or text"
    template_parts = ("subject", "html", "text")
    required_parts = ("subject",)
    html_parts = ("html",)
    template_columns = {"subject": "subject", "html": "html_body", "text": "text_body"}
    parts_in_every_content = True
    connection_id = "smtp_default"
    connection_label = "SMTP"
    connection_required = True
    provider_reference = "e-mail Message-ID <mc.DELIVERY_LOG_ID@sender domain>"
    throttle_pattern = _SMTP_THROTTLE
    settings_type = SmtpSettings
    proofs_to_seeds = True
    tracks = True
    local_sink = LocalSink(name="smtp-sink", module="mc_local.smtp_sink",
                           port_env="MC_SMTP_PORT", default_port=8025, dir_flag="--mail-dir",
                           dir_name="mail", what="e-mails")

    def address_error(self, value: str) -> str | None:
        return None if is_valid_email(value) else "email is not a valid email address"

    def normalize_address(self, value: str) -> str:
        address, value = value, (value or "").strip()
        if not value:
            raise ValueError("address is empty")
        blank = any(ch.isspace() or ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f for ch in value)
        if value.count("@") != 1 or blank or value.startswith("@") or value.endswith("@"):
            raise ValueError(f"address {address!r} is not an email address")
        return value.lower()

    def seed_address_error(self, value: str) -> str | None:
        return None if _SEED_EMAIL.match(value) else f"{value!r} is not an email address"

    def check_template(self, values: Mapping[str, str | None], flagged: Sequence[str],
                       problem: Callable[[str | None, str], None]) -> None:
        if values.get("html") is None and values.get("text") is None and not (
                {"html", "text"} & set(flagged)):
            problem("html", "an email template needs an html and/or a text body")
        sender = values.get("sender")
        if sender is not None:
            _, address = parseaddr(sender)
            if not _SEED_EMAIL.match(address):
                problem("sender", f"{sender!r} is not an address such as "
                                  "'Shop <shop@example.com>'")

    extra_fields = ("attachments",)

    def parse_extra_field(self, name: str, raw: Any, base_dir: Path
                          ) -> tuple[Any, list[tuple[str, str]]]:
        return email_attachments.parse_declaration(raw, base_dir)

    def files_summary(self, extras: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        return list(email_attachments.summary((extras or {}).get("attachments")))

    def message_files(self, extras: Mapping[str, Any], variables: dict[str, Any],
                      address: str, uid: str = "seed"
                      ) -> list[tuple[str, str, bytes, bool]]:
        return [(a.name, a.content_type, a.data, a.alternative)
                for a in email_attachments.render_attachments(
                    extras.get("attachments"), variables, uid=uid, recipient=address)]

    def render(self, parts: Mapping[str, str | None], variables: dict[str, Any],
               options: Mapping[str, Any] | None = None) -> RenderedParts:
        """Previews, proofs and template checks: tracking options render with sample URLs
        (signed with a preview key the tracking server does not accept)."""
        tracked = tracking_options.from_content(options)
        config = preview_config() if tracked.any else None
        message, _headers = render_email(parts.get("subject"), parts.get("html"),
                                         parts.get("text"), variables, tracked, config,
                                         tracking_links.PREVIEW_LOG_ID)
        return {"subject": message.subject, "html": message.html, "text": message.text}

    def render_sent(self, template_row: Mapping[str, Any], variables: dict[str, Any], *,
                    log_id: int, config: Any, track: bool = True,
                    pixel: bool = True) -> tuple[RenderedParts, dict[str, str]]:
        options = tracking_options.from_content(template_row.get("options"))
        if not track:
            options = replace(options, opens=False, clicks=False)
        parts = self.parts_from_row(template_row)
        message, headers = render_email(parts.get("subject"), parts.get("html"),
                                        parts.get("text"), variables, options,
                                        config if options.any else None, log_id,
                                        pixel=pixel, text_marks=not track)
        return {"subject": message.subject, "html": message.html, "text": message.text}, headers

    def proof_content(self, rendered: RenderedParts, label: str,
                      address: str) -> tuple[str | None, str | None, str | None]:
        return rendered.get("subject") or "", rendered.get("html"), rendered.get("text")

    def preview_files(self, rendered: RenderedParts, out_dir: Path, stem: str,
                      header: str, sender: str | None, address: str) -> list[Path] | None:
        return None  # the generic preview is the e-mail one

    def lookup_message(self, rendered: RenderedParts, *, to: str | None,
                       sender: str | None, default_sender: str | None, log_id: int | None,
                       event_ref: str) -> dict[str, Any]:
        sender = sender or default_sender or "Message Center <no-reply@localhost>"
        to = to or ""
        eml = None
        if log_id is not None and to:
            _mid, data = build_email(
                log_id=log_id, sender=sender, recipient=to, subject=rendered["subject"],
                html=rendered["html"], text=rendered["text"],
                headers={"X-Message-Center-Event": event_ref})
            eml = data.decode("utf-8")
        return {"to": to, "sender": sender, "subject": rendered["subject"],
                "html": rendered["html"],
                "text": rendered["text"], "messageId": _message_id(eml), "eml": eml}

    def settings_from_connection(self, conn: Mapping[str, Any]) -> SmtpSettings:
        return smtp_settings_from_connection(conn)

    def transaction_seconds(self, settings: SmtpSettings | None) -> float:
        # No connection: the RFC 5321 defaults (the recovery errs long).
        return (settings or SmtpSettings()).transaction_seconds

    def open_sender(self, settings: SmtpSettings, kind: str) -> EmailSender:
        return EmailSender(settings, kind)


_PREVIEW_KEY = "preview-only-not-accepted-by-the-tracking-server"


def preview_config() -> tracking_tokens.TrackingConfig:
    """Sample tracking URLs (previews, proofs, checks): the real base URL when set, a key
    the tracking server never accepts."""
    try:
        base = tracking_tokens.base_url_from_env()
    except tracking_tokens.TrackingKeyError:
        base = tracking_tokens.DEFAULT_BASE_URL
    return tracking_tokens.TrackingConfig(base, tracking_tokens.Signer([_PREVIEW_KEY]))


def tracking_config(options: tracking_options.TrackingOptions
                    ) -> tracking_tokens.TrackingConfig | None:
    """The process's tracking configuration when the template tracks anything; a missing
    key fails the message (its reason says which setting is missing)."""
    if not options.any:
        return None
    try:
        return tracking_tokens.current()
    except tracking_tokens.TrackingKeyError as exc:
        raise RenderError(f"tracking is on for this template but {exc}") from None


def render_email(subject: str | None, html: str | None, text: str | None,
                 variables: dict[str, Any], options: tracking_options.TrackingOptions,
                 config: tracking_tokens.TrackingConfig | None, log_id: int, *,
                 pixel: bool = True, text_marks: bool = False
                 ) -> tuple[RenderedMessage, dict[str, str]]:
    """One e-mail rendered for delivery log ``log_id``: the template's parts (with
    ``mirror_url`` / ``unsubscribe_url`` when opted in), the HTML rewritten for tracking,
    the links the author marked ``tracked`` in the text part rewritten too (numbered after
    the HTML part's), and the extra headers (List-Unsubscribe). The delivery, the mirror
    page and the tracking server's click check all call this, so they see the same
    message. ``text_marks``: leave the text part's marks in (the click check reads the
    marked links)."""
    if config is not None:
        variables = {**variables, **tracking_links.variables(options, config, log_id)}
    message = render_message(subject, html, text, variables, text_link_marks=True)
    if message.subject is not None and ("\n" in message.subject or "\r" in message.subject):
        raise RenderError("the rendered subject contains a line break")
    plain = message.text
    if plain is not None and not text_marks:
        first = (len(tracking_links.tracked_links(message.html, config.base_url))
                 if config is not None and options.clicks and message.html is not None
                 and LINK_START in plain else 0)
        plain = tracking_links.track_text(plain, options, config, log_id, first=first)
    extra = tracking_links.headers(options, config, log_id)
    if config is None or message.html is None:
        return RenderedMessage(message.subject, message.html, plain), extra
    tracked_html = tracking_links.track_html(message.html, options, config, log_id,
                                             pixel=pixel)
    return RenderedMessage(message.subject, tracked_html, plain), extra


def _message_id(eml: str | None) -> str | None:
    if not eml:
        return None
    for line in eml.split("\r\n"):
        if line.lower().startswith("message-id:"):
            return line.split(":", 1)[1].strip()
        if not line:
            break
    return None


class EmailSender:
    """SMTP connections of one shard, used by its session coroutines (one event loop):
    each session borrows a connection nobody else is using and gives it back, so a shard
    holds at most as many connections as messages it ever had in flight at once."""

    def __init__(self, settings: SmtpSettings, kind: str) -> None:
        self.settings, self.kind = settings, kind
        self._lock = threading.Lock()
        self._idle: list[SmtpSession] = []  # open connections nobody is using
        self._fetchers: dict[int, email_attachments.UrlFetcher] = {}

    def _fetcher(self) -> email_attachments.UrlFetcher:
        """The URL fetcher of the calling worker thread (a ``requests`` session is not
        shared between threads)."""
        key = threading.get_ident()
        with self._lock:
            fetcher = self._fetchers.get(key)
            if fetcher is None:
                fetcher = self._fetchers[key] = email_attachments.UrlFetcher()
            return fetcher

    def relay_gate(self, shards: int) -> RelayGate:
        smtp = self.settings
        return RelayGate(
            f"smtp://{smtp.host}:{smtp.port}",
            max_concurrent=share(smtp.max_sessions, shards),
            per_second=smtp.max_messages_per_second / shards
            if smtp.max_messages_per_second else None)

    async def send_async(self, attempt: Attempt, variables: dict[str, Any],
                         ready: Handing | None = None) -> Outcome:
        """Render, build and send over a borrowed connection; ``ready`` is awaited
        before the final "." (the mark's commit). Rendering runs in the loop (it is
        CPU, as it was under the GIL); a message with the event's own files is built in
        a worker thread (they may be fetched by URL)."""
        if attempt.row.get("event_files"):
            built = await asyncio.get_running_loop().run_in_executor(
                None, self._build, attempt, variables)
        else:
            built = self._build(attempt, variables)
        if isinstance(built, Outcome):
            return built
        message_id, data, envelope = built
        session = self._borrow()
        try:
            return await session.send_bytes(data, message_id, envelope, attempt.address,
                                            ready.wait if ready is not None else None)
        finally:
            self._idle.append(session)

    def _build(self, attempt: Attempt, variables: dict[str, Any]
               ) -> tuple[str, bytes, str] | Outcome:
        """(Message-ID, DATA bytes, envelope sender), or the outcome of a message that
        cannot be built (an event file unavailable)."""
        row = attempt.row
        options = tracking_options.from_content(row.get("options"))
        rendered, extra = render_email(row["subject"], row["html_body"], row["text_body"],
                                       variables, options, tracking_config(options),
                                       attempt.log_id)
        sender = row["sender"] or self.settings.from_email
        envelope = envelope_address(sender)
        event_ref = f"{self.kind}:{to_public(attempt.event_id)}"
        attachments = email_attachments.render_attachments(
            (row.get("extras") or {}).get("attachments"), variables,
            uid=f"mc-{event_ref.replace(':', '-')}@message-center", recipient=attempt.address)
        if row.get("event_files"):  # files the event brought (stored, or fetched by URL)
            try:
                attachments += email_attachments.event_attachments(
                    row, sum(len(a.data) for a in attachments), fetch=self._fetcher())
            except email_attachments.EventFileError as exc:
                return (Outcome.retry(str(exc), attachment_unavailable()) if exc.temporary
                        else Outcome.failed(str(exc)))
        message_id, data = build_email(
            log_id=attempt.log_id, sender=sender, recipient=attempt.address,
            subject=rendered.subject, html=rendered.html, text=rendered.text,
            headers={"X-Message-Center-Event": event_ref, **extra},
            attachments=[(a.name, a.content_type, a.data, a.alternative)
                         for a in attachments],
        )
        return message_id, data, envelope

    def _borrow(self) -> SmtpSession:
        """A connection no other session is using: the last one given back (still
        connected), or a new one."""
        return self._idle.pop() if self._idle else SmtpSession(self.settings)

    async def aclose(self) -> None:
        """QUIT every connection (in the loop the sessions ran on)."""
        idle, self._idle = self._idle, []
        for session in idle:
            await session.close()

    def reconcile(self, attempt: Attempt) -> Outcome | None:
        return None  # SMTP has no such question

    def close(self) -> None:
        """Close the URL fetchers (the connections are closed by :meth:`aclose`, in
        their loop: :meth:`Channels.close <message_center.delivery.channels.Channels.close>`)."""
        with self._lock:
            fetchers, self._fetchers = list(self._fetchers.values()), {}
        for fetcher in fetchers:
            fetcher.close()


def share(limit: int | None, shards: int) -> int | None:
    """A shard task's share of a relay's concurrency limit (at least one)."""
    return None if limit is None else max(1, limit // max(1, shards))


CHANNEL = EmailChannel()
