"""ACC's Message Center reports as pages: service level, processing time, event history
(with its CSV) and the events behind one error cause.

The figures come from :mod:`message_center.reporting` (hourly statistics on the control
instance); this module only turns query strings into filters, picks the database and
renders. Filters live in the query string, so every report view is a link.

A report covers the queues the user may read (read access to the runs of
``rtEventsProcessing`` / ``batchEventsProcessing``): "all" narrows to the readable one, a
queue they may not read is a 403.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import Engine, text

from mc_airflow import authorization
from mc_airflow.authorization import QUEUE_DAGS, EventReadAccess
from mc_airflow.instances import CONTROL_CONN_ID, connection_url, execution_instances
from mc_airflow.ui.dependencies import Reader
from message_center.db import engine_for
from message_center.reporting import (
    ERROR_CAUSE_LABELS,
    ERROR_CAUSES,
    ReportFilter,
    ReportFilterError,
    ThresholdError,
    Thresholds,
    error_events,
    event_history,
    history_csv,
    load_thresholds,
    parse_filter,
    processing_time,
    service_level,
    tracking_csv,
    tracking_report,
)
from message_center.state import RETRYABLE_STATUSES
from message_center.statuses import FAILURE_CLASS_LABELS

Render = Callable[..., HTMLResponse]
PRESETS = (("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("30d", "Last 30 days"),
           ("custom", "Chosen range"))
FILTER_KEYS = ("period", "start", "end", "cells", "channel", "kind", "granularity")
STATEMENT_TIMEOUT_MS = 20000


class ControlMissing(RuntimeError):
    pass


def _control() -> Engine:
    url = connection_url(CONTROL_CONN_ID)
    if url is None:
        raise ControlMissing(f"the Airflow connection {CONTROL_CONN_ID} (control database) is "
                             "not defined on this deployment: the reports read its archive")
    return engine_for(url)


def _read(run: Callable[[Any], Any]) -> Any:
    with _control().connect() as conn:
        conn.execute(text("SET TRANSACTION READ ONLY"))
        conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                     {"ms": str(STATEMENT_TIMEOUT_MS)})
        try:
            return run(conn)
        finally:
            conn.rollback()


def _form(params: Mapping[str, str]) -> dict[str, str]:
    """The filter form's values (what the page shows back)."""
    values = {key: str(params.get(key, "") or "").strip() for key in FILTER_KEYS}
    if not values["period"]:
        values["period"] = "custom" if values["start"] else "24h"
    return values


def _filter(values: dict[str, str], access: EventReadAccess) -> ReportFilter:
    params = dict(values)
    if params["period"] == "custom":
        if not params["start"]:
            raise ReportFilterError("start", "give the start of the range (or pick a period)")
        params.pop("period")
    else:
        params.pop("start")
        params.pop("end")
    return _readable(parse_filter(params), access)


def _readable(report_filter: ReportFilter, access: EventReadAccess) -> ReportFilter:
    """The filter on the queues ``access`` may read (403 for a queue it may not)."""
    if report_filter.kind is not None:
        access.check(report_filter.kind)
        return report_filter
    if access.kinds >= set(QUEUE_DAGS):
        return report_filter
    (kind,) = access.kinds  # require_read: at least one
    return dataclasses.replace(report_filter, kind=kind)


def _instances() -> list[dict[str, Any]]:
    return [{"cell": i.cell_id, "label": i.label} for i in execution_instances()
            if i.cell_id is not None]


def _thresholds(app: FastAPI) -> tuple[Thresholds, str | None]:
    """``load_thresholds()`` once; a bad variable is shown on the pages, not a crash."""
    if not hasattr(app.state, "thresholds"):
        try:
            app.state.thresholds, app.state.threshold_error = load_thresholds(), None
        except ThresholdError as exc:
            app.state.thresholds, app.state.threshold_error = Thresholds(), (
                f"{exc}: the default thresholds are used until it is fixed")
    return app.state.thresholds, app.state.threshold_error


def _query(values: dict[str, str], **extra: Any) -> str:
    merged = {k: v for k, v in values.items() if v}
    merged.update({k: v for k, v in extra.items() if v is not None})
    if merged.get("period") and merged["period"] != "custom":
        merged.pop("start", None)
        merged.pop("end", None)
    return urlencode(merged)


