"""Attachments given by the event in the archive (see execution revision e0012).

* ``archived_event.attachments`` (jsonb): the files the event brought, as metadata only
  (``name``, ``contentType``, ``size``, ``sha256``, or the ``url``): the archive keeps
  what was sent and a hash to prove it, never the bytes.

Revision ID: c0011
Revises: c0012 (after the sandbox mode, c0013, and the audit, c0012, which landed first)
"""

from alembic import op

revision = "c0011"
down_revision = "c0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE archived_event ADD COLUMN attachments jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE archived_event DROP COLUMN IF EXISTS attachments")
