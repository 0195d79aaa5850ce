"""updateEventStatus in real DAG runs (`dag.test()`) on real PostgreSQL."""

from __future__ import annotations

from processing_factory import events, insert_events
from sqlalchemy import text

DAG_ID = "updateEventStatus"


def test_dag_shape_for_the_ui(dagbag):
    dag = dagbag.dags[DAG_ID]
    assert dag.dag_display_name == "Update event status"
    assert dag.max_active_runs == 1 and not dag.catchup
    assert {"batch_size", "overlap_seconds"} <= set(dag.params)
    assert dag.task_ids == ["update_event_status"]


def test_a_run_copies_outcomes_and_a_rerun_changes_nothing(dagbag, execution_db):
    dag = dagbag.dags[DAG_ID]
    ids = insert_events(execution_db, "batch", 3)
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE batch_event SET status = 'pending_delivery'"))
        conn.execute(text("""
            INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status)
            SELECT id + 100000, 'batch', id, 'email', email,
                   (ARRAY['sent', 'ignored', 'failed'])[row_number() OVER (ORDER BY id)]
            FROM batch_event
        """))
    assert dag.test(run_conf={"batch_size": 2}).state == "success"
    first = events(execution_db, "batch", ids)
    assert [row["status"] for row in first] == ["sent", "ignored", "failed"]
    assert dag.test().state == "success"
    assert events(execution_db, "batch", ids) == first
