"""The push-time ctx check of ``pushing.store_events``: an event whose ctx does not fit the
fields declared by the template published for its type and channel is refused by every
push protocol (JSON API, ACC SOAP, Campaign REST) naming the field, and nothing is stored;
numeric strings are stored as numbers where a number is declared. Real execution database,
the templates published with the real publishing code."""

from __future__ import annotations

import time

import pytest
from acc_fixtures import ADOBE_SESSION_TOKEN, RIGHTS, FakeSessions, bearer_user
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lxml import etree
from sqlalchemy import text

from message_center.api import create_app
from message_center.api.campaign_rest import CampaignRestDispatch, create_campaign_rest_app
from message_center.api.soap import create_soap_app
from message_center.publishing import (
    SchemaCache,
    TemplateContent,
    publish,
    published_schemas,
    schema_cache,
)
from message_center.templates.ctx_schema import parse_declaration

OPERATOR = {"Authorization": "Bearer tok-operator"}
ORDER_SCHEMA, _ = parse_declaration({"firstName": "string", "orderId": "string",
                                     "total": "number", "currency": "string?"})
ORDER = TemplateContent(
    internal_name="orderConfirmed", label="Order confirmed", event_type="ORDER_CONFIRMED",
    channel="email", version=2, subject="Order {{ orderId }}",
    text_body="{{ firstName }}: {{ '%.2f'|format(total) }} {{ currency|default('EUR') }}",
    ctx_schema=ORDER_SCHEMA)
GOOD_CTX = {"firstName": "Jane", "orderId": "A-1001", "total": "42.00"}
EVENT = {"type": "ORDER_CONFIRMED", "email": "jane@example.com", "ctx": GOOD_CTX}


@pytest.fixture
def url(test_deployment) -> str:
    return test_deployment.database_url("execution")


@pytest.fixture
def published(execution_db):
    with execution_db.begin() as conn:
        publish(conn, ORDER)
    return execution_db


@pytest.fixture
def api(published, url):
    root = FastAPI()
    root.mount("/message-center", create_app(bearer_user, lambda: url, authorization=RIGHTS))
    return TestClient(root, base_url="http://testserver/message-center/v1", headers=OPERATOR)


def stored(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("rt_event", "batch_event", "api_idempotency")}


NOTHING = {"rt_event": 0, "batch_event": 0, "api_idempotency": 0}


def stored_ctx(engine, kind: str = "rt") -> list[dict]:
    with engine.connect() as conn:
        return list(conn.execute(text(f"SELECT ctx FROM {kind}_event ORDER BY id")).scalars())


