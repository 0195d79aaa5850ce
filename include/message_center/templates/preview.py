"""Previews and proofs: a template rendered for its seeds, as files or as real e-mails.

Both use :func:`~message_center.templates.validation.render_seed`, the delivery's own
rendering, so what a preview or a proof shows is what recipients get.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import make_msgid
from pathlib import Path

from message_center.delivery.outcome import Outcome
from message_center.delivery.smtp import (
    DEFAULT_FROM,
    SmtpSender,
    SmtpSettings,
    build_email,
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
    _, data = proof_message(rendered, seed.address, PREVIEW_SENDER, "")
    path.write_bytes(data.replace(b"\r\n", b"\n"))  # a file for people: local line ends
    written.append(path)
    return written


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9@.+_-]", "_", value)


@dataclass(frozen=True)
class ProofResult:
    address: str
    seed: str
    outcome: Outcome

    @property
    def sent(self) -> bool:
        return self.outcome.status == "sent"


def proof_message(rendered: RenderedSeed, to: str, default_sender: str,
                  prefix: str) -> tuple[str, bytes]:
    """The proof built like the real message (:func:`build_email`, the delivery's
    builder), with a marked subject and its own Message-ID: (Message-ID, SMTP bytes)."""
    template = rendered.template
    sender = template.sender or default_sender
    headers = {"X-MC-Template": template.internal_name, "X-MC-Seed": rendered.seed.address}
    if rendered.sms is not None:
        subject, html = f"{prefix}SMS {template.label}", None
        text: str | None = f"SMS to {rendered.seed.address}:\n\n{rendered.sms}"
    else:
        message = rendered.message
        assert message is not None
        subject, html, text = f"{prefix}{message.subject or ''}", message.html, message.text
    return build_email(log_id=0, sender=sender, recipient=to, subject=subject, html=html,
                       text=text, headers=headers,
                       message_id_override=make_msgid(domain="message-center.local"))


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
                mid, data = proof_message(rendered, address, settings.from_email, prefix)
                envelope = envelope_address(rendered.template.sender or settings.from_email)
                outcome = sender.send_bytes(data, mid, envelope, address)
                results.append(ProofResult(address, seed.address, outcome))
    return results
