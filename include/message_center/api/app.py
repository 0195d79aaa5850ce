"""The push API: ACC's ``PushEvent``/``PushEvents`` over HTTP, plus event lookup and health.

``create_app`` takes the authentication dependency, the authorization dependencies
(:class:`Authorization`) and a database-URL provider, so the same app runs inside
Airflow's API server (Airflow's JWT auth and auth manager, the ``mc_execution``
connection: ``mc_airflow.authorization``) and in tests (a FastAPI ``TestClient``).

Request bodies are read as a bounded stream (413 past the limit, before any parsing),
then decoded and validated in a worker thread together with the database write, so the
event loop only shuffles bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from message_center import channel as channels
from message_center import events
from message_center.api.database import answer_503_while_database_down, execution_engine
from message_center.api.operations import ActionsBackend, actions_router
from message_center.api.pushing import IdempotencyConflict, store_events
from message_center.api.webhooks import WebhookBackend, webhook_router
from message_center.attachment_rules import content_disposition
from message_center.channel import Channel
from message_center.delivery import quarantine as quarantine_store
from message_center.delivery import suppression as suppression_store
from message_center.events import (
    MAX_BATCH_BODY_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BODY_BYTES,
    EventIn,
    EventValidationError,
)
from message_center.ids import to_stored
from message_center.operations.filters import OperationInputError
from message_center.reporting.live import instance_live
from message_center.reporting.thresholds import (
    DEFAULT_HEALTH_AGE_ALERT,
    DEFAULT_HEALTH_AGE_WARNING,
    health_age_limits,
)
from message_center.tracking.summary import event_tracking
from message_center.webhooks.model import WebhookValidationError

DEFAULT_WARNING = 100
#: Lists page at most this far (PostgreSQL's OFFSET is a bigint; a 422 beats a 500).
MAX_LIST_OFFSET = 1_000_000_000
DEFAULT_ALERT = 400


class EventReadCheck(Protocol):
    def check(self, kind: str) -> None:
        """Raise ``HTTPException(403)`` unless the caller may read events of ``kind``."""


@dataclass(frozen=True)
class Authorization:
    """Who may push and read, for every push protocol (this JSON API, ACC's SOAP API, the
    Campaign REST API), checked before the request's work (a refusal stores nothing and
    leaves the request's Idempotency-Key unused).

    - ``push(kind)``: a dependency raising 403 unless the caller may push into the
      ``kind`` ("rt" / "batch") queue. Called once per kind when the app is built.
    - ``read``: a dependency raising 403 unless the caller may read some events; it
      returns an :class:`EventReadCheck` for the queue of the event found.
    - ``change_quarantine``: a dependency raising 403 unless the caller may quarantine or
      release addresses; reading the quarantine asks ``read``.
    - ``check_push(user, kind)``: the same rule as ``push(kind)`` for a user already known
      (SOAP reads it from the envelope); raises ``HTTPException(403)`` naming the missing
      permission. It may do I/O: call it off the event loop.
    """

    push: Callable[[str], Callable[..., Any]]
    read: Callable[..., Any]
    check_push: Callable[[Any, str], None]
    #: Quarantining or releasing an address (a dependency raising 403 otherwise, returning
    #: the user). ``None``: nobody may (the endpoints answer 403).
    change_quarantine: Callable[..., Any] | None = None
    #: Are the events this user pushes sandbox events (``MC_SANDBOX_USERS``)? ``None``:
    #: nobody's are.
    sandboxed: Callable[[Any], bool] | None = None

    def sandboxes(self, user: Any) -> bool:
        """The sandbox flag stored on the events ``user`` pushes (decided once, here)."""
        return self.sandboxed is not None and bool(self.sandboxed(user))


@dataclass(frozen=True)
class HealthThresholds:
    """Pending real-time events that make health say warning / alert (ACC: 100 / 400),
    and the age (s) of the oldest of them that does too (300 / 900: a queue that does not
    move, e.g. its relay down)."""

    warning: int = DEFAULT_WARNING
    alert: int = DEFAULT_ALERT
    age_warning: float = DEFAULT_HEALTH_AGE_WARNING
    age_alert: float = DEFAULT_HEALTH_AGE_ALERT

    def __post_init__(self) -> None:
        if not 0 < self.warning <= self.alert:
            raise ValueError(f"health thresholds need 0 < warning <= alert; got warning="
                             f"{self.warning}, alert={self.alert}")
        if not 0 < self.age_warning <= self.age_alert:
            raise ValueError(f"health age thresholds need 0 < warning <= alert; got "
                             f"warning={self.age_warning}, alert={self.age_alert}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HealthThresholds:
        """``MC_HEALTH_WARNING`` / ``MC_HEALTH_ALERT`` (and ``MC_HEALTH_AGE_WARNING`` /
        ``MC_HEALTH_AGE_ALERT``, seconds); a bad value stops the start-up."""
        env = os.environ if environ is None else environ
        values = {}
        for name, var, default in (("warning", "MC_HEALTH_WARNING", DEFAULT_WARNING),
                                   ("alert", "MC_HEALTH_ALERT", DEFAULT_ALERT)):
            raw = env.get(var, "").strip()
            try:
                values[name] = int(raw) if raw else default
            except ValueError:
                raise ValueError(f"{var} must be a whole number; got {raw!r}") from None
        age_warning, age_alert = health_age_limits(env)
        return cls(**values, age_warning=age_warning, age_alert=age_alert)


# --- documentation models (responses are built as plain dicts on the hot path) ----------
class EventAccepted(BaseModel):
    id: int = Field(description="Public 64-bit event id (high byte: cell id).")
    status: str = Field("pending", description="Always `pending` on creation.")


class BatchAccepted(BaseModel):
    ids: list[int] = Field(description="Public ids, in the order of the pushed events.")


class TemplateLink(BaseModel):
    name: str
    version: int | None
    label: str | None


class DeliveryOutcome(BaseModel):
    id: int
    status: str = Field(description="queued | sending | retry | sent | ignored | failed")
    channel: str
    attempts: int
    error: str | None
    providerId: str | None
    created: datetime | None
    lastModified: datetime | None
    sentAt: datetime | None
    failureClass: str | None = Field(
        None, description="What the channel's last answer meant: hard | soft | policy | "
                          "throttle | transient | error | unknown (null when sent). "
                          "`unknown`: the relay or a crash left it open whether the "
                          "message went out (no answer after the final \".\" of SMTP "
                          "DATA): never retried automatically.")
    failureReason: str | None = Field(
        None, description="Why, e.g. user_unknown, mailbox_full, refused, throttled.")


class TrackedLink(BaseModel):
    link: int = Field(description="The link's number in the message (0: the first).")
    url: str | None
    clicks: int
    automatedClicks: int
    firstClick: datetime | None


class TrackingOut(BaseModel):
    opens: int = Field(description="Opens by people (every one; automated ones apart).")
    clicks: int
    automatedOpens: int = Field(description="Image proxies that prefetch, scanners, HEAD.")
    automatedClicks: int
    firstOpen: datetime | None
    firstClick: datetime | None
    mirrorViews: int
    unsubscribed: bool
    lastHit: datetime | None
    links: list[TrackedLink]


class EventOut(BaseModel):
    id: int
    kind: str = Field(description="`rt` (real-time queue) or `batch`.")
    type: str
    email: str | None
    mobilePhone: str | None
    wishedChannel: str
    externalId: str | None
    language: str | None
    country: str | None
    origin: str | None
    ctx: dict[str, Any]
    scheduled: datetime | None
    expiration: datetime | None
    status: str = Field(description="pending | pending_delivery | sent | ignored | failed | "
                                    "not_taken_into_account | expired")
    statusLabel: str = Field(description="The status as shown to people, e.g. `Sent`.")
    created: datetime
    lastModified: datetime
    processing: datetime | None
    processed: datetime | None
    errorCount: int
    nextAttempt: datetime
    template: TemplateLink | None
    delivery: DeliveryOutcome | None
    errorReason: str | None
    tracking: TrackingOut | None = Field(
        None, description="Opens and clicks of the message (null: not sent yet).")
    replayedFrom: int | None = Field(
        None, description="A bulk replay: the event this one sends again "
                          "(`POST /message-center/v1/actions`).")
    recycledFrom: int | None = Field(
        None, description="Event recycling: the event whose failed delivery this one "
                          "stands in for (the template's `on_failure`).")
    recycledTo: int | None = Field(
        None, description="Event recycling: the event created on the fallback channel "
                          "after this one's delivery failed.")
    recycling: str | None = Field(
        None, description="Why a failure that the template recycles was not recycled "
                          "(e.g. no e-mail address on the event).")
    attachments: list[dict[str, Any]] | None = Field(
        None, description="Files the event brought: `name`, `contentType`, `size` and "
                          "`sha256` (or the `url` fetched at sending time), `download`: "
                          "the path of its bytes (`GET /events/{id}/attachments/{n}`).")


class QuarantineRecord(BaseModel):
    channel: str = Field(description="`email` or `sms`.")
    address: str = Field(description="E-mail addresses in lower case.")
    status: str = Field(description="`quarantined` or `released` (by hand or automatically "
                                    "once `releaseAt` passed: see `active`).")
    active: bool = Field(description="In force now: the delivery ignores the address.")
    reason: str
    failureClass: str = Field(description="`hard`, `soft` (bounces) or `manual`.")
    failureReason: str | None = Field(description="e.g. `user_unknown`, `mailbox_full`.")
    bounceCount: int
    source: str = Field(description="delivery | bounce_mail | manual | api | ui | synch")
    decidedBy: str | None
    originCell: int | None = Field(description="Cell id of the instance that decided.")
    deliveryLogId: int | None
    created: datetime
    updated: datetime = Field(description="When the last decision was made (last wins).")
    releaseAt: datetime | None = Field(description="Automatic release (null: never).")
    releasedAt: datetime | None


class QuarantineList(BaseModel):
    items: list[QuarantineRecord]
    total: int = Field(description="Records matching the filters, all pages.")
    limit: int
    offset: int


class SuppressionRecord(BaseModel):
    id: int = Field(description="This instance's id of the suppression (DELETE takes it).")
    channel: str
    address: str = Field(description="E-mail addresses in lower case.")
    category: str = Field(description="The template's `unsubscribe` category.")
    status: str = Field(description="`suppressed` or `removed`.")
    active: bool = Field(description="In force: templates of the category are not sent.")
    source: str = Field(description="unsubscribe | manual | api")
    decidedBy: str | None
    originCell: int | None
    deliveryLogId: int | None = Field(description="The message unsubscribed from.")
    created: datetime
    updated: datetime = Field(description="When the last decision was made (last wins).")


class SuppressionList(BaseModel):
    items: list[SuppressionRecord]
    total: int
    limit: int
    offset: int


class QuarantineIn(BaseModel):
    reason: str = Field("", max_length=500, description="Why (shown on ignored events).")
    releaseAfterDays: float | None = Field(
        None, gt=0, le=36500, strict=True,  # "4" is not a number of days: a 422
        description="Release automatically after this many days (default: never).")


class RelayState(BaseModel):
    relay: str = Field(description="`smtp://host:port` or the SMS gateway's URL.")
    channel: str
    state: str = Field(description="`closed` (messages go out) or `open` (the relay is "
                                   "down: nothing is attempted on it but a probe every few "
                                   "seconds; its messages wait and keep their tries).")
    down: bool
    failures: int = Field(description="Failures in a row (connection refused, 421 to "
                                      "everyone, 503 with Retry-After).")
    openedAt: datetime | None
    pausedUntil: datetime | None = Field(description="The relay asked to slow down until.")
    lastError: str | None
    lastFailure: datetime | None
    lastSuccess: datetime | None


class Health(BaseModel):
    status: str = Field(description="ok | warning | alert | error: the worst of the due "
                                    "real-time events against the thresholds, the age of "
                                    "the oldest against the age thresholds, and warning "
                                    "while a relay is down.")
    message: str = Field(description="ACC mcPing style: `Ok / <date> / 7/400 pending events` "
                                     "(then, in parentheses, the queue's age or a relay "
                                     "down when they raised it).")
    checkedAt: datetime
    rtPending: int | None = Field(description="Due pending real-time events.")
    batchPending: int | None = Field(description="Due pending batch events.")
    oldestRtPendingAgeSeconds: float | None
    oldestBatchPendingAgeSeconds: float | None
    warningThreshold: int
    alertThreshold: int
    ageWarningSeconds: float
    ageAlertSeconds: float
    relays: list[RelayState] = Field(description="Every relay's circuit breaker.")
    relaysDown: list[str] = Field(description="The relays whose breaker is open.")


class ErrorEntry(BaseModel):
    loc: list[str | int]
    field: str
    msg: str
    type: str
    index: int | None = Field(None, description="Batch only: position of the bad event.")


class ValidationProblem(BaseModel):
    detail: list[ErrorEntry]


class Problem(BaseModel):
    detail: str


# ctx: any JSON object without NUL characters (PostgreSQL's jsonb cannot hold them), stated
# recursively so clients and schema-driven fuzzers know it (events.py checks it).
_NO_NUL = r"^[^\x00]*$"
_CTX_VALUE = {"anyOf": [
    {"type": "string", "pattern": _NO_NUL},
    {"type": ["number", "boolean", "null"]},
    {"type": "array", "items": {"$ref": "#/components/schemas/CtxValue"}},
    {"type": "object", "propertyNames": {"pattern": _NO_NUL},
     "additionalProperties": {"$ref": "#/components/schemas/CtxValue"}},
]}
_EVENT_SCHEMA = EventIn.model_json_schema(by_alias=True,
                                          ref_template="#/components/schemas/{model}")
#: The models the event's schema refers to (``EventFileIn``), served as components: a
#: ``$defs`` inside a request body's schema is not resolvable from the OpenAPI document
#: (schemathesis then took a body-less push for a valid one).
_EVENT_COMPONENTS: dict[str, Any] = _EVENT_SCHEMA.pop("$defs", {})
_EVENT_SCHEMA["properties"]["ctx"].update(
    propertyNames={"pattern": _NO_NUL},
    additionalProperties={"$ref": "#/components/schemas/CtxValue"})
_BATCH_SCHEMA = {
    "title": "BatchIn", "type": "object", "additionalProperties": False, "required": ["events"],
    "properties": {"events": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_EVENTS,
                              "items": _EVENT_SCHEMA}},
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


_COMMON = {
    401: {"model": Problem, "description": "No token, or a bad or expired one."},
}
_FORBIDDEN = {
    403: {"model": Problem, "description": "The caller lacks the permission the detail names; "
                                           "nothing was stored, the Idempotency-Key is unused."},
}
_PUSH_ERRORS = {
    **_COMMON,
    **_FORBIDDEN,
    409: {"model": Problem, "description": "Idempotency-Key reused with a different body."},
    413: {"model": Problem, "description": "Body larger than the documented limit."},
    422: {"model": ValidationProblem, "description": "Bad input (including a ctx that does "
                                                     "not fit the fields its published "
                                                     "template declares); nothing was "
                                                     "stored."},
}

# Typed ``str`` (default None when absent), so the schema is a plain string with its rules.
IdempotencyKey = Annotated[str, Header(
    alias="Idempotency-Key",
    description=f"Repeat a request safely: the same key returns the first answer and stores "
                f"nothing; the same key with another body is a 409. 1-"
                f"{events.MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters (spaces "
                f"inside only); any other value is a 422 and stores nothing. Keys are kept "
                f"for their replay window, at least 24 hours by default (the `cleanup` DAG's "
                f"`idempotency_key_hours`); the same key sent later is a new request.",
    # Stated for clients and fuzzers; checked by events.check_idempotency_key, whose 422
    # names the field like every other input error.
    json_schema_extra={"minLength": 1, "maxLength": events.MAX_IDEMPOTENCY_KEY_LENGTH,
                       "pattern": events.IDEMPOTENCY_KEY_PATTERN})]


def address_param(channel: Channel) -> Any:
    """The address of ``channel`` in a quarantine route: a path segment as the channel
    states it (what its ``normalize_address`` accepts), or a query parameter for
    addresses that cannot be one (a URL)."""
    spec = channel.address_path
    if spec is None:
        return Query(alias=channel.address_query, min_length=1, max_length=2048,
                     pattern=channel.address_query_pattern,
                     description=channel.address_description)
    return Path(min_length=spec.min_length, max_length=spec.max_length, pattern=spec.pattern,
                description=spec.description)


async def read_body(request: Request, limit: int,
                    with_files: tuple[int, bytes] | None = None) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``.

    ``with_files``: ``(larger limit, marker)``: a body that carries attachments (the
    marker, e.g. ``"attachments"``, is in what was read by the time the body passes
    ``limit``) may go up to the larger limit; any other body still stops at ``limit``."""
    top = with_files[0] if with_files else limit
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(declared) > top:
            raise _too_large(limit, with_files)
    chunks, size, checked = [], 0, with_files is None
    async for chunk in request.stream():
        size += len(chunk)
        chunks.append(chunk)
        if size > limit and not checked:
            checked = True
            if with_files is not None and with_files[1] in b"".join(chunks):
                limit = top
        if size > limit:
            raise _too_large(limit, with_files if limit < top else None)
    return b"".join(chunks)


