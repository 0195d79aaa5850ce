"""The authorization module against Airflow's real simple auth manager, in process: each
role's rights for every Message Center action, and the FastAPI dependencies with real JWTs
signed by the auth manager (401 without or with an expired token, 403 naming the missing
permission). The same rules through the real API server:
tests/integration/plugins/test_permissions.py.
"""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from mc_airflow import authorization as authz

ROLES = ("viewer", "user", "op", "admin")


@pytest.fixture(scope="module")
def auth_manager(tmp_path_factory):
    from airflow.api_fastapi.app import init_auth_manager

    # Its own password file: init() writes passwords for listed users that have none.
    passwords = tmp_path_factory.mktemp("auth") / "passwords.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        yield init_auth_manager()


def user(role: str):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return SimpleAuthManagerUser(username=f"the-{role}", role=role)


# role -> (push, read, test connections, register accounts, change accounts, publish)
EXPECTED = {
    "viewer": (set(), {"rt", "batch"}, False, False, False, False),
    "user": ({"rt", "batch"}, {"rt", "batch"}, False, False, True, True),
    "op": ({"rt", "batch"}, {"rt", "batch"}, True, True, True, True),
    "admin": ({"rt", "batch"}, {"rt", "batch"}, True, True, True, True),
}


@pytest.mark.fast  # the auth manager in process, no token: no database
@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_what_airflow_gives_it_for_the_equivalent_action(auth_manager, role):
    rights = authz.capabilities(user(role))
    assert (set(rights.push), set(rights.read), rights.test_connections,
            rights.register_accounts, rights.change_accounts,
            rights.publish_templates) == EXPECTED[role]
    for kind in ("rt", "batch"):
        assert authz.may_push(user(role), kind) is (kind in EXPECTED[role][0])
        assert authz.may_read(user(role), kind) is True
    assert rights.as_dict()["push"] == sorted(EXPECTED[role][0])


@pytest.mark.fast  # the auth manager in process, no token: no database
def test_pushing_asks_exactly_what_triggering_the_dag_asks(auth_manager):
    """The same question Airflow asks for POST /api/v2/dags/{dag_id}/dagRuns."""
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    for role in ROLES:
        for kind, dag_id in authz.QUEUE_DAGS.items():
            airflow_says = auth_manager.is_authorized_dag(
                method="POST", access_entity=DagAccessEntity.RUN,
                details=DagDetails(id=dag_id), user=user(role))
            assert authz.may_push(user(role), kind) is airflow_says


@pytest.mark.fast  # the auth manager in process, no token: no database
def test_refusals_name_the_action_the_permission_and_the_user(auth_manager):
    with pytest.raises(authz.Forbidden) as refused:
        authz.check(user("viewer"), "pushing real-time events", authz.push_permission("rt"))
    assert refused.value.status_code == 403
    assert refused.value.detail == (
        "Forbidden: pushing real-time events needs the permission to create DAG runs of "
        "rtEventsProcessing in Airflow; user 'the-viewer' does not have it")
    with pytest.raises(authz.Forbidden) as refused:
        authz.check_register_account(user("user"), "mcExec3", "mc_execution3")
    assert refused.value.detail.startswith(
        "Forbidden: registering an execution account needs the permission to create "
        "connections (mc_execution3) in Airflow")
    authz.check_register_account(user("op"), "mcExec3", "mc_execution3")
    authz.check_change_account(user("user"), "mcExec1")
    with pytest.raises(authz.Forbidden, match="edit the DAG mcSynch_mcExec1"):
        authz.check_change_account(user("viewer"), "mcExec1")
    with pytest.raises(authz.Forbidden, match="create connections"):
        authz.check_test_connection(user("user"), "mc_execution")


@pytest.mark.fast  # the auth manager in process, no token: no database
@pytest.mark.parametrize(("kind", "words", "dag_id"), [
    ("rt", "real-time events", "rtEventsProcessing"),
    ("batch", "batch events", "batchEventsProcessing")])
