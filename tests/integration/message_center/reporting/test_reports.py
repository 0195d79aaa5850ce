"""The report functions on a known archive: every figure computed by hand from the
timestamps below, through the real statistics (recomputed hour by hour) and the real
report queries on PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from message_center.ids import make_id, to_public
from message_center.reporting import (
    HistoryReport,
    HistoryRow,
    ReportFilter,
    ReportFilterError,
    Thresholds,
    error_events,
    event_history,
    history_csv,
    load_thresholds,
    parse_filter,
    processing_time,
    service_level,
)
from message_center.reporting.statistics import (
    purge_statistics,
    recompute_hours,
    refresh_statistics,
    window_hours,
)

D = datetime(2024, 7, 1, tzinfo=UTC)
H10, H11, H12, H13 = (D + timedelta(hours=h) for h in (10, 11, 12, 13))


def at(hour: int, minute: int = 0, second: float = 0) -> datetime:
    return D + timedelta(hours=hour, minutes=minute, seconds=second)


# (name, cell, kind, type, channel, status, created, scheduled, processing, processed,
#  delivery: (sending_started, sent_at) or None)
EVENTS = [
    ("e1", 0, "rt", "ORDER", "email", "sent", at(10), None, at(10, 0, 2), at(10, 0, 3),
     (at(10, 0, 2.5), at(10, 0, 2.9))),
    ("e2", 0, "rt", "ORDER", "email", "sent", at(10, 10), None, at(10, 10, 1), at(10, 10, 5),
     (at(10, 10, 1), at(10, 10, 4))),
    ("e3", 0, "rt", "UNKNOWN", "email", "not_taken_into_account", at(10, 20), None,
     at(10, 20), at(10, 20), None),
    ("e4", 0, "rt", "ORDER", "email", "failed", at(10, 30), None, at(10, 59), at(11, 5),
     (at(10, 59), None)),
    ("e5", 0, "rt", "ORDER", "email", "pending", at(10, 40), None, None, None, None),
    ("e6", 1, "rt", "OTP", "sms", "sent", at(11), None, at(11, 0, 4), at(11, 0, 6),
     (at(11, 0, 4), at(11, 0, 5))),
    ("e7", 1, "rt", "OTP", "sms", "expired", at(11, 30), None, at(11, 30, 1), at(11, 30, 1),
     None),
    ("e8", 1, "batch", "ORDER", "email", "ignored", at(12), None, at(12, 0, 1), at(12, 0, 1),
     None),
    ("e9", 0, "rt", "ORDER", "email", "sent", at(9), at(12, 15), at(12, 15, 30),
     at(12, 15, 31), (at(12, 15, 30), at(12, 15, 30.5))),
    ("e10", 0, "rt", "ORDER", "email", "pending", at(9), at(12, 50), None, None, None),
]
IDS = {name: make_id(cell, n) for n, (name, cell, *_rest) in enumerate(EVENTS, start=1)}


def load(control: Engine, events=EVENTS) -> None:
    with control.begin() as conn:
        for n, (name, cell, kind, type_, channel, status, created, scheduled, processing,
                processed, delivery) in enumerate(events, start=1):
            log_id = make_id(cell, 1000 + n) if delivery else None
            conn.execute(text("""
                INSERT INTO archived_event (cell_id, id, event_kind, type, email,
                    mobile_phone, wished_channel, external_id, ctx, status, created,
                    scheduled, last_modified, processing, processed, error_count,
                    delivery_log_id, error_reason)
                VALUES (:cell, :id, :kind, :type, :email, :phone, :channel, :name, '{}',
                        :status, :created, :scheduled, now(), :processing, :processed, 0,
                        :log, :reason)"""), {
                "cell": cell, "id": make_id(cell, n), "kind": kind, "type": type_,
                "email": f"{name}@example.test" if channel == "email" else None,
                "phone": "+33600000000" if channel == "sms" else None, "channel": channel,
                "name": name, "status": status, "created": created, "scheduled": scheduled,
                "processing": processing, "processed": processed, "log": log_id,
                "reason": None if status in ("sent", "pending") else f"{status} ({name})"})
            if delivery:
                conn.execute(text("""
                    INSERT INTO archived_delivery_log (cell_id, id, event_kind, event_id,
                        channel, status, attempts, created, last_modified, sending_started,
                        sent_at)
                    VALUES (:cell, :id, :kind, :event, :channel, :status, 1, :start, now(),
                            :start, :sent)"""), {
                    "cell": cell, "id": log_id, "kind": kind, "event": make_id(cell, n),
                    "channel": channel, "status": "sent" if delivery[1] else "failed",
                    "start": delivery[0], "sent": delivery[1]})
        # hour by hour, so each hour finds its events through its own indexes
        for cell in (0, 1):
            for hour in window_hours(at(8), at(14)):
                recompute_hours(conn, cell, [hour])


@pytest.fixture
def archive(control_db):
    load(control_db)
    return control_db


def hourly(**kwargs) -> ReportFilter:
    return ReportFilter(start=H10, end=H13, **kwargs)


def test_service_level_per_hour(archive):
    with archive.connect() as conn:
        report = service_level(conn, hourly()).to_dict()
    assert report["filter"]["granularity"] == "hour"
    assert [b["start"] for b in report["buckets"]] == [
        "2024-07-01T10:00:00Z", "2024-07-01T11:00:00Z", "2024-07-01T12:00:00Z"]
    got = [(b["incoming"], b["processed"], b["sent"], b["errors"], b["errorRate"],
            b["avgSendingMs"]) for b in report["buckets"]]
    none = {"not_taken_into_account": 0, "expired": 0, "failed": 0, "ignored": 0}
    assert got == [
        (5, 3, 2, none | {"not_taken_into_account": 1}, pytest.approx(1 / 3),
         pytest.approx(1700)),
        (2, 3, 1, none | {"failed": 1, "expired": 1}, pytest.approx(2 / 3), pytest.approx(1000)),
        (1, 2, 1, none | {"ignored": 1}, 0.5, pytest.approx(500)),
    ]
    totals = report["totals"]
    assert (totals["incoming"], totals["processed"], totals["sent"]) == (8, 8, 4)
    assert totals["errorRate"] == 0.5 and totals["avgSendingMs"] == pytest.approx(1225)
    assert [(c["cause"], c["count"], c["rate"]) for c in report["errorCauses"]] == [
        ("not_taken_into_account", 1, 0.125), ("expired", 1, 0.125), ("failed", 1, 0.125),
        ("ignored", 1, 0.125)]
    assert report["errorCauses"][0]["label"].startswith("Routing errors")
    # default thresholds: 5 % warning, 20 % alert
    assert report["indicators"]["errorRate"] | {"label": ""} == {
        "value": 0.5, "unit": "ratio", "level": "alert", "warning": 0.05, "alert": 0.2,
        "label": ""}
    assert report["indicators"]["avgSendingMs"]["level"] == "ok"


def test_filters_by_instance_channel_and_kind(archive):
    with archive.connect() as conn:
        cell0 = service_level(conn, hourly(cells=(0,))).totals
        sms = service_level(conn, hourly(channel="sms")).totals
        batch = service_level(conn, hourly(kind="batch")).totals
        nothing = service_level(conn, hourly(cells=(7,))).to_dict()
    assert (cell0.incoming, cell0.processed, cell0.sent) == (5, 5, 3)
    assert (sms.incoming, sms.processed, sms.sent, sms.errors["expired"]) == (2, 2, 1, 1)
    assert (batch.incoming, batch.errors["ignored"]) == (1, 1)
    assert nothing["totals"]["errorRate"] is None
    assert nothing["indicators"]["errorRate"]["level"] == "none"
    assert len(nothing["buckets"]) == 3  # zero-filled


def test_processing_time_and_queue_sizes(archive):
    with archive.connect() as conn:
        report = processing_time(conn, hourly(), now=at(20)).to_dict()
    assert report["kind"] == "rt" and report["filter"]["kind"] == "rt"
    buckets = [(b["sent"], b["avgQueueMs"], b["avgSendingMs"], b["avgTotalMs"])
               for b in report["buckets"]]
    assert buckets == [(2, 1500, pytest.approx(1700), 4000), (1, 4000, 1000, 6000),
                       (1, 30000, 500, 31000)]
    queue = [(b["queuedMin"], b["queuedMax"], b["queuedAvg"]) for b in report["buckets"]]
    # e4 queued 10:30-11:05, e5 from 10:40 on, e10 due at 12:50 (scheduled); the others
    # leave within the minute they arrive (samples at each minute's end do not see them)
    assert queue == [(0, 2, pytest.approx(50 / 60)), (1, 2, pytest.approx(65 / 60)),
                     (1, 2, pytest.approx(70 / 60))]
    totals = report["totals"]
    assert (totals["sent"], totals["avgQueueMs"], totals["avgTotalMs"]) == (4, 9250, 11250)
    assert totals["avgSendingMs"] == pytest.approx(1225)
    assert (totals["queuedMin"], totals["queuedMax"]) == (0, 2)
    assert totals["queuedAvg"] == pytest.approx(185 / 180)
    p50 = totals["percentiles"]["queueMs"]["p50"]  # true 50th percentile: 2000 ms
    assert 1800 < p50 < 2200
    assert 28_000 < totals["percentiles"]["totalMs"]["p99"] < 33_000
    assert report["indicators"]["avgQueueMs"]["level"] == "warning"  # 9.25 s >= 5 s
    assert report["indicators"]["queuedMax"] | {"label": ""} == {
        "value": 2, "unit": "events", "level": "ok", "warning": 100, "alert": 400, "label": ""}

    with archive.connect() as conn:  # the queue before the period carries over
        late = processing_time(conn, ReportFilter(start=H12, end=H13, cells=(0,)),
                               now=at(20)).to_dict()
        partial = processing_time(conn, hourly(), now=at(10, 45)).to_dict()
    assert [(b["queuedMin"], b["queuedMax"]) for b in late["buckets"]] == [(1, 2)]
    # up to "now" only: 10:00-10:45 is sampled, later hours have no samples
    assert [b["queuedMax"] for b in partial["buckets"]] == [2, None, None]


def test_day_buckets_in_a_time_zone(archive):
    week = ReportFilter(start=D - timedelta(days=4), end=D + timedelta(days=4),
                        timezone="America/New_York")
    assert week.bucket == "day"
    with archive.connect() as conn:
        report = service_level(conn, week).to_dict()
        history = event_history(conn, week).to_dict()
    starts = [b["start"] for b in report["buckets"]]
    assert starts[0] == "2024-06-26T04:00:00Z" and len(starts) == 9  # partial days at both ends
    busy = [b for b in report["buckets"] if b["incoming"]]
    assert [(b["start"], b["incoming"], b["sent"]) for b in busy] == [
        ("2024-07-01T04:00:00Z", 10, 4)]
    assert {row["start"] for row in history["rows"]} == {"2024-07-01T04:00:00Z"}


def test_event_history_and_csv(archive):
    with archive.connect() as conn:
        report = event_history(conn, hourly())
    data = report.to_dict()
    rows = [(r["start"][11:13], r["eventType"], r["events"],
             {s: n for s, n in r["counts"].items() if n}) for r in data["rows"]]
    assert rows == [
        ("10", "ORDER", 4, {"sent": 2, "failed": 1, "pending": 1}),
        ("10", "UNKNOWN", 1, {"not_taken_into_account": 1}),
        ("11", "OTP", 2, {"sent": 1, "expired": 1}),
        ("12", "ORDER", 1, {"ignored": 1}),
    ]
    assert [(t["eventType"], t["events"]) for t in data["types"]] == [
        ("ORDER", 5), ("OTP", 2), ("UNKNOWN", 1)]
    assert data["statusLabels"]["not_taken_into_account"] == "Event not taken into account"
    lines = list(csv.reader(io.StringIO(history_csv(report))))
    assert lines[0] == ["period_start", "event_type", "events", "pending", "pending_delivery",
                        "sent", "ignored", "failed", "not_taken_into_account", "expired"]
    assert lines[1] == ["2024-07-01T10:00:00Z", "ORDER", "4", "1", "0", "2", "0", "1", "0",
                        "0"]
    assert len(lines) == 5
    formula = HistoryReport(report.filter, [HistoryRow(H10, "=HYPERLINK(1)", {"sent": 1})], [])
    assert "'=HYPERLINK(1)" in history_csv(formula)  # shown as text by spreadsheets


def test_error_events_list_the_events_behind_a_cause(archive):
    with archive.connect() as conn:
        failed = error_events(conn, hourly(), "failed").to_dict()
        routing = error_events(conn, hourly(channel="sms"), "not_taken_into_account")
        expired = error_events(conn, hourly(cells=(1,)), "expired").to_dict()
    [item] = failed["items"]
    assert item["id"] == to_public(IDS["e4"]) and item["externalId"] == "e4"
    assert (item["cellId"], item["status"], item["statusLabel"], item["errorReason"]) == (
        0, "failed", "Delivery failed", "failed (e4)")
    assert item["processed"] == "2024-07-01T11:05:00Z" and failed["nextCursor"] is None
    assert routing.items == []  # e3 is an e-mail event
    assert [i["externalId"] for i in expired["items"]] == ["e7"]



def test_delivery_failed_is_split_by_failure_class(archive):
    """e4 failed without a class (archived before classes), then its delivery log gets
    ``unknown``: the recomputed hour, the service level and the drill-down say so."""
    def failed_cause(conn):
        report = service_level(conn, hourly()).to_dict()
        return next(c for c in report["errorCauses"] if c["cause"] == "failed")

    with archive.connect() as conn:
        before = failed_cause(conn)
    assert [(c["failureClass"], c["count"]) for c in before["failureClasses"]] == [
        ("hard", 0), ("soft", 0), ("policy", 0), ("throttle", 0), ("transient", 0),
        ("error", 0), ("unknown", 0), (None, 1)]
    with archive.begin() as conn:
        conn.execute(text("UPDATE archived_delivery_log SET failure_class = 'unknown' "
                          "WHERE cell_id = 0 AND event_id = :id"), {"id": IDS["e4"]})
        recompute_hours(conn, 0, [H11])
    with archive.connect() as conn:
        after = failed_cause(conn)
        [item] = error_events(conn, hourly(), "failed").to_dict()["items"]
        other_causes = [c for c in service_level(conn, hourly()).to_dict()["errorCauses"]
                        if c["cause"] != "failed"]
    assert after["count"] == 1 and after["rate"] == 0.125
    assert {c["failureClass"]: (c["count"], c["rate"]) for c in after["failureClasses"]
            if c["count"]} == {"unknown": (1, 0.125)}
    unknown = next(c for c in after["failureClasses"] if c["failureClass"] == "unknown")
    assert unknown["label"] == "Outcome unknown (may have been delivered)"
    assert all("failureClasses" not in c for c in other_causes)
    assert (item["externalId"], item["failureClass"], item["failureClassLabel"]) == (
        "e4", "unknown", "Outcome unknown (may have been delivered)")

def test_error_events_are_keyset_paged_newest_first(control_db):
    many = [(f"f{n}", n % 2, "batch", "ORDER", "email", "failed", at(12), None, at(12),
             at(12, n), None) for n in range(1, 9)]
    load(control_db, many)
    seen, cursor = [], None
    with control_db.connect() as conn:
        while True:
            page = error_events(conn, hourly(), "failed", limit=3, cursor=cursor)
            seen.append([i["externalId"] for i in page.items])
            cursor = page.next_cursor
            if cursor is None:
                break
        with pytest.raises(ReportFilterError, match="cursor"):
            error_events(conn, hourly(), "failed", cursor="not-a-cursor")
        with pytest.raises(ReportFilterError, match="limit"):
            error_events(conn, hourly(), "failed", limit=501)
        with pytest.raises(ReportFilterError, match="cause"):
            error_events(conn, hourly(), "sent")
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(conn.execute(text("""
            EXPLAIN SELECT id FROM archived_event
            WHERE status = 'failed' AND processed >= :s AND processed < :e
            ORDER BY processed DESC, cell_id DESC, id DESC LIMIT 51"""),
            {"s": H10, "e": H13}).scalars())
    assert seen == [["f8", "f7", "f6"], ["f5", "f4", "f3"], ["f2", "f1"]]
    assert "archived_event_errors_idx" in plan


def test_statistics_are_per_cell(archive):
    """Two instances archive the same hour: each recomputation touches its own cell."""
    with archive.begin() as conn:
        recompute_hours(conn, 1, [H11])  # again, for cell 1 only
    with archive.connect() as conn:
        assert service_level(conn, hourly()).totals.incoming == 8


@pytest.mark.fast
def test_parse_filter():
    now = datetime(2024, 7, 1, 10, 20, tzinfo=UTC)
    f = parse_filter({"period": "7d", "cells": "1,0", "channel": "sms", "kind": "all",
                      "granularity": "auto"}, now=now)
    assert (f.start, f.end, f.cells, f.channel, f.kind) == (
        datetime(2024, 6, 24, 11, tzinfo=UTC), datetime(2024, 7, 1, 11, tzinfo=UTC), (0, 1),
        "sms", None)
    assert f.bucket == "hour"
    assert parse_filter({}, now=now).end - parse_filter({}, now=now).start == timedelta(1)
    assert parse_filter({"period": "30d"}, now=now).bucket == "day"
    explicit = parse_filter({"start": "2024-06-01T10:30:00", "end": "2024-06-01T12:10:00Z",
                             "tz": "Europe/Paris", "granularity": "day"})
    assert (explicit.start, explicit.end) == (datetime(2024, 6, 1, 10, tzinfo=UTC),
                                              datetime(2024, 6, 1, 13, tzinfo=UTC))
    assert explicit.to_dict()["timezone"] == "Europe/Paris"
    for params, field in (({"period": "a week"}, "period"), ({"period": "0h"}, "period"),
                          ({"period": "500d"}, "period"), ({"cells": "one"}, "cells"),
                          ({"cells": "256"}, "cells"), ({"channel": "fax"}, "channel"),
                          ({"kind": "slow"}, "kind"), ({"granularity": "week"}, "granularity"),
                          ({"tz": "Mars/Base"}, "tz"), ({"start": "yesterday"}, "start"),
                          ({"start": "2024-07-02T00:00:00Z", "end": "2024-07-01T00:00:00Z"},
                           "end"),
                          ({"period": "40d", "granularity": "hour"}, "granularity")):
        with pytest.raises(ReportFilterError) as error:
            parse_filter(params, now=now)
        assert error.value.field == field, params
    with pytest.raises(ReportFilterError, match="unknown filter parameter"):
        parse_filter({"colour": "red"}, ignore_unknown=False)
    with pytest.raises(ReportFilterError, match="timezone-aware"):
        ReportFilter(start=datetime(2024, 1, 1), end=datetime(2024, 1, 2))
    assert ReportFilter.last("24h", now=now).start == datetime(2024, 6, 30, 11, tzinfo=UTC)


def test_thresholds_change_the_colours(archive):
    lenient = load_thresholds({"MC_RtEventErrorWarning": "60", "MC_RtEventErrorAlert": "90",
                               "MC_RtEventAvgQueueTimeWarning": "10"})
    with archive.connect() as conn:
        level = service_level(conn, hourly(), lenient).indicators["errorRate"].level
        queue = processing_time(conn, hourly(), lenient, now=at(20)).indicators
    assert level == "ok"
    assert queue["avgQueueMs"].level == "ok" and queue["avgQueueMs"].warning == 10_000
    assert Thresholds().error_rate.warning == 0.05


def test_purging_old_statistics_keeps_the_queue_sizes_of_later_hours(archive):
    later = ReportFilter(start=H11 + timedelta(hours=1), end=H13, cells=(0,))
    with archive.connect() as conn:
        before = processing_time(conn, later, now=at(20)).to_dict()["buckets"]
    with archive.begin() as conn:  # e4 and e5 are still queued at 11:00
        purged = purge_statistics(conn, H11)
    assert purged.carried == 1  # cell 0 rt e-mail: 2 events queued at 11:00
    with archive.begin() as conn:
        again = purge_statistics(conn, H11)
    assert (again.event_rows, again.flow_rows, again.carried) == (0, 0, 1)
    with archive.connect() as conn:
        after = processing_time(conn, later, now=at(20)).to_dict()["buckets"]
        left = conn.execute(text(
            "SELECT count(*) FROM event_stats_hourly WHERE hour < :h"), {"h": H11}).scalar()
        carried = conn.execute(text(
            "SELECT hour, cell_id, arrivals, received FROM flow_stats_hourly WHERE hour < :h"),
            {"h": H11}).all()
    assert after == before and left == 0
    assert [tuple(row) for row in carried] == [(H10, 0, 2, 0)]


def test_old_hours_are_not_recomputed_past_the_horizon(archive):
    """Hours whose archive may be purged keep their statistics (marks are dropped)."""
    with archive.begin() as conn:
        conn.execute(text("DELETE FROM archived_event"))  # as a retention purge would
        conn.execute(text("INSERT INTO event_stats_dirty VALUES (0, :h), (0, :h2)"),
                     {"h": H10, "h2": H13})
    report = refresh_statistics(archive, 0, window=(H10, H13), not_before=H13)
    assert (report.hours, report.skipped) == (1, 1)  # only 13:00 (empty) recomputed
    with archive.connect() as conn:
        assert service_level(conn, hourly()).totals.incoming == 8
        assert conn.execute(text("SELECT count(*) FROM event_stats_dirty")).scalar() == 0
