"""Tracking logs archived to the control instance (backfill-safe, like events) and the
Tracking report read from the hourly statistics: real deliveries, real hits through the
real tracking server, a real archiving window."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
from processing_factory import insert_events, publish_templates
from sqlalchemy import text
from test_tracking_end_to_end import channels, drain, server  # noqa: F401 - fixtures
from tracking_factory import BROWSER, TRACKED, hrefs, parts

from message_center.archiving import archive_window
from message_center.reporting.reports import ReportFilter
from message_center.reporting.tracking import (
    refresh_tracking_statistics,
    tracking_csv,
    tracking_report,
)


def test_archive_then_the_control_report_shows_the_rates(execution_db, control_db, smtp_sink,
                                                         channels, server):  # noqa: F811
    publish_templates(execution_db, TRACKED)
    smtp_sink.clear()
    insert_events(execution_db, "batch", 4)
    drain(execution_db, channels)
    messages = smtp_sink.messages()
    assert len(messages) == 4
    with httpx.Client(headers={"User-Agent": BROWSER}) as client:
        for index, message in enumerate(messages):
            html = parts(message)[0]
            pixel = re.search(r'<img src="([^"]+)"', html).group(1)
            if index < 2:  # two of four open, twice each
                client.get(pixel)
                client.get(pixel)
            if index == 0:  # one clicks
                assert client.get(hrefs(html)[0]).status_code == 302
        client.head(hrefs(parts(messages[3])[0])[0])  # a scanner on the fourth
    assert server.writer.wait_idle()

    now = datetime.now(UTC)
    window = (now - timedelta(hours=2), now + timedelta(minutes=1))
    first = archive_window(execution_db, control_db, 0, *window)
    assert first.counts["tracking_log"].inserted == 6
    again = archive_window(execution_db, control_db, 0, *window)  # a re-run / backfill
    assert again.counts["tracking_log"].read == 6 and again.counts["tracking_log"].inserted == 0
    with control_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM archived_tracking_log")).scalar() == 6
    refresh_tracking_statistics(control_db, 0)

    report_filter = ReportFilter(start=now - timedelta(hours=3), end=now + timedelta(hours=1))
    with control_db.connect() as conn:
        report = tracking_report(conn, report_filter).to_dict()
    total = report["total"]
    assert (total["sent"], total["opened"], total["clicked"]) == (4, 2, 1)
    assert (total["opens"], total["clicks"], total["automatedClicks"]) == (4, 1, 1)
    assert (total["openRate"], total["clickRate"], total["clickToOpenRate"]) == (50.0, 25.0,
                                                                                 50.0)
    assert [t["template"] for t in report["templates"]] == ["trackedOrder"]
    assert report["links"][0]["url"].startswith("https://shop.example/orders/")
    assert report["links"][0]["uniqueClicks"] == 1
    assert sum(b["sent"] for b in report["buckets"]) == 4
    csv = tracking_csv(tracking_report(control_db.connect(), report_filter))
    assert csv.splitlines()[1].startswith("trackedOrder,4,2,1,50.0,25.0,")
