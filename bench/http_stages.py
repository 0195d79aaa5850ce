"""Ingestion over HTTP (1,000-event batches) and the single real-time push, on the real
Airflow API server with the push API plugin.

Bodies are encoded before the clock starts and sent with ``http.client`` (keep-alive),
so the client costs as little CPU as possible on the shared cores.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.core import Context, Result, log, percentile, planned_rows, stopwatch
from bench.data import batch_body, event_json
from message_center.ids import make_id

BATCH = 1000


class Http:
    """One keep-alive connection to the API server."""

    def __init__(self, ctx: Context) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", ctx.deployment.api_port,
                                               timeout=60)
        self.headers = ctx.auth_headers()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def _count(ctx: Context, table: str) -> int:
    from sqlalchemy import text

    with ctx.engine().connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def ingest(ctx: Context) -> list[Result]:
    """POST /message-center/v1/batchEvents, 1,000 events per request, several clients."""
    total = max(BATCH, ctx.sizes.ingest_events // BATCH * BATCH)
    clients = ctx.sizes.ingest_clients
    ctx.ensure_api()
    ctx.reset_execution()
    bodies = [batch_body(start, BATCH) for start in range(0, total, BATCH)]
    warm = Http(ctx)
    for _ in range(3):  # first requests import and compile; not what we measure
        status, body = warm.request("POST", "/message-center/v1/batchEvents", bodies[0])
        if status != 201:
            raise RuntimeError(f"batchEvents answered {status}: {body[:300]!r}")
    warm.close()
    ctx.reset_execution()
    ctx.vacuum("batch_event")

    queue = list(range(len(bodies)))
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        http_ = Http(ctx)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    index = queue.pop()
                status, answer = http_.request("POST", "/message-center/v1/batchEvents",
                                               bodies[index])
                if status != 201:
                    failures.append(f"{status}: {answer[:200]!r}")
        finally:
            http_.close()

    log(f"ingest: {total:,} events in {len(bodies)} requests, {clients} clients")
    with stopwatch() as elapsed, ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    seconds = elapsed()
    stored = _count(ctx, "batch_event")
    rate = stored / seconds

    # Bare limit: one COPY of the same rows into the same table (same indexes).
    ctx.reset_execution()
    ctx.vacuum("batch_event")
    buffer = io.StringIO()
    for i in range(total):
        event = event_json(i)
        ctx_json = json.dumps(event["ctx"], separators=(",", ":")).replace("\\", "\\\\")
        buffer.write(f"{make_id(0, i + 1)}\t{event['type']}\t{event['email']}\temail\t"
                     f"{event['externalId']}\ten\tFR\tbench\t{ctx_json}\n")
    buffer.seek(0)
    raw = ctx.engine().raw_connection()
    try:
        cursor = raw.cursor()
        with stopwatch() as copy_elapsed:
            cursor.copy_expert(
                "COPY batch_event (id, type, email, wished_channel, external_id, language, "
                "country, origin, ctx) FROM STDIN", buffer)
            raw.commit()
    finally:
        raw.close()
    bare = total / copy_elapsed()
    ctx.reset_execution()
    note = (f"{stored:,} events stored by {len(bodies)} requests from {clients} clients "
            f"in {seconds:.1f}s")
    if failures or stored != total:
        note += f"; {len(failures)} request(s) failed: {failures[:1]}"
    ((figure, target),) = planned_rows(ctx.sizes)["ingest"]
    return [Result(figure, target, rate, "events/s", rate >= 20_000 and not failures, bare,
                   "one bare COPY", note=note)]


def push(ctx: Context) -> list[Result]:
    """POST /message-center/v1/rtEvents one at a time: latency per request."""
    requests = ctx.sizes.push_requests
    ctx.ensure_api()
    ctx.reset_execution()
    http_ = Http(ctx)
    bodies = [json.dumps(event_json(i)).encode() for i in range(requests + 50)]
    try:
        for body in bodies[:50]:
            http_.request("POST", "/message-center/v1/rtEvents", body)
        latencies, failures = [], 0
        for body in bodies[50:]:
            started = time.perf_counter()
            status, _ = http_.request("POST", "/message-center/v1/rtEvents", body)
            latencies.append(time.perf_counter() - started)
            failures += status != 201
        bare = []
        for _ in range(requests):
            started = time.perf_counter()
            http_.request("GET", "/api/v2/version")
            bare.append(time.perf_counter() - started)
    finally:
        http_.close()
    ctx.reset_execution()
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    b50, b99 = percentile(bare, 50) * 1000, percentile(bare, 99) * 1000
    note = (f"{requests:,} sequential requests on one keep-alive connection; bare = "
            "GET /api/v2/version on the same server (no auth, no database)")
    if failures:
        note += f"; {failures} request(s) did not answer 201"
    label = "GET /api/v2/version"
    (f50, t50), (f99, t99) = planned_rows(ctx.sizes)["push"]
    return [
        Result(f50, t50, p50, "ms", p50 <= 10 and not failures, b50, label,
               higher_is_better=False, note=note),
        Result(f99, t99, p99, "ms", p99 <= 50 and not failures, b99, label,
               higher_is_better=False),
    ]
