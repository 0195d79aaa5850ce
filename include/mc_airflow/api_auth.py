"""Airflow's users and rights for the push APIs: one place that says who may push.

- ``may_push(user, kind)`` / ``may_read(user, kind)``: the permission check. Pushing into a
  queue needs the right to create runs of the DAG that processes it (``rtEventsProcessing``
  / ``batchEventsProcessing``), reading events the right to read those runs, as the auth
  manager (simple, FAB, ...) decides. Every push protocol goes through these two functions.
- ``AirflowAccess``: ``message_center.api.access.Access`` for ACC's SOAP clients. A
  ``Logon`` (or a ``login/password`` session token) is turned into an Airflow JWT by
  Airflow's own ``POST /auth/token``, called in-process on the API server (whatever auth
  manager is configured), and a session token is verified like any Airflow API token.

Imported by the plugin in every Airflow process: Airflow modules are imported lazily.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any

from message_center.api.access import AccessRefused, Action

QUEUE_DAGS = {"rt": "rtEventsProcessing", "batch": "batchEventsProcessing"}
"""The DAG whose run rights govern pushing into (reading) each queue."""

LOGON_CACHE_SECONDS = 60.0
"""A ``login/password`` sent with every SOAP call reuses its JWT this long (the password is
not re-checked within that time; the JWT is verified on every call)."""


def _authorized(user: Any, method: str, kind: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    return bool(get_auth_manager().is_authorized_dag(
        method=method, access_entity=DagAccessEntity.RUN,  # type: ignore[arg-type]
        details=DagDetails(id=QUEUE_DAGS[kind]), user=user))


def may_push(user: Any, kind: str) -> bool:
    """Whether ``user`` may push events into the ``kind`` queue ("rt" or "batch")."""
    return _authorized(user, "POST", kind)


def may_read(user: Any, kind: str) -> bool:
    """Whether ``user`` may read the events of the ``kind`` queue."""
    return _authorized(user, "GET", kind)


def explain(action: Action, kind: str) -> str:
    verb = "create" if action == "push" else "read"
    return f"it needs the right to {verb} DAG runs of {QUEUE_DAGS[kind]}"


class AirflowAccess:
    """ACC-style logins and session tokens backed by Airflow's auth manager."""

    def __init__(self, cache_seconds: float = LOGON_CACHE_SECONDS) -> None:
        self.cache_seconds = cache_seconds
        self._secret = os.urandom(32)
        self._tokens: dict[bytes, tuple[str, float]] = {}

    def may(self, user: Any, action: Action, kind: str) -> bool:
        return may_push(user, kind) if action == "push" else may_read(user, kind)

    def explain(self, action: Action, kind: str) -> str:
        return explain(action, kind)

    async def logon(self, request: Any, login: str, password: str) -> str:
        key = hmac.new(self._secret, f"{login}\0{password}".encode(), hashlib.sha256).digest()
        cached = self._tokens.get(key)
        if cached is not None and time.monotonic() - cached[1] < self.cache_seconds:
            return cached[0]
        token = await self._token(request, login, password)
        now = time.monotonic()
        if len(self._tokens) > 1000:  # bounded: drop the expired entries
            self._tokens = {k: v for k, v in self._tokens.items()
                            if now - v[1] < self.cache_seconds}
        self._tokens[key] = (token, now)
        return token

    @staticmethod
    async def _token(request: Any, login: str, password: str) -> str:
        """Airflow's ``POST /auth/token``, through the API server's own router (no network),
        so the configured auth manager checks the password exactly as for any API client."""
        import httpx

        router = request.scope.get("router")
        if router is None:
            raise AccessRefused("Logon is only available on the Airflow API server", 503)
        root_path = request.scope.get("root_path", "")
        transport = httpx.ASGITransport(app=router, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://airflow") as client:
            answer = await client.post(f"{root_path}/auth/token",
                                       json={"username": login, "password": password})
        if answer.status_code not in (200, 201):
            raise AccessRefused("Invalid login or password. Connection denied.")
        return str(answer.json()["access_token"])

    async def user(self, request: Any, token: str) -> Any:
        from airflow.api_fastapi.core_api.security import resolve_user_from_token
        from fastapi import HTTPException

        try:
            return await resolve_user_from_token(token)
        except HTTPException as exc:
            raise AccessRefused(f"Invalid session token: {exc.detail}") from None

    async def logoff(self, request: Any, token: str) -> None:
        from airflow.api_fastapi.app import get_auth_manager
        from starlette.concurrency import run_in_threadpool

        await self.user(request, token)  # only a valid token can be revoked
        await run_in_threadpool(get_auth_manager().revoke_token, token)
        self._tokens = {k: v for k, v in self._tokens.items() if v[0] != token}
