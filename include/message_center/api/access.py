"""Who may push: the interface the Adobe-compatible APIs (SOAP, Campaign REST) authenticate
and authorise through, so they stay free of Airflow.

The Airflow plugin passes an implementation backed by Airflow's auth manager
(``mc_airflow.api_auth.AirflowAccess``): logins and tokens are Airflow's own users and JWTs,
and the rights are the auth manager's, never a separate user store. Tests pass a fake.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

Action = Literal["push", "read"]


class AccessRefused(Exception):
    """Bad login, password or token (``status`` 401), or not allowed (403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class Access(Protocol):
    async def logon(self, request: Any, login: str, password: str) -> str:
        """A session token (an Airflow JWT) for ``login``/``password``, or AccessRefused."""

    async def user(self, request: Any, token: str) -> Any:
        """The user a session token belongs to, or AccessRefused."""

    async def logoff(self, request: Any, token: str) -> None:
        """Revoke a session token (AccessRefused if it is not valid)."""

    def may(self, user: Any, action: Action, kind: str) -> bool:
        """Whether ``user`` may push events into / read events of the ``kind`` queue."""

    def explain(self, action: Action, kind: str) -> str:
        """The right that ``action`` on ``kind`` needs, for refusal messages."""
