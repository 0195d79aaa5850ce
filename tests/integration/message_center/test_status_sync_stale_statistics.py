"""updateEventStatus stays linear when PostgreSQL's statistics are out of date.

Found by the benchmark (bench/, memory stage): the delivery log was last analysed while it
held real-time rows only, then a large batch backlog was claimed, linked and delivered
before autovacuum analysed anything. The planner then believed "few batch rows, few
pending_delivery events" and picked a nested loop that scans every batch delivery-log
row once per event: 5,000 events took 1.6 s, 20,000 took 26 s, a 1,000,000-event drain
would never finish. The statement guard below fails such a plan long before it ends; the
right plan copies these rows in well under a second.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text

from message_center.db import sqlalchemy_url
from message_center.ids import NEXT_ID_SQL
from message_center.status_sync import sync_event_statuses

EVENTS = 20_000
GUARD = "-c statement_timeout=10000"  # ms; the quadratic plan needs ~25 s here


def run(engine, sql: str, **params) -> None:
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(sql), params)


def add_events(engine, kind: str, count: int, status: str) -> None:
    run(engine, f"""
        INSERT INTO {kind}_event (id, type, email, status)
        SELECT {NEXT_ID_SQL}, 'ORDER_CONFIRMED', 'c' || g || '@example.test', :status
        FROM generate_series(1, :count) AS g
    """, status=status, count=count)


def add_final_logs(engine, kind: str) -> None:
    run(engine, f"""
        INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status)
        SELECT {NEXT_ID_SQL}, :kind, id, 'email', email, 'sent'
        FROM {kind}_event WHERE status = 'pending_delivery'
    """, kind=kind)


def test_a_large_batch_backlog_is_copied_with_stale_statistics(execution_db):
    tables = ("rt_event", "batch_event", "delivery_log")
    for table in tables:  # only the statistics this test writes, none from autovacuum
        run(execution_db, f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    try:
        # History: the delivery log was analysed while it held real-time rows only.
        add_events(execution_db, "rt", 1500, "pending_delivery")
        add_final_logs(execution_db, "rt")
        run(execution_db, "ANALYZE delivery_log")
        run(execution_db, "TRUNCATE rt_event, batch_event, delivery_log")
        # A batch backlog arrives (analysed while pending), is claimed, linked, delivered.
        add_events(execution_db, "batch", EVENTS, "pending")
        run(execution_db, "ANALYZE batch_event")
        run(execution_db, "UPDATE batch_event SET status = 'pending_delivery'")
        add_final_logs(execution_db, "batch")

        guarded = create_engine(sqlalchemy_url(execution_db.url.render_as_string(False)),
                                connect_args={"options": GUARD})
        try:
            stats = sync_event_statuses(guarded)
        finally:
            guarded.dispose()
        assert stats.copied["sent"] == EVENTS
        with execution_db.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM batch_event "
                                     "WHERE status = 'pending_delivery'")).scalar_one()
        assert left == 0
    finally:
        for table in tables:
            run(execution_db, f"ALTER TABLE {table} RESET (autovacuum_enabled)")
