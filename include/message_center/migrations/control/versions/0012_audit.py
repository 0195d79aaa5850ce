"""The audit trail on the control instance: who did what by hand, on every instance.

``audit_log``: one row per manual change (bulk action, quarantine or suppression change,
account change, publish, webhook change). Rows written here have ``cell_id`` -1; rows of
an execution instance's own ``audit_log`` (its bulk actions, its quarantine changes) are
copied here by the archiving under that instance's cell id, keyed ``(cell_id, id)``.
Append-only: an UPDATE is refused (the clean-up deletes rows past their delay, 1,095
days by default).

Revision ID: c0012
Revises: c0013 (the sandbox, c0013, landed first; c0011 is the attachments helper's)
"""

from alembic import op

revision = "c0012"
down_revision = "c0013"
branch_labels = None
depends_on = None

#: ``cell_id`` of rows written on the control instance itself.
CONTROL_CELL = -1


def upgrade() -> None:
    op.execute("CREATE SEQUENCE audit_log_id_seq")
    op.execute(f"""
        CREATE TABLE audit_log (
            cell_id       smallint NOT NULL DEFAULT {CONTROL_CELL},
            id            bigint NOT NULL DEFAULT nextval('audit_log_id_seq'),
            at            timestamptz NOT NULL DEFAULT now(),
            actor         text NOT NULL,
            action        text NOT NULL,
            target        text NOT NULL DEFAULT '',
            details       jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            last_modified timestamptz NOT NULL DEFAULT now(),
            archived_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (cell_id, id)
        )
    """)
    op.execute("ALTER SEQUENCE audit_log_id_seq OWNED BY audit_log.id")
    op.execute("CREATE INDEX audit_log_at_idx ON audit_log (at)")
    op.execute("""
        CREATE OR REPLACE FUNCTION mc_audit_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only: rows are never changed';
        END $$
    """)
    op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log "
               "FOR EACH ROW EXECUTE FUNCTION mc_audit_append_only()")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS audit_log")
    op.execute("DROP FUNCTION IF EXISTS mc_audit_append_only()")
