"""Both schemas migrate up, down and up again on real PostgreSQL."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

from mc_local.embedded_pg import ensure_database
from message_center import migrations


@pytest.fixture
def scratch_url(test_deployment):
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    ensure_database(test_deployment.server_url, name)
    url = test_deployment.database_url("control").rsplit("/", 1)[0] + f"/{name}"
    yield url
    conn = psycopg2.connect(test_deployment.server_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def tables(url: str) -> set[str]:
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        names = {row[0] for row in cur.fetchall()}
    conn.close()
    return names


@pytest.mark.parametrize(("role", "expected"), [
    ("execution", {"rt_event", "batch_event", "published_template", "delivery_log",
                   "quarantine", "api_idempotency", "mc_instance"}),
    ("control", {"template", "template_version", "archived_event", "archived_delivery_log"}),
])
def test_upgrade_downgrade_upgrade(scratch_url, role, expected):
    migrations.upgrade(role, scratch_url)
    assert expected <= tables(scratch_url)
    migrations.upgrade(role, scratch_url)  # a second upgrade is a no-op
    migrations.downgrade(role, scratch_url)
    assert tables(scratch_url) == {f"alembic_version_{role}"}
    migrations.upgrade(role, scratch_url)
    assert expected <= tables(scratch_url)


def test_pending_index_is_partial(execution_db):
    with execution_db.connect() as conn:
        definition = conn.exec_driver_sql(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'rt_event_due_idx'").scalar_one()
    assert "WHERE (status = 'pending'::text)" in definition


@pytest.mark.fast
def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="unknown database role"):
        migrations.alembic_config("archive", "postgresql://x/y")  # type: ignore[arg-type]


def test_webhook_counters_continue_from_the_outbox(scratch_url):
    """e0015: an event's counter starts at its outbox rows' highest number (so numbering
    continues), without touching ``last_modified`` (nothing to archive again); an update
    that only raises the counter leaves it alone too, any other update still sets it."""
    migrations.upgrade("execution", scratch_url, "e0012")
    conn = psycopg2.connect(scratch_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("INSERT INTO rt_event (id, type, status, last_modified) VALUES "
                    "(1, 'T', 'sent', '2020-01-01Z'), (2, 'T', 'sent', '2020-01-01Z')")
        cur.execute("INSERT INTO batch_event (id, type, status) VALUES (1, 'T', 'sent')")
        cur.execute("INSERT INTO webhook_outbox (id, subscription_id, event_kind, event_id, "
                    "seq, name) VALUES (10, 'a', 'rt', 1, 1, 'event.sent'), "
                    "(11, 'b', 'rt', 1, 3, 'event.clicked'), "
                    "(12, 'a', 'batch', 2, 7, 'event.sent')")
    migrations.upgrade("execution", scratch_url)
    with conn.cursor() as cur:
        cur.execute("SELECT id, webhook_seq, last_modified = '2020-01-01Z' FROM rt_event "
                    "ORDER BY id")
        assert cur.fetchall() == [(1, 3, True), (2, 0, True)]
        cur.execute("SELECT webhook_seq FROM batch_event")
        assert cur.fetchall() == [(0,)]  # the outbox row is another kind's event 2
        cur.execute("UPDATE rt_event SET webhook_seq = webhook_seq + 1 WHERE id = 1")
        cur.execute("SELECT last_modified = '2020-01-01Z' FROM rt_event WHERE id = 1")
        assert cur.fetchone() == (True,)
        cur.execute("UPDATE rt_event SET status = 'failed', webhook_seq = webhook_seq + 1 "
                    "WHERE id = 1")
        cur.execute("UPDATE rt_event SET error_reason = 'x' WHERE id = 2")
        cur.execute("SELECT bool_or(last_modified = '2020-01-01Z') FROM rt_event")
        assert cur.fetchone() == (False,)
    conn.close()
    migrations.downgrade("execution", scratch_url, "e0012")
    migrations.upgrade("execution", scratch_url)
