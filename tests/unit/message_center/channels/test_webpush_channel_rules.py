"""The Web Push channel's own rules, without a server: the subscription as an address
(checks naming the field, the quarantine key), the notification template parts (checks,
rendering, request options) and the per-push-service relay gates."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from message_center import channel as channels
from message_center.channels.webpush import (
    CHANNEL,
    WebPushChannelSender,
    check_notification,
    notification_card,
    request_options,
)
from message_center.delivery.pool import RelayGates
from message_center.delivery.webpush import (
    b64url,
    generate_vapid_keys,
    public_key_bytes,
    settings_from_connection,
)
from message_center.rendering import RenderError

KEY = b64url(public_key_bytes(ec.generate_private_key(ec.SECP256R1())))
AUTH = b64url(b"0123456789abcdef")
GOOD = {"endpoint": "https://push.example.com/send/abc", "keys": {"p256dh": KEY, "auth": AUTH}}


def test_the_channel_is_registered_with_acc_s_mobile_app_code():
    assert "webpush" in channels.names()
    codes = channels.acc_code_map()
    assert codes["41"] == codes["mobileapp"] == codes["webpush"] == "webpush"
    assert channels.by_address_field("pushSubscription") is CHANNEL


@pytest.mark.parametrize(("subscription", "words"), [
    ({**GOOD, "endpoint": "http://push.example.com/x"}, "pushSubscription.endpoint"),
    ({**GOOD, "endpoint": "https://localhost/x"}, "pushSubscription.endpoint"),
    ({**GOOD, "keys": {"p256dh": KEY[:20], "auth": AUTH}}, "pushSubscription.keys.p256dh"),
    ({**GOOD, "keys": {"p256dh": KEY, "auth": b64url(b"short")}},
     "pushSubscription.keys.auth is 5 bytes"),
    ("not json", "pushSubscription is not JSON"),
    ([1], "pushSubscription must be an object"),
])
def test_a_bad_subscription_names_its_field(subscription, words):
    error = CHANNEL.address_error(subscription)
    assert error is not None and words in error, error


def test_a_good_subscription_is_accepted_and_quarantined_by_its_endpoint():
    assert CHANNEL.address_error(GOOD) is None
    assert CHANNEL.address_error(json.dumps(GOOD)) is None
    stored = json.dumps(GOOD, separators=(",", ":"))
    assert CHANNEL.quarantine_key(stored) == GOOD["endpoint"]
    assert CHANNEL.normalize_address(f" {GOOD['endpoint']} ") == GOOD["endpoint"]
    assert CHANNEL.address_on_wire(stored) == GOOD
    with pytest.raises(ValueError):
        CHANNEL.normalize_address("not a url")
    assert "webpush" in channels.quarantine_key_sql()


def test_template_checks_name_the_part():
    problems: list[tuple[str | None, str]] = []
    CHANNEL.check_template({"title": "T", "url": "javascript:alert(1)", "icon": "/i.png",
                            "ttl": "forever", "urgency": "urgent"}, [],
                           lambda field, message: problems.append((field, message)))
    assert [field for field, _ in problems] == ["url", "ttl", "urgency"]
    problems.clear()
    CHANNEL.check_template({"title": "T", "url": "/orders/{{ id }}", "ttl": "{{ ttl }}"}, [],
                           lambda field, message: problems.append((field, message)))
    assert problems == []  # templated values are checked once rendered


def test_rendering_and_request_options():
    rendered = CHANNEL.render({"title": "Hi {{ name }}", "body": " {{ n }} items ",
                               "ttl": "60", "urgency": "high"}, {"name": "Ada", "n": 3})
    assert rendered["title"] == "Hi Ada" and rendered["body"] == "3 items"
    assert request_options(rendered) == (60, "high")
    assert request_options({"title": "x"}) == (86400, "normal")
    with pytest.raises(ValueError, match="urgency"):
        request_options({"urgency": "asap"})
    with pytest.raises(RenderError, match="title"):
        check_notification({"body": "no title"})
    with pytest.raises(ValueError, match="bytes of JSON"):
        check_notification({"title": "x", "body": "y" * 5000})


def test_the_preview_card_escapes_what_it_shows():
    card = notification_card({"title": "<b>Hi</b>", "body": "a & b"}, ttl=60,
                             urgency="low", size=10, header="", address=GOOD["endpoint"])
    assert "&lt;b&gt;Hi&lt;/b&gt;" in card and "a &amp; b" in card and "<b>" not in card
    assert "default-src 'none'" in card  # nothing is loaded from anywhere


def test_each_push_service_is_a_relay_with_the_connection_s_caps():
    keys = generate_vapid_keys()
    settings = settings_from_connection({"login": "mailto:ops@example.com",
                                         "password": keys.private_key,
                                         "extra": {"max_concurrent": 4,
                                                   "max_messages_per_second": 10}})
    sender = WebPushChannelSender(settings)
    try:
        gates = sender.relay_gate(shards=2)
        assert isinstance(gates, RelayGates)

        def attempt(endpoint: str) -> SimpleNamespace:
            return SimpleNamespace(address=json.dumps({**GOOD, "endpoint": endpoint}))

        one = gates.gate(attempt("https://fcm.googleapis.com/fcm/send/1"))
        assert gates.gate(attempt("https://fcm.googleapis.com/fcm/send/2")) is one
        other = gates.gate(attempt("https://updates.push.services.mozilla.com/wpush/v2/x"))
        assert other is not one
        assert (one.name, one.max_concurrent, one.per_second) == (
            "https://fcm.googleapis.com", 2, 5.0)
    finally:
        sender.close()


def test_no_private_key_means_not_configured():
    assert CHANNEL.settings_from_connection({"login": "mailto:a@b.example",
                                             "password": None}) is None
