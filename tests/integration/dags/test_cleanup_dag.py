"""The `cleanup` DAG ("Database cleanup"): its shape per deployment role, and real runs with
dag.test() against the test databases: a dry run changes nothing, a run deletes the archived
old events of this deployment's execution instance (cell 0) and the expired idempotency
keys, a second run deletes nothing more, and a disabled account or an unreachable control
instance keeps every event and says why."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from mc_local.localenv import PROJECT_ROOT
from message_center.archiving import archive_window
from message_center.ids import NEXT_ID_SQL
from message_center.registry import REGISTRY_ENV

DAGS = PROJECT_ROOT / "dags"
TASKS = {"execution_instance.purge_events", "execution_instance.purge_idempotency_keys"}
CONTROL_TASKS = {"control_instance.purge_archive", "control_instance.purge_statistics"}
AIRFLOW_TASKS = {"airflow_metadata.clean_airflow_metadata"}


def dagbag_for(path: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(path))


@pytest.fixture
def cleanup_dag():
    bag = dagbag_for(DAGS / "cleanup.py")
    assert bag.import_errors == {}
    return bag.dags["cleanup"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- shape --------------------------------------------------------------------------------

def test_the_dag_in_the_minimal_architecture(dagbag):
    dag = dagbag.dags["cleanup"]
    assert dag.dag_display_name == "Database cleanup"
    assert (dag.catchup, dag.max_active_runs) == (False, 1)
    assert {"message-center", "maintenance", "execution"} <= set(dag.tags)
    assert set(dag.task_dict) == TASKS | CONTROL_TASKS | AIRFLOW_TASKS
    assert dag.task_group_dict["execution_instance"].group_display_name == "Execution instance"
    from airflow.sdk import CronTriggerTimetable

    assert dag.timetable == CronTriggerTimetable("0 3 * * *", timezone="UTC")  # nightly
    assert {name: dag.params[name] for name in (
        "event_days", "idempotency_key_hours", "archived_event_days", "statistics_days",
        "audit_days", "airflow_metadata_days", "batch_rows", "dry_run")} == {
        "event_days": 30, "idempotency_key_hours": 24, "archived_event_days": 365,
        "statistics_days": 1095, "audit_days": 1095, "airflow_metadata_days": 14,
        "batch_rows": 10_000, "dry_run": False}
    for task in dag.tasks:
        assert task.owner == "message-center" and task.retries >= 1
        assert task.task_display_name != task.task_id


def test_a_control_only_deployment_has_no_execution_group(monkeypatch):
    monkeypatch.setenv("MC_DEPLOYMENT_ROLES", "control")
    dag = dagbag_for(DAGS / "cleanup.py").dags["cleanup"]
    assert set(dag.task_dict) == CONTROL_TASKS | AIRFLOW_TASKS


def test_an_unknown_role_is_an_import_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MC_DEPLOYMENT_ROLES", "execution,controll")
    bag = dagbag_for(DAGS / "cleanup.py")
    [error] = bag.import_errors.values()
    assert "MC_DEPLOYMENT_ROLES='execution,controll': unknown role(s) ['controll']" in error


def test_a_bad_param_is_refused_naming_it(cleanup_dag):
    with pytest.raises(Exception, match="event_days"):
        cleanup_dag.test(run_conf={"event_days": 0})


# --- runs -------------------------------------------------------------------------------

def add_event(engine: Engine, status: str, last_modified: datetime, log: bool = True) -> int:
    """A real-time event of cell 0 (a pending one is scheduled far ahead: the processing
    DAGs of a running test stack leave it alone)."""
    with engine.begin() as conn:
        event_id = conn.execute(text(f"""
            INSERT INTO rt_event (id, type, email, ctx, status, created, last_modified,
                                  next_attempt)
            VALUES ({NEXT_ID_SQL}, 'ORDER_CONFIRMED', 'u@example.com', '{{}}', :status, :lm,
                    :lm, now() + interval '3650 days') RETURNING id"""),
            {"status": status, "lm": last_modified}).scalar_one()
        if log:
            conn.execute(text(f"""
                INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status,
                                          created, last_modified)
                VALUES ({NEXT_ID_SQL}, 'rt', :e, 'email', 'u@example.com', 'sent', :lm, :lm)"""),
                {"e": event_id, "lm": last_modified})
    return event_id


def add_keys(engine: Engine, *ages: timedelta) -> None:
    with engine.begin() as conn:
        for n, age in enumerate(ages):
            conn.execute(text("""
                INSERT INTO api_idempotency (key, endpoint, request_hash, status_code, response,
                                             created)
                VALUES (:key, 'rtEvents', 'h', 201, '{}', now() - :age)"""),
                {"key": f"key-{n}", "age": age})


def state(engine: Engine) -> dict[str, set]:
    with engine.connect() as conn:
        return {"events": set(conn.execute(text("SELECT id FROM rt_event")).scalars()),
                "logs": set(conn.execute(text("SELECT event_id FROM delivery_log")).scalars()),
                "keys": set(conn.execute(text("SELECT key FROM api_idempotency")).scalars())}


@pytest.fixture
def history(execution_db, control_db):
    """Old sent events (archived), an old pending one, a recent sent one, two keys."""
    now = datetime.now(UTC)
    old = [add_event(execution_db, "sent", now - timedelta(days=40 + n)) for n in range(3)]
    pending = add_event(execution_db, "pending", now - timedelta(days=50), log=False)
    recent = add_event(execution_db, "sent", now - timedelta(days=2))
    add_keys(execution_db, timedelta(hours=30), timedelta(hours=2))
    archive_window(execution_db, control_db, 0, now - timedelta(days=60), now,
                   statistics=False)
    return {"old": set(old), "kept": {pending, recent}}


def test_dry_run_then_run_then_nothing_more(cleanup_dag, execution_db, history, caplog):
    caplog.set_level("INFO")
    before = state(execution_db)
    dry = cleanup_dag.test(run_conf={"dry_run": True})
    assert dry.state == "success"
    assert state(execution_db) == before
    assert "DRY RUN, nothing deleted" in caplog.text
    assert "would delete 3 event(s) and 3 delivery log(s)" in caplog.text
    assert "idempotency keys created before" in caplog.text and ": 1 would go" in caplog.text
    assert "pg_total_relation_size" in caplog.text

    caplog.clear()
    run = cleanup_dag.test(run_conf={"dry_run": False})  # dag.test() keeps the last conf
    assert run.state == "success"
    after = state(execution_db)
    assert after["events"] == history["kept"]
    assert not history["old"] & after["logs"]
    assert after["keys"] == {"key-1"}
    assert "deleted 3 event(s) and 3 delivery log(s)" in caplog.text
    assert "before: rt_event:" in caplog.text and "after:  rt_event:" in caplog.text

    again = cleanup_dag.test(run_conf={"dry_run": False})
    assert again.state == "success"
    assert state(execution_db) == after


def test_a_disabled_account_keeps_every_event(cleanup_dag, execution_db, history, caplog,
                                              tmp_path, monkeypatch):
    registry = tmp_path / "execution_accounts.yaml"
    registry.write_text("accounts:\n  - {name: mcExec1, label: One, conn_id: mc_execution, "
                        "cell_id: 0, enabled: false}\n")
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    caplog.set_level("INFO")
    before = state(execution_db)
    assert cleanup_dag.test().state == "success"
    after = state(execution_db)
    assert after["events"] == before["events"] and after["logs"] == before["logs"]
    assert "execution account mcExec1 (cell 0) is disabled" in caplog.text
    assert after["keys"] == {"key-1"}  # keys do not depend on the archive


def test_an_unreachable_control_instance_keeps_every_event(cleanup_dag, execution_db, history,
                                                            caplog, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MC_CONTROL",
                       f"postgres://mc:s3cret@127.0.0.1:{free_port()}/mc_control")
    for task in cleanup_dag.tasks:  # keep the retry, drop the wait
        task.retries, task.retry_delay = 1, timedelta(0)
    caplog.set_level("INFO")
    before = state(execution_db)
    run = cleanup_dag.test(run_conf={"dry_run": False})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    # the execution instance's clean-up succeeds, keeping every event; the control
    # instance's own clean-up cannot run and fails (after its retry), as it should
    assert states["execution_instance.purge_events"] == "success"
    assert states["execution_instance.purge_idempotency_keys"] == "success"
    assert states["control_instance.purge_archive"] == "failed"
    assert state(execution_db)["events"] == before["events"]
    assert "the control database is unreachable" in caplog.text
    assert "s3cret" not in caplog.text


def test_the_control_group_purges_archive_and_statistics(cleanup_dag, control_db, caplog):
    now = datetime.now(UTC)
    with control_db.begin() as conn:
        conn.execute(text("""
            INSERT INTO archived_event (cell_id, id, event_kind, type, wished_channel, ctx,
                                        status, created, last_modified, error_count)
            VALUES (0, 1, 'rt', 'T', 'email', '{}', 'sent', :old, :old, 0),
                   (0, 2, 'rt', 'T', 'email', '{}', 'sent', :new, :new, 0)"""),
            {"old": now - timedelta(days=400), "new": now - timedelta(days=40)})
        conn.execute(text("""
            INSERT INTO event_stats_hourly (hour, cell_id, event_kind, event_type, channel,
                                            status, received)
            SELECT date_trunc('hour', t), 0, 'rt', 'T', 'email', 'sent', 1
            FROM unnest(ARRAY[CAST(:old AS timestamptz), CAST(:new AS timestamptz)]) t"""),
            {"old": now - timedelta(days=1200), "new": now - timedelta(days=400)})
    caplog.set_level("INFO")
    assert cleanup_dag.test(run_conf={"dry_run": False}).state == "success"
    with control_db.connect() as conn:
        assert list(conn.execute(text("SELECT id FROM archived_event")).scalars()) == [2]
        assert conn.execute(text("SELECT count(*) FROM event_stats_hourly")).scalar() == 1
    assert "1 event(s), 0 delivery log(s)" in caplog.text
    assert "before: archived_event:" in caplog.text


def airflow_db() -> Engine:
    from mc_local.localenv import deployment
    from message_center.db import engine_for

    return engine_for(deployment(os.environ["MC_DEPLOYMENT_PROFILE"]).database_url("airflow"))


def test_airflow_metadata_of_the_message_center_dags_goes_with_airflow_db_clean(
        dagbag, cleanup_dag, execution_db, caplog):
    status = dagbag.dags["updateEventStatus"]
    old_run = status.test(run_conf={})
    new_run = status.test(run_conf={})
    assert old_run.state == new_run.state == "success"
    with airflow_db().begin() as conn:  # a run of 30 days ago
        for table in ("dag_run", "task_instance"):
            conn.execute(text(f"UPDATE {table} SET start_date = start_date - interval '30 days'"
                              " WHERE dag_id = 'updateEventStatus' AND run_id = :run"),
                         {"run": old_run.run_id})

    def runs() -> set[str]:
        with airflow_db().connect() as conn:
            return set(conn.execute(text(
                "SELECT run_id FROM dag_run WHERE dag_id = 'updateEventStatus'")).scalars())

    caplog.set_level("INFO")
    assert cleanup_dag.test(run_conf={"dry_run": True}).state == "success"
    assert {old_run.run_id, new_run.run_id} <= runs()
    assert "DRY RUN, nothing deleted: Airflow metadata older than" in caplog.text

    assert cleanup_dag.test(run_conf={"dry_run": False}).state == "success"
    assert old_run.run_id not in runs() and new_run.run_id in runs()
    with airflow_db().connect() as conn:
        assert not conn.execute(text(
            "SELECT count(*) FROM task_instance WHERE run_id = :run"),
            {"run": old_run.run_id}).scalar()
    assert "airflow db clean:" in caplog.text and "before: dag_run:" in caplog.text
    assert "updateEventStatus" in caplog.text and "mcSynch_mcExec1" in caplog.text


def test_without_the_airflow_db_connection_the_metadata_is_left_alone(cleanup_dag, caplog,
                                                                       monkeypatch):
    import mc_airflow.cleanup

    monkeypatch.setattr(mc_airflow.cleanup, "AIRFLOW_DB_CONN_ID", "no_such_connection")
    caplog.set_level("INFO")
    assert cleanup_dag.test(run_conf={"dry_run": False}).state == "success"
    assert "Airflow metadata not cleaned: no Airflow connection 'no_such_connection'" in (
        caplog.text)
    assert "airflow db clean --clean-before-timestamp" in caplog.text

