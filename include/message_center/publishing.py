"""Execution-side publishing: what the processing links events to.

A publication is a row of ``published_template`` per (internal name, version); the
link step picks, per (event type, channel), the highest active version. Publishing a
set of templates to one execution database happens in one transaction (the caller's),
so an instance never sees half a publication: :func:`sync_instance` makes an instance's
active templates exactly the desired ones (what the control database says is
published, :func:`message_center.templates.desired_state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, text

#: Serialises publications to one database (the DAG, ``mc setup``, the CLI).
PUBLISH_LOCK_KEY = 0x6D635F74706C  # "mc_tpl"


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


@dataclass
class SyncResult:
    """What one execution instance got in a publishing run."""

    published: list[tuple[str, int]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.published or self.removed)

    def summary(self) -> str:
        published = ", ".join(f"{name} v{version}" for name, version in self.published)
        return (f"published: {published or 'none'}; removed: "
                f"{', '.join(self.removed) or 'none'}; unchanged: {self.unchanged}")

    def as_dict(self) -> dict[str, Any]:
        return {"published": [f"{n} v{v}" for n, v in self.published],
                "removed": self.removed, "unchanged": self.unchanged}


def active_templates(conn: Connection) -> dict[str, TemplateContent]:
    """The active published templates of an execution database, by internal name."""
    rows = conn.execute(text("""
        SELECT internal_name, label, event_type, channel, version, sender, subject,
               html_body, text_body, sms_body, language
        FROM published_template WHERE active ORDER BY internal_name, version
    """)).mappings().all()
    return {row["internal_name"]: TemplateContent(**dict(row)) for row in rows}


def sync_instance(conn: Connection, desired: Sequence[TemplateContent]) -> SyncResult:
    """Make the execution database's active templates exactly ``desired``: publish what
    differs, deactivate what is no longer published. Run it in one transaction so the
    instance switches at once (the link step never sees a half publication)."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PUBLISH_LOCK_KEY})
    current = active_templates(conn)
    wanted = {template.internal_name: template for template in desired}
    result = SyncResult()
    for name in sorted(set(current) - set(wanted)):
        unpublish(conn, name)
        result.removed.append(name)
    for name, template in sorted(wanted.items()):
        if current.get(name) == template:
            result.unchanged += 1
            continue
        publish(conn, template)
        result.published.append((name, template.version))
    return result


def in_sync(conn: Connection, desired: Sequence[TemplateContent]) -> bool:
    return active_templates(conn) == {template.internal_name: template for template in desired}
