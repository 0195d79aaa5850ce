"""mcQuarantineSynch in real DAG runs (`dag.test()`): the demo registry's two execution
databases and the control database, real PostgreSQL."""

from __future__ import annotations

import pytest

from message_center.delivery import quarantine as q

DAG_ID = "mcQuarantineSynch"


@pytest.fixture
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def get(engine, address):
    with engine.connect() as conn:
        return q.get(conn, "email", address)


def test_dag_shape(dag):
    assert dag.dag_display_name == "Quarantine synchronisation"
    assert (dag.catchup, dag.max_active_runs) == (False, 1)
    assert set(dag.task_ids) == {"synchronise", "synchronise_webhooks"}
    assert "newest decision wins" in dag.doc_md


def test_a_run_shares_a_quarantine_and_a_release(dag, execution_db, execution2_db,
                                                 control_db):
    with execution_db.begin() as conn:
        q.record_bounces(conn, [q.Bounce("email", "gone@example.test", "hard", "user_unknown",
                                         "550 5.1.1 user unknown", 1, 1)])
    dagrun = dag.test()
    assert dagrun.state == "success"
    for engine in (execution2_db, control_db):
        assert get(engine, "gone@example.test")["active"]
    with control_db.begin() as conn:
        q.release(conn, "email", "gone@example.test", decided_by="ops")
    assert dag.test().state == "success"
    for engine in (execution_db, execution2_db):
        assert get(engine, "gone@example.test")["status"] == "released"
