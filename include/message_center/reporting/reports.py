"""ACC's Message Center reports, computed from the hourly statistics on the control
instance (:mod:`.statistics`), and the list of the events behind one error cause.

Every report takes a SQLAlchemy connection to the control database and a
:class:`ReportFilter` (period, execution instances by cell id, channel, event kind,
granularity), reads only the statistics rows of the period (the ``hour``-first primary
keys), and returns a frozen dataclass whose ``to_dict()`` is JSON-ready (camelCase keys,
ISO-8601 UTC times, durations in milliseconds, rates as fractions).

* :func:`service_level` - incoming events (by reception time) and outgoing messages (sent,
  by the time they were sent) per bucket, the average sending time, and the error rate
  split by cause (routing error = *not taken into account*, *expired*, *delivery failed*,
  *ignored by the delivery*), each cause over the events that reached a final status in
  the bucket.
* :func:`processing_time` - over the successfully processed (sent) events of a queue
  (real-time by default), like ACC: average time in the queue, sending time and total
  processing time, percentiles from the merged histograms, and the minimum, maximum and
  average number of queued events (per-minute samples).
* :func:`event_history` / :func:`history_csv` - per event type and bucket, the events
  received and their current status.
* :func:`error_events` - the archived events behind one error cause, newest first, keyset
  paged on the partial index ``archived_event_errors_idx``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, text

from message_center import channel as channels
from message_center.ids import to_public
from message_center.reporting.statistics import HOUR, histogram_percentile
from message_center.reporting.thresholds import Indicator, Thresholds
from message_center.statuses import (
    ERROR_EVENT,
    EVENT_KINDS,
    FAILURE_CLASS_LABELS,
    FAILURE_CLASSES,
    UNCLASSIFIED_LABEL,
    EventStatus,
)

GRANULARITIES = ("hour", "day")
AUTO_HOURLY_UP_TO = timedelta(days=7)
"""Periods up to this long are shown per hour, longer ones per day (``granularity=None``)."""
MAX_PERIOD = timedelta(days=400)
MAX_BUCKETS = 24 * 31
"""An explicit ``granularity="hour"`` is refused past 31 days (a chart of 744 bars)."""
ERROR_CAUSES: tuple[str, ...] = tuple(map(str, ERROR_EVENT))  # in the reports' order
ERROR_CAUSE_LABELS = {
    "not_taken_into_account": "Routing errors (event not taken into account)",
    "expired": "Event expired",
    "failed": "Delivery failed",
    "ignored": "Ignored by the delivery",
}
_FLOW_CAUSE_COLUMNS = {"not_taken_into_account": "not_taken", "expired": "expired",
                       "failed": "failed", "ignored": "ignored"}
HISTORY_STATUSES = tuple(s.value for s in EventStatus)
MAX_PAGE = 500
PERCENTILES = (50, 90, 99)


class ReportFilterError(ValueError):
    """Bad report input; ``field`` names the filter field (query parameter)."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _floor_hour(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _ceil_hour(value: datetime) -> datetime:
    floored = _floor_hour(value)
    return floored if floored == value.astimezone(UTC) else floored + HOUR


