"""mcBulkAction in real DAG runs (`dag.test()`) on real PostgreSQL: the params validated
with the field named, the action done, its audit row on the control instance, the guard."""

from __future__ import annotations

from processing_factory import events, insert_events
from sqlalchemy import text

DAG_ID = "mcBulkAction"


def test_dag_shape_for_the_ui(dagbag):
    dag = dagbag.dags[DAG_ID]
    assert dag.dag_display_name == "Bulk action" and dag.schedule is None
    assert {"action", "filter", "expectedCount", "tolerance", "confirmUnknown", "user",
            "expiration"} <= set(dag.params)
    assert dag.task_ids == ["run_bulk_action"]


def test_a_run_cancels_and_is_audited_on_the_control_instance(dagbag, execution_db,
                                                              control_db):
    dag = dagbag.dags[DAG_ID]
    ids = insert_events(execution_db, "batch", 3, scheduled="2999-01-01T00:00:00Z",
                        notify=False)
    conf = {"action": "cancel", "filter": {"ids": [str(i) for i in ids[:2]]},
            "expectedCount": 2, "user": "ops.jane"}
    assert dag.test(run_conf=conf).state == "success"
    assert [r["status"] for r in events(execution_db, "batch", ids)] == [
        "expired", "expired", "pending"]
    assert events(execution_db, "batch", ids)[0]["error_reason"] == "cancelled by ops.jane"
    with control_db.connect() as conn:
        row = conn.execute(text("SELECT cell_id, actor, action, details FROM audit_log")
                           ).mappings().one()
    assert (row["cell_id"], row["actor"], row["action"]) == (0, "ops.jane", "bulk.cancel")
    assert row["details"]["done"] == 2 and row["details"]["runId"].startswith("manual__")


def test_a_moved_count_or_a_bad_param_fails_the_run_and_changes_nothing(dagbag, execution_db,
                                                                         control_db):
    dag = dagbag.dags[DAG_ID]
    ids = insert_events(execution_db, "batch", 2, scheduled="2999-01-01T00:00:00Z",
                        notify=False)
    moved = {"action": "cancel", "filter": {"queue": "batch", "status": "pending"},
             "expectedCount": 5, "user": "ops"}
    assert dag.test(run_conf=moved).state == "failed"
    bad = {"action": "cancel", "filter": {"status": "lost"}, "user": "ops"}
    assert dag.test(run_conf=bad).state == "failed"
    assert {r["status"] for r in events(execution_db, "batch", ids)} == {"pending"}
    with control_db.connect() as conn:
        (refused,) = conn.execute(text("SELECT details FROM audit_log")).scalars()
    assert refused["state"] == "refused" and refused["counted"] == 2
