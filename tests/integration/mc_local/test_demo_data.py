"""``mc demo-data``: a day of past traffic whose rows keep the timestamps of their hour (the
README's backfill examples archive two of those hours by ``last_modified``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from mc_local.demo_data import add_demo_traffic


def test_a_day_of_past_traffic_keeps_the_timestamps_of_its_hours(execution_db):
    ids = add_demo_traffic(execution_db)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with execution_db.connect() as conn:
        rows = conn.execute(text(
            "SELECT e.status, e.last_modified, e.delivery_log_id, l.id AS log_id, "
            "       l.last_modified AS log_modified "
            "FROM rt_event e LEFT JOIN delivery_log l ON l.id = e.id")).mappings().all()
    assert len(rows) == len(ids) >= 23 * 25
    assert all(hour - timedelta(hours=23) <= row["last_modified"] < hour + timedelta(minutes=1)
               for row in rows)
    per_hour = {row["last_modified"].replace(minute=0, second=0, microsecond=0)
                for row in rows}
    assert len(per_hour) >= 23  # every hour holds events, none only "now"
    logged = [row for row in rows if row["status"] in ("sent", "failed", "ignored")]
    assert logged and all(row["delivery_log_id"] == row["log_id"] is not None
                          and row["log_modified"] < hour + timedelta(minutes=1)
                          for row in logged)
    assert all(row["delivery_log_id"] is None for row in rows if row not in logged)
