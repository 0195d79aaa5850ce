"""A webhook receiver for the bench: answers 200 to every POST on ``/hook`` and counts
them (``GET /count``); run as ``python -m bench.webhook_receiver PORT`` in its own process,
so its CPU is not the sender's."""

from __future__ import annotations

import sys
import time

from aiohttp import web

received = {"count": 0, "last": 0.0}


async def hook(request: web.Request) -> web.Response:
    await request.read()
    received["count"] += 1
    received["last"] = time.time()
    return web.Response(text="ok")


async def count(_request: web.Request) -> web.Response:
    return web.json_response(received)


async def reset(_request: web.Request) -> web.Response:
    received.update(count=0, last=0.0)
    return web.json_response(received)


def main() -> None:
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/count", count)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
