"""The Web Push channel end to end on real parts: the push API (JSON, SOAP, Campaign
REST), the real ``rtEventsProcessing`` DAG run (``dag.test()``) on real PostgreSQL, and
a real Web Push service on loopback (``mc_local.webpush_sink``) that checks the VAPID
JWT (RFC 8292) and decrypts each message (RFC 8291) with the subscription's private key.

Every outcome of a push service's answer: 201 sent; 410 quarantined (by the endpoint
URL, read and released with ``?endpoint=``) and the next event ignored; 429 with
Retry-After retried no sooner; 413 failed without a retry; 503 retried; subscriptions
refused with a 422 naming the field (plain http, loopback, key lengths).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from processing_factory import publish_templates
from sqlalchemy import text

from mc_local.webpush_sink import WebPushSink
from message_center.api import Authorization, HealthThresholds, create_app
from message_center.api.campaign_rest import create_campaign_rest_app
from message_center.api.soap import create_soap_app
from message_center.archiving import archive_window
from message_center.delivery.channels import Channels
from message_center.delivery.webpush import settings_from_connection
from message_center.lookup import LiveSource, event_detail, parse_query, search
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.templates import load_templates
from message_center.templates.versions import published_content, store_version

TOKEN = "test-token"
CELL = 0  # mc_execution
TEMPLATES = Path(__file__).resolve().parents[4] / "include" / "message_templates"
QUICK = {"loop_seconds": 2, "poll_seconds": 0.1, "retry_backoff_seconds": 0, "shards": 1}
CTX = {"firstName": "Ada", "orderId": "A-7", "carrier": "Colissimo"}
VAPID = json.loads(os.environ["AIRFLOW_CONN_WEBPUSH_DEFAULT"])


def token_auth(authorization: str | None = Header(None)) -> str:
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401, "Not authenticated")
    return "tester"


class _Everything:
    def check(self, kind: str) -> None:
        return None


ALLOW_ALL = Authorization(push=lambda kind: (lambda: None), read=lambda: _Everything(),
                          check_push=lambda user, kind: None,
                          change_quarantine=lambda: "tester")


class _Sessions:
    """ACC sessions: one login, one token (the SOAP API's own tests cover sessions)."""

    async def logon(self, request: Any, login: str, password: str) -> str:
        return "tok"

    async def user(self, request: Any, token: str) -> Any:
        return "tester"

    async def logoff(self, request: Any, token: str) -> None:
        return None


@pytest.fixture
def api(execution_db, test_deployment) -> TestClient:
    url = test_deployment.database_url("execution")
    root = FastAPI()
    root.mount("/message-center", create_app(token_auth, lambda: url, authorization=ALLOW_ALL,
                                             thresholds=HealthThresholds(100, 400)))
    root.mount("/nl", create_soap_app(_Sessions(), lambda: url, authorization=ALLOW_ALL))
    root.mount("/rest", create_campaign_rest_app(token_auth, lambda: url,
                                                 authorization=ALLOW_ALL))
    return TestClient(root, base_url="http://testserver",
                      headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def shipped(execution_db, control_db) -> None:
    """The repository's orderShippedPush template, versioned and published."""
    loaded = load_templates(TEMPLATES)
    loaded.raise_for_problems()
    template = loaded.find("orderShippedPush")
    with control_db.begin() as conn:
        version, _new = store_version(conn, template)
    publish_templates(execution_db, published_content(template.content(), version))


@pytest.fixture
def dag(dagbag):
    return dagbag.dags["rtEventsProcessing"]


def subscribe(sink: WebPushSink) -> dict[str, Any]:
    """A subscription as a browser makes it, bound to our VAPID public key."""
    return sink.create_subscription(VAPID["extra"]["public_key"])


def push(api: TestClient, subscription: Any, **ctx: Any) -> int:
    answer = api.post("/message-center/v1/rtEvents", json={
        "type": "orderShipped", "wishedChannel": "webpush",
        "pushSubscription": subscription, "ctx": {**CTX, **ctx}})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def event(api: TestClient, event_id: int) -> dict[str, Any]:
    return api.get(f"/message-center/v1/events/{event_id}").json()


def stored(engine, event_id: int) -> dict[str, Any]:
    from message_center.ids import to_stored

    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT e.status, e.error_count, e.error_reason, e.next_attempt, d.status AS log, "
            "d.attempts, d.error, d.failure_class FROM rt_event e "
            "LEFT JOIN delivery_log d ON d.event_id = e.id WHERE e.id = :id"),
            {"id": to_stored(event_id)}).mappings().one())


