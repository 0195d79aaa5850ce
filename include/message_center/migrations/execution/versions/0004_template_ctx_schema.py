"""Published templates carry the ctx fields they declare, so the push API can refuse an
event whose ctx does not fit the template published for it.

Revision ID: e0004
Revises: e0003
"""

from alembic import op

revision = "e0004"
down_revision = "e0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE published_template ADD COLUMN ctx_schema jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE published_template DROP COLUMN IF EXISTS ctx_schema")
