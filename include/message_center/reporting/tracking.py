"""Tracking on the control instance: the hourly tracking statistics, recomputed from the
archive, and the figures of the *Tracking* report page.

``tracking_stats_hourly`` is kept per UTC hour **of sending**, cell and template: the
messages sent in that hour and what became of them (opened, clicked: unique per message,
human hits only; every human open and click; the automated ones apart). A rate over a
period is unique / sent of the messages sent in it, so it does not change with the day a
recipient opens. The archiving marks the hours to recompute (``tracking_stats_dirty``):
those of the tracking logs and delivery logs it copied; :func:`refresh_tracking_statistics`
rebuilds them. Per link, the report reads the archived hits of the period's messages (a
click is one row; links are few per message).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from message_center.reporting.reports import ReportFilter
from message_center.reporting.statistics import floor_hour, hour_ranges, window_hours

_BIN = "date_bin('1 hour', {0}, TIMESTAMPTZ '2000-01-01Z')"

_RECOMPUTE = text(f"""
    WITH ranges AS (
        SELECT lo, hi FROM unnest(CAST(:los AS timestamptz[]), CAST(:his AS timestamptz[]))
             AS r(lo, hi)
    ), sent AS (
        SELECT {_BIN.format("d.sent_at")} AS hour, coalesce(d.template_name, '') AS template,
               count(*) AS sent
        FROM archived_delivery_log d JOIN ranges r ON d.sent_at >= r.lo AND d.sent_at < r.hi
        WHERE d.cell_id = :cell AND d.status = 'sent'
        GROUP BY 1, 2
    ), hits AS (
        SELECT {_BIN.format("t.sent_at")} AS hour, coalesce(t.template_name, '') AS template,
               count(DISTINCT t.delivery_log_id) FILTER (
                   WHERE NOT t.automated AND t.kind IN ('open', 'click')) AS opened,
               count(DISTINCT t.delivery_log_id) FILTER (
                   WHERE NOT t.automated AND t.kind = 'click') AS clicked,
               count(*) FILTER (WHERE NOT t.automated AND t.kind = 'open') AS opens,
               count(*) FILTER (WHERE NOT t.automated AND t.kind = 'click') AS clicks,
               count(*) FILTER (WHERE t.automated AND t.kind = 'open') AS automated_opens,
               count(*) FILTER (WHERE t.automated AND t.kind = 'click') AS automated_clicks
        FROM archived_tracking_log t JOIN ranges r ON t.sent_at >= r.lo AND t.sent_at < r.hi
        WHERE t.cell_id = :cell
        GROUP BY 1, 2
    ), tracked AS (  -- only templates that track: a message of another has no hit to count
        SELECT DISTINCT template FROM hits
        UNION
        SELECT DISTINCT v.internal_name FROM template_version v
        WHERE v.content ? 'tracking' OR v.content ? 'mirror_page' OR v.content ? 'unsubscribe'
    ), inserted AS (
        INSERT INTO tracking_stats_hourly (hour, cell_id, template_name, sent, opened, clicked,
            opens, clicks, automated_opens, automated_clicks)
        SELECT coalesce(s.hour, h.hour), :cell, coalesce(s.template, h.template),
               coalesce(s.sent, 0), coalesce(h.opened, 0), coalesce(h.clicked, 0),
               coalesce(h.opens, 0), coalesce(h.clicks, 0), coalesce(h.automated_opens, 0),
               coalesce(h.automated_clicks, 0)
        FROM sent s FULL JOIN hits h ON h.hour = s.hour AND h.template = s.template
        WHERE coalesce(s.hour, h.hour) = ANY(:hours)
          AND coalesce(s.template, h.template) IN (SELECT template FROM tracked)
        ORDER BY 1, 3
        RETURNING 1
    )
    SELECT count(*) FROM inserted
""")

_TAKE_DIRTY = text("""
    DELETE FROM tracking_stats_dirty d
    WHERE d.cell_id = :cell AND d.hour IN (
        SELECT hour FROM tracking_stats_dirty WHERE cell_id = :cell ORDER BY hour LIMIT :n)
    RETURNING d.hour
