"""Archive: find the newest archived row of a cell (and kind) without scanning the archive.

Each archiving run of an execution account starts no later than the newest row already
archived for its cell (the catch-up after missed runs); these indexes make that a single
index probe and also serve reports on what changed recently per instance.

Revision ID: c0002
Revises: c0001
"""

from alembic import op

revision = "c0002"
down_revision = "c0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX archived_event_cell_modified_idx "
               "ON archived_event (cell_id, event_kind, last_modified)")
    op.execute("CREATE INDEX archived_delivery_log_cell_modified_idx "
               "ON archived_delivery_log (cell_id, last_modified)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS archived_delivery_log_cell_modified_idx")
    op.execute("DROP INDEX IF EXISTS archived_event_cell_modified_idx")