def test_push_link_deliver_sent_decrypted_by_the_push_service(
        api, shipped, dag, webpush_sink, execution_db, control_db):
    subscription = subscribe(webpush_sink)
    event_id = push(api, subscription)

    assert dag.test(run_conf=QUICK).state == "success"

    (message,) = webpush_sink.messages()
    assert message["notification"] == {
        "title": "Ada, your order A-7 has shipped",
        "body": "It is on its way with Colissimo. Tap to follow the parcel.",
        "url": "/orders/A-7", "icon": "/static/shop-icon.png", "tag": "order-A-7"}
    assert (message["ttl"], message["urgency"]) == (86400, "normal")
    assert message["vapid"]["aud"] == webpush_sink.url  # the JWT the service verified
    assert message["vapid"]["sub"] == VAPID["login"]
    assert message["vapid"]["k"].rstrip("=") == VAPID["extra"]["public_key"]

    got = event(api, event_id)
    assert (got["status"], got["wishedChannel"]) == ("sent", "webpush")
    assert got["pushSubscription"]["endpoint"] == subscription["endpoint"]
    assert got["email"] is None and got["mobilePhone"] is None
    assert got["delivery"]["channel"] == "webpush"
    assert got["delivery"]["providerId"] == f"{webpush_sink.url}/message/{message['id']}"

    # The event lookup, live then from the archive alone, shows the channel's message.
    now = datetime.now(UTC)
    archive_window(execution_db, control_db, CELL, now - timedelta(hours=1),
                   now + timedelta(minutes=1), statistics=False)
    live = [LiveSource("mcExec", "Execution instance 1", execution_db, cell_id=CELL)]
    for sources in (live, []):
        detail = event_detail(event_id, sources, control_db)
        assert detail is not None and detail["status"] == "sent"
        assert detail["channel"] == "webpush"
        assert detail["pushSubscription"]["endpoint"] == subscription["endpoint"]
        assert detail["template"]["title"] == (
            "{{ firstName }}, your order {{ orderId }} has shipped")
        shown = detail["message"]
        assert (shown["available"], shown["channel"], shown["to"]) == (
            True, "webpush", subscription["endpoint"])
        assert shown["title"] == "Ada, your order A-7 has shipped"
        assert json.loads(shown["payload"]) == message["notification"]

        # The lookup finds it by id (live and archived), and the event page shows the
        # subscription and the notification with the pages' own templates.
        (found,) = search(parse_query("auto", str(event_id)), sources, control_db).items
        assert (found["id"], found["channel"], found["status"]) == (event_id, "webpush",
                                                                    "sent")
        assert subscription["endpoint"] in found["address"]
        page = render_event_page(detail)
        assert subscription["endpoint"] in page and "Ada, your order A-7 has shipped" in page
        assert 'id="event-address"' in page


