"""A real webhook receiver for the tests: an aiohttp server on loopback, in a thread,
that verifies every request with the ``standardwebhooks`` library (as a receiver would)
and answers what the test says (a status, after a delay)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy import Engine, text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from mc_airflow.webhooks import FernetBox
from message_center import webhook_outbox
from message_center.net_guard import WEBHOOK_ALLOWED_HOSTS, HostList
from message_center.webhooks import store
from message_center.webhooks.dispatcher import Dispatcher, DispatchSettings
from message_center.webhooks.model import EVENT_NAMES, parse_subscription

LOOPBACK = HostList.parse("127.0.0.1", WEBHOOK_ALLOWED_HOSTS)
QUICK = DispatchSettings(schedule=(0.05, 0.05, 0.05, 0.05), jitter=0.0, timeout=10,
                         poll_seconds=0.1, refresh_seconds=0.2)


@dataclass
class Received:
    webhook_id: str
    body: dict[str, Any]
    verified: bool
    at: float
    headers: dict[str, str]


@dataclass
class Receiver:
    """``answer(request_number) -> (status, delay seconds, headers)``; ``secret`` set by
    the test once the subscription exists (requests before that count as unverified)."""

    path: str = "/hook"
    answer: Callable[[int], tuple[int, float, dict[str, str]]] = lambda n: (200, 0.0, {})
    secret: str | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = False
        if self.secret:
            try:
                Webhook(self.secret).verify(raw, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        number = len(self.received)
        status, delay, extra = self.answer(number)
        if delay:
            await asyncio.sleep(delay)
        self.received.append(Received(headers.get("webhook-id", ""), json.loads(raw),
                                      verified, time.monotonic(), headers))
        return web.Response(status=status, text="ok" if status < 300 else "no", headers=extra)

    def start(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post(self.path, self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.received]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        """Wait until ``condition()`` (no timed assert: the timeout only ends a hang)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not received in {timeout} s: {self.received[-5:]}")
            time.sleep(0.05)


def add_subscription(engine: Engine, url: str, events: list[str], *, secret_enc: str = "x",
                     event_types: list[str] | None = None, sub_id: str = "wh_test",
                     max_in_flight: int | None = None) -> str:
    """A subscription row written straight into a database (the outbox tests; the API
    tests create theirs through the API)."""
    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO webhook_subscription (id, url, events, event_types, secret_enc,
                                              max_in_flight)
            VALUES (:id, :url, :events, :types, :secret, :cap)
        """), {"id": sub_id, "url": url, "events": events, "types": event_types or [],
               "secret": secret_enc, "cap": max_in_flight})
    webhook_outbox.forget()
    return sub_id


def subscribe(engine: Engine, url: str, events: Any = EVENT_NAMES, hosts: HostList = LOOPBACK,
              *, max_in_flight: int | None = None) -> tuple[str, str]:
    """A subscription through the real validation and store (on the execution database,
    as the copy from the control instance leaves it). Returns (id, secret)."""
    body = {"url": url, "events": list(events), "maxInFlight": max_in_flight}
    change = parse_subscription(body, hosts=hosts, creating=True)
    with engine.begin() as conn:
        row, secret = store.create(conn, change, box=FernetBox(), created_by="test")
    webhook_outbox.forget()
    return row["id"], secret


@contextmanager
def dispatching(engine: Engine, settings: DispatchSettings = QUICK,
                hosts: HostList = LOOPBACK) -> Iterator[Dispatcher]:
    """The real dispatcher in a thread while the block runs."""
    stop = threading.Event()
    dispatcher = Dispatcher(engine, settings, FernetBox(), hosts, should_stop=stop.is_set)
    thread = threading.Thread(target=lambda: asyncio.run(dispatcher.run(600)), daemon=True)
    thread.start()
    try:
        yield dispatcher
    finally:
        stop.set()
        thread.join(60)


def outbox(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT * FROM webhook_outbox ORDER BY id")).mappings()]