# --- the filter ------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportFilter:
    """What a report covers. ``start``/``end`` (aware) are widened to whole UTC hours;
    ``cells=None``: every execution instance; ``channel=None``: both channels;
    ``kind=None``: both queues (:func:`processing_time` defaults to the real-time one);
    ``granularity=None``: per hour up to 7 days, per day beyond (days start at midnight
    in ``timezone``)."""

    start: datetime
    end: datetime
    cells: tuple[int, ...] | None = None
    channel: str | None = None
    granularity: str | None = None
    timezone: str = "UTC"
    kind: str | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, datetime):
                raise ReportFilterError(name, f"must be a datetime; got {value!r}")
            if value.tzinfo is None:
                raise ReportFilterError(name, "must be timezone-aware")
        start, end = _floor_hour(self.start), _ceil_hour(self.end)
        if end <= start:
            raise ReportFilterError("end", f"must be after start ({_iso(self.start)}); "
                                    f"got {_iso(self.end)}")
        if end - start > MAX_PERIOD:
            raise ReportFilterError("end", f"the period is at most {MAX_PERIOD.days} days")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        if self.cells is not None:
            cells = tuple(sorted(set(self.cells)))
            for cell in cells:
                if isinstance(cell, bool) or not isinstance(cell, int) or not 0 <= cell <= 255:
                    raise ReportFilterError("cells", f"cell ids are 0-255; got {cell!r}")
            object.__setattr__(self, "cells", cells)
        if self.channel is not None and self.channel not in channels.names():
            raise ReportFilterError("channel", f"expected one of "
                                    f"{', '.join(channels.names())} or all; "
                                    f"got {self.channel!r}")
        if self.kind is not None and self.kind not in EVENT_KINDS:
            raise ReportFilterError("kind", f"expected one of {', '.join(EVENT_KINDS)} or all; "
                                    f"got {self.kind!r}")
        if self.granularity is not None and self.granularity not in GRANULARITIES:
            raise ReportFilterError("granularity", f"expected hour, day or auto; got "
                                    f"{self.granularity!r}")
        if self.granularity == "hour" and (end - start) / HOUR > MAX_BUCKETS:
            raise ReportFilterError("granularity", "per hour up to 31 days; use day")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ReportFilterError("tz", f"unknown time zone {self.timezone!r}") from None

    @property
    def bucket(self) -> str:
        """The granularity used: the given one, or hour up to 7 days and day beyond."""
        if self.granularity:
            return self.granularity
        return "hour" if self.end - self.start <= AUTO_HOURLY_UP_TO else "day"

    @classmethod
    def last(cls, period: str, *, now: datetime | None = None, **kwargs: Any) -> ReportFilter:
        """The last ``period`` ("24h", "7d", "30d", "<n>h", "<n>d") up to the end of the
        current hour."""
        end = _ceil_hour(now or datetime.now(UTC))
        return cls(start=end - parse_period(period), end=end, **kwargs)

    def hours(self) -> list[datetime]:
        count = int((self.end - self.start) / HOUR)
        return [self.start + i * HOUR for i in range(count)]

    def bucket_of(self, hour: datetime) -> datetime:
        if self.bucket == "hour":
            return hour
        local = hour.astimezone(ZoneInfo(self.timezone))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        # A local midnight that does not exist (DST) falls back to the earliest valid time.
        return midnight.astimezone(UTC)

    def buckets(self) -> list[datetime]:
        seen: dict[datetime, None] = {}
        for hour in self.hours():
            seen.setdefault(self.bucket_of(hour), None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "end": _iso(self.end),
                "cells": list(self.cells) if self.cells is not None else None,
                "channel": self.channel, "kind": self.kind, "granularity": self.bucket,
                "timezone": self.timezone}

    # SQL helpers ------------------------------------------------------------------
    def _where(self, table_kind: bool = True, *, before: bool = False
               ) -> tuple[str, dict[str, Any]]:
        """SQL conditions on a statistics table: the period's hours (``before``: every
        hour before the period), the instances, the channel and the kind."""
        clauses = ["hour < :start"] if before else ["hour >= :start", "hour < :end"]
        params: dict[str, Any] = {"start": self.start, "end": self.end, "tz": self.timezone}
        if self.cells is not None:
            clauses.append("cell_id = ANY(:cells)")
            params["cells"] = list(self.cells)
        if self.channel is not None:
            clauses.append("channel = :channel")
            params["channel"] = self.channel
        if table_kind and self.kind is not None:
            clauses.append("event_kind = :kind")
            params["kind"] = self.kind
        return " AND ".join(clauses), params

    def _bucket_sql(self) -> str:
        if self.bucket == "hour":
            return "hour"
        if self.timezone == "UTC":  # arithmetic only, no time zone rules per row
            return "date_bin('1 day', hour, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
        return "date_trunc('day', hour, :tz)"


_PERIOD = re.compile(r"^\s*(\d{1,4})\s*([hd])\s*$", re.IGNORECASE)


def parse_period(period: str) -> timedelta:
    match = _PERIOD.match(period or "")
    if not match:
        raise ReportFilterError("period", f"expected 24h, 7d, 30d, <n>h or <n>d; got {period!r}")
    count, unit = int(match.group(1)), match.group(2).lower()
    value = timedelta(hours=count) if unit == "h" else timedelta(days=count)
    if not timedelta(hours=1) <= value <= MAX_PERIOD:
        raise ReportFilterError("period", f"between 1h and {MAX_PERIOD.days}d; got {period!r}")
    return value