@pytest.mark.parametrize(("ctx", "field", "words"), [
    ({"firstName": "Jane", "orderId": "A-1"}, "ctx.total", "ctx.total is missing"),
    ({**GOOD_CTX, "total": None}, "ctx.total", "ctx.total is null"),
    ({**GOOD_CTX, "total": "42,00"}, "ctx.total", "must be a number for template "
                                                  "orderConfirmed v2; got '42,00'"),
    ({**GOOD_CTX, "total": True}, "ctx.total", "must be a number"),
    ({**GOOD_CTX, "firstName": {"a": 1}}, "ctx.firstName", "must be text"),
    ({**GOOD_CTX, "currency": ["EUR"]}, "ctx.currency", "must be text"),
])
def test_a_ctx_that_does_not_fit_is_422_naming_the_field_and_stores_nothing(
        api, published, ctx, field, words):
    response = api.post("/rtEvents", json={**EVENT, "ctx": ctx},
                        headers={"Idempotency-Key": "order-1"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["field"] == field
    assert error["loc"] == ["body", *field.split(".")]
    assert words in error["msg"]
    assert stored(published) == NOTHING  # the Idempotency-Key is unused too
    assert api.post("/rtEvents", json=EVENT, headers={"Idempotency-Key": "order-1"}) \
        .status_code == 201


def test_numeric_strings_are_stored_as_numbers_and_the_rest_untouched(api, published):
    response = api.post("/rtEvents", json={**EVENT, "ctx": {**GOOD_CTX, "extra": "42"}})
    assert response.status_code == 201, response.text
    assert stored_ctx(published) == [{"firstName": "Jane", "orderId": "A-1001", "total": 42.0,
                                      "extra": "42"}]
    event = api.get(f"/events/{response.json()['id']}").json()
    assert event["ctx"]["total"] == 42.0


def test_a_batch_names_every_bad_event_by_index_and_stores_none(api, published):
    events = [EVENT, {**EVENT, "ctx": {"firstName": "Bob"}}, EVENT,
              {**EVENT, "ctx": {**GOOD_CTX, "total": "n/a"}}]
    response = api.post("/batchEvents", json={"events": events})
    assert response.status_code == 422
    found = sorted((e["index"], e["field"], e["loc"]) for e in response.json()["detail"])
    assert found == [
        (1, "events[1].ctx.orderId", ["body", "events", 1, "ctx", "orderId"]),
        (1, "events[1].ctx.total", ["body", "events", 1, "ctx", "total"]),
        (3, "events[3].ctx.total", ["body", "events", 3, "ctx", "total"]),
    ]
    assert stored(published) == NOTHING
    assert api.post("/batchEvents", json={"events": [EVENT] * 3}).status_code == 201
    assert stored_ctx(published, "batch") == [{**GOOD_CTX, "total": 42.0}] * 3


def test_events_without_a_declaring_template_are_not_checked(api, published):
    # another type, another channel, a template without a declaration: stored as pushed
    with published.begin() as conn:
        publish(conn, TemplateContent(internal_name="welcome", label="Welcome",
                                      event_type="WELCOME", channel="email", version=1,
                                      subject="Hi"))
    schema_cache.clear()
    for body in ({"type": "OTHER", "email": "a@example.com", "ctx": {"total": "x"}},
                 {"type": "WELCOME", "email": "a@example.com", "ctx": {"total": "x"}},
                 {"type": "ORDER_CONFIRMED", "wishedChannel": "sms",
                  "mobilePhone": "+33612345678", "ctx": {}}):
        assert api.post("/rtEvents", json=body).status_code == 201, body


def test_the_template_in_the_events_language_decides(api, published):
    with published.begin() as conn:
        publish(conn, TemplateContent(
            internal_name="orderConfirmedFr", label="Commande", event_type="ORDER_CONFIRMED",
            channel="email", version=1, language="fr", subject="Commande",
            ctx_schema=parse_declaration({"prenom": "string"})[0]))
        publish(conn, TemplateContent(**{**ORDER.__dict__, "version": 3}))  # the latest
    schema_cache.clear()
    french = {**EVENT, "language": "fr", "ctx": {"prenom": "Jeanne"}}
    assert api.post("/rtEvents", json=french).status_code == 201
    response = api.post("/rtEvents", json={**EVENT, "language": "de",
                                           "ctx": {"prenom": "Jeanne"}})
    assert response.status_code == 422
    assert sorted(error["msg"] for error in response.json()["detail"]) == [
        "ctx.firstName is missing: template orderConfirmed v3 needs it (text)",
        "ctx.orderId is missing: template orderConfirmed v3 needs it (text)",
        "ctx.total is missing: template orderConfirmed v3 needs it (a number)"]


def test_a_replayed_key_answers_as_the_first_time_whatever_was_published_since(
        api, published):
    first = api.post("/rtEvents", json={**EVENT, "ctx": {"x": 1}},
                     headers={"Idempotency-Key": "before"})
    assert first.status_code == 422
    with published.begin() as conn:
        conn.execute(text("UPDATE published_template SET active = false"))
    schema_cache.clear()
    accepted = api.post("/rtEvents", json={**EVENT, "ctx": {"x": 1}},
                        headers={"Idempotency-Key": "before"})
    assert accepted.status_code == 201
    with published.begin() as conn:
        publish(conn, ORDER)
    schema_cache.clear()
    replay = api.post("/rtEvents", json={**EVENT, "ctx": {"x": 1}},
                      headers={"Idempotency-Key": "before"})
    assert (replay.status_code, replay.json()) == (201, accepted.json())
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_the_schema_cache_reads_the_database_again_after_its_ttl(published):
    cache = SchemaCache(ttl=0.3)
    with published.connect() as conn:
        first = cache.get("db", conn)
        assert first.for_event("ORDER_CONFIRMED", "email", None).template == "orderConfirmed v2"
        conn.execute(text("UPDATE published_template SET active = false"))
        assert cache.get("db", conn) is first  # within the TTL: no query
        time.sleep(0.35)
        assert cache.get("db", conn).for_event("ORDER_CONFIRMED", "email", None) is None
        assert published_schemas(conn).any_declared is False


# --- the other protocols share the check: SOAP answers a Fault, Campaign REST a 422 ----
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


def soap_push(order_xml: str) -> str:
    return (f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns:urn="urn:nms:rtEvent">'
            f"<soapenv:Body><urn:PushEvent><urn:sessiontoken>{ADOBE_SESSION_TOKEN}"
            f"</urn:sessiontoken><urn:domEvent>{order_xml}</urn:domEvent></urn:PushEvent>"
            "</soapenv:Body></soapenv:Envelope>")


@pytest.fixture
def soap(published, url):
    root = FastAPI()
    root.mount("/nl", create_soap_app(FakeSessions(), lambda: url, authorization=RIGHTS))
    return TestClient(root, base_url="http://testserver")


def test_soap_refuses_with_a_fault_naming_the_field_and_normalises_xml_numbers(
        soap, published):
    headers = {"SOAPAction": '"nms:rtEvent#PushEvent"', "Content-Type": "text/xml"}
    bad = soap_push('<rtEvent type="ORDER_CONFIRMED" email="jane@example.com">'
                    '<ctx firstName="Jane"><orderId>A-1</orderId></ctx></rtEvent>')
    response = soap.post("/nl/jsp/soaprouter.jsp", content=bad, headers=headers)
    assert response.status_code == 500
    root = etree.fromstring(response.content)
    faultstring = root.findtext(f".//{{{SOAP_ENV}}}Fault/faultstring")
    assert "rtEvent/ctx: ctx.total is missing: template orderConfirmed v2 needs it" \
        in faultstring
    assert stored(published) == NOTHING
    good = soap_push('<rtEvent type="ORDER_CONFIRMED" email="jane@example.com">'
                     '<ctx firstName="Jane"><orderId>A-1</orderId><total>42.00</total>'
                     "</ctx></rtEvent>")
    assert soap.post("/nl/jsp/soaprouter.jsp", content=good, headers=headers) \
        .status_code == 200
    assert stored_ctx(published) == [{"firstName": "Jane", "orderId": "A-1", "total": 42.0}]


def test_campaign_rest_refuses_with_a_422_naming_the_field(published, url):
    rest_app = create_campaign_rest_app(bearer_user, lambda: url, authorization=RIGHTS)
    root = FastAPI()
    root.add_middleware(CampaignRestDispatch, rest_app=rest_app)
    rest = TestClient(root, base_url="http://testserver", headers=OPERATOR)
    path = "/shop/campaign/mcShop/EVTORDER_CONFIRMED"
    response = rest.post(path, json={"email": "jane@example.com",
                                      "ctx": {"firstName": "Jane", "total": 3}})
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["detail"]] == ["ctx.orderId"]
    assert stored(published) == NOTHING
