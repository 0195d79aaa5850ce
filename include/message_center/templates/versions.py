"""Template versions on the control database, and a whole publication by database URLs.

The control database keeps every version of every template (``template_version``) and
which templates are published (``template``); :func:`plan_publication` applies a
publishing request there, :func:`desired_state` says what every execution instance should
have active, and :mod:`message_center.publishing` brings one instance in line with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from message_center import audit
from message_center import channel as channels
from message_center.db import engine_for, first_line, with_connect_timeout
from message_center.publishing import PUBLISH_LOCK_KEY, SyncResult, TemplateContent, sync_instance
from message_center.templates.model import MessageTemplate, TemplateSet, content_hash
from message_center.templates.validation import load_templates
from message_center.tracking import options as tracking_options


def published_content(content: Mapping[str, Any], version: int) -> TemplateContent:
    """A stored version's content as the execution side's publishing takes it."""
    spec = channels.get(content["channel"])
    return TemplateContent(
        internal_name=content["internal_name"], label=content["label"],
        event_type=content["event_type"], channel=content["channel"], version=version,
        sender=content.get("sender"), language=content.get("language"),
        ctx_schema=content.get("ctx"), on_failure=content.get("on_failure"),
        options=tracking_options.from_content(content).as_content() or None,
        extras={name: content[name] for name in spec.extra_fields
                if content.get(name) is not None} or None,
        # Parts in the channel's own columns, else in the generic ``parts``.
        **{column: content.get(part) for part, column in spec.template_columns.items()},
        parts=None if spec.template_columns else {
            part: content.get(part) for part in spec.template_parts},
    )


@dataclass
class PublicationPlan:
    """What one publishing run changed on the control database."""

    stored: list[tuple[str, int]] = field(default_factory=list)   # new versions
    published: list[str] = field(default_factory=list)           # marked published
    unpublished: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)   # same (event type, channel) as a newer
    orphaned: list[str] = field(default_factory=list)   # published, but no file any more

    @property
    def changed(self) -> bool:
        return bool(self.stored or self.published or self.unpublished or self.replaced)

    def summary(self) -> str:
        parts = [f"new versions: {', '.join(f'{n} v{v}' for n, v in self.stored) or 'none'}"]
        if self.published:
            parts.append(f"published: {', '.join(self.published)}")
        if self.unpublished:
            parts.append(f"unpublished: {', '.join(self.unpublished)}")
        if self.replaced:
            parts.append(f"replaced (same event type and channel): {', '.join(self.replaced)}")
        if self.orphaned:
            parts.append("published without a file in the repository (unpublish them with the "
                         f"unpublish param): {', '.join(self.orphaned)}")
        return "; ".join(parts)


def store_version(conn: Connection, template: MessageTemplate) -> tuple[int, bool]:
    """Store ``template`` as a new version when its content differs from the current one.
    Returns (current version, whether it is new). Locks the template row."""
    content = template.content()
    digest = content_hash(content)
    conn.execute(text("""
        INSERT INTO template (internal_name, label, event_type, channel)
        VALUES (:name, :label, :event_type, :channel) ON CONFLICT (internal_name) DO NOTHING
    """), {"name": template.internal_name, "label": template.label,
           "event_type": template.event_type, "channel": template.channel})
    row = conn.execute(text("""
        SELECT t.current_version, v.content_hash FROM template t
        LEFT JOIN template_version v
               ON v.internal_name = t.internal_name AND v.version = t.current_version
        WHERE t.internal_name = :name FOR UPDATE OF t
    """), {"name": template.internal_name}).one()
    if row.content_hash == digest:
        return int(row.current_version), False
    version = int(row.current_version) + 1
    conn.execute(text("""
        INSERT INTO template_version (internal_name, version, content_hash, content)
        VALUES (:name, :version, :hash, CAST(:content AS jsonb))
    """), {"name": template.internal_name, "version": version, "hash": digest,
           "content": json.dumps(content)})
    conn.execute(text("""
        UPDATE template SET current_version = :version, label = :label,
               event_type = :event_type, channel = :channel, updated = now()
        WHERE internal_name = :name
    """), {"name": template.internal_name, "version": version, "label": template.label,
           "event_type": template.event_type, "channel": template.channel})
    return version, True


def mark_published(conn: Connection, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Mark templates published; any other published template for the same (event type,
    channel) stops being published. Returns (newly published, replaced)."""
    published: list[str] = []
    replaced: list[str] = []
    for name in sorted(set(names)):
        rows = conn.execute(text("""
            UPDATE template o SET published = false, updated = now()
            FROM template t
            WHERE t.internal_name = :name AND o.internal_name <> t.internal_name
              AND o.event_type = t.event_type AND o.channel = t.channel AND o.published
            RETURNING o.internal_name
        """), {"name": name}).scalars().all()
        replaced.extend(rows)
        if conn.execute(text(
                "UPDATE template SET published = true, updated = now() "
                "WHERE internal_name = :name AND NOT published AND current_version > 0"),
                {"name": name}).rowcount:
            published.append(name)
    return published, sorted(set(replaced))


