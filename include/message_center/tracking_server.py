"""The tracking server: the public URLs of tracked e-mails, apart from Airflow.

A small ASGI app (Starlette, served by uvicorn: ``mc tracking-server``) with only these
routes; recipients' mail clients reach it, the Airflow UI and API need not be public:

* ``GET|HEAD /o/{token}`` - the open pixel (a 1x1 GIF);
* ``GET|HEAD /c/{token}`` - a click: 302 to the URL of that link of that message, taken
  from the message rendered again (same template version, same ctx), never from the
  request (no open redirect);
* ``GET /m/{token}`` - the mirror page: the message as it was sent, ``noindex``;
* ``GET /u/{token}`` - the unsubscribe page (a button; a GET changes nothing: prefetchers
  and scanners follow links) and ``POST /u/{token}`` - the unsubscribe itself, also the
  RFC 8058 one-click POST of mail clients.

A tampered, unknown or expired token (the message's event purged by the retention) gets
the same plain 404; nothing tells whether an address exists. Each client IP is rate
limited (a token bucket; ``X-Forwarded-For`` is read only from ``MC_TRUSTED_PROXIES``).
Hits are recorded in batches (:class:`message_center.tracking.hits.HitWriter`).
"""

from __future__ import annotations

import asyncio
import base64
import html as htmllib
import ipaddress
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from message_center import channel as channels
from message_center.db import engine_for
from message_center.delivery import suppression
from message_center.rendering import RenderError, event_variables, template_event
from message_center.tracking import options as tracking_options
from message_center.tracking.hits import Hit, HitWriter, automated_reason
from message_center.tracking.links import message_urls
from message_center.tracking.tokens import (
    CLICK,
    MIRROR,
    OPEN,
    UNSUBSCRIBE,
    Claim,
    TrackingConfig,
)

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NOT_FOUND = "Not found\n"
DEFAULT_RATE = 50.0
DEFAULT_BURST = 100
DEFAULT_SCANNER_SECONDS = 10.0
_NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer",
             "X-Content-Type-Options": "nosniff"}
_PAGE_HEADERS = {**_NO_STORE, "X-Robots-Tag": "noindex, nofollow",
                 "X-Frame-Options": "DENY",
                 "Content-Security-Policy": "default-src 'none'; img-src * data:; "
                                            "style-src 'unsafe-inline'; form-action 'self'; "
                                            "frame-ancestors 'none'; base-uri 'none'"}
_HEAD_OPEN = re.compile(r"<head\b[^>]*>", re.I)


def parse_networks(spec: str | None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``MC_TRUSTED_PROXIES``: comma-separated addresses or CIDR networks."""
    networks = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"MC_TRUSTED_PROXIES: {item!r} is not an IP address or network "
                             "(such as 10.0.0.0/8)") from None
    return tuple(networks)


@dataclass
class ServerSettings:
    """The tracking server's settings (``mc tracking-server`` reads them from the
    environment: ``MC_TRACKING_RATE``, ``MC_TRACKING_BURST``, ``MC_TRUSTED_PROXIES``,
    ``MC_TRACKING_SCANNER_SECONDS``)."""

    database_url: str
    config: TrackingConfig
    rate_per_second: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    trusted_proxies: Sequence[Any] = ()
    scanner_seconds: float = DEFAULT_SCANNER_SECONDS
    flush_seconds: float = 0.5
    flush_rows: int = 1000
    cache_seconds: float = 60.0
    cache_size: int = 10_000

    @classmethod
    def from_env(cls, database_url: str, config: TrackingConfig,
                 environ: dict[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ

        def number(name: str, default: float, low: float, high: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number; got {raw!r}") from None
            if not low <= value <= high:
                raise ValueError(f"{name} must be {low:g} to {high:g}; got {raw!r}")
            return value

        return cls(database_url=database_url, config=config,
                   rate_per_second=number("MC_TRACKING_RATE", DEFAULT_RATE, 0.1, 1e6),
                   burst=int(number("MC_TRACKING_BURST", DEFAULT_BURST, 1, 1e6)),
                   trusted_proxies=parse_networks(env.get("MC_TRUSTED_PROXIES")),
                   scanner_seconds=number("MC_TRACKING_SCANNER_SECONDS",
                                          DEFAULT_SCANNER_SECONDS, 0, 3600))


class RateLimiter:
    """A token bucket per client IP: ``rate`` hits a second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._swept = time.monotonic()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            if now - self._swept > 60:  # forget the full buckets
                full = self.burst / self.rate
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}
                self._swept = now
        return allowed


