"""Attachments given by the event (``attachments`` of a pushed e-mail event).

* ``rt_event`` / ``batch_event`` gain ``attachments`` (jsonb): what the event brought, as
  metadata only (``name``, ``contentType``, and ``size`` + ``sha256`` of the bytes, or the
  ``url`` fetched at sending time); NULL for an event without files. Archived with the
  event (control revision c0011), never the bytes.
* ``event_attachment``: the bytes of each file given as content, once per event (retries
  read them, the archive does not copy them), keyed by the event and the file's position
  in ``attachments``; deleted by the clean-up with the event.

Revision ID: e0012
Revises: e0013 (after the sandbox mode, e0014, and the bulk actions, e0013, which landed first)
"""

from alembic import op

revision = "e0012"
down_revision = "e0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("rt_event", "batch_event"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN attachments jsonb")
    op.execute("""
        CREATE TABLE event_attachment (
            event_kind text NOT NULL CHECK (event_kind IN ('rt', 'batch')),
            event_id   bigint NOT NULL,
            position   smallint NOT NULL CHECK (position >= 0),
            content    bytea NOT NULL,
            PRIMARY KEY (event_kind, event_id, position)
        )
    """)
    # the bytes are already compressed (PDF, images) or small: do not spend CPU on it
    op.execute("ALTER TABLE event_attachment ALTER COLUMN content SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS event_attachment")
    for table in ("rt_event", "batch_event"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS attachments")
