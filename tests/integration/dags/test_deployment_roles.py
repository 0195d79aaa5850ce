"""``MC_DEPLOYMENT_ROLES``: which DAGs a deployment gets (a second execution instance runs
the execution DAGs only; the control instance archives every account)."""

from __future__ import annotations

import pytest

from mc_local.localenv import PROJECT_ROOT

EXECUTION_DAGS = {"rtEventsProcessing", "batchEventsProcessing", "updateEventStatus",
                  "mcBulkAction"}


def _dag_ids(monkeypatch: pytest.MonkeyPatch, roles: str | None) -> tuple[set[str], dict]:
    from airflow.dag_processing.dagbag import DagBag

    if roles is None:
        monkeypatch.delenv("MC_DEPLOYMENT_ROLES", raising=False)
    else:
        monkeypatch.setenv("MC_DEPLOYMENT_ROLES", roles)
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    return set(bag.dags), bag.import_errors


def test_execution_only_deployment_gets_the_execution_dags(monkeypatch):
    dag_ids, errors = _dag_ids(monkeypatch, "execution")
    assert not errors
    assert dag_ids >= EXECUTION_DAGS
    assert not {d for d in dag_ids if d.startswith("mcSynch_") or d == "mcPublishTemplates"}


def test_both_roles_by_default(monkeypatch):
    dag_ids, errors = _dag_ids(monkeypatch, None)
    assert not errors
    assert EXECUTION_DAGS | {"mcSynch_mcExec1", "mcSynch_mcExec2", "mcPublishTemplates"} <= dag_ids
    control_only, _ = _dag_ids(monkeypatch, "control")
    assert not control_only & EXECUTION_DAGS and "mcSynch_mcExec2" in control_only


@pytest.mark.fast
def test_a_bad_role_names_the_variable(monkeypatch):
    from mc_airflow.defaults import deployment_roles

    monkeypatch.setenv("MC_DEPLOYMENT_ROLES", "execution,archive")
    with pytest.raises(ValueError, match=r"MC_DEPLOYMENT_ROLES=.*'archive'"):
        deployment_roles()
    monkeypatch.setenv("MC_DEPLOYMENT_ROLES", " Execution ")
    assert deployment_roles() == ("execution",)
