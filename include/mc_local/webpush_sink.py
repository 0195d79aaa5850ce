"""A real Web Push service on loopback that decrypts and keeps every message it accepts.

It does what a browser vendor's push service does with a message for one of its
subscriptions (RFC 8030), checked as strictly:

* ``POST /push/<subscription id>`` with ``TTL`` (required), optional ``Urgency`` and
  ``Topic``, ``Content-Encoding: aes128gcm`` and at most 4096 bytes (``413`` beyond);
* the VAPID ``Authorization: vapid t=<JWT>, k=<public key>`` header (RFC 8292): an ES256
  signature by ``k``, ``aud`` this service's origin, ``exp`` in the future and at most 24
  hours ahead, ``sub`` a ``mailto:`` or ``https:`` contact (``401`` otherwise; ``403``
  when the subscription was made for another application server key);
* the body decrypted (RFC 8291) with the subscription's private key and auth secret,
  which a browser keeps and this service keeps in ``<dir>/subscriptions``; ``400`` when
  it does not decrypt;
* an unknown subscription is ``404``, an expired one (:meth:`WebPushSink.expire`) ``410``.

Accepted messages are kept as ``.json`` files in the directory (the decrypted text, the
notification JSON, the headers and the VAPID claims); the answer is ``201`` with a
``Location``. :meth:`WebPushSink.script` forces answers for a subscription (``"410"``,
``"429 retry-after=30"``, ``"503"``, ``"always 413"``) to exercise every outcome.

Subscriptions are made by :func:`create_subscription` (``mc webpush subscription``):
a P-256 key pair and an auth secret, as a browser makes them, printed as the browser's
``PushSubscription`` JSON; the service need not run for that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from message_center.delivery.webpush import (
    MAX_MESSAGE,
    URGENCIES,
    b64url,
    b64url_decode,
    public_key_bytes,
)

DEFAULT_PORT = 8027
PORT_VARIABLE = "MC_WEBPUSH_PORT"
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_SUBJECT = re.compile(r"(mailto:[^@\s]+@\S+|https://\S+)", re.I)
MAX_EXP_AHEAD = 24 * 3600


class PushRefused(Exception):
    """An answer other than 201, with the reason the service gives."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after


def create_subscription(push_dir: Path, base_url: str,
                        application_server_key: str | None = None) -> dict[str, Any]:
    """Make a subscription as a browser does (a P-256 key pair and a 16-byte auth
    secret), keep its private half in ``push_dir/subscriptions`` and return the browser's
    ``PushSubscription`` JSON, its endpoint ``<base_url>/push/<id>``. With an
    ``application_server_key`` (the VAPID public key), only that key may push to it."""
    if application_server_key is not None:
        try:
            raw = b64url_decode(application_server_key)
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise ValueError("the application server key is not the base64url text of a "
                             "P-256 public key (the VAPID public key)") from None
        application_server_key = b64url(raw)
    key = ec.generate_private_key(ec.SECP256R1())
    sub_id = secrets.token_urlsafe(16)
    endpoint = f"{base_url.rstrip('/')}/push/{sub_id}"
    record = {
        "id": sub_id,
        "endpoint": endpoint,
        "created": time.time(),
        "private_key": key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode("ascii"),
        "p256dh": b64url(public_key_bytes(key)),
        "auth": b64url(secrets.token_bytes(16)),
        "application_server_key": application_server_key,
        "expired": False,
    }
    folder = Path(push_dir) / "subscriptions"
    folder.mkdir(parents=True, exist_ok=True)
    _write_private(folder / f"{sub_id}.json", record)
    return {"endpoint": endpoint, "expirationTime": None,
            "keys": {"p256dh": record["p256dh"], "auth": record["auth"]}}


