"""Tracking: the tracking server under 64 concurrent clients (open pixel, click redirect)
next to a bare ASGI app returning the same bytes on the same server (uvicorn, one worker);
render + deliver with tracking on vs off; archiving with tracking logs vs without.

The clients are 64 keep-alive connections on 2 processes (asyncio on uvloop, raw HTTP/1.1,
one request at a time per connection), spread over up to 200 sent messages: a client that
costs little CPU, so that the cores go to the server measured (a thread per client with
``http.client`` measured the clients: the bare app reached 2,300 answers/s with it and
10,000-35,000 with these). The tracking server runs as ``make run`` starts it (``mc
tracking-server``), with the per-IP rate limit raised to 1,000,000 hits/s
(``MC_TRACKING_RATE``, ``MC_TRACKING_BURST``): every client is 127.0.0.1, the default 50/s
would measure the limiter. The servers, PostgreSQL and the clients share the cores; the
note gives the load average of the machine during the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from bench.core import (
    Context,
    Result,
    free_port,
    log,
    percentile,
    planned_rows,
    stopwatch,
    wait_for_port,
)
from bench.data import insert_events, insert_final_delivery_logs
from bench.pipeline import _deliver, configure_tracking
from mc_local.supervisor import session_members
from message_center import archiving
from message_center import channel as channels
from message_center.tracking import tokens
from message_center.tracking.links import tracked_links
from message_center.tracking_server import DEFAULT_BURST, DEFAULT_RATE, PIXEL, load_message

CLIENTS, PROCESSES = 64, 2
AGENT = "Mozilla/5.0 (X11; Linux x86_64) bench"
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
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


async def _connection(port: int, requests: list[bytes], offset: int, start_at: float,
                      stop_at: float, expect: int, latencies: list[float],
                      failures: list[int]) -> None:
    """One keep-alive client: a request, its whole answer, the next (no pipelining)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = offset
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    try:
        while time.monotonic() < stop_at:
            request = requests[index % len(requests)]
            index += 1
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            found = _LENGTH.search(head)
            if found and int(found.group(1)):
                await reader.readexactly(int(found.group(1)))
            latencies.append(time.perf_counter() - began)
            if int(head[9:12]) != expect:
                failures[0] += 1
    except (OSError, asyncio.IncompleteReadError):
        failures[0] += 1
    finally:
        writer.close()


