"""Shared by the SOAP and Campaign REST app tests: fake ACC sessions and rights (Airflow's
auth manager is exercised through the real API server in
tests/integration/plugins/test_acc_compat_server.py
and on the authorization module in tests/integration/mc_airflow/test_authorization.py)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Header, HTTPException

from message_center.api import Authorization
from message_center.api.sessions import SessionRefused

# The session token and the login/password of Adobe's own examples are valid here, so the
# examples are posted literally.
ADOBE_SESSION_TOKEN = "___921f9b38-72ac-49ad-b481-ab32973efc50"
LOGINS = {("login", "password"): "tok-operator", ("viewer", "secret"): "tok-viewer"}
USERS = {ADOBE_SESSION_TOKEN: "operator", "tok-operator": "operator", "tok-viewer": "viewer"}


class FakeSessions:
    """ACC logins and session tokens from the tables above."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.logons = 0

    async def logon(self, request: Any, login: str, password: str) -> str:
        self.logons += 1
        token = LOGINS.get((login, password))
        if token is None:
            raise SessionRefused("Invalid login or password. Connection denied.")
        return token

    async def user(self, request: Any, token: str) -> Any:
        if token not in USERS or token in self.revoked:
            raise SessionRefused("Invalid session token")
        return USERS[token]

    async def logoff(self, request: Any, token: str) -> None:
        await self.user(request, token)
        self.revoked.add(token)


def bearer_user(authorization: str | None = Header(None)) -> Any:
    """A FastAPI auth dependency like the plugin's: Bearer token -> user, else 401."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or token not in USERS:
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    return USERS[token]


# --- rights: ``operator`` may push and read everything, ``viewer`` may only read ----------
DAGS = {"rt": "rtEventsProcessing", "batch": "batchEventsProcessing"}


def check_push(user: Any, kind: str) -> None:
    if user != "operator":
        raise HTTPException(403, f"Forbidden: pushing {kind} events needs the permission to "
                                 f"create DAG runs of {DAGS[kind]}; user {user!r} does not "
                                 "have it")


def _push_dependency(kind: str):
    def dependency(user: Any = Depends(bearer_user)) -> None:
        check_push(user, kind)
    return dependency


_PUSH = {kind: _push_dependency(kind) for kind in DAGS}


class _ReadEverything:
    def check(self, kind: str) -> None:
        pass


def _read(_user: Any = Depends(bearer_user)) -> _ReadEverything:
    return _ReadEverything()


RIGHTS = Authorization(push=_PUSH.__getitem__, read=_read, check_push=check_push)
