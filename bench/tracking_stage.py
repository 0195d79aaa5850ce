"""Tracking: the tracking server under 64 concurrent clients (open pixel, click redirect)
next to a bare ASGI app returning the same bytes on the same server (uvicorn, one worker),
and render + deliver with tracking on vs off.

The clients are 4 processes of 16 threads, each with its own keep-alive connection
(``http.client``), spread over 200 sent messages. The tracking server runs as ``make run``
starts it (``mc tracking-server``), with the per-IP rate limit raised to 1,000,000 hits/s
(``MC_TRACKING_RATE``, ``MC_TRACKING_BURST``): every client is 127.0.0.1, the default 50/s
would measure the limiter. Both servers share the 2 cores with the clients.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import text

from bench.core import Context, Result, free_port, log, percentile, planned_rows, wait_for_port
from bench.pipeline import _deliver, configure_tracking
from message_center import channel as channels
from message_center.tracking import tokens
from message_center.tracking.links import tracked_links
from message_center.tracking_server import PIXEL, load_message

CLIENTS, PROCESSES = 64, 4
MESSAGES = 200
LIMIT = 1_000_000

BARE_APP = f"""
import uvicorn
PIXEL = {PIXEL!r}
HEADERS = [(b"content-type", b"image/gif"), (b"content-length", str(len(PIXEL)).encode()),
           (b"cache-control", b"no-store, private")]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": HEADERS}})
    await send({{"type": "http.response.body", "body": PIXEL}})

uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_level="warning",
            access_log=False, server_header=False)
