"""The push API app over HTTP (FastAPI TestClient) on the real execution database.

The app is mounted under ``/message-center`` exactly as the Airflow plugin mounts it; the
auth dependency here is a fixed test token and the rights come from an ``X-Test-Rights``
header (Airflow's own auth and auth manager are exercised in
tests/integration/mc_airflow/test_authorization.py and through the real API server in
tests/integration/plugins/test_permissions.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.testclient import TestClient
from sqlalchemy import text

from mc_local.client import PushClient, PushError
from message_center.api import Authorization, HealthThresholds, create_app
from message_center.events import MAX_BATCH_BODY_BYTES, MAX_CTX_BYTES, MAX_EVENT_BODY_BYTES
from message_center.ids import cell_of

TOKEN = "test-token"
EVENT = {"type": "ORDER_CONFIRMED", "email": "jane@example.com", "ctx": {"orderId": "A-1"}}


def token_auth(authorization: str | None = Header(None)) -> str:
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    return "tester"


ALL_RIGHTS = "push:rt,push:batch,read:rt,read:batch"


def rights(request: Request) -> set[str]:
    return set(request.headers.get("X-Test-Rights", ALL_RIGHTS).split(","))


def _push_dependency(kind: str):
    def dependency(request: Request, _user: str = Depends(token_auth)) -> None:
        if f"push:{kind}" not in rights(request):
            raise HTTPException(403, f"Forbidden: pushing {kind} needs push:{kind}")
    return dependency


_PUSH = {kind: _push_dependency(kind) for kind in ("rt", "batch")}


class _ReadCheck:
    def __init__(self, kinds: set[str]) -> None:
        self.kinds = kinds

    def check(self, kind: str) -> None:
        if kind not in self.kinds:
            raise HTTPException(403, f"Forbidden: reading {kind} needs read:{kind}")


def _read(request: Request, _user: str = Depends(token_auth)) -> _ReadCheck:
    kinds = {right.split(":")[1] for right in rights(request) if right.startswith("read:")}
    if not kinds:
        raise HTTPException(403, "Forbidden: reading events needs read:rt or read:batch")
    return _ReadCheck(kinds)


def _check_push(user: str, kind: str) -> None:
    raise AssertionError("the JSON API checks rights with the push(kind) dependencies")


HEADER_RIGHTS = Authorization(push=_PUSH.__getitem__, read=_read, check_push=_check_push)
"""Every right unless the request's ``X-Test-Rights`` header lists fewer."""


