"""Delivery-status webhooks: the subscriptions (a copy of the control instance's), the
transactional outbox and the delivery attempts.

* ``webhook_subscription``: the control instance's subscriptions, copied down by
  ``mcQuarantineSynch`` (and at once by the API for this deployment); ``updated`` is the
  time of the decision (the newest wins), ``deleted`` a tombstone. ``failing_since`` is
  this instance's own: since when every attempt to the endpoint failed.
* ``webhook_outbox``: one message per (status change, matching subscription), written by
  :mod:`message_center.state` in the same statement as the change it reports; its ``id``
  is the ``webhook-id`` (``msg_<id>``), ``seq`` the per-event sequence number. The
  dispatcher (``mcWebhooks``) sends the ``pending`` ones (``claimed_at``: in its hands);
  a statement that writes rows NOTIFYs ``mc_webhooks`` (delivered at commit).
* ``webhook_attempt``: every HTTP attempt (code, error, the first KiB of the answer).

Revision ID: e0010
Revises: e0008
"""

from alembic import op

revision = "e0010"
down_revision = "e0008"
branch_labels = None
depends_on = None

SUBSCRIPTION_COLUMNS = """
    id                  text PRIMARY KEY,
    url                 text NOT NULL,
    events              text[] NOT NULL,
    event_types         text[] NOT NULL DEFAULT '{}',
    description         text NOT NULL DEFAULT '',
    enabled             boolean NOT NULL DEFAULT true,
    disabled_reason     text,
    disabled_at         timestamptz,
    secret_enc          text NOT NULL,
    previous_secret_enc text,
    previous_expires    timestamptz,
    max_in_flight       integer CHECK (max_in_flight BETWEEN 1 AND 1000),
    rate_per_second     double precision CHECK (rate_per_second > 0),
    created_by          text,
    created             timestamptz NOT NULL DEFAULT now(),
    updated             timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted             boolean NOT NULL DEFAULT false,
    last_modified       timestamptz NOT NULL DEFAULT clock_timestamp()
"""


def subscription_table() -> None:
    """The subscription table, the same on both roles (plus local columns)."""
    op.execute(f"CREATE TABLE webhook_subscription ({SUBSCRIPTION_COLUMNS})")
    op.execute("CREATE INDEX webhook_subscription_last_modified_idx "
               "ON webhook_subscription (last_modified)")
    op.execute("""
        CREATE FUNCTION mc_webhook_subscription_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.last_modified := clock_timestamp(); RETURN NEW; END $$
    """)
    op.execute("CREATE TRIGGER webhook_subscription_touch BEFORE UPDATE ON "
               "webhook_subscription FOR EACH ROW "
               "EXECUTE FUNCTION mc_webhook_subscription_touch()")


def upgrade() -> None:
    subscription_table()
    op.execute("ALTER TABLE webhook_subscription ADD COLUMN failing_since timestamptz")
    op.execute("""
        CREATE TABLE webhook_outbox (
            id              bigint PRIMARY KEY,
            subscription_id text NOT NULL,
            event_kind      text,
            event_id        bigint,
            seq             integer NOT NULL DEFAULT 1,
            name            text NOT NULL,
            data            jsonb NOT NULL DEFAULT '{}'::jsonb,
            occurred_at     timestamptz NOT NULL DEFAULT now(),
            status          text NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt    timestamptz NOT NULL DEFAULT now(),
            claimed_at      timestamptz,
            last_attempt    timestamptz,
            last_code       integer,
            last_error      text,
            done_at         timestamptz,
            created         timestamptz NOT NULL DEFAULT now()
        )
    """)
    # The dispatcher's hot path: due messages of one endpoint.
    op.execute("CREATE INDEX webhook_outbox_due_idx ON webhook_outbox "
               "(subscription_id, next_attempt) WHERE status = 'pending'")
    # Per-event order (an earlier message still pending holds the later ones back) and the
    # next sequence number of an event.
    op.execute("CREATE INDEX webhook_outbox_event_idx ON webhook_outbox "
               "(event_id, event_kind, subscription_id, seq)")
    # Replay by time range and the page's listing; the clean-up by age.
    op.execute("CREATE INDEX webhook_outbox_occurred_idx ON webhook_outbox "
               "(subscription_id, occurred_at)")
    op.execute("CREATE INDEX webhook_outbox_done_idx ON webhook_outbox (done_at) "
               "WHERE status <> 'pending'")
    op.execute("""
        CREATE TABLE webhook_attempt (
            id              bigserial PRIMARY KEY,
            outbox_id       bigint NOT NULL,
            subscription_id text NOT NULL,
            attempted_at    timestamptz NOT NULL DEFAULT now(),
            status_code     integer,
            error           text,
            response_body   text,
            duration_ms     integer
        )
    """)
    op.execute("CREATE INDEX webhook_attempt_subscription_idx ON webhook_attempt "
               "(subscription_id, attempted_at DESC)")
    op.execute("CREATE INDEX webhook_attempt_outbox_idx ON webhook_attempt (outbox_id)")
    op.execute("CREATE INDEX webhook_attempt_time_idx ON webhook_attempt (attempted_at)")
    # One NOTIFY per statement that wrote messages (PostgreSQL folds repeats in a
    # transaction and delivers them at commit: never for an uncommitted change).
    op.execute("""
        CREATE FUNCTION mc_webhook_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM new_rows) THEN
                PERFORM pg_notify('mc_webhooks', '');
            END IF;
            RETURN NULL;
        END $$
    """)
    op.execute("CREATE TRIGGER webhook_outbox_notify AFTER INSERT ON webhook_outbox "
               "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
               "EXECUTE FUNCTION mc_webhook_notify()")
    op.execute("CREATE TRIGGER webhook_outbox_notify_update AFTER UPDATE ON webhook_outbox "
               "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
               "EXECUTE FUNCTION mc_webhook_notify()")


def downgrade() -> None:
    for table in ("webhook_attempt", "webhook_outbox", "webhook_subscription"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP FUNCTION IF EXISTS mc_webhook_notify()")
    op.execute("DROP FUNCTION IF EXISTS mc_webhook_subscription_touch()")
