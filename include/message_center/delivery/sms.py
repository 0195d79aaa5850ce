"""SMS through an HTTP gateway: one JSON POST per message over a reused HTTP connection.

The gateway contract (what :mod:`mc_local.sms_sink` implements, and what an
adapter in front of a real SMS provider must accept)::

    POST <base url><path>            (default path: /messages)
    Content-Type: application/json
    Idempotency-Key: mc-<delivery log id>
    Authorization: Basic ... (connection login/password) or Bearer <password> (no login)

    {"to": "+33612345678", "from": "ACME", "text": "Your code is 1234",
     "reference": "mc-<delivery log id>"}

    2xx  {"id": "<provider message id>", ...}   -> sent (provider id recorded)
    refused, 503 with Retry-After               -> the gateway is down: not a try; its
                                                   circuit breaker decides when to go on
    408, 425, 429, 5xx                          -> transient: retried later
    no answer in time (the request went out)    -> the lookup below decides; a gateway
                                                   without it: outcome unknown
    any other 4xx                               -> permanent: failed
    non-2xx {"code": "unknown_subscriber", ...} -> classified by the code (see below)

Every non-2xx answer is classified by
:func:`~message_center.delivery.classification.classify_sms` (the documented mapping:
a ``code`` field of the JSON body first - ``unknown_subscriber``, ``invalid_number``
hard; ``absent_subscriber``, ``handset_full`` soft and retried; ``blocked``,
``opted_out``, ``spam`` policy; ``throttled`` - else the status: 404/410 hard, 403/451
policy, 429 throttle, 408/425/5xx transient, other 4xx an error of the request).

Optional, for gateways that can tell what became of a message (used to settle a message
whose worker died while sending it, instead of calling it "outcome unknown")::

    GET <base url><path>?reference=mc-<delivery log id>
    200 {"id": "<provider message id>", "reference": "mc-<id>", "found": true}
                                  -> the gateway accepted it: sent
    404 {"reference": "mc-<id>", "found": false}
                                  -> the gateway never received it: sent again (same key)
    anything else, timeout        -> it cannot tell: the outcome stays unknown

HTTP status semantics are used as HTTP defines them: a 5xx from a gateway is a server
problem that usually heals, so it is retried (unlike a 5xx SMTP reply, which is a final
refusal). ``reference``/``Idempotency-Key`` stay the same on every attempt, so a gateway
that deduplicates never sends a retried message twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from message_center.delivery.classification import classify_sms
from message_center.delivery.outcome import Outcome
from message_center.ids import to_public


@dataclass(frozen=True)
class SmsSettings:
    """Where the SMS gateway is; built from the ``sms_gateway`` connection."""

    base_url: str
    path: str = "/messages"
    sender: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    # The gateway's limits for the whole DAG run (shared by its shard tasks), or None.
    max_concurrent: int | None = None
    max_messages_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.max_concurrent is not None and (isinstance(self.max_concurrent, bool) or
                                                not isinstance(self.max_concurrent, int) or
                                                self.max_concurrent < 1):
            raise ValueError(f"SMS gateway: max_concurrent {self.max_concurrent!r} is not a "
                             "whole number >= 1")
        if self.max_messages_per_second is not None and not self.max_messages_per_second > 0:
            raise ValueError(f"SMS gateway: max_messages_per_second "
                             f"{self.max_messages_per_second!r} is not a positive number")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"SMS gateway: base url {self.base_url!r} is not http(s)")
        if not self.path.startswith("/"):
            raise ValueError(f"SMS gateway: path {self.path!r} must start with '/'")
        if self.timeout <= 0:
            raise ValueError("SMS gateway: timeout must be positive")


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), capped at an hour."""
    raw = response.headers.get("Retry-After", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), 3600.0)


def reference(log_id: int) -> str:
    return f"mc-{to_public(log_id)}"


