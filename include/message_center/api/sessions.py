"""Who is calling: ACC's session logins (``xtk:session#Logon``, ``login/password`` in
``<sessiontoken>``), the interface ACC's SOAP API authenticates through so it stays free of
Airflow. What a caller may do is asked separately, through ``message_center.api.Authorization``
like every push protocol.

The Airflow plugin passes an implementation backed by Airflow
(``mc_airflow.authorization.AirflowSessions``): logins and tokens are Airflow's own users and
JWTs, never a separate user store. Tests pass a fake.
"""

from __future__ import annotations

from typing import Any, Protocol


class SessionRefused(Exception):
    """Bad login, password or session token (the message says which)."""


class Sessions(Protocol):
    async def logon(self, request: Any, login: str, password: str) -> str:
        """A session token (an Airflow JWT) for ``login``/``password``, or SessionRefused."""

    async def user(self, request: Any, token: str) -> Any:
        """The user a session token belongs to, or SessionRefused."""

    async def logoff(self, request: Any, token: str) -> None:
        """Revoke a session token (SessionRefused if it is not valid)."""
