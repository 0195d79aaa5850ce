"""The *Bulk actions* page (a filter form -> dry run -> confirm with the count) and the
*Audit* page (who did what by hand, with its CSV export).

Both need the right to run bulk actions (edit both processing DAGs:
:func:`mc_airflow.authorization.require_bulk_actions`). The form's JSON ``POST`` goes
through the same domain call as ``POST /message-center/v1/actions``
(:func:`message_center.operations.actions.submit`), behind the pages' CSRF guard; the
action itself is an ``mcBulkAction`` run. The form is prefilled from the address
(``?action=retry&ids=1,2&status=failed``): the lookup results and the report
drill-downs (:func:`mc_airflow.ui.reports.bulk_actions`) link here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mc_airflow import authorization
from mc_airflow.defaults import CONTROL_CONN_ID, EXECUTION_CONN_ID
from mc_airflow.instances import connection_url
from mc_airflow.operations import copy_audit, trigger_bulk_action
from mc_airflow.ui.dependencies import current_user, json_body, same_origin
from message_center import audit
from message_center import channel as channels
from message_center.db import engine_for
from message_center.operations import actions
from message_center.operations.filters import FIELDS, OperationInputError
from message_center.statuses import EVENT_KINDS, FAILURE_CLASSES, EventStatus

log = logging.getLogger(__name__)

Render = Callable[..., HTMLResponse]
Changer = Annotated[None, Depends(same_origin)]
Operator = Annotated[Any, Depends(authorization.require_bulk_actions(
    user_dependency=current_user))]
AUDIT_PAGE_ROWS = 200
CSV_MAX_ROWS = 100_000


def _prefill(request: Request) -> dict[str, str]:
    """The form's values from the address (only the known fields)."""
    known = {*FIELDS, "action"}
    return {k: v for k, v in request.query_params.items() if k in known}


def _audit_query(since_days: int | None, action: str | None, actor: str | None,
                 limit: int, offset: int = 0) -> audit.AuditQuery:
    since = datetime.now(UTC) - timedelta(days=since_days) if since_days else None
    return audit.AuditQuery(since=since, action=action or None, actor=actor or None,
                            limit=limit, offset=offset)


def _audit_rows(query: audit.AuditQuery) -> tuple[list[dict[str, Any]], int, str | None]:
    url = connection_url(CONTROL_CONN_ID)
    if url is None:
        return [], 0, (f"Airflow connection {CONTROL_CONN_ID} is not defined: the audit "
                       "trail is kept on the control instance")
    try:  # this deployment's own execution rows first, without waiting for the archiving
        copy_audit()
    except Exception:  # the control rows are still worth showing
        log.warning("could not copy this execution instance's audit rows", exc_info=True)
    with engine_for(url).connect() as conn:
        rows, total = audit.entries(conn, query)
    return rows, total, None


def register(app: FastAPI, render: Render) -> None:
    @app.get("/bulk-actions", response_class=HTMLResponse)
    def bulk_actions_page(request: Request, user: Operator) -> HTMLResponse:
        """The filter form; its dry run and its action are JSON POSTs below."""
        return render(request, "bulk_actions.html", user, "bulk-actions",
                      can=authorization.capabilities(user), prefill=_prefill(request),
                      actions=actions.ACTIONS, kinds=EVENT_KINDS,
                      statuses=[(s.value, s.label) for s in EventStatus],
                      classes=FAILURE_CLASSES, channel_names=channels.names())

    @app.post("/api/actions")
    async def submit_action(request: Request, user: Operator, _csrf: Changer) -> Response:
        """``{"action", "filter", "dryRun", "expectedCount", ...}`` as the API takes it."""
        body = await json_body(request)
        if not isinstance(body, dict):
            raise HTTPException(400, "send the form as a JSON object")
        url = connection_url(EXECUTION_CONN_ID)
        if url is None:
            raise HTTPException(503, f"Airflow connection {EXECUTION_CONN_ID} is not defined")
        name = authorization.user_name(user)
        try:
            answer = await run_in_threadpool(actions.submit, engine_for(url), body, name,
                                             trigger_bulk_action)
        except OperationInputError as exc:
            return JSONResponse({"detail": "refused: nothing was changed",
                                 "errors": {e["field"]: e["msg"] for e in exc.errors}},
                                status_code=422)
        except actions.GuardRefused as exc:
            return JSONResponse({"detail": str(exc), "count": exc.count}, status_code=409)
        return JSONResponse(answer, status_code=202 if "runId" in answer else 200)

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, user: Operator,
                   days: Annotated[int | None, Query(ge=1, le=36500)] = 30,
                   action: Annotated[str | None, Query(max_length=100)] = None,
                   actor: Annotated[str | None, Query(max_length=255)] = None,
                   offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> HTMLResponse:
        """The newest audit rows first, filtered by period, action and actor."""
        problem = None
        rows: list[dict[str, Any]] = []
        total = 0
        try:
            rows, total, problem = _audit_rows(_audit_query(days, action, actor,
                                                            AUDIT_PAGE_ROWS, offset))
        except Exception as exc:  # an unreachable database is shown, not a 500
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return render(request, "audit.html", user, "audit", rows=rows, total=total,
                      problem=problem, days=days, action=action or "", actor=actor or "",
                      offset=offset, page_rows=AUDIT_PAGE_ROWS,
                      query=str(request.url.query))

    @app.get("/audit.csv")
    def audit_csv(user: Operator,
                  days: Annotated[int | None, Query(ge=1, le=36500)] = 30,
                  action: Annotated[str | None, Query(max_length=100)] = None,
                  actor: Annotated[str | None, Query(max_length=255)] = None) -> Response:
        """The same rows as CSV (up to 100,000), ``details`` as JSON."""
        rows, _total, problem = _audit_rows(_audit_query(days, action, actor, CSV_MAX_ROWS))
        if problem:
            raise HTTPException(503, problem)
        return Response(audit.to_csv(rows), media_type="text/csv", headers={
            "Content-Disposition": 'attachment; filename="message-center-audit.csv"'})