def mounted(app: FastAPI) -> TestClient:
    root = FastAPI()
    root.mount("/message-center", app)
    return TestClient(root, base_url="http://testserver/message-center/v1",
                      headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def execution_url(test_deployment) -> str:
    return test_deployment.database_url("execution")


@pytest.fixture
def client(execution_db, execution_url):
    return mounted(create_app(token_auth, lambda: execution_url, authorization=HEADER_RIGHTS,
                              thresholds=HealthThresholds(100, 400)))


def stored(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("rt_event", "batch_event", "api_idempotency")}


NOTHING = {"rt_event": 0, "batch_event": 0, "api_idempotency": 0}


def test_push_one_real_time_event(client, execution_db):
    response = client.post("/rtEvents", json=EVENT)
    assert response.status_code == 201
    body = response.json()
    assert body == {"id": body["id"], "status": "pending"}
    assert cell_of(body["id"]) == 0
    assert response.headers["location"].endswith(f"/message-center/v1/events/{body['id']}")
    assert stored(execution_db) == {"rt_event": 1, "batch_event": 0, "api_idempotency": 0}
    event = client.get(f"/events/{body['id']}").json()
    assert (event["kind"], event["type"], event["ctx"]) == ("rt", "ORDER_CONFIRMED",
                                                            {"orderId": "A-1"})


def test_push_a_batch_returns_ids_in_order(client, execution_db):
    batch = [{**EVENT, "externalId": f"o-{i}"} for i in range(1000)]
    response = client.post("/batchEvents", json={"events": batch})
    assert response.status_code == 201
    ids = response.json()["ids"]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    for position in (0, 500, 999):
        event = client.get(f"/events/{ids[position]}").json()
        assert (event["kind"], event["externalId"]) == ("batch", f"o-{position}")
    assert stored(execution_db)["batch_event"] == 1000


BAD_EVENTS = [
    ({"email": "jane@example.com"}, "type"),
    ({"type": "T"}, "email"),
    ({"type": "T", "email": "not-an-address"}, "email"),
    ({"type": "T", "wishedChannel": "sms", "email": "jane@example.com"}, "mobilePhone"),
    ({"type": "T", "wishedChannel": "sms", "mobilePhone": "12ab"}, "mobilePhone"),
    ({**EVENT, "wishedChannel": "push"}, "wishedChannel"),
    ({**EVENT, "ctx": ["not", "an", "object"]}, "ctx"),
    ({**EVENT, "ctx": 42}, "ctx"),
    ({**EVENT, "ctx": {"big": "x" * MAX_CTX_BYTES}}, "ctx"),
    ({**EVENT, "scheduled": "31/12/2026"}, "scheduled"),
    ({**EVENT, "expiration": "2026-02-30T00:00:00Z"}, "expiration"),
    ({**EVENT, "scheduled": "2026-12-02T00:00:00Z", "expiration": "2026-12-01T23:59:59Z"},
     "expiration"),
    ({**EVENT, "template": "orderConfirmed"}, "template"),
]


@pytest.mark.parametrize(("body", "field"), BAD_EVENTS)
def test_a_bad_real_time_event_is_422_naming_the_field_and_stores_nothing(
        client, execution_db, body, field):
    response = client.post("/rtEvents", json=body, headers={"Idempotency-Key": "k-bad"})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["field"] == field and error["loc"] == ["body", field]
    assert field in error["msg"]
    assert stored(execution_db) == NOTHING


@pytest.mark.parametrize(("body", "field"), BAD_EVENTS)
def test_a_batch_with_one_bad_event_stores_none_and_names_its_index(
        client, execution_db, body, field):
    events = [EVENT, EVENT, body, EVENT]
    response = client.post("/batchEvents", json={"events": events})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["index"] == 2
    assert error["field"] == f"events[2].{field}"
    assert error["loc"] == ["body", "events", 2, field]
    assert stored(execution_db) == NOTHING


@pytest.mark.parametrize(("path", "content"), [
    ("/rtEvents", b"{not json"),
    ("/rtEvents", b'[{"type": "T", "email": "a@example.com"}]'),
    ("/rtEvents", b""),
    ("/batchEvents", b'{"events": []}'),
    ("/batchEvents", json.dumps({"events": [EVENT] * 1001}).encode()),
    ("/batchEvents", json.dumps({"events": [EVENT], "extra": 1}).encode()),
    ("/batchEvents", json.dumps(EVENT).encode()),
])
def test_malformed_bodies_are_422_and_store_nothing(client, execution_db, path, content):
    response = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]
    assert stored(execution_db) == NOTHING


@pytest.mark.parametrize(("path", "limit"), [("/rtEvents", MAX_EVENT_BODY_BYTES),
                                             ("/batchEvents", MAX_BATCH_BODY_BYTES)])
def test_oversized_bodies_are_413_before_parsing(client, execution_db, path, limit):
    declared = client.post(path, content=b" " * (limit + 1))
    assert declared.status_code == 413

    def chunked():  # no Content-Length: refused while streaming, never parsed whole
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    streamed = client.post(path, content=chunked())
    assert streamed.status_code == 413
    assert str(limit) in streamed.json()["detail"]
    assert stored(execution_db) == NOTHING


