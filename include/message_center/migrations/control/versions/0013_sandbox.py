"""Sandbox traffic in the archive, counted apart from the service level (execution e0014).

* ``archived_event.sandbox`` / ``archived_delivery_log.sandbox``: copied by ``mcSynch``.
* ``sandbox_stats_hourly`` (hour, cell, kind, channel, status): sandbox events received
  and finished per UTC hour. ``event_stats_hourly`` and ``flow_stats_hourly`` (the service
  level, the history, the error breakdown) no longer count sandbox events at all; the
  Service level page shows this table's figures on a line of their own.

Revision ID: c0013
Revises: c0010
"""

from alembic import op

revision = "c0013"
down_revision = "c0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("archived_event", "archived_delivery_log"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN sandbox boolean NOT NULL DEFAULT false")
    op.execute("""
        CREATE TABLE sandbox_stats_hourly (
            hour        timestamptz NOT NULL,
            cell_id     smallint NOT NULL CHECK (cell_id BETWEEN 0 AND 255),
            event_kind  text NOT NULL,
            channel     text NOT NULL,
            status      text NOT NULL,
            received    integer NOT NULL DEFAULT 0,
            finished    integer NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, cell_id, event_kind, channel, status)
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS sandbox_stats_hourly")
    for table in ("archived_event", "archived_delivery_log"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS sandbox")
