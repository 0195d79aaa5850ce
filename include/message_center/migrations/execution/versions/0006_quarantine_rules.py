"""Deliverability: answer classes on the delivery log, bounce history, quarantine decisions.

* ``delivery_log.failure_class`` / ``failure_reason``: what the channel's answer meant
  (:mod:`message_center.delivery.classification`); NULL when sent.
* ``bounce``: one row per answer that counts against an address (hard or soft), from
  the delivery or from the bounce mailbox; unique per (delivery log, attempt, source), so
  a retried finalize or a DSN read twice counts once. Soft bounces are counted here.
* ``quarantine`` becomes a decision record: ``status`` quarantined / released (a release
  is kept, so that it can be shared between instances), ``updated`` (when the decision
  was made: the last decision wins), ``release_at`` (automatic release), what caused it,
  ``last_modified`` (when the row changed here: what the synchronisation with the control
  instance reads).

Revision ID: e0006
Revises: e0005
"""

from alembic import op

revision = "e0006"
down_revision = "e0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE delivery_log
            ADD COLUMN failure_class text CHECK (failure_class IN (
                'hard', 'soft', 'policy', 'throttle', 'transient', 'error')),
            ADD COLUMN failure_reason text
    """)
    op.execute("""
        CREATE TABLE bounce (
            id              bigserial PRIMARY KEY,
            channel         text NOT NULL CHECK (channel IN ('email', 'sms')),
            address         text NOT NULL,
            failure_class   text NOT NULL CHECK (failure_class IN ('hard', 'soft')),
            failure_reason  text NOT NULL,
            error           text,
            delivery_log_id bigint,
            attempt         integer NOT NULL DEFAULT 0,
            source          text NOT NULL CHECK (source IN ('delivery', 'bounce_mail')),
            at              timestamptz NOT NULL DEFAULT now(),
            UNIQUE (delivery_log_id, attempt, source)
        )
    """)
    op.execute("CREATE INDEX bounce_address_idx ON bounce (channel, address, at)")
    op.execute("""
        ALTER TABLE quarantine
            ADD COLUMN status text NOT NULL DEFAULT 'quarantined'
                CHECK (status IN ('quarantined', 'released')),
            ADD COLUMN failure_class text NOT NULL DEFAULT 'manual'
                CHECK (failure_class IN ('hard', 'soft', 'manual')),
            ADD COLUMN failure_reason text,
            ADD COLUMN bounce_count integer NOT NULL DEFAULT 0,
            ADD COLUMN delivery_log_id bigint,
            ADD COLUMN source text NOT NULL DEFAULT 'manual',
            ADD COLUMN decided_by text,
            ADD COLUMN origin_cell smallint,
            ADD COLUMN updated timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN release_at timestamptz,
            ADD COLUMN released_at timestamptz,
            ADD COLUMN last_modified timestamptz NOT NULL DEFAULT clock_timestamp()
    """)
    # What changed here since the last synchronisation with the control instance.
    op.execute("CREATE INDEX quarantine_last_modified_idx ON quarantine (last_modified)")
    op.execute("CREATE TRIGGER quarantine_touch BEFORE UPDATE ON quarantine "
               "FOR EACH ROW EXECUTE FUNCTION mc_touch_last_modified()")


QUARANTINE_COLUMNS = ("last_modified", "status", "failure_class", "failure_reason",
                      "bounce_count", "delivery_log_id", "source", "decided_by", "origin_cell",
                      "updated", "release_at", "released_at")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS quarantine_touch ON quarantine")
    op.execute("DROP INDEX IF EXISTS quarantine_last_modified_idx")
    op.execute("ALTER TABLE quarantine " + ", ".join(
        f"DROP COLUMN IF EXISTS {column}" for column in QUARANTINE_COLUMNS))
    op.execute("DROP TABLE IF EXISTS bounce")
    op.execute("ALTER TABLE delivery_log DROP COLUMN IF EXISTS failure_class, "
               "DROP COLUMN IF EXISTS failure_reason")
