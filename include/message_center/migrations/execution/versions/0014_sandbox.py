"""Sandbox mode (issue 29): an event and its delivery say whether nothing left the machine.

* ``rt_event.sandbox`` / ``batch_event.sandbox`` (boolean, default false): set at push time
  for an API user named in ``MC_SANDBOX_USERS``, or when the delivery armed it on an
  instance in sandbox mode (``MC_SANDBOX=1`` / Variable ``mc_sandbox``); webhooks and
  ``GET /v1/events/{id}`` report it.
* ``delivery_log.sandbox`` (boolean, default false): this delivery went to the sandbox
  transport (no relay, gateway or push service was contacted); decided once, when the
  ledger row is armed, and never turned back off.

Revision ID: e0014
Revises: e0011
"""

from alembic import op

revision = "e0014"
down_revision = "e0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("rt_event", "batch_event", "delivery_log"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN sandbox boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    for table in ("rt_event", "batch_event", "delivery_log"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS sandbox")
