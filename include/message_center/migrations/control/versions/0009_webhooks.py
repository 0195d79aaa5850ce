"""Delivery-status webhooks: the subscriptions, managed here and copied down to every
execution instance by ``mcQuarantineSynch`` (like the quarantine).

``webhook_subscription`` has the execution instance's columns: ``updated`` is the time of
the decision (the newest wins on every database), ``deleted`` a tombstone (a delete must
reach every instance too), ``last_modified`` when the row changed *here*. The signing
secrets are encrypted with Airflow's Fernet key (``secret_enc``).

Revision ID: c0009
Revises: c0007
"""

from alembic import op

revision = "c0009"
down_revision = "c0007"
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
    """The subscription table, the same as the execution role's (written out in each
    role's revision: a migration never changes with later code)."""
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


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS webhook_subscription")
    op.execute("DROP FUNCTION IF EXISTS mc_webhook_subscription_touch()")
