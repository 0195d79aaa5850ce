"""Helpers for the template tests (domain, CLI and DAG side): files to write, what the
execution databases have active, a publication by URLs."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from message_center import templates as tpl

SMS_TEMPLATE = """\
internal_name: deliveryUpdate
label: Delivery update
event_type: DELIVERY_UPDATE
channel: sms
sms: "Hi {{ firstName }}, parcel {{ parcel }} arrives today."
seeds:
  - address: "+33611111111"
    ctx: {firstName: Ann, parcel: P-1}
"""


def write(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(body, encoding="utf-8")
    return path


def problems_of(directory: Path) -> list[str]:
    return [str(problem) for problem in tpl.load_templates(directory).problems]


def control_versions(control_db) -> list[tuple[str, int]]:
    with control_db.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT internal_name, version FROM template_version ORDER BY 1, 2"))]


def active_rows(engine) -> list[tuple[str, int, str, str]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT internal_name, version, event_type, channel FROM published_template "
            "WHERE active ORDER BY 1"))]


def linked_template(engine, event_type: str, channel: str):
    """What the link step picks: the highest active version for (event type, channel)."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT internal_name, version, subject, sms_body FROM published_template "
            "WHERE active AND event_type = :t AND channel = :c ORDER BY version DESC LIMIT 1"),
            {"t": event_type, "c": channel}).one_or_none()


def publish(urls, directory, **kwargs) -> tpl.PublishReport:
    return tpl.publish_repository(urls["control"], urls["executions"], directory=directory,
                                  **kwargs)