def _client_process(port: int, paths: list[str], clients: int, offset: int, seconds: float,
                    expect: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """``clients`` connections on one event loop (uvloop): a client that costs little
    CPU, so that the 2 cores go to the server being measured."""
    requests = [(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {AGENT}\r\n"
                 "Accept: */*\r\n\r\n").encode() for path in paths]
    latencies: list[float] = []
    failures = [0]

    async def main() -> None:
        start_at = time.monotonic() + 0.5
        await asyncio.gather(*(
            _connection(port, requests, offset + i * 7, start_at, start_at + seconds, expect,
                        latencies, failures) for i in range(clients)))

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(main())
    out.put((latencies, failures[0]))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a server started in its own session: the
    process and every member of its session (uvicorn's worker processes)."""
    total = 0.0
    for member in {pid, *session_members(pid)}:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Load:
    """What one load run measured."""

    rate: float  # answers/s
    p50: float  # ms
    p99: float  # ms
    failures: int
    cpu_per_hit: float  # ms of the server process's CPU per answer


def _load(port: int, paths: list[str], seconds: float, expect: int, server_pid: int) -> Load:
    """64 clients (``PROCESSES`` processes) for ``seconds`` against one server."""
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    spawn = multiprocessing.get_context("fork")
    per = CLIENTS // PROCESSES
    procs = [spawn.Process(target=_client_process,
                           args=(port, paths[i::PROCESSES] or paths, per, i, seconds,
                                 expect, queue)) for i in range(PROCESSES)]
    cpu_before = _cpu_seconds(server_pid)
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
    cpu = _cpu_seconds(server_pid) - cpu_before
    if not latencies:
        raise RuntimeError(f"no request answered on port {port}")
    return Load(len(latencies) / seconds, percentile(latencies, 50) * 1000,
                percentile(latencies, 99) * 1000, failures,
                cpu / len(latencies) * 1000)


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


def _archiving(ctx: Context) -> tuple[float, float, str]:
    """rows/s of one account's archiving with and without tracking logs (an open and a
    click per sent message), the same events and delivery logs."""
    count = max(ctx.sizes.archive_events // 5, 200)
    engine = ctx.engine()
    ctx.reset_execution()
    insert_events(engine, "batch", count, status="pending_delivery", spread_seconds=3000)
    insert_final_delivery_logs(engine, "batch", spread_seconds=3000)
    ctx.vacuum("batch_event", "delivery_log")

    def run() -> tuple[float, int]:
        ctx.reset_archive()
        end = datetime.now(UTC) + timedelta(minutes=1)
        with stopwatch() as elapsed:
            report = archiving.archive_window(ctx.url("execution"), ctx.url("control"), 0,
                                              end - timedelta(hours=2), end)
        return elapsed(), sum(c.read for c in report.counts.values())

    without_seconds, without_rows = run()
    with engine.begin() as conn:
        hits = conn.execute(text("""
            INSERT INTO tracking_log (delivery_log_id, event_kind, event_id, template_name,
                template_version, sent_at, kind, link, url, at, automated, user_agent)
            SELECT d.id, d.event_kind, d.event_id, d.template_name, d.template_version,
                   d.sent_at, k.kind, k.link, k.url, d.sent_at + interval '5 minutes',
                   false, 'Mozilla/5.0 (X11; Linux x86_64) bench'
            FROM delivery_log d CROSS JOIN (VALUES ('open', NULL::int, NULL::text),
                ('click', 0, 'https://shop.example/orders')) AS k(kind, link, url)
            WHERE d.status = 'sent'
        """)).rowcount
    ctx.vacuum("tracking_log")
    with_seconds, with_rows = run()
    ctx.reset_execution()
    ctx.reset_archive()
    note = (f"{count:,} batch events: {without_rows:,} rows (events + delivery logs) in "
            f"{without_seconds:.2f}s without tracking logs; {with_rows:,} rows with "
            f"{hits:,} tracking logs in {with_seconds:.2f}s "
            f"({with_seconds / max(without_seconds, 1e-9):.2f}x the time for "
            f"{with_rows / max(without_rows, 1):.2f}x the rows)")
    return with_rows / with_seconds, without_rows / without_seconds, note


def _two_workers(ctx: Context, mc: str, env: dict[str, str], opens: list[str],
                 clicks: list[str]) -> tuple[Load, Load]:
    """The open pixel and the click with ``mc tracking-server --workers 2``."""
    seconds = ctx.sizes.tracking_seconds
    port = free_port()
    server = ctx.start("tracking_server_2", [mc, "tracking-server", "--profile",
                                             ctx.deployment.profile, "--port", str(port),
                                             "--workers", "2"], env)
    try:
        wait_for_port(port, server.process, what="tracking server (2 workers)")
        _load(port, opens, min(seconds, 2.0), 200, server.pid)
        _load(port, clicks, min(seconds, 2.0), 302, server.pid)
        log(f"tracking: open pixel, 2 workers, {CLIENTS} clients, {seconds:g}s")
        open_two = _load(port, opens, seconds, 200, server.pid)
        log(f"tracking: click redirect, 2 workers, {CLIENTS} clients, {seconds:g}s")
        click_two = _load(port, clicks, seconds, 302, server.pid)
    finally:
        ctx.stop("tracking_server_2")
    return open_two, click_two


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
                                           ctx.deployment.profile, "--port", str(port),
                                           "--workers", "1"], env)
    wait_for_port(port, server.process, what="tracking server")
    bare_port = free_port()
    bare = ctx.start("bare_asgi", [sys.executable, "-c", BARE_APP, str(bare_port)])
    wait_for_port(bare_port, bare.process, what="bare ASGI app")
    try:
        _load(port, opens, min(seconds, 2.0), 200, server.pid)  # warm-up: imports, caches
        _load(port, clicks, min(seconds, 2.0), 302, server.pid)
        _load(bare_port, ["/"], min(seconds, 2.0), 200, bare.pid)
        log(f"tracking: bare ASGI app, {CLIENTS} clients, {seconds:g}s")
        bare_load = _load(bare_port, ["/"], seconds, 200, bare.pid)
        log(f"tracking: open pixel, {CLIENTS} clients, {seconds:g}s")
        open_load = _load(port, opens, seconds, 200, server.pid)
        log(f"tracking: click redirect, {CLIENTS} clients, {seconds:g}s")
        click_load = _load(port, clicks, seconds, 302, server.pid)
    finally:
        ctx.stop("bare_asgi")
        ctx.stop("tracking_server")  # flushes its last batch
    two = _two_workers(ctx, mc, env, opens, clicks) if ctx.sizes.tracking_two_workers \
        else None
    with engine.connect() as conn:
        written = conn.execute(text("SELECT count(*) FROM tracking_log")).scalar_one()
    load_average = os.getloadavg()
    ctx.reset_execution()
    tokens.configure(None)
    log("tracking: archiving with and without tracking logs")
    archive_rate, archive_bare, archive_note = _archiving(ctx)
    rows = planned_rows(ctx.sizes)["tracking"]

    def figures(load: Load) -> str:
        return (f"{load.rate:,.0f} hits/s, p50 {load.p50:.1f} ms, p99 {load.p99:.1f} ms, "
                f"server CPU {load.cpu_per_hit:.3f} ms/hit")

    note = (f"{CLIENTS} keep-alive clients ({PROCESSES} client processes on asyncio/uvloop, "
            f"one request at a time per connection) over {len(opens)} messages, {seconds:g}s "
            f"each; rate limit raised to {LIMIT:,}/s per IP for the run (default "
            f"{DEFAULT_RATE:g}/s, bursts of {DEFAULT_BURST}: every client is 127.0.0.1); "
            f"{written:,} hits written in batches; open pixel: {figures(open_load)}; click: "
            f"{figures(click_load)}; bare = a uvicorn ASGI app returning the same GIF bytes: "
            f"{figures(bare_load)}; "
            + (f"with --workers 2 (MC_TRACKING_WORKERS): open pixel {figures(two[0])}, "
               f"click {figures(two[1])}; " if two else "")
            + "load average during the run "
            f"{load_average[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    bad = open_load.failures + click_load.failures
    if bad:
        note += (f"; {open_load.failures} pixel and {click_load.failures} click answers "
                 "were not 200/302")
    deliver_note = (f"{count:,} messages, one shard, to the null sink: {on_rate:,.0f}/s "
                    f"with tracking vs {off_rate:,.0f}/s without "
                    f"({on_rate / max(off_rate, 1e-9):.0%}; off: no options, the mirror link "
                    "a plain URL); "
                    f"on: {on_cpu}; off: {off_cpu}; sent {stats.get('sent', 0):,}")
    return [
        Result(rows[0][0], rows[0][1], open_load.rate, "hits/s",
               open_load.rate >= 2000 and not open_load.failures, bare_load.rate,
               "bare ASGI app, same bytes", note=note),
        Result(rows[1][0], rows[1][1], open_load.p99, "ms", open_load.p99 <= 50, bare_load.p99,
               "bare ASGI app", higher_is_better=False),
        Result(rows[2][0], rows[2][1], click_load.rate, "hits/s",
               click_load.rate >= 2000 and not click_load.failures, bare_load.rate,
               "bare ASGI app, same bytes"),
        Result(rows[3][0], rows[3][1], click_load.p99, "ms", click_load.p99 <= 50,
               bare_load.p99, "bare ASGI app", higher_is_better=False),
        Result(rows[4][0], rows[4][1], on_rate, "msg/s", on_rate >= 0.85 * off_rate, off_rate,
               "same shard, tracking off", note=deliver_note),
        Result(rows[5][0], rows[5][1], archive_rate, "rows/s",
               archive_rate >= 0.5 * archive_bare, archive_bare,
               "same archiving without tracking logs", note=archive_note),
    ]
