"""Relay faults: the ``unknown`` failure class and one circuit breaker per relay.

* ``delivery_log.failure_class`` may be ``unknown``: the message was handed to the relay
  and no answer came (connection lost or timed out after the final "." of SMTP DATA, or
  the worker died at that point). Rows the crash recovery marked "outcome unknown"
  before this class existed get it now.
* ``relay_breaker``: one row per relay (``smtp://host:port``, an SMS gateway's URL),
  shared by every shard and worker: consecutive failures, ``closed`` / ``open``, when
  the next probe may start, the "slow down" pause (see
  :mod:`message_center.delivery.breaker`).

Revision ID: e0007
Revises: e0006
"""

from alembic import op

revision = "e0007"
down_revision = "e0006"
branch_labels = None
depends_on = None

_CLASSES = "'hard', 'soft', 'policy', 'throttle', 'transient', 'error'"


def upgrade() -> None:
    op.execute("ALTER TABLE delivery_log DROP CONSTRAINT IF EXISTS "
               "delivery_log_failure_class_check")
    op.execute("ALTER TABLE delivery_log ADD CONSTRAINT delivery_log_failure_class_check "
               f"CHECK (failure_class IN ({_CLASSES}, 'unknown'))")
    op.execute("""
        UPDATE delivery_log SET failure_class = 'unknown', failure_reason = 'outcome_unknown'
        WHERE status = 'failed' AND failure_class IS NULL AND error LIKE 'outcome unknown:%'
    """)
    op.execute("""
        CREATE TABLE relay_breaker (
            relay         text PRIMARY KEY,
            channel       text NOT NULL,
            state         text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open')),
            failures      integer NOT NULL DEFAULT 0,
            opened_at     timestamptz,
            probe_at      timestamptz,
            paused_until  timestamptz,
            last_error    text,
            last_failure  timestamptz,
            last_success  timestamptz,
            updated       timestamptz NOT NULL DEFAULT clock_timestamp()
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS relay_breaker")
    op.execute("UPDATE delivery_log SET failure_class = NULL, failure_reason = NULL "
               "WHERE failure_class = 'unknown'")
    op.execute("ALTER TABLE delivery_log DROP CONSTRAINT IF EXISTS "
               "delivery_log_failure_class_check")
    op.execute("ALTER TABLE delivery_log ADD CONSTRAINT delivery_log_failure_class_check "
               f"CHECK (failure_class IN ({_CLASSES}))")
