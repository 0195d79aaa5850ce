"""Hourly event statistics for the Message Center reports, and the indexes that fill them.

* ``event_stats_hourly`` - per UTC hour, cell, event kind, event type, channel and status:
  ``received`` (events created in the hour, by their current status) and ``finished``
  (events whose final status was reached in the hour) with the sums of their queue,
  sending and total times. The event history report reads it.
* ``flow_stats_hourly`` - the same hours per cell, kind and channel only (what the service
  level and processing time reports filter on): counts per final status, time sums and
  mergeable log-scale histograms over the *sent* events, and the queue size per minute.
* ``event_stats_dirty`` - (cell, hour) whose figures are out of date: the archiving upsert
  marks the hours a changed row belongs to, the statistics step of the same run recomputes
  them. Existing archives are marked here, so the next run of each account builds them.

Indexes on the archive: ``processed`` (the hour an event finished) and ``scheduled`` (the
hour a scheduled event became due) per cell, so recomputing one hour reads only that
hour's rows; failed-like events by status and time for the report's drill-down list.

Revision ID: c0003
Revises: c0002
"""

from alembic import op

revision = "c0003"
down_revision = "c0002"
branch_labels = None
depends_on = None

ERROR_STATUSES = "('not_taken_into_account', 'expired', 'failed', 'ignored')"


def upgrade() -> None:
    op.execute("""
        CREATE TABLE event_stats_hourly (
            hour        timestamptz NOT NULL,
            cell_id     smallint NOT NULL CHECK (cell_id BETWEEN 0 AND 255),
            event_kind  text NOT NULL,
            event_type  text NOT NULL,
            channel     text NOT NULL,
            status      text NOT NULL,
            received    integer NOT NULL DEFAULT 0,
            finished    integer NOT NULL DEFAULT 0,
            queue_us    bigint NOT NULL DEFAULT 0,
            total_us    bigint NOT NULL DEFAULT 0,
            sending_n   integer NOT NULL DEFAULT 0,
            sending_us  bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, cell_id, event_kind, event_type, channel, status)
        )
    """)
    op.execute("""
        CREATE TABLE flow_stats_hourly (
            hour          timestamptz NOT NULL,
            cell_id       smallint NOT NULL CHECK (cell_id BETWEEN 0 AND 255),
            event_kind    text NOT NULL,
            channel       text NOT NULL,
            received      integer NOT NULL DEFAULT 0,
            finished      integer NOT NULL DEFAULT 0,
            sent          integer NOT NULL DEFAULT 0,
            not_taken     integer NOT NULL DEFAULT 0,
            expired       integer NOT NULL DEFAULT 0,
            failed        integer NOT NULL DEFAULT 0,
            ignored       integer NOT NULL DEFAULT 0,
            sent_queue_us bigint NOT NULL DEFAULT 0,
            sent_total_us bigint NOT NULL DEFAULT 0,
            sending_n     integer NOT NULL DEFAULT 0,
            sending_us    bigint NOT NULL DEFAULT 0,
            queue_hist    integer[] NOT NULL DEFAULT '{}',
            sending_hist  integer[] NOT NULL DEFAULT '{}',
            total_hist    integer[] NOT NULL DEFAULT '{}',
            arrivals      integer NOT NULL DEFAULT 0,
            departures    integer NOT NULL DEFAULT 0,
            queue_minutes integer[] NOT NULL DEFAULT '{}',
            PRIMARY KEY (hour, cell_id, event_kind, channel)
        )
    """)
    # The queue size carried into a report's period sums arrivals - departures over every
    # earlier hour: an index-only scan of narrow entries instead of the wide rows.
    op.execute("CREATE INDEX flow_stats_hourly_queue_idx ON flow_stats_hourly "
               "(event_kind, hour) INCLUDE (cell_id, channel, arrivals, departures)")
    op.execute("""
        CREATE TABLE event_stats_dirty (
            cell_id  smallint NOT NULL,
            hour     timestamptz NOT NULL,
            PRIMARY KEY (cell_id, hour)
        )
    """)
    op.execute("CREATE INDEX archived_event_cell_processed_idx "
               "ON archived_event (cell_id, processed) WHERE processed IS NOT NULL")
    op.execute("CREATE INDEX archived_event_cell_scheduled_idx "
               "ON archived_event (cell_id, scheduled) WHERE scheduled IS NOT NULL")
    op.execute("CREATE INDEX archived_event_errors_idx "
               "ON archived_event (status, processed, cell_id, id) "
               f"WHERE status IN {ERROR_STATUSES}")
    # Whatever is archived already gets its statistics from the next archiving run.
    op.execute("""
        INSERT INTO event_stats_dirty (cell_id, hour)
        SELECT DISTINCT cell_id, date_trunc('hour', t, 'UTC')
        FROM archived_event,
             LATERAL (VALUES (created), (greatest(created, scheduled)), (processed)) AS v(t)
        WHERE t IS NOT NULL
        ON CONFLICT DO NOTHING
    """)


def downgrade() -> None:
    for index in ("archived_event_errors_idx", "archived_event_cell_scheduled_idx",
                  "archived_event_cell_processed_idx"):
        op.execute(f"DROP INDEX IF EXISTS {index}")
    for table in ("event_stats_dirty", "flow_stats_hourly", "event_stats_hourly"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