def _write_private(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.chmod(0o600)
    tmp.rename(path)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like a real push service

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self, status: int, body: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting (a timeout test)

    def do_GET(self) -> None:
        if urlsplit(self.path).path.rstrip("/") == "/health":
            self._answer(200, {"status": "ok"})
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        sink = self.server.sink
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if 0 < length <= 2 * MAX_MESSAGE else b""
        if length > 2 * MAX_MESSAGE:
            self.close_connection = True  # the rest of a huge body is not read
        match = re.fullmatch(r"/push/([^/?#]+)", urlsplit(self.path).path)
        if match is None:
            self._answer(404, {"error": "POST /push/<subscription id> expected"})
            return
        with sink.in_flight():
            if sink.latency:
                time.sleep(sink.latency)
            try:
                record = sink.receive(match.group(1), dict(self.headers.items()), body,
                                      length)
            except PushRefused as refused:
                status = refused.status
                headers = ({"Retry-After": str(refused.retry_after)}
                           if refused.retry_after is not None else {})
                self._answer(status, {"code": status, "errno": status,
                                      "error": HTTPStatus(status).phrase
                                      if status in HTTPStatus._value2member_map_
                                      else "scripted", "message": refused.reason}, headers)
                return
        self._answer(201, None, {"Location": f"{sink.url}/message/{record['id']}",
                                 "TTL": str(record["ttl"])})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sink: WebPushSink


class WebPushSink:
    """A push service on ``http://host:port`` keeping decrypted messages in ``push_dir``."""

    def __init__(self, push_dir: Path, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT) -> None:
        self.push_dir = Path(push_dir)
        self.push_dir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._replies: dict[str, deque[str]] = defaultdict(deque)
        #: Seconds each POST takes before its answer; ``peak_in_flight``: the most POSTs
        #: it was answering at once (since the last ``clear()``).
        self.latency = 0.0
        self.peak_in_flight = 0
        self._in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def subscriptions_dir(self) -> Path:
        return self.push_dir / "subscriptions"

    def start(self) -> WebPushSink:
        self._server = _Server((self.host, self.port), _Handler)
        self._server.sink = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="webpush-sink")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebPushSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    # --- subscriptions ---------------------------------------------------------------

    def create_subscription(self, application_server_key: str | None = None
                            ) -> dict[str, Any]:
        """A new subscription to this service (see :func:`create_subscription`)."""
        return create_subscription(self.push_dir, self.url, application_server_key)

    @staticmethod
    def subscription_id(endpoint_or_id: str) -> str:
        """The subscription id of an endpoint URL (or the id itself)."""
        return endpoint_or_id.rstrip("/").rsplit("/push/", 1)[-1]

    def subscription(self, endpoint_or_id: str) -> dict[str, Any] | None:
        """The kept subscription (with its private key), None when unknown."""
        sub_id = self.subscription_id(endpoint_or_id)
        if not _ID.fullmatch(sub_id):
            return None
        path = self.subscriptions_dir / f"{sub_id}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def expire(self, endpoint_or_id: str) -> None:
        """The subscription ends (the user revoked the permission): ``410 Gone`` from now."""
        record = self.subscription(endpoint_or_id)
        if record is None:
            raise KeyError(f"no subscription {endpoint_or_id!r}")
        record["expired"] = True
        _write_private(self.subscriptions_dir / f"{record['id']}.json", record)

    def script(self, endpoint_or_id: str, *replies: str) -> None:
        """Answer POSTs to this subscription with these statuses first, after the request
        was checked and decrypted: ``"410"``, ``"503"``, ``"429 retry-after=30"``,
        ``"always 413"``; a 2xx in the script means "accept normally"."""
        with self._lock:
            self._replies[self.subscription_id(endpoint_or_id)].extend(replies)

    def next_reply(self, sub_id: str) -> tuple[int, int | None] | None:
        with self._lock:
            queue = self._replies.get(sub_id)
            if not queue:
                return None
            reply = queue.popleft()
            if reply.startswith("always "):
                queue.appendleft(reply)
                reply = reply.removeprefix("always ")
        status, _, rest = reply.partition(" ")
        retry = re.search(r"retry-after=(\d+)", rest, re.I)
        if 200 <= int(status) < 300:
            return None
        return int(status), int(retry.group(1)) if retry else None

    # --- receiving -------------------------------------------------------------------

    def receive(self, sub_id: str, headers: dict[str, str], body: bytes,
                length: int) -> dict[str, Any]:
        """Check, decrypt and keep one push message; :class:`PushRefused` says why not."""
        lower = {name.lower(): value for name, value in headers.items()}
        record = self.subscription(sub_id)
        if record is None:
            raise PushRefused(404, f"no subscription {sub_id}")
        if record.get("expired"):
            raise PushRefused(410, "the subscription has expired or was unsubscribed")
        ttl_text = lower.get("ttl", "").strip()
        if not ttl_text.isdigit():
            raise PushRefused(400, "the TTL header is required (seconds, RFC 8030 §5.2)")
        urgency = lower.get("urgency", "normal").strip().lower()
        if urgency not in URGENCIES:
            raise PushRefused(400, f"Urgency {urgency!r} is not one of {URGENCIES}")
        topic = lower.get("topic")
        if topic is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", topic):
            raise PushRefused(400, "Topic must be 1-32 base64url characters")
        if length > MAX_MESSAGE:
            raise PushRefused(413, f"the message is {length} bytes, more than {MAX_MESSAGE}")
        if not body:
            raise PushRefused(400, "a message body is required")
        if lower.get("content-encoding", "").strip().lower() != "aes128gcm":
            raise PushRefused(400, "Content-Encoding must be aes128gcm (RFC 8291)")
        claims, key = self._verify_vapid(lower.get("authorization", ""),
                                         f"http://{lower.get('host', '')}", record)
        private_key = serialization.load_pem_private_key(
            record["private_key"].encode(), password=None)
        try:
            plain = http_ece.decrypt(body, private_key=private_key,
                                     auth_secret=b64url_decode(record["auth"]),
                                     version="aes128gcm")
        except Exception as exc:  # http_ece raises several types for a bad message
            raise PushRefused(400, f"the message does not decrypt with the subscription's "
                                   f"keys ({type(exc).__name__})") from None
        scripted = self.next_reply(record["id"])
        if scripted is not None:
            raise PushRefused(scripted[0], "scripted answer", scripted[1])
        text = plain.decode("utf-8", "replace")
        try:
            notification = json.loads(text)
        except ValueError:
            notification = None
        message = {
            "id": uuid.uuid4().hex[:16],
            "received": time.time(),
            "subscription": record["id"],
            "endpoint": record["endpoint"],
            "ttl": int(ttl_text),
            "urgency": urgency,
            "topic": topic,
            "vapid": {**claims, "k": key},
            "size": length,
            "data": text,
            "notification": notification,
        }
        return self.store(message)

    def _verify_vapid(self, header: str, origin: str,
                      record: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """RFC 8292: the token, its ES256 signature by ``k`` and its claims."""
        scheme, _, params = header.strip().partition(" ")
        if scheme.lower() != "vapid":
            raise PushRefused(401, "Authorization: vapid t=..., k=... is required "
                                   "(RFC 8292)")
        fields = dict(part.strip().split("=", 1) for part in params.split(",")
                      if "=" in part)
        token, key = fields.get("t", ""), fields.get("k", "")
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                                  b64url_decode(key))
            head, claims_b64, signature = token.split(".")
            raw = b64url_decode(signature)
            if len(raw) != 64:
                raise ValueError("an ES256 signature is 64 bytes")
            public.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                               int.from_bytes(raw[32:], "big")),
                          f"{head}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
            header_json = json.loads(b64url_decode(head))
            claims = json.loads(b64url_decode(claims_b64))
        except (ValueError, InvalidSignature):
            raise PushRefused(401, "the VAPID token is not an ES256 JWT signed by the "
                                   "key k") from None
        if not isinstance(claims, dict) or header_json.get("alg") != "ES256":
            raise PushRefused(401, "the VAPID token is not an ES256 JWT")
        if claims.get("aud") != origin:
            raise PushRefused(401, f"the VAPID aud {claims.get('aud')!r} is not this push "
                                   f"service's origin {origin!r}")
        exp, now = claims.get("exp"), time.time()
        if not isinstance(exp, int) or exp <= now:
            raise PushRefused(401, "the VAPID token has expired (exp)")
        if exp > now + MAX_EXP_AHEAD + 60:
            raise PushRefused(401, "the VAPID exp is more than 24 hours ahead")
        if not isinstance(claims.get("sub"), str) or not _SUBJECT.fullmatch(claims["sub"]):
            raise PushRefused(401, "the VAPID sub is not a mailto: or https: contact")
        bound = record.get("application_server_key")
        if bound and b64url(b64url_decode(key)) != bound:
            raise PushRefused(403, "the VAPID key is not the subscription's "
                                   "applicationServerKey")
        return claims, key

    def store(self, message: dict[str, Any]) -> dict[str, Any]:
        name = f"{time.time_ns()}-{message['id']}.json"
        tmp = self.push_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(message, ensure_ascii=False))
        tmp.rename(self.push_dir / name)
        return message

    def messages(self) -> list[dict[str, Any]]:
        """Every accepted message, oldest first."""
        return [json.loads(path.read_text()) for path in sorted(self.push_dir.glob("*.json"))]

    def clear(self) -> None:
        """Forget the kept messages and scripts (subscriptions stay), once the requests
        being answered are done (a slow answer must not land in the next test)."""
        self.latency = 0.0
        deadline = time.monotonic() + 30
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        for path in self.push_dir.glob("*.json"):
            path.unlink()
        with self._lock:
            self._replies.clear()
            self.peak_in_flight = 0
        self.latency = 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Web Push service for the Message "
                                                 "Center demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--push-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    with WebPushSink(args.push_dir, args.host, args.port) as sink:
        print(f"Web Push service on {sink.url}/push/<id>, keeping messages in "
              f"{args.push_dir}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
