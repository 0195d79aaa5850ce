"""Adobe Campaign Standard / v8 transactional events over REST, at Adobe's path shape:

- ``POST /<ORGANIZATION>/campaign/<transactionalAPI>/<eventID>`` with
  ``{"email", "mobilePhone", "ctx", "scheduled", "expiration"}`` queues a real-time event
  and answers ``201`` with Adobe's fields (``PKey``, ``status``, ``href``, ...);
- ``GET /<ORGANIZATION>/campaign/<transactionalAPI>/<eventID>/<PKey>`` answers the event
  with its status in Adobe's names (``ADOBE_STATUS``).

``<eventID>`` is the event type, with Adobe's ``EVT`` prefix dropped (``EVTcartAbandonment``
-> type ``cartAbandonment``; an ID without the prefix is the type as it is). The channel is
e-mail when ``email`` is given, SMS when only ``mobilePhone`` is, another channel when
only its address field is (``pushSubscription``: Web Push). ``<ORGANIZATION>`` and
``<transactionalAPI>`` are free (kept in ``href``), so only the host of a client changes.
Validation, limits, ``Idempotency-Key`` and errors (``422`` naming the field, nothing
stored) are the JSON push API's, and so are authentication (Airflow's Bearer token) and
rights (``Authorization``: pushing needs the push right of the real-time queue, reading an
event the read right of its queue; a refusal is the same 403 naming the missing permission,
checked before anything is stored or the Idempotency-Key is claimed).

``CampaignRestDispatch`` is the root ASGI middleware that routes these paths (whatever the
organization) to this app on the Airflow API server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from message_center import channel as channels
from message_center import events
from message_center.api.app import Authorization, EventReadCheck, read_body
from message_center.api.database import answer_503_while_database_down, execution_engine
from message_center.api.pushing import IdempotencyConflict, store_events
from message_center.events import MAX_EVENT_BODY_BYTES, EventIn, EventValidationError
from message_center.statuses import EventStatus

ADOBE_STATUS: dict[EventStatus, str] = {
    EventStatus.PENDING: "pending",
    EventStatus.PENDING_DELIVERY: "processing",
    EventStatus.SENT: "processed",
    EventStatus.IGNORED: "ignored",
    EventStatus.FAILED: "deliveryFailed",
    EventStatus.NOT_TAKEN_INTO_ACCOUNT: "routingFailed",
    EventStatus.EXPIRED: "tooOld",
}
"""Our event status -> Adobe Campaign Standard's transactional event status."""

EVENT_ID_PREFIX = "EVT"
REST_FIELDS = ("email", "mobilePhone", "ctx", "scheduled", "expiration")


def rest_fields() -> tuple[str, ...]:
    """Adobe's fields, and every other channel's address field (``pushSubscription``)."""
    return tuple(dict.fromkeys([*REST_FIELDS[:2], *(c.address_field
                                                    for c in channels.all_channels()),
                                *REST_FIELDS[2:]]))


def _own_address(event: Any) -> dict[str, Any]:
    """The address of a channel that is not one of Adobe's two, by its wire field."""
    channel = channels.get(event["wishedChannel"] if isinstance(event, dict)
                           else event.wished_channel)
    if channel.address_field in REST_FIELDS:
        return {}
    value = event.get(channel.address_field) if isinstance(event, dict) else event.address
    return {channel.address_field: value}


def event_type(event_id: str) -> str:
    """``EVTcartAbandonment`` -> ``cartAbandonment``; ``ORDER_CONFIRMED`` stays as it is."""
    if event_id.startswith(EVENT_ID_PREFIX) and len(event_id) > len(EVENT_ID_PREFIX):
        return event_id[len(EVENT_ID_PREFIX):]
    return event_id


def _field_error(field: str, msg: str, kind: str) -> EventValidationError:
    return EventValidationError([{"loc": ["body", field], "field": field, "msg": msg,
                                  "type": kind}])


def parse_rest_event(event_id: str, data: Any) -> EventIn:
    """A Campaign REST body as our event; raises ``EventValidationError`` (422)."""
    if not isinstance(data, dict):
        raise _field_error("body", "body must be a JSON object", "object_type")
    accepted = rest_fields()
    for name in data:
        if name not in accepted:
            raise _field_error(name, f"unknown field '{name}' (a transactional event takes "
                                     f"{', '.join(accepted)})", "extra_forbidden")
    # The channel is the first (by order) whose address the body carries.
    channel = next((c.name for c in channels.all_channels()
                    if data.get(c.address_field) is not None), channels.default().name)
    try:
        return events.parse_event({**data, "type": event_type(event_id),
                                   "wishedChannel": channel})
    except EventValidationError as exc:
        for error in exc.errors:
            if error["field"] == "type":
                error.update(loc=["path", "eventID"], field="eventID",
                             msg=f"eventID: {error['msg']}")
        raise


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else ""


