"""A webhook receiver for the bench: answers 200 to every POST on ``/hook`` and counts
them (``GET /count``); ``/timed`` also notes when each event's first message arrived
(``GET /times``: public event id -> epoch seconds), for the latency figure. Run as
``python -m bench.webhook_receiver PORT`` in its own process, so its CPU is not the
sender's."""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web

received: dict[str, float] = {"count": 0, "last": 0.0}
times: dict[str, float] = {}


async def hook(request: web.Request) -> web.Response:
    await request.read()
    received["count"] += 1
    received["last"] = time.time()
    return web.Response(text="ok")


async def timed(request: web.Request) -> web.Response:
    body = await request.read()
    now = time.time()
    received["count"] += 1
    received["last"] = now
    times.setdefault(str(json.loads(body)["data"]["id"]), now)
    return web.Response(text="ok")


async def count(_request: web.Request) -> web.Response:
    return web.json_response(received)


async def get_times(_request: web.Request) -> web.Response:
    return web.json_response(times)


async def reset(_request: web.Request) -> web.Response:
    received.update(count=0, last=0.0)
    times.clear()
    return web.json_response(received)


def main() -> None:
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/timed", timed)
    app.router.add_get("/count", count)
    app.router.add_get("/times", get_times)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
