"""A day of believable traffic on one execution instance, for the README's screenshots.

Events, delivery logs and their timestamps are written straight into an execution
database over the last 24 hours by ``mc demo-data``'s code (``mc_local.demo_data``), then
archived and counted by the real archiving and statistics code, so the report pages have
something to draw.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from mc_local.demo_data import add_demo_traffic


def add_demo_day(execution: Engine, control: Engine, cell_id: int) -> int:
    """Write the day of traffic, archive it and count it; returns the number of events."""
    from message_center.archiving import archive_window
    from message_center.reporting import refresh_statistics

    ids = add_demo_traffic(execution)
    now = datetime.now(UTC)
    start = now - timedelta(hours=25)
    archive_window(execution, control, cell_id, start, now + timedelta(seconds=1),
                   name="demo day")
    refresh_statistics(control, cell_id, window=(start, now + timedelta(hours=1)))
    return len(ids)
