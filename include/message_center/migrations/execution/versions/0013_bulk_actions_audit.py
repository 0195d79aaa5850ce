"""Bulk actions (cancel / retry / replay by filter) and the local audit trail.

* ``bulk_action``: one row per action run (``mcBulkAction``); its ``id`` is the DAG run id,
  so a re-run of the same DAG run resumes the same action and never starts another.
  ``state``: ``running`` (started, the guard passed), ``done``, ``refused`` (the count
  moved beyond the tolerance before it started).
* ``bulk_action_event``: every event an action touched (``new_id``: the event a replay
  created). Its primary key makes each event handled once per action, whatever re-runs.
* ``rt_event`` / ``batch_event`` gain ``replayed_from``: the event a replay was made from.
* ``audit_log``: who did what by hand on this instance (bulk actions, quarantine and
  suppression changes); append-only (an UPDATE is refused), copied to the control
  instance's ``audit_log`` by the archiving and purged by the clean-up after its delay.

Revision ID: e0013
Revises: e0014 (the sandbox, e0014, landed first; e0012 is the attachments helper's)
"""

from alembic import op

revision = "e0013"
down_revision = "e0014"
branch_labels = None
depends_on = None

AUDIT_COLUMNS = """
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text NOT NULL,
    action        text NOT NULL,
    target        text NOT NULL DEFAULT '',
    details       jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_modified timestamptz NOT NULL DEFAULT now()
"""
APPEND_ONLY = """
    CREATE OR REPLACE FUNCTION mc_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_log is append-only: rows are never changed';
    END $$
"""


def upgrade() -> None:
    for table in ("rt_event", "batch_event"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN replayed_from bigint")
    op.execute("""
        CREATE TABLE bulk_action (
            id             text PRIMARY KEY,
            action         text NOT NULL CHECK (action IN ('cancel', 'retry', 'replay')),
            filter         jsonb NOT NULL,
            options        jsonb NOT NULL DEFAULT '{}'::jsonb,
            requested_by   text NOT NULL,
            state          text NOT NULL CHECK (state IN ('running', 'done', 'refused')),
            counted        integer NOT NULL,
            expected_count integer,
            tolerance      integer NOT NULL DEFAULT 0,
            done_count     integer NOT NULL DEFAULT 0,
            reason         text,
            created        timestamptz NOT NULL DEFAULT now(),
            finished       timestamptz
        )
    """)
    op.execute("""
        CREATE TABLE bulk_action_event (
            action_id  text NOT NULL REFERENCES bulk_action (id) ON DELETE CASCADE,
            event_kind text NOT NULL CHECK (event_kind IN ('rt', 'batch')),
            event_id   bigint NOT NULL,
            new_id     bigint,
            PRIMARY KEY (action_id, event_kind, event_id)
        )
    """)
    op.execute(f"CREATE TABLE audit_log (id bigserial PRIMARY KEY, {AUDIT_COLUMNS})")
    op.execute("CREATE INDEX audit_log_last_modified_idx ON audit_log (last_modified, id)")
    op.execute(APPEND_ONLY)
    op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log "
               "FOR EACH ROW EXECUTE FUNCTION mc_audit_append_only()")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS audit_log")
    op.execute("DROP FUNCTION IF EXISTS mc_audit_append_only()")
    op.execute("DROP TABLE IF EXISTS bulk_action_event")
    op.execute("DROP TABLE IF EXISTS bulk_action")
    for table in ("rt_event", "batch_event"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS replayed_from")
