"""Web Push sending: subscriptions are validated with errors naming the field, VAPID keys
load in every usual form, and notifications go through ``pywebpush`` to the real local
push service on loopback (which checks the VAPID token and decrypts the message); its
answers become the documented outcomes, and a refused endpoint is never connected to."""

from __future__ import annotations

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from message_center.delivery.outcome import Outcome
from message_center.delivery.webpush import (
    MAX_PLAINTEXT,
    PeerRefused,
    Subscription,
    SubscriptionError,
    WebPushSender,
    WebPushSettings,
    b64url,
    classify_webpush,
    generate_vapid_keys,
    guarded_session,
    load_vapid_private_key,
    notification_json,
    parse_subscription,
    public_key_bytes,
    push_service,
    settings_from_connection,
    subscription_endpoint,
)
from message_center.net_guard import WEBPUSH_INSECURE_HOSTS, HostList

fast = pytest.mark.fast

P256DH = b64url(public_key_bytes(ec.generate_private_key(ec.SECP256R1())))
AUTH = b64url(bytes(range(16)))
NOTIFICATION = {"title": "Your order has shipped", "body": "Order 1042 is on its way: ✓",
                "url": "https://shop.example/orders/1042", "icon": "https://shop.example/i.png",
                "tag": "order-1042"}


def hosts(text: str = "") -> HostList:
    return HostList.parse(text, WEBPUSH_INSECURE_HOSTS)


def subscription(endpoint: str = "https://fcm.googleapis.com/fcm/send/abc:def",
                 p256dh: object = P256DH, auth: object = AUTH) -> dict[str, object]:
    return {"endpoint": endpoint, "expirationTime": None, "keys": {"p256dh": p256dh,
                                                                   "auth": auth}}


# --- subscriptions (fast) -----------------------------------------------------------------

@fast
def test_a_browser_subscription_is_accepted_and_kept_in_canonical_form():
    padded = base64.urlsafe_b64encode(base64.urlsafe_b64decode(P256DH + "=")).decode()
    sub = parse_subscription(json.dumps(subscription(p256dh=padded)), hosts())
    assert sub == Subscription("https://fcm.googleapis.com/fcm/send/abc:def", P256DH, AUTH)
    assert json.loads(sub.dumps()) == {"endpoint": sub.endpoint,
                                       "keys": {"p256dh": P256DH, "auth": AUTH}}


@fast
@pytest.mark.parametrize(("value", "field", "message"), [
    ("not json", "pushSubscription", "is not JSON"),
    ([], "pushSubscription", "must be an object"),
    ({"keys": {}}, "pushSubscription.endpoint", "is required"),
    (subscription(endpoint="http://push.example.org/x"), "pushSubscription.endpoint",
     f"plain http is only allowed for hosts listed in {WEBPUSH_INSECURE_HOSTS}"),
    (subscription(endpoint="https://127.0.0.1:8027/push/x"), "pushSubscription.endpoint",
     "127.0.0.1 is a loopback address"),
    (subscription(endpoint="https://169.254.169.254/latest"), "pushSubscription.endpoint",
     "cloud metadata"),
    (subscription(endpoint="https://[::ffff:10.0.0.1]/x"), "pushSubscription.endpoint",
     "private"),
    (subscription(endpoint="https://push.example.org/" + "x" * 2100),
     "pushSubscription.endpoint", "longer than 2048"),
    ({"endpoint": "https://push.example.org/x"}, "pushSubscription.keys", "is required"),
    (subscription(p256dh=None), "pushSubscription.keys.p256dh", "is required"),
    (subscription(p256dh="not base64!"), "pushSubscription.keys.p256dh",
     "is not base64url text"),
    (subscription(p256dh=b64url(b"\x04" + bytes(32))), "pushSubscription.keys.p256dh",
     "is 33 bytes, not a 65-byte uncompressed P-256 public key"),
    (subscription(p256dh=b64url(b"\x02" + bytes(64))), "pushSubscription.keys.p256dh",
     "is 65 bytes, not a 65-byte uncompressed P-256 public key"),
    (subscription(p256dh=b64url(b"\x04" + bytes(64))), "pushSubscription.keys.p256dh",
     "is not a point on the P-256 curve"),
    (subscription(auth=b64url(bytes(8))), "pushSubscription.keys.auth",
     "is 8 bytes, not a 16-byte secret"),
    (subscription(auth=12), "pushSubscription.keys.auth", "is required"),
])
def test_a_bad_subscription_names_the_field(value, field, message):
    with pytest.raises(SubscriptionError) as caught:
        parse_subscription(value, hosts())
    assert caught.value.field == field
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{field}: ")


