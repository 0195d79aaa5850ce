"""The Message Center reports on a year of hourly statistics, and what the statistics cost
the archiving runs.

* **Reports.** Hourly statistics equivalent to ``stats_events`` archived events over
  ``stats_days`` days are generated set-based on the control database (3 execution
  instances, 20 event types, e-mail for all and SMS for 4 of them, the real-time queue for
  14 types and the batch queue for 6, 5 final statuses with realistic shares and a daily
  cycle; counts rounded stochastically, so small types only have an error row in some
  hours). The service level, processing time and event history reports of the last
  ``report_days`` are timed (median of 5 runs, after one warm-up) next to a bare
  ``SELECT sum(...)`` over the same statistics rows.
* **Archiving cost.** One account's archiving of ``archive_events`` events and their
  delivery logs, with the statistics (hours marked by the upserts, the statistics indexes
  of migration c0003, then ``refresh_statistics``) next to the same archiving without any
  of it (no marks, those indexes dropped): rows/s of the whole run.
"""

from __future__ import annotations

import statistics as stats
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from bench.core import Context, Result, log, planned_rows, stopwatch
from bench.data import insert_events, insert_final_delivery_logs
from message_center import archiving
from message_center.reporting import (
    ReportFilter,
    event_history,
    processing_time,
    refresh_statistics,
    service_level,
)

CELLS = (200, 201, 202)  # generated instances, apart from the other stages' cell 0
YEAR_END = datetime(2026, 1, 1, tzinfo=UTC)  # a fixed past year: identical runs
RUNS = 5
STATISTICS_INDEXES = {
    "archived_event_cell_processed_idx":
        "ON archived_event (cell_id, processed) WHERE processed IS NOT NULL",
    "archived_event_cell_scheduled_idx":
        "ON archived_event (cell_id, scheduled) WHERE scheduled IS NOT NULL",
    "archived_event_errors_idx":
        "ON archived_event (status, processed, cell_id, id) WHERE status IN "
        "('not_taken_into_account', 'expired', 'failed', 'ignored')",
}

# 20 types: T00-T13 real-time, T14-T19 batch; e-mail for all, SMS too for T00-T03;
# Zipf-like weights. Status shares of the received events.
_GENERATE_EVENT_STATS = """
    WITH combos AS (
        SELECT 'T' || lpad(t::text, 2, '0') AS type, CASE WHEN t < 14 THEN 'rt'
               ELSE 'batch' END AS kind, ch AS channel,
               (1.0 / (t + 1 + CASE WHEN ch = 'sms' THEN 2 ELSE 0 END)) AS w
        FROM generate_series(0, 19) t, unnest(ARRAY['email', 'sms']) ch
        WHERE ch = 'email' OR t < 4
    ), weights AS (
        SELECT type, kind, channel, w / sum(w) OVER () AS share FROM combos
    ), statuses(status, share, queue_ms, sending_ms) AS (
        VALUES ('sent', 0.94, 40, 80), ('failed', 0.02, 40, 0), ('ignored', 0.02, 40, 0),
               ('not_taken_into_account', 0.01, 5, 0), ('expired', 0.01, 30000, 0)
    ), hours AS (
        SELECT hour, 1 + 0.7 * sin(2 * pi() * (extract(hour FROM hour) - 9) / 24) AS cycle
        FROM generate_series(CAST(:start AS timestamptz), CAST(:end AS timestamptz)
                             - interval '1 hour', interval '1 hour') AS hour
    )
    INSERT INTO event_stats_hourly (hour, cell_id, event_kind, event_type, channel, status,
        received, finished, queue_us, total_us, sending_n, sending_us)
    SELECT hour, cell, kind, type, channel, status, n, n,
           n::bigint * queue_ms * (CASE kind WHEN 'batch' THEN 400 ELSE 1 END) * 1000,
           n::bigint * (queue_ms * (CASE kind WHEN 'batch' THEN 400 ELSE 1 END) + sending_ms)
               * 1000,
           CASE WHEN status = 'sent' THEN n ELSE 0 END,
           CASE WHEN status = 'sent' THEN n::bigint * sending_ms * 1000 ELSE 0 END
    FROM (
        SELECT h.hour, c.cell, w.kind, w.type, w.channel, s.status, s.queue_ms, s.sending_ms,
               floor(:per_hour * h.cycle * w.share * s.share + random())::int AS n
        FROM hours h, unnest(CAST(:cells AS int[])) AS c(cell), weights w, statuses s
    ) AS g
    WHERE n > 0
"""
_GENERATE_FLOW_STATS = """
    INSERT INTO flow_stats_hourly (hour, cell_id, event_kind, channel, received, finished,
        sent, not_taken, expired, failed, ignored, sent_queue_us, sent_total_us, sending_n,
        sending_us, queue_hist, sending_hist, total_hist, arrivals, departures,
        queue_minutes)
    SELECT hour, cell_id, event_kind, channel, sum(received), sum(finished),
           sum(finished) FILTER (WHERE status = 'sent'),
           coalesce(sum(finished) FILTER (WHERE status = 'not_taken_into_account'), 0),
           coalesce(sum(finished) FILTER (WHERE status = 'expired'), 0),
           coalesce(sum(finished) FILTER (WHERE status = 'failed'), 0),
           coalesce(sum(finished) FILTER (WHERE status = 'ignored'), 0),
           coalesce(sum(queue_us) FILTER (WHERE status = 'sent'), 0),
           coalesce(sum(total_us) FILTER (WHERE status = 'sent'), 0),
           sum(sending_n), sum(sending_us),
           CAST(:queue_hist AS int[]), CAST(:sending_hist AS int[]),
           CAST(:total_hist AS int[]), sum(received), sum(finished),
           CAST(:minutes AS int[])
    FROM event_stats_hourly WHERE cell_id = ANY(:cells)
    GROUP BY hour, cell_id, event_kind, channel
"""


