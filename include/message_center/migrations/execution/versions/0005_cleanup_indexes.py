"""Clean-up: find idempotency keys past their replay window without a full scan.

The daily clean-up deletes ``api_idempotency`` rows older than the replay window, oldest
first, in batches; an index on ``created`` makes each batch read only the rows it deletes.
Built ``CONCURRENTLY`` so upgrading a live execution instance never blocks the push API.

Revision ID: e0005
Revises: e0004
"""

from alembic import op

revision = "e0005"
down_revision = "e0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS api_idempotency_created_idx "
                   "ON api_idempotency (created)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS api_idempotency_created_idx")
