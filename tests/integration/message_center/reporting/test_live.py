"""Live figures of one execution instance: queue depths as /v1/health counts them,
messages sent in the last hour through the sent_at index."""

from __future__ import annotations

from sqlalchemy import text

from message_center.ids import NEXT_ID_SQL
from message_center.reporting import instance_live, read_instance_live


def add(engine, sql: str, **params) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)


def test_live_figures(execution2_db):
    engine = execution2_db  # cell 1: no processing DAG of a test stack touches it
    add(engine, f"""INSERT INTO rt_event (id, type, email, ctx, next_attempt)
                   SELECT {NEXT_ID_SQL}, 'ORDER', 'a@example.test', '{{}}',
                          now() - g * interval '1 minute' FROM generate_series(1, 3) g""")
    add(engine, f"""INSERT INTO rt_event (id, type, email, ctx, scheduled, next_attempt)
                   VALUES ({NEXT_ID_SQL}, 'ORDER', 'b@example.test', '{{}}',
                           now() + interval '1 day', now() + interval '1 day')""")
    add(engine, f"""INSERT INTO batch_event (id, type, email, ctx)
                   SELECT {NEXT_ID_SQL}, 'ORDER', 'c@example.test', '{{}}'
                   FROM generate_series(1, 2)""")
    add(engine, f"""INSERT INTO delivery_log (id, event_kind, event_id, channel, status,
                                              attempts, sent_at)
                   SELECT {NEXT_ID_SQL}, 'rt', g, 'email', 'sent', 1, now() - t
                   FROM unnest(ARRAY[1, 2, 3]) g,
                        unnest(ARRAY[interval '1 minute', interval '59 minutes',
                                     interval '2 hours']) WITH ORDINALITY AS x(t, o)
                   WHERE g = o""")
    live = read_instance_live(engine, warning=2, alert=5)
    data = live.to_dict()
    assert (data["cellId"], data["rtPending"], data["batchPending"]) == (1, 3, 2)
    assert data["sentLastHour"] == 2
    assert 170 < data["oldestRtPendingAgeSeconds"] < 400
    assert (data["status"], data["warningThreshold"], data["alertThreshold"]) == (
        "warning", 2, 5)
    assert data["message"].startswith("Warning / ") and data["message"].endswith(
        " / 3/5 pending events")
    with engine.connect() as conn:
        defaults = instance_live(conn)
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(conn.execute(text(
            "EXPLAIN SELECT count(*) FROM delivery_log WHERE sent_at IS NOT NULL "
            "AND sent_at >= now() - interval '1 hour'")).scalars())
    assert (defaults.status, defaults.alert) == ("ok", 400)
    assert "delivery_log_sent_at_idx" in plan

