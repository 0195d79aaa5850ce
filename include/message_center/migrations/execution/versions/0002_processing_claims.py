"""Processing claims: which run and shard holds an event, and a fast path to stuck sends.

``claim_token``/``claim_shard`` are set by the split (``FOR UPDATE SKIP LOCKED``) so the
claim survives between Airflow tasks while only ``(token, shard)`` travels through XCom.
The claim lease itself is ``next_attempt`` (pushed forward at claim time), so an event
whose worker died simply becomes due again. The partial indexes keep the shard scans
and the crash recovery scans proportional to the work in flight, not to the history.

Revision ID: e0002
Revises: e0001
"""

from alembic import op

revision = "e0002"
down_revision = "e0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("rt_event", "batch_event"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN claim_token bigint, "
                   "ADD COLUMN claim_shard smallint")
        op.execute(
            f"CREATE INDEX {table}_claim_idx ON {table} (claim_token, claim_shard, id) "
            "WHERE status IN ('pending', 'pending_delivery')"
        )
    op.execute(
        "CREATE INDEX delivery_log_sending_idx ON delivery_log (sending_started) "
        "WHERE status = 'sending'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS delivery_log_sending_idx")
    for table in ("rt_event", "batch_event"):
        op.execute(f"DROP INDEX IF EXISTS {table}_claim_idx")
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS claim_token, "
                   "DROP COLUMN IF EXISTS claim_shard")
