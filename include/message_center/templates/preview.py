"""Previews and proofs: a template rendered for its seeds, as files or as real e-mails.

Both use :func:`~message_center.templates.validation.render_seed`, the delivery's own
rendering, so what a preview or a proof shows is what recipients get.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from message_center.delivery.outcome import Outcome
from message_center.delivery.smtp import (
    DEFAULT_FROM,
    SmtpSender,
    SmtpSettings,
    compose_email,
    envelope_address,
)
from message_center.templates.model import MessageTemplate, Seed
from message_center.templates.validation import RenderedSeed, render_seed


def pick_seed(template: MessageTemplate, which: str | int | None) -> Seed:
    """A seed by position (0-based) or address; the first one by default."""
    if which is None:
        return template.seeds[0]
    if isinstance(which, int) or str(which).isdigit():
        index = int(which)
        if 0 <= index < len(template.seeds):
            return template.seeds[index]
    for seed in template.seeds:
        if seed.address.lower() == str(which).lower():
            return seed
    known = ", ".join(f"{i}: {s.address}" for i, s in enumerate(template.seeds))
    raise KeyError(f"{template.internal_name} has no seed {which!r} (seeds: {known})")


GSM_7BIT = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_7BIT_EXTENDED = set("^{}\\[~]|€\f")


def sms_segments(body: str) -> tuple[str, int]:
    """(encoding, number of SMS parts) the text takes: GSM 7-bit or UCS-2."""
    if all(char in GSM_7BIT or char in GSM_7BIT_EXTENDED for char in body):
        units = sum(2 if char in GSM_7BIT_EXTENDED else 1 for char in body)
        return "GSM-7", 1 if units <= 160 else -(-units // 153)
    units = len(body.encode("utf-16-le")) // 2
    return "UCS-2", 1 if units <= 70 else -(-units // 67)


PREVIEW_SENDER = DEFAULT_FROM


def write_preview(template: MessageTemplate, seed: Seed, out_dir: Path) -> list[Path]:
    """Render ``template`` for ``seed`` into files a person opens: HTML, text, .eml (email)
    or the SMS text with its length (SMS). Returns the files written."""
    rendered = render_seed(template, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{template.internal_name}.{_safe(seed.address)}"
    written: list[Path] = []
    header = (f"Template: {template.internal_name} ({template.label}), {template.channel}, "
              f"event type {template.event_type}\nSeed: {seed.address}\n")
    if rendered.sms is not None:
        encoding, parts = sms_segments(rendered.sms)
        path = out_dir / f"{stem}.sms.txt"
        path.write_text(f"{header}Length: {len(rendered.sms)} characters, {encoding}, "
                        f"{parts} SMS part(s)\n\n{rendered.sms}", encoding="utf-8")
        return [path]
    message = rendered.message
    assert message is not None
    if message.html is not None:
        path = out_dir / f"{stem}.html"
        path.write_text(message.html, encoding="utf-8")
        written.append(path)
    path = out_dir / f"{stem}.txt"
    path.write_text(
        f"{header}From: {template.sender or PREVIEW_SENDER}\nTo: {seed.address}\n"
        f"Subject: {message.subject}\n\n"
        + (message.text if message.text is not None else "(no text body)\n"),
        encoding="utf-8")
    written.append(path)
    path = out_dir / f"{stem}.eml"
    path.write_bytes(proof_message(rendered, seed.address, PREVIEW_SENDER, "").as_bytes(
        policy=email_policy.default))
    written.append(path)
    return written


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9@.+_-]", "_", value)


def smtp_settings_from_connection(conn: Mapping[str, Any]) -> SmtpSettings:
    """SMTP settings from an Airflow SMTP connection given as JSON (``AIRFLOW_CONN_...``
    or ``airflow connections get -o json``), read the way Airflow's SMTP hook reads it:
    SSL unless ``disable_ssl``, else STARTTLS unless ``disable_tls``."""
    extra = conn.get("extra") or conn.get("extra_dejson") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    use_ssl = not _truthy(extra.get("disable_ssl", False))
    starttls = not use_ssl and not _truthy(extra.get("disable_tls", False))
    port = conn.get("port") or (465 if use_ssl else 587 if starttls else 25)
    return SmtpSettings(host=conn.get("host") or "127.0.0.1", port=int(port),
                        login=conn.get("login") or None, password=conn.get("password") or None,
                        use_ssl=use_ssl, starttls=starttls,
                        from_email=extra.get("from_email") or DEFAULT_FROM,
                        timeout=float(extra.get("timeout", 30)))


def _truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ProofResult:
    address: str
    seed: str
    outcome: Outcome

    @property
    def sent(self) -> bool:
        return self.outcome.status == "sent"


def proof_message(rendered: RenderedSeed, to: str, default_sender: str,
                  prefix: str) -> EmailMessage:
    """The proof as the delivery composes the real message, with a marked subject."""
    template = rendered.template
    sender = template.sender or default_sender
    if rendered.sms is not None:
        msg = compose_email(log_id=0, sender=sender, recipient=to,
                            subject=f"{prefix}SMS {template.label}", html=None,
                            text=f"SMS to {rendered.seed.address}:\n\n{rendered.sms}")
    else:
        message = rendered.message
        assert message is not None
        msg = compose_email(log_id=0, sender=sender, recipient=to,
                            subject=f"{prefix}{message.subject or ''}", html=message.html,
                            text=message.text)
    del msg["Message-ID"]
    msg["Message-ID"] = make_msgid(domain="message-center.local")
    msg["X-MC-Template"] = template.internal_name
    msg["X-MC-Seed"] = rendered.seed.address
    # SMTP wants CRLF line ends; smtplib's data() does not convert bytes (bare LF makes
    # any body over 1000 bytes one "line too long").
    msg.policy = email_policy.SMTP
    return msg


def send_proofs(template: MessageTemplate, settings: SmtpSettings,
                seeds: Sequence[Seed] | None = None,
                recipients: Sequence[str] | None = None) -> list[ProofResult]:
    """Send the proof of ``template`` rendered for each seed to that seed's address (or to
    ``recipients`` instead), through the delivery's SMTP sender. SMS templates need
    ``recipients``: their proof is the SMS text by email."""
    seeds = list(seeds or template.seeds)
    if template.channel == "sms" and not recipients:
        raise ValueError(f"{template.internal_name} is an SMS template: its seeds are phone "
                         "numbers; give email addresses to receive the SMS text (--to)")
    results = []
    with SmtpSender(settings) as sender:
        for index, seed in enumerate(seeds, start=1):
            rendered = render_seed(template, seed)
            prefix = f"[Proof {index}/{len(seeds)}] "
            for address in recipients or [seed.address]:
                msg = proof_message(rendered, address, settings.from_email, prefix)
                outcome = sender.send(msg, envelope_address(msg["From"]), address)
                results.append(ProofResult(address, seed.address, outcome))
    return results