def _shape(peak: int, width: int, size: int, scale: int) -> list[int]:
    """A bell-shaped histogram (log-scale buckets around ``peak``)."""
    return [int(scale * 2.718 ** (-((b - peak) ** 2) / (2 * width ** 2))) for b in range(size)]


def generate(ctx: Context) -> tuple[int, int, int]:
    """Statistics of ``stats_events`` events over ``stats_days`` days: (event rows, flow
    rows, events)."""
    sizes = ctx.sizes
    hours = sizes.stats_days * 24
    per_hour = sizes.stats_events / hours / len(CELLS)
    start = YEAR_END - timedelta(days=sizes.stats_days)
    engine = ctx.engine("control")
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE event_stats_hourly, flow_stats_hourly"))
        conn.execute(text("SELECT setseed(0.42)"))
        conn.execute(text(_GENERATE_EVENT_STATS), {"start": start, "end": YEAR_END,
                                                   "per_hour": per_hour, "cells": list(CELLS)})
        conn.execute(text(_GENERATE_FLOW_STATS), {
            "cells": list(CELLS), "queue_hist": _shape(24, 4, 40, 30),
            "sending_hist": _shape(26, 3, 36, 40), "total_hist": _shape(28, 4, 44, 30),
            "minutes": [(m % 7) - 3 for m in range(60)]})
        event_rows, events = conn.execute(text(
            "SELECT count(*), coalesce(sum(received), 0) FROM event_stats_hourly")).one()
        flow_rows = conn.execute(text("SELECT count(*) FROM flow_stats_hourly")).scalar_one()
    ctx.vacuum("event_stats_hourly", "flow_stats_hourly", role="control")
    return int(event_rows), int(flow_rows), int(events)


def _median_ms(run: Callable[[], object]) -> tuple[float, float]:
    """(first run, median of the next ``RUNS``) in milliseconds."""
    timings = []
    for _ in range(RUNS + 1):
        started = time.perf_counter()
        run()
        timings.append((time.perf_counter() - started) * 1000)
    return timings[0], stats.median(timings[1:])


def reports(ctx: Context) -> list[Result]:
    """Reports over generated statistics, then the archiving cost of the statistics."""
    sizes = ctx.sizes
    log(f"reports: generating statistics of {sizes.stats_events:,} events over "
        f"{sizes.stats_days} days")
    with stopwatch() as generation:
        event_rows, flow_rows, events = generate(ctx)
    log(f"reports: {event_rows:,} event-type rows + {flow_rows:,} flow rows "
        f"({events:,} events) in {generation():.0f}s")
    period = ReportFilter(start=YEAR_END - timedelta(days=sizes.report_days), end=YEAR_END)
    engine = ctx.engine("control")
    bare_where = "hour >= :start AND hour < :end"
    bounds = {"start": period.start, "end": period.end}
    in_period = {}
    with engine.connect() as conn:
        for table in ("event_stats_hourly", "flow_stats_hourly"):
            in_period[table] = conn.execute(text(
                f"SELECT count(*) FROM {table} WHERE {bare_where}"), bounds).scalar_one()

        def bare(sql: str) -> Callable[[], object]:
            return lambda: conn.execute(text(sql), bounds).all()

        measured = {
            "service_level": (_median_ms(lambda: service_level(conn, period)), _median_ms(bare(
                "SELECT sum(received), sum(finished), sum(sent), sum(failed) "
                f"FROM flow_stats_hourly WHERE {bare_where}"))),
            "processing_time": (
                _median_ms(lambda: processing_time(conn, period, now=YEAR_END)),
                _median_ms(bare("SELECT sum(sent), sum(sent_queue_us), sum(sending_us) "
                                f"FROM flow_stats_hourly WHERE {bare_where} "
                                "AND event_kind = 'rt'"))),
            "history": (_median_ms(lambda: event_history(conn, period)), _median_ms(bare(
                f"SELECT sum(received) FROM event_stats_hourly WHERE {bare_where}"))),
        }
        history_rows = len(event_history(conn, period).rows)
    planned = planned_rows(sizes)["reports"]
    results = []
    notes = {
        "service_level": f"{in_period['flow_stats_hourly']:,} flow rows in the period, "
                         f"{period.bucket} buckets",
        "processing_time": "rt flow rows of the period + every earlier hour for the queue "
                           "size carried over; per-minute queue samples and merged "
                           "histograms",
        "history": f"{in_period['event_stats_hourly']:,} event-type rows in the period "
                   f"-> {history_rows:,} (day, type) rows",
    }
    for (figure, target), key in zip(planned[:3], ("service_level", "processing_time",
                                                    "history"), strict=True):
        (first, median), (_, bare_median) = measured[key]
        note = (f"median of {RUNS} runs (first {first:.0f} ms); {notes[key]}; statistics of "
                f"{events:,} events over {sizes.stats_days} days: {event_rows:,} + "
                f"{flow_rows:,} rows" if key == "service_level" else
                f"median of {RUNS} runs (first {first:.0f} ms); {notes[key]}")
        results.append(Result(figure, target, median, "ms", median < 1000, bare_median,
                              "bare SELECT sum(...) over the same rows",
                              higher_is_better=False, note=note))
    results.append(_archiving_cost(ctx, planned[3]))
    return results


