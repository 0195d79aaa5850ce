"""Messages sent in the last hour (the UI's live overview) without scanning the ledger.

A partial index on ``delivery_log.sent_at``: only sent messages have entries, and a count
of the last hour reads that hour's entries only, however long the ledger is.

Revision ID: e0003
Revises: e0002
"""

from alembic import op

revision = "e0003"
down_revision = "e0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX delivery_log_sent_at_idx ON delivery_log (sent_at) "
               "WHERE sent_at IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS delivery_log_sent_at_idx")
