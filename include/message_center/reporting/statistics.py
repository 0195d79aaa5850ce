"""Hourly event statistics on the control instance, rebuilt from the archive by each
archiving run: what makes a 30-day report over a year of events answer at once.

**What is counted, and on which clock.** An event belongs to up to three UTC hours:

* its **reception** hour (``created``): ``received`` - incoming events, by current status;
* its **due** hour (``greatest(created, scheduled)``): it joins the queue (``arrivals``);
* its **finish** hour (``processed``, the time its final status was reached): ``finished``
  per final status (sent = outgoing messages, and the error causes), with the times.

Times of a finished event (stored as sums of whole microseconds, reported in ms):

* queue time = processing start (``processing``, the claim that took it into processing)
  - due time;
* sending time = provider accepted (delivery log ``sent_at``) - delivery start (delivery
  log ``sending_started``), for sent messages (the MTA time of ACC's report);
* total time = final status (``processed``) - due time.

Two tables (migration ``c0003``):

* ``event_stats_hourly`` (hour, cell, kind, event type, channel, status): ``received``,
  ``finished`` and the sums of the three times over the finished events (sending time
  over those that have one: ``sending_n``). The history report reads it.
* ``flow_stats_hourly`` (hour, cell, kind, channel): the same counts by final status,
  the failed ones also by their delivery log's failure class (``failed_classes``, jsonb,
  migration ``c0007``: the error breakdown tells ``unknown`` from hard / soft / policy),
  the finished events that were recycled from another channel (``recycled``, and
  ``recycled_sent`` of them sent; migration ``c0010``),
  and over the **sent** events (ACC averages "successfully processed events") the time
  sums and a **log-scale histogram** per time (``integer[]``, bucket ``b`` counts times in
  ``[2^((b-1)/4), 2^(b/4))`` ms, bucket 0 under 1 ms, the last one everything from
  ``2^27`` ms on; trimmed after the last non-empty bucket). Histograms of any hours,
  instances or channels add up element-wise, so percentiles over any selection are
  computed from the merged histogram (within one bucket: about +-9 %).

**Queue size (ACC: minimum / maximum / average number of queued events).** Chosen: derived
from the archived timestamps, not sampled by the archiving run. A sample taken by an
hourly run would be one point per hour, blind to the peaks in between and to the hours
the run did not happen; the archive knows, for every event, when it became due and when
it left the queue (its final status), so the queue size at any moment in the past can be
rebuilt exactly, also by a backfill. An event is *queued* from its due time until its final
status (``pending`` and ``pending_delivery``: what is still to be handled - in the real-time
queue that is the time before the claim plus milliseconds of delivery). Per (hour, cell,
kind, channel) the row keeps ``arrivals`` and ``departures`` of the hour and
``queue_minutes``: the net change of the queue size from the hour's start to the end of
each of its 60 minutes. The size at the end of minute ``m`` is then the sum of
``arrivals - departures`` over all earlier hours plus ``queue_minutes[m]``; those
per-minute samples add up across instances and channels, so min/max/avg of a selection
are exact at minute resolution (an event that arrives and leaves within the same minute
is not seen by a sample). The sizes count only archived events (an instance archives
from its first run on, at most ``catch_up_days`` back).

**Retention.** Old hours are deleted with :func:`purge_statistics`, which carries the queue
still open at the cut-off over into one row, so the running sum stays right. Hours older
than the recomputation horizon (``not_before``, the DAG's ``statistics_horizon_days``) are
never recomputed: their archive may already be purged, and their statistics are then all
that is left.

**Incremental and idempotent.** The archiving upsert marks, in the same statement, the
hours a changed row belongs to (``event_stats_dirty``; a changed delivery log marks its
event's finish hour). After archiving, :func:`refresh_statistics` recomputes the marked
hours of the cell, plus every hour of the run's window, from the archive: per batch of
hours one transaction deletes their rows and inserts them again, computed set-based from
``archived_event`` / ``archived_delivery_log`` (indexes on ``created``, ``(cell_id,
processed)`` and ``(cell_id, scheduled)`` read exactly the rows of those hours). The
figures of an hour are a pure function of the archive, so a re-run, a retried task or a
backfill of the same window writes exactly the same rows. An advisory lock per cell keeps
two runs of one account (a backfill next to the scheduled run) from recomputing at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text

from message_center.statuses import FINAL_EVENT, sql_in

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
BUCKETS_PER_DOUBLING = 4
HIST_BUCKETS = 110  # 0: < 1 ms; 1..108: 2^((b-1)/4) .. 2^(b/4) ms; 109: >= 2^27 ms (~37 h)
DEFAULT_BATCH_HOURS = 48
_LOCK_CLASS = "mc:event_stats"

_FINAL_SQL = sql_in(FINAL_EVENT)


def bucket_sql(ms: str) -> str:
    """SQL for the histogram bucket of a duration in milliseconds (see the module doc)."""
    return (f"(CASE WHEN {ms} < 1 THEN 0 ELSE least({HIST_BUCKETS - 1}, 1 + "
            f"floor({BUCKETS_PER_DOUBLING} * ln({ms}) / ln(2))::int) END)")


def bucket_of(ms: float) -> int:
    """The histogram bucket of ``ms`` (the Python twin of :func:`bucket_sql`)."""
    if ms < 1:
        return 0
    return min(HIST_BUCKETS - 1, 1 + math.floor(BUCKETS_PER_DOUBLING * math.log(ms) / math.log(2)))


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """``[low, high)`` milliseconds of a bucket (the last one is open: high = inf)."""
    if bucket <= 0:
        return 0.0, 1.0
    low = 2 ** ((bucket - 1) / BUCKETS_PER_DOUBLING)
    if bucket >= HIST_BUCKETS - 1:
        return low, math.inf
    return low, 2 ** (bucket / BUCKETS_PER_DOUBLING)


def merge_histograms(histograms: Iterable[Sequence[int] | None]) -> list[int]:
    """Element-wise sum of trimmed histograms."""
    merged: list[int] = []
    for hist in histograms:
        if not hist:
            continue
        if len(hist) > len(merged):
            merged.extend([0] * (len(hist) - len(merged)))
        for i, n in enumerate(hist):
            merged[i] += int(n)
    return merged


def histogram_percentile(hist: Sequence[int], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of a histogram: the geometric middle of the bucket
    holding the nearest-rank value (bucket 0: 0.5 ms; the open last bucket: its low end).
    None for an empty histogram."""
    total = sum(hist)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for bucket, n in enumerate(hist):
        seen += n
        if seen >= rank:
            low, high = bucket_bounds(bucket)
            if bucket == 0:
                return 0.5
            return low if math.isinf(high) else math.sqrt(low * high)
    return None  # pragma: no cover - rank <= total


