"""Web Push: subscriptions, VAPID keys and sending one notification to a push service.

The standard Web Push protocol, through the maintained ``pywebpush`` library:

* **RFC 8030** delivery: one ``POST`` of the encrypted message to the subscription's
  ``endpoint`` (a URL of the browser's push service), with ``TTL`` (seconds the service
  keeps it for an offline device), ``Urgency`` (``very-low`` | ``low`` | ``normal`` |
  ``high``) and an optional ``Topic`` (a newer message of the same topic replaces an
  undelivered one). ``201 Created`` means accepted; its ``Location`` names the message.
* **RFC 8291** encryption (``Content-Encoding: aes128gcm``) to the subscription's keys:
  ``p256dh`` (the browser's P-256 public key) and ``auth`` (a 16-byte secret). A push
  message carries at most 4096 bytes, so the notification JSON at most
  :data:`MAX_PLAINTEXT` bytes.
* **RFC 8292** VAPID: ``Authorization: vapid t=<JWT>, k=<public key>``, an ES256 JWT
  signed with the application's private key, ``aud`` the push service's origin, ``sub``
  a ``mailto:`` or ``https:`` contact, ``exp`` at most 24 hours ahead. The keys live in
  the Airflow connection ``webpush_default`` (:func:`settings_from_connection`;
  ``mc webpush keys`` makes a pair).

The endpoint comes from event data, so :class:`WebPushSender` checks it with
:mod:`message_center.net_guard` right before each POST (a listed host of
``MC_WEBPUSH_INSECURE_HOSTS`` may be loopback/private and plain http; any other must be
https and resolve to public addresses only) and again on the connection it opens (the
address actually reached), and never follows a redirect.

Answers are classified like every channel's (:func:`classify_webpush`): ``201`` sent;
``404`` / ``410`` the subscription is gone (``hard``: quarantine it); ``413`` payload too
large (failed, no retry); ``429`` throttle (its ``Retry-After`` is returned); ``5xx``,
timeouts, connection errors retried; ``401`` / ``403`` our VAPID keys refused (failed, not
the subscription's fault); other ``4xx`` an error of the request.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from message_center.delivery.classification import (
    SENT,
    AnswerClass,
    Classification,
)
from message_center.delivery.outcome import Outcome
from message_center.http_util import parse_retry_after
from message_center.net_guard import (
    WEBPUSH_INSECURE_HOSTS,
    HostList,
    Target,
    UrlRefused,
    check_url,
    connection_problem,
)

#: The wire field of a push event's address, and the connection of the VAPID keys.
SUBSCRIPTION_FIELD = "pushSubscription"
CONNECTION_ID = "webpush_default"
URGENCIES = ("very-low", "low", "normal", "high")
#: A push message is at most 4096 bytes (RFC 8030 §7.2): 86 bytes of aes128gcm header
#: (salt, record size, the sender's 65-byte key), a 16-byte tag and a delimiter byte.
MAX_MESSAGE = 4096
MAX_PLAINTEXT = MAX_MESSAGE - 86 - 16 - 1
MAX_ENDPOINT = 2048
#: Longest TTL we ask for (push services cap it, e.g. at 28 days).
MAX_TTL = 28 * 24 * 3600
#: VAPID tokens are signed for 12 hours and signed again when less than an hour is left.
VAPID_LIFETIME = 12 * 3600
#: How long a push service's host check (name resolution) is reused by a sender.
CHECK_SECONDS = 60.0
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_SUBJECT = re.compile(r"mailto:[^@\s]+@(localhost|([a-z0-9-]+\.)+[a-z0-9-]+)|"
                      r"https://[a-z0-9.-]+(:\d+)?(/\S*)?", re.I)


# --- base64url and keys ----------------------------------------------------------------

def b64url(data: bytes) -> str:
    """Base64url without padding (how Web Push writes keys)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Base64url, padding optional; ``ValueError`` for anything else."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("not base64url text")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError("not base64url text (wrong length)")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64url text ({exc})") from None


