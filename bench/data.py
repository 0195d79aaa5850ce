"""Bench data: realistic order-confirmation events, built set-based in PostgreSQL.

Every event links to the published ``orderConfirmed`` template (``mc setup`` publishes
the repository's templates to the bench execution databases) and renders with it.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, text

from message_center.ids import NEXT_ID_SQL
from message_center.statuses import event_table

EVENT_TYPE = "ORDER_CONFIRMED"
ITEMS = [{"name": "Blue mug", "quantity": 2, "price": 12.5},
         {"name": "Tea sampler", "quantity": 1, "price": 34.9}]


def event_json(i: int) -> dict[str, Any]:
    """One event as the push API takes it (about 300 bytes of JSON)."""
    return {
        "type": EVENT_TYPE, "email": f"customer{i}@example.com", "externalId": f"A-{i}",
        "language": "en", "country": "FR", "origin": "bench",
        "ctx": {"firstName": "Jane", "orderId": f"A-{i}", "total": 59.9, "currency": "EUR",
                "items": ITEMS},
    }


def batch_body(start: int, count: int) -> bytes:
    return json.dumps({"events": [event_json(i) for i in range(start, start + count)]},
                      separators=(",", ":")).encode()


_CTX_SQL = (
    "jsonb_build_object('firstName', 'Jane', 'orderId', 'A-' || g, 'total', 59.9, "
    f"'currency', 'EUR', 'items', CAST('{json.dumps(ITEMS)}' AS jsonb))"
)


def insert_events(engine: Engine, kind: str, count: int, *, status: str = "pending",
                  spread_seconds: float = 0.0, chunk: int = 200_000) -> None:
    """``count`` events in ``status``; ``spread_seconds`` spreads ``created`` and
    ``last_modified`` over the past that long (as if they had arrived over time)."""
    table = event_table(kind)
    done = 0
    while done < count:
        size = min(chunk, count - done)
        with engine.begin() as conn:
            conn.execute(text(f"""
                INSERT INTO {table} (id, type, email, wished_channel, external_id, language,
                                     country, origin, ctx, status, created, last_modified,
                                     next_attempt)
                SELECT {NEXT_ID_SQL}, :type, 'customer' || g || '@example.com', 'email',
                       'A-' || g, 'en', 'FR', 'bench', {_CTX_SQL}, :status, ts, ts,
                       least(ts, now())
                FROM generate_series(CAST(:first AS bigint), :last) AS g,
                     LATERAL (SELECT now() - make_interval(
                         secs => :spread * (1 - g::float8 / :total)) AS ts) AS t
            """), {"type": EVENT_TYPE, "status": status, "first": done + 1,
                   "last": done + size, "spread": float(spread_seconds),
                   "total": float(count)})
        done += size


def insert_final_delivery_logs(engine: Engine, kind: str, *, spread_seconds: float) -> int:
    """A final ledger row (95 % sent, 3 % failed, 2 % ignored) for every
    ``pending_delivery`` event, written over the past ``spread_seconds``."""
    table = event_table(kind)
    with engine.begin() as conn:
        return conn.execute(text(f"""
            INSERT INTO delivery_log (id, event_kind, event_id, template_name,
                template_version, channel, address, status, attempts, error, provider_id,
                created, last_modified, sending_started, sent_at)
            SELECT {NEXT_ID_SQL}, :kind, e.id, 'orderConfirmed', 1, 'email', e.email,
                   s.status, 1,
                   CASE s.status WHEN 'sent' THEN NULL WHEN 'failed'
                        THEN 'SMTP RCPT TO refused: 550 no such user'
                        ELSE 'address is in quarantine' END,
                   CASE WHEN s.status = 'sent' THEN '<mc.' || e.id || '@shop.example>' END,
                   ts, ts, ts, CASE WHEN s.status = 'sent' THEN ts END
            FROM (SELECT id, email, row_number() OVER (ORDER BY id) AS n, count(*) OVER () AS c
                  FROM {table} WHERE status = 'pending_delivery') AS e,
                 LATERAL (SELECT CASE WHEN e.n % 100 < 95 THEN 'sent'
                                      WHEN e.n % 100 < 98 THEN 'failed'
                                      ELSE 'ignored' END AS status,
                                 now() - make_interval(secs => :spread * (1 - e.n::float8 / e.c))
                                     AS ts) AS s
        """), {"kind": kind, "spread": float(spread_seconds)}).rowcount


def count_by_status(engine: Engine, kind: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT status, count(*) FROM {event_table(kind)} GROUP BY status")).all()
    return {status: int(n) for status, n in rows}
