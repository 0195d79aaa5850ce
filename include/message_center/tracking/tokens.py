"""Signed tokens of the tracking URLs: HMAC-SHA256, several keys accepted, the first signs.

A token says what it is for (open, click, mirror, unsubscribe), which message (the
delivery log id) and, for a click, which link (its number in the message and a hash of
its URL): the tracking server never redirects to a URL taken from the request. Keys are
rotated with an overlap: put the new key first, keep the old one until the messages
signed with it no longer matter (their events' retention).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

#: Token kinds: the first byte of a token's payload.
OPEN, CLICK, MIRROR, UNSUBSCRIBE = "o", "c", "m", "u"
KINDS = (OPEN, CLICK, MIRROR, UNSUBSCRIBE)
_VERSION = 1
_SIGNATURE_BYTES = 16
_URL_HASH_BYTES = 6
# version, kind, delivery log id, link number, url hash
_PAYLOAD = struct.Struct(f">Bcqh{_URL_HASH_BYTES}s")
MIN_KEY_CHARS = 16

KEYS_ENV = "MC_TRACKING_KEYS"
BASE_URL_ENV = "MC_TRACKING_BASE_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8081"


class TrackingKeyError(ValueError):
    """No usable signing key: tracking cannot sign its URLs."""


@dataclass(frozen=True)
class Claim:
    """What a valid token says."""

    kind: str
    log_id: int
    link: int = -1
    url_hash: bytes = b""

    def matches_url(self, url: str) -> bool:
        return hmac.compare_digest(self.url_hash, url_hash(url))


def url_hash(url: str) -> bytes:
    return hashlib.sha256(url.encode()).digest()[:_URL_HASH_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs with the first key, verifies with any (rotation with an overlap)."""

    def __init__(self, keys: Sequence[str]) -> None:
        keys = [key.strip() for key in keys if key and key.strip()]
        if not keys:
            raise TrackingKeyError(
                f"no tracking key: set {KEYS_ENV} (comma-separated, newest first) or the "
                "password of the mc_tracking Airflow connection")
        short = [i for i, key in enumerate(keys) if len(key) < MIN_KEY_CHARS]
        if short:
            raise TrackingKeyError(f"tracking key #{short[0] + 1} is shorter than "
                                   f"{MIN_KEY_CHARS} characters")
        self._keys = [key.encode() for key in keys]

    def _mac(self, key: bytes, payload: bytes) -> bytes:
        return hmac.digest(key, payload, "sha256")[:_SIGNATURE_BYTES]

    def sign(self, kind: str, log_id: int, link: int = -1, url: str | None = None) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown token kind {kind!r}")
        digest = url_hash(url) if url is not None else b"\0" * _URL_HASH_BYTES
        payload = _PAYLOAD.pack(_VERSION, kind.encode(), log_id, link, digest)
        return _b64(payload + self._mac(self._keys[0], payload))

    def verify(self, token: str, kind: str) -> Claim | None:
        """The token's claim when it is well formed, of ``kind`` and signed by one of the
        keys; None otherwise (the caller answers a plain 404, whatever the reason)."""
        if not token or len(token) > 128:
            return None
        try:
            data = _unb64(token)
        except (ValueError, TypeError):
            return None
        if len(data) != _PAYLOAD.size + _SIGNATURE_BYTES or _b64(data) != token:
            return None  # the wrong size, or another spelling of the same bytes
        payload, signature = data[:_PAYLOAD.size], data[_PAYLOAD.size:]
        if not any(hmac.compare_digest(self._mac(key, payload), signature)
                   for key in self._keys):
            return None
        version, raw_kind, log_id, link, digest = _PAYLOAD.unpack(payload)
        if version != _VERSION or raw_kind != kind.encode():
            return None
        return Claim(kind, log_id, link, digest)


@dataclass(frozen=True)
class TrackingConfig:
    """Where the tracking server is reached from outside, and how its URLs are signed."""

    base_url: str
    signer: Signer

    def url(self, kind: str, log_id: int, link: int = -1, url: str | None = None) -> str:
        path = {OPEN: "o", CLICK: "c", MIRROR: "m", UNSUBSCRIBE: "u"}[kind]
        return f"{self.base_url}/{path}/{self.signer.sign(kind, log_id, link, url)}"


def keys_from_text(text: str | None) -> list[str]:
    return [key.strip() for key in (text or "").split(",") if key.strip()]


_configured: TrackingConfig | None = None


def configure(config: TrackingConfig | None) -> None:
    """Set the process's tracking configuration (the Airflow adapter does it from the
    ``mc_tracking`` connection); None: read the environment again."""
    global _configured
    _configured = config


def base_url_from_env() -> str:
    raw = os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
    if not raw.startswith(("http://", "https://")):
        raise TrackingKeyError(f"{BASE_URL_ENV} must be an http(s) URL; got {raw!r}")
    return raw.rstrip("/")


def current() -> TrackingConfig:
    """The configuration set by :func:`configure`, else from ``MC_TRACKING_BASE_URL`` and
    ``MC_TRACKING_KEYS``; raises :class:`TrackingKeyError` without a key."""
    if _configured is not None:
        return _configured
    return TrackingConfig(base_url_from_env(),
                          Signer(keys_from_text(os.environ.get(KEYS_ENV))))
