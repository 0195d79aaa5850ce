"""Control role: template versions and the archive of every execution instance.

Revision ID: c0001
Revises:
"""

from alembic import op

revision = "c0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE template (
            internal_name   text PRIMARY KEY,
            label           text NOT NULL,
            event_type      text NOT NULL,
            channel         text NOT NULL CHECK (channel IN ('email', 'sms')),
            current_version integer NOT NULL DEFAULT 0,
            published       boolean NOT NULL DEFAULT false,
            updated         timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("""
        CREATE TABLE template_version (
            internal_name   text NOT NULL REFERENCES template ON DELETE CASCADE,
            version         integer NOT NULL CHECK (version > 0),
            content_hash    text NOT NULL,
            content         jsonb NOT NULL,
            created         timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (internal_name, version)
        )
    """)
    op.execute("""
        CREATE TABLE archived_event (
            cell_id         smallint NOT NULL CHECK (cell_id BETWEEN 0 AND 255),
            id              bigint NOT NULL,
            event_kind      text NOT NULL CHECK (event_kind IN ('rt', 'batch')),
            type            text NOT NULL,
            email           text,
            mobile_phone    text,
            wished_channel  text NOT NULL,
            external_id     text,
            language        text,
            country         text,
            origin          text,
            ctx             jsonb NOT NULL,
            scheduled       timestamptz,
            expiration      timestamptz,
            status          text NOT NULL,
            created         timestamptz NOT NULL,
            last_modified   timestamptz NOT NULL,
            processing      timestamptz,
            processed       timestamptz,
            error_count     integer NOT NULL,
            next_attempt    timestamptz,
            template_name   text,
            template_version integer,
            delivery_log_id bigint,
            error_reason    text,
            archived_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (cell_id, id)
        )
    """)
    op.execute("CREATE INDEX archived_event_created_idx ON archived_event (created)")
    op.execute("CREATE INDEX archived_event_type_idx ON archived_event (type, status)")
    op.execute("""
        CREATE TABLE archived_delivery_log (
            cell_id         smallint NOT NULL CHECK (cell_id BETWEEN 0 AND 255),
            id              bigint NOT NULL,
            event_kind      text NOT NULL,
            event_id        bigint NOT NULL,
            template_name   text,
            template_version integer,
            channel         text NOT NULL,
            address         text,
            status          text NOT NULL,
            attempts        integer NOT NULL,
            error           text,
            provider_id     text,
            created         timestamptz NOT NULL,
            last_modified   timestamptz NOT NULL,
            sending_started timestamptz,
            sent_at         timestamptz,
            archived_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (cell_id, id)
        )
    """)
    op.execute(
        "CREATE INDEX archived_delivery_log_event_idx ON archived_delivery_log (cell_id, event_id)"
    )


def downgrade() -> None:
    for table in ("archived_delivery_log", "archived_event", "template_version", "template"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
