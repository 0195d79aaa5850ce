"""Event recycling in the archive and the reports (see execution revision e0011).

* ``archived_event.recycled_from``: the event a recycled event was made from (same cell
  and kind); the archive keeps the link both ways through it (index below).
* ``flow_stats_hourly.recycled`` / ``recycled_sent``: finished events that were recycled
  from another channel, and how many of them were sent ("how many SMS went out as
  e-mail"), counted on the fallback channel's row.

Revision ID: c0010
Revises: c0009
"""

from alembic import op

revision = "c0010"
down_revision = "c0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE archived_event ADD COLUMN recycled_from bigint")
    op.execute("CREATE INDEX archived_event_recycled_from_idx ON archived_event "
               "(cell_id, recycled_from) WHERE recycled_from IS NOT NULL")
    op.execute("ALTER TABLE flow_stats_hourly "
               "ADD COLUMN recycled integer NOT NULL DEFAULT 0, "
               "ADD COLUMN recycled_sent integer NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE flow_stats_hourly DROP COLUMN recycled_sent, "
               "DROP COLUMN recycled")
    op.execute("DROP INDEX IF EXISTS archived_event_recycled_from_idx")
    op.execute("ALTER TABLE archived_event DROP COLUMN recycled_from")
