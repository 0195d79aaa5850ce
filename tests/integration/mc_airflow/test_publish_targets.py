"""Which execution instances mcPublishTemplates publishes to, and which are behind."""

from __future__ import annotations

from template_factory import publish, write

from mc_airflow.publishing import PublishTarget, publish_targets, targets_behind
from message_center import templates as tpl
from message_center.publishing import unpublish


def test_publish_targets_come_from_the_registry_deduplicated(tmp_path, monkeypatch):
    registry = write(tmp_path, "accounts.yaml", """\
accounts:
- {name: mcExec1, label: Execution instance 1, conn_id: mc_execution, cell_id: 0}
- {name: mcExec2, label: Execution instance 2, conn_id: mc_execution2, cell_id: 1}
- {name: mcExec3, label: Retired, conn_id: mc_execution3, cell_id: 2, enabled: false}
""")
    monkeypatch.setenv("MC_ACCOUNT_REGISTRY", str(registry))
    targets, warnings = publish_targets()
    assert [(t.conn_id, t.label) for t in targets] == [
        ("mc_execution", "Execution instance 1"), ("mc_execution2", "Execution instance 2")]
    assert warnings == ["account mcExec3 is disabled: not published to"]
    monkeypatch.setenv("MC_ACCOUNT_REGISTRY", str(tmp_path / "none.yaml"))
    assert [t.conn_id for t in publish_targets()[0]] == ["mc_execution"]
    assert [t.conn_id for t in publish_targets(["b", "a", "b"])[0]] == ["b", "a"]


def test_a_scheduled_check_finds_only_the_instances_behind(control_db, execution_db,
                                                           execution2_db, urls, template_dir):
    publish(urls, template_dir)
    with execution2_db.begin() as conn:
        unpublish(conn, "passwordReset")
    with control_db.connect() as conn:
        desired = tpl.desired_state(conn)
    url_of = {"mc_execution": urls["executions"]["execution"],
              "mc_execution2": urls["executions"]["execution2"],
              "mc_down": "postgresql://postgres@127.0.0.1:1/x"}.__getitem__
    targets = [PublishTarget(conn_id, conn_id)
               for conn_id in ("mc_execution", "mc_execution2", "mc_down")]
    behind, notes = targets_behind(desired, targets, url_of)
    assert [target.conn_id for target in behind] == ["mc_execution2", "mc_down"]
    assert any("mc_down: not checked: OperationalError" in note for note in notes)
    with control_db.begin() as conn:  # unchanged files: nothing new on the control side
        plan = tpl.plan_publication(conn, tpl.load_templates(template_dir), only_changed=True)
    assert not plan.changed