def render_event_page(detail: dict[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader

    from mc_airflow.ui import app

    env = Environment(loader=FileSystemLoader(str(app.TEMPLATE_DIR)), autoescape=True)
    env.filters.update(dt=app.format_datetime, age=app.format_age, num=app.format_number)
    env.globals.update(percent=app.format_percent, ms=app.format_ms, count=app.format_number,
                       channel_choices=app.channel_choices)
    return env.get_template("event.html").render(
        base="/message-center/ui", pages=app.PAGES, page="lookup", user_name="admin",
        event=detail, missing=None, event_id=detail["id"], can=None)


def test_a_gone_subscription_is_quarantined_and_the_next_event_ignored(
        api, shipped, dag, webpush_sink, execution_db):
    subscription = subscribe(webpush_sink)
    endpoint = subscription["endpoint"]
    webpush_sink.expire(endpoint)  # the user revoked the permission: 410 Gone
    first = push(api, subscription)
    assert dag.test(run_conf=QUICK).state == "success"
    row = stored(execution_db, first)
    assert (row["status"], row["failure_class"], row["attempts"]) == ("failed", "hard", 1)
    assert "answered 410" in row["error"]

    record = api.get("/message-center/v1/quarantine/webpush", params={"endpoint": endpoint})
    assert record.status_code == 200, record.text
    assert record.json()["active"] and record.json()["address"] == endpoint

    second = push(api, subscription, orderId="A-8")
    assert dag.test(run_conf=QUICK).state == "success"
    got = event(api, second)
    assert got["status"] == "ignored"
    assert "quarantine" in got["errorReason"] and "410" in got["errorReason"]
    assert webpush_sink.messages() == []

    released = api.delete("/message-center/v1/quarantine/webpush",
                          params={"endpoint": endpoint})
    assert released.status_code == 200 and not released.json()["active"]
    assert api.get("/message-center/v1/quarantine/webpush",
                   params={"endpoint": "https://push.example/never"}).status_code == 404


def test_429_with_retry_after_is_retried_no_sooner_than_asked(
        api, shipped, dag, webpush_sink, execution_db):
    subscription = subscribe(webpush_sink)
    webpush_sink.script(subscription["endpoint"], "429 retry-after=3600")
    event_id = push(api, subscription)
    assert dag.test(run_conf=QUICK).state == "success"
    row = stored(execution_db, event_id)
    assert row["status"] == "pending" and row["log"] == "retry"
    assert "429" in row["error"] and "Retry-After 3600s" in row["error"]
    with execution_db.connect() as conn:
        wait = conn.execute(text("SELECT extract(epoch FROM CAST(:at AS timestamptz) - now())"),
                            {"at": row["next_attempt"]}).scalar_one()
    assert wait > 3000  # the push service's hour, not the run's zero back-off
    assert webpush_sink.messages() == []

    # An hour later (the pause shared through the relay's breaker is over too): sent.
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE rt_event SET next_attempt = now()"))
        conn.execute(text("DELETE FROM relay_breaker"))
    assert dag.test(run_conf=QUICK).state == "success"
    assert stored(execution_db, event_id)["status"] == "sent"
    assert len(webpush_sink.messages()) == 1


def test_413_fails_without_retry_and_503_is_retried(
        api, shipped, dag, webpush_sink, execution_db):
    too_large, busy = subscribe(webpush_sink), subscribe(webpush_sink)
    webpush_sink.script(too_large["endpoint"], "always 413")
    webpush_sink.script(busy["endpoint"], "503")
    large, retried = push(api, too_large), push(api, busy, orderId="A-9")
    assert dag.test(run_conf=QUICK).state == "success"
    row = stored(execution_db, large)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "answered 413" in row["error"]
    row = stored(execution_db, retried)
    assert (row["status"], row["error_count"], row["attempts"]) == ("sent", 1, 2)
    (message,) = webpush_sink.messages()
    assert message["notification"]["tag"] == "order-A-9"


def test_soap_push_event_and_campaign_rest_take_the_push_channel(
        api, shipped, webpush_sink, execution_db):
    subscription = subscribe(webpush_sink)
    keys = subscription["keys"]
    body = (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:urn="urn:nms:rtEvent"><soapenv:Body><urn:PushEvent>'
        "<urn:sessiontoken>tok</urn:sessiontoken><urn:domEvent>"
        '<rtEvent type="orderShipped" wishedChannel="41" externalId="S-1">'
        f'<pushSubscription endpoint="{subscription["endpoint"]}" p256dh="{keys["p256dh"]}" '
        f'auth="{keys["auth"]}"/>'
        "<ctx><firstName>Ada</firstName><orderId>A-7</orderId><carrier>UPS</carrier></ctx>"
        "</rtEvent></urn:domEvent></urn:PushEvent></soapenv:Body></soapenv:Envelope>")
    answer = api.post("/nl/jsp/soaprouter.jsp", content=body, headers={
        "Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"nms:rtEvent#PushEvent"'})
    assert answer.status_code == 200, answer.text
    with execution_db.connect() as conn:
        row = conn.execute(text("SELECT wished_channel, address FROM rt_event "
                                "WHERE external_id = 'S-1'")).one()
    assert row.wished_channel == "webpush"
    assert json.loads(row.address)["endpoint"] == subscription["endpoint"]

    bad = body.replace(f'auth="{keys["auth"]}"', 'auth="c2hvcnQ"')
    refused = api.post("/nl/jsp/soaprouter.jsp", content=bad, headers={
        "Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"nms:rtEvent#PushEvent"'})
    assert refused.status_code == 500
    assert "rtEvent/pushSubscription" in refused.text
    assert "pushSubscription.keys.auth" in refused.text

    rest = api.post("/rest/shop/campaign/mcShop/EVTorderShipped",
                    json={"pushSubscription": subscription, "ctx": CTX})
    assert rest.status_code == 201, rest.text
    assert rest.json()["pushSubscription"]["endpoint"] == subscription["endpoint"]
    got = event(api, int(rest.json()["PKey"]))
    assert got["wishedChannel"] == "webpush"


@pytest.mark.parametrize(("endpoint", "keys", "field", "words"), [
    ("http://push.example.com/p/1", None, "pushSubscription.endpoint", "http"),
    ("https://127.0.0.1/p/1", None, "pushSubscription.endpoint", "loopback"),
    ("https://169.254.169.254/latest", None, "pushSubscription.endpoint", "metadata"),
    ("https://10.0.0.5/p/1", None, "pushSubscription.endpoint", "private"),
    ("https://push.example.com/p/1", {"p256dh": "BAAA", "auth": "c2hvcnQ"},
     "pushSubscription.keys.p256dh", "65-byte"),
    ("https://push.example.com/p/1", {"auth": "c2hvcnQ"}, "pushSubscription.keys.p256dh",
     "required"),
])
def test_a_bad_subscription_is_refused_naming_the_field(
        api, webpush_sink, execution_db, endpoint, keys, field, words):
    good = subscribe(webpush_sink)
    subscription = {"endpoint": endpoint, "keys": keys or good["keys"]}
    answer = api.post("/message-center/v1/rtEvents", json={
        "type": "orderShipped", "wishedChannel": "webpush", "pushSubscription": subscription,
        "ctx": CTX})
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["field"] == "pushSubscription"
    assert field in error["msg"] and words in error["msg"], error["msg"]
    with execution_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rt_event")).scalar_one() == 0


def test_loopback_is_allowed_only_for_a_listed_host(api, webpush_sink, monkeypatch):
    subscription = subscribe(webpush_sink)  # http://127.0.0.1:<port>: listed by the tests
    assert push(api, subscription) > 0
    monkeypatch.setenv("MC_WEBPUSH_INSECURE_HOSTS", "push.internal.example")
    refused = api.post("/message-center/v1/rtEvents", json={
        "type": "orderShipped", "wishedChannel": "webpush",
        "pushSubscription": subscription, "ctx": CTX})
    assert refused.status_code == 422
    assert "MC_WEBPUSH_INSECURE_HOSTS" in refused.json()["detail"][0]["msg"]


def test_each_push_service_has_its_own_caps(shipped, webpush_sink, execution_db, api,
                                            tmp_path, monkeypatch):
    """max_concurrent=1 holds per push service (the endpoint's origin): two services
    are each sent one message at a time, side by side, by four sessions."""
    with WebPushSink(tmp_path / "second") as second:
        monkeypatch.setenv("MC_WEBPUSH_INSECURE_HOSTS",
                           f"{os.environ['MC_WEBPUSH_INSECURE_HOSTS']},127.0.0.1:{second.port}")
        for sink in (webpush_sink, second):
            sink.latency = 0.05
        subscriptions = [subscribe(webpush_sink) for _ in range(4)] + [
            second.create_subscription(VAPID["extra"]["public_key"]) for _ in range(4)]
        for index, subscription in enumerate(subscriptions):
            push(api, subscription, orderId=f"C-{index}")
        settings = settings_from_connection({**VAPID, "extra": {
            **VAPID["extra"], "max_concurrent": 1}})
        run = ProcessingSettings(shards=1, smtp_sessions=4)
        with Channels({"webpush": settings}, kind="rt") as senders:
            for claim in split_queue(execution_db, "rt", run):
                deliver_shard(execution_db, claim, run, senders, copy_status=False)
            gates = senders.session_pool(4).gates["webpush"]
            assert sorted(gate.name for gate in gates) == sorted(
                [webpush_sink.url, second.url])
        assert len(webpush_sink.messages()) == len(second.messages()) == 4
        assert webpush_sink.peak_in_flight == second.peak_in_flight == 1
