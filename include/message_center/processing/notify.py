"""Wake-ups from the push API: ``LISTEN mc_rt_events`` / ``mc_batch_events``.

The push API sends ``NOTIFY`` after it commits new events, so a waiting real-time
shard wakes within milliseconds instead of at its next poll. A notification is only a
hint ("look at the queue now"): the queue itself is the truth, so a lost notification
costs at most one poll interval, never an event.
"""

from __future__ import annotations

import contextlib
import select
import time
from typing import Any

from sqlalchemy import Engine

from message_center.statuses import NOTIFY_CHANNELS, WEBHOOK_NOTIFY_CHANNEL


class Listener:
    """A dedicated (non-pooled) connection that LISTENs on one channel.

    A lost connection (database restarted) is not an error here: :meth:`wait` sleeps
    its timeout instead (the caller polls the queue anyway) and listens again as soon
    as the database accepts connections."""

    def __init__(self, engine: Engine, channel: str) -> None:
        if channel not in (*NOTIFY_CHANNELS.values(), WEBHOOK_NOTIFY_CHANNEL):
            raise ValueError(f"unknown notification channel {channel!r}")
        self._engine, self._channel = engine, channel
        self._raw: Any = None
        self._conn: Any = None
        self._connect()

    def _connect(self) -> None:
        raw = self._engine.raw_connection()
        try:
            conn: Any = raw.dbapi_connection
            raw.detach()  # LISTEN state must not leak into the pool
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {self._channel}")
        except BaseException:
            raw.close()
            raise
        self._raw, self._conn = raw, conn

    def _lost(self) -> None:
        if self._raw is not None:
            with contextlib.suppress(Exception):  # the connection is already gone
                self._raw.close()
        self._raw = self._conn = None

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self) -> int:
        self._conn.poll()
        count = len(self._conn.notifies)
        self._conn.notifies.clear()
        return count

    def wait(self, timeout: float) -> int:
        """Block until a notification arrives or ``timeout`` seconds pass; returns how many
        notifications were received (0 on timeout, or when the connection was lost: then
        the next call listens again, or sleeps if the database is still away)."""
        if self._conn is None:
            try:
                self._connect()
            except Exception:
                time.sleep(max(timeout, 0))
                return 0
            return 1  # we may have missed notifications meanwhile: look at the queue
        try:
            return self._wait(timeout)
        except Exception:  # the database went away (restart, network)
            self._lost()
            return 1

    def _wait(self, timeout: float) -> int:
        received = self._drain()
        if received or timeout <= 0:
            return received
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return 0
            ready, _, _ = select.select([self._conn], [], [], remaining)
            if ready and (received := self._drain()):
                return received

    def close(self) -> None:
        self._lost()