def floor_hour(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("statistics hours need timezone-aware datetimes")
    value = value.astimezone(UTC)
    return value.replace(minute=0, second=0, microsecond=0)


def window_hours(start: datetime, end: datetime) -> list[datetime]:
    """The UTC hours that ``[start, end)`` touches."""
    if end <= start:
        return []
    hours, hour = [], floor_hour(start)
    while hour < end:
        hours.append(hour)
        hour += HOUR
    return hours


def hour_ranges(hours: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Consecutive hours merged into ``[low, high)`` ranges (fewer index scans)."""
    ranges: list[tuple[datetime, datetime]] = []
    for hour in sorted({floor_hour(h) for h in hours}):
        if ranges and ranges[-1][1] == hour:
            ranges[-1] = (ranges[-1][0], hour + HOUR)
        else:
            ranges.append((hour, hour + HOUR))
    return ranges


# --- the recomputation ---------------------------------------------------------------
_EVENT_COLUMNS = ("e.event_kind, e.type, e.wished_channel AS channel, e.status, "
                  "e.created, greatest(e.created, e.scheduled) AS due, e.processing, "
                  "e.processed, e.delivery_log_id, e.recycled_from")


def utc_hour_sql(ts: str) -> str:
    """SQL: the UTC hour of a timestamptz (``date_bin``: arithmetic only, no time zone
    lookup, the same as ``date_trunc('hour', ts, 'UTC')``)."""
    return f"date_bin('1 hour', {ts}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"


def _us(later: str, earlier: str) -> str:
    """Whole microseconds between two timestamps (exact: timestamps have microsecond
    precision; integer sums do not depend on the order rows are added in, so a re-run
    writes identical rows). ``date_part`` works in float8, fast; ``round`` restores the
    integer."""
    return f"greatest(0, round(date_part('epoch', {later} - {earlier}) * 1000000))::bigint"


def _in_hours(ts: str) -> str:
    return f"{utc_hour_sql(ts)} = ANY(:hours)"


_RECOMPUTE_SQL = text(f"""
    WITH ranges AS (
        SELECT lo, hi FROM unnest(CAST(:los AS timestamptz[]), CAST(:his AS timestamptz[]))
            AS r(lo, hi)
    ), ev AS (
        -- Every archived event of the cell that belongs to one of the hours on any clock,
        -- once: the branches exclude what an earlier branch found (no de-duplication).
        -- The constant outer bounds let each index scan read only the span of the hours.
        SELECT {_EVENT_COLUMNS} FROM ranges r
        JOIN archived_event e ON e.created >= r.lo AND e.created < r.hi
        WHERE e.cell_id = :cell AND e.created >= :first AND e.created < :last
          AND NOT e.sandbox
        UNION ALL
        SELECT {_EVENT_COLUMNS} FROM ranges r
        JOIN archived_event e ON e.processed >= r.lo AND e.processed < r.hi
        WHERE e.cell_id = :cell AND e.processed >= :first AND e.processed < :last
          AND NOT {_in_hours("e.created")} AND NOT e.sandbox
        UNION ALL
        SELECT {_EVENT_COLUMNS} FROM ranges r
        JOIN archived_event e ON e.scheduled >= r.lo AND e.scheduled < r.hi
        WHERE e.cell_id = :cell AND e.scheduled >= :first AND e.scheduled < :last
          AND e.scheduled > e.created AND NOT {_in_hours("e.created")}
          AND (e.processed IS NULL OR NOT {_in_hours("e.processed")}) AND NOT e.sandbox
    ), timed AS MATERIALIZED (
        SELECT t.*, {utc_hour_sql("t.departed")} AS departed_hour
        FROM (
            SELECT ev.event_kind, ev.type, ev.channel, ev.status, ev.due,
                   {utc_hour_sql("ev.created")} AS created_hour,
                   {utc_hour_sql("ev.due")} AS due_hour,
                   (ev.status IN {_FINAL_SQL} AND ev.processed IS NOT NULL) AS final,
                   -- a final status without its time (not written by this Message Center):
                   -- received, but neither in the queue nor in the times
                   NOT (ev.status IN {_FINAL_SQL} AND ev.processed IS NULL) AS queueable,
                   {utc_hour_sql("ev.processed")} AS finished_hour,
                   greatest(ev.processed, ev.due) AS departed,
                   {_us("coalesce(ev.processing, ev.processed)", "ev.due")} AS queue_us,
                   {_us("ev.processed", "ev.due")} AS total_us,
                   CASE WHEN ev.status = 'sent' AND d.sent_at IS NOT NULL
                             AND d.sending_started IS NOT NULL
                        THEN {_us("d.sent_at", "d.sending_started")} END AS sending_us,
                   CASE WHEN ev.status = 'failed' THEN d.failure_class END AS failure_class,
                   ev.recycled_from IS NOT NULL AS recycled
            FROM ev
            -- the sending time of a sent event, the failure class of a failed one
            LEFT JOIN archived_delivery_log d
                   ON d.cell_id = :cell AND d.id = ev.delivery_log_id
        ) AS t
    ), received AS (
        SELECT created_hour AS hour, event_kind, type, channel, status, count(*) AS n
        FROM timed WHERE created_hour = ANY(:hours)
        GROUP BY 1, 2, 3, 4, 5
    ), finished AS MATERIALIZED (
        SELECT finished_hour AS hour, event_kind, type, channel, status, queue_us, total_us,
               sending_us, failure_class, recycled
        FROM timed WHERE final AND finished_hour = ANY(:hours)
    ), finished_agg AS (
        SELECT hour, event_kind, type, channel, status, count(*) AS n,
               sum(queue_us) AS queue_us, sum(total_us) AS total_us,
               count(sending_us) AS sending_n, coalesce(sum(sending_us), 0) AS sending_us
        FROM finished GROUP BY 1, 2, 3, 4, 5
    ), event_rows AS (
        INSERT INTO event_stats_hourly (hour, cell_id, event_kind, event_type, channel,
            status, received, finished, queue_us, total_us, sending_n, sending_us)
        SELECT coalesce(r.hour, f.hour), :cell, coalesce(r.event_kind, f.event_kind),
               coalesce(r.type, f.type), coalesce(r.channel, f.channel),
               coalesce(r.status, f.status), coalesce(r.n, 0), coalesce(f.n, 0),
               coalesce(f.queue_us, 0), coalesce(f.total_us, 0), coalesce(f.sending_n, 0),
               coalesce(f.sending_us, 0)
        FROM received r
        FULL JOIN finished_agg f ON (f.hour, f.event_kind, f.type, f.channel, f.status)
                                  = (r.hour, r.event_kind, r.type, r.channel, r.status)
        ORDER BY 1, 3, 4, 5, 6
        RETURNING 1
    ), moves AS (
        -- the queue: +1 when an event becomes due, -1 when it reaches its final status
        SELECT due_hour AS hour, event_kind, channel,
               floor(date_part('epoch', due - due_hour) / 60)::int AS minute, 1 AS change
        FROM timed WHERE queueable AND due_hour = ANY(:hours)
        UNION ALL
        SELECT departed_hour, event_kind, channel,
               floor(date_part('epoch', departed - departed_hour) / 60)::int, -1
        FROM timed WHERE final AND departed_hour = ANY(:hours)
    ), minute_net AS MATERIALIZED (
        SELECT hour, event_kind, channel, minute, sum(change) AS change,
               count(*) FILTER (WHERE change > 0) AS arrivals,
               count(*) FILTER (WHERE change < 0) AS departures
        FROM moves GROUP BY 1, 2, 3, 4
    ), queue_curves AS (
        SELECT g.hour, g.event_kind, g.channel, g.arrivals, g.departures,
               ARRAY(SELECT (sum(coalesce(n.change, 0)) OVER (ORDER BY s.minute))::int
                     FROM generate_series(0, 59) AS s(minute)
                     LEFT JOIN LATERAL (
                         SELECT sum(x.change) AS change FROM unnest(g.minutes, g.changes)
                             AS x(minute, change) WHERE x.minute = s.minute) AS n ON true
                     ORDER BY s.minute) AS minutes
        FROM (SELECT hour, event_kind, channel, sum(arrivals) AS arrivals,
                     sum(departures) AS departures, array_agg(minute) AS minutes,
                     array_agg(change) AS changes
              FROM minute_net GROUP BY 1, 2, 3) AS g
    ), flow_finished AS (
        SELECT hour, event_kind, channel, count(*) AS finished,
               count(*) FILTER (WHERE status = 'sent') AS sent,
               count(*) FILTER (WHERE status = 'not_taken_into_account') AS not_taken,
               count(*) FILTER (WHERE status = 'expired') AS expired,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'ignored') AS ignored,
               coalesce(sum(queue_us) FILTER (WHERE status = 'sent'), 0) AS sent_queue_us,
               coalesce(sum(total_us) FILTER (WHERE status = 'sent'), 0) AS sent_total_us,
               count(sending_us) FILTER (WHERE status = 'sent') AS sending_n,
               coalesce(sum(sending_us) FILTER (WHERE status = 'sent'), 0) AS sending_us,
               count(*) FILTER (WHERE recycled) AS recycled,
               count(*) FILTER (WHERE recycled AND status = 'sent') AS recycled_sent
        FROM finished GROUP BY 1, 2, 3
    ), flow_classes AS (
        SELECT hour, event_kind, channel, jsonb_object_agg(failure_class, n) AS classes
        FROM (SELECT hour, event_kind, channel, failure_class, count(*) AS n FROM finished
              WHERE status = 'failed' AND failure_class IS NOT NULL
              GROUP BY 1, 2, 3, 4) AS c
        GROUP BY 1, 2, 3
    ), flow_received AS (
        SELECT hour, event_kind, channel, sum(n) AS received FROM received GROUP BY 1, 2, 3
    ), hist_counts AS (
        SELECT hour, event_kind, channel, m.measure, {bucket_sql("m.us::float8 / 1000")} AS b,
               count(*) AS n
        FROM finished f,
             LATERAL (VALUES (1, f.queue_us), (2, f.sending_us), (3, f.total_us))
                 AS m(measure, us)
        WHERE f.status = 'sent' AND m.us IS NOT NULL
        GROUP BY 1, 2, 3, 4, 5
    ), hists AS (
        SELECT hour, event_kind, channel,
               max(hist) FILTER (WHERE measure = 1) AS queue_hist,
               max(hist) FILTER (WHERE measure = 2) AS sending_hist,
               max(hist) FILTER (WHERE measure = 3) AS total_hist
        FROM (SELECT g.hour, g.event_kind, g.channel, g.measure,
                     ARRAY(SELECT coalesce(sum(x.n), 0)::int
                           FROM generate_series(0, g.top) AS s(b)
                           LEFT JOIN unnest(g.bs, g.ns) AS x(b, n) ON x.b = s.b
                           GROUP BY s.b ORDER BY s.b) AS hist
              FROM (SELECT hour, event_kind, channel, measure, max(b) AS top,
                           array_agg(b) AS bs, array_agg(n) AS ns
                    FROM hist_counts GROUP BY 1, 2, 3, 4) AS g) AS h
        GROUP BY 1, 2, 3
    ), flow_keys AS (
        SELECT hour, event_kind, channel FROM flow_received
        UNION SELECT hour, event_kind, channel FROM flow_finished
        UNION SELECT hour, event_kind, channel FROM queue_curves
    ), flow_rows AS (
        INSERT INTO flow_stats_hourly (hour, cell_id, event_kind, channel, received,
            finished, sent, not_taken, expired, failed, failed_classes, ignored,
            sent_queue_us,
            sent_total_us, sending_n, sending_us, queue_hist, sending_hist, total_hist,
            arrivals, departures, queue_minutes, recycled, recycled_sent)
        SELECT k.hour, :cell, k.event_kind, k.channel, coalesce(r.received, 0),
               coalesce(f.finished, 0), coalesce(f.sent, 0), coalesce(f.not_taken, 0),
               coalesce(f.expired, 0), coalesce(f.failed, 0),
               coalesce(c.classes, '{{}}'::jsonb), coalesce(f.ignored, 0),
               coalesce(f.sent_queue_us, 0), coalesce(f.sent_total_us, 0),
               coalesce(f.sending_n, 0), coalesce(f.sending_us, 0),
               coalesce(h.queue_hist, '{{}}'), coalesce(h.sending_hist, '{{}}'),
               coalesce(h.total_hist, '{{}}'), coalesce(q.arrivals, 0),
               coalesce(q.departures, 0), coalesce(q.minutes, '{{}}'),
               coalesce(f.recycled, 0), coalesce(f.recycled_sent, 0)
        FROM flow_keys k
        LEFT JOIN flow_received r USING (hour, event_kind, channel)
        LEFT JOIN flow_finished f USING (hour, event_kind, channel)
        LEFT JOIN flow_classes c USING (hour, event_kind, channel)
        LEFT JOIN hists h USING (hour, event_kind, channel)
        LEFT JOIN queue_curves q USING (hour, event_kind, channel)
        ORDER BY k.hour, k.event_kind, k.channel
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM event_rows), (SELECT count(*) FROM flow_rows)
""")


# Sandbox traffic (issue 29): never in the tables above (the service level), counted here
# per (hour, cell, kind, channel, status): received on the reception hour, finished on the
# hour of the final status.
_SANDBOX_SQL = text(f"""
    WITH ranges AS (
        SELECT lo, hi FROM unnest(CAST(:los AS timestamptz[]), CAST(:his AS timestamptz[]))
            AS r(lo, hi)
    ), received AS (
        SELECT {utc_hour_sql("e.created")} AS hour, e.event_kind, e.wished_channel AS channel,
               e.status, count(*) AS n
        FROM ranges r
        JOIN archived_event e ON e.created >= r.lo AND e.created < r.hi
        WHERE e.cell_id = :cell AND e.sandbox AND e.created >= :first AND e.created < :last
        GROUP BY 1, 2, 3, 4
    ), finished AS (
        SELECT {utc_hour_sql("e.processed")} AS hour, e.event_kind,
               e.wished_channel AS channel, e.status, count(*) AS n
        FROM ranges r
        JOIN archived_event e ON e.processed >= r.lo AND e.processed < r.hi
        WHERE e.cell_id = :cell AND e.sandbox AND e.processed >= :first
          AND e.processed < :last AND e.status IN {_FINAL_SQL}
        GROUP BY 1, 2, 3, 4
    )
    INSERT INTO sandbox_stats_hourly (hour, cell_id, event_kind, channel, status, received,
                                      finished)
    SELECT coalesce(r.hour, f.hour), :cell, coalesce(r.event_kind, f.event_kind),
           coalesce(r.channel, f.channel), coalesce(r.status, f.status), coalesce(r.n, 0),
           coalesce(f.n, 0)
    FROM received r
    FULL JOIN finished f ON (f.hour, f.event_kind, f.channel, f.status)
                          = (r.hour, r.event_kind, r.channel, r.status)
    ORDER BY 1, 3, 4, 5
""")
_RECOMPUTED_TABLES = ("event_stats_hourly", "flow_stats_hourly", "sandbox_stats_hourly")


@dataclass(frozen=True)
class Recomputed:
    hours: int
    event_rows: int
    flow_rows: int


def recompute_hours(conn: Connection, cell_id: int, hours: Iterable[datetime]) -> Recomputed:
    """Rebuild the statistics of ``hours`` (UTC) for one cell from the archive, in the
    caller's transaction (take :func:`lock_cell` first when runs may overlap)."""
    wanted = sorted({floor_hour(h) for h in hours})
    if not wanted:
        return Recomputed(0, 0, 0)
    params = {"cell": cell_id, "hours": wanted}
    conn.execute(text("SET LOCAL work_mem = '64MB'"))  # hash aggregates stay in memory
    for table in _RECOMPUTED_TABLES:
        conn.execute(text(f"DELETE FROM {table} WHERE cell_id = :cell AND hour = ANY(:hours)"),
                     params)
    ranges = hour_ranges(wanted)
    bounds = {"los": [lo for lo, _ in ranges], "his": [hi for _, hi in ranges],
              "first": ranges[0][0], "last": ranges[-1][1]}
    event_rows, flow_rows = conn.execute(_RECOMPUTE_SQL, {**params, **bounds}).one()
    conn.execute(_SANDBOX_SQL, {"cell": cell_id, **bounds})
    return Recomputed(len(wanted), int(event_rows), int(flow_rows))


def lock_cell(conn: Connection, cell_id: int) -> None:
    """Serialise statistics work on one cell until the end of the transaction."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:cls), :cell)"),
                 {"cls": _LOCK_CLASS, "cell": cell_id})


_TAKE_DIRTY = text("""
    DELETE FROM event_stats_dirty d
    WHERE d.cell_id = :cell AND d.hour IN (
        SELECT hour FROM event_stats_dirty WHERE cell_id = :cell ORDER BY hour LIMIT :n)
    RETURNING d.hour
""")


@dataclass
class RefreshReport:
    """What :func:`refresh_statistics` did for one cell."""

    cell_id: int
    hours: int = 0
    event_rows: int = 0
    flow_rows: int = 0
    batches: int = 0
    first_hour: datetime | None = None
    last_hour: datetime | None = None
    skipped: int = 0  # marked hours older than ``not_before``, left as they are

    def summary(self) -> str:
        kept = (f"; {self.skipped} marked hour(s) before the recomputation horizon kept as "
                "they are" if self.skipped else "")
        if not self.hours:
            return f"cell {self.cell_id}: statistics up to date (no hour to recompute){kept}"
        return (f"cell {self.cell_id}: statistics of {self.hours} hour(s) recomputed "
                f"({self.first_hour:%Y-%m-%d %H:00} to {self.last_hour:%Y-%m-%d %H:00} UTC) "
                f"in {self.batches} transaction(s): {self.event_rows} event-type rows, "
                f"{self.flow_rows} flow rows{kept}")

    def as_dict(self) -> dict[str, int]:
        return {"hours": self.hours, "event_rows": self.event_rows,
                "flow_rows": self.flow_rows}


def refresh_statistics(engine: Engine, cell_id: int, *,
                       window: tuple[datetime, datetime] | None = None,
                       batch_hours: int = DEFAULT_BATCH_HOURS,
                       not_before: datetime | None = None) -> RefreshReport:
    """Recompute the hours of ``cell_id`` marked by archiving, and every hour of
    ``window`` (``[start, end)``: what a run or backfill archived), ``batch_hours`` per
    transaction, until no marked hour is left.

    ``not_before``: hours before it are never recomputed (their marks are dropped): once
    the archive of an hour has been purged (retention), its statistics are all that is
    left and a recomputation would empty them."""
    if batch_hours < 1:
        raise ValueError(f"batch_hours must be at least 1; got {batch_hours}")
    if not 0 <= cell_id <= 255:
        raise ValueError(f"cell id must be 0-255; got {cell_id}")
    floor = floor_hour(not_before) if not_before is not None else None
    extra = [h for h in (window_hours(*window) if window else [])
             if floor is None or h >= floor]
    report = RefreshReport(cell_id)
    while True:
        with engine.begin() as conn:
            lock_cell(conn, cell_id)
            hours = set(extra[:batch_hours])
            extra = extra[batch_hours:]
            room = batch_hours - len(hours)
            if room > 0:
                if floor is not None:  # marks past the horizon: dropped, counted
                    report.skipped += conn.execute(text(
                        "DELETE FROM event_stats_dirty WHERE cell_id = :cell AND hour < :floor"
                    ), {"cell": cell_id, "floor": floor}).rowcount
                hours.update(conn.execute(_TAKE_DIRTY, {"cell": cell_id, "n": room}).scalars())
            if not hours:
                break
            done = recompute_hours(conn, cell_id, hours)
        ordered = sorted(hours)
        report.hours += done.hours
        report.event_rows += done.event_rows
        report.flow_rows += done.flow_rows
        report.batches += 1
        report.first_hour = min(filter(None, (report.first_hour, ordered[0])))
        report.last_hour = max(filter(None, (report.last_hour, ordered[-1])))
    return report


# --- retention ---------------------------------------------------------------------
@dataclass(frozen=True)
class Purged:
    event_rows: int
    flow_rows: int
    carried: int  # (cell, kind, channel) series whose queue size was carried over


_PURGE_FLOW = text("""
    WITH gone AS (
        DELETE FROM flow_stats_hourly WHERE hour < :before
        RETURNING cell_id, event_kind, channel, arrivals, departures
    ), carried AS (
        -- the queue size at ``before`` of each series, as one row before it: reports
        -- sum arrivals - departures over every earlier hour
        INSERT INTO flow_stats_hourly (hour, cell_id, event_kind, channel, arrivals)
        SELECT CAST(:before AS timestamptz) - interval '1 hour', cell_id, event_kind,
               channel, sum(arrivals - departures)
        FROM gone GROUP BY cell_id, event_kind, channel
        HAVING sum(arrivals - departures) <> 0
        ORDER BY 2, 3, 4
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM carried)
""")


def purge_statistics(conn: Connection, before: datetime) -> Purged:
    """Delete the statistics of the hours before ``before`` (retention), in the caller's
    transaction. The queue size still open at ``before`` is carried over in one row per
    (cell, kind, channel) at the hour before it (zero counts, ``arrivals`` = that size),
    so the queue sizes the reports rebuild for later hours stay right. Idempotent: a
    second purge folds the carried row again into an identical one."""
    before = floor_hour(before)
    event_rows = conn.execute(text("DELETE FROM event_stats_hourly WHERE hour < :before"),
                              {"before": before}).rowcount
    for table in ("tracking_stats_hourly", "sandbox_stats_hourly"):
        conn.execute(text(f"DELETE FROM {table} WHERE hour < :before"), {"before": before})
    flow_rows, carried = conn.execute(_PURGE_FLOW, {"before": before}).one()
    return Purged(int(event_rows), int(flow_rows) - int(carried), int(carried))