def test_check_push_is_the_push_dependency_rule_for_a_known_user(auth_manager, kind, words,
                                                                 dag_id):
    """ACC's SOAP API knows the user from the envelope: the same rule and refusal words as
    ``require_push`` (and :data:`PUSH_API_AUTHORIZATION` hands this check to the apps)."""
    assert authz.PUSH_API_AUTHORIZATION.check_push is authz.check_push
    for role in ("user", "op", "admin"):
        authz.check_push(user(role), kind)
    with pytest.raises(authz.Forbidden) as refused:
        authz.check_push(user("viewer"), kind)
    assert refused.value.detail == (
        f"Forbidden: pushing {words} needs the permission to create DAG runs of {dag_id} in "
        "Airflow; user 'the-viewer' does not have it")
    assert str(authz.push_permission(kind)) == f"create DAG runs of {dag_id}"


@pytest.mark.fast  # the auth manager in process, no token: no database
def test_read_access_names_the_queue_it_lacks(auth_manager):
    access = authz.EventReadAccess(user("viewer"), frozenset({"rt"}))
    access.check("rt")
    with pytest.raises(authz.Forbidden, match="read DAG runs of batchEventsProcessing"):
        access.check("batch")


# --- the FastAPI dependencies, with tokens signed by the auth manager ----------------------
def ok() -> dict[str, bool]:
    return {"ok": True}


READ = authz.require_read()


def kinds(access: authz.EventReadAccess = Depends(READ)) -> dict[str, list]:
    return {"kinds": sorted(access.kinds)}


@pytest.fixture(scope="module")
def client(auth_manager):
    app = FastAPI()
    for method, path, dependency in [
            ("POST", "/push-rt", authz.require_push("rt")),
            ("POST", "/push-batch", authz.require_push("batch")),
            ("POST", "/accounts", authz.require_accounts_admin()),
            ("PUT", "/accounts/mcExec1", authz.require_account_change("mcExec1")),
            ("POST", "/publish", authz.require_templates_publish())]:
        app.add_api_route(path, ok, methods=[method], dependencies=[Depends(dependency)])
    app.add_api_route("/read", kinds, methods=["GET"])
    return TestClient(app)


def bearer(auth_manager, role: str, seconds: int = 600) -> dict[str, str]:
    token = auth_manager.generate_jwt(user(role), expiration_time_in_seconds=seconds)
    return {"Authorization": f"Bearer {token}"}


ROUTES = [("POST", "/push-rt", "user"), ("POST", "/push-batch", "user"),
          ("GET", "/read", "viewer"), ("POST", "/accounts", "op"),
          ("PUT", "/accounts/mcExec1", "user"), ("POST", "/publish", "user")]


@pytest.mark.parametrize(("method", "path", "least_role"), ROUTES)
def test_dependencies_allow_from_the_least_role_on_and_refuse_below(
        auth_manager, client, method, path, least_role):
    for role in ROLES:
        response = client.request(method, path, headers=bearer(auth_manager, role))
        allowed = ROLES.index(role) >= ROLES.index(least_role)
        assert response.status_code == (200 if allowed else 403), (role, response.text)
        if not allowed:
            assert "in Airflow; user 'the-" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "least_role"), ROUTES)
def test_dependencies_answer_401_without_a_valid_token(auth_manager, client, method, path,
                                                       least_role):
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"},
                    {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_an_expired_token_is_401_token_expired(auth_manager, client):
    # Expired a minute ago, past Airflow's clock-skew leeway ([api_auth] jwt_leeway, 10 s).
    expired = client.post("/push-rt", headers=bearer(auth_manager, "admin", seconds=-60))
    assert (expired.status_code, expired.json()["detail"]) == (401, "Token Expired")


def test_the_read_dependency_returns_the_readable_queues(auth_manager, client):
    assert client.get("/read", headers=bearer(auth_manager, "viewer")).json() == {
        "kinds": ["batch", "rt"]}
