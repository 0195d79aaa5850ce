"""The local Web Push service (``make run``'s and the tests' push service) is as strict
as a real one: it accepts only RFC 8030 requests with a valid RFC 8292 VAPID token and an
RFC 8291 body that decrypts with the subscription's keys; ``mc webpush keys`` and
``mc webpush subscription`` print keys and subscriptions that work end to end."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from pywebpush import WebPusher

from mc_local.cli import main
from mc_local.cli.webpush import push_dir, service_url
from mc_local.webpush_sink import WebPushSink, create_subscription
from message_center.delivery.webpush import (
    WebPushSender,
    WebPushSettings,
    b64url,
    b64url_decode,
    generate_vapid_keys,
    load_vapid_private_key,
    parse_subscription,
    public_key_bytes,
)
from message_center.net_guard import WEBPUSH_INSECURE_HOSTS, HostList

SUBJECT = "mailto:ops@shop.example"
NOTIFICATION = {"title": "Your order has shipped", "body": "Order 1042",
                "url": "https://shop.example/orders/1042"}


def listed(sink: WebPushSink) -> HostList:
    return HostList.parse(f"127.0.0.1:{sink.port}", WEBPUSH_INSECURE_HOSTS)


def raw_post(sink: WebPushSink, sub: dict, *, payload: bytes = b'{"title":"x"}',
             claims: dict | None = None, signer: ec.EllipticCurvePrivateKey | None = None,
             k: str | None = None, scheme: str = "vapid", headers: dict | None = None,
             drop: tuple[str, ...] = (), body: bytes | None = None,
             encrypt_to: dict | None = None) -> requests.Response:
    """One push request built piece by piece (pywebpush's encryption, py_vapid's
    signature), so that each piece can be made wrong on purpose."""
    key = signer or ec.generate_private_key(ec.SECP256R1())
    token_claims = {"sub": SUBJECT, "aud": sink.url, "exp": int(time.time()) + 3600,
                    **(claims or {})}
    token_claims = {name: value for name, value in token_claims.items() if value is not None}
    token = Vapid(key, conf={"no-strict": True}).sign(token_claims)["Authorization"]
    token = token.split("t=", 1)[1].split(",k=", 1)[0]
    k = k or b64url(public_key_bytes(key))
    if body is None:
        body = WebPusher(encrypt_to or sub).encode(payload, "aes128gcm")["body"]
    sent = {"Authorization": f"{scheme} t={token}, k={k}", "TTL": "60",
            "Content-Encoding": "aes128gcm", "Urgency": "normal", **(headers or {})}
    for name in drop:
        sent.pop(name, None)
    return requests.post(sub["endpoint"], data=body, headers=sent, timeout=10)


# --- subscriptions ------------------------------------------------------------------------

@pytest.mark.fast
def test_a_subscription_is_browser_shaped_and_its_private_half_is_kept(tmp_path):
    sub = create_subscription(tmp_path, "http://127.0.0.1:8027/")
    assert set(sub) == {"endpoint", "expirationTime", "keys"}
    assert sub["expirationTime"] is None
    sub_id = sub["endpoint"].removeprefix("http://127.0.0.1:8027/push/")
    assert len(sub_id) >= 16 and "/" not in sub_id
    kept_path = tmp_path / "subscriptions" / f"{sub_id}.json"
    assert stat.S_IMODE(kept_path.stat().st_mode) == 0o600  # a private key: owner only
    kept = json.loads(kept_path.read_text())
    private = serialization.load_pem_private_key(kept["private_key"].encode(), None)
    assert b64url(public_key_bytes(private)) == sub["keys"]["p256dh"]
    assert len(b64url_decode(sub["keys"]["auth"])) == 16
    # The push API's validation takes it when the local service's host is listed.
    hosts = HostList.parse("127.0.0.1:8027", WEBPUSH_INSECURE_HOSTS)
    assert parse_subscription(sub, hosts).endpoint == sub["endpoint"]


@pytest.mark.fast
def test_the_deployment_folder_and_port_of_the_local_push_service():
    assert push_dir("run").name == "webpush"
    assert push_dir("run").parent == push_dir("test").parent
    assert push_dir("test").name == "webpush-test"
    assert service_url({}) == "http://127.0.0.1:8027"
    assert service_url({"MC_WEBPUSH_PORT": "9027"}) == "http://127.0.0.1:9027"


@pytest.mark.fast
def test_a_bad_application_server_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not the base64url text of a P-256 public key"):
        create_subscription(tmp_path, "http://127.0.0.1:8027", "abc")


# --- what the service accepts -------------------------------------------------------------

def test_a_valid_push_is_decrypted_kept_and_answered_201(webpush_sink):
    sub = webpush_sink.create_subscription()
    signer = ec.generate_private_key(ec.SECP256R1())
    answer = raw_post(webpush_sink, sub, payload=json.dumps(NOTIFICATION).encode(),
                      signer=signer, headers={"Topic": "order-1042", "Urgency": "low"})
    assert answer.status_code == 201, answer.text
    [message] = webpush_sink.messages()
    assert answer.headers["Location"] == f"{webpush_sink.url}/message/{message['id']}"
    assert message["notification"] == NOTIFICATION
    assert (message["ttl"], message["urgency"], message["topic"]) == (60, "low", "order-1042")
    assert message["vapid"]["k"] == b64url(public_key_bytes(signer))
    assert message["vapid"]["sub"] == SUBJECT


@pytest.mark.parametrize(("change", "status", "reason"), [
    ({"drop": ("Authorization",)}, 401, "Authorization: vapid t=..., k=... is required"),
    ({"scheme": "WebPush"}, 401, "Authorization: vapid"),
    ({"k": b64url(public_key_bytes(ec.generate_private_key(ec.SECP256R1())))}, 401,
     "not an ES256 JWT signed by the key k"),
    ({"claims": {"aud": "http://127.0.0.1:1"}}, 401, "is not this push service's origin"),
    ({"claims": {"exp": int(time.time()) - 10}}, 401, "has expired"),
    ({"claims": {"exp": int(time.time()) + 25 * 3600}}, 401, "more than 24 hours ahead"),
    ({"claims": {"sub": "ops@shop.example"}}, 401, "sub is not a mailto: or https: contact"),
    ({"drop": ("TTL",)}, 400, "the TTL header is required"),
    ({"headers": {"Urgency": "asap"}}, 400, "Urgency 'asap'"),
    ({"headers": {"Topic": "not a topic!"}}, 400, "Topic must be"),
    ({"headers": {"Content-Encoding": "aesgcm"}}, 400, "Content-Encoding must be aes128gcm"),
    ({"body": b"x" * 4097}, 413, "more than 4096"),
    ({"body": b"not encrypted at all, just text"}, 400, "does not decrypt"),
])
def test_a_wrong_request_is_refused_with_the_reason(webpush_sink, change, status, reason):
    sub = webpush_sink.create_subscription()
    answer = raw_post(webpush_sink, sub, **change)
    assert answer.status_code == status
    assert reason in answer.json()["message"]
    assert webpush_sink.messages() == []


def test_a_message_for_other_keys_does_not_decrypt(webpush_sink):
    sub, other = webpush_sink.create_subscription(), webpush_sink.create_subscription()
    answer = raw_post(webpush_sink, sub, encrypt_to=other)
    assert answer.status_code == 400 and "does not decrypt" in answer.json()["message"]


def test_unknown_expired_and_bound_subscriptions(webpush_sink):
    sub = webpush_sink.create_subscription()
    unknown = {**sub, "endpoint": f"{webpush_sink.url}/push/NoSuchSubscription1"}
    assert raw_post(webpush_sink, unknown).status_code == 404
    webpush_sink.expire(sub["endpoint"])
    assert raw_post(webpush_sink, sub).status_code == 410
    app_key = ec.generate_private_key(ec.SECP256R1())
    bound = webpush_sink.create_subscription(b64url(public_key_bytes(app_key)))
    answer = raw_post(webpush_sink, bound)  # signed by another application's key
    assert answer.status_code == 403
    assert "not the subscription's applicationServerKey" in answer.json()["message"]
    assert raw_post(webpush_sink, bound, signer=app_key).status_code == 201
    with pytest.raises(KeyError):
        webpush_sink.expire("NoSuchSubscription1")


def test_scripted_answers_come_after_the_checks(webpush_sink):
    sub = webpush_sink.create_subscription()
    sub_id = webpush_sink.subscription_id(sub["endpoint"])
    webpush_sink.script(sub_id, "429 retry-after=7", "201", "always 503")
    assert raw_post(webpush_sink, sub, drop=("TTL",)).status_code == 400  # checked first
    throttled = raw_post(webpush_sink, sub)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "7")
    assert raw_post(webpush_sink, sub).status_code == 201
    assert [raw_post(webpush_sink, sub).status_code for _ in range(2)] == [503, 503]
    assert len(webpush_sink.messages()) == 1
    webpush_sink.clear()
    assert raw_post(webpush_sink, sub).status_code == 201  # clear() forgets scripts


# --- the commands, end to end -------------------------------------------------------------

def test_keys_and_subscription_commands_round_trip(webpush_sink, capsys):
    """A key pair printed by ``mc webpush keys`` and a subscription printed by
    ``mc webpush subscription`` (bound to that key, as a browser does) carry a
    notification to the local push service; another application's key is refused."""
    assert main(["webpush", "keys", "--json", "--subject", "https://shop.example/contact"]) == 0
    keys = json.loads(capsys.readouterr().out)
    assert keys["subject"] == "https://shop.example/contact"
    private = load_vapid_private_key(keys["privateKey"])
    assert b64url(public_key_bytes(private)) == keys["publicKey"]
    assert main(["webpush", "subscription", "--push-dir", str(webpush_sink.push_dir),
                 "--url", webpush_sink.url,
                 "--application-server-key", keys["publicKey"]]) == 0
    printed = capsys.readouterr()
    sub = json.loads(printed.out)
    assert f"{WEBPUSH_INSECURE_HOSTS} must list 127.0.0.1:{webpush_sink.port}" in printed.err
    assert parse_subscription(sub, listed(webpush_sink)).endpoint.startswith(
        f"{webpush_sink.url}/push/")

    settings = WebPushSettings(keys["privateKey"], keys["subject"],
                               insecure_hosts=listed(webpush_sink))
    with WebPushSender(settings) as sender:
        result = sender.send(sub, NOTIFICATION, ttl=120)
    assert result.outcome.status == "sent"
    assert [m["notification"] for m in webpush_sink.messages()] == [NOTIFICATION]

    other = generate_vapid_keys()
    with WebPushSender(WebPushSettings(other.private_key, SUBJECT,
                                       insecure_hosts=listed(webpush_sink))) as sender:
        refused = sender.send(sub, NOTIFICATION, ttl=120)
    assert (refused.status, refused.outcome.status, refused.outcome.failure_class,
            refused.outcome.failure_reason) == (403, "failed", "error", "sender_refused")


