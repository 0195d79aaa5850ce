"""The *Quarantine* page: the quarantined addresses of an execution instance, with filters,
*Release* per address and a form to quarantine one by hand; its *Suppressions* tab lists
the addresses unsubscribed from a category (one-click unsubscribe), with *Lift* each.

Reading needs what reading events needs; the two actions need the right to edit both
processing DAGs (:func:`mc_airflow.authorization.check_quarantine_change`), are JSON
``POST`` requests behind the pages' CSRF guard, and write to the chosen instance's
database (a decision reaches the other instances at the next synchronisation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mc_airflow import authorization
from mc_airflow.instances import connection_url, execution_instances
from mc_airflow.ui.dependencies import Reader, User, json_body, same_origin
from message_center import channel as channels
from message_center.db import engine_for
from message_center.delivery import quarantine as store
from message_center.delivery import suppression as suppressions

Render = Callable[..., HTMLResponse]
Changer = Annotated[None, Depends(same_origin)]
PAGE_SIZE = 100


def _instances() -> list[dict[str, Any]]:
    return [{"key": i.key, "label": i.label, "cell": i.cell_id}
            for i in execution_instances()]


def _engine(key: str | None) -> tuple[dict[str, Any], Any]:
    """The chosen instance (default: the first, this deployment) and its engine."""
    instances = _instances()
    chosen = next((i for i in instances if i["key"] == key), None) if key else instances[0]
    if chosen is None:
        raise HTTPException(404, f"no execution instance {key!r}")
    url = connection_url(chosen["key"])
    if url is None:
        raise HTTPException(503, f"Airflow connection {chosen['key']} is not defined")
    return chosen, engine_for(url)


def _fail(errors: dict[str, str]) -> JSONResponse:
    return JSONResponse({"detail": "refused: nothing was changed", "errors": errors},
                        status_code=422)


def _form(body: Any, *names: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HTTPException(400, "send the form as a JSON object")
    return {name: body.get(name) for name in names}


def register(app: FastAPI, render: Render) -> None:
    @app.get("/quarantine", response_class=HTMLResponse)
    def quarantine_page(
            request: Request, access: Reader,
            instance: Annotated[str | None, Query(max_length=200)] = None,
            channel: Annotated[str | None, Query(pattern="^(email|sms)?$")] = None,
            status: Annotated[str, Query(pattern="^(active|released|all)$")] = "active",
            address: Annotated[str | None, Query(max_length=320)] = None,
            offset: Annotated[int, Query(ge=0)] = 0,
            tab: Annotated[str, Query(pattern="^(quarantine|suppressions)$")] = "quarantine",
            category: Annotated[str | None, Query(max_length=64)] = None) -> HTMLResponse:
        """Quarantined addresses of one instance, newest decision first (or, on the
        *Suppressions* tab, its suppressions)."""
        chosen, engine = _engine(instance)
        problem = None
        rows: list[dict[str, Any]] = []
        total = 0
        if tab == "suppressions" and status == "released":
            status = "removed"
        try:
            with engine.connect() as conn:
                if tab == "suppressions":
                    rows, total = suppressions.list_suppressions(
                        conn, channel=channel or None, category=category or None,
                        status=status if status in ("active", "removed", "all") else "active",
                        address=address or None, limit=PAGE_SIZE, offset=offset)
                else:
                    rows, total = store.list_quarantine(
                        conn, channel=channel or None, status=status,
                        address=address or None, limit=PAGE_SIZE, offset=offset)
        except Exception as exc:  # an unreachable instance is shown, not a 500
            problem = f"{chosen['label']}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        can = authorization.capabilities(access.user)
        return render(request, "quarantine.html", access.user, "quarantine", can=can,
                      instances=_instances(), chosen=chosen, rows=rows, total=total, tab=tab,
                      filters={"channel": channel or "", "status": status,
                               "address": address or "", "category": category or ""},
                      offset=offset, page_size=PAGE_SIZE, problem=problem)

    @app.post("/api/quarantine")
    async def add_address(request: Request, user: User, _csrf: Changer) -> Response:
        """Quarantine an address by hand: ``{"instance", "channel", "address", "reason",
        "days"}`` (days: automatic release, optional)."""
        await run_in_threadpool(authorization.check_quarantine_change, user)
        form = _form(await json_body(request), "instance", "channel", "address", "reason",
                     "days")
        errors: dict[str, str] = {}
        if form["channel"] not in channels.names():
            errors["channel"] = f"choose {' or '.join(channels.names())}"
        days = form["days"]
        if days in (None, ""):
            days = None
        else:
            try:
                days = float(days)
                if not 0 < days <= 36500:
                    raise ValueError
            except (TypeError, ValueError):
                errors["days"] = "a number of days above 0, or empty for never"
        if not errors:
            try:
                store.normalize_address(form["channel"], str(form["address"] or ""))
            except ValueError as exc:
                errors["address"] = str(exc)
        if errors:
            return _fail(errors)

        def work() -> dict[str, Any]:
            _chosen, engine = _engine(form["instance"])
            with engine.begin() as conn:
                return store.add(conn, form["channel"], str(form["address"]),
                                 str(form["reason"] or ""), source="ui",
                                 decided_by=authorization.user_name(user),
                                 release_after_days=days)

        record = await run_in_threadpool(work)
        return JSONResponse({"message": f"{record['address']} is in quarantine",
                             "record": store.api_record(record)})

    @app.post("/api/quarantine/release")
    async def release_address(request: Request, user: User, _csrf: Changer) -> Response:
        """Release an address: ``{"instance", "channel", "address"}``."""
        await run_in_threadpool(authorization.check_quarantine_change, user)
        form = _form(await json_body(request), "instance", "channel", "address")
        if form["channel"] not in channels.names() or not form["address"]:
            return _fail({"address": "channel and address are required"})

        def work() -> dict[str, Any] | None:
            _chosen, engine = _engine(form["instance"])
            with engine.begin() as conn:
                return store.release(conn, form["channel"], str(form["address"]),
                                     source="ui", decided_by=authorization.user_name(user))

        try:
            record = await run_in_threadpool(work)
        except ValueError as exc:
            return _fail({"address": str(exc)})
        if record is None:
            raise HTTPException(404, f"{form['channel']} address {form['address']} is not in "
                                     "quarantine")
        return JSONResponse({"message": f"{record['address']} released: its next event is "
                                        "sent again", "record": store.api_record(record)})

    @app.post("/api/suppressions/remove")
    async def lift_suppression(request: Request, user: User, _csrf: Changer) -> Response:
        """Lift a suppression: ``{"instance", "id"}`` (the right to change the quarantine)."""
        await run_in_threadpool(authorization.check_quarantine_change, user)
        form = _form(await json_body(request), "instance", "id")
        try:
            suppression_id = int(form["id"])
        except (TypeError, ValueError):
            return _fail({"id": "the suppression's id is required"})

        def work() -> dict[str, Any] | None:
            _chosen, engine = _engine(form["instance"])
            with engine.begin() as conn:
                return suppressions.remove(conn, suppression_id,
                                           decided_by=authorization.user_name(user))

        record = await run_in_threadpool(work)
        if record is None:
            raise HTTPException(404, f"no suppression {suppression_id}")
        return JSONResponse({"message": f"{record['address']} receives {record['category']} "
                                        "messages again",
                             "record": suppressions.api_record(record)})
