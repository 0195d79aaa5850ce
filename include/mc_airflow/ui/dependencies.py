"""What every Message Center page module asks of a request: who the user is, what they
may read, and whether a change is a genuine one from these pages.

Its own module so that :mod:`mc_airflow.ui.app` (which assembles the pages) imports the
page modules, and they import this, never ``app`` (an import-linter contract).
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mc_airflow import authorization
from mc_airflow.authorization import EventReadAccess

CSRF_HEADER = "X-Requested-With"

_bearer = HTTPBearer(auto_error=False)


class NotAuthenticated(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


async def current_user(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Any:
    """Airflow's user for this request (session cookie or Bearer token), else NotAuthenticated
    (a page redirects to the login, a JSON endpoint answers 401). The ``user_dependency`` of
    every :mod:`mc_airflow.authorization` dependency the pages use."""
    from airflow.api_fastapi.core_api.security import get_user

    try:
        return await get_user(request, None, bearer)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            raise NotAuthenticated(str(exc.detail)) from None
        raise


User = Annotated[Any, Depends(current_user)]


Reader = Annotated[EventReadAccess,
                   Depends(authorization.require_read(user_dependency=current_user))]
"""The user and the queues whose events and reports they may read (403 when none)."""


def same_origin(request: Request) -> None:
    """CSRF guard for every state-changing request."""
    if request.headers.get(CSRF_HEADER, "").lower() != "xmlhttprequest":
        raise HTTPException(403, f"refused: a change needs the {CSRF_HEADER}: XMLHttpRequest "
                                 "header (sent by the Message Center pages)")
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            raise HTTPException(403, f"refused: request from another origin ({origin})")
    if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
        raise HTTPException(403, "refused: cross-site request")


async def json_body(request: Request) -> Any:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise HTTPException(415, "send the form as application/json")
    raw = await request.body()
    if len(raw) > 64 * 1024:
        raise HTTPException(413, "the form is larger than 64 KiB")
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise HTTPException(400, "the body is not valid JSON") from None