def public_key_bytes(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """The 65-byte uncompressed P-256 point of a key (``applicationServerKey``, ``p256dh``)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.X962,
                               serialization.PublicFormat.UncompressedPoint)


def private_key_text(key: ec.EllipticCurvePrivateKey) -> str:
    """A private key as the raw 32-byte scalar in base64url (what Web Push tools print)."""
    return b64url(key.private_numbers().private_value.to_bytes(32, "big"))


@dataclass(frozen=True)
class VapidKeys:
    """An application's VAPID key pair: ``private_key`` for the ``webpush_default``
    connection, ``public_key`` for the page's ``applicationServerKey``."""

    private_key: str = field(repr=False)
    public_key: str


def generate_vapid_keys() -> VapidKeys:
    """A new P-256 key pair (``mc webpush keys``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return VapidKeys(private_key_text(key), b64url(public_key_bytes(key)))


def load_vapid_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """The VAPID private key of the connection: the raw 32-byte scalar in base64url (what
    ``mc webpush keys`` and other Web Push tools print), or a PEM / base64 DER key on
    P-256. ``ValueError`` says which form was expected, never the key."""
    value = (text or "").strip()
    if not value:
        raise ValueError("the VAPID private key is empty")
    try:
        if "-----BEGIN" in value:
            key: Any = serialization.load_pem_private_key(value.encode(), password=None)
        else:
            raw = b64url_decode(value.replace("\n", "").replace("+", "-").replace("/", "_"))
            key = (ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
                   if len(raw) == 32 else
                   serialization.load_der_private_key(raw, password=None))
    except (ValueError, TypeError):
        raise ValueError("the VAPID private key is neither a base64url 32-byte P-256 key "
                         "nor a PEM / DER P-256 private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("the VAPID private key is not on the P-256 curve")
    return key


# --- subscriptions ---------------------------------------------------------------------

class SubscriptionError(ValueError):
    """A push subscription that cannot be used; ``field`` names where (for a 422):
    ``pushSubscription.keys.p256dh``."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Subscription:
    """A browser's ``PushSubscription``: where to POST and the keys to encrypt to."""

    endpoint: str
    p256dh: str
    auth: str

    def as_json(self) -> dict[str, Any]:
        """The browser's ``PushSubscription.toJSON()`` form (what pywebpush takes)."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}

    def dumps(self) -> str:
        """Compact JSON text, the same for the same subscription (the stored address)."""
        return json.dumps(self.as_json(), separators=(",", ":"))


def parse_subscription(value: Any, insecure_hosts: HostList | None = None, *,
                       field: str = SUBSCRIPTION_FIELD,
                       resolve_names: bool = False) -> Subscription:
    """Check a ``PushSubscription`` (a JSON object or its text) and return it with keys in
    canonical base64url. The endpoint must be https, or http for a host listed in
    ``MC_WEBPUSH_INSECURE_HOSTS``; an unlisted host must not be loopback, private, ...
    (see :func:`~message_center.net_guard.check_url`; names are resolved only when
    ``resolve_names``: at push time the literal check suffices, the sender resolves).
    ``p256dh`` must be a 65-byte uncompressed P-256 point, ``auth`` 16 bytes. Errors are
    :class:`SubscriptionError` naming the field."""
    hosts = insecure_hosts if insecure_hosts is not None else HostList.from_env(
        WEBPUSH_INSECURE_HOSTS)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise SubscriptionError(field, "is not JSON") from None
    if not isinstance(value, Mapping):
        raise SubscriptionError(field, 'must be an object {"endpoint", "keys": {"p256dh", '
                                       '"auth"}}')
    endpoint = value.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise SubscriptionError(f"{field}.endpoint", "is required (the push service URL)")
    endpoint = endpoint.strip()
    if len(endpoint) > MAX_ENDPOINT:
        raise SubscriptionError(f"{field}.endpoint", f"is longer than {MAX_ENDPOINT} "
                                                     "characters")
    try:
        check_url(endpoint, hosts, public=True, allow_http=True, resolve_names=resolve_names)
    except UrlRefused as exc:
        raise SubscriptionError(f"{field}.endpoint", exc.reason) from None
    keys = value.get("keys")
    if not isinstance(keys, Mapping):
        raise SubscriptionError(f"{field}.keys", 'is required: {"p256dh", "auth"}')
    p256dh = _key(keys.get("p256dh"), f"{field}.keys.p256dh", 65,
                  "a 65-byte uncompressed P-256 public key")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError:
        raise SubscriptionError(f"{field}.keys.p256dh", "is not a point on the P-256 "
                                                        "curve") from None
    auth = _key(keys.get("auth"), f"{field}.keys.auth", 16, "a 16-byte secret")
    return Subscription(endpoint, b64url(p256dh), b64url(auth))


def subscription_endpoint(value: str) -> str:
    """The endpoint URL of a stored subscription (its JSON) or of an endpoint given alone
    (the quarantine API's ``?endpoint=``): the key a subscription is quarantined by.
    ``ValueError`` when it is neither."""
    text = (value or "").strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            raise ValueError("the push subscription is not JSON") from None
        text = parsed.get("endpoint", "") if isinstance(parsed, dict) else ""
        text = text.strip() if isinstance(text, str) else ""
    if not text:
        raise ValueError("no push subscription endpoint")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text[:100]!r} is not a push subscription endpoint (an https URL)")
    if len(text) > MAX_ENDPOINT:
        raise ValueError(f"the endpoint is longer than {MAX_ENDPOINT} characters")
    return text


def _key(value: Any, name: str, size: int, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise SubscriptionError(name, f"is required: the base64url text of {what}")
    try:
        raw = b64url_decode(value)
    except ValueError:
        raise SubscriptionError(name, f"is not base64url text (expected {what})") from None
    if len(raw) != size or (size == 65 and raw[0] != 4):
        raise SubscriptionError(name, f"is {len(raw)} bytes, not {what}")
    return raw


# --- answers ---------------------------------------------------------------------------

#: Retried statuses besides 5xx (as HTTP defines them).
RETRY_STATUSES = frozenset({408, 425, 429})


def classify_webpush(status: int) -> Classification:
    """A push service's HTTP answer, classified: 2xx sent; 404 / 410 the subscription is
    gone (hard); 413 the payload is too large (error, failed); 429 throttle; 408 / 425 /
    5xx transient; 401 / 403 our VAPID credentials were refused (error: the subscription
    is not to blame); other statuses (4xx, an unexpected 1xx/3xx) an error of the
    request."""
    if 200 <= status < 300:
        return SENT
    temporary = status in RETRY_STATUSES or status >= 500
    if status in (404, 410):
        klass, reason = AnswerClass.HARD, "user_unknown"
    elif status == 429:
        klass, reason = AnswerClass.THROTTLE, "throttled"
    elif temporary:
        klass, reason = AnswerClass.TRANSIENT, "server_error"
    elif status in (401, 403):
        klass, reason = AnswerClass.ERROR, "sender_refused"
    else:
        klass, reason = AnswerClass.ERROR, "message_error"
    return Classification(klass, reason, temporary=temporary, code=status)


@dataclass(frozen=True)
class PushResult:
    """What became of one push: the ledger's :class:`Outcome`, the HTTP status (None:
    no answer), and for a throttle the push service's ``Retry-After`` in seconds."""

    outcome: Outcome
    status: int | None = None
    retry_after: float | None = None


# --- sending ---------------------------------------------------------------------------

@dataclass(frozen=True)
class WebPushSettings:
    """The VAPID keys and limits of the ``webpush_default`` connection, and the hosts
    that may be called over plain http or on loopback/private addresses."""

    private_key: str = field(repr=False)
    subject: str
    timeout: float = 10.0
    insecure_hosts: HostList = field(default_factory=lambda: HostList(WEBPUSH_INSECURE_HOSTS))
    #: The push services' limits for the whole DAG run, per push service (None: none).
    max_concurrent: int | None = None
    max_messages_per_second: float | None = None

    def __post_init__(self) -> None:
        load_vapid_private_key(self.private_key)  # a bad key fails here, named
        if not _SUBJECT.fullmatch(self.subject or ""):
            raise ValueError(f"Web Push: the VAPID subject {self.subject!r} is not a "
                             "mailto: address or an https: URL (RFC 8292 §2.1)")
        if not self.timeout > 0:
            raise ValueError("Web Push: timeout must be positive")
        if self.max_concurrent is not None and (isinstance(self.max_concurrent, bool) or
                                                not isinstance(self.max_concurrent, int) or
                                                self.max_concurrent < 1):
            raise ValueError(f"Web Push: max_concurrent {self.max_concurrent!r} is not a "
                             "whole number >= 1")
        if self.max_messages_per_second is not None and not self.max_messages_per_second > 0:
            raise ValueError(f"Web Push: max_messages_per_second "
                             f"{self.max_messages_per_second!r} is not a positive number")

    @property
    def public_key(self) -> str:
        """The application's public key (the page's ``applicationServerKey``)."""
        return b64url(public_key_bytes(load_vapid_private_key(self.private_key)))


def settings_from_connection(conn: Mapping[str, Any],
                             insecure_hosts: HostList | None = None) -> WebPushSettings:
    """Settings from the ``webpush_default`` connection: ``password`` the VAPID private
    key, ``login`` the VAPID subject (``mailto:`` or ``https:``); extras ``timeout``,
    ``max_concurrent`` and ``max_messages_per_second`` (per push service). Insecure
    hosts from ``MC_WEBPUSH_INSECURE_HOSTS`` unless given."""
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    name = f"connection {conn.get('conn_id') or CONNECTION_ID}"
    if not conn.get("password"):
        raise ValueError(f"{name}: the VAPID private key (password) is missing; "
                         "`mc webpush keys` makes one")
    try:
        return WebPushSettings(
            private_key=str(conn["password"]),
            subject=str(conn.get("login") or extra.get("subject") or ""),
            timeout=float(extra.get("timeout") or 10),
            insecure_hosts=insecure_hosts if insecure_hosts is not None else
            HostList.from_env(WEBPUSH_INSECURE_HOSTS),
            max_concurrent=int(extra["max_concurrent"]) if extra.get("max_concurrent")
            else None,
            max_messages_per_second=float(extra["max_messages_per_second"])
            if extra.get("max_messages_per_second") else None,
        )
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def push_service(endpoint: str) -> str:
    """The push service an endpoint belongs to (its origin): the key of per-service caps."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}".lower()


def notification_json(notification: Mapping[str, Any] | str | bytes) -> bytes:
    """The payload bytes: a rendered notification (``title``, ``body``, ``url``, ``icon``,
    ``tag``) as compact UTF-8 JSON, empty parts left out; text or bytes as they are."""
    if isinstance(notification, bytes):
        return notification
    if isinstance(notification, str):
        return notification.encode("utf-8")
    cleaned = {k: v for k, v in notification.items() if v not in (None, "")}
    return json.dumps(cleaned, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class PeerRefused(UrlRefused):
    """The connection reached an address an unlisted host must not have."""


def guarded_session(insecure_hosts: HostList) -> requests.Session:
    """A ``requests`` session whose every new connection checks the address it reached
    (a name can resolve elsewhere between the check and the connect: DNS rebinding),
    that ignores proxy variables and never follows a redirect."""
    session = _NoRedirectSession()
    session.trust_env = False
    adapter = _GuardedAdapter(insecure_hosts)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class _NoRedirectSession(requests.Session):
    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["allow_redirects"] = False
        return super().request(*args, **kwargs)


def _check_peer(conn: Any, sock: Any, hosts: HostList) -> None:
    peer = str(sock.getpeername()[0])
    problem = connection_problem(hosts, conn.host, conn.port, peer)
    if problem:
        sock.close()
        raise PeerRefused(f"{conn.host}:{conn.port}", f"the connection reached {peer}, a "
                          f"{problem} address, and {conn.host} is not listed in "
                          f"{hosts.variable}")


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, hosts: HostList) -> None:
        self._hosts = hosts
        super().__init__(pool_connections=8, pool_maxsize=16, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        hosts = self._hosts

        class Plain(HTTPConnection):
            def _new_conn(self) -> Any:
                sock = super()._new_conn()
                _check_peer(self, sock, hosts)
                return sock

        class Tls(HTTPSConnection):
            def _new_conn(self) -> Any:
                sock = super()._new_conn()
                _check_peer(self, sock, hosts)
                return sock

        class PlainPool(HTTPConnectionPool):
            ConnectionCls = Plain

        class TlsPool(HTTPSConnectionPool):
            ConnectionCls = Tls

        self.poolmanager.pool_classes_by_scheme = {"http": PlainPool, "https": TlsPool}


class WebPushSender:
    """Sends notifications with ``pywebpush`` over one pooled, guarded HTTP session
    (safe to share between a shard's session threads)."""

    def __init__(self, settings: WebPushSettings,
                 resolver: Callable[[str, int], Any] | None = None) -> None:
        from py_vapid import Vapid  # pywebpush's own VAPID signer (loaded with the sender)

        self.settings = settings
        # The subject was checked (RFC 8292 allows an https URL with a path, which
        # py_vapid's strict check refuses).
        self._vapid = Vapid(load_vapid_private_key(settings.private_key),
                            conf={"no-strict": True})
        self._resolver = resolver
        self._session = guarded_session(settings.insecure_hosts)
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, dict[str, str]]] = {}
        self._targets: dict[tuple[str, str], tuple[float, Target]] = {}

    def __enter__(self) -> WebPushSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def vapid_headers(self, audience: str) -> dict[str, str]:
        """``Authorization: vapid t=..., k=...`` for one push service origin (signed once
        per origin and again when the token has less than an hour left)."""
        now = time.time()
        with self._lock:
            cached = self._tokens.get(audience)
            if cached and cached[0] - now > 3600:
                return cached[1]
            expires = int(now) + VAPID_LIFETIME
            headers = self._vapid.sign({"sub": self.settings.subject, "aud": audience,
                                        "exp": expires})
            self._tokens[audience] = (expires, headers)
            return headers

    def check_endpoint(self, endpoint: str) -> Target:
        """The host check of an endpoint (:func:`~message_center.net_guard.check_url`),
        remembered per push service for :data:`CHECK_SECONDS` so that a busy shard does
        not resolve the same name for every message; the connection-time check of the
        address reached still applies to every new connection."""
        parts = urlsplit(endpoint)
        key, now = (parts.scheme.lower(), parts.netloc.lower()), time.monotonic()
        with self._lock:
            known = self._targets.get(key)
        if known is not None and known[0] > now:
            return known[1]
        target = check_url(endpoint, self.settings.insecure_hosts, public=True,
                           allow_http=True, resolver=self._resolver)
        with self._lock:
            if len(self._targets) >= 1024:  # endpoints come from event data: stay bounded
                self._targets.clear()
            self._targets[key] = (now + CHECK_SECONDS, target)
        return target

    def send(self, subscription: Subscription | Mapping[str, Any] | str,
             notification: Mapping[str, Any] | str | bytes, *, ttl: int,
             urgency: str = "normal", topic: str | None = None,
             ready: Callable[[], None] | None = None) -> PushResult:
        """Encrypt and POST one notification. The subscription is checked again (keys,
        endpoint, every address its host resolves to); ``ready`` is called just before
        the request goes out (if it raises, nothing is sent and it propagates)."""
        try:
            sub = subscription if isinstance(subscription, Subscription) else \
                parse_subscription(subscription, self.settings.insecure_hosts)
        except SubscriptionError as exc:
            return PushResult(Outcome.failed(f"Web Push subscription refused: {exc}",
                                             _invalid_subscription()))
        payload = notification_json(notification)
        problem = _request_problem(payload, ttl, urgency, topic)
        if problem:
            return PushResult(Outcome.failed(f"Web Push message refused: {problem}"))
        try:
            target = self.check_endpoint(sub.endpoint)
        except UrlRefused as exc:
            return PushResult(_refused(exc))
        headers = {**self.vapid_headers(target.origin), "Urgency": urgency}
        if topic:
            headers["Topic"] = topic
        from pywebpush import WebPusher

        pusher = WebPusher(sub.as_json(), requests_session=self._session)
        if ready is not None:
            ready()
        try:
            response = pusher.send(payload, headers, ttl=ttl, content_encoding="aes128gcm",
                                   timeout=self.settings.timeout)
        except UrlRefused as exc:  # PeerRefused: the connection reached a refused address
            return PushResult(_refused(exc))
        except requests.Timeout as exc:
            return PushResult(Outcome.retry(f"push service {target.origin} timed out: "
                                            f"{type(exc).__name__}"))
        except requests.RequestException as exc:
            return PushResult(Outcome.retry(f"push service {target.origin} unreachable: "
                                            f"{type(exc).__name__}: {exc}"))
        return _answer(target, response)

    def close(self) -> None:
        self._session.close()


