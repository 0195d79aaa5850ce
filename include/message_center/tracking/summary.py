"""What tracking knows of one event: its opens and clicks (people and machines apart),
the first of each, the links clicked, mirror page views, an unsubscribe. Read from the
execution instance's ``tracking_log``, or from the control archive's
``archived_tracking_log`` (the event lookup of an archived event)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

_SUMMARY = """
    SELECT count(*) FILTER (WHERE kind = 'open' AND NOT automated) AS opens,
           count(*) FILTER (WHERE kind = 'click' AND NOT automated) AS clicks,
           count(*) FILTER (WHERE kind = 'open' AND automated) AS automated_opens,
           count(*) FILTER (WHERE kind = 'click' AND automated) AS automated_clicks,
           count(*) FILTER (WHERE kind = 'mirror') AS mirror_views,
           bool_or(kind = 'unsubscribe') AS unsubscribed,
           min(at) FILTER (WHERE kind = 'open' AND NOT automated) AS first_open,
           min(at) FILTER (WHERE kind = 'click' AND NOT automated) AS first_click,
           max(at) AS last_hit
    FROM {table} WHERE {where}
"""
_LINKS = """
    SELECT link, url, count(*) FILTER (WHERE NOT automated) AS clicks,
           count(*) FILTER (WHERE automated) AS automated,
           min(at) FILTER (WHERE NOT automated) AS first_click
    FROM {table} WHERE {where} AND kind = 'click' GROUP BY link, url ORDER BY link
"""


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_tracking(conn: Connection, event_kind: str, event_id: int, *,
                   cell_id: int | None = None) -> dict[str, Any]:
    """``{opens, clicks, automatedOpens, automatedClicks, firstOpen, firstClick, ...}`` of
    one event; ``cell_id``: read the control archive (``archived_tracking_log``)."""
    table = "tracking_log" if cell_id is None else "archived_tracking_log"
    where = "event_kind = :kind AND event_id = :id"
    params: dict[str, Any] = {"kind": event_kind, "id": event_id}
    if cell_id is not None:
        where += " AND cell_id = :cell"
        params["cell"] = cell_id
    row = conn.execute(text(_SUMMARY.format(table=table, where=where)), params).mappings().one()
    links = conn.execute(text(_LINKS.format(table=table, where=where)), params).mappings().all()
    return {
        "opens": int(row["opens"]), "clicks": int(row["clicks"]),
        "automatedOpens": int(row["automated_opens"]),
        "automatedClicks": int(row["automated_clicks"]),
        "firstOpen": _iso(row["first_open"]), "firstClick": _iso(row["first_click"]),
        "mirrorViews": int(row["mirror_views"]), "unsubscribed": bool(row["unsubscribed"]),
        "lastHit": _iso(row["last_hit"]),
        "links": [{"link": r["link"], "url": r["url"], "clicks": int(r["clicks"]),
                   "automatedClicks": int(r["automated"]),
                   "firstClick": _iso(r["first_click"])} for r in links],
    }