def client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[Any]) -> str:
    """The peer's address; behind trusted proxies, the nearest untrusted address of
    ``X-Forwarded-For`` (read right to left)."""
    if not trusted or not _trusted(peer, trusted):
        return peer
    chain = [part.strip() for part in (forwarded_for or "").split(",") if part.strip()]
    for address in reversed(chain):
        if not _trusted(address, trusted):
            return address
    return chain[0] if chain else peer


def _trusted(address: str, trusted: Sequence[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


@dataclass
class SentMessage:
    """What the server knows of one sent message (cached ``cache_seconds``)."""

    log_id: int
    channel: str
    address: str | None
    sent_at: datetime | None
    template: dict[str, Any]
    variables: dict[str, Any]
    loaded: float = field(default_factory=time.monotonic)
    _links: list[str] | None = None
    _mirror: dict[str, Any] | None = None

    @property
    def options(self) -> tracking_options.TrackingOptions:
        return tracking_options.from_content(self.template.get("options"))


_LOG = """
    SELECT d.id, d.event_kind, d.event_id, d.channel, d.address, d.status, d.sent_at,
           d.template_name, d.template_version
    FROM delivery_log d WHERE d.id = :id AND d.status = 'sent'
"""


def load_message(engine: Engine, log_id: int) -> SentMessage | None:
    """The sent message of delivery log ``log_id`` with its event and template version
    (None when it was not sent, or its event is gone: the token has expired)."""
    with engine.connect() as conn:
        log = conn.execute(text(_LOG), {"id": log_id}).mappings().first()
        if log is None or log["event_kind"] not in ("rt", "batch"):
            return None
        event = conn.execute(text(
            f"SELECT * FROM {log['event_kind']}_event WHERE id = :id"),
            {"id": log["event_id"]}).mappings().first()
        template = conn.execute(text(
            "SELECT * FROM published_template WHERE internal_name = :n AND version = :v"),
            {"n": log["template_name"], "v": log["template_version"]}).mappings().first()
    if event is None or template is None:
        return None
    variables = event_variables(template_event(dict(event), int(log["event_id"])))
    return SentMessage(log_id=log_id, channel=log["channel"], address=log["address"],
                       sent_at=log["sent_at"], template=dict(template), variables=variables)


class TrackingApp:
    """The routes' state: the database, the message cache, the limiter, the hit writer."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.engine = engine_for(settings.database_url)
        self.limiter = RateLimiter(settings.rate_per_second, settings.burst)
        self.writer = HitWriter(self.engine, flush_seconds=settings.flush_seconds,
                                flush_rows=settings.flush_rows)
        self._cache: OrderedDict[int, SentMessage | None] = OrderedDict()
        self._cache_times: dict[int, float] = {}
        self._lock = threading.Lock()

    # --- messages -----------------------------------------------------------------------
    async def message(self, log_id: int) -> SentMessage | None:
        now = time.monotonic()
        with self._lock:
            if log_id in self._cache and now - self._cache_times[log_id] < \
                    self.settings.cache_seconds:
                self._cache.move_to_end(log_id)
                return self._cache[log_id]
        found = await run_in_threadpool(load_message, self.engine, log_id)
        with self._lock:
            self._cache[log_id] = found
            self._cache_times[log_id] = now
            while len(self._cache) > self.settings.cache_size:
                old, _ = self._cache.popitem(last=False)
                self._cache_times.pop(old, None)
        return found

    def links(self, message: SentMessage) -> list[str]:
        """The tracked links of the message as sent (rendered again without rewriting)."""
        if message._links is None:
            spec = channels.get(message.channel)
            rendered, _ = spec.render_sent(message.template, message.variables,
                                           log_id=message.log_id, config=self.settings.config,
                                           track=False)
            message._links = message_urls(rendered.get("html"), rendered.get("text"),
                                          self.settings.config.base_url)
        return message._links

    def mirror(self, message: SentMessage) -> dict[str, Any]:
        if message._mirror is None:
            spec = channels.get(message.channel)
            rendered, _ = spec.render_sent(message.template, message.variables,
                                           log_id=message.log_id, config=self.settings.config,
                                           pixel=False)
            message._mirror = dict(rendered)
        return message._mirror

    # --- hits ---------------------------------------------------------------------------
    def record(self, method: str, user_agent: str | None, message: SentMessage, kind: str,
               link: int | None = None, url: str | None = None) -> None:
        now = datetime.now(UTC)
        after = None if message.sent_at is None else (now - message.sent_at).total_seconds()
        reason = automated_reason(method=method, user_agent=user_agent,
                                  seconds_after_sending=after if kind in ("open", "click")
                                  else None, scanner_seconds=self.settings.scanner_seconds)
        self.writer.add(Hit(log_id=message.log_id, kind=kind, at=now, link=link, url=url,
                            automated_reason=reason, user_agent=user_agent))

    def cached(self, log_id: int) -> tuple[bool, SentMessage | None]:
        """(found in the cache, the message) without waiting for the database."""
        with self._lock:
            if log_id in self._cache and time.monotonic() - self._cache_times[log_id] < \
                    self.settings.cache_seconds:
                return True, self._cache[log_id]
        return False, None

    async def claim(self, peer: str, forwarded_for: str | None, token: str, kind: str
                    ) -> tuple[Claim, SentMessage] | int:
        """The valid token's claim and message, or the status to answer (404, 429, 503)."""
        if not self.limiter.allow(client_ip(peer, forwarded_for, self.settings.trusted_proxies)):
            return 429
        claim = self.settings.config.signer.verify(token, kind)
        if claim is None:
            return 404
        hit, message = self.cached(claim.log_id)
        if not hit:
            try:
                message = await self.message(claim.log_id)
            except OperationalError:
                return 503
        if message is None:
            return 404
        return claim, message

    def click_target(self, claim: Claim, message: SentMessage) -> str | None:
        """The URL a click token may go to (None: none)."""
        links = self.links(message)
        if not 0 <= claim.link < len(links) or not claim.matches_url(links[claim.link]):
            return None
        return links[claim.link]


_STATUS_TEXT = {404: b"Not found\n", 429: b"Too many requests\n",
                503: b"Temporarily unavailable\n"}
_RAW_NO_STORE = [(b"cache-control", b"no-store, private"), (b"referrer-policy", b"no-referrer"),
                 (b"x-content-type-options", b"nosniff")]
_RAW_PIXEL = [(b"content-type", b"image/gif"), (b"content-length", str(len(PIXEL)).encode()),
              *_RAW_NO_STORE]


def status_response(status: int) -> Response:
    extra = {"Retry-After": "1" if status == 429 else "5"} if status in (429, 503) else {}
    return PlainTextResponse(_STATUS_TEXT[status].decode(), status_code=status,
                             headers={**_NO_STORE, **extra})


async def _send_raw(send: Any, status: int, headers: list[tuple[bytes, bytes]],
                    body: bytes, head: bool) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def not_found() -> Response:
    return PlainTextResponse(NOT_FOUND, status_code=404, headers=_NO_STORE)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        "<meta name=\"robots\" content=\"noindex, nofollow\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{htmllib.escape(title)}</title></head>"
        "<body style=\"font-family: Arial, sans-serif; max-width: 40em; margin: 3em auto; "
        f"padding: 0 1em;\">{body}</body></html>", status_code=status, headers=_PAGE_HEADERS)


def create_app(settings: ServerSettings) -> Starlette:
    state = TrackingApp(settings)

    async def found_for(request: Request, kind: str) -> tuple[Claim, SentMessage] | Response:
        found = await state.claim(request.client.host if request.client else "unknown",
                                  request.headers.get("x-forwarded-for"),
                                  request.path_params["token"], kind)
        return status_response(found) if isinstance(found, int) else found

    def agent(request: Request) -> str | None:
        return request.headers.get("user-agent")

    async def mirror(request: Request) -> Response:
        found = await found_for(request, MIRROR)
        if isinstance(found, Response):
            return found
        _claim, message = found
        if not message.options.mirror_page:
            return not_found()
        try:
            rendered = await run_in_threadpool(state.mirror, message)
        except (RenderError, ValueError):
            return not_found()
        state.record(request.method, agent(request), message, "mirror")
        html = rendered.get("html")
        if html is None:
            text_part = htmllib.escape(rendered.get("text") or "")
            return _page(rendered.get("subject") or "Message",
                         f"<pre style=\"white-space: pre-wrap;\">{text_part}</pre>")
        robots = '<meta name="robots" content="noindex, nofollow">'
        head = _HEAD_OPEN.search(html)
        html = (html[:head.end()] + robots + html[head.end():]) if head else robots + html
        return HTMLResponse(html, headers=_PAGE_HEADERS)

    async def unsubscribe(request: Request) -> Response:
        found = await found_for(request, UNSUBSCRIBE)
        if isinstance(found, Response):
            return found
        _claim, message = found
        category = message.options.unsubscribe_category
        if not category or not message.address:
            return not_found()
        if request.method == "GET":
            return _page("Unsubscribe", (
                f"<h1>Unsubscribe</h1><p>Stop receiving messages of the kind "
                f"<strong>{htmllib.escape(category)}</strong>?</p>"
                "<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" "
                "value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>"))
        await request.body()  # RFC 8058: List-Unsubscribe=One-Click (any body is accepted)

        def suppress() -> None:
            with state.engine.begin() as conn:
                suppression.suppress(conn, message.channel, message.address or "", category,
                                     source="unsubscribe", delivery_log_id=message.log_id)

        try:
            await run_in_threadpool(suppress)
        except OperationalError:
            return PlainTextResponse("Temporarily unavailable\n", status_code=503,
                                     headers={"Retry-After": "5", **_NO_STORE})
        state.record(request.method, agent(request), message, "unsubscribe")
        return _page("Unsubscribed", "<h1>You are unsubscribed</h1><p>You will no longer "
                     f"receive messages of the kind <strong>{htmllib.escape(category)}"
                     "</strong>.</p>")

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        state.writer.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.writer.stop)

    pages = Starlette(routes=[
        Route("/m/{token}", mirror, methods=["GET"]),
        Route("/u/{token}", unsubscribe, methods=["GET", "POST"]),
    ], lifespan=lifespan)
    pages.state.tracking = state

    async def plain_404(_request: Request, _exc: Exception) -> Response:
        return not_found()

    pages.add_exception_handler(404, plain_404)
    pages.add_exception_handler(405, plain_404)

    async def hot(scope: Any, send: Any) -> None:
        """The open pixel and the click redirect, answered without a framework: they are
        most of the traffic (a GIF or a 302, precomputed headers)."""
        path, method = scope["path"], scope["method"]
        kind = OPEN if path[1] == "o" else CLICK
        headers = {name: value for name, value in scope["headers"]
                   if name in (b"user-agent", b"x-forwarded-for")}
        forwarded = headers.get(b"x-forwarded-for")
        user_agent = headers.get(b"user-agent")
        client = scope.get("client")
        found = await state.claim(client[0] if client else "unknown",
                                  forwarded.decode("latin-1") if forwarded else None,
                                  path[3:], kind)
        head = method == "HEAD"
        if isinstance(found, int):
            extra = [(b"retry-after", b"1" if found == 429 else b"5")] if found != 404 else []
            body = _STATUS_TEXT[found]
            await _send_raw(send, found, [(b"content-type", b"text/plain; charset=utf-8"),
                                          (b"content-length", str(len(body)).encode()),
                                          *_RAW_NO_STORE, *extra], body, head)
            return
        claim, message = found
        agent_text = user_agent.decode("latin-1") if user_agent else None
        if kind == OPEN:
            state.record(method, agent_text, message, "open")
            await _send_raw(send, 200, _RAW_PIXEL, PIXEL, head)
            return
        try:
            url = (state.click_target(claim, message) if message._links is not None
                   else await run_in_threadpool(state.click_target, claim, message))
        except (RenderError, ValueError):
            url = None
        if url is None:
            body = _STATUS_TEXT[404]
            await _send_raw(send, 404, [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode()),
                                        *_RAW_NO_STORE], body, head)
            return
        state.record(method, agent_text, message, "click", link=claim.link, url=url)
        location = quote(url, safe=":/%#?=@[]!$&'()*+,;~")  # as Starlette's redirect does
        await _send_raw(send, 302, [(b"location", location.encode("latin-1")),
                                    (b"content-length", b"0"), *_RAW_NO_STORE], b"", head)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (path[:3] in ("/o/", "/c/") and len(path) > 3 and "/" not in path[3:]
                and scope["method"] in ("GET", "HEAD")):
            await hot(scope, send)
            return
        await pages(scope, receive, send)

    app.state = pages.state  # type: ignore[attr-defined]
    return app  # type: ignore[return-value]
