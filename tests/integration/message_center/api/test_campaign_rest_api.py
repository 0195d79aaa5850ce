"""Campaign Standard / v8 REST transactional events (``POST /<ORG>/campaign/<api>/<eventID>``
and the status ``GET``) through ``CampaignRestDispatch`` in front of another app, as on the
Airflow API server; FastAPI TestClient, real execution database, fake auth."""

from __future__ import annotations

import pytest
from acc_fixtures import RIGHTS, bearer_user
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from message_center.api.campaign_rest import (
    ADOBE_STATUS,
    CampaignRestDispatch,
    create_campaign_rest_app,
    event_type,
)
from message_center.events import MAX_EVENT_BODY_BYTES
from message_center.statuses import EventStatus

OPERATOR = {"Authorization": "Bearer tok-operator"}

# Adobe's "Managing transactional messages" sample request, verbatim.
ADOBE_SAMPLE = {
    "email": "test@example.com",
    "scheduled": "2017-12-01 08:00:00.768Z",
    "expiration": "2017-12-31 08:00:00.768Z",
    "ctx": {
        "cartAmount": "$ 125",
        "lastProduct": "Leather motorbike jacket",
        "firstName": "Jack",
    },
}
SAMPLE_PATH = "/geometrixx/campaign/mcAdobe/EVTcartAbandonment"


def airflow_like() -> FastAPI:
    """Stands for Airflow's own app: every path it serves answers 299 'airflow'."""
    other = FastAPI()

    @other.api_route("/{path:path}", methods=["GET", "POST"])
    async def everything(path: str):
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse("airflow", status_code=299)

    return other


@pytest.fixture
def rest(execution_db, test_deployment):
    rest_app = create_campaign_rest_app(bearer_user,
                                        lambda: test_deployment.database_url("execution"),
                                        authorization=RIGHTS)
    root = airflow_like()
    root.add_middleware(CampaignRestDispatch, rest_app=rest_app)
    return TestClient(root, base_url="http://testserver", headers=OPERATOR)


def stored(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(
            "SELECT type, email, mobile_phone, wished_channel, ctx, scheduled, expiration "
            "FROM rt_event")).mappings()]


def test_adobe_sample_request_then_its_status(rest, execution_db):
    response = rest.post(SAMPLE_PATH, json=ADOBE_SAMPLE)
    assert response.status_code == 201, response.text
    body = response.json()
    pkey = body["PKey"]
    assert body == {
        "PKey": pkey, "ctx": ADOBE_SAMPLE["ctx"], "email": "test@example.com",
        "mobilePhone": "", "scheduled": "2017-12-01T08:00:00.768000Z",
        "expiration": "2017-12-31T08:00:00.768000Z",
        "href": f"mcAdobe/EVTcartAbandonment/{pkey}", "serverUrl": "http://testserver",
        "status": "pending", "type": "EVTcartAbandonment",
    }
    assert response.headers["location"] == f"/geometrixx/campaign/mcAdobe/EVTcartAbandonment/{pkey}"
    (row,) = stored(execution_db)
    assert (row["type"], row["wished_channel"], row["ctx"]) == (
        "cartAbandonment", "email", ADOBE_SAMPLE["ctx"])
    status = rest.get(f"{SAMPLE_PATH}/{pkey}")
    assert status.status_code == 200
    assert status.json()["status"] == "pending"
    assert status.json()["scheduled"] == "2017-12-01T08:00:00.768000Z"
    assert status.json()["ctx"] == ADOBE_SAMPLE["ctx"]


def test_mobile_phone_only_is_an_sms_event(rest, execution_db):
    response = rest.post("/acme/campaign/mcacme/OTP", json={
        "mobilePhone": "+33612345678", "ctx": {"code": "4711"}})
    assert response.status_code == 201, response.text
    (row,) = stored(execution_db)
    assert (row["type"], row["wished_channel"], row["mobile_phone"]) == (
        "OTP", "sms", "+33612345678")