"""


def _client_process(port: int, paths: list[str], threads: int, seconds: float,
                    expect: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    start_at = time.monotonic() + 0.5
    stop_at = start_at + seconds

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        bad = 0
        index = offset
        while time.monotonic() < start_at:
            time.sleep(0.001)
        while time.monotonic() < stop_at:
            path = paths[index % len(paths)]
            index += 1
            began = time.perf_counter()
            try:
                conn.request("GET", path, headers={"User-Agent": "Mozilla/5.0 (X11; Linux) "
                                                   "bench"})
                response = conn.getresponse()
                response.read()
                if response.status != expect:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            mine.append(time.perf_counter() - began)
        conn.close()
        with lock:
            latencies.extend(mine)
            failures[0] += bad

    pool = [threading.Thread(target=worker, args=(i * 7,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put((latencies, failures[0]))


def _load(port: int, paths: list[str], seconds: float, expect: int) -> tuple[float, float, int]:
    """(hits/s, p99 ms, failures) of 64 clients for ``seconds``."""
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    spawn = multiprocessing.get_context("fork")
    procs = [spawn.Process(target=_client_process,
                           args=(port, paths[i::PROCESSES] or paths, CLIENTS // PROCESSES,
                                 seconds, expect, queue)) for i in range(PROCESSES)]
    for proc in procs:
        proc.start()
    latencies: list[float] = []
    failures = 0
    for _ in procs:
        got, bad = queue.get(timeout=seconds + 120)
        latencies.extend(got)
        failures += bad
    for proc in procs:
        proc.join(30)
    if not latencies:
        raise RuntimeError(f"no request answered on port {port}")
    return len(latencies) / seconds, percentile(latencies, 99) * 1000, failures


def _tracked_paths(ctx: Context) -> tuple[list[str], list[str]]:
    """Open and click paths of up to 200 messages sent with tracking on."""
    config = tokens.current()
    engine = ctx.engine()
    with engine.connect() as conn:
        ids = list(conn.execute(text(
            "SELECT id FROM delivery_log WHERE status = 'sent' ORDER BY id LIMIT :n"),
            {"n": MESSAGES}).scalars())
    if not ids:
        raise RuntimeError("no sent message to track")
    opens, clicks = [], []
    for log_id in ids:
        message = load_message(engine, log_id)
        if message is None:
            continue
        rendered, _ = channels.get(message.channel).render_sent(
            message.template, message.variables, log_id=log_id, config=config, track=False)
        link = tracked_links(rendered["html"] or "", config.base_url)[0]
        opens.append(f"/o/{config.signer.sign(tokens.OPEN, log_id)}")
        clicks.append(f"/c/{config.signer.sign(tokens.CLICK, log_id, 0, link.url)}")
    return opens, clicks


def tracking(ctx: Context) -> list[Result]:
    count = ctx.sizes.deliver_messages
    seconds = ctx.sizes.tracking_seconds
    configure_tracking(ctx)
    ctx.ensure_sinks()
    null_port = ctx.smtp_sink_port or ctx.null_smtp_port
    engine = ctx.engine()
    with engine.connect() as conn:
        saved = conn.execute(text(
            "SELECT id, options, html_body, text_body FROM published_template "
            "WHERE internal_name = 'orderConfirmed' "
            "AND active ORDER BY version DESC LIMIT 1")).one()
    if not saved.options:
        raise RuntimeError("the demo template orderConfirmed does not track (publish it)")
    try:
        with engine.begin() as conn:  # off: no options, the mirror link a plain URL
            conn.execute(text(
                "UPDATE published_template SET options = NULL, "
                "html_body = replace(html_body, '{{ mirror_url }}', :plain), "
                "text_body = replace(text_body, '{{ mirror_url }}', :plain) WHERE id = :id"),
                {"id": saved.id, "plain": "https://shop.example/view"})
        log(f"tracking: render + deliver {count:,} messages, tracking off")
        off_rate, _, off_cpu = _deliver(ctx, count, null_port)
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE published_template SET options = CAST(:o AS jsonb), "
                              "html_body = :html, text_body = :text WHERE id = :id"),
                         {"id": saved.id, "o": json.dumps(saved.options),
                          "html": saved.html_body, "text": saved.text_body})
    log(f"tracking: render + deliver {count:,} messages, tracking on")
    on_rate, stats, on_cpu = _deliver(ctx, count, null_port)
    opens, clicks = _tracked_paths(ctx)

    port = free_port()
    env = {**ctx.airflow_env(), "MC_TRACKING_RATE": str(LIMIT), "MC_TRACKING_BURST": str(LIMIT)}
    mc = str(Path(sys.executable).parent / "mc")
    server = ctx.start("tracking_server", [mc, "tracking-server", "--profile",
                                           ctx.deployment.profile, "--port", str(port)], env)
    wait_for_port(port, server.process, what="tracking server")
    bare_port = free_port()
    bare = ctx.start("bare_asgi", [sys.executable, "-c", BARE_APP, str(bare_port)])
    wait_for_port(bare_port, bare.process, what="bare ASGI app")
    try:
        _load(port, opens, min(seconds, 2.0), 200)  # warm-up: imports, caches
        log(f"tracking: open pixel, {CLIENTS} clients, {seconds:g}s")
        open_rate, open_p99, open_bad = _load(port, opens, seconds, 200)
        log(f"tracking: click redirect, {CLIENTS} clients, {seconds:g}s")
        click_rate, click_p99, click_bad = _load(port, clicks, seconds, 302)
        log(f"tracking: bare ASGI app, {CLIENTS} clients, {seconds:g}s")
        _load(bare_port, ["/"], min(seconds, 2.0), 200)
        bare_rate, bare_p99, _ = _load(bare_port, ["/"], seconds, 200)
    finally:
        ctx.stop("bare_asgi")
        ctx.stop("tracking_server")  # flushes its last batch
    with engine.connect() as conn:
        written = conn.execute(text("SELECT count(*) FROM tracking_log")).scalar_one()
    ctx.reset_execution()
    tokens.configure(None)
    rows = planned_rows(ctx.sizes)["tracking"]
    note = (f"{CLIENTS} clients ({PROCESSES} processes x {CLIENTS // PROCESSES} threads, "
            f"keep-alive) over {len(opens)} messages, {seconds:g}s each; rate limit raised to "
            f"{LIMIT:,}/s per IP for the run (default 50/s, bursts of 100); {written:,} hits "
            "written in batches; bare = a uvicorn ASGI app returning the same GIF bytes")
    if open_bad or click_bad:
        note += f"; {open_bad} pixel and {click_bad} click answers were not 200/302"
    deliver_note = (f"{count:,} messages, one shard, to the null sink: {on_rate:,.0f}/s "
                    f"with tracking vs {off_rate:,.0f}/s without "
                    f"({on_rate / max(off_rate, 1e-9):.0%}; off: no options, the mirror link "
                    "a plain URL); "
                    f"on: {on_cpu}; off: {off_cpu}; sent {stats.get('sent', 0):,}")
    return [
        Result(rows[0][0], rows[0][1], open_rate, "hits/s", open_rate >= 2000 and not open_bad,
               bare_rate, "bare ASGI app, same bytes", note=note),
        Result(rows[1][0], rows[1][1], open_p99, "ms", open_p99 <= 50, bare_p99,
               "bare ASGI app", higher_is_better=False),
        Result(rows[2][0], rows[2][1], click_rate, "hits/s",
               click_rate >= 2000 and not click_bad, bare_rate, "bare ASGI app, same bytes",
               note=f"click p99 {click_p99:.1f} ms"),
        Result(rows[3][0], rows[3][1], on_rate, "msg/s", on_rate >= 0.85 * off_rate, off_rate,
               "same shard, tracking off", note=deliver_note),
    ]
