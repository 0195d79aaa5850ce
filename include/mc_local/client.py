"""A small client for the push API, for scripts, the demo and ``mc push``.

    from mc_local.client import push_event
    push_event({"type": "ORDER_CONFIRMED", "email": "jane@example.com",
                "ctx": {"orderId": "A-1001"}}, password="...")

Authenticates like any Airflow API client: a token from ``POST /auth/token`` with a
username and password, or a token given (with a username and password too, it is renewed).
A request answered 401 (token expired) is sent again once after logging in again, with the
same ``Idempotency-Key``: the refused request stored nothing, so nothing is pushed twice.
A 403 (the user lacks the permission) is a :class:`PushError` naming the permission.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import httpx

from message_center.events import MAX_BATCH_EVENTS

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
API_PREFIX = "/message-center/v1"


class PushError(RuntimeError):
    """The API refused a request; ``status`` and ``detail`` are what it said."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {describe(detail)}")


def describe(detail: Any) -> str:
    """A one-line reading of an error body (422 lists become 'field: msg; ...')."""
    if isinstance(detail, dict) and "detail" in detail:
        detail = detail["detail"]
    if isinstance(detail, list):
        return "; ".join(
            f"{item.get('field', '')}: {item.get('msg', '')}" if isinstance(item, dict)
            else str(item) for item in detail[:10])
    return str(detail)


class PushClient:
    """One HTTP connection pool and one token for many pushes."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, token: str | None = None,
                 username: str | None = None, password: str | None = None,
                 timeout: float = 30.0, http: httpx.Client | None = None) -> None:
        if token is None and (username is None or password is None):
            raise ValueError("give a token, or a username and a password")
        self.base_url = base_url.rstrip("/")
        self._token, self._username, self._password = token, username, password
        self._http = http or httpx.Client(timeout=timeout)
        #: Whether the last answer was a replay of an earlier request with the same
        #: Idempotency-Key (header ``Idempotent-Replayed``): nothing new was stored.
        self.last_replayed = False

    def __enter__(self) -> PushClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def token(self, refresh: bool = False) -> str:
        if self._token is None or (refresh and self._username is not None):
            response = self._http.post(f"{self.base_url}/auth/token", json={
                "username": self._username, "password": self._password})
            if response.status_code >= 400:
                raise PushError(response.status_code, _body(response))
            self._token = str(response.json()["access_token"])
        return self._token

    def _request(self, method: str, path: str, *, json: Any = None,
                 idempotency_key: str | None = None, ok: Sequence[int] = (200, 201)) -> Any:
        return self._call(method, path, json=json, idempotency_key=idempotency_key,
                          ok=ok).json()

    def _call(self, method: str, path: str, *, json: Any = None,
              idempotency_key: str | None = None,
              ok: Sequence[int] = (200, 201)) -> httpx.Response:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        for attempt in (0, 1):
            headers["Authorization"] = f"Bearer {self.token(refresh=attempt == 1)}"
            response = self._http.request(method, f"{self.base_url}{API_PREFIX}{path}",
                                          json=json, headers=headers)
            if response.status_code == 401 and attempt == 0 and self._username is not None:
                continue  # expired token: log in again once
            if response.status_code not in ok:
                raise PushError(response.status_code, _body(response))
            self.last_replayed = response.headers.get("Idempotent-Replayed") == "true"
            return response
        raise AssertionError("unreachable")

    def push_event(self, event: dict[str, Any], *, idempotency_key: str | None = None) \
            -> dict[str, Any]:
        """Push one real-time event; returns ``{"id": ..., "status": "pending"}``."""
        return dict(self._request("POST", "/rtEvents", json=event,
                                  idempotency_key=idempotency_key))

    def push_events(self, events: Sequence[dict[str, Any]], *,
                    idempotency_key: str | None = None) -> list[int]:
        """Push up to ``MAX_BATCH_EVENTS`` batch events in one request; returns their ids."""
        body = self._request("POST", "/batchEvents", json={"events": list(events)},
                             idempotency_key=idempotency_key)
        return [int(i) for i in body["ids"]]

    def push_all(self, events: Iterable[dict[str, Any]],
                 batch_size: int = MAX_BATCH_EVENTS) -> Iterator[list[int]]:
        """Push many batch events, ``batch_size`` per request; yields each batch's ids."""
        for chunk in chunks(events, batch_size):
            yield self.push_events(chunk)

    def bulk_action(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/actions``: a dry run (``dryRun``) or an action (``expectedCount``);
        a 409 (the count moved) is a :class:`PushError`."""
        return dict(self._request("POST", "/actions", json=body, ok=(200, 202)))

    def get_event(self, event_id: int) -> dict[str, Any]:
        return dict(self._request("GET", f"/events/{event_id}"))

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 503 is an answer here (alert threshold), not an error."""
        response = self._call("GET", "/health", ok=(200, 503))
        return response.status_code, dict(response.json())


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    if not 1 <= size <= MAX_BATCH_EVENTS:
        raise ValueError(f"batch size must be 1-{MAX_BATCH_EVENTS}; got {size}")
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def push_event(event: dict[str, Any], *, base_url: str = DEFAULT_BASE_URL,
               token: str | None = None, username: str = "admin", password: str | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
    """Push one real-time event and return the API's answer (``id``, ``status``)."""
    with PushClient(base_url, token=token, username=username, password=password) as client:
        return client.push_event(event, idempotency_key=idempotency_key)


def push_events(events: Sequence[dict[str, Any]], *, base_url: str = DEFAULT_BASE_URL,
                token: str | None = None, username: str = "admin",
                password: str | None = None) -> list[int]:
    """Push batch events (any number, in requests of ``MAX_BATCH_EVENTS``); returns ids."""
    with PushClient(base_url, token=token, username=username, password=password) as client:
        return [i for ids in client.push_all(events) for i in ids]
