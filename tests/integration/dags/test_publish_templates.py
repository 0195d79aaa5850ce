"""mcPublishTemplates, run for real with ``dag.test()``: versions on the control database,
publication to two execution databases, republish, unpublish, and an instance that is
down while the others are published."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from mc_airflow.defaults import TEMPLATES_DIR
from message_center.events import insert_events, parse_event
from message_center.ids import to_stored

DAG_ID = "mcPublishTemplates"
BOTH = ["mc_execution", "mc_execution2"]


@pytest.fixture
def dag(dagbag):
    return dagbag.dags[DAG_ID]


@pytest.fixture
def template_dir(tmp_path: Path, monkeypatch) -> Path:
    directory = tmp_path / "message_templates"
    shutil.copytree(TEMPLATES_DIR, directory)
    monkeypatch.setenv("MC_TEMPLATES_DIR", str(directory))
    return directory


@pytest.fixture
def databases(control_db, execution_db, execution2_db):
    return control_db, execution_db, execution2_db


def run(dag, **conf):
    # Every param explicitly: dag.test() keeps the last run's conf in the (session-wide)
    # DAG object's params.
    return dag.test(run_conf={"templates": [], "unpublish": [], "instances": [], **conf})


def states(dag_run) -> dict[str, str]:
    return {(ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.rendered_map_index}]"):
            ti.state for ti in dag_run.get_task_instances()}


def active(engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT internal_name, version FROM published_template WHERE active ORDER BY 1"))]


def test_dag_shape(dag):
    assert dag.dag_display_name == "Publish message templates"
    assert set(dag.params.keys()) == {"templates", "unpublish", "instances"}
    assert dag.max_active_runs == 1 and not dag.catchup
    assert {task.task_id for task in dag.tasks} == {"plan", "publish_to_instance", "report"}


def test_publish_republish_and_unpublish(dag, databases, template_dir):
    control_db, execution_db, execution2_db = databases
    dag_run = run(dag, instances=BOTH)
    assert dag_run.state == "success", states(dag_run)
    assert states(dag_run)["publish_to_instance[mc_execution2]"] == "success"
    for engine in (execution_db, execution2_db):
        assert active(engine) == [
            ("orderConfirmed", 1), ("orderShippedPush", 1), ("passwordReset", 1)]

    path = template_dir / "password_reset_sms.yaml"
    path.write_text(path.read_text().replace("reset code is", "code is"))
    dag_run = run(dag, instances=BOTH)
    assert dag_run.state == "success", states(dag_run)
    for engine in (execution_db, execution2_db):
        assert active(engine) == [
            ("orderConfirmed", 1), ("orderShippedPush", 1), ("passwordReset", 2)]
        with engine.connect() as conn:  # what the link step reads for the event type
            body = conn.execute(text(
                "SELECT sms_body FROM published_template WHERE active AND "
                "event_type = 'PASSWORD_RESET' AND channel = 'sms' "
                "ORDER BY version DESC LIMIT 1")).scalar_one()
        assert "your Demo Shop code is" in body
    with control_db.connect() as conn:
        assert conn.execute(text("SELECT current_version FROM template "
                                 "WHERE internal_name = 'passwordReset'")).scalar_one() == 2

    dag_run = run(dag, instances=BOTH, unpublish=["orderConfirmed"])
    assert dag_run.state == "success", states(dag_run)
    for engine in (execution_db, execution2_db):
        assert active(engine) == [("orderShippedPush", 1), ("passwordReset", 2)]
    with control_db.connect() as conn:
        assert conn.execute(text("SELECT published FROM template "
                                 "WHERE internal_name = 'orderConfirmed'")).scalar_one() is False
        # each manual run is in the audit trail, in the transaction that published
        audited = conn.execute(text("SELECT actor, action, target, details FROM audit_log "
                                    "ORDER BY id")).mappings().all()
    assert [(row["action"], row["target"]) for row in audited] == [
        ("templates.publish", "every template"), ("templates.publish", "every template"),
        ("templates.publish", "orderConfirmed")]
    assert audited[-1]["details"]["unpublish"] == ["orderConfirmed"]
    assert audited[-1]["details"]["instances"] == BOTH
    assert audited[-1]["details"]["runId"] == dag_run.run_id


def test_an_instance_that_is_down_is_reported_and_does_not_block_the_others(
        dag, databases, template_dir, monkeypatch):
    _, execution_db, execution2_db = databases
    monkeypatch.setenv("AIRFLOW_CONN_MC_DOWN", "postgres://postgres@127.0.0.1:1/mc_execution")
    dag_run = run(dag, instances=[*BOTH, "mc_down"])
    by_task = states(dag_run)
    assert dag_run.state == "failed"
    assert by_task["publish_to_instance[mc_down]"] == "failed"
    assert by_task["publish_to_instance[mc_execution]"] == "success"
    assert by_task["publish_to_instance[mc_execution2]"] == "success"
    assert by_task["report"] == "failed"
    for engine in (execution_db, execution2_db):
        assert active(engine) == [
            ("orderConfirmed", 1), ("orderShippedPush", 1), ("passwordReset", 1)]


def test_a_bad_template_file_publishes_nothing(dag, databases, template_dir):
    control_db, execution_db, _ = databases
    (template_dir / "broken.yaml").write_text("internal_name: broken\nchannel: email\n")
    dag_run = run(dag, instances=BOTH)
    assert dag_run.state == "failed"
    assert states(dag_run)["plan"] == "failed"
    assert states(dag_run)["report"] == "failed"  # the run stays red
    assert active(execution_db) == []
    with control_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM template_version")).scalar_one() == 0


def test_default_targets_are_the_registered_accounts(dag, databases, template_dir, tmp_path,
                                                     monkeypatch):
    _, execution_db, execution2_db = databases
    registry = tmp_path / "accounts.yaml"
    registry.write_text(
        "accounts:\n"
        "- {name: mcExec2, label: Execution instance 2, conn_id: mc_execution2, cell_id: 1}\n")
    monkeypatch.setenv("MC_ACCOUNT_REGISTRY", str(registry))
    dag_run = run(dag)
    assert dag_run.state == "success", states(dag_run)
    assert {key for key in states(dag_run) if key.startswith("publish_to_instance")} == {
        "publish_to_instance[mc_execution]", "publish_to_instance[mc_execution2]"}
    assert active(execution2_db) == active(execution_db) == [
        ("orderConfirmed", 1), ("orderShippedPush", 1), ("passwordReset", 1)]


def push(engine, order_id: str) -> int:
    """Queue one ORDER_CONFIRMED batch event as the push API does."""
    event = parse_event({"type": "ORDER_CONFIRMED", "email": "eve@example.com",
                         "ctx": {"firstName": "Eve", "orderId": order_id, "total": 12.5}})
    with engine.begin() as conn:
        [public_id] = insert_events(conn, "batch", [event])
    return to_stored(public_id)


def test_processing_uses_the_republished_version_and_drops_an_unpublished_one(
        dagbag, dag, databases, template_dir, smtp_sink):
    _, execution_db, _ = databases
    processing = dagbag.dags["batchEventsProcessing"]
    assert run(dag, instances=["mc_execution"]).state == "success"
    path = template_dir / "order_confirmed_email.yaml"
    path.write_text(path.read_text().replace('subject: "Your order {{ orderId }} is confirmed"',
                                             'subject: "Order {{ orderId }} is on its way"'))
    assert run(dag, instances=["mc_execution"]).state == "success"

    first = push(execution_db, "B-1")
    assert processing.test(run_conf={"retry_backoff_seconds": 0}).state == "success"
    [message] = smtp_sink.messages()
    assert message["Subject"] == "Order B-1 is on its way"
    assert "Thank you, Eve!" in message.get_body(("html",)).get_content()
    with execution_db.connect() as conn:
        row = conn.execute(text(
            "SELECT e.status, d.template_name, d.template_version FROM batch_event e "
            "JOIN delivery_log d ON d.id = e.delivery_log_id WHERE e.id = :id"),
            {"id": first}).one()
    assert tuple(row) == ("sent", "orderConfirmed", 2)

    assert run(dag, instances=["mc_execution"], unpublish=["orderConfirmed"]).state == "success"
    second = push(execution_db, "B-2")
    assert processing.test(run_conf={"retry_backoff_seconds": 0}).state == "success"
    with execution_db.connect() as conn:
        status = conn.execute(text("SELECT status FROM batch_event WHERE id = :id"),
                              {"id": second}).scalar_one()
    assert status == "not_taken_into_account"
    assert len(smtp_sink.messages()) == 1
