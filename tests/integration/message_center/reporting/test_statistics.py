"""Hourly event statistics, built from the archive by the archiving runs: real events
pushed into the second execution instance (cell 1), processed by the real processing code
with a real SMTP server, archived, and their statistics compared with figures computed
directly from the execution database. Re-runs and backfills rebuild identical rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from processing_factory import SMS_TEMPLATE, insert_events, publish_templates, quarantine
from sqlalchemy import Engine, text

from message_center.archiving import archive_window
from message_center.delivery.channels import Channels
from message_center.delivery.sms import SmsSettings
from message_center.delivery.smtp import SmtpSettings
from message_center.ids import NEXT_ID_SQL
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.reporting.statistics import (
    HIST_BUCKETS,
    bucket_bounds,
    bucket_of,
    bucket_sql,
    histogram_percentile,
    hour_ranges,
    merge_histograms,
    recompute_hours,
    refresh_statistics,
    window_hours,
)
from message_center.status_sync import sync_event_statuses

CELL = 1  # execution2: no processing DAG of a running test stack touches it
FAST = ProcessingSettings(shards=2, delivery_chunk=5, retry_backoff_seconds=0,
                          retry_backoff_max_seconds=0, max_tries=2)
FINAL = {"sent", "ignored", "failed", "not_taken_into_account", "expired"}


@pytest.fixture
def channels(test_deployment, sms_sink):
    with Channels(SmtpSettings(port=test_deployment.smtp_port),
                  SmsSettings(base_url=sms_sink.url, sender="Shop"), kind="batch") as chans:
        yield chans


def process(engine: Engine, channels: Channels, kind: str, *, copy: bool = True) -> None:
    for claim in split_queue(engine, kind, FAST):
        deliver_shard(engine, claim, FAST, channels, copy_status=kind == "rt")
    if copy:
        sync_event_statuses(engine)


def traffic(engine: Engine, smtp_sink, channels) -> None:
    """A bit of everything: sent (both channels, both queues), ignored (quarantine, no
    address), failed (550), not taken into account, expired, still pending (scheduled)."""
    publish_templates(engine)  # ORDER by e-mail
    publish_templates(engine, SMS_TEMPLATE)  # OTP by SMS
    insert_events(engine, "rt", 6)
    insert_events(engine, "rt", 2, type="OTP", email=None, mobile_phone="+3361234567{n}",
                  wished_channel="sms", ctx={"code": "12{n}"})
    insert_events(engine, "rt", 1, email="q@example.test")
    insert_events(engine, "rt", 1, type="UNKNOWN")
    insert_events(engine, "batch", 4)
    insert_events(engine, "batch", 1, email="gone@example.test")
    insert_events(engine, "batch", 1, email=None)
    insert_events(engine, "batch", 1, expiration="2001-01-01T00:00:00Z")
    insert_events(engine, "batch", 1, scheduled="2999-01-01T00:00:00Z")
    quarantine(engine, "q@example.test")
    smtp_sink.script("gone@example.test", "always 550 5.1.1 no such user")
    process(engine, channels, "rt")
    process(engine, channels, "batch")


def hour(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def us(later: datetime, earlier: datetime) -> int:
    delta = later - earlier
    return max(0, (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def expected_from_source(engine: Engine) -> dict[tuple, list[int]]:
    """What ``event_stats_hourly`` must hold, computed from the execution database:
    (hour, kind, type, channel, status) -> [received, finished, queue, total, sending_n,
    sending] (times in microseconds)."""
    rows: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    with engine.connect() as conn:
        for kind in ("rt", "batch"):
            events = conn.execute(text(f"""
                SELECT e.type, e.wished_channel, e.status, e.created, e.scheduled,
                       e.processing, e.processed, d.sending_started, d.sent_at
                FROM {kind}_event e
                LEFT JOIN delivery_log d ON d.id = e.delivery_log_id""")).all()
            for t, channel, status, created, scheduled, processing, processed, started, \
                    sent_at in events:
                rows[(hour(created), kind, t, channel, status)][0] += 1
                if status in FINAL:
                    due = max(created, scheduled) if scheduled else created
                    row = rows[(hour(processed), kind, t, channel, status)]
                    row[1] += 1
                    row[2] += us(processing or processed, due)
                    row[3] += us(processed, due)
                    if status == "sent" and sent_at and started:
                        row[4] += 1
                        row[5] += us(sent_at, started)
    return dict(rows)


def event_stats(control: Engine, cell: int = CELL) -> dict[tuple, list[int]]:
    with control.connect() as conn:
        return {(r.hour, r.event_kind, r.event_type, r.channel, r.status):
                [r.received, r.finished, r.queue_us, r.total_us, r.sending_n, r.sending_us]
                for r in conn.execute(text(
                    "SELECT * FROM event_stats_hourly WHERE cell_id = :c"), {"c": cell})}


def tables(control: Engine) -> list[list[tuple]]:
    with control.connect() as conn:
        return [[tuple(r) for r in conn.execute(text(
            f"SELECT * FROM {table} ORDER BY hour, cell_id, event_kind, channel"
            + (", event_type, status" if table == "event_stats_hourly" else "")))]
            for table in ("event_stats_hourly", "flow_stats_hourly")]


def assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, values in expected.items():
        assert actual[key] == values, key


def archive_and_refresh(source: Engine, control: Engine, start: datetime, end: datetime,
                        **kwargs):
    archive_window(source, control, CELL, start, end, **kwargs)
    return refresh_statistics(control, CELL, window=(start, end))


def test_statistics_match_the_events_and_rebuild_identically(
        execution2_db, control_db, smtp_sink, channels):
    start = datetime.now(UTC) - timedelta(minutes=5)
    traffic(execution2_db, smtp_sink, channels)
    end = datetime.now(UTC) + timedelta(seconds=1)
    report = archive_and_refresh(execution2_db, control_db, start, end)
    assert report.hours >= 1 and report.event_rows > 0

    expected = expected_from_source(execution2_db)
    assert_same(event_stats(control_db), expected)
    statuses = Counter()
    for (_, _, _, _, status), values in expected.items():
        statuses[status] += values[0]
    assert statuses == {"sent": 12, "ignored": 2, "failed": 1, "not_taken_into_account": 1,
                        "expired": 1, "pending": 1}

    with control_db.connect() as conn:
        flow = conn.execute(text("""
            SELECT sum(received), sum(finished), sum(sent), sum(not_taken), sum(expired),
                   sum(failed), sum(ignored), sum(sending_n), sum(arrivals) - sum(departures)
            FROM flow_stats_hourly WHERE cell_id = :c"""), {"c": CELL}).one()
        hists = conn.execute(text(
            "SELECT queue_hist, sending_hist, total_hist FROM flow_stats_hourly "
            "WHERE cell_id = :c"), {"c": CELL}).all()
        dirty = conn.execute(text("SELECT count(*) FROM event_stats_dirty")).scalar_one()
    # 18 events: 12 sent, 1 not taken, 1 expired, 1 failed, 2 ignored, 1 pending (queued)
    assert tuple(flow) == (18, 17, 12, 1, 1, 1, 2, 12, 1)
    for position in range(3):  # every sent event is in each histogram once
        assert sum(sum(row[position]) for row in hists) == 12
    assert dirty == 0  # every marked hour was recomputed

    before = tables(control_db)
    archive_and_refresh(execution2_db, control_db, start, end)  # a re-run: same rows
    assert tables(control_db) == before

    # Statistics of the window lost (or built by an older version): a backfill of the
    # window - exact, nothing archived changes - rebuilds exactly the same rows.
    backfill_start, backfill_end = hour(start), hour(end) + timedelta(hours=1)
    with control_db.begin() as conn:
        for table in ("event_stats_hourly", "flow_stats_hourly"):
            conn.execute(text(f"DELETE FROM {table} WHERE hour >= :s AND hour < :e"),
                         {"s": backfill_start, "e": backfill_end})
    assert tables(control_db) != before
    archive_and_refresh(execution2_db, control_db, backfill_start, backfill_end)
    assert tables(control_db) == before


def test_a_later_status_change_moves_the_figures(execution2_db, control_db, smtp_sink,
                                                  channels):
    """Batch outcomes reach the events later (updateEventStatus): the next archiving run
    updates the archived rows, marks their hours, and the statistics follow."""
    publish_templates(execution2_db)
    start = datetime.now(UTC) - timedelta(minutes=1)
    insert_events(execution2_db, "batch", 3)
    process(execution2_db, channels, "batch", copy=False)  # delivered, status not copied yet
    archive_and_refresh(execution2_db, control_db, start, datetime.now(UTC))
    first = event_stats(control_db)
    assert {key[4]: values[0] for key, values in first.items()} == {"pending_delivery": 3}
    assert all(values[1] == 0 for values in first.values())  # nothing finished yet

    sync_event_statuses(execution2_db)
    with control_db.begin() as conn:
        conn.execute(text("DELETE FROM event_stats_dirty"))  # nothing left over
    archive_window(execution2_db, control_db, CELL, start, datetime.now(UTC))
    with control_db.connect() as conn:  # the upsert marked the hours of the changed rows
        marked = set(conn.execute(text("SELECT hour FROM event_stats_dirty")).scalars())
    assert marked == {hour(k[0]) for k in expected_from_source(execution2_db)}
    refresh_statistics(control_db, CELL)  # marked hours only
    assert_same(event_stats(control_db), expected_from_source(execution2_db))
    assert {key[4] for key in event_stats(control_db)} == {"sent"}


def test_a_delivery_log_change_marks_its_events_finish_hour(execution2_db, control_db):
    """A delivery log archived after its event (e.g. a late provider answer) marks the
    hour its event finished in, found through the archived event."""
    finished = datetime(2024, 5, 2, 9, 30, tzinfo=UTC)
    with execution2_db.begin() as conn:
        event_id = conn.execute(text(f"""
            INSERT INTO rt_event (id, type, email, ctx, status, created, processing,
                                  processed, next_attempt)
            VALUES ({NEXT_ID_SQL}, 'ORDER', 'a@example.test', '{{}}', 'sent', :created,
                    :created, :at, :at) RETURNING id"""),
            {"created": finished - timedelta(hours=2), "at": finished}).scalar_one()
        conn.execute(text(f"""
            INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status,
                                      attempts)
            VALUES ({NEXT_ID_SQL}, 'rt', :e, 'email', 'a@example.test', 'sent', 1)"""),
            {"e": event_id})
    now = datetime.now(UTC)
    archive_window(execution2_db, control_db, CELL, now - timedelta(minutes=5), now,
                   kinds=("rt",))
    with control_db.begin() as conn:
        conn.execute(text("DELETE FROM event_stats_dirty"))
    archive_window(execution2_db, control_db, CELL, now - timedelta(minutes=5),
                   datetime.now(UTC), kinds=("delivery_log",))
    with control_db.connect() as conn:
        marked = conn.execute(text("SELECT cell_id, hour FROM event_stats_dirty")).all()
    assert marked == [(CELL, datetime(2024, 5, 2, 9, tzinfo=UTC))]


def test_refresh_works_in_batches_and_is_idempotent(control_db):
    base = datetime(2024, 6, 1, tzinfo=UTC)
    with control_db.begin() as conn:
        conn.execute(text("""
            INSERT INTO archived_event (cell_id, id, event_kind, type, wished_channel, ctx,
                status, created, last_modified, processing, processed, error_count)
            SELECT 2, g, 'batch', 'T' || (g % 3), 'email', '{}', 'not_taken_into_account',
                   :base + g * interval '7 minutes', now(),
                   :base + g * interval '7 minutes' + interval '2 seconds',
                   :base + g * interval '7 minutes' + interval '2 seconds', 0
            FROM generate_series(1, 100) g"""), {"base": base})
        conn.execute(text("""
            INSERT INTO event_stats_dirty
            SELECT DISTINCT 2, date_trunc('hour', created, 'UTC') FROM archived_event
            WHERE cell_id = 2"""))
    report = refresh_statistics(control_db, 2, batch_hours=5)
    assert (report.hours, report.batches) == (12, 3)
    first = tables(control_db)
    with control_db.connect() as conn:
        total = conn.execute(text(
            "SELECT sum(received), sum(finished), sum(not_taken) FROM flow_stats_hourly"
        )).one()
    assert tuple(total) == (100, 100, 100)
    assert refresh_statistics(control_db, 2).hours == 0  # nothing marked any more
    with control_db.begin() as conn:
        recompute_hours(conn, 2, window_hours(base, base + timedelta(hours=12)))
    assert tables(control_db) == first


def test_histogram_buckets_in_sql_and_python_agree(control_db):
    samples = [0, 0.4, 1, 1.18, 1.19, 1.5, 2, 3, 10, 99.9, 100, 1000, 12_345.6, 86_400_000,
               2**27, 10**12]
    with control_db.connect() as conn:
        in_sql = [conn.execute(text(f"SELECT {bucket_sql('CAST(:v AS float8)')}"),
                               {"v": value}).scalar_one() for value in samples]
    assert in_sql == [bucket_of(value) for value in samples]
    for value, bucket in zip(samples, in_sql, strict=True):
        low, high = bucket_bounds(bucket)
        assert low <= value < high or (bucket == 0 and value < 1)
    assert bucket_of(10**12) == HIST_BUCKETS - 1


@pytest.mark.fast
def test_histogram_percentiles_are_within_a_bucket():
    values = [5.0] * 50 + [100.0] * 40 + [2000.0] * 10
    hist = [0] * HIST_BUCKETS
    for value in values:
        hist[bucket_of(value)] += 1
    merged = merge_histograms([hist[:30], None, [], [0] * 30 + hist[30:]])
    assert merged == hist
    for q, exact in ((50, 5.0), (90, 100.0), (99, 2000.0)):
        estimate = histogram_percentile(merged, q)
        assert abs(estimate - exact) / exact < 0.1, (q, estimate)
    assert histogram_percentile([], 50) is None


@pytest.mark.fast
def test_window_hours_and_ranges():
    t = datetime(2024, 1, 1, 10, 30, tzinfo=UTC)
    assert window_hours(t, t + timedelta(hours=1)) == [hour(t), hour(t) + timedelta(hours=1)]
    assert window_hours(t, t) == []
    hours = [hour(t), hour(t) + timedelta(hours=1), hour(t) + timedelta(hours=5)]
    assert hour_ranges(hours) == [(hours[0], hours[1] + timedelta(hours=1)),
                                  (hours[2], hours[2] + timedelta(hours=1))]
    with pytest.raises(ValueError, match="timezone-aware"):
        window_hours(datetime(2024, 1, 1), datetime(2024, 1, 2))
