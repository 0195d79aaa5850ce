"""A day of believable traffic on one execution instance, for the README's screenshots.

Events, delivery logs and their timestamps are written straight into an execution
database over the last 24 hours (a daily curve, a slow hour, a few errors of each
cause), then archived and counted by the real archiving and statistics code, so the
report pages have something to draw.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from message_center.ids import NEXT_ID_SQL

DEMO_SQL = f"""
WITH hours AS (
    SELECT h, date_trunc('hour', now()) - make_interval(hours => h) AS hour_start,
           -- busier in the day, quiet at night; one slow hour five hours ago
           (25 + 45 * greatest(0, sin(pi() * ((extract(hour FROM now()) - h + 24)::int % 24 - 6)
                                        / 14.0)))::int AS volume,
           CASE WHEN h = 5 THEN 14.0 ELSE 1.0 END AS slow
    FROM generate_series(1, 23) AS h
), events AS (
    SELECT hours.*, n, random() AS r, random() AS r2,
           hour_start + random() * interval '59 minutes' AS created
    FROM hours, generate_series(1, volume) AS n
), shaped AS (
    SELECT *,
           CASE WHEN r < 0.86 THEN 'sent' WHEN r < 0.90 THEN 'failed'
                WHEN r < 0.93 THEN 'ignored' WHEN r < 0.97 THEN 'not_taken_into_account'
                ELSE 'expired' END AS status,
           CASE WHEN r2 < 0.8 THEN 'ORDER_CONFIRMED' WHEN r2 < 0.93 THEN 'PASSWORD_RESET'
                ELSE 'SHIPPING_UPDATE' END AS type,
           make_interval(secs => slow * (0.05 + random() * random() * 1.5)) AS queue_time,
           make_interval(secs => slow * (0.03 + random() * 0.12)) AS sending_time
    FROM events
)
INSERT INTO {{table}} (id, type, email, mobile_phone, wished_channel, external_id, ctx,
                       status, created, last_modified, processing, processed, next_attempt,
                       template_name, template_version, error_reason)
SELECT {NEXT_ID_SQL}, type,
       CASE WHEN type <> 'PASSWORD_RESET' THEN 'customer' || h || '-' || n || '@example.com' END,
       CASE WHEN type = 'PASSWORD_RESET' THEN '+3361234' || lpad((h * 100 + n)::text, 4, '0') END,
       CASE WHEN type = 'PASSWORD_RESET' THEN 'sms' ELSE 'email' END,
       'ORD-' || h || '-' || n, jsonb_build_object('firstName', 'Demo', 'orderId', n),
       status, created, created + queue_time + sending_time, created + queue_time,
       created + queue_time + sending_time, created,
       CASE WHEN status <> 'not_taken_into_account' THEN 'orderConfirmed' END,
       CASE WHEN status <> 'not_taken_into_account' THEN 1 END,
       CASE status WHEN 'failed' THEN '550 5.1.1 mailbox unavailable'
                   WHEN 'ignored' THEN 'address is in quarantine'
                   WHEN 'not_taken_into_account' THEN 'no published template for event type '
                                                        || type
                   WHEN 'expired' THEN 'event expired before it was processed' END
FROM shaped
RETURNING id
"""

LOGS_SQL = """
INSERT INTO delivery_log (id, event_kind, event_id, template_name, template_version, channel,
                          address, status, attempts, error, provider_id, created,
                          last_modified, sending_started, sent_at)
SELECT e.id, 'rt', e.id, e.template_name, 1, e.wished_channel,
       coalesce(e.email, e.mobile_phone), e.status, 1, e.error_reason,
       CASE WHEN e.status = 'sent' THEN 'demo-' || e.id END,
       e.processing, e.processed, e.processing + (e.processed - e.processing) * 0.1,
       CASE WHEN e.status = 'sent' THEN e.processed END
FROM rt_event e WHERE e.status IN ('sent', 'failed', 'ignored') AND e.id = ANY(:ids)
"""


def add_demo_day(execution: Engine, control: Engine, cell_id: int) -> int:
    """Write the day of traffic, archive it and count it; returns the number of events."""
    from message_center.archiving import archive_window
    from message_center.reporting import refresh_statistics

    with execution.begin() as conn:
        ids = [row[0] for row in conn.execute(text(DEMO_SQL.replace("{table}", "rt_event")))]
        conn.execute(text(LOGS_SQL), {"ids": ids})
        conn.execute(text("UPDATE rt_event SET delivery_log_id = id "
                          "WHERE id = ANY(:ids) AND status IN ('sent', 'failed', 'ignored')"),
                     {"ids": ids})
    now = datetime.now(UTC)
    start = now - timedelta(hours=25)
    archive_window(execution, control, cell_id, start, now + timedelta(seconds=1),
                   name="demo day")
    refresh_statistics(control, cell_id, window=(start, now + timedelta(hours=1)))
    return len(ids)
