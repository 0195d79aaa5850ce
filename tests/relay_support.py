"""An SMTP relay that stalls on cue, for the tests of the relay faults (issue 23) and of
the event-loop sessions (issue 24): real aiosmtpd on loopback, no mock."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from conftest import free_port

STALL = "stall@example.test"


class StallingRelay:
    """An SMTP server that can hang at RCPT or after the final "." for one recipient.

    ``after_dot``: it queues the message (keeps it) and then never answers the "." (as a
    busy MTA whose reply is lost, RFC 1047). ``at_rcpt``: it does not answer RCPT for
    the first ``at_rcpt`` transactions to that recipient. Hanging handlers are released
    when the server stops."""

    def __init__(self, mail_dir: Path) -> None:
        self.port = free_port()
        self.after_dot = 0  # how many transactions to STALL hang after the "."
        self.at_rcpt = 0
        self.mail_421 = 0
        self.received: list[tuple[str, bytes]] = []
        self._release = asyncio.Event()
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                      ready_timeout=10)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.mail_421:  # as Postfix answers on a connection idle for too long
            self.mail_421 -= 1
            return "421 4.4.2 relay.example Error: timeout exceeded"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address == STALL and self.at_rcpt:
            self.at_rcpt -= 1
            await self._wait()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.received.append((envelope.rcpt_tos[0], envelope.content))
        if envelope.rcpt_tos[0] == STALL and self.after_dot:
            self.after_dot -= 1
            await self._wait()
        return "250 queued"

    async def _wait(self) -> None:
        with self._lock:
            if self._release.is_set():
                return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), timeout=120)

    def count(self, address: str) -> int:
        with self._lock:
            return sum(1 for to, _ in self.received if to == address)

    def start(self) -> StallingRelay:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.loop.call_soon_threadsafe(self._release.set)
        self._controller.stop()
