"""Sandbox mode (issue 29) at the domain level: real PostgreSQL, the real SMTP sink and SMS
gateway on loopback, the real processing code. A sandbox delivery is processed exactly as
in production (statuses, delivery log, webhooks, the API's answer) and nothing reaches a
provider; the rules answer the failure paths."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI, Header
from fastapi.testclient import TestClient
from processing_factory import (
    ORDER_TEMPLATE,
    SMS_TEMPLATE,
    delivery_logs,
    events,
    insert_events,
    publish_templates,
    recipients,
)
from sqlalchemy import text
from webhook_support import add_subscription, outbox

from mc_airflow.sandbox import user_sandboxer
from message_center import events as event_store
from message_center.api import Authorization, HealthThresholds, create_app
from message_center.api.campaign_rest import create_campaign_rest_app
from message_center.api.soap import create_soap_app
from message_center.archiving import archive_window
from message_center.delivery.channels import Channels
from message_center.delivery.sandbox import SandboxSettings
from message_center.delivery.sms import SmsSettings
from message_center.delivery.smtp import SmtpSettings
from message_center.ids import to_public
from message_center.lookup import event_detail
from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
from message_center.publishing import TemplateContent
from message_center.status_sync import sync_event_statuses
from message_center.webhooks.model import EVENT_NAMES

FAST = ProcessingSettings(shards=1, delivery_chunk=10, retry_backoff_seconds=0,
                          retry_backoff_max_seconds=0, max_tries=2)
RULES = SandboxSettings.parse(instance="1", rules={
    "hard": ["*@hard.test"], "soft": ["soft-*@example.test"], "timeout": ["*@slow.test"]})
BROKEN = TemplateContent(
    internal_name="broken", label="Broken", event_type="BROKEN", channel="email", version=1,
    sender="Shop <shop@example.test>", subject="Hi {{ missing_variable }}",
    text_body="Hello")


def channels_for(test_deployment, sms_sink, sandbox: SandboxSettings) -> Channels:
    """The shard's senders as production configures them (real relays on loopback)."""
    return Channels(SmtpSettings(port=test_deployment.smtp_port),
                    SmsSettings(base_url=sms_sink.url, sender="Shop"), kind="rt",
                    sandbox=sandbox)


def drain(engine, channels: Channels, kind: str = "rt") -> None:
    recover(engine, FAST, kinds=(kind,))
    for claim in split_queue(engine, kind, FAST):
        deliver_shard(engine, claim, FAST, channels, copy_status=(kind == "rt"))
    sync_event_statuses(engine)