@pytest.mark.parametrize(("body", "field"), [
    ({}, "email"),
    ({"email": "nope"}, "email"),
    ({"email": "a@example.com", "ctx": [1]}, "ctx"),
    ({"email": "a@example.com", "scheduled": "soon"}, "scheduled"),
    ({"email": "a@example.com", "type": "X"}, "type"),
    ({"email": "a@example.com", "wishedChannel": "sms"}, "wishedChannel"),
    ({"mobilePhone": "12ab"}, "mobilePhone"),
    # files given by the event map to the JSON API's attachments (checked the same way)
    ({"email": "a@example.com", "attachments": [{"name": "x.exe", "content": "TVo="}]},
     "attachments[0].content"),
    ({"email": "a@example.com", "attachments": [{"name": "a.pdf", "content": "JVBERi0="}]},
     "attachments"),  # no published template takes files from the event
])
def test_bad_input_is_a_json_error_naming_the_field(rest, execution_db, body, field):
    response = rest.post(SAMPLE_PATH, json=body, headers={"Idempotency-Key": "k1"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"] == field
    assert stored(execution_db) == []


def test_invalid_json_and_oversized_bodies(rest, execution_db):
    assert rest.post(SAMPLE_PATH, content=b"{not json").status_code == 422
    big = b'{"email": "a@example.com", "ctx": {"x": "' + b"x" * MAX_EVENT_BODY_BYTES + b'"}}'
    assert rest.post(SAMPLE_PATH, content=big).status_code == 413
    assert stored(execution_db) == []


def test_auth_rights_and_idempotency(rest, execution_db):
    assert rest.post(SAMPLE_PATH, json=ADOBE_SAMPLE, headers={"Authorization": ""}
                     ).status_code == 401
    viewer = rest.post(SAMPLE_PATH, json=ADOBE_SAMPLE, headers={
        "Authorization": "Bearer tok-viewer", "Idempotency-Key": "cart-1"})
    assert viewer.status_code == 403
    assert viewer.json()["detail"] == ("Forbidden: pushing rt events needs the permission to "
                                       "create DAG runs of rtEventsProcessing; user 'viewer' "
                                       "does not have it")
    assert stored(execution_db) == []
    with execution_db.connect() as conn:  # the key was not used up
        assert conn.execute(text("SELECT count(*) FROM api_idempotency")).scalar_one() == 0
    first = rest.post(SAMPLE_PATH, json=ADOBE_SAMPLE, headers={"Idempotency-Key": "cart-1"})
    again = rest.post(SAMPLE_PATH, json=ADOBE_SAMPLE, headers={"Idempotency-Key": "cart-1"})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    other = rest.post(SAMPLE_PATH, json={**ADOBE_SAMPLE, "email": "b@example.com"},
                      headers={"Idempotency-Key": "cart-1"})
    assert other.status_code == 409
    assert len(stored(execution_db)) == 1
    pkey = first.json()["PKey"]
    assert rest.get(f"{SAMPLE_PATH}/{pkey}",
                    headers={"Authorization": "Bearer tok-viewer"}).status_code == 200
    assert rest.get(f"{SAMPLE_PATH}/{pkey}", headers={"Authorization": ""}).status_code == 401


def test_status_of_unknown_or_other_events_is_404(rest, execution_db):
    pkey = rest.post(SAMPLE_PATH, json=ADOBE_SAMPLE).json()["PKey"]
    assert rest.get(f"/geometrixx/campaign/mcAdobe/EVTother/{pkey}").status_code == 404
    assert rest.get(f"{SAMPLE_PATH}/999999999").status_code == 404
    assert rest.get(f"{SAMPLE_PATH}/@Qy2nZ").status_code == 404


@pytest.mark.parametrize(("status", "adobe"), [
    ("pending", "pending"), ("pending_delivery", "processing"), ("sent", "processed"),
    ("ignored", "ignored"), ("failed", "deliveryFailed"),
    ("not_taken_into_account", "routingFailed"), ("expired", "tooOld")])
def test_statuses_in_adobe_names(rest, execution_db, status, adobe):
    pkey = rest.post(SAMPLE_PATH, json=ADOBE_SAMPLE).json()["PKey"]
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE rt_event SET status = :s"), {"s": status})
    assert rest.get(f"{SAMPLE_PATH}/{pkey}").json()["status"] == adobe
    assert ADOBE_STATUS[EventStatus(status)] == adobe


def test_the_dispatch_leaves_airflow_paths_alone(rest):
    for method, path, headers in [
        ("GET", "/dags/campaign/runs/r1/tasks", {}),
        ("POST", "/api/campaign/x/y", {}),
        ("GET", "/acme/campaign/mcacme/EVTx/12", {"Accept": "text/html,*/*"}),
        ("GET", "/acme/campaign/mcacme/EVTx", {}),
        ("POST", "/acme/campaign/mcacme/EVTx/12", {}),
        ("POST", "/acme/other/mcacme/EVTx", {}),
        ("POST", "/message-center/v1/rtEvents", {}),
    ]:
        assert rest.request(method, path, headers=headers).text == "airflow", path


def test_organizations_can_be_limited(execution_db, test_deployment):
    rest_app = create_campaign_rest_app(bearer_user,
                                        lambda: test_deployment.database_url("execution"),
                                        authorization=RIGHTS)
    root = airflow_like()
    root.add_middleware(CampaignRestDispatch, rest_app=rest_app, organizations=["acme"])
    client = TestClient(root, headers=OPERATOR)
    assert client.post("/acme/campaign/mcacme/EVTx", json={"email": "a@example.com"}
                       ).status_code == 201
    assert client.post("/other/campaign/mcother/EVTx", json={"email": "a@example.com"}
                       ).text == "airflow"


@pytest.mark.fast
def test_event_id_to_type():
    assert event_type("EVTcartAbandonment") == "cartAbandonment"
    assert event_type("ORDER_CONFIRMED") == "ORDER_CONFIRMED"
    assert event_type("EVT") == "EVT"


def test_an_unreachable_database_is_503_with_retry_after_like_the_push_api():
    """A client retries after ``Retry-After`` seconds; nothing was stored (the JSON push API
    answers the same, from the same handler)."""
    rest_app = create_campaign_rest_app(bearer_user,
                                        lambda: "postgresql://nobody@127.0.0.1:1/none",
                                        authorization=RIGHTS)
    root = airflow_like()
    root.add_middleware(CampaignRestDispatch, rest_app=rest_app)
    client = TestClient(root, base_url="http://testserver", headers=OPERATOR)
    response = client.post(SAMPLE_PATH, json=ADOBE_SAMPLE)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "the execution database is unavailable; retry later"}
