"""The webhook endpoints through the real API server and Airflow's auth manager: every
role may read the subscriptions (like events); creating, changing, deleting, testing and
replaying need the right to edit both processing DAGs (``user``, ``op``, ``admin`` of the
simple auth manager); a refusal is a 403 naming the permission and stores nothing; no
token is a 401. The secret is kept encrypted with the deployment's Fernet key."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.server

ROLES = ("viewer", "user", "op", "admin")
CAN_MANAGE = {"viewer": False, "user": True, "op": True, "admin": True}
URL = "https://93.184.215.14/hook"  # a public address literal: accepted without DNS


@pytest.fixture(scope="module")
def tokens(airflow_stack) -> dict[str, str]:
    return {role: airflow_stack.token(role) for role in ROLES}


def call(airflow_stack, token: str | None, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{airflow_stack.base_url}/message-center/v1{path}",
                         headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize("role", ROLES)
def test_read_for_all_manage_for_those_who_may_edit_the_processing_dags(
        airflow_stack, tokens, control_db, execution_db, role):
    created = call(airflow_stack, tokens[role], "POST", "/webhooks",
                   json={"url": URL, "events": ["event.sent"]})
    if not CAN_MANAGE[role]:
        assert created.status_code == 403, created.text
        assert "managing delivery-status webhooks needs the permission to edit the DAG " \
               "rtEventsProcessing" in created.json()["detail"]
        with control_db.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM webhook_subscription")).scalar() == 0
        admin = call(airflow_stack, tokens["admin"], "POST", "/webhooks",
                     json={"url": URL, "events": ["event.sent"]}).json()
        listed = call(airflow_stack, tokens[role], "GET", "/webhooks")
        assert listed.status_code == 200 and [w["id"] for w in listed.json()["items"]] == [
            admin["id"]]
        for method, path in (("PATCH", f"/webhooks/{admin['id']}"),
                             ("DELETE", f"/webhooks/{admin['id']}"),
                             ("POST", f"/webhooks/{admin['id']}/test"),
                             ("POST", f"/webhooks/{admin['id']}/replay")):
            kwargs = {} if method == "DELETE" else {"json": {"eventIds": [1]}}
            assert call(airflow_stack, tokens[role], method, path, **kwargs
                        ).status_code == 403
        return
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["createdBy"] == role
    with control_db.connect() as conn:
        stored = conn.execute(text("SELECT secret_enc FROM webhook_subscription")).scalar()
    assert body["secret"] not in stored
    with execution_db.connect() as conn:  # copied to this deployment's execution instance
        assert conn.execute(text("SELECT id FROM webhook_subscription")).scalar() == body["id"]
    assert call(airflow_stack, tokens[role], "POST", f"/webhooks/{body['id']}/test"
                ).status_code == 202
    assert call(airflow_stack, tokens[role], "PATCH", f"/webhooks/{body['id']}",
                json={"events": ["event.nope"]}).status_code == 422
    assert call(airflow_stack, tokens[role], "DELETE", f"/webhooks/{body['id']}"
                ).status_code == 204


def test_no_token_is_401(airflow_stack):
    assert call(airflow_stack, None, "GET", "/webhooks").status_code == 401
    assert call(airflow_stack, None, "POST", "/webhooks", json={}).status_code == 401


def test_a_loopback_url_is_refused_without_the_allowlist(airflow_stack, tokens, control_db):
    refused = call(airflow_stack, tokens["admin"], "POST", "/webhooks",
                   json={"url": "https://127.0.0.1:9/hook", "events": ["event.sent"]})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["field"] == "url"
    assert "loopback" in refused.json()["detail"][0]["msg"]