def mark_unpublished(conn: Connection, names: Iterable[str]) -> list[str]:
    rows = conn.execute(text(
        "UPDATE template SET published = false, updated = now() "
        "WHERE internal_name = ANY(:names) AND published RETURNING internal_name"),
        {"names": sorted(set(names))}).scalars().all()
    return sorted(rows)


def plan_publication(conn: Connection, templates: TemplateSet,
                     names: Sequence[str] | None = None,
                     unpublish_names: Sequence[str] = (),
                     only_changed: bool = False, audited_by: str | None = None,
                     audit_details: Mapping[str, Any] | None = None) -> PublicationPlan:
    """Apply a publishing request to the control database (the caller's transaction).

    - ``only_changed`` (scheduled runs, ``mc setup``): store new versions of every file
      and publish those whose content changed (a new file is a change).
    - otherwise (a manual run): store and publish the templates ``names`` (default: every
      file, unless ``unpublish_names`` is given, then none), changed or not.
    - ``unpublish_names`` stop being published (they need not have a file any more).
    - ``audited_by``: a person asked for it (a manual DAG run, ``mc templates
      publish``): the audit trail gets a row naming them, in the same transaction.
    Raises ValueError naming a bad name; TemplateValidationError when files have problems.
    """
    templates.raise_for_problems()
    by_name = templates.by_name()
    names = list(names or [])
    unpublish_names = list(unpublish_names or [])
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"no template file for {', '.join(unknown)} "
                         f"(templates: {', '.join(sorted(by_name))})")
    both = sorted(set(names) & set(unpublish_names))
    if both:
        raise ValueError(f"cannot publish and unpublish {', '.join(both)} in one run")
    if unpublish_names:
        known = set(conn.execute(text(
            "SELECT internal_name FROM template WHERE internal_name = ANY(:names)"),
            {"names": unpublish_names}).scalars())
        missing = [name for name in unpublish_names if name not in known | set(by_name)]
        if missing:
            raise ValueError(f"cannot unpublish {', '.join(missing)}: no such template")
    plan = PublicationPlan()
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PUBLISH_LOCK_KEY})
    if only_changed:
        selected = [t for t in templates.templates if t.internal_name not in unpublish_names]
    elif names:
        selected = [by_name[name] for name in names]
    elif unpublish_names:
        selected = []
    else:
        selected = list(templates.templates)
    to_publish = []
    for template in selected:
        version, new = store_version(conn, template)
        if new:
            plan.stored.append((template.internal_name, version))
        if new or not only_changed:
            to_publish.append(template.internal_name)
    plan.published, plan.replaced = mark_published(conn, to_publish)
    plan.unpublished = mark_unpublished(conn, unpublish_names)
    plan.orphaned = sorted(set(conn.execute(text(
        "SELECT internal_name FROM template WHERE published")).scalars()) - set(by_name))
    if audited_by is not None:
        audit.record(conn, actor=audited_by, action=audit.PUBLISH,
                     target=", ".join(names or unpublish_names) or "every template",
                     details={"unpublish": unpublish_names, "summary": plan.summary(),
                              **dict(audit_details or {})})
    return plan


def desired_state(conn: Connection) -> list[TemplateContent]:
    """What every execution instance should have active: the current version of every
    published template on the control database."""
    rows = conn.execute(text("""
        SELECT v.version, v.content FROM template t
        JOIN template_version v
          ON v.internal_name = t.internal_name AND v.version = t.current_version
        WHERE t.published ORDER BY t.internal_name
    """)).all()
    return [published_content(row.content, int(row.version)) for row in rows]


@dataclass
class PublishReport:
    """What :func:`publish_repository` did: the control side, then each instance."""

    plan: PublicationPlan
    results: dict[str, SyncResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # instance -> why not published


def publish_repository(control_url: str, execution_urls: Mapping[str, str],
                       directory: Path | str, only_changed: bool = True,
                       names: Sequence[str] | None = None,
                       unpublish_names: Sequence[str] = (),
                       audited_by: str | None = None) -> PublishReport:
    """The whole publication of the templates in ``directory`` by database URLs (``mc
    setup``, ``mc templates publish``): the DAG does the same steps, one task per
    execution instance. An instance that cannot be reached is reported in ``errors`` and
    does not stop the others."""
    template_set = load_templates(directory)
    with engine_for(control_url).begin() as conn:
        plan = plan_publication(conn, template_set, names=names,
                                unpublish_names=unpublish_names, only_changed=only_changed,
                                audited_by=audited_by)
    with engine_for(control_url).connect() as conn:
        desired = desired_state(conn)
    report = PublishReport(plan)
    for label, url in execution_urls.items():
        try:
            with engine_for(with_connect_timeout(url)).begin() as conn:
                report.results[label] = sync_instance(conn, desired)
        except SQLAlchemyError as exc:
            report.errors[label] = first_line(exc)
    return report
