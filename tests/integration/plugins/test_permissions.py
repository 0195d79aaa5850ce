"""Who may do what, through the real API server: users of each simple-auth-manager role
(viewer, user, op, admin) log in with ``POST /auth/token`` and use the push API as Airflow
loads it. A refusal is a 403 naming the missing permission, stores nothing and leaves its
Idempotency-Key unused; an expired token is a 401 that ``mc push`` and the Python client
get past by logging in again once, retrying with the same key.

Registering accounts and publishing templates have no endpoint on this branch yet; their
rules are tested on the authorization module itself
(tests/integration/mc_airflow/test_authorization.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from mc_local.client import PushClient, PushError

pytestmark = pytest.mark.server

EVENT = {"type": "ORDER_CONFIRMED", "email": "jane@example.com", "ctx": {"orderId": "A-1"}}
ROLES = ("viewer", "user", "op", "admin")
CAN_PUSH = {"viewer": False, "user": True, "op": True, "admin": True}
PUSHES = [("rtEvents", EVENT, "rtEventsProcessing"),
          ("batchEvents", {"events": [EVENT, EVENT]}, "batchEventsProcessing")]


def stored(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("rt_event", "batch_event", "api_idempotency")}


@pytest.fixture(scope="module")
def tokens(airflow_stack) -> dict[str, str]:
    return {role: airflow_stack.token(role) for role in ROLES}


def call(airflow_stack, token: str, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return httpx.request(method, f"{airflow_stack.base_url}/message-center/v1{path}",
                         headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("endpoint", "body", "dag_id"), PUSHES)
def test_pushing_needs_the_right_to_trigger_the_queue_dag(airflow_stack, tokens, execution_db,
                                                          role, endpoint, body, dag_id):
    key = f"perm-{role}-{endpoint}"
    answer = call(airflow_stack, tokens[role], "POST", f"/{endpoint}", json=body,
                  headers={"Idempotency-Key": key})
    if CAN_PUSH[role]:
        assert answer.status_code == 201, answer.text
        return
    assert answer.status_code == 403, answer.text
    assert answer.json()["detail"] == (
        f"Forbidden: pushing {'real-time' if endpoint == 'rtEvents' else 'batch'} events "
        f"needs the permission to create DAG runs of {dag_id} in Airflow; user {role!r} "
        "does not have it")
    assert stored(execution_db) == {"rt_event": 0, "batch_event": 0, "api_idempotency": 0}
    # The key was not used up: a user who may push gets a fresh answer with it.
    retried = call(airflow_stack, tokens["user"], "POST", f"/{endpoint}", json=body,
                   headers={"Idempotency-Key": key})
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers


def test_airflow_refuses_the_viewer_the_same_dag_run(airflow_stack, tokens):
    """The rule the push API applies is the one Airflow applies to its own trigger."""
    for dag_id in ("rtEventsProcessing", "batchEventsProcessing"):
        airflow = httpx.post(f"{airflow_stack.base_url}/api/v2/dags/{dag_id}/dagRuns",
                             json={"logical_date": None}, timeout=30,
                             headers={"Authorization": f"Bearer {tokens['viewer']}"})
        assert airflow.status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_events_and_health(airflow_stack, tokens, execution_db, role):
    rt_id = call(airflow_stack, tokens["user"], "POST", "/rtEvents", json=EVENT).json()["id"]
    batch_id = call(airflow_stack, tokens["user"], "POST", "/batchEvents",
                    json={"events": [EVENT]}).json()["ids"][0]
    for event_id, kind in ((rt_id, "rt"), (batch_id, "batch")):
        event = call(airflow_stack, tokens[role], "GET", f"/events/{event_id}")
        assert event.status_code == 200, event.text
        assert (event.json()["kind"], event.json()["email"]) == (kind, "jane@example.com")
    health = call(airflow_stack, tokens[role], "GET", "/health")
    assert health.status_code == 200 and health.json()["rtPending"] == 1


def expired_token(username: str, role: str) -> str:
    """A token signed with the deployment's JWT secret that expired a minute ago (past
    Airflow's 10 s clock-skew leeway), as a long-lived application would hold one."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = init_auth_manager()
    return manager.generate_jwt(SimpleAuthManagerUser(username=username, role=role),
                                expiration_time_in_seconds=-60)


