"""The quarantine endpoints through the real API server and Airflow's auth manager: every
role may read the quarantine (like events), quarantining and releasing need the right to
edit both processing DAGs (``user``, ``op``, ``admin`` of the simple auth manager); a
refusal is a 403 naming the permission and changes nothing; no token is a 401."""

from __future__ import annotations

import httpx
import pytest

from message_center.delivery import quarantine as q

pytestmark = pytest.mark.server

ROLES = ("viewer", "user", "op", "admin")
CAN_CHANGE = {"viewer": False, "user": True, "op": True, "admin": True}


@pytest.fixture(scope="module")
def tokens(airflow_stack) -> dict[str, str]:
    return {role: airflow_stack.token(role) for role in ROLES}


def call(airflow_stack, token: str | None, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{airflow_stack.base_url}/message-center/v1{path}",
                         headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize("role", ROLES)
def test_read_for_all_change_for_those_who_may_edit_the_processing_dags(
        airflow_stack, tokens, execution_db, role):
    with execution_db.begin() as conn:
        q.add(conn, "email", "q@example.test", "hard bounce")
    listed = call(airflow_stack, tokens[role], "GET", "/quarantine")
    assert listed.status_code == 200, listed.text
    assert [item["address"] for item in listed.json()["items"]] == ["q@example.test"]
    assert call(airflow_stack, tokens[role], "GET",
                "/quarantine/email/q@example.test").json()["active"]

    released = call(airflow_stack, tokens[role], "DELETE", "/quarantine/email/q@example.test")
    added = call(airflow_stack, tokens[role], "PUT", "/quarantine/sms/+33600000009",
                 json={"reason": "by hand"})
    with execution_db.connect() as conn:
        record = q.get(conn, "email", "q@example.test")
        other = q.get(conn, "sms", "+33600000009")
    if CAN_CHANGE[role]:
        assert released.status_code == 200 and released.json()["decidedBy"] == role
        assert added.status_code == 200 and other["decided_by"] == role
        assert not record["active"]
        return
    for answer in (released, added):
        assert answer.status_code == 403, answer.text
        assert answer.json()["detail"] == (
            "Forbidden: quarantining or releasing an address needs the permission to edit "
            "the DAG rtEventsProcessing and the permission to edit the DAG "
            f"batchEventsProcessing in Airflow; user {role!r} does not have it")
    assert record["active"] and other is None


def test_no_token_is_a_401(airflow_stack, execution_db):
    assert call(airflow_stack, None, "GET", "/quarantine").status_code == 401
    assert call(airflow_stack, None, "DELETE", "/quarantine/email/a@b.test").status_code == 401
