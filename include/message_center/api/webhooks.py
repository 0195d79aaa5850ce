"""``/v1/webhooks``: delivery-status webhook subscriptions (DESIGN.md §8).

Subscriptions live on the control instance (``mc_control``) and are copied to every
execution instance by ``mcQuarantineSynch``; a change made here is copied at once to
this deployment's own execution database (when it has one), so the minimal architecture
needs no wait. Replay and "send a test" act on this deployment's execution database,
where the messages are.

Managing (create, change, delete, rotate the secret, test, replay) needs edit rights on
the processing DAGs (as the quarantine); reading needs read rights on their runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from message_center.db import engine_for
from message_center.net_guard import HostList
from message_center.webhooks import store
from message_center.webhooks.model import (
    DEFAULT_OVERLAP,
    EVENT_NAMES,
    SecretBox,
    WebhookValidationError,
    parse_subscription,
)

MAX_BODY = 64 * 1024
MAX_REPLAY_IDS = 10_000


@dataclass(frozen=True)
class WebhookBackend:
    """What the webhook routes need from the deployment: the control database's URL
    (``None``: this deployment has no control role), the execution database's (``None``:
    none), the secret box (Fernet) and the host allowlist; ``manage`` and ``read`` are the
    authorization dependencies."""

    control_url: Callable[[], str | None]
    execution_url: Callable[[], str | None]
    box: Callable[[], SecretBox]
    hosts: Callable[[], HostList]
    manage: Callable[..., Any]
    read: Callable[..., Any]


class WebhookIn(BaseModel):
    url: str = Field(description="Where to POST (https; http and loopback/private hosts only "
                                 "when listed in `MC_WEBHOOK_ALLOWED_HOSTS`).")
    events: list[str] = Field(description=f"Event names: {', '.join(EVENT_NAMES)}.")
    eventTypes: list[str] | None = Field(None, description="Only events of these types "
                                                           "(default: all).")
    description: str | None = None
    enabled: bool | None = None
    maxInFlight: int | None = Field(None, description="Concurrent requests (default 4).")
    ratePerSecond: float | None = Field(None, description="Requests per second (default 50).")


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    eventTypes: list[str]
    description: str
    enabled: bool
    disabledReason: str | None
    secret: str | None = Field(None, description="Only in the answer to POST and to a "
                                                 "secret rotation: store it now.")


def _user_name(user: Any) -> str | None:
    getter = getattr(user, "get_name", None)
    if callable(getter):
        return str(getter())
    return str(user) if isinstance(user, str) else getattr(user, "username", None)


async def _json(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HTTPException(413, f"request body is larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise WebhookValidationError([{"loc": ["body"], "field": "body", "type": "json_invalid",
                                       "msg": f"the body is not JSON: {exc}"}]) from None


def _time(body: dict[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise WebhookValidationError([{"loc": ["body", name], "field": name,
                                       "type": "datetime_parsing",
                                       "msg": f"{name} must be an ISO 8601 date-time"}]) from None
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def webhook_router(backend: WebhookBackend) -> APIRouter:
    """The routes (mounted under ``/v1`` by :func:`message_center.api.app.create_app`)."""
    router = APIRouter()

    def control() -> Engine:
        url = backend.control_url()
        if not url:
            raise HTTPException(503, "webhooks are managed on the control instance: this "
                                     "deployment has no control database (mc_control)")
        return engine_for(url)

    def execution() -> Engine | None:
        url = backend.execution_url()
        return engine_for(url) if url else None

    def execution_required() -> Engine:
        engine = execution()
        if engine is None:
            raise HTTPException(503, "this deployment has no execution database "
                                     "(mc_execution): replay and tests act on one")
        return engine

    def copy_down() -> None:
        """This deployment's execution instance gets the change at once."""
        engine = execution()
        if engine is None or engine.url == control().url:
            return
        with control().connect() as source, engine.begin() as target:
            store.copy_subscriptions(source, target)

    def found(row: dict[str, Any] | None, subscription_id: str) -> dict[str, Any]:
        if row is None:
            raise HTTPException(404, f"webhook {subscription_id} not found")
        return row

    def with_stats(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        engine = execution()
        if engine is None:
            return records
        with engine.connect() as conn:
            stats = store.endpoint_stats(conn)
        return [{**r, "stats": stats.get(r["id"], {"messages": {}})} for r in records]

    @router.post("/webhooks", status_code=201, response_model=WebhookOut,
                 summary="Subscribe an endpoint to delivery-status webhooks",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": WebhookIn.model_json_schema()}}}})
    async def create_webhook(request: Request, user: Any = Depends(backend.manage)) -> Any:
        """Answers the subscription and its signing secret (`whsec_...`), shown once."""
        body = await _json(request)

        def work() -> tuple[dict[str, Any], str]:
            hub = control()
            with hub.connect() as conn:
                known = store.known_event_types(conn)
            change = parse_subscription(body, hosts=backend.hosts(), creating=True,
                                        known_event_types=known)
            with hub.begin() as conn:
                row, secret = store.create(conn, change, box=backend.box(),
                                           created_by=_user_name(user))
            copy_down()
            return row, secret

        row, secret = await run_in_threadpool(work)
        return JSONResponse({**store.api_record(row), "secret": secret}, status_code=201)

    @router.get("/webhooks", summary="Every webhook subscription, with its figures")
    async def list_webhooks(_access: Any = Depends(backend.read)) -> Any:
        def work() -> list[dict[str, Any]]:
            with control().connect() as conn:
                rows = store.list_subscriptions(conn)
            return with_stats([store.api_record(r) for r in rows])

        return JSONResponse({"items": await run_in_threadpool(work)})

    @router.get("/webhooks/{subscription_id}", summary="One subscription, its last attempts")
    async def get_webhook(subscription_id: str, _access: Any = Depends(backend.read)) -> Any:
        def work() -> dict[str, Any]:
            with control().connect() as conn:
                row = found(store.get(conn, subscription_id), subscription_id)
            (record,) = with_stats([store.api_record(row)])
            engine = execution()
            if engine is not None:
                with engine.connect() as conn:
                    record["lastAttempts"] = store.last_attempts(conn, subscription_id)
            return record

        return JSONResponse(await run_in_threadpool(work))

    @router.patch("/webhooks/{subscription_id}", response_model=WebhookOut,
                  summary="Change the URL, the filters or enable / disable")
    async def patch_webhook(subscription_id: str, request: Request,
                            user: Any = Depends(backend.manage)) -> Any:
        body = await _json(request)

        def work() -> dict[str, Any]:
            hub = control()
            with hub.connect() as conn:
                found(store.get(conn, subscription_id), subscription_id)
                known = store.known_event_types(conn)
            change = parse_subscription(body, hosts=backend.hosts(), creating=False,
                                        known_event_types=known)
            with hub.begin() as conn:
                row = found(store.update(conn, subscription_id, change,
                                         by=_user_name(user)), subscription_id)
            copy_down()
            return store.api_record(row)

        return JSONResponse(await run_in_threadpool(work))

    @router.delete("/webhooks/{subscription_id}", status_code=204,
                   summary="Delete a subscription (its waiting messages are dropped)")
    async def delete_webhook(subscription_id: str,
                             user: Any = Depends(backend.manage)) -> Response:
        def work() -> None:
            with control().begin() as conn:
                if not store.delete(conn, subscription_id, by=_user_name(user)):
                    raise HTTPException(404, f"webhook {subscription_id} not found")
            copy_down()

        await run_in_threadpool(work)
        return Response(status_code=204)

    @router.post("/webhooks/{subscription_id}/secret", response_model=WebhookOut,
                 summary="Rotate the signing secret (the old one keeps signing a while)")
    async def rotate_secret(subscription_id: str, request: Request,
                            user: Any = Depends(backend.manage)) -> Any:
        body = await _json(request) or {}
        overlap = body.get("overlapSeconds", DEFAULT_OVERLAP.total_seconds()) \
            if isinstance(body, dict) else None
        if isinstance(overlap, bool) or not isinstance(overlap, int | float) or \
                not 0 <= overlap <= 30 * 86400:
            raise WebhookValidationError([{
                "loc": ["body", "overlapSeconds"], "field": "overlapSeconds",
                "type": "value_error",
                "msg": "overlapSeconds must be a number of seconds from 0 to 30 days"}])

        def work() -> tuple[dict[str, Any], str]:
            with control().begin() as conn:
                rotated = store.rotate_secret(conn, subscription_id, box=backend.box(),
                                              overlap=timedelta(seconds=float(overlap)),
                                              by=_user_name(user))
            if rotated is None:
                raise HTTPException(404, f"webhook {subscription_id} not found")
            copy_down()
            return rotated

        row, secret = await run_in_threadpool(work)
        return JSONResponse({**store.api_record(row), "secret": secret})

    @router.post("/webhooks/{subscription_id}/test", status_code=202,
                 summary="Send a test message (webhook.test) to this endpoint")
    async def test_webhook(subscription_id: str, _user: Any = Depends(backend.manage)) -> Any:
        def work() -> int:
            with control().connect() as conn:
                found(store.get(conn, subscription_id), subscription_id)
            copy_down()
            with execution_required().begin() as conn:
                message = store.enqueue_test(conn, subscription_id)
            if message is None:
                raise HTTPException(409, f"webhook {subscription_id} is not on this "
                                         "execution instance yet")
            return message

        from message_center.webhooks.model import message_id

        return JSONResponse({"webhookId": message_id(await run_in_threadpool(work))},
                            status_code=202)

    @router.post("/webhooks/{subscription_id}/replay", status_code=202,
                 summary="Send messages again (the same webhook-ids), by time or event ids")
    async def replay_webhook(subscription_id: str, request: Request,
                             _user: Any = Depends(backend.manage)) -> Any:
        """Body: `{"since", "until"}` (ISO 8601, when the status changed) or
        `{"eventIds": [...]}` or `{"webhookIds": ["msg_..."]}`."""
        body = await _json(request)
        if not isinstance(body, dict):
            raise WebhookValidationError([{"loc": ["body"], "field": "body",
                                           "type": "dict_type",
                                           "msg": "the body must be a JSON object"}])
        unknown = set(body) - {"since", "until", "eventIds", "webhookIds"}
        if unknown:
            name = sorted(unknown)[0]
            raise WebhookValidationError([{"loc": ["body", name], "field": name,
                                           "type": "extra_forbidden",
                                           "msg": f"unknown field {name!r}"}])
        since, until = _time(body, "since"), _time(body, "until")
        event_ids = body.get("eventIds")
        if event_ids is not None and (
                not isinstance(event_ids, list) or len(event_ids) > MAX_REPLAY_IDS or
                not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 64
                        for i in event_ids)):
            raise WebhookValidationError([{"loc": ["body", "eventIds"], "field": "eventIds",
                                           "type": "list_type",
                                           "msg": "eventIds must be a list of event ids"}])
        webhook_ids = body.get("webhookIds")
        message_ids = None
        if webhook_ids is not None:
            try:
                assert isinstance(webhook_ids, list) and len(webhook_ids) <= MAX_REPLAY_IDS
                message_ids = [int(str(w).removeprefix("msg_")) for w in webhook_ids]
                assert all(0 <= m < 1 << 64 for m in message_ids)
            except (AssertionError, ValueError):
                raise WebhookValidationError([{
                    "loc": ["body", "webhookIds"], "field": "webhookIds", "type": "list_type",
                    "msg": "webhookIds must be a list of msg_... ids"}]) from None
        if since is None and until is None and event_ids is None and message_ids is None:
            raise WebhookValidationError([{"loc": ["body", "since"], "field": "since",
                                           "type": "missing",
                                           "msg": "give since/until, eventIds or webhookIds"}])

        def work() -> int:
            with control().connect() as conn:
                found(store.get(conn, subscription_id), subscription_id)
            with execution_required().begin() as conn:
                return store.replay(conn, subscription_id, since=since, until=until,
                                    event_ids=event_ids, message_ids=message_ids)

        return JSONResponse({"count": await run_in_threadpool(work)}, status_code=202)

    return router
