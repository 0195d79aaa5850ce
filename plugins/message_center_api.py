"""Mounts the Message Center push API on Airflow's API server under ``/message-center``,
and the Adobe Campaign compatible APIs at Adobe's paths: ACC's SOAP router and WSDLs under
``/nl/jsp/`` and the Campaign REST transactional events at
``/<ORGANIZATION>/campaign/<transactionalAPI>/<eventID>`` (a root middleware, since the
organization is part of the path; ``MC_CAMPAIGN_ORGANIZATIONS=a,b`` limits it to those).

Served by the ``airflow api-server`` process users already run (``airflow standalone``
included), documented at ``/message-center/docs``, authenticated exactly like Airflow's
REST API: a Bearer token from ``POST /auth/token`` (or the UI's session cookie). No
token, or a bad or expired one, is a 401. Rights are the auth manager's, asked through
``mc_airflow.authorization``: pushing needs the right to create DAG runs of the queue's
DAG (``rtEventsProcessing`` / ``batchEventsProcessing``), reading events to read them; a
refusal is a 403 naming the missing permission (a SOAP Fault with the same words for ACC's
SOAP API, whose users log on as Airflow users).

The Message Center pages (``mc_airflow.ui``, same module for their rights) are mounted
under ``/message-center/ui`` and listed in Airflow's navigation (``external_views``).

Airflow imports plugin files in every process, task runners included, so this module
stays light: Airflow's API-server security module and the connection model are imported
on the first request, not here (:mod:`mc_airflow.connections` reads the connection).

Settings (environment of the API server): ``MC_HEALTH_WARNING`` (default 100) and
``MC_HEALTH_ALERT`` (default 400) pending real-time events; ``MC_HEALTH_PUBLIC=true``
lets ``GET /message-center/v1/health`` answer without a token (for load balancers);
``MC_API_GC_FREEZE=false`` (see ``FreezeGcOnFirstRequest``).
"""

from __future__ import annotations

import dataclasses
import gc
import os
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import HTTPException

from mc_airflow.authorization import (
    PUSH_API_AUTHORIZATION,
    AirflowSessions,
    authenticated_user,
    require_bulk_actions,
    require_read,
    require_webhooks_manage,
    user_name,
)
from mc_airflow.connections import ConnectionCache
from mc_airflow.defaults import CONTROL_CONN_ID, EXECUTION_CONN_ID
from mc_airflow.sandbox import user_sandboxer
from message_center.api import create_app
from message_center.api.campaign_rest import CampaignRestDispatch, create_campaign_rest_app
from message_center.api.operations import ActionsBackend
from message_center.api.soap import create_soap_app
from message_center.api.webhooks import WebhookBackend

UI_PATH = "/ui"
CONNECTION_TTL_SECONDS = 60.0

# Kept under its old name: other apps of this plugin authenticate with it too.
airflow_user = authenticated_user


_CONNECTIONS = ConnectionCache(CONNECTION_TTL_SECONDS, remember_missing=False)


def execution_database_url() -> str:
    """The ``mc_execution`` connection's URL, looked up in the API server, kept a minute."""
    url = _CONNECTIONS.url(EXECUTION_CONN_ID)
    if url is None:
        raise HTTPException(503, f"Airflow connection {EXECUTION_CONN_ID!r} is not defined "
                                 "on the API server")
    return url


