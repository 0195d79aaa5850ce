"""Shared by the SOAP and Campaign REST app tests: a fake ``Access`` (Airflow's auth manager
is exercised through the real API server in tests/plugins/test_acc_compat_server.py)."""

from __future__ import annotations

from typing import Any

from fastapi import Header, HTTPException

from message_center.api.access import AccessRefused

# The session token and the login/password of Adobe's own examples are valid here, so the
# examples are posted literally.
ADOBE_SESSION_TOKEN = "___921f9b38-72ac-49ad-b481-ab32973efc50"
LOGINS = {("login", "password"): "tok-operator", ("viewer", "secret"): "tok-viewer"}
USERS = {ADOBE_SESSION_TOKEN: "operator", "tok-operator": "operator", "tok-viewer": "viewer"}


class FakeAccess:
    """``operator`` may push and read everything; ``viewer`` may only read."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.logons = 0

    async def logon(self, request: Any, login: str, password: str) -> str:
        self.logons += 1
        token = LOGINS.get((login, password))
        if token is None:
            raise AccessRefused("Invalid login or password. Connection denied.")
        return token

    async def user(self, request: Any, token: str) -> Any:
        if token not in USERS or token in self.revoked:
            raise AccessRefused("Invalid session token")
        return USERS[token]

    async def logoff(self, request: Any, token: str) -> None:
        await self.user(request, token)
        self.revoked.add(token)

    def may(self, user: Any, action: str, kind: str) -> bool:
        return user == "operator" or action == "read"

    def explain(self, action: str, kind: str) -> str:
        return f"it needs the right to create DAG runs of the {kind} DAG"


def bearer_user(authorization: str | None = Header(None)) -> Any:
    """A FastAPI auth dependency like the plugin's: Bearer token -> user, else 401."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or token not in USERS:
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    return USERS[token]
