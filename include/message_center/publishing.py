"""Execution-side publishing: what the processing links events to.

A publication is a row of ``published_template`` per (internal name, version); the
link step picks, per (event type, channel), the highest active version. Publishing a
set of templates to one execution database happens in one transaction (the caller's),
so an instance never sees half a publication.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class TemplateContent:
    internal_name: str
    label: str
    event_type: str
    channel: str
    version: int
    sender: str | None = None
    subject: str | None = None
    html_body: str | None = None
    text_body: str | None = None
    sms_body: str | None = None
    language: str | None = None


def publish(conn: Connection, template: TemplateContent) -> None:
    """Make ``template`` the active version of its internal name (idempotent)."""
    values = asdict(template)
    conn.execute(
        text("UPDATE published_template SET active = false "
             "WHERE internal_name = :internal_name AND version <> :version AND active"),
        values,
    )
    conn.execute(text("""
        INSERT INTO published_template (internal_name, label, event_type, channel, version,
            language, sender, subject, html_body, text_body, sms_body, active)
        VALUES (:internal_name, :label, :event_type, :channel, :version, :language, :sender,
            :subject, :html_body, :text_body, :sms_body, true)
        ON CONFLICT (internal_name, version) DO UPDATE SET
            label = EXCLUDED.label, event_type = EXCLUDED.event_type,
            channel = EXCLUDED.channel, language = EXCLUDED.language, sender = EXCLUDED.sender,
            subject = EXCLUDED.subject, html_body = EXCLUDED.html_body,
            text_body = EXCLUDED.text_body, sms_body = EXCLUDED.sms_body, active = true
    """), values)


def unpublish(conn: Connection, internal_name: str) -> int:
    """Deactivate every version of ``internal_name``; returns how many were active."""
    result = conn.execute(
        text("UPDATE published_template SET active = false "
             "WHERE internal_name = :name AND active"),
        {"name": internal_name},
    )
    return result.rowcount
