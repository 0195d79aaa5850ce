"""The Message Center pages, served by the API server under ``/message-center/ui``.

Airflow's UI shows them in its navigation (an ``external_views`` entry of the plugin,
rendered in a same-origin iframe). Pages are plain HTML rendered here with Jinja2, plus
a little JavaScript and Chart.js, all served from this package: nothing to build, no
asset from another host.

Authentication is Airflow's: the UI's session cookie (``_token``, a JWT the API server
set at login) reaches these pages because they are on the same origin; a Bearer token
works too. A page without a valid session redirects to Airflow's login page (and comes
back after it); the JSON endpoints answer 401. Rights are asked of Airflow's auth manager
through :mod:`mc_airflow.authorization`, like the push API's: reading needs read access to
the runs of an execution DAG (a report or event of one queue, to that queue's DAG); buttons
that change something are only shown to users who may use them (``capabilities``), and the
server refuses the change (403 naming the missing permission) to anyone else.

State-changing requests are ``POST`` with a JSON body, the ``X-Requested-With`` header
and (when the browser sends one) an ``Origin`` of this server: a form on another site
can neither set the header nor make the browser send JSON cross-origin without CORS, so
the session cookie cannot be used to forge a change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from mc_airflow import authorization, sandbox
from mc_airflow.ui import operations, pages, quarantine, reports, webhooks
from mc_airflow.ui.dependencies import NotAuthenticated

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"

PAGES = (
    ("overview", "Overview"),
    ("service-level", "Service level"),
    ("processing-time", "Processing time"),
    ("history", "Event history"),
    ("tracking", "Tracking"),
    ("lookup", "Event lookup"),
    ("quarantine", "Quarantine"),
    ("webhooks", "Webhooks"),
    ("accounts", "Execution accounts"),
    ("bulk-actions", "Bulk actions"),
    ("audit", "Audit"),
)


def _wants_html(request: Request) -> bool:
    return "/api/" not in request.url.path and request.method == "GET"


def create_ui_app(sandbox_mode: Callable[[], bool] | None = None) -> FastAPI:
    """The pages app; mount it under ``/message-center/ui``. ``sandbox_mode``: is this
    instance in sandbox mode (every page then says so in a banner); by default
    ``MC_SANDBOX`` or the Variable ``mc_sandbox`` (:mod:`mc_airflow.sandbox`)."""
    app = FastAPI(title="Message Center UI", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
    templates.env.filters.update(dt=format_datetime, age=format_age, num=format_number)
    templates.env.globals.update(percent=format_percent, ms=format_ms, count=format_number,
                                 channel_choices=channel_choices,
                                 sandbox_mode=sandbox_mode or sandbox.instance_sandboxed)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.add_middleware(SecurityHeaders)

    def render(request: Request, template: str, user: Any, page: str,
               status_code: int = 200, **context: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        return templates.TemplateResponse(request, template, {
            "base": base, "pages": PAGES, "page": page,
            "user_name": authorization.user_name(user),
            "can": context.pop("can", None), **context}, status_code=status_code)

    @app.exception_handler(NotAuthenticated)
    async def _login(request: Request, exc: NotAuthenticated) -> Response:
        if not _wants_html(request):
            return JSONResponse({"detail": exc.detail}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        from airflow.api_fastapi.app import get_auth_manager

        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = get_auth_manager().get_url_login(next_url=here)
        return RedirectResponse(login, status_code=303)

    @app.exception_handler(authorization.Forbidden)
    async def _forbidden(request: Request, exc: authorization.Forbidden) -> Response:
        if not _wants_html(request):
            return JSONResponse({"detail": exc.detail}, status_code=403)
        base = request.scope.get("root_path", "").rstrip("/")
        return templates.TemplateResponse(request, "forbidden.html", {
            "base": base, "pages": PAGES, "page": "", "detail": exc.detail,
            "user_name": authorization.user_name(exc.user)}, status_code=403)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> RedirectResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{base}/overview", status_code=307)

    pages.register(app, render)
    reports.register(app, render)
    quarantine.register(app, render)
    webhooks.register(app, render)
    operations.register(app, render)
    return app


class SecurityHeaders:
    """Every asset from this server only (the policy enforces "no CDN" in the browser);
    pages may be framed by Airflow's UI (same origin) and nothing else."""

    POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data:; connect-src 'self'; frame-src 'self'; "
              "frame-ancestors 'self'; form-action 'self'; base-uri 'self'")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", self.POLICY.encode()),
                            (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"same-origin")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def format_datetime(value: Any, ms: bool = False) -> str:
    """ISO text or datetime -> ``2026-11-25 10:00:05 UTC`` (Airflow shows UTC by default)."""
    if not value:
        return ""
    if isinstance(value, datetime):
        value = value.astimezone(UTC).isoformat()
    text = str(value).replace("T", " ").replace("+00:00", "").rstrip("Z")
    if "." in text:
        head, _, frac = text.partition(".")
        text = f"{head}.{frac[:3]}" if ms else head
    return f"{text} UTC"


def format_age(seconds: Any) -> str:
    """Seconds -> ``4 s``, ``2 min 5 s``, ``3 h 20 min``, ``2 d 4 h``; empty for None."""
    if seconds is None:
        return "-"
    total = float(seconds)
    if total < 60:
        return f"{total:.1f} s" if total < 10 else f"{total:.0f} s"
    minutes, secs = divmod(int(total), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def channel_choices() -> list[tuple[str, str]]:
    """(name, label) of every registered channel, for the pages' channel filters."""
    from message_center import channel as channels

    return [(spec.name, spec.label) for spec in channels.all_channels()]


def format_percent(ratio: Any) -> str:
    """A 0-1 ratio as ``6.8 %``; ``-`` when there is nothing to divide."""
    if ratio is None:
        return "-"
    value = float(ratio) * 100
    return f"{value:.1f} %" if value < 10 else f"{value:.0f} %"


def format_ms(value: Any) -> str:
    """Milliseconds as ``84 ms`` or ``1.25 s``; ``-`` when there is none."""
    if value is None:
        return "-"
    value = float(value)
    if value < 1:
        return f"{value:.2f} ms"
    if value < 1000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.2f} s" if value < 60000 else format_age(value / 1000)


def format_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"
