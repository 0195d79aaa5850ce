"""Wake-ups from the push API: ``LISTEN mc_rt_events`` / ``mc_batch_events``.

The push API sends ``NOTIFY`` after it commits new events, so a waiting real-time
shard wakes within milliseconds instead of at its next poll. A notification is only a
hint ("look at the queue now"): the queue itself is the truth, so a lost notification
costs at most one poll interval, never an event.
"""

from __future__ import annotations

import select
import time
from typing import Any

from sqlalchemy import Engine

from message_center.statuses import NOTIFY_CHANNELS


class Listener:
    """A dedicated (non-pooled) connection that LISTENs on one channel."""

    def __init__(self, engine: Engine, channel: str) -> None:
        if channel not in NOTIFY_CHANNELS.values():
            raise ValueError(f"unknown notification channel {channel!r}")
        raw = engine.raw_connection()
        self._conn: Any = raw.dbapi_connection
        raw.detach()  # LISTEN state must not leak into the pool
        self._raw = raw
        self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(f"LISTEN {channel}")

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
        notifications were received (0 on timeout)."""
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
        self._raw.close()
