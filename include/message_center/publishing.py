"""Execution-side publishing: what the processing links events to.

A publication is a row of ``published_template`` per (internal name, version); the
link step picks, per (event type, channel), the highest active version. Publishing a
set of templates to one execution database happens in one transaction (the caller's),
so an instance never sees half a publication: :func:`sync_instance` makes an instance's
active templates exactly the desired ones (what the control database says is
published, :func:`message_center.templates.desired_state`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
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
    #: The parts of a channel that has no columns of its own (``published_template.parts``).
    parts: Mapping[str, Any] | None = None
    #: The ctx fields the template declares (``{name: {"type", "required"}}``); the push
    #: API refuses events whose ctx does not fit. None: not declared, not checked.
    ctx_schema: Mapping[str, Any] | None = None
    #: What the template opts into (``tracking``, ``mirror_page``, ``unsubscribe``:
    #: :mod:`message_center.tracking.options`); None: nothing.
    options: Mapping[str, Any] | None = None
    #: Recycling after a failed delivery (``{"channel", "template", "after"}``), read by
    #: :mod:`message_center.state` when the delivery ends. None: not recycled.
    on_failure: Mapping[str, Any] | None = None
    #: The channel's structured fields (e-mail ``attachments``), handed to its sender.
    extras: Mapping[str, Any] | None = None


def publish(conn: Connection, template: TemplateContent) -> None:
    """Make ``template`` the active version of its internal name (idempotent)."""
    values = asdict(template)
    values["ctx_schema"] = (None if template.ctx_schema is None
                            else json.dumps(template.ctx_schema, sort_keys=True))
    values["parts"] = None if template.parts is None else json.dumps(dict(template.parts))
    values["options"] = (None if not template.options
                         else json.dumps(dict(template.options), sort_keys=True))
    values["on_failure"] = (None if template.on_failure is None
                            else json.dumps(dict(template.on_failure), sort_keys=True))
    values["extras"] = (None if template.extras is None
                        else json.dumps(dict(template.extras), sort_keys=True))
    conn.execute(
        text("UPDATE published_template SET active = false "
             "WHERE internal_name = :internal_name AND version <> :version AND active"),
        values,
    )
    conn.execute(text("""
        INSERT INTO published_template (internal_name, label, event_type, channel, version,
            language, sender, subject, html_body, text_body, sms_body, parts, ctx_schema,
            options, on_failure, extras, active)
        VALUES (:internal_name, :label, :event_type, :channel, :version, :language, :sender,
            :subject, :html_body, :text_body, :sms_body, CAST(:parts AS jsonb),
            CAST(:ctx_schema AS jsonb), CAST(:options AS jsonb), CAST(:on_failure AS jsonb),
            CAST(:extras AS jsonb), true)
        ON CONFLICT (internal_name, version) DO UPDATE SET
            label = EXCLUDED.label, event_type = EXCLUDED.event_type,
            channel = EXCLUDED.channel, language = EXCLUDED.language, sender = EXCLUDED.sender,
            subject = EXCLUDED.subject, html_body = EXCLUDED.html_body,
            text_body = EXCLUDED.text_body, sms_body = EXCLUDED.sms_body,
            parts = EXCLUDED.parts, ctx_schema = EXCLUDED.ctx_schema,
            options = EXCLUDED.options, on_failure = EXCLUDED.on_failure,
            extras = EXCLUDED.extras, active = true
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
               html_body, text_body, sms_body, parts, language, ctx_schema, options,
               on_failure, extras
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


# --- the ctx declarations the push API checks against ---------------------------------
@dataclass(frozen=True)
class PublishedSchema:
    """The ctx declaration of one active template, as the push API checks it."""

    template: str  # "orderConfirmed v2"
    schema: Mapping[str, Any] | None
    #: ``attachments.from_event`` (None: the template takes no files from the event).
    from_event: Mapping[str, Any] | None = None
    #: The message's attachment budget left once the template's static files are in.
    file_bytes_left: int = 0


@dataclass(frozen=True)
class PublishedSchemas:
    """What the link step would pick for an event, reduced to the ctx declarations: a
    template in the event's language wins, else the latest for (event type, channel)."""

    by_language: Mapping[tuple[str, str, str], PublishedSchema]
    latest: Mapping[tuple[str, str], PublishedSchema]

    def for_event(self, event_type: str, channel: str,
                  language: str | None) -> PublishedSchema | None:
        if language is not None:
            found = self.by_language.get((event_type, channel, language))
            if found is not None:
                return found
        return self.latest.get((event_type, channel))

    @property
    def any_declared(self) -> bool:
        return any(item.schema for item in self.latest.values()) or any(
            item.schema for item in self.by_language.values())


def published_schemas(conn: Connection) -> PublishedSchemas:
    """The active templates' ctx declarations, picked like the link step picks templates
    (``processing.queue``: highest ``id`` wins, a language match first)."""
    rows = conn.execute(text("""
        SELECT internal_name, version, event_type, channel, language, ctx_schema,
               extras->'attachments'->'from_event' AS from_event,
               CAST(extras->'attachments'->>'max_message_bytes' AS bigint)
               - (SELECT coalesce(sum(CAST(f->>'size' AS bigint)), 0)
                  FROM jsonb_array_elements(CASE jsonb_typeof(extras->'attachments'->'files')
                      WHEN 'array' THEN extras->'attachments'->'files' ELSE '[]' END) AS f
                 ) AS file_bytes_left
        FROM published_template WHERE active ORDER BY id
    """)).all()
    by_language: dict[tuple[str, str, str], PublishedSchema] = {}
    latest: dict[tuple[str, str], PublishedSchema] = {}
    for row in rows:  # ascending id: the last one written wins
        item = PublishedSchema(f"{row.internal_name} v{row.version}", row.ctx_schema,
                               row.from_event, int(row.file_bytes_left or 0))
        latest[(row.event_type, row.channel)] = item
        if row.language is not None:
            by_language[(row.event_type, row.channel, row.language)] = item
    return PublishedSchemas(by_language, latest)


CTX_SCHEMA_TTL_SECONDS = 5.0
"""How long the push API trusts the ctx declarations it read: a publication is enforced
at push time within this many seconds (the link step always uses the newest). The API
server's ``MC_CTX_SCHEMA_TTL_SECONDS`` overrides it (``0``: read them on every push)."""


def _ttl_from_env() -> float:
    raw = os.environ.get("MC_CTX_SCHEMA_TTL_SECONDS", "").strip()
    if not raw:
        return CTX_SCHEMA_TTL_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"MC_CTX_SCHEMA_TTL_SECONDS must be a number of seconds; "
                         f"got {raw!r}") from None
    if not 0 <= value <= 3600:
        raise ValueError(f"MC_CTX_SCHEMA_TTL_SECONDS must be 0 to 3600; got {raw!r}")
    return value


class SchemaCache:
    """:func:`published_schemas` per database, kept ``ttl`` seconds (thread-safe): pushing
    reads the declarations once per few seconds, not once per request."""

    def __init__(self, ttl: float = CTX_SCHEMA_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, PublishedSchemas]] = {}

    def get(self, key: str, conn: Connection) -> PublishedSchemas:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        schemas = published_schemas(conn)
        with self._lock:
            self._entries[key] = (now, schemas)
        return schemas

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


schema_cache = SchemaCache(_ttl_from_env())
"""The process-wide cache the push path uses (``schema_cache.clear()`` after publishing in
a test that pushes at once)."""