def _parse_time(name: str, raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ReportFilterError(name, f"expected an ISO 8601 date/time; got {raw!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_FILTER_KEYS = {"period", "start", "end", "cells", "channel", "kind", "granularity", "tz"}


def parse_filter(params: Mapping[str, str], *, now: datetime | None = None,
                 ignore_unknown: bool = True) -> ReportFilter:
    """A :class:`ReportFilter` from query parameters (see ``/work/coord/ui-interface.md``):
    ``period`` (24h), ``start``, ``end``, ``cells`` (comma list or all), ``channel``,
    ``kind``, ``granularity`` (hour|day|auto), ``tz``. Bad input raises
    :class:`ReportFilterError` naming the parameter."""
    if not ignore_unknown:
        unknown = sorted(set(params) - _FILTER_KEYS)
        if unknown:
            raise ReportFilterError(unknown[0], "unknown filter parameter")
    now = now or datetime.now(UTC)

    def value(key: str) -> str:
        raw = params.get(key)
        return "" if raw is None else str(raw).strip()

    end = _parse_time("end", value("end")) if value("end") else now
    if value("start"):
        start = _parse_time("start", value("start"))
    else:
        end = _ceil_hour(end)
        start = end - parse_period(value("period") or "24h")
    cells: tuple[int, ...] | None = None
    if value("cells") and value("cells").lower() != "all":
        try:
            cells = tuple(int(part) for part in value("cells").split(",") if part.strip())
        except ValueError:
            raise ReportFilterError("cells", f"expected cell ids like 0,1 or all; got "
                                    f"{value('cells')!r}") from None

    def choice(key: str) -> str | None:
        raw = value(key).lower()
        return None if raw in ("", "all", "auto") else raw

    return ReportFilter(start=start, end=end, cells=cells, channel=choice("channel"),
                        kind=choice("kind"), granularity=choice("granularity"),
                        timezone=value("tz") or "UTC")


def _roomy(conn: Connection) -> None:
    """Let this transaction's grouping run in memory (hash aggregates instead of sorts
    spilled to disk): ``work_mem`` for the rest of the caller's transaction only."""
    conn.execute(text("SELECT set_config('work_mem', '32MB', true)"))


def _add(total: list[int], more: list[int] | None) -> list[int]:
    """Element-wise sum of two trimmed histograms (C speed: ``map(operator.add, ...)``)."""
    if not more:
        return total
    if len(more) > len(total):
        total, more = list(more), total
    return [*map(operator.add, total, more), *total[len(more):]]


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _avg(total: float, count: float) -> float | None:
    return total / count if count else None


# --- service level -------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceLevelBucket:
    start: datetime
    incoming: int = 0
    processed: int = 0
    sent: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_CAUSES, 0))
    sending_ms: float = 0.0
    sending_n: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float | None:
        return _ratio(self.error_count, self.processed)

    @property
    def avg_sending_ms(self) -> float | None:
        return _avg(self.sending_ms, self.sending_n)

    def to_dict(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "incoming": self.incoming,
                "processed": self.processed, "sent": self.sent, "errors": dict(self.errors),
                "errorRate": self.error_rate, "avgSendingMs": self.avg_sending_ms}


