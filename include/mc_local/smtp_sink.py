"""A real SMTP server on loopback that keeps every message it accepts as a ``.eml`` file.

The demo points ``smtp_default`` at it so a newcomer sees each delivered message in a
folder; the tests use it as the real SMTP peer and script replies per recipient
(``451`` then ``250``, or a permanent ``550``) to exercise retries and failures.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections import defaultdict, deque
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.sink.next_reply(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.latency:  # a relay that takes its time (other sessions go on)
            await asyncio.sleep(self.sink.latency)
        peer = session.peer
        self.sink.store(envelope.content, list(envelope.rcpt_tos), envelope.mail_from,
                        peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None)
        return "250 Message accepted for delivery"


class SmtpSink:
    """Accepts mail on ``host:port`` and writes it to ``mail_dir``; thread-safe."""

    def __init__(self, mail_dir: Path, host: str = "127.0.0.1", port: int = 8025) -> None:
        self.mail_dir = Path(mail_dir)
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._replies: dict[str, deque[str]] = defaultdict(deque)
        #: Seconds each DATA takes before the 250 (a slow relay); 0 answers at once.
        self.latency = 0.0
        self._controller = Controller(_Handler(self), hostname=host, port=port,
                                      ready_timeout=10)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, address: str, *replies: str) -> None:
        """Answer RCPT for ``address`` with these replies first (e.g. ``"451 busy"``)."""
        with self._lock:
            self._replies[address.lower()].extend(replies)

    def next_reply(self, address: str) -> str | None:
        with self._lock:
            queue = self._replies.get(address.lower())
            if queue:
                reply = queue.popleft()
                if reply.startswith("always "):
                    queue.appendleft(reply)
                    return reply.removeprefix("always ")
                return reply
        return None

    def store(self, content: bytes, recipients: list[str], sender: str,
              peer: str | None = None) -> None:
        """Keep one message; the file name starts with the time it was accepted (ns), and
        ``X-Peer`` names the client's address and port (one per SMTP connection)."""
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        header = f"X-Envelope-From: {sender}\r\nX-Envelope-To: {', '.join(recipients)}\r\n"
        if peer:
            header += f"X-Peer: {peer}\r\n"
        tmp = self.mail_dir / f".{name}.tmp"
        tmp.write_bytes(header.encode() + content)
        tmp.rename(self.mail_dir / name)

    def count(self) -> int:
        """How many messages were received (cheaper than :meth:`messages`)."""
        return sum(1 for _ in self.mail_dir.glob("*.eml"))

    def messages(self) -> list[EmailMessage]:
        """Every stored message, oldest first."""
        return [
            message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[misc]
            for path in sorted(self.mail_dir.glob("*.eml"))
        ]

    def clear(self) -> None:
        for path in self.mail_dir.glob("*.eml"):
            path.unlink()
        with self._lock:
            self._replies.clear()
        self.latency = 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local SMTP sink for the Message Center demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--mail-dir", type=Path, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="time each message takes before the server answers (a slow "
                        "relay: the message is stored at the end, just before the 250)")
    args = parser.parse_args(argv)
    with SmtpSink(args.mail_dir, args.host, args.port) as sink:
        sink.latency = args.latency_ms / 1000
        print(f"SMTP sink on {args.host}:{args.port}, keeping messages in {args.mail_dir}",
              flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
