"""The failure class in the archive and the hourly statistics: the reports tell an
``unknown`` outcome (the relay may have delivered it) from hard, soft and policy failures.

* ``archived_delivery_log.failure_class``: copied by the archiving run from the execution
  instance's ``delivery_log.failure_class`` (see :mod:`message_center.archiving`; a
  backfill fills it in on rows archived before this revision).
* ``flow_stats_hourly.failed_classes``: the failed events of the row by their delivery
  log's class, ``{"unknown": 3, "hard": 1}`` (classless failures are not in it).
* Archived delivery logs whose error says "outcome unknown" get the class ``unknown``
  now, as execution revision e0007 did, and their events' finish hours are marked for the
  next statistics refresh.

Revision ID: c0007
Revises: c0006
"""

from alembic import op

revision = "c0007"
down_revision = "c0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE archived_delivery_log ADD COLUMN failure_class text")
    op.execute("ALTER TABLE flow_stats_hourly "
               "ADD COLUMN failed_classes jsonb NOT NULL DEFAULT '{}'")
    op.execute("""
        UPDATE archived_delivery_log SET failure_class = 'unknown'
        WHERE status = 'failed' AND error LIKE 'outcome unknown:%'
    """)
    op.execute("""
        INSERT INTO event_stats_dirty (cell_id, hour)
        SELECT DISTINCT e.cell_id,
               date_bin('1 hour', e.processed, TIMESTAMPTZ '2000-01-01Z')
        FROM archived_delivery_log d
        JOIN archived_event e ON e.cell_id = d.cell_id AND e.id = d.event_id
                             AND e.event_kind = d.event_kind
        WHERE d.failure_class = 'unknown' AND e.processed IS NOT NULL
        ON CONFLICT DO NOTHING
    """)


def downgrade() -> None:
    op.execute("ALTER TABLE flow_stats_hourly DROP COLUMN failed_classes")
    op.execute("ALTER TABLE archived_delivery_log DROP COLUMN failure_class")
