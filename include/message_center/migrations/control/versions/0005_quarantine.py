"""Quarantine on the control instance: the decisions of every execution instance, shared.

``quarantine`` has the execution instance's columns (a decision keeps its ``updated``
time, its source and its ``origin_cell`` wherever it is copied: the newest decision
wins everywhere); ``last_modified`` is when the row changed *here*, what the
synchronisation down to each execution instance reads. ``quarantine_sync`` keeps, per
cell and direction, how far the synchronisation has read.

Revision ID: c0005
Revises: c0004
"""

from alembic import op

revision = "c0005"
down_revision = "c0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE quarantine (
            address         text NOT NULL,
            channel         text NOT NULL CHECK (channel IN ('email', 'sms')),
            reason          text NOT NULL DEFAULT '',
            created         timestamptz NOT NULL DEFAULT now(),
            status          text NOT NULL DEFAULT 'quarantined'
                                CHECK (status IN ('quarantined', 'released')),
            failure_class   text NOT NULL DEFAULT 'manual'
                                CHECK (failure_class IN ('hard', 'soft', 'manual')),
            failure_reason  text,
            bounce_count    integer NOT NULL DEFAULT 0,
            delivery_log_id bigint,
            source          text NOT NULL DEFAULT 'manual',
            decided_by      text,
            origin_cell     smallint,
            updated         timestamptz NOT NULL DEFAULT now(),
            release_at      timestamptz,
            released_at     timestamptz,
            last_modified   timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (channel, address)
        )
    """)
    op.execute("CREATE INDEX quarantine_last_modified_idx ON quarantine (last_modified)")
    op.execute("""
        CREATE FUNCTION mc_quarantine_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.last_modified := clock_timestamp(); RETURN NEW; END $$
    """)
    op.execute("CREATE TRIGGER quarantine_touch BEFORE UPDATE ON quarantine "
               "FOR EACH ROW EXECUTE FUNCTION mc_quarantine_touch()")
    op.execute("""
        CREATE TABLE quarantine_sync (
            cell_id     smallint NOT NULL CHECK (cell_id BETWEEN 0 AND 255),
            direction   text NOT NULL CHECK (direction IN ('up', 'down')),
            watermark   timestamptz NOT NULL,
            synced_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (cell_id, direction)
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS quarantine_sync")
    op.execute("DROP TABLE IF EXISTS quarantine")
    op.execute("DROP FUNCTION IF EXISTS mc_quarantine_touch()")
