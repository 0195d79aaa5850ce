"""The execution database behind every push protocol: how an app reaches it, and what a
client hears while it is down.

The JSON push API, the Campaign REST API and ACC's SOAP API each get the database URL as a
callable (the Airflow plugin reads the ``mc_execution`` connection, kept a minute), so a
changed connection is picked up without a restart; the engine behind a URL is pooled
(:func:`message_center.db.engine_for`). While the database does not answer, a JSON app
answers 503 with ``Retry-After``: the client retries, nothing was stored.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from message_center.db import engine_for

#: What a client hears while the execution database is down.
UNAVAILABLE = "the execution database is unavailable; retry later"
#: How long a client should wait before retrying (seconds, as the header's text).
RETRY_AFTER = {"Retry-After": "5"}


def execution_engine(database_url: Callable[[], str]) -> Callable[[], Engine]:
    """The pooled engine of the URL ``database_url()`` names at each call."""

    def engine() -> Engine:
        return engine_for(database_url())

    return engine


def answer_503_while_database_down(app: FastAPI) -> None:
    """A request that finds the database down (``OperationalError``) gets 503 +
    ``Retry-After`` instead of a 500."""

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, _exc: OperationalError) -> JSONResponse:
        return JSONResponse({"detail": UNAVAILABLE}, status_code=503, headers=RETRY_AFTER)
