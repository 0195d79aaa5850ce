"""The one permission check of every push protocol, against Airflow's real simple auth
manager: pushing needs the right to create runs of the queue's DAG, reading to read them."""

from __future__ import annotations

import pytest

from mc_airflow.api_auth import QUEUE_DAGS, explain, may_push, may_read


@pytest.fixture(scope="module")
def auth_manager():
    from airflow.api_fastapi.app import init_auth_manager

    return init_auth_manager()


@pytest.mark.parametrize(("role", "push", "read"), [
    ("viewer", False, True), ("user", True, True), ("op", True, True), ("admin", True, True)])
def test_rights_follow_the_dag_run_permissions(auth_manager, role, push, read):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    user = SimpleAuthManagerUser(username="someone", role=role)
    for kind in ("rt", "batch"):
        assert may_push(user, kind) is push
        assert may_read(user, kind) is read


def test_refusals_name_the_dag():
    assert QUEUE_DAGS == {"rt": "rtEventsProcessing", "batch": "batchEventsProcessing"}
    assert explain("push", "batch") == \
        "it needs the right to create DAG runs of batchEventsProcessing"