def _archiving_cost(ctx: Context, planned: tuple[str, str]) -> Result:
    figure, target = planned
    count = ctx.sizes.archive_events
    engine = ctx.engine()
    control = ctx.engine("control")
    ctx.reset_execution()
    log(f"reports: archiving {count:,} events with and without the statistics")
    insert_events(engine, "rt", count // 2, status="pending_delivery", spread_seconds=3000)
    insert_events(engine, "batch", count - count // 2, status="pending_delivery",
                  spread_seconds=3000)
    for kind in ("rt", "batch"):
        insert_final_delivery_logs(engine, kind, spread_seconds=3000)
    with engine.begin() as conn:  # the events took the outcome of their delivery logs
        for kind in ("rt", "batch"):
            conn.execute(text(f"""
                UPDATE {kind}_event e SET status = d.status, processed = d.last_modified,
                       processing = d.created, delivery_log_id = d.id
                FROM delivery_log d WHERE d.event_kind = '{kind}' AND d.event_id = e.id"""))
    ctx.vacuum("rt_event", "batch_event", "delivery_log")
    end = datetime.now(UTC) + timedelta(minutes=1)

    def run(with_statistics: bool) -> tuple[float, float, int]:
        ctx.reset_archive()
        ctx.vacuum("archived_event", "archived_delivery_log", role="control")
        with stopwatch() as elapsed:
            report = archiving.archive_window(ctx.url("execution"), ctx.url("control"), 0,
                                              end - timedelta(hours=2), end,
                                              statistics=with_statistics)
        archive_seconds = elapsed()
        refresh_seconds = 0.0
        if with_statistics:
            with stopwatch() as refreshing:
                refresh_statistics(control, 0, window=(end - timedelta(hours=2), end))
            refresh_seconds = refreshing()
        return archive_seconds, refresh_seconds, sum(c.read for c in report.counts.values())

    def indexes(present: bool) -> None:
        with control.begin() as conn:
            for name, definition in STATISTICS_INDEXES.items():
                conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} {definition}" if present
                                  else f"DROP INDEX IF EXISTS {name}"))

    # Alternated, best of two each: the machine is shared, the faster run is the cost.
    trials_without, trials_with = [], []
    try:
        for _ in range(2):
            indexes(False)
            trials_without.append(run(False))
            indexes(True)
            trials_with.append(run(True))
    finally:
        indexes(True)
    without, _, rows = min(trials_without)
    archive_seconds, refresh_seconds, rows_with = min(trials_with,
                                                      key=lambda t: t[0] + t[1])
    with control.connect() as conn:
        stats_rows = conn.execute(text(
            "SELECT count(*) FROM event_stats_hourly WHERE cell_id = 0")).scalar_one()
    ctx.reset_execution()
    ctx.reset_archive()
    with control.begin() as conn:
        conn.execute(text("DELETE FROM event_stats_hourly WHERE cell_id = 0"))
        conn.execute(text("DELETE FROM flow_stats_hourly WHERE cell_id = 0"))
    total = archive_seconds + refresh_seconds
    rate, bare = rows_with / total, rows / without
    note = (f"{rows_with:,} rows of one account, best of 2 runs each; with statistics: "
            f"archiving {archive_seconds:.1f}s (hours marked by the upserts, 3 more indexes) "
            f"+ statistics of the touched hours {refresh_seconds:.2f}s ({stats_rows:,} "
            f"event-type rows); without: {without:.1f}s (no marks, no statistics indexes)")
    return Result(figure, target, rate, "rows/s", rate >= 50_000 and rows_with == rows, bare,
                  "same archiving without statistics", note=note)
