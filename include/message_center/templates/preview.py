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

from message_center import channel as channels
from message_center.delivery.outcome import Outcome
from message_center.delivery.smtp import (
    DEFAULT_FROM,
    SmtpSender,
    SmtpSettings,
    build_email,
    envelope_address,
)
from message_center.rendering import event_variables
from message_center.templates.model import MessageTemplate, Seed
from message_center.templates.validation import RenderedSeed, render_seed, seed_event


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
    own = channels.get(template.channel).preview_files(
        rendered.parts, out_dir, stem, header, template.sender, seed.address)
    if own is not None:
        return own
    subject, html, text = channels.get(template.channel).proof_content(
        rendered.parts, template.label, seed.address)
    if html is not None:
        path = out_dir / f"{stem}.html"
        path.write_text(html, encoding="utf-8")
        written.append(path)
    path = out_dir / f"{stem}.txt"
    path.write_text(
        f"{header}From: {template.sender or PREVIEW_SENDER}\nTo: {seed.address}\n"
        f"Subject: {subject}\n\n" + (text if text is not None else "(no text body)\n"),
        encoding="utf-8")
    written.append(path)
    for name, _kind, content, _alternative in _files(rendered):  # attachments, as sent
        path = out_dir / f"{stem}.{_safe(name)}"
        path.write_bytes(content)
        written.append(path)
    path = out_dir / f"{stem}.eml"
    _, data = proof_message(rendered, seed.address, PREVIEW_SENDER, "")
    path.write_bytes(data.replace(b"\r\n", b"\n"))  # a file for people: local line ends
    written.append(path)
    return written


def _files(rendered: RenderedSeed) -> list[tuple[str, str, bytes, bool]]:
    """The files the message carries (e-mail attachments), rendered for the seed."""
    template, seed = rendered.template, rendered.seed
    if not template.extras:
        return []
    return channels.get(template.channel).message_files(
        template.extras, event_variables(seed_event(template, seed)), seed.address)


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
    subject, html, text = channels.get(template.channel).proof_content(
        rendered.parts, template.label, rendered.seed.address)
    subject = f"{prefix}{subject or ''}"
    return build_email(log_id=0, sender=sender, recipient=to, subject=subject, html=html,
                       text=text, headers=headers,
                       message_id_override=make_msgid(domain="message-center.local"),
                       attachments=_files(rendered))


def send_proofs(template: MessageTemplate, settings: SmtpSettings,
                seeds: Sequence[Seed] | None = None,
                recipients: Sequence[str] | None = None) -> list[ProofResult]:
    """Send the proof of ``template`` rendered for each seed to that seed's address (or to
    ``recipients`` instead), through the delivery's SMTP sender. Templates of a channel
    whose seeds are not e-mail addresses (SMS) need ``recipients``: their proof is the
    message by email."""
    seeds = list(seeds or template.seeds)
    spec = channels.get(template.channel)
    if not spec.proofs_to_seeds and not recipients:
        raise ValueError(f"{template.internal_name} is {spec.template_noun}: its seeds are "
                         f"not e-mail addresses; give email addresses to receive "
                         f"the {spec.label} text (--to)")
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