@dataclass(frozen=True)
class ServiceLevelReport:
    filter: ReportFilter
    buckets: list[ServiceLevelBucket]
    totals: ServiceLevelBucket
    indicators: dict[str, Indicator]
    #: The period's failed events by their delivery log's failure class.
    failed_classes: dict[str, int] = field(default_factory=dict)
    #: Finished events that were recycled from another channel (the template's
    #: ``on_failure``), per (fallback) channel: ``{"email": {"finished": 3, "sent": 2}}``.
    recycled: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Sandbox traffic of the period (issue 29), never in the figures above: events
    #: received, and finished per final status (``{"sent": 12, "failed": 1}``).
    sandbox_received: int = 0
    sandbox_finished: dict[str, int] = field(default_factory=dict)

    def failure_classes(self) -> list[dict[str, Any]]:
        """*Delivery failed* split by failure class (every class, in order), then the
        failed events without one (``failureClass`` None)."""
        processed = self.totals.processed
        out = [{"failureClass": c, "label": FAILURE_CLASS_LABELS[c],
                "count": self.failed_classes.get(c, 0),
                "rate": _ratio(self.failed_classes.get(c, 0), processed)}
               for c in FAILURE_CLASSES]
        rest = max(0, self.totals.errors["failed"] - sum(self.failed_classes.values()))
        out.append({"failureClass": None, "label": UNCLASSIFIED_LABEL, "count": rest,
                    "rate": _ratio(rest, processed)})
        return out

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals.to_dict()
        totals.pop("start")
        causes = [{"cause": cause, "label": ERROR_CAUSE_LABELS[cause],
                   "count": self.totals.errors[cause],
                   "rate": _ratio(self.totals.errors[cause], self.totals.processed)}
                  for cause in ERROR_CAUSES]
        for cause in causes:
            if cause["cause"] == "failed":
                cause["failureClasses"] = self.failure_classes()
        return {
            "filter": self.filter.to_dict(),
            "buckets": [b.to_dict() for b in self.buckets],
            "totals": totals,
            "errorCauses": causes,
            "indicators": {name: ind.to_dict() for name, ind in self.indicators.items()},
            "recycled": {"finished": sum(r["finished"] for r in self.recycled.values()),
                         "sent": sum(r["sent"] for r in self.recycled.values()),
                         "byChannel": self.recycled},
            "sandbox": {"received": self.sandbox_received,
                        "finished": sum(self.sandbox_finished.values()),
                        "byStatus": dict(self.sandbox_finished)},
        }


def service_level(conn: Connection, f: ReportFilter,
                  thresholds: Thresholds | None = None) -> ServiceLevelReport:
    """Incoming / outgoing / errors per bucket of ``f`` (see the module doc)."""
    thresholds = thresholds or Thresholds()
    where, params = f._where()
    rows = conn.execute(text(f"""
        SELECT {f._bucket_sql()} AS bucket, sum(received), sum(finished), sum(sent),
               sum(not_taken), sum(expired), sum(failed), sum(ignored),
               sum(sending_us) / 1000.0, sum(sending_n)
        FROM flow_stats_hourly WHERE {where} GROUP BY 1
    """), params).all()
    found = {row[0]: row for row in rows}
    buckets = []
    for start in f.buckets():
        row = found.get(start)
        if row is None:
            buckets.append(ServiceLevelBucket(start))
            continue
        buckets.append(ServiceLevelBucket(
            start, incoming=int(row[1]), processed=int(row[2]), sent=int(row[3]),
            errors={"not_taken_into_account": int(row[4]), "expired": int(row[5]),
                    "failed": int(row[6]), "ignored": int(row[7])},
            sending_ms=float(row[8]), sending_n=int(row[9])))
    totals = ServiceLevelBucket(
        f.start, incoming=sum(b.incoming for b in buckets),
        processed=sum(b.processed for b in buckets), sent=sum(b.sent for b in buckets),
        errors={c: sum(b.errors[c] for b in buckets) for c in ERROR_CAUSES},
        sending_ms=sum(b.sending_ms for b in buckets),
        sending_n=sum(b.sending_n for b in buckets))
    indicators = {"errorRate": Indicator.of(totals.error_rate, thresholds.error_rate),
                  "avgSendingMs": Indicator.of(totals.avg_sending_ms,
                                               thresholds.avg_sending_ms)}
    classes = conn.execute(text(f"""
        SELECT c.key, sum(c.value::bigint)
        FROM flow_stats_hourly, jsonb_each_text(failed_classes) AS c
        WHERE {where} AND failed > 0 GROUP BY 1
    """), params).all()
    recycled = conn.execute(text(f"""
        SELECT channel, sum(recycled), sum(recycled_sent)
        FROM flow_stats_hourly WHERE {where} AND recycled > 0 GROUP BY 1 ORDER BY 1
    """), params).all()
    sandbox = conn.execute(text(f"""
        SELECT status, sum(received), sum(finished)
        FROM sandbox_stats_hourly WHERE {where} GROUP BY 1 ORDER BY 1
    """), params).all()
    return ServiceLevelReport(f, buckets, totals, indicators,
                              {key: int(n) for key, n in classes},
                              {channel: {"finished": int(n), "sent": int(sent)}
                               for channel, n, sent in recycled},
                              sandbox_received=sum(int(r) for _, r, _ in sandbox),
                              sandbox_finished={status: int(n) for status, _, n in sandbox
                                                if n})


