"""Delivery-status webhooks: status change -> webhook received at a local receiver.

* **throughput** - ``webhook_changes`` batch events get their final status from
  updateEventStatus (one statement per batch writes the outbox too), while the dispatcher
  (:mod:`message_center.webhooks.dispatcher`, in this process, caps raised to 64 in flight
  and no rate limit) sends them, signed, to a receiver in its own process
  (:mod:`bench.webhook_receiver`); figure = changes / seconds from the status copy's start
  to the last webhook received. Bare limit: a loop of the same number of posts signed with
  ``standardwebhooks`` (64 in flight, one aiohttp session, no database) to the same
  receiver.
* **cost on the delivery** - render + deliver of ``deliver_messages`` real-time-style
  (status copied at once, ``copy_status=True``) to the null SMTP sink with webhooks off
  (no subscription: the outbox statement is not even built) and on (one subscription to
  every event: each recorded outcome writes its outbox row in the same statement).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime

import httpx
from sqlalchemy import text

from bench.core import (
    Context,
    Managed,
    Result,
    free_port,
    log,
    planned_rows,
    stopwatch,
    wait_for_port,
)
from bench.data import insert_events, insert_final_delivery_logs
from bench.pipeline import FROM, _prepare_linked
from message_center import webhook_outbox
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.net_guard import WEBHOOK_ALLOWED_HOSTS, HostList
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.status_sync import sync_event_statuses
from message_center.webhooks.dispatcher import Dispatcher, DispatchSettings
from message_center.webhooks.model import EVENT_NAMES, new_secret, signed_headers

IN_FLIGHT = 64


class _PlainBox:
    """The bench stores its one secret as it is (the Fernet box is Airflow's; its cost is
    one decrypt per dispatcher start, not per message)."""

    def encrypt(self, value: str) -> str:
        return value

    def decrypt(self, value: str) -> str:
        return value


def _subscribe(ctx: Context, url: str, secret: str) -> None:
    with ctx.engine().begin() as conn:
        conn.execute(text("""
            INSERT INTO webhook_subscription (id, url, events, secret_enc, max_in_flight,
                                              rate_per_second)
            VALUES ('wh_bench', :url, :events, :secret, :cap, 1000000)
        """), {"url": url, "events": list(EVENT_NAMES), "secret": secret, "cap": IN_FLIGHT})
    webhook_outbox.forget()


def _received(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/count", timeout=10).json()["count"])


def _reset(port: int) -> None:
    httpx.post(f"http://127.0.0.1:{port}/reset", timeout=10)


async def _bare(url: str, secret: str, count: int) -> float:
    import aiohttp

    body = json.dumps({"type": "event.sent", "timestamp": "2026-01-01T00:00:00.000Z",
                       "data": {"id": 1, "externalId": "x", "status": "sent"}}).encode()
    semaphore = asyncio.Semaphore(IN_FLIGHT)
    async with aiohttp.ClientSession() as session:
        async def one(n: int) -> None:
            async with semaphore:
                headers = signed_headers(f"msg_{n}", body, [secret], datetime.now(UTC))
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        return count / (time.perf_counter() - started)


def _throughput(ctx: Context, port: int, count: int) -> tuple[float, str]:
    engine = ctx.engine()
    ctx.reset_execution()
    secret = new_secret()
    url = f"http://127.0.0.1:{port}/hook"
    _subscribe(ctx, url, secret)
    log(f"webhooks: {count:,} batch events to a final status")
    insert_events(engine, "batch", count)
    split_queue(engine, "batch", ProcessingSettings(routing_batch_size=50_000,
                                                     max_events_per_run=count))
    insert_final_delivery_logs(engine, "batch", spread_seconds=60)
    ctx.vacuum("batch_event", "delivery_log")
    _reset(port)
    stop = threading.Event()
    settings = DispatchSettings(max_in_flight=IN_FLIGHT, rate_per_second=1e6, batch=2000,
                                poll_seconds=0.2, refresh_seconds=1.0)
    dispatcher = Dispatcher(engine, settings, _PlainBox(),
                            HostList.parse("127.0.0.1", WEBHOOK_ALLOWED_HOSTS),
                            should_stop=stop.is_set)
    thread = threading.Thread(target=lambda: asyncio.run(dispatcher.run(3600)), daemon=True)
    thread.start()
    time.sleep(2.0)  # the dispatcher reads its subscriptions and listens
    started = time.perf_counter()
    with stopwatch() as copy_elapsed:
        stats = sync_event_statuses(engine)
    copy_seconds = copy_elapsed()
    deadline = time.monotonic() + max(600.0, count / 50)
    got = 0
    while time.monotonic() < deadline:
        got = _received(port)
        if got >= count:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    stop.set()
    thread.join(60)
    with engine.connect() as conn:
        waiting = conn.execute(text("SELECT count(*) FROM webhook_outbox "
                                    "WHERE status <> 'delivered'")).scalar()
    note = (f"{got:,} of {count:,} received ({stats.total:,} statuses copied in "
            f"{copy_seconds:.2f}s with their outbox rows), {waiting} not delivered; "
            f"dispatcher {IN_FLIGHT} in flight, one endpoint")
    return got / seconds, note


def _deliver_rate(ctx: Context, count: int, webhooks: bool) -> float:
    claim, settings = _prepare_linked(ctx, count)
    if webhooks:
        _subscribe(ctx, "https://93.184.215.14/hook", new_secret())
    else:
        webhook_outbox.forget()
    engine = ctx.engine()
    channels = Channels(SmtpSettings(host="127.0.0.1", port=ctx.null_smtp_port,
                                     from_email=FROM), None, kind="batch")
    with channels, stopwatch() as elapsed:
        stats = deliver_shard(engine, claim, settings, channels, copy_status=True)
    return stats.sent / elapsed()


def webhooks(ctx: Context) -> list[Result]:
    count = ctx.sizes.webhook_changes
    port = free_port()
    receiver = Managed("webhook receiver", [sys.executable, "-m", "bench.webhook_receiver",
                                            str(port)], dict(os.environ),
                       ctx.work_dir / "webhook-receiver.log")
    rows = planned_rows(ctx.sizes)["webhooks"]
    try:
        wait_for_port(port, receiver.process, what="webhook receiver")
        rate, note = _throughput(ctx, port, count)
        _reset(port)
        log(f"webhooks: bare loop of {count:,} signed posts")
        bare = asyncio.run(_bare(f"http://127.0.0.1:{port}/hook", new_secret(), count))
    finally:
        receiver.stop()
    ctx.ensure_sinks()
    messages = ctx.sizes.deliver_messages
    log(f"webhooks: render + deliver {messages:,} messages, webhooks off then on")
    off = _deliver_rate(ctx, messages, webhooks=False)
    on = _deliver_rate(ctx, messages, webhooks=True)
    with ctx.engine().connect() as conn:
        written = conn.execute(text("SELECT count(*) FROM webhook_outbox")).scalar()
    ctx.reset_execution()
    (throughput_figure, throughput_target), (cost_figure, cost_target) = rows
    return [
        Result(throughput_figure, throughput_target, rate, "webhooks/s",
               rate >= 5_000 and rate >= bare / 2, bare,
               f"bare loop of signed posts, {IN_FLIGHT} in flight", note=note),
        Result(cost_figure, cost_target, on, "msg/s", on >= 0.9 * off, off,
               "webhooks off", note=f"{messages:,} messages to the null SMTP sink, one shard, "
                                    f"status copied at once; {written:,} outbox rows written "
                                    "with webhooks on"),
    ]
