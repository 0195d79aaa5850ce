"""The push API through the real Airflow API server: the plugin as Airflow loads it, a real
token from ``POST /auth/token``, the ``mc_execution`` connection resolved by the server,
and ``mc push`` / the Python client as a user runs them."""

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

EVENT = {"type": "ORDER_CONFIRMED", "email": "jane@example.com",
         "ctx": {"orderId": "A-1001", "total": 42.5}}


@pytest.fixture
def api(airflow_stack, execution_db):
    token = airflow_stack.token()
    with httpx.Client(base_url=f"{airflow_stack.base_url}/message-center/v1", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def count(engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_airflow_loads_the_plugin_and_serves_its_docs(airflow_stack, api):
    plugins = httpx.get(f"{airflow_stack.base_url}/api/v2/plugins", timeout=30,
                        headers=api.headers).json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "message_center_api")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/message-center"
    schema = httpx.get(f"{airflow_stack.base_url}/message-center/openapi.json", timeout=30).json()
    assert {"/v1/rtEvents", "/v1/batchEvents", "/v1/events/{event_id}", "/v1/health"} <= set(
        schema["paths"])
    docs = httpx.get(f"{airflow_stack.base_url}/message-center/docs", timeout=30)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-jwt"},
                                     {"Authorization": "Basic YWRtaW46YWRtaW4="}])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/rtEvents"), ("POST", "/batchEvents"), ("GET", "/events/1"), ("GET", "/health")])
def test_every_endpoint_needs_a_valid_airflow_token(airflow_stack, execution_db, headers,
                                                    method, path):
    body = {"events": [EVENT]} if path == "/batchEvents" else EVENT
    response = httpx.request(method, f"{airflow_stack.base_url}/message-center/v1{path}",
                             json=body if method == "POST" else None, headers=headers,
                             timeout=30)
    assert response.status_code == 401
    assert count(execution_db, "rt_event") + count(execution_db, "batch_event") == 0


def test_push_then_read_back_through_airflow(api, execution_db):
    pushed = api.post("/rtEvents", json=EVENT)
    assert pushed.status_code == 201, pushed.text
    assert pushed.json()["status"] == "pending"
    event_id = pushed.json()["id"]

    batch = api.post("/batchEvents", json={"events": [EVENT, {**EVENT, "type": "SHIPPED"}]})
    assert batch.status_code == 201, batch.text
    assert len(batch.json()["ids"]) == 2

    event = api.get(f"/events/{event_id}").json()
    assert (event["type"], event["email"], event["ctx"]) == (
        "ORDER_CONFIRMED", "jane@example.com", {"orderId": "A-1001", "total": 42.5})
    assert (event["status"], event["statusLabel"], event["kind"]) == ("pending", "Pending", "rt")
    assert api.get("/events/999999999").status_code == 404

    health = api.get("/health")
    assert health.status_code == 200
    assert (health.json()["rtPending"], health.json()["batchPending"]) == (1, 2)
    assert health.json()["alertThreshold"] == 400


def test_bad_event_is_422_and_stores_nothing(api, execution_db):
    response = api.post("/rtEvents", json={"email": "jane@example.com"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "type"
    assert count(execution_db, "rt_event") == 0


def test_python_client_with_username_and_password(airflow_stack, execution_db):
    with PushClient(airflow_stack.base_url, username="admin",
                    password=airflow_stack.password) as client:
        answer = client.push_event(EVENT, idempotency_key="client-1")
        assert client.push_event(EVENT, idempotency_key="client-1") == answer
        ids = client.push_events([EVENT] * 3)
        assert client.get_event(ids[2])["kind"] == "batch"
        status, health = client.health()
        assert (status, health["rtPending"], health["batchPending"]) == (200, 1, 3)
        with pytest.raises(PushError) as refused:
            client.push_event({"type": "X", "wishedChannel": "sms"})
        assert refused.value.status == 422 and "mobilePhone" in str(refused.value)
    with pytest.raises(PushError) as bad_login:
        PushClient(airflow_stack.base_url, username="admin", password="wrong").push_event(EVENT)
    assert bad_login.value.status == 401


def mc(airflow_stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MC_API_PASSWORD": airflow_stack.password}
    return subprocess.run([str(Path(sys.executable).parent / "mc"), "push",
                           "--url", airflow_stack.base_url, *args],
                          env=env, capture_output=True, text=True, input=stdin, timeout=120)


def test_mc_push_one_event_and_a_jsonl_file(airflow_stack, execution_db, tmp_path):
    one = mc(airflow_stack, "--type", "PASSWORD_RESET", "--email", "jane@example.com",
             "--ctx", '{"link": "https://example.com/r/1"}')
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["status"] == "pending"

    lines = [json.dumps({**EVENT, "externalId": f"o-{i}"}) for i in range(2500)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    many = mc(airflow_stack, "--file", str(path), "--idempotency-key", "demo")
    assert many.returncode == 0, many.stderr
    assert "pushed 2500 events" in many.stderr
    again = mc(airflow_stack, "--file", str(path), "--idempotency-key", "demo")
    assert again.returncode == 0, again.stderr
    assert "already pushed: all 2500 events" in again.stderr, again.stderr
    assert "pushed 2500 events to" not in again.stderr
    assert count(execution_db, "batch_event") == 2500
    assert count(execution_db, "rt_event") == 1


def test_mc_push_refuses_a_bad_file_line_and_pushes_nothing(airflow_stack, execution_db,
                                                           tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(EVENT) + "\n" + json.dumps({**EVENT, "email": "nope"}) + "\n")
    result = mc(airflow_stack, "--file", str(path))
    assert result.returncode == 2
    assert f"{path}:2: email is not a valid email address" in result.stderr
    assert count(execution_db, "batch_event") == 0