# --- processing time -----------------------------------------------------------------
@dataclass(frozen=True)
class ProcessingBucket:
    start: datetime
    sent: int = 0
    queue_ms: float = 0.0
    total_ms: float = 0.0
    sending_ms: float = 0.0
    sending_n: int = 0
    queued_min: int | None = None
    queued_max: int | None = None
    queued_avg: float | None = None

    @property
    def avg_queue_ms(self) -> float | None:
        return _avg(self.queue_ms, self.sent)

    @property
    def avg_total_ms(self) -> float | None:
        return _avg(self.total_ms, self.sent)

    @property
    def avg_sending_ms(self) -> float | None:
        return _avg(self.sending_ms, self.sending_n)

    def to_dict(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "sent": self.sent,
                "avgQueueMs": self.avg_queue_ms, "avgSendingMs": self.avg_sending_ms,
                "avgTotalMs": self.avg_total_ms, "queuedMin": self.queued_min,
                "queuedMax": self.queued_max, "queuedAvg": self.queued_avg}


@dataclass(frozen=True)
class ProcessingTimeReport:
    filter: ReportFilter
    kind: str
    buckets: list[ProcessingBucket]
    totals: ProcessingBucket
    percentiles: dict[str, dict[str, float | None]]
    indicators: dict[str, Indicator]

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals.to_dict()
        totals.pop("start")
        totals["percentiles"] = self.percentiles
        return {"filter": self.filter.to_dict(), "kind": self.kind,
                "buckets": [b.to_dict() for b in self.buckets], "totals": totals,
                "indicators": {name: ind.to_dict() for name, ind in self.indicators.items()}}


