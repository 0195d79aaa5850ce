"""The quarantine endpoints of the push API over HTTP (FastAPI TestClient, mounted under
``/message-center`` like the plugin mounts it) on the real execution database: list with
filters, look up, quarantine by hand, release; 401 / 403 / 404 / 422. Airflow's own auth
manager answers for these rights in tests/integration/plugins/test_quarantine_server.py."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.testclient import TestClient
from processing_factory import delivery_logs, insert_events, publish_templates

from message_center.api import Authorization, HealthThresholds, create_app
from message_center.delivery import quarantine as q
from message_center.delivery.quarantine import Bounce
from message_center.ids import to_public

TOKEN = "test-token"


def token_auth(authorization: str | None = Header(None)) -> str:
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    return "tester"


def rights(request: Request) -> set[str]:
    return set(request.headers.get("X-Test-Rights", "read,quarantine").split(","))


class _Read:
    def check(self, kind: str) -> None:
        return None


def _read(request: Request, _user: str = Depends(token_auth)) -> _Read:
    if "read" not in rights(request):
        raise HTTPException(403, "Forbidden: reading events needs read")
    return _Read()


def _change(request: Request, user: str = Depends(token_auth)) -> str:
    if "quarantine" not in rights(request):
        raise HTTPException(403, "Forbidden: quarantining or releasing an address needs it")
    return user


def _no_push(kind: str):
    def dependency() -> None:
        raise HTTPException(403, "no pushing here")
    return dependency


def _no_check(user: str, kind: str) -> None:
    raise AssertionError("not used")


@pytest.fixture
def client(execution_db, test_deployment):
    url = test_deployment.database_url("execution")
    app = create_app(token_auth, lambda: url, thresholds=HealthThresholds(100, 400),
                     authorization=Authorization(push=_no_push, read=_read,
                                                 check_push=_no_check,
                                                 change_quarantine=_change))
    root = FastAPI()
    root.mount("/message-center", app)
    return TestClient(root, base_url="http://testserver/message-center/v1",
                      headers={"Authorization": f"Bearer {TOKEN}"})


def test_lookup_list_and_release_a_bounced_address(client, execution_db):
    publish_templates(execution_db)
    event_id = insert_events(execution_db, "rt", 1, email="gone@example.test")[0]
    with execution_db.begin() as conn:  # a delivery log row, as the delivery writes it
        conn.execute(q.text("""INSERT INTO delivery_log (id, event_kind, event_id, channel,
                               address, status) VALUES (:id, 'rt', :id, 'email',
                               'gone@example.test', 'failed')"""), {"id": event_id})
        q.record_bounces(conn, [Bounce("email", "gone@example.test", "hard", "user_unknown",
                                       "SMTP RCPT TO refused: 550 5.1.1 user unknown",
                                       event_id, 1)])
        q.add(conn, "sms", "+33600000001", "customer asked", decided_by="ops")
    assert [log["address"] for log in delivery_logs(execution_db)] == ["gone@example.test"]

    listed = client.get("/quarantine").json()
    assert listed["total"] == 2 and listed["limit"] == 100 and listed["offset"] == 0
    assert {item["address"] for item in listed["items"]} == {"gone@example.test",
                                                             "+33600000001"}
    only = client.get("/quarantine", params={"channel": "email", "class": "hard"}).json()
    assert [item["address"] for item in only["items"]] == ["gone@example.test"]
    assert client.get("/quarantine", params={"address": "GONE"}).json()["total"] == 1

    record = client.get("/quarantine/email/Gone@Example.test")
    assert record.status_code == 200
    body = record.json()
    assert body["active"] and body["status"] == "quarantined"
    assert (body["failureClass"], body["failureReason"], body["bounceCount"]) == (
        "hard", "user_unknown", 1)
    assert body["deliveryLogId"] == to_public(event_id) and body["source"] == "delivery"
    assert body["reason"].startswith("hard bounce (user_unknown)")
    assert body["releaseAt"].endswith("Z") and body["originCell"] == 0

    released = client.delete("/quarantine/email/gone@example.test")
    assert released.status_code == 200
    assert released.json()["status"] == "released" and not released.json()["active"]
    assert released.json()["decidedBy"] == "tester" and released.json()["source"] == "api"
    again = client.delete("/quarantine/email/gone@example.test")  # idempotent
    assert again.status_code == 200 and again.json()["updated"] == released.json()["updated"]
    assert client.get("/quarantine").json()["total"] == 1
    assert client.get("/quarantine", params={"status": "released"}).json()["total"] == 1
    assert client.get("/quarantine", params={"status": "all"}).json()["total"] == 2


def test_quarantine_by_hand(client, execution_db):
    put = client.put("/quarantine/email/Eve@Example.test",
                     json={"reason": "complained", "releaseAfterDays": 10})
    assert put.status_code == 200
    body = put.json()
    assert (body["address"], body["reason"], body["failureClass"], body["decidedBy"]) == (
        "eve@example.test", "complained", "manual", "tester")
    assert body["releaseAt"] is not None
    assert client.put("/quarantine/sms/+33600000002").json()["reason"] == "quarantined by hand"
    assert client.get("/quarantine/sms/+33600000002").json()["active"]


@pytest.mark.parametrize(("method", "path", "params", "status", "detail"), [
    ("get", "/quarantine/email/nobody@example.test", None, 404,
     "email address nobody@example.test is not in quarantine"),
    ("delete", "/quarantine/email/nobody@example.test", None, 404,
     "email address nobody@example.test is not in quarantine"),
    ("get", "/quarantine/fax/x", None, 404, "Not Found"),
    ("get", "/quarantine/email/not-an-address", None, 422, None),
    ("get", "/quarantine", {"status": "everything"}, 422, None),
    ("get", "/quarantine", {"limit": 0}, 422, None),
    ("get", "/quarantine", {"since": "0.5"}, 422, None),
    ("put", "/quarantine/email/not-an-address", None, 422, None),
    ("put", "/quarantine/sms/a@example.test", None, 422, None),
    ("put", "/quarantine/sms/call%20me", None, 422, None),
])
def test_bad_requests(client, method, path, params, status, detail):
    response = getattr(client, method)(path, params=params)
    assert response.status_code == status
    if detail:
        assert response.json()["detail"] == detail
    if status == 422 and not detail:
        assert response.json()["detail"][0]["loc"][0] in ("path", "query")


def test_a_405_lists_every_method_of_the_path(client):
    response = client.post("/quarantine/email/a@example.test")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PUT"
    assert client.get("/quarantine", params={"since": "2020-01-01T00:00:00Z"}).status_code \
        == 200


def test_rights(client, execution_db):
    assert client.get("/quarantine", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/quarantine", headers={"X-Test-Rights": "quarantine"}).status_code == 403
    viewer = {"X-Test-Rights": "read"}
    assert client.get("/quarantine", headers=viewer).status_code == 200
    refused = client.put("/quarantine/email/a@example.test", headers=viewer)
    assert refused.status_code == 403
    assert client.delete("/quarantine/email/a@example.test", headers=viewer).status_code == 403
    assert client.get("/quarantine", params={"status": "all"}).json()["total"] == 0


def test_without_a_change_dependency_nobody_changes_the_quarantine(execution_db,
                                                                   test_deployment):
    url = test_deployment.database_url("execution")
    app = create_app(token_auth, lambda: url, thresholds=HealthThresholds(100, 400),
                     authorization=Authorization(push=_no_push, read=_read,
                                                 check_push=_no_check))
    client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    assert client.delete("/v1/quarantine/email/a@example.test").status_code == 403