def _too_large(limit: int, with_files: tuple[int, bytes] | None) -> HTTPException:
    larger = (f" ({with_files[0]} bytes when it carries attachments)" if with_files else "")
    return HTTPException(413, f"request body is larger than {limit} bytes{larger}")


def create_app(
    auth: Callable[..., Any],
    database_url: Callable[[], str],
    *,
    authorization: Authorization,
    thresholds: HealthThresholds | None = None,
    public_health: bool = False,
    webhooks: WebhookBackend | None = None,
    actions: ActionsBackend | None = None,
) -> FastAPI:
    """The push API. ``auth`` is a FastAPI dependency that raises 401 for a bad caller
    (every endpoint, health too unless ``public_health``); ``authorization`` says who may
    push and read; ``database_url`` returns the execution database's URL (called per
    request, cache it); ``webhooks``: the delivery-status webhook routes' backend (none:
    no such routes); ``actions``: the bulk actions route's (none: no such route).
    """
    limits = thresholds or HealthThresholds.from_env()
    # fastapi-offline: the same /docs and /redoc pages, with Swagger UI / ReDoc served
    # from its package instead of a CDN, so the docs work on an air-gapped network.
    app = FastAPIOffline(
        static_url="/static/docs",
        swagger_ui_parameters={"validatorUrl": None},  # no call to validator.swagger.io
        title="Message Center push API",
        version="1",
        description=(
            "Push transactional events like Adobe Campaign's `nms:rtEvent#PushEvent` and "
            "`nms:batchEvent#PushEvents`. Authenticate with a Bearer token from Airflow's "
            f"`POST /auth/token`. Limits: {MAX_BATCH_EVENTS} events per batch, "
            f"{events.MAX_CTX_BYTES} bytes of `ctx` per event, bodies up to "
            f"{MAX_EVENT_BODY_BYTES} bytes (rtEvents) / {MAX_BATCH_BODY_BYTES} bytes "
            f"(batchEvents); bodies with `attachments` up to "
            f"{events.MAX_EVENT_WITH_FILES_BODY_BYTES} / "
            f"{events.MAX_BATCH_WITH_FILES_BODY_BYTES} bytes."
        ),
    )

    @app.exception_handler(EventValidationError)
    async def _invalid(_request: Request, exc: EventValidationError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(OperationInputError)
    async def _invalid_action(_request: Request, exc: OperationInputError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(WebhookValidationError)
    async def _invalid_webhook(_request: Request, exc: WebhookValidationError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """A 405 lists every method of the path in ``Allow`` (Starlette lists only the
        first route's: ``/v1/quarantine/{channel}/{address}`` has GET, PUT and DELETE)."""
        if exc.status_code == 405:
            allowed = sorted({method for route in app.router.routes
                              if isinstance(route, APIRoute)
                              and route.matches(request.scope)[0] is not Match.NONE
                              for method in (route.methods or ())})
            return JSONResponse({"detail": exc.detail}, status_code=405,
                                headers={"Allow": ", ".join(allowed)})
        return await http_exception_handler(request, exc)

    answer_503_while_database_down(app)
    engine = execution_engine(database_url)

    def push(kind: str, body: bytes, key: str | None,
             user: Any = None) -> tuple[int, Any, bool]:
        """Validate and store; returns (status, body, replayed). Runs in a worker thread."""
        if key is not None:
            events.check_idempotency_key(key)
        data = events.loads(body)
        parsed = [events.parse_event(data)] if kind == "rt" else events.parse_batch(data)
        try:
            return store_events(
                engine(), [(kind, event) for event in parsed], key=key, request=data,
                endpoint="rtEvents" if kind == "rt" else "batchEvents", indexed=kind == "batch",
                answer=(lambda ids: {"id": ids[0], "status": "pending"}) if kind == "rt"
                else (lambda ids: {"ids": ids}), sandbox=authorization.sandboxes(user))
        except IdempotencyConflict as exc:
            raise HTTPException(409, str(exc)) from None

    def respond(outcome: tuple[int, Any, bool], headers: dict[str, str]) -> JSONResponse:
        status, body, replayed = outcome
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(body, status_code=status, headers=headers)

    router = APIRouter(prefix="/v1", dependencies=[Depends(auth)])
    push_rt, push_batch = Depends(authorization.push("rt")), Depends(authorization.push("batch"))

    @router.post("/rtEvents", status_code=201, response_model=EventAccepted,
                 responses=_PUSH_ERRORS, openapi_extra=_json_body(_EVENT_SCHEMA),
                 summary="Push one real-time event (PushEvent)")
    async def push_rt_event(request: Request, idempotency_key: IdempotencyKey = None,  # type: ignore[assignment]
                            user: Any = push_rt) -> Any:
        """Queue one event in the real-time queue; it is processed within seconds."""
        body = await read_body(request, MAX_EVENT_BODY_BYTES,
                               (events.MAX_EVENT_WITH_FILES_BODY_BYTES, events.FILES_MARKER))
        outcome = await run_in_threadpool(push, "rt", body, idempotency_key, user)
        location = str(request.url_for("get_event", event_id=outcome[1]["id"]))
        return respond(outcome, {"Location": location})

    @router.post("/batchEvents", status_code=201, response_model=BatchAccepted,
                 responses=_PUSH_ERRORS, openapi_extra=_json_body(_BATCH_SCHEMA),
                 summary=f"Push up to {MAX_BATCH_EVENTS} batch events (PushEvents)")
    async def push_batch_events(request: Request,
                                idempotency_key: IdempotencyKey = None,  # type: ignore[assignment]
                                user: Any = push_batch) -> Any:
        """Queue events in the batch queue, all or nothing: one bad event stores none and
        the error names its index."""
        body = await read_body(request, MAX_BATCH_BODY_BYTES,
                               (events.MAX_BATCH_WITH_FILES_BODY_BYTES, events.FILES_MARKER))
        return respond(await run_in_threadpool(push, "batch", body, idempotency_key, user),
                       {})

    def fetch(event_id: int) -> dict[str, Any] | None:
        with engine().connect() as conn:
            found = events.get_event(conn, event_id)
            if found is not None:
                found["tracking"] = (None if found["delivery"] is None else event_tracking(
                    conn, found["kind"], to_stored(event_id)))
            return found

    @router.get("/events/{event_id}", response_model=EventOut,
                responses={**_COMMON, **_FORBIDDEN,
                           404: {"model": Problem, "description": "No such event."}},
                summary="An event with its status and delivery outcome")
    async def get_event(
        event_id: Annotated[int, Path(ge=0, le=2**64 - 1,
                                      description="Public id from the push response.")],
        access: EventReadCheck = Depends(authorization.read),
    ) -> Any:
        found = await run_in_threadpool(fetch, event_id)
        if found is None:
            raise HTTPException(404, f"event {event_id} not found")
        access.check(found["kind"])
        return JSONResponse(found)

    def fetch_file(event_id: int, position: int) -> tuple[str, dict[str, Any],
                                                          bytes | None] | None:
        with engine().connect() as conn:
            return events.event_file(conn, event_id, position)

    @router.get("/events/{event_id}/attachments/{position}",
                responses={**_COMMON, **_FORBIDDEN,
                           200: {"content": {"application/octet-stream": {}},
                                 "description": "The file's bytes, as the event brought "
                                                "them."},
                           404: {"model": Problem, "description": "No such file."}},
                response_class=Response,
                summary="Download a file an event brought (its attachments[n])")
    async def get_event_file(
        event_id: Annotated[int, Path(ge=0, le=2**64 - 1)],
        position: Annotated[int, Path(ge=0, le=100)],
        access: EventReadCheck = Depends(authorization.read),
    ) -> Any:
        found = await run_in_threadpool(fetch_file, event_id, position)
        if found is None:
            raise HTTPException(404, f"event {event_id} has no attachments[{position}]")
        kind, meta, data = found
        access.check(kind)
        if data is None:
            raise HTTPException(404, f"attachments[{position}] of event {event_id} is "
                                     "fetched from its URL at sending time, not stored: "
                                     f"{meta.get('url')}")
        return Response(data, media_type=meta["contentType"], headers={
            "Content-Disposition": content_disposition(meta["name"]),
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})

    # --- quarantine ----------------------------------------------------------------------
    def _user_name(user: Any) -> str | None:
        getter = getattr(user, "get_name", None)
        if callable(getter):
            return str(getter())
        return str(user) if isinstance(user, str) else getattr(user, "username", None)

    def _refuse_changes() -> None:
        raise HTTPException(403, "Forbidden: changing the quarantine is not allowed here")

    change_quarantine = authorization.change_quarantine or _refuse_changes
    not_found = {404: {"model": Problem,
                       "description": "The address was never quarantined here."}}

    def with_connection(work: Callable[[Any], Any], write: bool = False,
                        invalid: int = 422) -> Any:
        """Run ``work`` on the execution database. A ``ValueError`` (an address that cannot
        be one of ``channel``) is ``invalid``: 422 in FastAPI's validation shape when
        quarantining, 404 when looking up or releasing (such an address is in no
        quarantine)."""
        try:
            if write:
                with engine().begin() as conn:
                    return work(conn)
            with engine().connect() as conn:
                return work(conn)
        except ValueError as exc:
            if invalid == 404:
                raise HTTPException(404, str(exc)) from None
            raise HTTPException(422, [{"type": "value_error", "loc": ["path", "address"],
                                       "msg": str(exc)}]) from None

    @router.get("/quarantine", response_model=QuarantineList,
                responses={**_COMMON, **_FORBIDDEN},
                summary="Quarantined addresses (filters)")
    async def list_quarantine(
        _access: EventReadCheck = Depends(authorization.read),
        channel: Annotated[str | None, Query(
            pattern=f"^({'|'.join(channels.names())})$")] = None,
        status: Annotated[str, Query(pattern="^(active|released|all)$",
                                     description="active (in force), released, all")] = "active",
        address: Annotated[str | None, Query(max_length=320,
                                             description="Case-insensitive substring.")] = None,
        failure_class: Annotated[str | None, Query(alias="class",
                                                   pattern="^(hard|soft|manual)$")] = None,
        since: Annotated[str | None, Query(
            max_length=64, description="Decided at or after (ISO 8601; no offset = UTC).",
            json_schema_extra={"format": "date-time"})] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_LIST_OFFSET)] = 0,
    ) -> Any:
        """Newest decision first. Needs the right to read events (runs of a processing DAG)."""
        try:
            after = events.parse_datetime(since, "since")
        except ValueError as exc:  # pydantic's custom errors are ValueErrors
            raise HTTPException(422, [{"type": "datetime_format", "loc": ["query", "since"],
                                       "msg": str(exc)}]) from None
        rows, total = await run_in_threadpool(with_connection, lambda conn: (
            quarantine_store.list_quarantine(
                conn, channel=channel, status=status, address=address,
                failure_class=failure_class, since=after, limit=limit, offset=offset)))
        return JSONResponse({"items": [quarantine_store.api_record(r) for r in rows],
                             "total": total, "limit": limit, "offset": offset})

    def quarantine_routes(spec: Channel) -> None:
        """GET / PUT / DELETE ``/v1/quarantine/<channel>/{address}`` (or
        ``/v1/quarantine/<channel>?<query>=`` for addresses that cannot be a path segment):
        one route per channel, so the schema states which addresses each channel takes."""
        channel, label = spec.name, spec.address_description
        suffix = "/{address}" if spec.address_path is not None else ""

        def address_path() -> Any:
            return address_param(spec)

        @router.get(f"/quarantine/{channel}{suffix}", response_model=QuarantineRecord,
                    responses={**_COMMON, **_FORBIDDEN, **not_found},
                    name=f"get_quarantine_{channel}",
                    summary=f"The quarantine record of {label}")
        async def get_quarantine(address: str = address_path(),
                                 _access: EventReadCheck = Depends(authorization.read)) -> Any:
            """Active, released or expired: `active` says whether the delivery ignores it."""
            found = await run_in_threadpool(with_connection, lambda conn: quarantine_store.get(
                conn, channel, address), False, 404)
            if found is None:
                raise HTTPException(404, f"{channel} address {address} is not in quarantine")
            return JSONResponse(quarantine_store.api_record(found))

        @router.put(f"/quarantine/{channel}{suffix}", response_model=QuarantineRecord,
                    responses={**_COMMON, **_FORBIDDEN,
                               400: {"model": Problem, "description": "The body cannot be "
                                                                      "read as JSON."}},
                    name=f"put_quarantine_{channel}",
                    summary=f"Quarantine {label} by hand")
        async def put_quarantine(request: Request, address: str = address_path(),
                                 # None when absent. Not `QuarantineIn | None`: the schema
                                 # would then state that a JSON null body is taken (a 422).
                                 body: Annotated[QuarantineIn, Body()] = None,
                                 user: Any = Depends(change_quarantine)) -> Any:
            """Idempotent: an address already in quarantine gets the new reason."""
            if body is None and (await request.body()).strip():  # JSON null: not an object
                raise EventValidationError([{
                    "loc": ["body"], "field": "body", "type": "object_type",
                    "msg": "body must be a JSON object (reason, releaseAfterDays) or absent"}])
            data = body or QuarantineIn()
            found = await run_in_threadpool(with_connection, lambda conn: quarantine_store.add(
                conn, channel, address, data.reason, source="api",
                decided_by=_user_name(user), release_after_days=data.releaseAfterDays), True)
            return JSONResponse(quarantine_store.api_record(found))

        @router.delete(f"/quarantine/{channel}{suffix}", response_model=QuarantineRecord,
                       responses={**_COMMON, **_FORBIDDEN, **not_found},
                       name=f"release_quarantine_{channel}",
                       summary=f"Release {label} (its next event is sent again)")
        async def release_quarantine(address: str = address_path(),
                                     user: Any = Depends(change_quarantine)) -> Any:
            """The record stays, `released`, so the release reaches the other instances.
            Idempotent: releasing a released address answers the same record."""
            found = await run_in_threadpool(with_connection, lambda conn: (
                quarantine_store.release(conn, channel, address, source="api",
                                         decided_by=_user_name(user))), True, 404)
            if found is None:
                raise HTTPException(404, f"{channel} address {address} is not in quarantine")
            return JSONResponse(quarantine_store.api_record(found))

    for spec in channels.all_channels():
        quarantine_routes(spec)

    # --- suppressions (one-click unsubscribes, per category) -----------------------------
    @router.get("/suppressions", response_model=SuppressionList,
                responses={**_COMMON, **_FORBIDDEN},
                summary="Addresses unsubscribed from a category (filters)")
    async def list_suppressions(
        _access: EventReadCheck = Depends(authorization.read),
        channel: Annotated[str | None, Query(
            pattern=f"^({'|'.join(channels.names())})$")] = None,
        category: Annotated[str | None, Query(max_length=64)] = None,
        status: Annotated[str, Query(pattern="^(active|removed|all)$",
                                     description="active (in force), removed, all")] = "active",
        address: Annotated[str | None, Query(max_length=320,
                                             description="Case-insensitive substring.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_LIST_OFFSET)] = 0,
    ) -> Any:
        """Newest decision first. Needs the right to read events, like the quarantine."""
        rows, total = await run_in_threadpool(with_connection, lambda conn: (
            suppression_store.list_suppressions(
                conn, channel=channel, category=category, address=address, status=status,
                limit=limit, offset=offset)))
        return JSONResponse({"items": [suppression_store.api_record(r) for r in rows],
                             "total": total, "limit": limit, "offset": offset})

    @router.delete("/suppressions/{suppression_id}", response_model=SuppressionRecord,
                   responses={**_COMMON, **_FORBIDDEN,
                              404: {"model": Problem, "description": "No such suppression."}},
                   summary="Lift a suppression (its category is sent again)")
    async def remove_suppression(suppression_id: Annotated[int, Path(ge=1)],
                                 user: Any = Depends(change_quarantine)) -> Any:
        """The record stays, `removed`, so that the decision reaches the other instances.
        Needs the right to change the quarantine. Idempotent."""
        found = await run_in_threadpool(with_connection, lambda conn: (
            suppression_store.remove(conn, suppression_id, decided_by=_user_name(user))), True)
        if found is None:
            raise HTTPException(404, f"no suppression {suppression_id}")
        return JSONResponse(suppression_store.api_record(found))

    def check_health() -> tuple[int, dict[str, Any]]:
        now = datetime.now(UTC)
        stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body: dict[str, Any] = {"checkedAt": stamp, "warningThreshold": limits.warning,
                                "alertThreshold": limits.alert}
        body.update(ageWarningSeconds=limits.age_warning, ageAlertSeconds=limits.age_alert)
        try:
            with engine().connect() as conn:
                live = instance_live(conn, thresholds=limits, now=now)
        except OperationalError:
            return 503, {"status": "error", "rtPending": None, "batchPending": None,
                         "oldestRtPendingAgeSeconds": None,
                         "oldestBatchPendingAgeSeconds": None,
                         "message": f"Error / {stamp} / execution database unavailable",
                         "relays": [], "relaysDown": [], **body}
        status = live.status
        return (503 if status == "alert" else 200), {
            "status": status, "message": live.message,
            "rtPending": live.rt_pending, "batchPending": live.batch_pending,
            "oldestRtPendingAgeSeconds": live.oldest_rt_pending_age,
            "oldestBatchPendingAgeSeconds": live.oldest_batch_pending_age,
            "relays": [relay.to_dict() for relay in live.relays],
            "relaysDown": live.relays_down, **body,
        }

    health_deps = [] if public_health else [Depends(auth)]

    @app.get("/v1/health", response_model=Health, dependencies=health_deps,
             responses={**_COMMON, 503: {"model": Health,
                                         "description": "Alert threshold reached."}},
             summary="Queue depths against the warning/alert thresholds (ACC mcPing)")
    async def health() -> Any:
        """200 while due pending real-time events stay below the alert threshold, 503 from
        it on (or when the database is unreachable)."""
        status, body = await run_in_threadpool(check_health)
        return JSONResponse(body, status_code=status)

    if webhooks is not None:
        router.include_router(webhook_router(webhooks))
    if actions is not None:
        router.include_router(actions_router(actions))
    app.include_router(router)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        schema = default_openapi()  # built once and cached by FastAPI
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("CtxValue", _CTX_VALUE)
        for name, component in _EVENT_COMPONENTS.items():
            components.setdefault(name, component)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
