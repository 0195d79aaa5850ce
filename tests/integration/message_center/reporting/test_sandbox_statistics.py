"""Sandbox traffic in the statistics (issue 29): archived sandbox events are counted in their
own table, never in the service level, the history or the error drill-downs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from message_center.ids import make_id
from message_center.reporting import ReportFilter, error_events, service_level
from message_center.reporting.statistics import purge_statistics, recompute_hours

T0 = datetime(2024, 7, 1, 10, tzinfo=UTC)


def test_reports_count_sandbox_traffic_apart(control_db):
    with control_db.begin() as conn:
        for n, (status, sandbox) in enumerate((("sent", False), ("sent", True),
                                               ("failed", True), ("sent", True)), 1):
            at = T0 + timedelta(minutes=n)
            conn.execute(text("""
                INSERT INTO archived_event (cell_id, id, event_kind, type, email,
                    wished_channel, ctx, status, created, last_modified, processing,
                    processed, error_count, delivery_log_id, sandbox)
                VALUES (0, :id, 'rt', 'ORDER', 'a@example.test', 'email', '{}', :status,
                        :at, :at, :at, :at, 0, :log, :sandbox)"""),
                         {"id": make_id(0, n), "log": make_id(0, 100 + n), "at": at,
                          "status": status, "sandbox": sandbox})
            conn.execute(text("""
                INSERT INTO archived_delivery_log (cell_id, id, event_kind, event_id, channel,
                    status, attempts, created, last_modified, sending_started, sent_at,
                    failure_class, sandbox)
                VALUES (0, :log, 'rt', :id, 'email', :status, 1, :at, :at, :at, :at,
                        CASE WHEN :status = 'failed' THEN 'hard' END, :sandbox)"""),
                         {"id": make_id(0, n), "log": make_id(0, 100 + n), "at": at,
                          "status": status, "sandbox": sandbox})
        recompute_hours(conn, 0, [T0])
    period = ReportFilter(start=T0, end=T0 + timedelta(hours=1))
    with control_db.connect() as conn:
        report = service_level(conn, period).to_dict()
        failed = error_events(conn, period, "failed").to_dict()
        history = conn.execute(text(
            "SELECT sum(received), sum(finished) FROM event_stats_hourly")).one()
    assert (report["totals"]["incoming"], report["totals"]["sent"]) == (1, 1)
    assert report["totals"]["errors"]["failed"] == 0 and report["totals"]["errorRate"] == 0
    assert report["sandbox"] == {"received": 3, "finished": 3,
                                 "byStatus": {"failed": 1, "sent": 2}}
    assert failed["items"] == []  # the drill-down matches the counts: no sandbox event
    assert tuple(history) == (1, 1)  # the history and every other report too
    with control_db.begin() as conn:  # retention purges them with the other statistics
        purge_statistics(conn, T0 + timedelta(hours=2))
        assert conn.execute(text("SELECT count(*) FROM sandbox_stats_hourly")).scalar() == 0
