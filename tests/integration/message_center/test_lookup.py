"""Event lookup on real databases: the queues searched are the ones the caller may read
(the pages pass the readable kinds of ``mc_airflow.authorization``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from processing_factory import insert_events

from message_center.archiving import archive_window
from message_center.lookup import LiveSource, parse_query, search

CELL = 1  # execution2


def test_search_covers_only_the_queues_asked_for(execution2_db, control_db):
    insert_events(execution2_db, "rt", email="both@example.test", notify=False)
    insert_events(execution2_db, "batch", email="both@example.test", notify=False)
    now = datetime.now(UTC)
    archive_window(execution2_db, control_db, CELL, now - timedelta(hours=1),
                   now + timedelta(minutes=1), statistics=False)
    query = parse_query("auto", "BOTH@example.test")
    live = [LiveSource("mcExec2", "Execution instance 2", execution2_db, cell_id=CELL)]
    for sources, control in ((live, None), ([], control_db)):  # live, then archive only
        found = {}
        for asked in (("rt", "batch"), ("batch",), ("rt",), ()):
            result = search(query, sources, control, kinds=asked)
            assert not result.problems
            found[asked] = sorted(item["kind"] for item in result.items)
        assert found == {("rt", "batch"): ["batch", "rt"], ("batch",): ["batch"],
                         ("rt",): ["rt"], (): []}
