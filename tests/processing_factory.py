"""Test factory for the processing tests: events inserted with plain SQL (as the push API
stores them, NOTIFY included), templates published with the real publishing code, and
readers for events, delivery logs and delivered mail."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from message_center.ids import NEXT_ID_SQL
from message_center.publishing import TemplateContent, publish
from message_center.statuses import event_table

ORDER_TEMPLATE = TemplateContent(
    internal_name="orderConfirmation", label="Order confirmation", event_type="ORDER",
    channel="email", version=1, sender="Shop <shop@example.test>",
    subject="Order {{ orderId }} confirmed, {{ firstName }}",
    html_body="<p>Hello {{ firstName }}, order <b>{{ ctx.orderId }}</b> is confirmed.</p>",
    text_body="Hello {{ firstName }}, order {{ orderId }} is confirmed.",
)
SMS_TEMPLATE = TemplateContent(
    internal_name="otpSms", label="One-time code", event_type="OTP", channel="sms",
    version=1, sender="Shop", sms_body="Your code is {{ code }}",
)


def publish_templates(engine: Engine, *templates: TemplateContent) -> None:
    with engine.begin() as conn:
        for template in templates or (ORDER_TEMPLATE,):
            publish(conn, template)


def insert_events(engine: Engine, kind: str = "rt", count: int = 1, *, type: str = "ORDER",
                  email: str | None = "user{n}@example.test", mobile_phone: str | None = None,
                  wished_channel: str = "email", ctx: dict[str, Any] | None = None,
                  language: str | None = None, scheduled: str | None = None,
                  expiration: str | None = None, notify: bool = True) -> list[int]:
    """Insert ``count`` pending events; ``{n}`` in email/phone/ctx values is the 1-based
    number of the event, so each recipient and personalisation is distinct."""
    ctx = ctx if ctx is not None else {"firstName": "Ada{n}", "orderId": "A-{n}"}
    table = event_table(kind)
    ids: list[int] = []
    with engine.begin() as conn:
        for n in range(1, count + 1):
            def fill(value: str | None, n: int = n) -> str | None:
                return None if value is None else value.replace("{n}", str(n))
            row = conn.execute(text(f"""
                INSERT INTO {table} (id, type, email, mobile_phone, wished_channel, language,
                                     ctx, scheduled, expiration, next_attempt)
                VALUES ({NEXT_ID_SQL}, :type, :email, :phone, :channel, :language,
                        CAST(:ctx AS jsonb), CAST(:scheduled AS timestamptz),
                        CAST(:expiration AS timestamptz),
                        coalesce(CAST(:scheduled AS timestamptz), now()))
                RETURNING id
            """), {"type": type, "email": fill(email), "phone": fill(mobile_phone),
                   "channel": wished_channel, "language": language,
                   "ctx": json.dumps({k: fill(v) if isinstance(v, str) else v
                                      for k, v in ctx.items()}),
                   "scheduled": scheduled, "expiration": expiration}).scalar_one()
            ids.append(int(row))
        if notify:
            conn.execute(text(f"NOTIFY mc_{kind}_events"))
    return ids


def insert_many(engine: Engine, kind: str, count: int, *, type: str = "ORDER") -> None:
    """``count`` events in one statement (for volume tests)."""
    with engine.begin() as conn:
        conn.execute(text(f"""
            INSERT INTO {event_table(kind)} (id, type, email, ctx, next_attempt)
            SELECT {NEXT_ID_SQL}, :type, 'bulk' || g || '@example.test',
                   jsonb_build_object('firstName', 'Bulk' || g, 'orderId', 'B-' || g), now()
            FROM generate_series(1, :count) g
        """), {"type": type, "count": count})


def events(engine: Engine, kind: str = "rt", ids: list[int] | None = None) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT * FROM {event_table(kind)} "
            + ("WHERE id = ANY(:ids) " if ids is not None else "") + "ORDER BY id"
        ), {"ids": ids}).mappings().all()
    return [dict(row) for row in rows]


def statuses(engine: Engine, kind: str = "rt") -> Counter[str]:
    return Counter(row["status"] for row in events(engine, kind))


def delivery_logs(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            text("SELECT * FROM delivery_log ORDER BY event_id")).mappings()]


def recipients(sink: Any) -> Counter[str]:
    """How many messages each address received at the SMTP sink."""
    return Counter(str(message["To"]) for message in sink.messages())


def quarantine(engine: Engine, address: str, channel: str = "email") -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO quarantine (address, channel, reason) "
                          "VALUES (:a, :c, 'hard bounce')"), {"a": address, "c": channel})


def expire_leases(engine: Engine, kind: str) -> None:
    """Make every claim lease and every 'sending' row look old (instead of sleeping)."""
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {event_table(kind)} SET next_attempt = now() - "
                          "interval '1 second' WHERE status IN ('pending', "
                          "'pending_delivery')"))
        conn.execute(text("UPDATE delivery_log SET sending_started = sending_started - "
                          "interval '1 day' WHERE status = 'sending'"))


def utc(value: str) -> datetime:
    return datetime.fromisoformat(value)