def test_idempotency_key_replays_the_first_answer_and_stores_nothing(client, execution_db):
    first = client.post("/rtEvents", json=EVENT, headers={"Idempotency-Key": "order-A-1"})
    again = client.post("/rtEvents", content=json.dumps(EVENT, indent=2),
                        headers={"Idempotency-Key": "order-A-1",
                                 "Content-Type": "application/json"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert stored(execution_db) == {"rt_event": 1, "batch_event": 0, "api_idempotency": 1}

    other = client.post("/rtEvents", json={**EVENT, "ctx": {"orderId": "A-2"}},
                        headers={"Idempotency-Key": "order-A-1"})
    assert other.status_code == 409
    elsewhere = client.post("/batchEvents", json={"events": [EVENT]},
                            headers={"Idempotency-Key": "order-A-1"})
    assert elsewhere.status_code == 409
    assert stored(execution_db) == {"rt_event": 1, "batch_event": 0, "api_idempotency": 1}


def test_idempotent_batch(client, execution_db):
    body = {"events": [EVENT, {**EVENT, "type": "SHIPPED"}]}
    first = client.post("/batchEvents", json=body, headers={"Idempotency-Key": "b-1"})
    again = client.post("/batchEvents", json=body, headers={"Idempotency-Key": "b-1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and len(first.json()["ids"]) == 2
    assert stored(execution_db)["batch_event"] == 2


def test_a_refused_request_does_not_use_up_its_key(client, execution_db):
    bad = client.post("/rtEvents", json={"type": "T"}, headers={"Idempotency-Key": "k-1"})
    good = client.post("/rtEvents", json=EVENT, headers={"Idempotency-Key": "k-1"})
    assert (bad.status_code, good.status_code) == (422, 201)


@pytest.mark.parametrize("key", ["", "x" * 256, "clé", " key", "key ", "tab\tkey"])
def test_a_bad_idempotency_key_is_422(client, execution_db, key):
    response = client.post("/rtEvents", json=EVENT,
                           headers={"Idempotency-Key": key.encode("utf-8")})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "Idempotency-Key"
    assert stored(execution_db) == NOTHING


def test_a_key_may_hold_every_printable_ascii_character_and_inner_spaces(client, execution_db):
    key = "".join(chr(c) for c in range(0x21, 0x7F)) + " inner space!"
    assert client.post("/rtEvents", json=EVENT, headers={"Idempotency-Key": key}).status_code \
        == 201
    assert client.post("/rtEvents", json=EVENT,
                       headers={"Idempotency-Key": "k" * 255}).status_code == 201


@pytest.mark.parametrize(("path", "body", "right"), [
    ("/rtEvents", EVENT, "push:rt"), ("/batchEvents", {"events": [EVENT]}, "push:batch")])
def test_a_refused_push_is_403_stores_nothing_and_leaves_its_key_unused(
        client, execution_db, path, body, right):
    others = ",".join(sorted(set(ALL_RIGHTS.split(",")) - {right}))
    refused = client.post(path, json=body, headers={"Idempotency-Key": "k-403",
                                                    "X-Test-Rights": others})
    assert refused.status_code == 403
    assert right in refused.json()["detail"]
    assert stored(execution_db) == NOTHING
    granted = client.post(path, json=body, headers={"Idempotency-Key": "k-403"})
    assert granted.status_code == 201
    assert "idempotent-replayed" not in granted.headers


def test_reading_an_event_needs_the_right_for_its_queue(client, execution_db):
    rt_id = client.post("/rtEvents", json=EVENT).json()["id"]
    batch_id = client.post("/batchEvents", json={"events": [EVENT]}).json()["ids"][0]
    only_rt = {"X-Test-Rights": "read:rt"}
    assert client.get(f"/events/{rt_id}", headers=only_rt).status_code == 200
    refused = client.get(f"/events/{batch_id}", headers=only_rt)
    assert refused.status_code == 403 and "read:batch" in refused.json()["detail"]
    nothing = client.get(f"/events/{rt_id}", headers={"X-Test-Rights": "push:rt"})
    assert nothing.status_code == 403


def test_any_utc_offset_python_reads_is_stored_in_utc(client, execution_db):
    """Found by schemathesis: +16:00 parses in Python but PostgreSQL refused it (a 500)."""
    pushed = client.post("/rtEvents", json={**EVENT, "scheduled": "2026-01-01T00:00:00+16:00"})
    assert pushed.status_code == 201, pushed.text
    scheduled = client.get(f"/events/{pushed.json()['id']}").json()["scheduled"]
    assert datetime.fromisoformat(scheduled) == datetime(2025, 12, 31, 8, tzinfo=UTC)
    too_early = client.post("/rtEvents", json={**EVENT, "scheduled": "0001-01-01T00:00:00+16:00"})
    assert too_early.status_code == 422
    assert too_early.json()["detail"][0]["field"] == "scheduled"


def test_unknown_and_malformed_event_ids(client, execution_db):
    assert client.get("/events/123456789").status_code == 404
    assert client.get("/events/abc").status_code == 422
    assert client.get(f"/events/{2**64}").status_code == 422


def health_client(execution_url, warning: int, alert: int) -> TestClient:
    return mounted(create_app(token_auth, lambda: execution_url, authorization=HEADER_RIGHTS,
                              thresholds=HealthThresholds(warning, alert)))


def test_health_is_200_below_the_alert_threshold_and_503_from_it(execution_db, execution_url):
    client = health_client(execution_url, warning=2, alert=3)
    ok = client.get("/health")
    assert ok.status_code == 200
    assert ok.json()["status"] == "ok"
    assert ok.json()["message"].startswith("Ok / ")
    assert ok.json()["message"].endswith(" / 0/3 pending events")

    client.post("/batchEvents", json={"events": [EVENT] * 5})  # batch does not count
    client.post("/rtEvents", json=EVENT)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    client.post("/rtEvents", json={**EVENT, "scheduled": tomorrow})  # not due: not counted
    client.post("/rtEvents", json=EVENT)
    warning = client.get("/health")
    assert warning.status_code == 200
    assert (warning.json()["status"], warning.json()["rtPending"],
            warning.json()["batchPending"]) == ("warning", 2, 5)

    client.post("/rtEvents", json=EVENT)
    alert = client.get("/health")
    assert alert.status_code == 503
    body = alert.json()
    assert (body["status"], body["rtPending"], body["alertThreshold"],
            body["warningThreshold"]) == ("alert", 3, 3, 2)
    assert body["message"].endswith(" / 3/3 pending events")
    assert body["oldestRtPendingAgeSeconds"] >= 0

    with execution_db.begin() as conn:
        conn.execute(text("UPDATE rt_event SET status = 'sent'"))
    assert client.get("/health").status_code == 200


@pytest.mark.fast
def test_health_thresholds_from_the_environment():
    assert HealthThresholds.from_env({}) == HealthThresholds(100, 400)
    assert HealthThresholds.from_env({"MC_HEALTH_WARNING": "10", "MC_HEALTH_ALERT": "20"}) \
        == HealthThresholds(10, 20)
    with pytest.raises(ValueError, match="MC_HEALTH_ALERT must be a whole number"):
        HealthThresholds.from_env({"MC_HEALTH_ALERT": "lots"})
    with pytest.raises(ValueError, match="warning <= alert"):
        HealthThresholds.from_env({"MC_HEALTH_WARNING": "500"})


def test_health_reports_an_unreachable_database_as_503():
    client = mounted(create_app(token_auth, lambda: "postgresql://nobody@127.0.0.1:1/none",
                                authorization=HEADER_RIGHTS,
                                thresholds=HealthThresholds()))
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "error"
    pushed = client.post("/rtEvents", json=EVENT)
    assert pushed.status_code == 503 and pushed.headers["retry-after"] == "5"
    assert pushed.json() == {"detail": "the execution database is unavailable; retry later"}


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/rtEvents"), ("POST", "/batchEvents"), ("GET", "/events/1"), ("GET", "/health")])
def test_every_endpoint_runs_the_auth_dependency(client, execution_db, method, path):
    response = client.request(method, path, json=EVENT,
                              headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert stored(execution_db) == NOTHING


def test_health_can_be_public_for_load_balancers(execution_db, execution_url):
    app = create_app(token_auth, lambda: execution_url, authorization=HEADER_RIGHTS,
                     public_health=True,
                     thresholds=HealthThresholds())
    client = mounted(app)
    assert client.get("/health", headers={"Authorization": ""}).status_code == 200
    assert client.post("/rtEvents", json=EVENT,
                       headers={"Authorization": ""}).status_code == 401


def test_openapi_documents_bodies_limits_and_errors(client):
    schema = TestClient(client.app).get("/message-center/openapi.json").json()
    rt = schema["paths"]["/v1/rtEvents"]["post"]
    body = rt["requestBody"]["content"]["application/json"]["schema"]
    assert {"type", "email", "mobilePhone", "wishedChannel", "ctx"} <= set(body["properties"])
    assert {"201", "401", "403", "409", "413", "422"} <= set(rt["responses"])
    (key,) = [p for p in rt["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["schema"] == {**key["schema"], "type": "string", "minLength": 1,
                             "maxLength": 255, "pattern": "^[!-~]([ -~]*[!-~])?$"}
    assert "403" in schema["paths"]["/v1/events/{event_id}"]["get"]["responses"]
    batch = schema["paths"]["/v1/batchEvents"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"]["properties"]["events"]["maxItems"] == 1000


def test_python_client_pushes_reads_and_explains_refusals(client, execution_db):
    push = PushClient("http://testserver", token=TOKEN, http=client)
    with push:
        answer = push.push_event(EVENT)
        assert push.get_event(answer["id"])["status"] == "pending"
        ids = [i for chunk in push.push_all([EVENT] * 5, batch_size=2) for i in chunk]
        assert len(ids) == 5
        assert push.health()[0] == 200
        with pytest.raises(PushError) as refused:
            push.push_events([EVENT, {"type": "T"}])
    assert refused.value.status == 422
    assert "events[1].email: email is required" in str(refused.value)
    assert stored(execution_db)["batch_event"] == 5