def bulk_actions(report_filter: ReportFilter, cause: str, ids: list[str],
                 failure_class: str | None = None) -> dict[str, Any]:
    """The drill-down's Bulk actions links: the actions that can change its events (a
    retry takes failed or expired ones, a replay any final one; cancel takes pending
    ones only, so none here) and two prefills of the form: the drill-down's filter
    (its period becomes the creation period, the one the form selects on) and the
    ids listed on this page."""
    prefill: dict[str, Any] = {"status": cause, "from": _iso(report_filter.start),
                               "to": _iso(report_filter.end)}
    if report_filter.kind is not None:
        prefill["queue"] = report_filter.kind
    if report_filter.channel is not None:
        prefill["channel"] = report_filter.channel
    if report_filter.cells is not None and len(report_filter.cells) == 1:
        prefill["instance"] = report_filter.cells[0]
    if failure_class is not None:  # "unknown": the form still asks for confirmUnknown
        prefill["failureClass"] = failure_class
    retryable = cause in {str(s) for s in RETRYABLE_STATUSES}
    return {"actions": [a for a in ("retry", "replay") if a == "replay" or retryable],
            "filter": urlencode(prefill), "ids": urlencode({"ids": ",".join(ids)}),
            "count": len(ids)}


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def register(app: FastAPI, render: Render) -> None:
    def report_page(request: Request, access: EventReadAccess, page: str, template: str,
                    build: Callable[[Any, ReportFilter, Thresholds], Any] | None,
                    **context: Any) -> HTMLResponse:
        values = _form(request.query_params)
        thresholds, threshold_error = _thresholds(app)
        error = report = None
        status = 200
        try:
            report_filter = _filter(values, access)
            if build is not None:
                report = _read(lambda conn: build(conn, report_filter, thresholds))
        except ReportFilterError as exc:
            error, status = {"field": exc.field, "message": str(exc)}, 422
        except ControlMissing as exc:
            error, status = {"field": None, "message": str(exc)}, 503
        return render(request, template, access.user, page, status_code=status, values=values,
                      error=error, report=report, presets=PRESETS, instances=_instances(),
                      query=_query(values), threshold_error=threshold_error,
                      thresholds=thresholds.to_dict(), cause_labels=ERROR_CAUSE_LABELS,
                      **context)

    @app.get("/service-level", response_class=HTMLResponse)
    def service_level_page(request: Request, access: Reader) -> HTMLResponse:
        """ACC's "Message Center service level": incoming, sent, errors by cause."""
        return report_page(request, access, "service-level", "service_level.html",
                           lambda conn, f, t: service_level(conn, f, t).to_dict())

    @app.get("/processing-time", response_class=HTMLResponse)
    def processing_time_page(request: Request, access: Reader) -> HTMLResponse:
        """ACC's "Message Center processing time": queue, sending and total times."""
        return report_page(request, access, "processing-time", "processing_time.html",
                           lambda conn, f, t: processing_time(conn, f, t).to_dict())

    @app.get("/history", response_class=HTMLResponse)
    def history_page(request: Request, access: Reader) -> HTMLResponse:
        """ACC's "History of Message Center events": per type and period, per status."""
        return report_page(request, access, "history", "history.html",
                           lambda conn, f, _t: event_history(conn, f).to_dict())

    def csv_download(request: Request, access: Any, name: str,
                     build: Callable[[Any, ReportFilter], str]) -> Response:
        """A report as CSV for the page's filter (``message-center-<name>-<from>-<to>``)."""
        values = _form(request.query_params)
        try:
            report_filter = _filter(values, access)
            csv = _read(lambda conn: build(conn, report_filter))
        except ReportFilterError as exc:
            return Response(f"{exc.field}: {exc}\n", status_code=422, media_type="text/plain")
        except ControlMissing as exc:
            return Response(f"{exc}\n", status_code=503, media_type="text/plain")
        start = report_filter.start.strftime("%Y%m%dT%H")
        end = report_filter.end.strftime("%Y%m%dT%H")
        return Response(csv, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition":
                f'attachment; filename="message-center-{name}-{start}-{end}.csv"'})

    @app.get("/history.csv")
    def history_download(request: Request, access: Reader) -> Response:
        return csv_download(request, access, "history",
                            lambda conn, f: history_csv(event_history(conn, f)))

    @app.get("/tracking", response_class=HTMLResponse)
    def tracking_page(request: Request, access: Reader) -> HTMLResponse:
        """ACC's tracking indicators: open and click rates per template, period and link."""
        return report_page(request, access, "tracking", "tracking.html",
                           lambda conn, f, _t: tracking_report(conn, f).to_dict())

    @app.get("/tracking.csv")
    def tracking_download(request: Request, access: Reader) -> Response:
        return csv_download(request, access, "tracking",
                            lambda conn, f: tracking_csv(tracking_report(conn, f)))

    @app.get("/errors", response_class=HTMLResponse)
    def errors_page(request: Request, access: Reader,
                    cause: Annotated[str, Query(max_length=64)] = "failed",
                    cursor: Annotated[str | None, Query(max_length=200)] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    failure_class: Annotated[str | None, Query(alias="failureClass",
                                                               max_length=32)] = None,
                    ) -> HTMLResponse:
        """The events behind one error cause of the service level report."""
        if cause not in ERROR_CAUSES:
            cause_error = {"field": "cause", "message": f"expected one of "
                                                        f"{', '.join(ERROR_CAUSES)}"}
            return render(request, "errors.html", access.user, "service-level", status_code=422,
                          values=_form(request.query_params), error=cause_error, report=None,
                          presets=PRESETS, instances=_instances(), cause=cause,
                          causes=ERROR_CAUSE_LABELS, query="", next_query=None,
                          threshold_error=None, cause_labels=ERROR_CAUSE_LABELS)
        values = _form(request.query_params)
        next_query = bulk = None
        error = page = None
        status = 200
        try:
            report_filter = _filter(values, access)
            page = _read(lambda conn: error_events(
                conn, report_filter, cause, limit=limit, cursor=cursor,
                failure_class=failure_class or None).to_dict())
            if page["items"]:
                bulk = bulk_actions(report_filter, cause, [str(i["id"]) for i in page["items"]],
                                    failure_class or None)
            if page["nextCursor"]:
                next_query = _query(values, cause=cause, failureClass=failure_class or None,
                                    cursor=page["nextCursor"], limit=limit)
        except ReportFilterError as exc:
            error, status = {"field": exc.field, "message": str(exc)}, 422
        except ControlMissing as exc:
            error, status = {"field": None, "message": str(exc)}, 503
        return render(request, "errors.html", access.user, "service-level", status_code=status,
                      values=values, error=error, report=page, presets=PRESETS,
                      instances=_instances(), cause=cause, causes=ERROR_CAUSE_LABELS,
                      query=_query(values), next_query=next_query, threshold_error=None,
                      cause_labels=ERROR_CAUSE_LABELS, bulk=bulk,
                      failure_class=failure_class or None,
                      failure_class_labels=FAILURE_CLASS_LABELS,
                      can=authorization.capabilities(access.user))
