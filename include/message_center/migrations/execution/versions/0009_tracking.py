"""Tracking and suppressions on the execution instance.

* ``published_template.options`` (jsonb): what a template opts into (``tracking``,
  ``mirror_page``, ``unsubscribe``; :mod:`message_center.tracking.options`).
* ``tracking_log``: every hit of the tracking server (open, click, mirror page view,
  unsubscribe), written in batches; ``automated`` flags machine activity (prefetching
  image proxies, link scanners) with the reason. The message's template and sending time
  are copied on it, so the archive and the statistics need no join. ``last_modified``:
  what the archiving reads.
* ``tracking_first``: the first human open of a message and the first human click of each
  link (one row each): what a webhook ``event.opened`` / ``event.clicked`` hooks on.
* ``suppression``: one-click unsubscribes, a *decision* per (channel, address, category)
  like the quarantine (``status`` suppressed / removed, ``updated`` when decided: the
  newest decision wins wherever it is copied), shared through the control instance.

Revision ID: e0009
Revises: e0010 (after the webhooks, e0010, which landed first)
"""

from alembic import op

revision = "e0009"
down_revision = "e0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE published_template ADD COLUMN options jsonb")
    op.execute("""
        CREATE TABLE tracking_log (
            id               bigserial PRIMARY KEY,
            delivery_log_id  bigint NOT NULL,
            event_kind       text NOT NULL,
            event_id         bigint NOT NULL,
            template_name    text,
            template_version integer,
            sent_at          timestamptz,
            kind             text NOT NULL CHECK (kind IN ('open', 'click', 'mirror',
                                                           'unsubscribe')),
            link             integer,
            url              text,
            at               timestamptz NOT NULL,
            automated        boolean NOT NULL DEFAULT false,
            automated_reason text,
            user_agent       text,
            last_modified    timestamptz NOT NULL DEFAULT clock_timestamp()
        )
    """)
    op.execute("CREATE INDEX tracking_log_event_idx ON tracking_log (event_kind, event_id)")
    op.execute("CREATE INDEX tracking_log_last_modified_idx ON tracking_log (last_modified)")
    op.execute("""
        CREATE TABLE tracking_first (
            delivery_log_id  bigint NOT NULL,
            kind             text NOT NULL,
            link             integer NOT NULL DEFAULT -1,
            at               timestamptz NOT NULL,
            tracking_log_id  bigint NOT NULL,
            PRIMARY KEY (delivery_log_id, kind, link)
        )
    """)
    op.execute("""
        CREATE TABLE suppression (
            id              bigserial PRIMARY KEY,
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
            UNIQUE (channel, address, category)
        )
    """)
    op.execute("CREATE INDEX suppression_last_modified_idx ON suppression (last_modified)")
    op.execute("CREATE TRIGGER suppression_touch BEFORE UPDATE ON suppression "
               "FOR EACH ROW EXECUTE FUNCTION mc_touch_last_modified()")


def downgrade() -> None:
    for table in ("suppression", "tracking_first", "tracking_log"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("ALTER TABLE published_template DROP COLUMN IF EXISTS options")