def api_event(engine, event_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        found = event_store.get_event(conn, to_public(event_id))
    assert found is not None
    return found


def test_a_sandbox_instance_delivers_nothing_and_reports_like_production(
        execution_db, smtp_sink, sms_sink, test_deployment):
    add_subscription(execution_db, "https://hooks.example.org/a", list(EVENT_NAMES))
    publish_templates(execution_db, ORDER_TEMPLATE, SMS_TEMPLATE, BROKEN)
    mails = insert_events(execution_db, "rt", 3)
    (sms,) = insert_events(execution_db, "rt", 1, type="OTP", email=None,
                           mobile_phone="+3361234567{n}", wished_channel="sms",
                           ctx={"code": "4242"})
    (broken,) = insert_events(execution_db, "rt", 1, type="BROKEN")
    (untaken,) = insert_events(execution_db, "rt", 1, type="NO_TEMPLATE")
    with channels_for(test_deployment, sms_sink,
                      SandboxSettings(instance=True)) as channels:
        drain(execution_db, channels)

    assert smtp_sink.messages() == [] and sms_sink.messages() == []
    rows = {row["id"]: row for row in events(execution_db, "rt")}
    assert [rows[i]["status"] for i in (*mails, sms)] == ["sent"] * 4
    # a template error fails the message as production would, sandbox or not
    assert rows[broken]["status"] == "failed"
    assert "missing_variable" in rows[broken]["error_reason"]
    assert rows[untaken]["status"] == "not_taken_into_account"
    logs = {log["event_id"]: log for log in delivery_logs(execution_db)}
    assert all(logs[i]["sandbox"] and logs[i]["status"] == "sent" for i in (*mails, sms))
    assert logs[mails[0]]["provider_id"] == f"sandbox-{logs[mails[0]]['id']}"
    assert logs[mails[0]]["sending_started"] is not None  # handed, as in production

    answer = api_event(execution_db, mails[0])
    assert answer["status"] == "sent" and answer["sandbox"] is True
    assert answer["delivery"]["sandbox"] is True and answer["delivery"]["status"] == "sent"

    hooks = {row["event_id"]: row for row in outbox(execution_db)}
    assert hooks[mails[0]]["name"] == "event.sent"
    assert hooks[mails[0]]["data"]["sandbox"] is True
    assert hooks[sms]["data"]["channel"] == "sms" and hooks[sms]["data"]["sandbox"] is True
    assert hooks[broken]["name"] == "event.failed" and hooks[broken]["data"]["sandbox"]
    # never armed, never sandboxed: reported exactly as in production
    assert hooks[untaken]["name"] == "event.not_taken_into_account"
    assert "sandbox" not in hooks[untaken]["data"]


def test_production_events_say_nothing_of_sandbox(execution_db, smtp_sink, sms_sink,
                                                  test_deployment):
    add_subscription(execution_db, "https://hooks.example.org/a", ["event.sent"])
    publish_templates(execution_db, ORDER_TEMPLATE)
    (event_id,) = insert_events(execution_db, "rt", 1)
    with channels_for(test_deployment, sms_sink, SandboxSettings()) as channels:
        drain(execution_db, channels)
    assert recipients(smtp_sink) == Counter({"user1@example.test": 1})
    (log,) = delivery_logs(execution_db)
    assert log["sandbox"] is False
    assert "sandbox" not in api_event(execution_db, event_id)
    assert "sandbox" not in outbox(execution_db)[0]["data"]


def _push_as(user_header: str = Header("shop-app", alias="X-Test-User")) -> str:
    return user_header


class _Everything:
    def check(self, kind: str) -> None:
        return None


@pytest.fixture
def api(execution_db, test_deployment) -> TestClient:
    """The push API as the plugin builds it, its sandbox users from MC_SANDBOX_USERS."""
    url = test_deployment.database_url("execution")
    authorization = Authorization(
        push=lambda kind: _push_as, read=lambda: _Everything(),
        check_push=lambda user, kind: None,
        sandboxed=user_sandboxer({"MC_SANDBOX_USERS": "qa-bot, staging-app"}))
    root = FastAPI()
    root.mount("/message-center", create_app(lambda: "tester", lambda: url,
                                             authorization=authorization,
                                             thresholds=HealthThresholds(100, 400)))
    return TestClient(root, base_url="http://testserver")


def test_a_sandbox_users_events_are_sandboxed_on_a_production_instance(
        api, execution_db, control_db, smtp_sink, sms_sink, test_deployment):
    publish_templates(execution_db, ORDER_TEMPLATE)

    def push(user: str, email: str, kind: str = "rt") -> list[int]:
        event = {"type": "ORDER", "email": email, "ctx": {"firstName": "Ada", "orderId": "1"}}
        body = event if kind == "rt" else {"events": [event, {**event, "email": "2" + email}]}
        answer = api.post(f"/message-center/v1/{kind}Events", json=body,
                          headers={"X-Test-User": user})
        assert answer.status_code == 201, answer.text
        found = answer.json()
        return [found["id"]] if kind == "rt" else found["ids"]

    (staging,) = push("staging-app", "staging@example.test")
    (shop,) = push("shop-app", "customer@example.test")
    qa = push("qa-bot", "qa@example.test", kind="batch")
    with channels_for(test_deployment, sms_sink, SandboxSettings()) as channels:
        drain(execution_db, channels, "rt")
        drain(execution_db, channels, "batch")

    assert recipients(smtp_sink) == Counter({"customer@example.test": 1})
    for public_id in (staging, *qa):
        found = api.get(f"/message-center/v1/events/{public_id}").json()
        assert found["status"] == "sent" and found["sandbox"] is True
        assert found["delivery"]["sandbox"] is True
    found = api.get(f"/message-center/v1/events/{shop}").json()
    assert found["status"] == "sent" and "sandbox" not in found

    # archived with its flag; the event lookup (from the archive alone) says so
    now = datetime.now(UTC)
    archive_window(execution_db, control_db, 0, now - timedelta(hours=1),
                   now + timedelta(minutes=1), statistics=False)
    detail = event_detail(staging, [], control_db)
    assert detail is not None and detail["deliveryLogs"][0]["sandbox"] is True
    assert "Accepted by the sandbox (sandbox mode: nothing was sent)" in {
        step["label"] for step in detail["timeline"]}
    detail = event_detail(shop, [], control_db)
    assert detail is not None and detail["deliveryLogs"][0]["sandbox"] is False


class _Sessions:
    """ACC SOAP logins: every session token is the user ``qa-bot``."""

    async def logon(self, request: Any, login: str, password: str) -> str:
        return "tok"

    async def user(self, request: Any, token: str) -> Any:
        return "qa-bot"

    async def logoff(self, request: Any, token: str) -> None:
        return None


def test_soap_and_campaign_rest_pushes_of_a_sandbox_user_are_sandbox_events(
        execution_db, test_deployment):
    url = test_deployment.database_url("execution")
    authorization = Authorization(
        push=lambda kind: _push_as, read=lambda: _Everything(),
        check_push=lambda user, kind: None,
        sandboxed=user_sandboxer({"MC_SANDBOX_USERS": "qa-bot"}))
    root = FastAPI()
    root.mount("/nl", create_soap_app(_Sessions(), lambda: url, authorization=authorization))
    root.mount("/rest", create_campaign_rest_app(lambda: "tester", lambda: url,
                                                 authorization=authorization))
    client = TestClient(root, base_url="http://testserver")
    body = ('<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:urn="urn:nms:rtEvent"><soapenv:Body><urn:PushEvent>'
            "<urn:sessiontoken>tok</urn:sessiontoken><urn:domEvent>"
            '<rtEvent type="ORDER" email="qa@example.test" externalId="SOAP-1">'
            "<ctx><firstName>Ada</firstName></ctx>"
            "</rtEvent></urn:domEvent></urn:PushEvent></soapenv:Body></soapenv:Envelope>")
    answer = client.post("/nl/jsp/soaprouter.jsp", content=body, headers={
        "Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"nms:rtEvent#PushEvent"'})
    assert answer.status_code == 200, answer.text
    for user in ("qa-bot", "shop-app"):
        answer = client.post("/rest/shop/campaign/mcShop/EVTORDER", headers={
            "X-Test-User": user}, json={"email": f"{user}@example.test", "ctx": {}})
        assert answer.status_code == 201, answer.text
    flags = {row["email"]: row["sandbox"] for row in events(execution_db, "rt")}
    assert flags == {"qa@example.test": True, "qa-bot@example.test": True,
                     "shop-app@example.test": False}


def test_the_rules_answer_hard_soft_and_timeout(execution_db, smtp_sink, sms_sink,
                                                 test_deployment):
    publish_templates(execution_db, ORDER_TEMPLATE)
    hard, soft, slow, fine = (insert_events(execution_db, "rt", 1, email=address)[0]
                              for address in ("gone@hard.test", "soft-1@example.test",
                                              "a@slow.test", "fine@example.test"))
    with channels_for(test_deployment, sms_sink, RULES) as channels:
        drain(execution_db, channels)
        rows = {row["id"]: row for row in events(execution_db, "rt")}
        logs = {log["event_id"]: log for log in delivery_logs(execution_db)}
        assert rows[fine]["status"] == "sent"
        assert (rows[hard]["status"], logs[hard]["failure_class"]) == ("failed", "hard")
        assert "sandbox rule 'hard'" in rows[hard]["error_reason"]
        # soft: retried like production (pending again, one try used)
        assert (rows[soft]["status"], rows[soft]["error_count"]) == ("pending", 1)
        assert logs[soft]["status"] == "retry" and logs[soft]["failure_class"] == "soft"
        # timeout: an unknown outcome, as a relay that stalls after the final "."
        assert (rows[slow]["status"], logs[slow]["failure_class"]) == ("failed", "unknown")
        assert logs[slow]["sending_started"] is not None
        drain(execution_db, channels)  # the soft bounce's last try
    assert smtp_sink.messages() == []
    rows = {row["id"]: row for row in events(execution_db, "rt")}
    assert rows[soft]["status"] == "expired"
    with execution_db.connect() as conn:
        quarantined = set(conn.execute(text("SELECT address FROM quarantine")).scalars())
    assert "gone@hard.test" in quarantined  # a hard bounce quarantines, as in production


def test_a_sandbox_row_stays_sandbox_when_the_instance_leaves_sandbox_mode(
        execution_db, smtp_sink, sms_sink, test_deployment):
    publish_templates(execution_db, ORDER_TEMPLATE)
    insert_events(execution_db, "rt", 1, email="soft-1@example.test")
    with channels_for(test_deployment, sms_sink, RULES) as channels:
        drain(execution_db, channels)
    assert events(execution_db, "rt")[0]["status"] == "pending"
    with channels_for(test_deployment, sms_sink, SandboxSettings()) as channels:
        drain(execution_db, channels)  # production now: the retry is still a sandbox one
    assert smtp_sink.messages() == []
    assert events(execution_db, "rt")[0]["status"] == "sent"
    assert delivery_logs(execution_db)[0]["sandbox"] is True