def test_an_expired_token_is_401(airflow_stack, execution_db):
    answer = call(airflow_stack, expired_token("user", "user"), "POST", "/rtEvents", json=EVENT,
                  headers={"Idempotency-Key": "expired-1"})
    assert (answer.status_code, answer.json()["detail"]) == (401, "Token Expired")
    assert stored(execution_db) == {"rt_event": 0, "batch_event": 0, "api_idempotency": 0}


def test_the_client_logs_in_again_once_and_retries_with_the_same_key(airflow_stack,
                                                                    execution_db):
    stale = expired_token("user", "user")
    with PushClient(airflow_stack.base_url, token=stale, username="user",
                    password=airflow_stack.password_of("user")) as client:
        first = client.push_event(EVENT, idempotency_key="renew-1")
        assert client.token() != stale
        assert client.push_event(EVENT, idempotency_key="renew-1") == first  # replayed
    assert stored(execution_db) == {"rt_event": 1, "batch_event": 0, "api_idempotency": 1}

    with PushClient(airflow_stack.base_url, token=stale) as no_credentials, \
            pytest.raises(PushError) as refused:
        no_credentials.push_event(EVENT)
    assert (refused.value.status, refused.value.detail) == (401, {"detail": "Token Expired"})

    with PushClient(airflow_stack.base_url, token=stale, username="user",
                    password="wrong") as bad_password, pytest.raises(PushError) as refused:
        bad_password.push_event(EVENT, idempotency_key="renew-2")
    assert refused.value.status == 401
    with PushClient(airflow_stack.base_url, username="viewer",
                    password=airflow_stack.password_of("viewer")) as viewer, \
            pytest.raises(PushError) as forbidden:
        viewer.push_events([EVENT], idempotency_key="renew-2")
    assert forbidden.value.status == 403
    assert "create DAG runs of batchEventsProcessing" in str(forbidden.value)
    assert stored(execution_db) == {"rt_event": 1, "batch_event": 0, "api_idempotency": 1}


def mc_push(airflow_stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MC_API_PASSWORD", "MC_API_TOKEN")}
    return subprocess.run([str(Path(sys.executable).parent / "mc"), "push",
                           "--url", airflow_stack.base_url, *args],
                          env={**environment, **env}, capture_output=True, text=True,
                          timeout=120)


def test_mc_push_renews_an_expired_token_and_pushes_once(airflow_stack, execution_db,
                                                        tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps({**EVENT, "externalId": f"o-{i}"}) + "\n"
                            for i in range(3)))
    args = ("--file", str(path), "--batch-size", "2", "--idempotency-key", "import-7",
            "--user", "user")
    stale = expired_token("user", "user")
    pushed = mc_push(airflow_stack, *args, MC_API_TOKEN=stale,
                     MC_API_PASSWORD=airflow_stack.password_of("user"))
    assert pushed.returncode == 0, pushed.stderr
    again = mc_push(airflow_stack, *args, MC_API_TOKEN=stale,
                    MC_API_PASSWORD=airflow_stack.password_of("user"))
    assert again.returncode == 0, again.stderr
    assert stored(execution_db) == {"rt_event": 0, "batch_event": 3, "api_idempotency": 2}

    only_token = mc_push(airflow_stack, *args, MC_API_TOKEN=stale)
    assert only_token.returncode == 1 and "HTTP 401: Token Expired" in only_token.stderr


def test_mc_push_as_each_local_user(airflow_stack, execution_db):
    """`mc push --user NAME` logs in with the local deployment's password for NAME."""
    ok = mc_push(airflow_stack, "--type", "T", "--email", "a@example.com", "--user", "user")
    assert ok.returncode == 0, ok.stderr
    refused = mc_push(airflow_stack, "--type", "T", "--email", "a@example.com",
                      "--user", "viewer")
    assert refused.returncode == 1
    assert "HTTP 403: Forbidden: pushing real-time events needs the permission to create " \
           "DAG runs of rtEventsProcessing in Airflow; user 'viewer'" in refused.stderr
    unknown = mc_push(airflow_stack, "--type", "T", "--email", "a@example.com",
                      "--user", "nobody")
    assert unknown.returncode == 2 and "set MC_API_PASSWORD" in unknown.stderr
    assert stored(execution_db)["rt_event"] == 1