@fast
def test_plain_http_and_loopback_only_for_a_listed_host():
    listed = hosts("127.0.0.1:8027")
    sub = parse_subscription(subscription(endpoint="http://127.0.0.1:8027/push/x"), listed)
    assert sub.endpoint == "http://127.0.0.1:8027/push/x"
    with pytest.raises(SubscriptionError, match=r"127\.0\.0\.1:8028 is not"):
        parse_subscription(subscription(endpoint="http://127.0.0.1:8028/push/x"), listed)


@fast
def test_the_insecure_hosts_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(WEBPUSH_INSECURE_HOSTS, "localhost:8027")
    assert parse_subscription(subscription(endpoint="http://localhost:8027/push/x")).endpoint
    monkeypatch.setenv(WEBPUSH_INSECURE_HOSTS, "localhost:8027, http://bad")
    with pytest.raises(ValueError, match=f"{WEBPUSH_INSECURE_HOSTS}: entry 'http://bad'"):
        parse_subscription(subscription())


@fast
def test_the_quarantine_key_is_the_endpoint():
    sub = parse_subscription(subscription(), hosts())
    assert subscription_endpoint(sub.dumps()) == sub.endpoint
    assert subscription_endpoint(f"  {sub.endpoint} ") == sub.endpoint
    for bad, message in (("", "no push subscription endpoint"), ("{not json", "not JSON"),
                         ('{"keys": {}}', "no push subscription endpoint"),
                         ("mailto:a@b.c", "is not a push subscription endpoint")):
        with pytest.raises(ValueError, match=message):
            subscription_endpoint(bad)


# --- answers, keys, settings (fast) -------------------------------------------------------

@fast
@pytest.mark.parametrize(("status", "klass", "reason", "verdict"), [
    (201, "sent", "", "sent"),
    (202, "sent", "", "sent"),
    (404, "hard", "user_unknown", "failed"),
    (410, "hard", "user_unknown", "failed"),
    (413, "error", "message_error", "failed"),
    (429, "throttle", "throttled", "retry"),
    (500, "transient", "server_error", "retry"),
    (502, "transient", "server_error", "retry"),
    (503, "transient", "server_error", "retry"),
    (408, "transient", "server_error", "retry"),
    (400, "error", "message_error", "failed"),
    (401, "error", "sender_refused", "failed"),
    (403, "error", "sender_refused", "failed"),
    (307, "error", "message_error", "failed"),
])
def test_push_service_answers_are_classified(status, klass, reason, verdict):
    answer = classify_webpush(status)
    assert (answer.klass.value, answer.reason, answer.verdict) == (klass, reason, verdict)
    assert answer.is_bounce == (klass == "hard")
    assert answer.is_throttle == (status == 429)


