"""Events pushed over ACC SOAP and Campaign REST are processed like JSON ones: delivered
once at a real SMTP server, with the XML ctx rendered through the documented mapping, and
their Campaign REST status goes from ``pending`` to ``processed`` (or ``tooOld``)."""

from __future__ import annotations

from collections import Counter

import pytest
from acc_fixtures import ADOBE_SESSION_TOKEN, RIGHTS, FakeSessions, bearer_user
from fastapi import FastAPI
from fastapi.testclient import TestClient
from processing_factory import publish_templates, recipients
from test_campaign_rest_api import ADOBE_SAMPLE, SAMPLE_PATH
from test_soap_api import DOC_PUSH_EVENT, KB_PUSH_EVENT, pl_ids, post, push_events

from message_center.api.campaign_rest import CampaignRestDispatch, create_campaign_rest_app
from message_center.api.soap import create_soap_app
from message_center.delivery.channels import Channels
from message_center.delivery.sms import SmsSettings
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.publishing import TemplateContent
from message_center.status_sync import sync_event_statuses

SETTINGS = ProcessingSettings(shards=2, delivery_chunk=5, retry_backoff_seconds=0,
                              retry_backoff_max_seconds=0, max_tries=3)
TEMPLATES = (
    TemplateContent(  # Adobe's KB example: rtEvent.ctx.firstName / lastName
        internal_name="kbTest", label="KB test", event_type="test", channel="email",
        version=1, sender="Shop <shop@example.test>", subject="Hi {{ firstName }}",
        html_body="<p>{{ firstName }} {{ lastName }}</p>",
        text_body="Your first name: {{ firstName }}, last name: {{ ctx.lastName }}"),
    TemplateContent(  # Adobe's "Data example": nested elements, an attribute
        internal_name="orderConfirmation", label="Order", event_type="order_confirmation",
        channel="email", version=1, sender="Shop <shop@example.test>",
        subject="{{ action.type }} {{ action.number }}",
        html_body="<p>{{ client.firstname }}</p>",
        text_body="Dear {{ client.firstname }} {{ client.lastname }}: article "
                  "{{ orderdetails.article.num }} {{ orderdetails.article.name }}, "
                  "{{ '%.2f'|format(orderdetails.article.price|float) }} EUR"),
    TemplateContent(
        internal_name="cart", label="Cart", event_type="cartAbandonment", channel="email",
        version=1, sender="Shop <shop@example.test>", subject="{{ firstName }}, your cart",
        html_body="<p>{{ lastProduct }}</p>", text_body="{{ cartAmount }}"),
    TemplateContent(
        internal_name="batchOrder", label="Batch", event_type="order_confirmation_batch",
        channel="email", version=1, sender="Shop <shop@example.test>",
        subject="Batch {{ n }}", html_body="<p>{{ n }}</p>", text_body="{{ n }}"),
)


@pytest.fixture
def clients(execution_db, test_deployment):
    url = test_deployment.database_url("execution")
    root = FastAPI()
    root.mount("/nl", create_soap_app(FakeSessions(), lambda: url, authorization=RIGHTS))
    root.add_middleware(CampaignRestDispatch, rest_app=create_campaign_rest_app(
        bearer_user, lambda: url, authorization=RIGHTS))
    return TestClient(root, headers={"Authorization": "Bearer tok-operator"})


@pytest.fixture
def channels(test_deployment, sms_sink):
    with Channels(SmtpSettings(port=test_deployment.smtp_port),
                  SmsSettings(base_url=sms_sink.url, sender="Shop"), kind="rt") as chans:
        yield chans


def process(engine, channels) -> None:
    """What rtEventsProcessing and batchEventsProcessing do to the queues, twice (the
    second pass must find nothing left to send)."""
    for _ in range(2):
        for kind in ("rt", "batch"):
            for claim in split_queue(engine, kind, SETTINGS):
                deliver_shard(engine, claim, SETTINGS, channels, copy_status=kind == "rt")
        sync_event_statuses(engine)


def test_soap_and_rest_events_are_delivered_once(clients, execution_db, smtp_sink, channels):
    publish_templates(execution_db, *TEMPLATES)
    pl_ids(post(clients, KB_PUSH_EVENT))
    pl_ids(post(clients, DOC_PUSH_EVENT))
    batch = push_events([f'<batchEvent type="order_confirmation_batch" '
                         f'email="b{n}@example.test"><ctx n="{n}"/></batchEvent>'
                         for n in range(3)], ADOBE_SESSION_TOKEN)
    pl_ids(post(clients, batch, "nms:batchEvent#PushEvents"))
    fresh = clients.post(SAMPLE_PATH, json={k: v for k, v in ADOBE_SAMPLE.items()
                                            if k in ("email", "ctx")})
    too_old = clients.post(SAMPLE_PATH, json={**ADOBE_SAMPLE, "email": "old@example.test"})
    assert fresh.status_code == too_old.status_code == 201

    process(execution_db, channels)

    assert recipients(smtp_sink) == Counter({
        "xxx@gmail.com": 1, "john.doe@domain.com": 1, "test@example.com": 1,
        "b0@example.test": 1, "b1@example.test": 1, "b2@example.test": 1})
    mail = {str(message["To"]): message for message in smtp_sink.messages()}
    kb = mail["xxx@gmail.com"]
    assert kb["Subject"] == "Hi ABC"
    assert kb.get_body(("plain",)).get_content().strip() == \
        "Your first name: ABC, last name: DEF"
    order = mail["john.doe@domain.com"]
    assert order["Subject"] == "Order confirmation CN23453"
    assert order.get_body(("plain",)).get_content().strip() == \
        "Dear John Doe: article 1 Generic USB key, 20.00 EUR"
    assert mail["test@example.com"]["Subject"] == "Jack, your cart"

    def status(response) -> str:
        return clients.get(f"{SAMPLE_PATH}/{response.json()['PKey']}").json()["status"]

    assert status(fresh) == "processed"
    assert status(too_old) == "tooOld"  # Adobe's sample expired in 2017