def create_campaign_rest_app(
    auth: Callable[..., Any],
    database_url: Callable[[], str],
    *,
    authorization: Authorization,
) -> FastAPI:
    """The Campaign REST transactional events app (routes carry the whole path). ``auth``
    and ``authorization`` are the JSON push API's (``create_app``)."""
    app = FastAPI(title="Message Center: Campaign REST transactional events",
                  docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(EventValidationError)
    async def _invalid(_request: Request, exc: EventValidationError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    answer_503_while_database_down(app)
    engine = execution_engine(database_url)

    def push(body: bytes, key: str | None, path: dict[str, str],
             server_url: str, user: Any = None) -> tuple[int, Any, bool]:
        data = events.loads(body)
        event = parse_rest_event(path["event_id"], data)

        def answer(ids: list[int]) -> dict[str, Any]:
            pkey = str(ids[0])
            return {
                "PKey": pkey, "ctx": dict(event.ctx), "email": _text(event.email),
                "mobilePhone": _text(event.mobile_phone), **_own_address(event),
                "scheduled": _iso(event.scheduled), "expiration": _iso(event.expiration),
                "href": f"{path['api']}/{path['event_id']}/{pkey}",
                "serverUrl": server_url, "status": "pending", "type": path["event_id"],
            }

        try:
            return store_events(engine(), [("rt", event)], answer=answer, key=key,
                                endpoint=f"campaign:{path['event_id']}", request=data,
                                sandbox=authorization.sandboxes(user))
        except IdempotencyConflict as exc:
            raise HTTPException(409, str(exc)) from None

    push_rights = [Depends(auth)]
    may_push = Depends(authorization.push("rt"))

    @app.post("/{organization}/campaign/{transactional_api}/{event_id}", status_code=201,
              dependencies=push_rights)
    @app.post("/{organization}/campaign/{transactional_api}/{event_id}/", status_code=201,
              dependencies=push_rights, include_in_schema=False)
    async def send_event(request: Request, organization: str, transactional_api: str,
                         event_id: str,
                         user: Any = may_push) -> Any:
        """Queue one transactional event (real-time queue)."""
        key = request.headers.get("idempotency-key")
        if key is not None:
            events.check_idempotency_key(key)
        body = await read_body(request, MAX_EVENT_BODY_BYTES)
        server_url = str(request.base_url).rstrip("/")
        status, answer, replayed = await run_in_threadpool(
            push, body, key, {"api": transactional_api, "event_id": event_id}, server_url,
            user)
        headers = {"Location": f"/{organization}/campaign/{answer['href']}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(answer, status_code=status, headers=headers)

    def fetch(public_id: int) -> dict[str, Any] | None:
        with engine().connect() as conn:
            return events.get_event(conn, public_id)

    @app.get("/{organization}/campaign/{transactional_api}/{event_id}/{pkey}",
             dependencies=[Depends(auth)])
    async def event_status(request: Request, organization: str, transactional_api: str,
                           event_id: str, pkey: str,
                           access: EventReadCheck = Depends(authorization.read)) -> Any:
        """The event with its status in Adobe's names."""
        missing = HTTPException(404, f"event {pkey} of {event_id} not found")
        if not pkey.isdigit() or len(pkey) > 20:
            raise missing
        found = await run_in_threadpool(fetch, int(pkey))
        if found is None or found["type"] != event_type(event_id):
            raise missing
        access.check(found["kind"])
        return JSONResponse({
            "PKey": pkey, "ctx": found["ctx"], "email": _text(found["email"]),
            "mobilePhone": _text(found["mobilePhone"]), **_own_address(found),
            "scheduled": _text(found["scheduled"]), "expiration": _text(found["expiration"]),
            "href": f"{transactional_api}/{event_id}/{pkey}",
            "serverUrl": str(request.base_url).rstrip("/"),
            "status": ADOBE_STATUS[EventStatus(found["status"])], "type": event_id,
        })

    return app


RESERVED_FIRST_SEGMENTS = frozenset({
    "api", "ui", "auth", "execution", "pluginsv2", "static", "message-center", "nl", "docs",
    "redoc", "dags", "assets", "connections", "variables", "pools", "plugins", "xcoms",
})
"""Never routed to the Campaign REST app: Airflow's own paths (API and UI)."""


class CampaignRestDispatch:
    """Root ASGI middleware of the Airflow API server: ``POST /<ORG>/campaign/<api>/<eventID>``
    and ``GET /<ORG>/campaign/<api>/<eventID>/<PKey>`` go to ``rest_app``, everything else
    to Airflow. ``organizations`` (if given) limits the ORG segments served; browser page
    loads (``Accept: text/html``) always go to Airflow's UI."""

    def __init__(self, app: Any, rest_app: Any,
                 organizations: Iterable[str] | None = None) -> None:
        self.app, self.rest_app = app, rest_app
        self.organizations = frozenset(organizations) if organizations else None

    def matches(self, scope: dict[str, Any]) -> bool:
        if scope.get("type") != "http":
            return False
        path: str = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        parts = path.strip("/").split("/")
        method = scope.get("method")
        if len(parts) < 4 or parts[1] != "campaign" or not all(parts):
            return False
        if parts[0] in RESERVED_FIRST_SEGMENTS or (
                self.organizations is not None and parts[0] not in self.organizations):
            return False
        if method == "POST":
            return len(parts) == 4
        if method == "GET" and len(parts) == 5:
            accept = dict(scope.get("headers") or []).get(b"accept", b"")
            return b"text/html" not in accept
        return False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.matches(scope):
            await self.rest_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)