class FreezeGcOnFirstRequest:
    """``gc.freeze()`` once, at the first push API request (the server is fully built then).

    Airflow's API server holds ~600k long-lived objects; without this every full
    collection triggered by a 1,000-event batch walks them all (~300 ms pauses, the p99).
    Airflow freezes its DAG processor the same way. ``MC_API_GC_FREEZE=false`` turns it off.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pending = os.environ.get("MC_API_GC_FREEZE", "true").strip().lower() not in (
            "0", "false", "no")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.pending and scope["type"] == "http":
            self.pending = False
            gc.freeze()
        await self.app(scope, receive, send)


def _webhook_box() -> Any:
    from mc_airflow.webhooks import FernetBox

    try:
        return FernetBox()
    except RuntimeError as exc:
        raise HTTPException(503, str(exc)) from None


def _webhook_hosts() -> Any:
    from message_center.webhooks.model import allowed_hosts

    return allowed_hosts()


# Delivery-status webhooks: subscriptions on the control database, messages on this
# deployment's execution database; secrets encrypted with Airflow's Fernet key.
WEBHOOKS = WebhookBackend(
    control_url=lambda: _CONNECTIONS.url(CONTROL_CONN_ID),
    execution_url=lambda: _CONNECTIONS.url(EXECUTION_CONN_ID),
    box=_webhook_box, hosts=_webhook_hosts,
    manage=require_webhooks_manage(), read=require_read())

def _trigger_bulk_action(params: dict[str, Any], user: str) -> str:
    from mc_airflow.operations import trigger_bulk_action

    return trigger_bulk_action(params, user)


# Bulk actions: counted on this deployment's execution database, run by mcBulkAction.
ACTIONS = ActionsBackend(execution_url=lambda: _CONNECTIONS.url(EXECUTION_CONN_ID),
                         manage=require_bulk_actions(), user_name=user_name,
                         trigger=_trigger_bulk_action)


# Events pushed by the users named in MC_SANDBOX_USERS are sandbox events (every protocol).
PUSH_AUTHORIZATION = dataclasses.replace(PUSH_API_AUTHORIZATION, sandboxed=user_sandboxer())

app = create_app(
    airflow_user,
    execution_database_url,
    authorization=PUSH_AUTHORIZATION,
    public_health=os.environ.get("MC_HEALTH_PUBLIC", "").strip().lower() in ("1", "true", "yes"),
    webhooks=WEBHOOKS,
    actions=ACTIONS,
)
app.add_middleware(FreezeGcOnFirstRequest)

# Adobe Campaign drop-in: ACC's SOAP router and WSDLs at /nl/jsp/..., and Campaign
# Standard/v8 REST transactional events at /<ORGANIZATION>/campaign/<api>/<eventID>.
# Same rights as the push API (PUSH_API_AUTHORIZATION); SOAP logins are Airflow users.
soap_app = create_soap_app(AirflowSessions(), execution_database_url,
                           authorization=PUSH_AUTHORIZATION)
soap_app.add_middleware(FreezeGcOnFirstRequest)
campaign_rest_app = create_campaign_rest_app(airflow_user, execution_database_url,
                                             authorization=PUSH_AUTHORIZATION)
CAMPAIGN_ORGANIZATIONS = [org.strip() for org in os.environ.get(
    "MC_CAMPAIGN_ORGANIZATIONS", "").split(",") if org.strip()]


class LazyUiApp:
    """The Message Center pages, built at their first request: task processes, which
    import this plugin too, never pay for them."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from mc_airflow.ui.app import create_ui_app

            self._app = create_ui_app()
        await self._app(scope, receive, send)


# Mounted inside the push API app, so their routes can never be shadowed by the
# /message-center mount (Airflow mounts plugin apps in file-walk order).
app.mount(UI_PATH, LazyUiApp())


class MessageCenterApiPlugin(AirflowPlugin):
    """On the Airflow API server: the push API (rtEvents, batchEvents, events, health), the
    Adobe Campaign compatible SOAP and REST APIs, and the Message Center section of the
    Airflow UI (its navigation entry and pages)."""

    name = "message_center_api"
    fastapi_apps = [
        {"app": app, "url_prefix": "/message-center", "name": "Message Center push API"},
        {"app": soap_app, "url_prefix": "/nl",
         "name": "Adobe Campaign SOAP API (PushEvent, PushEvents, Logon)"},
    ]
    fastapi_root_middlewares = [
        {"middleware": CampaignRestDispatch, "args": [],
         "kwargs": {"rest_app": campaign_rest_app,
                    "organizations": CAMPAIGN_ORGANIZATIONS or None},
         "name": "Campaign REST transactional events (/<ORGANIZATION>/campaign/...)"},
    ]
    # Airflow shows an external view in its navigation and renders it in a same-origin
    # iframe; it mirrors the iframe's path into its own URL (deep links work both ways).
    external_views = [{
        "name": "Message Center",
        "href": f"/message-center{UI_PATH}/overview",
        "url_route": "message-center",
        "destination": "nav",
        "nav_top_level": True,
        "icon": f"/message-center{UI_PATH}/static/icon.svg",
        "icon_dark_mode": f"/message-center{UI_PATH}/static/icon-dark.svg",
    }]
