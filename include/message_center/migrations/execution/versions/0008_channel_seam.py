"""The channel seam: any registered channel, its address in one generic column.

* ``rt_event`` / ``batch_event`` gain ``address`` (text): the address of a channel that
  is not one of ACC's (those keep theirs in ``email`` / ``mobile_phone``, ACC's
  attributes); structured addresses are stored as JSON text. A new channel needs no new
  column.
* ``published_template`` gains ``parts`` (jsonb): the template parts of a channel that
  has no columns of its own.
* The ``CHECK (... channel IN (...))`` constraints go: which channels exist is the
  registry's business (:mod:`message_center.channel`), validated where events, templates
  and quarantine decisions come in. Existing rows are kept as they are.

Revision ID: e0008
Revises: e0007
"""

from alembic import op

revision = "e0008"
down_revision = "e0007"
branch_labels = None
depends_on = None

#: Drops every CHECK constraint of this schema that lists the channels.
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
    for table in ("rt_event", "batch_event"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN address text")
    op.execute("ALTER TABLE published_template ADD COLUMN parts jsonb")
    op.execute(DROP_CHANNEL_CHECKS)


def downgrade() -> None:
    op.execute("ALTER TABLE published_template DROP COLUMN parts")
    for table in ("rt_event", "batch_event"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN address")
