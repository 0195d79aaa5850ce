"""Tracking on the control instance: archived hits, their hourly statistics, and the
suppressions shared between execution instances.

* ``archived_tracking_log``: the execution instances' ``tracking_log`` rows, keyed by
  ``(cell_id, id)``, upserted by the archiving run like events (backfill-safe).
* ``tracking_stats_hourly``: per UTC hour *of sending*, cell and template: messages sent,
  messages opened / clicked (unique, human), opens and clicks (every human hit), and the
  automated opens and clicks apart. Rates over a period are unique / sent of the messages
  sent in it. ``tracking_stats_dirty``: the (cell, hour) to recompute, marked by the
  archiving upserts of tracking logs and delivery logs.
* ``suppression``: the execution instances' decisions (see execution revision e0009), with
  ``suppression_sync`` watermarks per cell and direction.

Revision ID: c0008
Revises: c0009 (after the webhooks, c0009, which landed first)
"""

from alembic import op

revision = "c0008"
down_revision = "c0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE archived_tracking_log (
            cell_id          smallint NOT NULL CHECK (cell_id BETWEEN 0 AND 255),
            id               bigint NOT NULL,
            delivery_log_id  bigint NOT NULL,
            event_kind       text NOT NULL,
            event_id         bigint NOT NULL,
            template_name    text,
            template_version integer,
            sent_at          timestamptz,
            kind             text NOT NULL,
            link             integer,
            url              text,
            at               timestamptz NOT NULL,
            automated        boolean NOT NULL DEFAULT false,
            automated_reason text,
            user_agent       text,
            last_modified    timestamptz NOT NULL,
            archived_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (cell_id, id)
        )
    """)
    op.execute("CREATE INDEX archived_tracking_log_event_idx "
               "ON archived_tracking_log (cell_id, event_id)")
    op.execute("CREATE INDEX archived_tracking_log_sent_idx "
               "ON archived_tracking_log (cell_id, sent_at)")
    op.execute("""
        CREATE TABLE tracking_stats_hourly (
            hour             timestamptz NOT NULL,
            cell_id          smallint NOT NULL,
            template_name    text NOT NULL,
            sent             integer NOT NULL DEFAULT 0,
            opened           integer NOT NULL DEFAULT 0,
            clicked          integer NOT NULL DEFAULT 0,
            opens            integer NOT NULL DEFAULT 0,
            clicks           integer NOT NULL DEFAULT 0,
            automated_opens  integer NOT NULL DEFAULT 0,
            automated_clicks integer NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, cell_id, template_name)
        )
    """)
    op.execute("""
        CREATE TABLE tracking_stats_dirty (
            cell_id  smallint NOT NULL,
            hour     timestamptz NOT NULL,
            PRIMARY KEY (cell_id, hour)
        )
    """)
    op.execute("""
        CREATE TABLE suppression (
            channel         text NOT NULL,
            address         text NOT NULL,
            category        text NOT NULL,
            status          text NOT NULL DEFAULT 'suppressed'
                                CHECK (status IN ('suppressed', 'removed')),
            source          text NOT NULL DEFAULT 'unsubscribe',
            delivery_log_id bigint,
            decided_by      text,
            origin_cell     smallint,
            created         timestamptz NOT NULL DEFAULT now(),
            updated         timestamptz NOT NULL DEFAULT now(),
            last_modified   timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (channel, address, category)
        )
    """)
    op.execute("CREATE INDEX suppression_last_modified_idx ON suppression (last_modified)")
    op.execute("CREATE TRIGGER suppression_touch BEFORE UPDATE ON suppression "
               "FOR EACH ROW EXECUTE FUNCTION mc_quarantine_touch()")
    op.execute("""
        CREATE TABLE suppression_sync (
            cell_id     smallint NOT NULL CHECK (cell_id BETWEEN 0 AND 255),
            direction   text NOT NULL CHECK (direction IN ('up', 'down')),
            watermark   timestamptz NOT NULL,
            synced_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (cell_id, direction)
        )
    """)


def downgrade() -> None:
    for table in ("suppression_sync", "suppression", "tracking_stats_dirty",
                  "tracking_stats_hourly", "archived_tracking_log"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
