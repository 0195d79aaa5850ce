"""Routes of the Message Center pages (HTML) and of the few JSON actions they use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mc_airflow import authorization
from mc_airflow.instances import (
    CONTROL_CONN_ID,
    connection_url,
    default_sender,
    execution_instances,
)
from mc_airflow.operations import audit_on_control
from mc_airflow.ui import accounts as account_actions
from mc_airflow.ui import live
from mc_airflow.ui.dependencies import Reader, User, current_user, json_body, same_origin
from message_center import lookup
from message_center.audit import ACCOUNT_CHANGE
from message_center.db import engine_for

Render = Callable[..., HTMLResponse]
Changer = Annotated[None, Depends(same_origin)]
AccountsAdmin = Annotated[Any, Depends(
    authorization.require_accounts_admin(user_dependency=current_user))]
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


def _form_error(exc: account_actions.FormError) -> JSONResponse:
    return JSONResponse({"detail": "refused: nothing was changed", "errors": exc.errors},
                        status_code=exc.status)


def register(app: FastAPI, render: Render) -> None:
    @app.get("/overview", response_class=HTMLResponse)
    def overview(request: Request, access: Reader) -> HTMLResponse:
        """Per execution instance: queues, health, sent in the last hour, DAG states."""
        data = live.overview()
        return render(request, "overview.html", access.user, "overview", data=data)

    @app.get("/lookup", response_class=HTMLResponse)
    def lookup_page(request: Request, access: Reader,
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
                context["result"] = lookup.search(query, _live_sources(), _control_engine(),
                                                  kinds=access.kinds)
        return render(request, "lookup.html", access.user, "lookup", status_code=status,
                      can=authorization.capabilities(access.user), **context)

    def _detail(access: authorization.EventReadAccess, event_id: int) -> dict[str, Any] | None:
        """The event, or None when it is nowhere; 403 when its queue may not be read."""
        detail = lookup.event_detail(event_id, _live_sources(), _control_engine(),
                                     default_sender=default_sender())
        if detail is not None:
            access.check(detail["kind"])
        return detail

    def _not_found(event_id: int) -> str:
        return (f"event {event_id} was found neither on the execution instances nor in the "
                "control archive")

    @app.get("/events/{event_id}", response_class=HTMLResponse)
    def event_page(request: Request, access: Reader,
                   event_id: EventId) -> HTMLResponse:
        """One event: status timeline, delivery log, template version, the message."""
        detail = _detail(access, event_id)
        if detail is None:
            return render(request, "event.html", access.user, "lookup", status_code=404,
                          event=None, missing=_not_found(event_id), event_id=event_id)
        return render(request, "event.html", access.user, "lookup", event=detail, missing=None,
                      event_id=event_id)

    @app.get("/events/{event_id}/message.eml")
    def event_eml(access: Reader, event_id: EventId) -> Response:
        """The e-mail as rebuilt for the event page (RFC 5322, opens in a mail client)."""
        detail = _detail(access, event_id)
        if detail is None:
            raise HTTPException(404, _not_found(event_id))
        message = detail["message"]
        if not message.get("eml"):
            raise HTTPException(404, message.get("reason") or "no e-mail for this event")
        return Response(message["eml"], media_type="message/rfc822", headers={
            "Content-Disposition": f'attachment; filename="event-{event_id}.eml"'})

    @app.get("/accounts", response_class=HTMLResponse)
    def accounts(request: Request, access: Reader) -> HTMLResponse:
        """The registry, ACC's two buttons, enable/disable, last run and lag; only the
        buttons the user may use (the actions check again)."""
        user = access.user
        data = account_actions.accounts_page()
        can = authorization.capabilities(user)
        for row in data["rows"]:  # per account: auth managers may decide per DAG / connection
            name, conn_id = row["account"]["name"], row["account"]["connId"]
            row["canTest"] = authorization.is_allowed(
                user, authorization.connection_test_permission(conn_id))
            row["canChange"] = authorization.is_allowed(
                user, authorization.change_account_permission(name))
        row_actions = any(row["canTest"] or row["canChange"] for row in data["rows"])
        return render(request, "accounts.html", user, "accounts", data=data, can=can,
                      row_actions=row_actions)

    # --- JSON actions ----------------------------------------------------------------
    @app.post("/api/accounts/test")
    async def test_new_account(request: Request, _user: AccountsAdmin,
                               _csrf: Changer) -> Response:
        """*Test the connection* with the values of the new-account form (a step of
        registering an account: the same rights)."""
        body = await json_body(request)
        try:
            return JSONResponse(await run_in_threadpool(account_actions.test_form, body))
        except account_actions.FormError as exc:
            return _form_error(exc)

    @app.post("/api/accounts", status_code=201)
    async def create_account(request: Request, user: AccountsAdmin,
                             _csrf: Changer) -> Response:
        """*Create the archiving workflow*: test, store the connection, register."""
        body = await json_body(request)
        name = body.get("name") if isinstance(body, dict) else None
        conn_id = (body.get("connId") or name) if isinstance(body, dict) else None
        # Again for this account's DAG and connection (auth managers may decide per id).
        await run_in_threadpool(
            authorization.check_register_account, user,
            name if isinstance(name, str) else None,
            conn_id if isinstance(conn_id, str) else None)
        try:
            result = await run_in_threadpool(account_actions.create_account, body)
        except account_actions.FormError as exc:
            return _form_error(exc)
        await run_in_threadpool(audit_on_control, authorization.user_name(user),
                                ACCOUNT_CHANGE, str(name), {
                                    "change": "registered", "connId": conn_id})
        return JSONResponse(result, status_code=201)

    def _account(name: str) -> Any:
        try:
            return account_actions.get_account(name)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.post("/api/accounts/{name}/test")
    async def test_account(name: AccountName, user: User, _csrf: Changer) -> Response:
        """*Test the connection* of a registered account (Airflow's own *Test connection*
        right on its connection)."""
        account = await run_in_threadpool(_account, name)
        await run_in_threadpool(authorization.check_test_connection, user, account.conn_id)
        return JSONResponse(await run_in_threadpool(account_actions.test_account, name))

    @app.post("/api/accounts/{name}/enabled")
    async def enable_account(request: Request, name: AccountName, user: User,
                             _csrf: Changer) -> Response:
        """Enable (``{"enabled": true}``) or disable an account's archiving (editing its
        ``mcSynch_<name>`` DAG)."""
        await run_in_threadpool(authorization.check_change_account, user, name)
        await run_in_threadpool(_account, name)
        body = await json_body(request)
        enabled = body.get("enabled") if isinstance(body, dict) else None
        if not isinstance(enabled, bool):
            return JSONResponse({"detail": "refused: nothing was changed",
                                 "errors": {"enabled": "must be true or false"}},
                                status_code=422)
        result = await run_in_threadpool(account_actions.set_account_enabled, name, enabled)
        await run_in_threadpool(audit_on_control, authorization.user_name(user),
                                ACCOUNT_CHANGE, name,
                                {"change": "enabled" if enabled else "disabled"})
        return JSONResponse(result)

    @app.get("/api/accounts/{name}/dag")
    def account_dag(name: AccountName, _access: Reader) -> Response:
        """The account's archiving DAG as the scheduler sees it (polled after creation)."""
        _account(name)
        return JSONResponse(account_actions.dag_status(name))
