"""The *Webhooks* page: every delivery-status webhook endpoint with its figures (messages
by status, success rate of the last 24 h, the reason it was disabled), its last attempts
(response code and time), and the actions: enable / disable, send a test, replay.

Reading needs what reading events needs; the actions need the right to manage webhooks
(edit both processing DAGs: :func:`mc_airflow.authorization.require_webhooks_manage`),
are JSON ``POST`` requests behind the pages' CSRF guard. Subscriptions live on the
control database (``mc_control``); figures, tests and replays on this deployment's
execution database (``mc_execution``). Creating a subscription is the API's
(``POST /message-center/v1/webhooks``: its secret is shown once, to the client).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from mc_airflow import authorization
from mc_airflow.defaults import CONTROL_CONN_ID, EXECUTION_CONN_ID
from mc_airflow.instances import connection_url
from mc_airflow.ui.dependencies import Reader, User, json_body, same_origin
from message_center.db import engine_for
from message_center.net_guard import HostList
from message_center.webhooks import store
from message_center.webhooks.model import message_id, parse_subscription

Render = Callable[..., HTMLResponse]
Changer = Annotated[None, Depends(same_origin)]


def _engine(conn_id: str) -> Engine | None:
    url = connection_url(conn_id)
    return engine_for(url) if url else None


def _check_manage(user: Any) -> None:
    authorization.check(user, authorization.MANAGING_WEBHOOKS,
                        *authorization.quarantine_change_permissions())


def _endpoints() -> tuple[list[dict[str, Any]], str | None]:
    control = _engine(CONTROL_CONN_ID)
    if control is None:
        return [], f"Airflow connection {CONTROL_CONN_ID} is not defined: webhooks are " \
                   "managed on the control instance"
    with control.connect() as conn:
        records = [store.api_record(r) for r in store.list_subscriptions(conn)]
    execution = _engine(EXECUTION_CONN_ID)
    if execution is not None:
        with execution.connect() as conn:
            stats = store.endpoint_stats(conn)
            for record in records:
                record["stats"] = stats.get(record["id"], {"messages": {}})
                record["lastAttempts"] = store.last_attempts(conn, record["id"], limit=5)
    return records, None


def _copy_down() -> None:
    control, execution = _engine(CONTROL_CONN_ID), _engine(EXECUTION_CONN_ID)
    if control is None or execution is None or control.url == execution.url:
        return
    with control.connect() as source, execution.begin() as target:
        store.copy_subscriptions(source, target)


def _form_id(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise HTTPException(400, "send {\"id\": ...} as a JSON object")
    return str(body["id"])


def register(app: FastAPI, render: Render) -> None:
    @app.get("/webhooks", response_class=HTMLResponse)
    def webhooks_page(request: Request, access: Reader) -> HTMLResponse:
        """Every endpoint, its figures and last attempts."""
        problem = None
        endpoints: list[dict[str, Any]] = []
        try:
            endpoints, problem = _endpoints()
        except Exception as exc:  # an unreachable database is shown, not a 500
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        can = authorization.capabilities(access.user)
        return render(request, "webhooks.html", access.user, "webhooks", can=can,
                      endpoints=endpoints, problem=problem)

    @app.post("/api/webhooks/enabled")
    async def set_enabled(request: Request, user: User, _csrf: Changer) -> Response:
        """Enable or disable an endpoint: ``{"id", "enabled"}``."""
        await run_in_threadpool(_check_manage, user)
        body = await json_body(request)
        subscription_id = _form_id(body)
        if not isinstance(body.get("enabled"), bool):
            return JSONResponse({"detail": "refused", "errors": {
                "enabled": "true or false"}}, status_code=422)
        change = parse_subscription({"enabled": body["enabled"]},
                                    hosts=HostList("MC_WEBHOOK_ALLOWED_HOSTS"), creating=False)

        def work() -> dict[str, Any] | None:
            control = _engine(CONTROL_CONN_ID)
            if control is None:
                raise HTTPException(503, f"Airflow connection {CONTROL_CONN_ID} is not defined")
            with control.begin() as conn:
                row = store.update(conn, subscription_id, change,
                                   by=authorization.user_name(user))
            _copy_down()
            return row

        row = await run_in_threadpool(work)
        if row is None:
            raise HTTPException(404, f"webhook {subscription_id} not found")
        state = "enabled" if row["enabled"] else "disabled"
        return JSONResponse({"message": f"{row['url']} {state}",
                             "record": store.api_record(row)})

    @app.post("/api/webhooks/test")
    async def send_test(request: Request, user: User, _csrf: Changer) -> Response:
        """Send a ``webhook.test`` message: ``{"id"}``."""
        await run_in_threadpool(_check_manage, user)
        subscription_id = _form_id(await json_body(request))

        def work() -> int | None:
            _copy_down()
            execution = _engine(EXECUTION_CONN_ID)
            if execution is None:
                raise HTTPException(503, f"Airflow connection {EXECUTION_CONN_ID} is not "
                                         "defined")
            with execution.begin() as conn:
                return store.enqueue_test(conn, subscription_id)

        sent = await run_in_threadpool(work)
        if sent is None:
            raise HTTPException(404, f"webhook {subscription_id} not found here")
        return JSONResponse({"message": f"test message {message_id(sent)} queued"})

    @app.post("/api/webhooks/replay")
    async def replay(request: Request, user: User, _csrf: Changer) -> Response:
        """Send again what changed in the last ``hours``: ``{"id", "hours"}``."""
        await run_in_threadpool(_check_manage, user)
        body = await json_body(request)
        subscription_id = _form_id(body)
        try:
            hours = float(body.get("hours"))
            if not 0 < hours <= 24 * 90:
                raise ValueError
        except (TypeError, ValueError):
            return JSONResponse({"detail": "refused: nothing was changed", "errors": {
                "hours": "a number of hours above 0 (at most 90 days)"}}, status_code=422)

        def work() -> int:
            execution = _engine(EXECUTION_CONN_ID)
            if execution is None:
                raise HTTPException(503, f"Airflow connection {EXECUTION_CONN_ID} is not "
                                         "defined")
            with execution.begin() as conn:
                return store.replay(conn, subscription_id,
                                    since=datetime.now(UTC) - timedelta(hours=hours))

        count = await run_in_threadpool(work)
        return JSONResponse({"message": f"{count} message(s) queued again (same webhook-ids)",
                             "count": count})