""")


def recompute_tracking_hours(conn: Connection, cell_id: int, hours: Iterable[datetime]) -> int:
    """Rebuild the tracking statistics of ``hours`` (UTC, hours of sending) of one cell."""
    wanted = sorted({floor_hour(h) for h in hours})
    if not wanted:
        return 0
    conn.execute(text("DELETE FROM tracking_stats_hourly WHERE cell_id = :cell "
                      "AND hour = ANY(:hours)"), {"cell": cell_id, "hours": wanted})
    ranges = hour_ranges(wanted)
    return int(conn.execute(_RECOMPUTE, {
        "cell": cell_id, "hours": wanted, "los": [lo for lo, _ in ranges],
        "his": [hi for _, hi in ranges]}).scalar_one())


@dataclass
class TrackingRefresh:
    cell_id: int
    hours: int = 0
    rows: int = 0

    def summary(self) -> str:
        return (f"cell {self.cell_id}: tracking statistics of {self.hours} hour(s) recomputed "
                f"({self.rows} template rows)")

    def as_dict(self) -> dict[str, int]:
        return {"hours": self.hours, "rows": self.rows}


def refresh_tracking_statistics(engine: Engine, cell_id: int, *,
                                window: tuple[datetime, datetime] | None = None,
                                batch_hours: int = 168) -> TrackingRefresh:
    """Recompute the hours marked by the archiving (and those of ``window``)."""
    extra = window_hours(*window) if window else []
    report = TrackingRefresh(cell_id)
    while True:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('mc_tracking_stats'), "
                              ":cell)"), {"cell": cell_id})
            hours = set(extra[:batch_hours])
            extra = extra[batch_hours:]
            room = batch_hours - len(hours)
            if room > 0:
                hours.update(conn.execute(_TAKE_DIRTY, {"cell": cell_id, "n": room}).scalars())
            if not hours:
                return report
            report.rows += recompute_tracking_hours(conn, cell_id, hours)
            report.hours += len(hours)


# --- the report ----------------------------------------------------------------------
def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


@dataclass
class TrackingFigures:
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    opens: int = 0
    clicks: int = 0
    automated_opens: int = 0
    automated_clicks: int = 0

    def add(self, row: Any) -> None:
        for name in ("sent", "opened", "clicked", "opens", "clicks", "automated_opens",
                     "automated_clicks"):
            setattr(self, name, getattr(self, name) + int(getattr(row, name) or 0))

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "opened": self.opened, "clicked": self.clicked,
                "opens": self.opens, "clicks": self.clicks,
                "automatedOpens": self.automated_opens,
                "automatedClicks": self.automated_clicks,
                "openRate": _rate(self.opened, self.sent),
                "clickRate": _rate(self.clicked, self.sent),
                "clickToOpenRate": _rate(self.clicked, self.opened)}


@dataclass
class TrackingReport:
    filter: ReportFilter
    total: TrackingFigures = field(default_factory=TrackingFigures)
    templates: dict[str, TrackingFigures] = field(default_factory=dict)
    buckets: dict[datetime, TrackingFigures] = field(default_factory=dict)
    links: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "filter": self.filter.to_dict(), "total": self.total.to_dict(),
            "templates": [{"template": name, **figures.to_dict()}
                          for name, figures in sorted(self.templates.items(),
                                                      key=lambda item: -item[1].sent)],
            "buckets": [{"start": _iso(bucket), **self.buckets.get(
                bucket, TrackingFigures()).to_dict()} for bucket in self.filter.buckets()],
            "links": self.links,
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tracking_report(conn: Connection, f: ReportFilter, *, link_limit: int = 50
                    ) -> TrackingReport:
    """Open and click rates of the messages sent in the period: in all, per template, per
    bucket (hour or day), and the most clicked links."""
    where = ["hour >= :start", "hour < :end"]
    params: dict[str, Any] = {"start": f.start, "end": f.end, "tz": f.timezone}
    if f.cells is not None:
        where.append("cell_id = ANY(:cells)")
        params["cells"] = list(f.cells)
    rows = conn.execute(text(f"""
        SELECT {f._bucket_sql()} AS bucket, template_name, sum(sent) AS sent,
               sum(opened) AS opened, sum(clicked) AS clicked, sum(opens) AS opens,
               sum(clicks) AS clicks, sum(automated_opens) AS automated_opens,
               sum(automated_clicks) AS automated_clicks
        FROM tracking_stats_hourly WHERE {" AND ".join(where)}
        GROUP BY 1, 2 ORDER BY 1, 2
    """), params).all()
    report = TrackingReport(f)
    for row in rows:
        report.total.add(row)
        report.templates.setdefault(row.template_name, TrackingFigures()).add(row)
        report.buckets.setdefault(row.bucket, TrackingFigures()).add(row)
    link_where = ["t.sent_at >= :start", "t.sent_at < :end", "t.kind = 'click'"]
    if f.cells is not None:
        link_where.append("t.cell_id = ANY(:cells)")
    report.links = [
        {"template": r.template_name, "url": r.url, "clicks": int(r.clicks),
         "uniqueClicks": int(r.unique_clicks), "automatedClicks": int(r.automated)}
        for r in conn.execute(text(f"""
            SELECT coalesce(t.template_name, '') AS template_name, t.url,
                   count(*) FILTER (WHERE NOT t.automated) AS clicks,
                   count(DISTINCT t.delivery_log_id) FILTER (WHERE NOT t.automated)
                       AS unique_clicks,
                   count(*) FILTER (WHERE t.automated) AS automated
            FROM archived_tracking_log t WHERE {" AND ".join(link_where)}
            GROUP BY 1, 2 ORDER BY 3 DESC, 5 DESC, 2 LIMIT :limit
        """), {**params, "limit": link_limit})]
    return report


def tracking_csv(report: TrackingReport) -> str:
    """The report per period and template as CSV (RFC 4180)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["template", "sent", "opened", "clicked", "open_rate", "click_rate",
                     "opens", "clicks", "automated_opens", "automated_clicks"])
    for row in report.to_dict()["templates"]:
        name = row["template"]
        writer.writerow([f"'{name}" if name[:1] in ("=", "+", "-", "@") else name,
                         row["sent"], row["opened"], row["clicked"], row["openRate"],
                         row["clickRate"], row["opens"], row["clicks"], row["automatedOpens"],
                         row["automatedClicks"]])
    return out.getvalue()
