"""Ingestion over ACC's SOAP API: ``nms:batchEvent#PushEvents`` with 1,000 ``<batchEvent>``
elements per request, on the real Airflow API server, next to the JSON ``batchEvents``
figure for the same events measured in the same run (its "bare limit" here: the SOAP path
adds XML parsing, the XML -> JSON event mapping and the XML answer to the same validation
and the same insert).

The session token is the Airflow JWT in ``<sessiontoken>``, as ACC clients send the token
of their ``Logon``. Bodies are encoded before the clock starts.
"""

from __future__ import annotations

import http.client
import threading
from concurrent.futures import ThreadPoolExecutor
from xml.sax.saxutils import quoteattr

from bench.core import Context, Result, log, planned_rows, stopwatch
from bench.data import batch_body, event_json

BATCH = 1000
SOAP_PATH = "/nl/jsp/soaprouter.jsp"
JSON_PATH = "/message-center/v1/batchEvents"


def soap_event(i: int) -> str:
    """``event_json(i)`` as an ACC ``<batchEvent>`` (ctx items as repeated elements)."""
    event = event_json(i)
    ctx = event["ctx"]
    items = "".join(f'<items name={quoteattr(item["name"])} quantity="{item["quantity"]}" '
                    f'price="{item["price"]}"/>' for item in ctx["items"])
    return (f'<batchEvent type="{event["type"]}" email="{event["email"]}" '
            f'externalId="{event["externalId"]}" language="en" country="FR" origin="bench" '
            f'wishedChannel="0"><ctx firstName="{ctx["firstName"]}" orderId="{ctx["orderId"]}" '
            f'total="{ctx["total"]}" currency="{ctx["currency"]}">{items}</ctx></batchEvent>')


def soap_batch_body(start: int, count: int, token: str) -> bytes:
    events = "".join(soap_event(i) for i in range(start, start + count))
    return (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:urn="urn:nms:batchEvent"><soapenv:Header/><soapenv:Body><urn:PushEvents>'
        f"<urn:sessiontoken>{token}</urn:sessiontoken><urn:domEventCollection><Events>"
        f"{events}</Events></urn:domEventCollection></urn:PushEvents></soapenv:Body>"
        "</soapenv:Envelope>").encode()


def _drive(ctx: Context, path: str, bodies: list[bytes], headers: dict[str, str],
           expected: int) -> tuple[float, list[str]]:
    """POST every body once from ``ingest_clients`` keep-alive connections; (seconds,
    failures)."""
    queue = list(range(len(bodies)))
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", ctx.deployment.api_port, timeout=120)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    index = queue.pop()
                conn.request("POST", path, body=bodies[index], headers=headers)
                response = conn.getresponse()
                answer = response.read()
                if response.status != expected:
                    failures.append(f"{response.status}: {answer[:200]!r}")
        finally:
            conn.close()

    with stopwatch() as elapsed, ThreadPoolExecutor(ctx.sizes.ingest_clients) as pool:
        for future in [pool.submit(client) for _ in range(ctx.sizes.ingest_clients)]:
            future.result()
    return elapsed(), failures


def _count(ctx: Context) -> int:
    from sqlalchemy import text

    with ctx.engine().connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM batch_event")).scalar_one())


def soap_ingest(ctx: Context) -> list[Result]:
    total = max(BATCH, ctx.sizes.ingest_events // BATCH * BATCH)
    ctx.ensure_api()
    token = ctx.token()
    soap_headers = {"Content-Type": "text/xml; charset=utf-8",
                    "SOAPAction": '"nms:batchEvent#PushEvents"'}
    json_headers = ctx.auth_headers()
    starts = range(0, total, BATCH)
    soap_bodies = [soap_batch_body(start, BATCH, token) for start in starts]
    json_bodies = [batch_body(start, BATCH) for start in starts]
    ctx.reset_execution()
    for _ in range(3):  # first requests import and compile; not what we measure
        _, failed = _drive(ctx, SOAP_PATH, soap_bodies[:1], soap_headers, 200)
        if failed:
            raise RuntimeError(f"PushEvents answered {failed[0]}")
        _drive(ctx, JSON_PATH, json_bodies[:1], json_headers, 201)

    rates: dict[str, float] = {}
    notes: list[str] = []
    for name, path, bodies, headers, expected in (
            ("json", JSON_PATH, json_bodies, json_headers, 201),
            ("soap", SOAP_PATH, soap_bodies, soap_headers, 200)):
        ctx.reset_execution()
        ctx.vacuum("batch_event")
        log(f"soap_ingest: {total:,} events over {name.upper()} in {len(bodies)} requests")
        seconds, failures = _drive(ctx, path, bodies, headers, expected)
        stored = _count(ctx)
        rates[name] = stored / seconds
        if failures or stored != total:
            notes.append(f"{name}: {len(failures)} request(s) failed: {failures[:1]}, "
                         f"{stored:,} of {total:,} stored")
    ctx.reset_execution()
    size = len(soap_bodies[0]) / 1024
    note = (f"{total:,} events in {len(soap_bodies)} PushEvents requests of {size:,.0f} KiB "
            f"from {ctx.sizes.ingest_clients} clients; bare = the same events as JSON "
            "batchEvents, same run")
    if notes:
        note += "; " + "; ".join(notes)
    ((figure, target),) = planned_rows(ctx.sizes)["soap_ingest"]
    ok = rates["soap"] >= 0.5 * rates["json"] and not notes
    return [Result(figure, target, rates["soap"], "events/s", ok, rates["json"],
                   "JSON batchEvents, same events", note=note)]
