"""The channel seam on the control instance: the archive keeps an event's generic
``address`` (see execution revision e0008), and the ``CHECK (channel IN (...))``
constraints go (the registry, :mod:`message_center.channel`, validates channels).

Revision ID: c0006
Revises: c0005
"""

from alembic import op

revision = "c0006"
down_revision = "c0005"
branch_labels = None
depends_on = None

DROP_CHANNEL_CHECKS = """
    DO $$
    DECLARE r record;
    BEGIN
        FOR r IN SELECT c.conrelid::regclass AS tbl, c.conname
                 FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                 WHERE c.contype = 'c' AND n.nspname = current_schema()
                   AND pg_get_constraintdef(c.oid) ~ 'channel'
                   AND pg_get_constraintdef(c.oid) ~ '''email'''
        LOOP
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
        END LOOP;
    END $$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE archived_event ADD COLUMN address text")
    op.execute(DROP_CHANNEL_CHECKS)


def downgrade() -> None:
    op.execute("ALTER TABLE archived_event DROP COLUMN address")