def _queue_samples(conn: Connection, f: ReportFilter, kind: str,
                   now: datetime) -> dict[datetime, list[int]]:
    """Queue size at the end of every minute of every hour of ``f`` up to ``now``, summed
    over the selected instances and channels (see :mod:`.statistics`)."""
    fk = replace(f, kind=kind)
    where, params = fk._where()
    where_before, _ = fk._where(before=True)
    base = conn.execute(text(
        f"SELECT coalesce(sum(arrivals - departures), 0) FROM flow_stats_hourly "
        f"WHERE {where_before}"), params).scalar_one()
    rows = conn.execute(text(f"""
        SELECT hour, arrivals - departures, queue_minutes FROM flow_stats_hourly
        WHERE {where}
    """), params).all()
    net: dict[datetime, int] = {}
    curves: dict[datetime, list[int]] = {}
    for hour, change, minutes in rows:
        net[hour] = net.get(hour, 0) + int(change)
        if minutes:
            curves[hour] = list(map(operator.add, curves.get(hour, [0] * 60), minutes[:60]))
    samples: dict[datetime, list[int]] = {}
    level = int(base)
    for hour in f.hours():
        if hour >= now:
            break
        curve = curves.get(hour)
        minutes = min(60, int((now - hour).total_seconds() // 60)) or 1
        samples[hour] = ([level + curve[m] for m in range(minutes)] if curve
                         else [level] * minutes)
        level += net.get(hour, 0)
    return samples


def processing_time(conn: Connection, f: ReportFilter, thresholds: Thresholds | None = None,
                    *, now: datetime | None = None) -> ProcessingTimeReport:
    """Times of the sent events and queue sizes of one queue (``f.kind``, default
    real-time) per bucket of ``f``."""
    thresholds = thresholds or Thresholds()
    kind = f.kind or "rt"
    now = now or datetime.now(UTC)
    fk = replace(f, kind=kind)
    where, params = fk._where()
    rows = conn.execute(text(f"""
        SELECT {f._bucket_sql()} AS bucket, sum(sent), sum(sent_queue_us) / 1000.0,
               sum(sent_total_us) / 1000.0, sum(sending_us) / 1000.0, sum(sending_n)
        FROM flow_stats_hourly WHERE {where} GROUP BY 1
    """), params).all()
    found = {row[0]: row for row in rows}
    # Histograms are merged here: summing a few thousand short arrays in Python is
    # several times cheaper than unnesting them into rows in SQL.
    merged: dict[str, list[int]] = {"queueMs": [], "sendingMs": [], "totalMs": []}
    for row in conn.execute(text(f"""
        SELECT queue_hist, sending_hist, total_hist FROM flow_stats_hourly
        WHERE {where} AND sent > 0
    """), params):
        for measure, hist in zip(merged, row, strict=True):
            merged[measure] = _add(merged[measure], hist)
    percentiles = {measure: {f"p{q}": histogram_percentile(hist, q) for q in PERCENTILES}
                   for measure, hist in merged.items()}
    samples = _queue_samples(conn, f, kind, now)
    by_bucket: dict[datetime, list[int]] = {}
    for hour, values in samples.items():
        by_bucket.setdefault(f.bucket_of(hour), []).extend(values)

    def queue_figures(values: list[int]) -> dict[str, Any]:
        if not values:
            return {"queued_min": None, "queued_max": None, "queued_avg": None}
        return {"queued_min": min(values), "queued_max": max(values),
                "queued_avg": sum(values) / len(values)}

    buckets = []
    for start in f.buckets():
        row = found.get(start)
        figures = queue_figures(by_bucket.get(start, []))
        if row is None:
            buckets.append(ProcessingBucket(start, **figures))
            continue
        buckets.append(ProcessingBucket(start, sent=int(row[1]), queue_ms=float(row[2]),
                                        total_ms=float(row[3]), sending_ms=float(row[4]),
                                        sending_n=int(row[5]), **figures))
    every_sample = [v for values in samples.values() for v in values]
    totals = ProcessingBucket(
        f.start, sent=sum(b.sent for b in buckets), queue_ms=sum(b.queue_ms for b in buckets),
        total_ms=sum(b.total_ms for b in buckets),
        sending_ms=sum(b.sending_ms for b in buckets),
        sending_n=sum(b.sending_n for b in buckets), **queue_figures(every_sample))
    indicators = {
        "avgQueueMs": Indicator.of(totals.avg_queue_ms, thresholds.avg_queue_ms),
        "avgSendingMs": Indicator.of(totals.avg_sending_ms, thresholds.avg_sending_ms),
        "avgTotalMs": Indicator.of(totals.avg_total_ms, thresholds.avg_total_ms),
        "queuedMax": Indicator.of(totals.queued_max, thresholds.queue_size),
    }
    return ProcessingTimeReport(fk, kind, buckets, totals, percentiles, indicators)


# --- event history -------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryRow:
    start: datetime | None  # None: the total of the period
    event_type: str
    counts: dict[str, int]

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"eventType": self.event_type, "events": self.events,
                               "counts": dict(self.counts)}
        if self.start is not None:
            out = {"start": _iso(self.start), **out}
        return out


@dataclass(frozen=True)
class HistoryReport:
    filter: ReportFilter
    rows: list[HistoryRow]
    types: list[HistoryRow]

    def to_dict(self) -> dict[str, Any]:
        return {"filter": self.filter.to_dict(), "statuses": list(HISTORY_STATUSES),
                "statusLabels": {s.value: s.label for s in EventStatus},
                "rows": [r.to_dict() for r in self.rows],
                "types": [t.to_dict() for t in self.types]}


def event_history(conn: Connection, f: ReportFilter) -> HistoryReport:
    """Per bucket and event type, the events received and their current status."""
    where, params = f._where()
    _roomy(conn)
    rows = conn.execute(text(f"""
        SELECT {f._bucket_sql()} AS bucket, event_type, status, sum(received)
        FROM event_stats_hourly WHERE {where} AND received > 0
        GROUP BY 1, 2, 3 ORDER BY 1, 2
    """), params).all()
    cells: dict[tuple[datetime, str], dict[str, int]] = {}
    totals: dict[str, dict[str, int]] = {}
    for bucket, event_type, status, count in rows:
        for counts in (cells.setdefault((bucket, event_type), dict.fromkeys(HISTORY_STATUSES, 0)),
                       totals.setdefault(event_type, dict.fromkeys(HISTORY_STATUSES, 0))):
            counts[status] = counts.get(status, 0) + int(count)
    history = [HistoryRow(bucket, event_type, counts)
               for (bucket, event_type), counts in sorted(cells.items())]
    types = sorted((HistoryRow(None, t, c) for t, c in totals.items()),
                   key=lambda r: (-r.events, r.event_type))
    return HistoryReport(f, history, types)


def _csv_text(value: str) -> str:
    """Event types come from the pushing applications: one that starts like a formula
    (``=``, ``+``, ``-``, ``@``) is quoted so a spreadsheet shows it as text."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def history_csv(report: HistoryReport) -> str:
    """The history as CSV (RFC 4180, ``\\r\\n``): one line per (period, event type)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["period_start", "event_type", "events", *HISTORY_STATUSES])
    for row in report.rows:
        writer.writerow([_iso(row.start), _csv_text(row.event_type), row.events,
                         *(row.counts.get(s, 0) for s in HISTORY_STATUSES)])
    return out.getvalue()


