"""A real SMS gateway on loopback that keeps every accepted SMS as a ``.json`` file.

It implements the gateway contract of :mod:`message_center.delivery.sms` (JSON POST on
``/messages``; a repeated ``Idempotency-Key`` gets the first answer again and sends
nothing; ``GET /messages?reference=...`` tells whether a message was accepted), so the
demo can show SMS next to e-mail and the tests exercise the real HTTP path. Replies can
be scripted per recipient (``"503"`` then ``"201"``, or ``"always 400"``) to exercise
retries and permanent failures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        sink = self.server.sink
        url = urlsplit(self.path)
        if url.path.rstrip("/") == "/health":
            self._answer(200, {"status": "ok"})
        elif url.path.rstrip("/") == sink.path:
            ref = parse_qs(url.query).get("reference", [""])[0]
            if not ref:
                self._answer(400, {"error": "?reference= is required"})
            elif (record := sink.find(ref)) is None:
                self._answer(404, {"reference": ref, "found": False,
                                   "error": f"no message with reference {ref}"})
            else:
                self._answer(200, {"id": record["id"], "reference": ref, "found": True,
                                   "status": "accepted"})
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        sink = self.server.sink
        if self.path.rstrip("/") != sink.path:
            self._answer(404, {"error": f"POST {sink.path} expected"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._answer(400, {"error": "a JSON body of at most 64 KiB is required"})
            return
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            self._answer(400, {"error": "body is not JSON"})
            return
        problems = [name for name in ("to", "text")
                    if not isinstance(body, dict) or not isinstance(body.get(name), str)
                    or not body.get(name)]
        if problems:
            self._answer(422, {"error": f"missing or empty field(s): {', '.join(problems)}"})
            return
        with sink.in_flight():  # a gateway that takes its time (other requests go on)
            if sink.latency:
                time.sleep(sink.latency)
            scripted = sink.next_reply(body["to"])
            if scripted is None:
                status, answer = 201, {"id": sink.accept(body, self.headers.get(
                    "Idempotency-Key")), "status": "accepted"}
            else:
                status, code = scripted
                answer = {"error": HTTPStatus(status).phrase
                          if status in HTTPStatus._value2member_map_ else "scripted"}
                if code:
                    answer["code"] = code
        self._answer(status, answer)  # out of in_flight: the client may go on at once


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sink: SmsSink


class SmsSink:
    """Accepts SMS on ``http://host:port/messages`` and writes them to ``sms_dir``."""

    def __init__(self, sms_dir: Path, host: str = "127.0.0.1", port: int = 8026,
                 path: str = "/messages") -> None:
        self.sms_dir = Path(sms_dir)
        self.sms_dir.mkdir(parents=True, exist_ok=True)
        self.host, self.port, self.path = host, port, path.rstrip("/")
        self._lock = threading.Lock()
        self._accept_lock = threading.Lock()
        self._replies: dict[str, deque[str]] = defaultdict(deque)
        #: Seconds each POST takes before its answer; ``peak_in_flight``: the most POSTs
        #: it was answering at once (since the last ``clear()``).
        self.latency = 0.0
        self.peak_in_flight = 0
        self._in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SmsSink:
        self._server = _Server((self.host, self.port), _Handler)
        self._server.sink = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="sms-sink")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SmsSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def script(self, to: str, *replies: str) -> None:
        """Answer POSTs for ``to`` with these HTTP statuses first (``"503"``,
        ``"always 400"``, or with an error code of the gateway contract in the JSON body:
        ``"404 unknown_subscriber"``); a 2xx reply in the script means "accept normally"."""
        with self._lock:
            self._replies[to].extend(replies)

    def next_reply(self, to: str) -> tuple[int, str | None] | None:
        with self._lock:
            queue = self._replies.get(to)
            if not queue:
                return None
            reply = queue.popleft()
            if reply.startswith("always "):
                queue.appendleft(reply)
                reply = reply.removeprefix("always ")
        status, _, code = reply.partition(" ")
        return None if 200 <= int(status) < 300 else (int(status), code.strip() or None)

    def accept(self, body: dict[str, Any], idempotency_key: str | None) -> str:
        """Keep one SMS; a repeated ``Idempotency-Key`` keeps nothing and gets the first
        message's id again (like a gateway that deduplicates)."""
        with self._accept_lock:
            if idempotency_key and (first := self.find_key(idempotency_key)) is not None:
                return str(first["id"])
            return self.store(body, idempotency_key)

    def find(self, reference: str) -> dict[str, Any] | None:
        """The accepted SMS with this ``reference`` (None: never accepted)."""
        return next((m for m in self.messages() if m.get("reference") == reference), None)

    def find_key(self, key: str) -> dict[str, Any] | None:
        """The SMS first accepted with this ``Idempotency-Key``."""
        return next((m for m in self.messages() if m.get("idempotency_key") == key), None)

    def store(self, body: dict[str, Any], idempotency_key: str | None) -> str:
        message_id = f"sms-{uuid.uuid4().hex[:16]}"
        record = {"id": message_id, "received": time.time(), "idempotency_key":
                  idempotency_key, **{k: body.get(k) for k in ("to", "from", "text",
                                                               "reference")}}
        name = f"{time.time_ns()}-{message_id}.json"
        tmp = self.sms_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(record, ensure_ascii=False))
        tmp.rename(self.sms_dir / name)
        return message_id

    def messages(self) -> list[dict[str, Any]]:
        """Every accepted SMS, oldest first."""
        return [json.loads(path.read_text()) for path in sorted(self.sms_dir.glob("*.json"))]

    def clear(self) -> None:
        for path in self.sms_dir.glob("*.json"):
            path.unlink()
        with self._lock:
            self._replies.clear()
            self.peak_in_flight = 0
        self.latency = 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local SMS gateway for the Message Center demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8026)
    parser.add_argument("--sms-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    with SmsSink(args.sms_dir, args.host, args.port) as sink:
        print(f"SMS gateway sink on {sink.url}/messages, keeping messages in {args.sms_dir}",
              flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
