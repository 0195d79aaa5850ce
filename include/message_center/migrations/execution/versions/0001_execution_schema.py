"""Execution role: event queues, published templates, delivery logs, quarantine.

Revision ID: e0001
Revises:
"""

from alembic import op

revision = "e0001"
down_revision = None
branch_labels = None
depends_on = None

EVENT_COLUMNS = """
    id              bigint PRIMARY KEY,
    type            text NOT NULL,
    email           text,
    mobile_phone    text,
    wished_channel  text NOT NULL DEFAULT 'email' CHECK (wished_channel IN ('email', 'sms')),
    external_id     text,
    language        text,
    country         text,
    origin          text,
    ctx             jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(ctx) = 'object'),
    scheduled       timestamptz,
    expiration      timestamptz,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN (
                        'pending', 'pending_delivery', 'sent', 'ignored', 'failed',
                        'not_taken_into_account', 'expired')),
    created         timestamptz NOT NULL DEFAULT now(),
    last_modified   timestamptz NOT NULL DEFAULT now(),
    processing      timestamptz,
    processed       timestamptz,
    error_count     integer NOT NULL DEFAULT 0,
    next_attempt    timestamptz NOT NULL DEFAULT now(),
    template_name   text,
    template_version integer,
    delivery_log_id bigint,
    error_reason    text
"""


def upgrade() -> None:
    # Ids: high byte = cell id of this execution instance, low 56 bits from this sequence.
    op.execute("CREATE SEQUENCE mc_id_seq AS bigint MINVALUE 1 MAXVALUE 72057594037927935")
    op.execute(
        "CREATE TABLE mc_instance (singleton boolean PRIMARY KEY DEFAULT true "
        "CHECK (singleton), cell_id smallint NOT NULL CHECK (cell_id BETWEEN 0 AND 255))"
    )
    op.execute("""
        CREATE FUNCTION mc_touch_last_modified() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.last_modified := clock_timestamp(); RETURN NEW; END $$
    """)
    for kind in ("rt", "batch"):
        table = f"{kind}_event"
        op.execute(f"CREATE TABLE {table} ({EVENT_COLUMNS})")
        # The hot path: claiming due pending events in due order.
        op.execute(
            f"CREATE INDEX {table}_due_idx ON {table} (next_attempt) WHERE status = 'pending'"
        )
        op.execute(
            f"CREATE INDEX {table}_pending_delivery_idx ON {table} (id) "
            "WHERE status = 'pending_delivery'"
        )
        # Incremental archiving reads by modification time.
        op.execute(f"CREATE INDEX {table}_last_modified_idx ON {table} (last_modified)")
        op.execute(
            f"CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION mc_touch_last_modified()"
        )

    op.execute("""
        CREATE TABLE published_template (
            id              bigserial PRIMARY KEY,
            internal_name   text NOT NULL,
            label           text NOT NULL,
            event_type      text NOT NULL,
            channel         text NOT NULL CHECK (channel IN ('email', 'sms')),
            version         integer NOT NULL CHECK (version > 0),
            language        text,
            sender          text,
            subject         text,
            html_body       text,
            text_body       text,
            sms_body        text,
            active          boolean NOT NULL DEFAULT true,
            published_at    timestamptz NOT NULL DEFAULT now(),
            UNIQUE (internal_name, version)
        )
    """)
    # One event type is linked to one active template per channel (the latest version).
    op.execute(
        "CREATE INDEX published_template_link_idx ON published_template "
        "(event_type, channel, version DESC) WHERE active"
    )

    op.execute("""
        CREATE TABLE delivery_log (
            id              bigint PRIMARY KEY,
            event_kind      text NOT NULL CHECK (event_kind IN ('rt', 'batch')),
            event_id        bigint NOT NULL,
            template_name   text,
            template_version integer,
            channel         text NOT NULL CHECK (channel IN ('email', 'sms')),
            address         text,
            status          text NOT NULL DEFAULT 'queued' CHECK (status IN (
                                'queued', 'sending', 'retry', 'sent', 'ignored', 'failed')),
            attempts        integer NOT NULL DEFAULT 0,
            error           text,
            provider_id     text,
            created         timestamptz NOT NULL DEFAULT now(),
            last_modified   timestamptz NOT NULL DEFAULT now(),
            sending_started timestamptz,
            sent_at         timestamptz,
            UNIQUE (event_kind, event_id)
        )
    """)
    op.execute("CREATE INDEX delivery_log_last_modified_idx ON delivery_log (last_modified)")
    op.execute(
        "CREATE TRIGGER delivery_log_touch BEFORE UPDATE ON delivery_log "
        "FOR EACH ROW EXECUTE FUNCTION mc_touch_last_modified()"
    )

    op.execute("""
        CREATE TABLE quarantine (
            address     text NOT NULL,
            channel     text NOT NULL CHECK (channel IN ('email', 'sms')),
            reason      text NOT NULL DEFAULT '',
            created     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (channel, address)
        )
    """)
    op.execute("""
        CREATE TABLE api_idempotency (
            key          text PRIMARY KEY,
            endpoint     text NOT NULL,
            request_hash text NOT NULL,
            status_code  integer NOT NULL,
            response     jsonb NOT NULL,
            created      timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("""
        CREATE TABLE mc_watermark (
            name   text PRIMARY KEY,
            value  timestamptz NOT NULL
        )
    """)


def downgrade() -> None:
    for table in ("mc_watermark", "api_idempotency", "quarantine", "delivery_log",
                  "published_template", "batch_event", "rt_event", "mc_instance"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP FUNCTION IF EXISTS mc_touch_last_modified()")
    op.execute("DROP SEQUENCE IF EXISTS mc_id_seq")
