"""Archive: event lookup by e-mail, mobile phone or external id without a full scan.

The UI's event lookup searches the control archive (every instance, a year of events) by
the recipient's address or the application's id. E-mail is matched case-insensitively,
like mail systems compare addresses. Partial indexes: rows without the field take no
space. Built ``CONCURRENTLY`` so upgrading a live control instance never blocks archiving.

Revision ID: c0004
Revises: c0003
"""

from alembic import op

revision = "c0004"
down_revision = "c0003"
branch_labels = None
depends_on = None

INDEXES = {
    "archived_event_email_idx": "(lower(email)) WHERE email IS NOT NULL",
    "archived_event_mobile_phone_idx": "(mobile_phone) WHERE mobile_phone IS NOT NULL",
    "archived_event_external_id_idx": "(external_id) WHERE external_id IS NOT NULL",
}


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, definition in INDEXES.items():
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} "
                       f"ON archived_event {definition}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
