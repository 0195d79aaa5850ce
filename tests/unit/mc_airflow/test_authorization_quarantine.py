"""Quarantine rights against Airflow's real simple auth manager, in process: reading is
reading events; quarantining / releasing is editing both processing DAGs (user, op, admin;
not viewer), with a refusal naming both permissions."""

from __future__ import annotations

import pytest

from mc_airflow import authorization as authz

ROLES = ("viewer", "user", "op", "admin")


@pytest.fixture(scope="module")
def auth_manager(tmp_path_factory):
    from airflow.api_fastapi.app import init_auth_manager

    passwords = tmp_path_factory.mktemp("auth") / "passwords.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        yield init_auth_manager()


def user(role: str):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return SimpleAuthManagerUser(username=f"the-{role}", role=role)


@pytest.mark.fast
@pytest.mark.parametrize("role", ROLES)
def test_quarantine_rights_per_role(auth_manager, role):
    may_change = role != "viewer"
    assert authz.capabilities(user(role)).change_quarantine is may_change
    assert authz.readable_kinds(user(role)) == {"rt", "batch"}
    if may_change:
        authz.check_quarantine_change(user(role))
        return
    with pytest.raises(authz.Forbidden) as refused:
        authz.check_quarantine_change(user(role))
    assert refused.value.status_code == 403
    assert refused.value.detail == (
        "Forbidden: quarantining or releasing an address needs the permission to edit the "
        "DAG rtEventsProcessing and the permission to edit the DAG batchEventsProcessing in "
        f"Airflow; user 'the-{role}' does not have it")


@pytest.mark.fast
def test_the_push_api_gets_the_quarantine_rule():
    assert authz.PUSH_API_AUTHORIZATION.change_quarantine is not None
    assert authz.quarantine_change_permissions() == (
        authz.Permission("dag", "PUT", "rtEventsProcessing"),
        authz.Permission("dag", "PUT", "batchEventsProcessing"))
