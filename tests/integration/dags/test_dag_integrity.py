"""Guards every DAG in dags/: it imports, and carries the docs, tags, owner and retries an
operator relies on in the UI. One test per DAG id, so one broken DAG hides no other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mc_airflow.defaults import ACCOUNT_REGISTRY, DAGS_DIR
from message_center.registry import load_registry, registry_path

EXPECTED_DAGS = {"rtEventsProcessing", "batchEventsProcessing", "updateEventStatus"}
#: Every DAG the project ships: the execution workflows, template publishing, the database
#: clean-up and one archiving DAG per enabled account of the registry. A new DAG file adds
#: its ids here.
DAG_IDS = sorted({*EXPECTED_DAGS, "mcPublishTemplates", "cleanup", "mcQuarantineSynch",
                  "bounceMails", "mcWebhooks", "mcBulkAction",
                  *(account.dag_id for account in
                    load_registry(registry_path(ACCOUNT_REGISTRY)).enabled)})


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_execution_workflows_present(dagbag):
    assert set(dagbag.dags) >= EXPECTED_DAGS


def test_every_loaded_dag_is_checked_below(dagbag):
    assert set(dagbag.dags) <= set(DAG_IDS), "add the new DAG ids to DAG_IDS in this file"


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_every_dag_is_operable(dagbag, dag_id):
    assert dag_id in dagbag.dags, f"{dag_id}: not loaded from dags/"
    dag = dagbag.dags[dag_id]
    assert dag.tags, f"{dag.dag_id}: no tags"
    assert dag.doc_md and len(dag.doc_md.strip()) > 40, f"{dag.dag_id}: no docs (doc_md)"
    assert dag.dag_display_name and dag.dag_display_name != dag.dag_id, (
        f"{dag.dag_id}: no display name")
    for task in dag.tasks:
        assert task.owner == "message-center", f"{dag.dag_id}.{task.task_id}: owner"
        assert task.retries >= 1, f"{dag.dag_id}.{task.task_id}: no retries"


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.fast
@pytest.mark.parametrize("path", [*sorted(DAGS_DIR.glob("*.py")),
                                  *sorted((DAGS_DIR.parent / "plugins").glob("*.py"))],
                         ids=lambda path: f"{path.parent.name}/{path.name}")
def test_dags_and_plugins_never_import_the_local_tooling(path):
    """dags/ and plugins/ are not packages, so the import-linter contracts do not see them."""
    assert "mc_local" not in imported_packages(path)
