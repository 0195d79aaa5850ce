"""Event recycling: a delivery that ends in a chosen failure on one channel becomes a new
event on another (``on_failure`` of the template; :mod:`message_center.state`).

* ``published_template.on_failure`` (jsonb): ``{"channel", "template", "after": [...]}``
  or NULL (no fallback).
* ``published_template.extras`` (jsonb): a channel's structured template fields, the
  e-mail ``attachments`` (static files as base64 with their hash, generated ones as
  templates; :mod:`message_center.channels.email_attachments`), published with the version.
* ``rt_event`` / ``batch_event`` gain ``recycled_from`` (bigint): the event this one was
  recycled from (NULL for pushed events). A recycled event is never recycled again.
* ``event_recycling``: one row per event whose failure was considered for recycling, keyed
  by the event (the primary key makes recycling happen exactly once, whoever writes the
  final status - a retried task, a backfill): ``recycled_id`` the new event, or NULL with
  ``reason`` saying why not (no address for the fallback channel, no fallback template).

Revision ID: e0011
Revises: e0010
"""

from alembic import op

revision = "e0011"
down_revision = "e0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE published_template ADD COLUMN on_failure jsonb")
    op.execute("ALTER TABLE published_template ADD COLUMN extras jsonb")
    for table in ("rt_event", "batch_event"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN recycled_from bigint")
    op.execute("""
        CREATE TABLE event_recycling (
            event_kind  text NOT NULL CHECK (event_kind IN ('rt', 'batch')),
            event_id    bigint NOT NULL,
            recycled_id bigint,
            channel     text NOT NULL,
            outcome     text NOT NULL,
            reason      text,
            created     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (event_kind, event_id)
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS event_recycling")
    for table in ("rt_event", "batch_event"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS recycled_from")
    op.execute("ALTER TABLE published_template DROP COLUMN IF EXISTS extras")
    op.execute("ALTER TABLE published_template DROP COLUMN IF EXISTS on_failure")
