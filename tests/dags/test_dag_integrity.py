"""Guards every DAG in dags/: it imports, and carries the docs, tags, owner and retries an
operator relies on in the UI."""

from __future__ import annotations

import pytest

EXPECTED_DAGS = {"rtEventsProcessing", "batchEventsProcessing", "updateEventStatus"}


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_execution_workflows_present(dagbag):
    assert set(dagbag.dags) >= EXPECTED_DAGS


@pytest.fixture(params=["all"])
def dags(dagbag):
    return list(dagbag.dags.values())


def test_every_dag_is_operable(dags):
    assert dags, "no DAG was loaded from dags/"
    for dag in dags:
        assert dag.tags, f"{dag.dag_id}: no tags"
        assert dag.doc_md and len(dag.doc_md.strip()) > 40, f"{dag.dag_id}: no docs (doc_md)"
        assert dag.dag_display_name and dag.dag_display_name != dag.dag_id, (
            f"{dag.dag_id}: no display name")
        for task in dag.tasks:
            assert task.owner == "message-center", f"{dag.dag_id}.{task.task_id}: owner"
            assert task.retries >= 1, f"{dag.dag_id}.{task.task_id}: no retries"