# --- the events behind one error cause -----------------------------------------------
@dataclass(frozen=True)
class EventPage:
    cause: str
    limit: int
    items: list[dict[str, Any]]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"cause": self.cause, "label": EventStatus(self.cause).label,
                "limit": self.limit, "items": self.items, "nextCursor": self.next_cursor}


def _encode_cursor(processed: datetime, cell_id: int, stored_id: int) -> str:
    raw = json.dumps([processed.astimezone(UTC).isoformat(), cell_id, stored_id],
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        processed, cell_id, stored_id = json.loads(raw)
        at = datetime.fromisoformat(processed)
        if at.tzinfo is None or not isinstance(cell_id, int) or not isinstance(stored_id, int):
            raise ValueError
        return at, cell_id, stored_id
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ReportFilterError("cursor", "not a cursor returned by this list") from None


def error_events(conn: Connection, f: ReportFilter, cause: str, *, limit: int = 50,
                 cursor: str | None = None) -> EventPage:
    """The archived events whose final status is ``cause`` (one of :data:`ERROR_CAUSES`),
    reached in ``[f.start, f.end)``, newest first; ``cursor``: the previous page's
    ``next_cursor``."""
    if cause not in ERROR_CAUSES:
        raise ReportFilterError("cause", f"expected one of {', '.join(ERROR_CAUSES)}; "
                                f"got {cause!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ReportFilterError("limit", f"between 1 and {MAX_PAGE}; got {limit!r}")
    clauses = ["status = :cause", "processed >= :start", "processed < :end",
               "NOT sandbox"]  # sandbox traffic is not in the counts drilled into
    params: dict[str, Any] = {"cause": cause, "start": f.start, "end": f.end,
                              "n": limit + 1}
    if f.cells is not None:
        clauses.append("cell_id = ANY(:cells)")
        params["cells"] = list(f.cells)
    if f.channel is not None:
        clauses.append("wished_channel = :channel")
        params["channel"] = f.channel
    if f.kind is not None:
        clauses.append("event_kind = :kind")
        params["kind"] = f.kind
    if cursor:
        at, cell_id, stored_id = _decode_cursor(cursor)
        clauses.append("(processed, cell_id, id) < (:at, :cell, :id)")
        params.update(at=at, cell=cell_id, id=stored_id)
    rows = conn.execute(text(f"""
        SELECT cell_id, id, event_kind, type, wished_channel, email, mobile_phone, address,
               external_id, status, error_reason, created, processed,
               (SELECT d.failure_class FROM archived_delivery_log d
                WHERE d.cell_id = e.cell_id AND d.id = e.delivery_log_id) AS failure_class
        FROM archived_event e WHERE {" AND ".join(clauses)}
        ORDER BY processed DESC, cell_id DESC, id DESC LIMIT :n
    """), params).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{"id": to_public(r.id), "cellId": r.cell_id, "kind": r.event_kind,
              "type": r.type, "channel": r.wished_channel, "email": r.email,
              "mobilePhone": r.mobile_phone, "address": channels.address_of(r._mapping),
              "externalId": r.external_id,
              "status": r.status, "statusLabel": EventStatus(r.status).label,
              "errorReason": r.error_reason, "failureClass": r.failure_class,
              "failureClassLabel": (FAILURE_CLASS_LABELS.get(r.failure_class)
                                    if r.failure_class else None),
              "created": _iso(r.created),
              "processed": _iso(r.processed)} for r in rows]
    next_cursor = (_encode_cursor(rows[-1].processed, rows[-1].cell_id, rows[-1].id)
                   if more and rows else None)
    return EventPage(cause, limit, items, next_cursor)

