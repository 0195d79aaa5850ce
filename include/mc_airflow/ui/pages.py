"""Routes of the Message Center pages (HTML) and of the few JSON actions they use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mc_airflow import authz
from mc_airflow.instances import (
    CONTROL_CONN_ID,
    connection_url,
    default_sender,
    execution_instances,
)
from mc_airflow.ui import accounts as account_actions
from mc_airflow.ui import live
from mc_airflow.ui.app import Reader, json_body, same_origin
from message_center import lookup
from message_center.db import engine_for

Render = Callable[..., HTMLResponse]
Changer = Annotated[None, Depends(same_origin)]
AccountName = Annotated[str, Path(max_length=64)]
EventId = Annotated[int, Path(ge=0, le=2**64 - 1)]


def _control_engine() -> Any:
    url = connection_url(CONTROL_CONN_ID)
    return engine_for(url) if url else None


def _live_sources() -> list[lookup.LiveSource]:
    sources = []
    for instance in execution_instances():
        url = connection_url(instance.conn_id)
        if url is not None:
            sources.append(lookup.LiveSource(name=instance.name, label=instance.label,
                                             engine=engine_for(url), cell_id=instance.cell_id))
    return sources


def _capabilities(user: Any) -> authz.Capabilities:
    return authz.capabilities(user)


def _form_error(exc: account_actions.FormError) -> JSONResponse:
    return JSONResponse({"detail": "refused: nothing was changed", "errors": exc.errors},
                        status_code=exc.status)


def register(app: FastAPI, render: Render) -> None:
    @app.get("/overview", response_class=HTMLResponse)
    def overview(request: Request, user: Reader) -> HTMLResponse:
        """Per execution instance: queues, health, sent in the last hour, DAG states."""
        data = live.overview()
        return render(request, "overview.html", user, "overview", data=data)

    @app.get("/lookup", response_class=HTMLResponse)
    def lookup_page(request: Request, user: Reader,
                    by: Annotated[str | None, Query(max_length=32)] = None,
                    q: Annotated[str | None, Query(max_length=1000)] = None) -> HTMLResponse:
        """Find events by id, e-mail, mobile phone or external id."""
        context: dict[str, Any] = {"by": by or "auto", "q": q or "", "fields": lookup.LOOKUP_FIELDS,
                                   "error": None, "result": None, "query": None}
        status = 200
        if q is not None:
            try:
                query = lookup.parse_query(by, q)
            except lookup.LookupInputError as exc:
                context["error"] = {"field": exc.field, "message": str(exc)}
                status = 422
            else:
                context["query"] = query
                context["result"] = lookup.search(query, _live_sources(), _control_engine())
        return render(request, "lookup.html", user, "lookup", status_code=status, **context)

    def _detail(event_id: int) -> dict[str, Any]:
        detail = lookup.event_detail(event_id, _live_sources(), _control_engine(),
                                     default_sender=default_sender())
        if detail is None:
            raise HTTPException(404, f"event {event_id} was found neither on the execution "
                                     "instances nor in the control archive")
        return detail

    @app.get("/events/{event_id}", response_class=HTMLResponse)
    def event_page(request: Request, user: Reader,
                   event_id: EventId) -> HTMLResponse:
        """One event: status timeline, delivery log, template version, the message."""
        try:
            detail = _detail(event_id)
        except HTTPException as exc:
            return render(request, "event.html", user, "lookup", status_code=exc.status_code,
                          event=None, missing=exc.detail, event_id=event_id)
        return render(request, "event.html", user, "lookup", event=detail, missing=None,
                      event_id=event_id)

    @app.get("/events/{event_id}/message.eml")
    def event_eml(user: Reader, event_id: EventId) -> Response:
        """The e-mail as rebuilt for the event page (RFC 5322, opens in a mail client)."""
        message = _detail(event_id)["message"]
        if not message.get("eml"):
            raise HTTPException(404, message.get("reason") or "no e-mail for this event")
        return Response(message["eml"], media_type="message/rfc822", headers={
            "Content-Disposition": f'attachment; filename="event-{event_id}.eml"'})

    @app.get("/accounts", response_class=HTMLResponse)
    def accounts(request: Request, user: Reader) -> HTMLResponse:
        """The registry, ACC's two buttons, enable/disable, last run and lag."""
        data = account_actions.accounts_page()
        can = _capabilities(user)
        for row in data["rows"]:
            dag_id, conn_id = row["account"]["dagId"], row["account"]["connId"]
            row["canTest"] = authz.can_test_connection(user, conn_id)
            row["canChange"] = authz.can_change_account(user, dag_id)
        return render(request, "accounts.html", user, "accounts", data=data, can=can)

    # --- JSON actions ----------------------------------------------------------------
    @app.post("/api/accounts/test")
    async def test_new_account(request: Request, user: Reader, _csrf: Changer) -> Response:
        """*Test the connection* with the values of the new-account form."""
        if not await run_in_threadpool(authz.can_register_account, user):
            raise HTTPException(403, "testing an unregistered instance needs the right to "
                                     "create connections and edit DAGs")
        body = await json_body(request)
        try:
            return JSONResponse(await run_in_threadpool(account_actions.test_form, body))
        except account_actions.FormError as exc:
            return _form_error(exc)

    @app.post("/api/accounts", status_code=201)
    async def create_account(request: Request, user: Reader, _csrf: Changer) -> Response:
        """*Create the archiving workflow*: test, store the connection, register."""
        body = await json_body(request)
        name = body.get("name") if isinstance(body, dict) else None
        conn_id = (body.get("connId") or name) if isinstance(body, dict) else None
        dag_id = f"{authz.ARCHIVING_DAG_PREFIX}{name}" if isinstance(name, str) else None
        allowed = await run_in_threadpool(
            authz.can_register_account, user, conn_id if isinstance(conn_id, str) else None,
            dag_id)
        if not allowed:
            raise HTTPException(403, "registering an execution account needs the right to "
                                     "create connections and edit DAGs")
        try:
            result = await run_in_threadpool(account_actions.create_account, body)
        except account_actions.FormError as exc:
            return _form_error(exc)
        return JSONResponse(result, status_code=201)

    def _account(name: str) -> Any:
        try:
            return account_actions.get_account(name)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.post("/api/accounts/{name}/test")
    async def test_account(name: AccountName, user: Reader, _csrf: Changer) -> Response:
        """*Test the connection* of a registered account."""
        account = await run_in_threadpool(_account, name)
        if not await run_in_threadpool(authz.can_test_connection, user, account.conn_id):
            raise HTTPException(403, f"testing {name} needs access to connection "
                                     f"{account.conn_id}")
        return JSONResponse(await run_in_threadpool(account_actions.test_account, name))

    @app.post("/api/accounts/{name}/enabled")
    async def enable_account(request: Request, name: AccountName, user: Reader,
                             _csrf: Changer) -> Response:
        """Enable (``{"enabled": true}``) or disable an account's archiving."""
        account = await run_in_threadpool(_account, name)
        if not await run_in_threadpool(authz.can_change_account, user, account.dag_id):
            raise HTTPException(403, f"enabling or disabling {name} needs the right to edit "
                                     f"DAG {account.dag_id}")
        body = await json_body(request)
        enabled = body.get("enabled") if isinstance(body, dict) else None
        if not isinstance(enabled, bool):
            return JSONResponse({"detail": "refused: nothing was changed",
                                 "errors": {"enabled": "must be true or false"}},
                                status_code=422)
        return JSONResponse(await run_in_threadpool(account_actions.set_account_enabled,
                                                    name, enabled))

    @app.get("/api/accounts/{name}/dag")
    def account_dag(name: AccountName, user: Reader) -> Response:
        """The account's archiving DAG as the scheduler sees it (polled after creation)."""
        _account(name)
        return JSONResponse(account_actions.dag_status(name))
