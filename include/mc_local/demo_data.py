"""A day of believable past traffic on the demo's execution instance (``mc demo-data``).

Events and delivery logs are written straight into an execution database over the 23
complete hours before the current one (a daily curve, a slow hour five hours ago, a few
errors of each cause), as the processing would have left them. The archiving DAG, a
backfill (the README's examples) and the report pages then have history to work on.
Each call adds another such day. Nothing is updated after the insert, so every row keeps
the ``last_modified`` of its hour (the archiving selects rows by it).
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from message_center.ids import NEXT_ID_SQL
from message_center.statuses import FINAL_DELIVERY, sql_in

# The demo statuses with a delivery log (the others never reached the delivery).
_LOGGED = sql_in(FINAL_DELIVERY)

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
), numbered AS (
    SELECT shaped.*, {NEXT_ID_SQL} AS new_id FROM shaped
)
INSERT INTO {{table}} (id, type, email, mobile_phone, wished_channel, external_id, ctx,
                       status, created, last_modified, processing, processed, next_attempt,
                       template_name, template_version, error_reason, delivery_log_id)
SELECT new_id, type,
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
                   WHEN 'expired' THEN 'event expired before it was processed' END,
       -- the log's id is the event's (LOGS_SQL); set here: an UPDATE would touch last_modified
       CASE WHEN status IN {_LOGGED} THEN new_id END
FROM numbered
RETURNING id
"""

LOGS_SQL = f"""
INSERT INTO delivery_log (id, event_kind, event_id, template_name, template_version, channel,
                          address, status, attempts, error, provider_id, created,
                          last_modified, sending_started, sent_at)
SELECT e.id, 'rt', e.id, e.template_name, 1, e.wished_channel,
       coalesce(e.email, e.mobile_phone), e.status, 1, e.error_reason,
       CASE WHEN e.status = 'sent' THEN 'demo-' || e.id END,
       e.processing, e.processed, e.processing + (e.processed - e.processing) * 0.1,
       CASE WHEN e.status = 'sent' THEN e.processed END
FROM rt_event e WHERE e.status IN {_LOGGED} AND e.id = ANY(:ids)
"""



def add_demo_traffic(execution: Engine) -> list[int]:
    """Write the day of traffic into ``execution`` (one transaction); returns the ids."""
    with execution.begin() as conn:
        ids = [row[0] for row in conn.execute(text(DEMO_SQL.replace("{table}", "rt_event")))]
        conn.execute(text(LOGS_SQL), {"ids": ids})
    return ids
