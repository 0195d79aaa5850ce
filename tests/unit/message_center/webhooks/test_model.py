"""Webhook rules without a database: validation naming the field, the signed message
(verified with the ``standardwebhooks`` library, as a receiver does), the retry schedule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from message_center.net_guard import WEBHOOK_ALLOWED_HOSTS, HostList
from message_center.webhooks.dispatcher import DEFAULT_SCHEDULE, DispatchSettings
from message_center.webhooks.model import (
    EVENT_NAMES,
    WebhookValidationError,
    message_body,
    message_id,
    new_secret,
    parse_subscription,
    signed_headers,
)

NOTHING = HostList.parse("", WEBHOOK_ALLOWED_HOSTS)
LOCAL = HostList.parse("127.0.0.1:9000", WEBHOOK_ALLOWED_HOSTS)


def test_event_names_are_the_public_ones():
    assert set(EVENT_NAMES) == {
        "event.sent", "event.failed", "event.ignored", "event.not_taken_into_account",
        "event.expired", "event.bounced", "event.opened", "event.clicked"}


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "https://127.0.0.1/x", "events": ["event.sent"]}, "url"),
    ({"url": "https://[::1]/x", "events": ["event.sent"]}, "url"),
    ({"url": "https://192.168.1.1/x", "events": ["event.sent"]}, "url"),
    ({"url": "https://169.254.169.254/latest", "events": ["event.sent"]}, "url"),
    ({"url": "https://user:pw@93.184.215.14/x", "events": ["event.sent"]}, "url"),
    ({"url": "http://93.184.215.14/x", "events": ["event.sent"]}, "url"),
    ({"url": 5, "events": ["event.sent"]}, "url"),
    ({"url": "https://93.184.215.14/x", "events": ["event.sent", "sent"]}, "events"),
    ({"url": "https://93.184.215.14/x", "events": "event.sent"}, "events"),
    ({"url": "https://93.184.215.14/x", "events": ["event.sent"], "enabled": "yes"}, "enabled"),
    ({"url": "https://93.184.215.14/x", "events": ["event.sent"], "maxInFlight": 0},
     "maxInFlight"),
])
def test_bad_subscriptions_name_the_field(body, field):
    with pytest.raises(WebhookValidationError) as refused:
        parse_subscription(body, hosts=NOTHING, creating=True)
    assert field in [error["field"] for error in refused.value.errors]


def test_listed_hosts_may_be_loopback_and_plain_http():
    change = parse_subscription({"url": "http://127.0.0.1:9000/hook", "events": ["event.sent"]},
                                hosts=LOCAL, creating=True)
    assert change.url == "http://127.0.0.1:9000/hook" and change.events == ("event.sent",)
    with pytest.raises(WebhookValidationError):  # another port is not listed
        parse_subscription({"url": "http://127.0.0.1:9001/hook", "events": ["event.sent"]},
                           hosts=LOCAL, creating=True)


def test_a_patch_needs_no_field_but_checks_those_given():
    assert parse_subscription({}, hosts=NOTHING, creating=False).given == frozenset()
    assert parse_subscription({"enabled": False}, hosts=NOTHING, creating=False).enabled is False


ROW = {"id": 42, "event_kind": "rt", "event_id": -5, "seq": 2, "name": "event.bounced",
       "occurred_at": datetime(2026, 12, 7, 20, 0, tzinfo=UTC),
       "data": {"status": "failed", "externalId": "o-1", "failureClass": "hard"}}


def test_the_message_is_signed_per_standard_webhooks_and_stable():
    secret = new_secret()
    body = message_body(ROW)
    assert body == message_body(ROW)  # the same bytes on every retry
    headers = signed_headers(message_id(42), body, [secret])
    assert headers["webhook-id"] == "msg_42"
    message = Webhook(secret).verify(body, headers)
    assert message["type"] == "event.bounced"
    assert message["data"]["id"] == (1 << 64) - 5  # the public (unsigned) id
    assert message["data"]["sequence"] == 2 and message["data"]["statusLabel"] == \
        "Delivery failed"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_during_a_rotation_both_secrets_verify():
    old, new = new_secret(), new_secret()
    body = message_body(ROW)
    headers = signed_headers("msg_42", body, [new, old])
    assert Webhook(old).verify(body, headers) and Webhook(new).verify(body, headers)


def test_the_retry_schedule_then_give_up_and_retry_after():
    settings = DispatchSettings(jitter=0.0)
    assert [settings.delay(n, None) for n in range(1, 8)] == list(DEFAULT_SCHEDULE)
    assert settings.delay(8, None) is None  # 1 try + 7 retries, then failed
    assert settings.delay(1, 120.0) == 120.0  # Retry-After longer than 5 s wins
    assert settings.delay(3, 10.0) == 1800  # ... shorter does not
    jittered = DispatchSettings(jitter=0.1).delay(2, None)
    assert jittered is not None and 270 <= jittered <= 330


def test_settings_from_the_environment():
    settings = DispatchSettings.from_env({"MC_WEBHOOK_SCHEDULE": "1, 2", "MC_WEBHOOK_RATE": "5",
                                          "MC_WEBHOOK_MAX_IN_FLIGHT": "2"})
    assert settings.schedule == (1.0, 2.0) and settings.rate_per_second == 5
    assert settings.max_in_flight == 2
    with pytest.raises(ValueError, match="MC_WEBHOOK_SCHEDULE"):
        DispatchSettings.from_env({"MC_WEBHOOK_SCHEDULE": "soon"})