@fast
def test_vapid_private_keys_load_raw_pem_and_der():
    keys = generate_vapid_keys()
    key = load_vapid_private_key(keys.private_key)
    assert b64url(public_key_bytes(key)) == keys.public_key
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    der = key.private_bytes(serialization.Encoding.DER,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    for form in (pem, b64url(der), base64.b64encode(der).decode()):
        assert load_vapid_private_key(form).private_numbers() == key.private_numbers()
    other_curve = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with pytest.raises(ValueError, match="not on the P-256 curve"):
        load_vapid_private_key(other_curve)
    with pytest.raises(ValueError, match="VAPID private key is empty"):
        load_vapid_private_key(" ")
    secret = "c2VjcmV0LXRoYXQtaXMtbm90LWEta2V5"
    with pytest.raises(ValueError) as caught:
        load_vapid_private_key(secret)
    assert secret not in str(caught.value)  # never the key in an error


@fast
def test_settings_from_the_webpush_default_connection():
    keys = generate_vapid_keys()
    settings = settings_from_connection(
        {"conn_id": "webpush_default", "login": "mailto:ops@shop.example",
         "password": keys.private_key,
         "extra": json.dumps({"timeout": 3, "max_concurrent": 4,
                              "max_messages_per_second": 50})},
        insecure_hosts=hosts("localhost:8027"))
    assert (settings.subject, settings.timeout, settings.max_concurrent,
            settings.max_messages_per_second) == ("mailto:ops@shop.example", 3.0, 4, 50.0)
    assert settings.public_key == keys.public_key
    assert str(settings.insecure_hosts) == "localhost:8027"
    assert keys.private_key not in repr(settings)
    with pytest.raises(ValueError, match="connection webpush_default: the VAPID private key "
                                         r"\(password\) is missing"):
        settings_from_connection({"conn_id": "webpush_default", "login": "mailto:a@b.c"})
    with pytest.raises(ValueError, match="connection webpush_default: Web Push: the VAPID "
                                         "subject 'ops' is not a mailto:"):
        settings_from_connection({"conn_id": "webpush_default", "login": "ops",
                                  "password": keys.private_key})
    with pytest.raises(ValueError, match="max_concurrent 0"):
        settings_from_connection({"login": "https://shop.example/contact",
                                  "password": keys.private_key,
                                  "extra": {"max_concurrent": "0"}})


@fast
def test_notification_payload_and_push_service():
    assert json.loads(notification_json({**NOTIFICATION, "icon": None, "tag": ""})) == {
        k: NOTIFICATION[k] for k in ("title", "body", "url")}
    assert "✓" in notification_json(NOTIFICATION).decode("utf-8")  # UTF-8, not \\u escapes
    assert push_service("https://FCM.googleapis.com/fcm/send/abc") == \
        "https://fcm.googleapis.com"


@fast
def test_a_message_that_cannot_be_sent_fails_without_a_connection():
    keys = generate_vapid_keys()
    sender = WebPushSender(WebPushSettings(keys.private_key, "mailto:ops@shop.example"))
    sub = subscription()
    too_big = {"title": "x", "body": "y" * MAX_PLAINTEXT}
    for kwargs, problem in (
            ({"notification": too_big, "ttl": 60}, f"more than the {MAX_PLAINTEXT} bytes"),
            ({"notification": NOTIFICATION, "ttl": -1}, "ttl -1 is not"),
            ({"notification": NOTIFICATION, "ttl": 60, "urgency": "urgent"},
             "urgency 'urgent' is not one of very-low, low, normal, high"),
            ({"notification": NOTIFICATION, "ttl": 60, "topic": "has spaces"},
             "topic 'has spaces'")):
        result = sender.send(sub, **kwargs)
        assert result.outcome.status == "failed" and problem in result.outcome.error
        assert result.outcome.failure_class == "error" and result.status is None
    with pytest.raises(ValueError, match="subject"):
        WebPushSettings(keys.private_key, "ops@shop.example")


@fast
def test_a_push_services_host_check_is_reused_for_a_while():
    """A busy shard resolves a push service's name once a minute, not per message; a
    refusal is not remembered (the next message is checked again)."""
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["93.184.215.14"] if host == "push.example.org" else ["10.0.0.1"]

    keys = generate_vapid_keys()
    sender = WebPushSender(WebPushSettings(keys.private_key, "mailto:ops@shop.example"),
                           resolver=resolver)
    for path in ("a", "b", "c"):
        target = sender.check_endpoint(f"https://push.example.org/wpush/{path}")
        assert target.addresses == ("93.184.215.14",)
    assert calls == ["push.example.org"]
    for _ in range(2):
        result = sender.send(subscription(endpoint="https://inside.example.org/p"),
                             NOTIFICATION, ttl=60)
        assert "inside.example.org (10.0.0.1) is a private address" in result.outcome.error
    assert calls == ["push.example.org", "inside.example.org", "inside.example.org"]


# --- sending to the local push service on loopback ---------------------------------------

@pytest.fixture
def vapid():
    return generate_vapid_keys()


@pytest.fixture
def sender(webpush_sink, vapid):
    settings = WebPushSettings(vapid.private_key, "mailto:ops@shop.example", timeout=5,
                               insecure_hosts=hosts(f"127.0.0.1:{webpush_sink.port}"))
    with WebPushSender(settings) as sender:
        yield sender


def test_the_push_service_decrypts_exactly_what_was_sent(webpush_sink, sender, vapid):
    sub = webpush_sink.create_subscription(application_server_key=vapid.public_key)
    result = sender.send(sub, NOTIFICATION, ttl=3600, urgency="high", topic="order-1042")
    assert result.outcome.status == "sent" and result.status == 201
    [message] = webpush_sink.messages()
    assert result.outcome.provider_id == f"{webpush_sink.url}/message/{message['id']}"
    assert message["notification"] == NOTIFICATION
    assert message["data"].encode("utf-8") == notification_json(NOTIFICATION)
    assert (message["ttl"], message["urgency"], message["topic"]) == (3600, "high",
                                                                      "order-1042")
    # The VAPID token the service verified: our key, its origin, our contact.
    assert message["vapid"]["k"] == vapid.public_key
    assert message["vapid"]["aud"] == webpush_sink.url
    assert message["vapid"]["sub"] == "mailto:ops@shop.example"
    assert message["subscription"] == webpush_sink.subscription_id(sub["endpoint"])


def test_a_second_message_reuses_the_connection_and_the_token(webpush_sink, sender):
    sub = webpush_sink.create_subscription()
    for n in range(3):
        assert sender.send(sub, {"title": f"n{n}"}, ttl=0).outcome.status == "sent"
    assert [m["notification"]["title"] for m in webpush_sink.messages()] == ["n0", "n1", "n2"]
    assert len({m["vapid"]["exp"] for m in webpush_sink.messages()}) == 1


def test_a_gone_subscription_is_hard(webpush_sink, sender):
    expired = webpush_sink.create_subscription()
    webpush_sink.expire(expired["endpoint"])
    result = sender.send(expired, NOTIFICATION, ttl=60)
    assert (result.status, result.outcome.status, result.outcome.failure_class,
            result.outcome.failure_reason) == (410, "failed", "hard", "user_unknown")
    assert "answered 410" in result.outcome.error
    unknown = {**expired, "endpoint": f"{webpush_sink.url}/push/NoSuchSubscription"}
    result = sender.send(unknown, NOTIFICATION, ttl=60)
    assert (result.status, result.outcome.failure_class) == (404, "hard")
    assert webpush_sink.messages() == []


def test_throttle_gives_the_retry_after_delay(webpush_sink, sender):
    sub = webpush_sink.create_subscription()
    webpush_sink.script(sub["endpoint"], "429 retry-after=30", "429")
    first = sender.send(sub, NOTIFICATION, ttl=60)
    assert (first.status, first.outcome.status, first.outcome.failure_class,
            first.retry_after) == (429, "retry", "throttle", 30.0)
    assert first.outcome.classification.is_throttle
    assert "Retry-After 30s" in first.outcome.error
    second = sender.send(sub, NOTIFICATION, ttl=60)
    assert (second.outcome.failure_class, second.retry_after) == ("throttle", None)
    assert sender.send(sub, NOTIFICATION, ttl=60).outcome.status == "sent"


def test_too_large_fails_and_server_errors_are_retried(webpush_sink, sender):
    sub = webpush_sink.create_subscription()
    webpush_sink.script(sub["endpoint"], "413", "503", "500")
    too_large = sender.send(sub, NOTIFICATION, ttl=60)
    assert (too_large.status, too_large.outcome.status, too_large.outcome.failure_class) == (
        413, "failed", "error")
    for status in (503, 500):
        result = sender.send(sub, NOTIFICATION, ttl=60)
        assert (result.status, result.outcome.status, result.outcome.failure_class) == (
            status, "retry", "transient")
    assert webpush_sink.messages() == []


def test_a_slow_or_absent_push_service_is_retried(webpush_sink, vapid):
    listed = hosts(f"127.0.0.1:{webpush_sink.port}, 127.0.0.1:{_closed_port()}")
    settings = WebPushSettings(vapid.private_key, "mailto:ops@shop.example", timeout=0.3,
                               insecure_hosts=listed)
    sub = webpush_sink.create_subscription()
    webpush_sink.latency = 1.0
    with WebPushSender(settings) as sender:
        slow = sender.send(sub, NOTIFICATION, ttl=60)
        assert (slow.status, slow.outcome.status, slow.outcome.failure_reason) == (
            None, "retry", "not_connected")
        assert "timed out" in slow.outcome.error
        closed = {**sub, "endpoint": f"http://{listed.entries[1]}/push/x"}
        absent = sender.send(closed, NOTIFICATION, ttl=60)
        assert absent.outcome.status == "retry" and "unreachable" in absent.outcome.error


def test_ready_is_called_just_before_the_post(webpush_sink, sender):
    sub = webpush_sink.create_subscription()

    def stop() -> None:
        raise RuntimeError("shutting down")

    with pytest.raises(RuntimeError, match="shutting down"):
        sender.send(sub, NOTIFICATION, ttl=60, ready=stop)
    assert webpush_sink.messages() == []
    calls: list[int] = []
    assert sender.send(sub, NOTIFICATION, ttl=60,
                       ready=lambda: calls.append(1)).outcome.status == "sent"
    assert calls == [1]


def test_an_unlisted_loopback_endpoint_is_refused_before_any_connection(vapid):
    """The endpoint points at a listening socket on 127.0.0.1 that is not listed: the
    sender refuses it without connecting (the socket never sees a connection)."""
    settings = WebPushSettings(vapid.private_key, "mailto:ops@shop.example",
                               insecure_hosts=hosts("localhost:1"))
    with socket.socket() as listener, WebPushSender(settings) as sender:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        for endpoint in (f"https://127.0.0.1:{port}/push/x", f"http://127.0.0.1:{port}/push/x",
                         f"https://[::ffff:127.0.0.1]:{port}/push/x",
                         f"https://localhost:{port}/push/x"):
            result = sender.send(subscription(endpoint=endpoint), NOTIFICATION, ttl=60)
            assert (result.outcome.status, result.outcome.failure_class,
                    result.outcome.failure_reason) == ("failed", "error", "invalid_address")
            assert result.status is None
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


def test_the_connection_itself_is_checked(webpush_sink):
    """A name may resolve elsewhere between the check and the connect (DNS rebinding):
    the guarded session checks the address each new connection reached, before a byte
    of the request is sent; a listed host passes."""
    with guarded_session(hosts()) as session, pytest.raises(PeerRefused) as caught:
        session.post(f"{webpush_sink.url}/push/x", data=b"secret", timeout=5)
    assert "127.0.0.1, a loopback address" in str(caught.value)
    assert webpush_sink.peak_in_flight == 0  # the push service never got the request
    with guarded_session(hosts(f"127.0.0.1:{webpush_sink.port}")) as session:
        assert session.get(f"{webpush_sink.url}/health", timeout=5).status_code == 200


def test_redirects_are_not_followed(webpush_sink, vapid):
    """A push service that redirects elsewhere gets no second request: the answer is a
    failure naming the redirect."""
    hits: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            hits.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", f"{webpush_sink.url}/push/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        settings = WebPushSettings(vapid.private_key, "mailto:ops@shop.example",
                                   insecure_hosts=hosts(f"127.0.0.1:{port}, "
                                                        f"127.0.0.1:{webpush_sink.port}"))
        with WebPushSender(settings) as sender:
            result = sender.send(subscription(endpoint=f"http://127.0.0.1:{port}/push/x"),
                                 NOTIFICATION, ttl=60)
    finally:
        server.shutdown()
        server.server_close()
    assert hits == ["/push/x"]
    assert (result.status, result.outcome.status) == (307, "failed")
    assert "redirects are not followed" in result.outcome.error
    assert webpush_sink.peak_in_flight == 0


def test_outcomes_are_the_ledger_type(webpush_sink, sender):
    result = sender.send(webpush_sink.create_subscription(), NOTIFICATION, ttl=60)
    assert isinstance(result.outcome, Outcome)
    assert result.outcome.failure_class is None and result.outcome.failure_reason is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