class SmsSender:
    """Posts SMS to the gateway with one pooled ``httpx.Client`` (keep-alive)."""

    def __init__(self, settings: SmsSettings) -> None:
        self.settings = settings
        auth: httpx.Auth | None = None
        headers = {"User-Agent": "message-center"}
        if settings.login:
            auth = httpx.BasicAuth(settings.login, settings.password or "")
        elif settings.password:
            headers["Authorization"] = f"Bearer {settings.password}"
        self._client = httpx.Client(base_url=settings.base_url, auth=auth, headers=headers,
                                    timeout=settings.timeout)

    def __enter__(self) -> SmsSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *, log_id: int, to: str, text: str, sender: str | None = None,
             ready: Callable[[], None] | None = None) -> Outcome:
        """POST one message. ``ready`` is called just before the request goes out (the
        point of no return); if it raises, nothing is sent and the exception propagates."""
        ref = reference(log_id)
        body = {"to": to, "from": sender or self.settings.sender, "text": text,
                "reference": ref}
        if ready is not None:
            ready()
        try:
            response = self._client.post(self.settings.path, json=body,
                                         headers={"Idempotency-Key": ref})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing reached it
            return Outcome.unavailable(f"SMS gateway unreachable: {type(exc).__name__}: "
                                       f"{exc}")
        except httpx.PoolTimeout as exc:  # waiting for a connection: nothing was sent
            return Outcome.retry(f"SMS gateway timeout: {type(exc).__name__}")
        except httpx.TimeoutException as exc:  # the request went out, no answer came
            return self._after_timeout(log_id, exc)
        except httpx.HTTPError as exc:
            return Outcome.retry(f"SMS gateway unreachable: {type(exc).__name__}: {exc}")
        if response.is_success:
            try:
                provider_id = str(response.json().get("id") or ref)
            except (ValueError, AttributeError):
                provider_id = ref
            return Outcome.sent(provider_id)
        error = f"SMS gateway answered {response.status_code}: {response.text[:300]}"
        if response.status_code == 503 and (wait := _retry_after(response)) is not None:
            return Outcome.unavailable(error, retry_after=wait)
        try:
            body = response.json()
        except ValueError:
            body = None
        return Outcome.classified(classify_sms(response.status_code, body), error)

    def _after_timeout(self, log_id: int, exc: Exception) -> Outcome:
        """No answer to a request that went out: the gateway's lookup by reference decides
        (sent; never received: sent again with the same ``Idempotency-Key``); a gateway
        that cannot tell leaves the outcome unknown, as a lost final reply of SMTP."""
        ref = reference(log_id)
        found = self.lookup(log_id)
        if found is not None:
            return found
        return Outcome.unknown(
            f"outcome unknown: the SMS gateway did not answer within "
            f"{self.settings.timeout:g} s ({type(exc).__name__}) after the request was sent, "
            f"and its lookup cannot tell whether it took {ref}; not sent again (look for "
            f"reference {ref} at the gateway)")

    def lookup(self, log_id: int) -> Outcome | None:
        """What became of message ``log_id`` at the gateway (see the module doc): sent
        (with the provider id), a transient "never received" (sent again later, with the
        same ``Idempotency-Key``), or None when the gateway cannot tell."""
        ref = reference(log_id)
        try:
            response = self._client.get(self.settings.path, params={"reference": ref})
        except httpx.HTTPError:
            return None
        try:
            answer = response.json()
        except ValueError:
            return None
        if not isinstance(answer, dict) or answer.get("reference") != ref:
            return None  # no lookup there (a plain 404, an HTML page): it cannot tell
        if response.status_code == 404 and answer.get("found") is False:
            return Outcome.retry(f"the SMS gateway says it never received {ref} (the worker "
                                 "stopped while sending it): sent again")
        if response.is_success and answer.get("found") is True:
            return Outcome.sent(str(answer.get("id") or ref))
        return None

    def close(self) -> None:
        self._client.close()