@pytest.mark.fast
def test_keys_command_prints_the_connection(capsys):
    assert main(["webpush", "keys"]) == 0
    out = capsys.readouterr().out
    private = out.split("private key (connection password): ", 1)[1].split()[0]
    public = out.split("applicationServerKey):", 1)[1].split()[0]
    assert b64url(public_key_bytes(load_vapid_private_key(private))) == public
    assert "airflow connections add webpush_default --conn-type generic" in out
    assert "conn_password: ${MC_WEBPUSH_VAPID_PRIVATE_KEY}" in out  # no key in the file
    assert "conn_login: mailto:admin@message-center.local" in out
    assert main(["webpush", "keys", "--subject", "admin@example.org"]) == 2
    assert "must be a mailto: address or an https: URL" in capsys.readouterr().err


def test_the_service_runs_as_make_run_starts_it(tmp_path):
    """``python -m mc_local.webpush_sink`` (what ``make run`` starts) serves a
    subscription made by the command line while it runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "mc_local.webpush_sink", "--port", str(port),
         "--push-dir", str(tmp_path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stdout.readline()
        assert line.startswith(f"Web Push service on http://127.0.0.1:{port}/push/<id>")
        assert main(["webpush", "subscription", "--push-dir", str(tmp_path),
                     "--url", f"http://127.0.0.1:{port}"]) == 0
        sub = json.loads(next(p for p in (tmp_path / "subscriptions").glob("*.json"))
                         .read_text())
        keys = generate_vapid_keys()
        settings = WebPushSettings(keys.private_key, SUBJECT, insecure_hosts=HostList.parse(
            f"127.0.0.1:{port}", WEBPUSH_INSECURE_HOSTS))
        with WebPushSender(settings) as sender:
            result = sender.send({"endpoint": sub["endpoint"], "keys": {
                "p256dh": sub["p256dh"], "auth": sub["auth"]}}, NOTIFICATION, ttl=60)
        assert result.outcome.status == "sent"
        [kept] = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
        assert kept["notification"] == NOTIFICATION
    finally:
        process.terminate()
        process.wait(10)
