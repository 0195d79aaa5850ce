"""The webhook subscription endpoints over HTTP (FastAPI TestClient, mounted like the
plugin mounts them) on the real control and execution databases: create (secret shown
once, encrypted at rest), list, get, patch, delete, rotate, test, replay; 401 / 403 /
404 / 422 naming the field. Airflow's own auth manager answers for these rights per role
in tests/integration/plugins/test_webhooks_server.py."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.testclient import TestClient
from sqlalchemy import text
from webhook_support import outbox

from mc_airflow.webhooks import FernetBox
from message_center.api import Authorization, HealthThresholds, create_app
from message_center.api.webhooks import WebhookBackend
from message_center.net_guard import WEBHOOK_ALLOWED_HOSTS, HostList

TOKEN = "test-token"
URL = "http://127.0.0.1:9/hook"


def token_auth(authorization: str | None = Header(None)) -> str:
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    return "tester"


def rights(request: Request) -> set[str]:
    return set(request.headers.get("X-Test-Rights", "read,manage").split(","))


def _read(request: Request, _user: str = Depends(token_auth)) -> None:
    if "read" not in rights(request):
        raise HTTPException(403, "Forbidden: reading needs read")


def _manage(request: Request, user: str = Depends(token_auth)) -> str:
    if "manage" not in rights(request):
        raise HTTPException(403, "Forbidden: managing delivery-status webhooks needs edit")
    return user


def _no_push(kind: str):
    def dependency() -> None:
        raise HTTPException(403, "no pushing here")
    return dependency


@pytest.fixture
def client(execution_db, control_db, test_deployment):
    execution = test_deployment.database_url("execution")
    control = test_deployment.database_url("control")
    backend = WebhookBackend(
        control_url=lambda: control, execution_url=lambda: execution, box=FernetBox,
        hosts=lambda: HostList.parse("127.0.0.1", WEBHOOK_ALLOWED_HOSTS),
        manage=_manage, read=_read)
    app = create_app(token_auth, lambda: execution, thresholds=HealthThresholds(100, 400),
                     authorization=Authorization(push=_no_push, read=_read,
                                                 check_push=lambda u, k: None),
                     webhooks=backend)
    root = FastAPI()
    root.mount("/message-center", app)
    return TestClient(root, base_url="http://testserver/message-center/v1",
                      headers={"Authorization": f"Bearer {TOKEN}"})


def test_create_shows_the_secret_once_and_copies_to_the_execution_instance(
        client, control_db, execution_db):
    answer = client.post("/webhooks", json={"url": URL, "events": ["event.sent"],
                                            "description": "shop"})
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["secret"].startswith("whsec_") and created["id"].startswith("wh_")
    assert created["events"] == ["event.sent"] and created["enabled"] is True
    listed = client.get("/webhooks").json()["items"]
    assert [w["id"] for w in listed] == [created["id"]] and "secret" not in listed[0]
    one = client.get(f"/webhooks/{created['id']}").json()
    assert "secret" not in one and one["lastAttempts"] == []
    for engine in (control_db, execution_db):  # encrypted at rest, on both roles
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT secret_enc FROM webhook_subscription")
                                  ).scalar_one()
        assert created["secret"] not in stored
        assert FernetBox().decrypt(stored) == created["secret"]


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "ftp://example.org/x", "events": ["event.sent"]}, "url"),
    ({"url": "https://10.1.2.3/x", "events": ["event.sent"]}, "url"),
    ({"url": "https://localhost/x", "events": ["event.sent"]}, "url"),
    ({"url": "http://example.org/x", "events": ["event.sent"]}, "url"),
    ({"url": URL, "events": ["event.delivered"]}, "events"),
    ({"url": URL, "events": []}, "events"),
    ({"url": URL}, "events"),
    ({"events": ["event.sent"]}, "url"),
    ({"url": URL, "events": ["event.sent"], "eventTypes": ["NO_SUCH_TYPE"]}, "eventTypes"),
    ({"url": URL, "events": ["event.sent"], "colour": "red"}, "colour"),
])
def test_bad_input_is_a_422_naming_the_field_and_stores_nothing(client, control_db, body,
                                                                 field):
    answer = client.post("/webhooks", json=body)
    assert answer.status_code == 422, answer.text
    assert field in [e["field"] for e in answer.json()["detail"]]
    with control_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM webhook_subscription")).scalar() == 0


def test_event_type_filter_on_a_known_type(client, control_db):
    with control_db.begin() as conn:
        conn.execute(text("INSERT INTO template (internal_name, label, event_type, channel) "
                          "VALUES ('t', 'T', 'ORDER', 'email')"))
    answer = client.post("/webhooks", json={"url": URL, "events": ["event.sent"],
                                            "eventTypes": ["ORDER"]})
    assert answer.status_code == 201 and answer.json()["eventTypes"] == ["ORDER"]


def test_patch_delete_rotate(client, execution_db):
    created = client.post("/webhooks", json={"url": URL, "events": ["event.sent"]}).json()
    wid = created["id"]
    patched = client.patch(f"/webhooks/{wid}", json={"enabled": False,
                                                     "events": ["event.failed"]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["enabled"] is False and patched.json()["events"] == ["event.failed"]
    assert patched.json()["disabledReason"] == "disabled by hand"
    assert client.patch(f"/webhooks/{wid}", json={"url": "https://10.0.0.1/"}
                        ).status_code == 422
    again = client.patch(f"/webhooks/{wid}", json={"enabled": True}).json()
    assert again["enabled"] is True and again["disabledReason"] is None
    rotated = client.post(f"/webhooks/{wid}/secret", json={"overlapSeconds": 3600})
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != created["secret"]
    assert rotated.json()["secretRotation"]["previousValidUntil"]
    with execution_db.connect() as conn:  # the copy signs with both during the overlap
        row = conn.execute(text("SELECT * FROM webhook_subscription")).mappings().one()
    from message_center.webhooks.store import secrets_of

    assert secrets_of(row, FernetBox()) == [rotated.json()["secret"], created["secret"]]
    assert client.delete(f"/webhooks/{wid}").status_code == 204
    assert client.get(f"/webhooks/{wid}").status_code == 404
    assert client.delete(f"/webhooks/{wid}").status_code == 404
    with execution_db.connect() as conn:  # the tombstone reached the execution instance
        assert conn.execute(text("SELECT deleted FROM webhook_subscription")).scalar() is True


def test_test_message_and_replay(client, execution_db):
    wid = client.post("/webhooks", json={"url": URL, "events": ["event.sent"]}).json()["id"]
    sent = client.post(f"/webhooks/{wid}/test")
    assert sent.status_code == 202 and sent.json()["webhookId"].startswith("msg_")
    (row,) = outbox(execution_db)
    assert row["name"] == "webhook.test" and row["status"] == "pending"
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE webhook_outbox SET status = 'failed', attempts = 8"))
    replayed = client.post(f"/webhooks/{wid}/replay",
                           json={"webhookIds": [sent.json()["webhookId"]]})
    assert replayed.status_code == 202 and replayed.json() == {"count": 1}
    assert outbox(execution_db)[0]["status"] == "pending"
    by_time = client.post(f"/webhooks/{wid}/replay", json={"since": "2000-01-01T00:00:00Z"})
    assert by_time.json() == {"count": 1}
    bad = client.post(f"/webhooks/{wid}/replay", json={"since": "yesterday"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "since"
    assert client.post(f"/webhooks/{wid}/replay", json={}).status_code == 422
    assert client.post(f"/webhooks/{wid}/replay", json={"eventIds": ["x"]}).json()[
        "detail"][0]["field"] == "eventIds"
    assert client.post("/webhooks/wh_nope/replay", json={"eventIds": [1]}).status_code == 404


def test_rights(client):
    wid = client.post("/webhooks", json={"url": URL, "events": ["event.sent"]}).json()["id"]
    read_only = {"X-Test-Rights": "read"}
    assert client.get("/webhooks", headers=read_only).status_code == 200
    assert client.post("/webhooks", headers=read_only,
                       json={"url": URL, "events": ["event.sent"]}).status_code == 403
    for method, path in (("patch", f"/webhooks/{wid}"), ("delete", f"/webhooks/{wid}"),
                         ("post", f"/webhooks/{wid}/test"), ("post", f"/webhooks/{wid}/secret"),
                         ("post", f"/webhooks/{wid}/replay")):
        kwargs = {} if method == "delete" else {"json": {}}
        assert getattr(client, method)(path, headers=read_only, **kwargs).status_code == 403
    assert client.get("/webhooks", headers={"X-Test-Rights": "none"}).status_code == 403
    assert client.get("/webhooks", headers={"Authorization": "Bearer nope"}).status_code == 401