def _request_problem(payload: bytes, ttl: int, urgency: str, topic: str | None) -> str | None:
    if len(payload) > MAX_PLAINTEXT:
        return (f"the notification is {len(payload)} bytes, more than the "
                f"{MAX_PLAINTEXT} bytes a push message can carry")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
        return f"ttl {ttl!r} is not a whole number of seconds from 0 to {MAX_TTL}"
    if urgency not in URGENCIES:
        return f"urgency {urgency!r} is not one of {', '.join(URGENCIES)}"
    if topic is not None and not _TOPIC.fullmatch(topic):
        return f"topic {topic!r} is not 1-32 base64url characters"
    return None


def _invalid_subscription() -> Classification:
    """A subscription that can never be sent to: failed, not retried; not quarantined
    (the push API refuses it, so this is a stored event gone bad or changed settings)."""
    return Classification(AnswerClass.ERROR, "invalid_address", temporary=False)


def _refused(exc: UrlRefused) -> Outcome:
    if exc.temporary:
        return Outcome.retry(f"Web Push endpoint not reachable now: {exc}")
    return Outcome.failed(f"Web Push endpoint refused: {exc}", _invalid_subscription())


def _answer(target: Target, response: requests.Response) -> PushResult:
    status = response.status_code
    if 200 <= status < 300:
        return PushResult(Outcome.sent(response.headers.get("Location") or None), status)
    classification = classify_webpush(status)
    retry_after = parse_retry_after(response.headers.get("Retry-After")) \
        if classification.verdict == "retry" else None
    text = (response.text or "").strip().replace("\n", " ")[:300]
    error = f"push service {target.origin} answered {status}"
    if retry_after is not None:
        error += f" (Retry-After {retry_after:g}s)"
    if text:
        error += f": {text}"
    if status in (301, 302, 303, 307, 308):
        error += " (redirects are not followed)"
    return PushResult(Outcome.classified(classification, error), status, retry_after)

