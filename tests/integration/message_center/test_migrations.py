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
