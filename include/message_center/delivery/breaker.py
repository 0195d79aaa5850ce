"""Relay health: one circuit breaker per relay, shared by every shard and worker.

A relay that refuses connections (or answers "service not available" to everyone, or an
HTTP gateway that answers 503 with ``Retry-After``) is *down*: trying messages on it
only burns their tries. Each such failure (:meth:`Outcome.unavailable
<message_center.delivery.outcome.Outcome.unavailable>`, never counted as a try of the
message) is recorded in the execution database, table ``relay_breaker``, one row per
relay (``smtp://host:port``, the gateway's URL):

* **closed** - messages go out. Each failure adds one to ``failures``; any answer of
  the relay resets it.
* **open** - after ``threshold`` (5) failures in a row, counted over every shard and
  worker. No session starts a message on the relay; every ``probe_seconds`` (5 s) one
  session somewhere (whoever takes the probe slot first, in one ``UPDATE``) tries its
  next message as the probe: connecting is the first thing it does, and a refused
  connection sends nothing. An answer closes the breaker and everybody resumes within
  ``refresh_seconds``; a failure keeps it open.

Rows are also where the relay's "slow down" pause lives (SMTP ``421`` / ``4.7.x``, HTTP
``429``, a ``Retry-After``): ``paused_until`` is read by every worker, so a pause asked of
one session holds them all.

Each :class:`RelayBreaker` keeps a local copy of its row, read again at most every
``refresh_seconds`` (one small ``SELECT`` per second per shard) and written only when
something changes, so the breaker costs nothing per message while the relay is healthy.
The database being unreachable never stops delivery: the breaker then works on its
local copy (:class:`MemoryBreakerStore` is that local store, also used without a
database). The health check and the Overview page read the table through
:mod:`message_center.reporting.relays`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine, text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BreakerPolicy:
    """``threshold`` failures in a row open the breaker; an open one is probed every
    ``probe_seconds``; every worker reads the shared state every ``refresh_seconds``."""

    threshold: int = 5
    probe_seconds: float = 5.0
    refresh_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.probe_seconds <= 0 or self.refresh_seconds <= 0:
            raise ValueError("breaker policy: threshold must be >= 1, probe_seconds and "
                             "refresh_seconds > 0")


@dataclass(frozen=True)
class BreakerView:
    """One relay's shared state, times relative to now (seconds)."""

    state: str = "closed"  # closed | open
    failures: int = 0
    pause_left: float = 0.0  # the relay asked to wait this much longer
    probe_in: float = 0.0  # open: the next probe may start in this many seconds
    last_error: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state == "open"


class BreakerStore(Protocol):
    """Where breakers live (the execution database, or memory)."""

    def read(self, relay: str) -> BreakerView: ...

    def failure(self, relay: str, channel: str, error: str, *, pause: float,
                policy: BreakerPolicy) -> BreakerView: ...

    def success(self, relay: str) -> BreakerView: ...

    def pause(self, relay: str, channel: str, error: str, seconds: float) -> BreakerView: ...

    def take_probe(self, relay: str, policy: BreakerPolicy) -> bool: ...


@dataclass
class _Row:
    state: str = "closed"
    failures: int = 0
    paused_until: float = 0.0
    probe_at: float = 0.0
    last_error: str | None = None

    def view(self, now: float) -> BreakerView:
        return BreakerView(self.state, self.failures, max(self.paused_until - now, 0.0),
                           max(self.probe_at - now, 0.0), self.last_error)


class MemoryBreakerStore:
    """Breakers of this process only (unit tests; the fallback of a database store)."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()

    def read(self, relay: str) -> BreakerView:
        with self._lock:
            return self._rows.setdefault(relay, _Row()).view(time.monotonic())

    def failure(self, relay: str, channel: str, error: str, *, pause: float,
                policy: BreakerPolicy) -> BreakerView:
        with self._lock:
            now = time.monotonic()
            row = self._rows.setdefault(relay, _Row())
            row.failures += 1
            row.last_error = error
            row.paused_until = max(row.paused_until, now + pause)
            if row.failures >= policy.threshold:
                row.state = "open"
                row.probe_at = max(now + policy.probe_seconds, row.paused_until)
            return row.view(now)

    def success(self, relay: str) -> BreakerView:
        with self._lock:
            now = time.monotonic()
            row = self._rows.setdefault(relay, _Row())
            row.state, row.failures, row.probe_at = "closed", 0, 0.0
            if row.paused_until <= now:
                row.paused_until = 0.0
            return row.view(now)

    def pause(self, relay: str, channel: str, error: str, seconds: float) -> BreakerView:
        with self._lock:
            now = time.monotonic()
            row = self._rows.setdefault(relay, _Row())
            row.paused_until = max(row.paused_until, now + seconds)
            row.last_error = error
            return row.view(now)

    def take_probe(self, relay: str, policy: BreakerPolicy) -> bool:
        with self._lock:
            now = time.monotonic()
            row = self._rows.setdefault(relay, _Row())
            if row.state != "open" or row.probe_at > now:
                return False
            row.probe_at = now + policy.probe_seconds
            return True


_VIEW = """state, failures,
    greatest(extract(epoch FROM paused_until - clock_timestamp()), 0) AS pause_left,
    greatest(extract(epoch FROM probe_at - clock_timestamp()), 0) AS probe_in, last_error"""


def _view(row: Any) -> BreakerView:
    if row is None:
        return BreakerView()
    return BreakerView(row.state, int(row.failures), float(row.pause_left or 0),
                       float(row.probe_in or 0), row.last_error)


class DatabaseBreakerStore:
    """Breakers in the execution database's ``relay_breaker`` table (see module doc)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def read(self, relay: str) -> BreakerView:
        with self.engine.connect() as conn:
            return _view(conn.execute(text(f"SELECT {_VIEW} FROM relay_breaker "
                                           "WHERE relay = :relay"), {"relay": relay}).first())

    def failure(self, relay: str, channel: str, error: str, *, pause: float,
                policy: BreakerPolicy) -> BreakerView:
        with self.engine.begin() as conn:
            conn.execute(text("""
                INSERT INTO relay_breaker (relay, channel) VALUES (:relay, :channel)
                ON CONFLICT (relay) DO NOTHING
            """), {"relay": relay, "channel": channel})
            row = conn.execute(text(f"""
                UPDATE relay_breaker b SET
                    failures = b.failures + 1,
                    state = CASE WHEN b.failures + 1 >= :threshold THEN 'open'
                                 ELSE b.state END,
                    opened_at = CASE WHEN b.state = 'closed' AND b.failures + 1 >= :threshold
                                     THEN clock_timestamp() ELSE b.opened_at END,
                    paused_until = greatest(b.paused_until,
                                            clock_timestamp() + make_interval(secs => :pause)),
                    probe_at = CASE WHEN b.failures + 1 >= :threshold THEN greatest(
                                   clock_timestamp() + make_interval(secs => :probe),
                                   b.paused_until,
                                   clock_timestamp() + make_interval(secs => :pause))
                               ELSE b.probe_at END,
                    last_error = :error, last_failure = clock_timestamp(),
                    updated = clock_timestamp()
                WHERE b.relay = :relay
                RETURNING {_VIEW}, (b.failures = :threshold) AS opened
            """), {"relay": relay, "error": error[:1000], "pause": float(pause),
                   "threshold": policy.threshold,
                   "probe": float(policy.probe_seconds)}).first()
        if row is not None and row.opened:
            log.warning("relay %s is down (%d failures in a row: %s): circuit breaker open, "
                        "probing every %g s; its messages wait and keep their tries", relay,
                        row.failures, error, policy.probe_seconds)
        return _view(row)

    def success(self, relay: str) -> BreakerView:
        with self.engine.begin() as conn:
            row = conn.execute(text(f"""
                UPDATE relay_breaker b SET state = 'closed', failures = 0, probe_at = NULL,
                    opened_at = NULL, last_success = clock_timestamp(),
                    paused_until = CASE WHEN b.paused_until > clock_timestamp()
                                        THEN b.paused_until END,
                    updated = clock_timestamp()
                WHERE b.relay = :relay AND (b.state <> 'closed' OR b.failures > 0
                                            OR b.paused_until <= clock_timestamp())
                RETURNING {_VIEW}, (SELECT state FROM relay_breaker o
                                    WHERE o.relay = b.relay) AS was
            """), {"relay": relay}).first()
        if row is None:
            return self.read(relay)
        if row.was == "open":
            log.warning("relay %s answers again: circuit breaker closed, delivery resumes",
                        relay)
        return _view(row)

    def pause(self, relay: str, channel: str, error: str, seconds: float) -> BreakerView:
        with self.engine.begin() as conn:
            return _view(conn.execute(text(f"""
                INSERT INTO relay_breaker AS b (relay, channel, paused_until, last_error)
                VALUES (:relay, :channel, clock_timestamp() + make_interval(secs => :pause),
                        :error)
                ON CONFLICT (relay) DO UPDATE SET
                    paused_until = greatest(b.paused_until, EXCLUDED.paused_until),
                    last_error = EXCLUDED.last_error, updated = clock_timestamp()
                RETURNING {_VIEW}
            """), {"relay": relay, "channel": channel, "error": error[:1000],
                   "pause": float(seconds)}).first())

    def take_probe(self, relay: str, policy: BreakerPolicy) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(text("""
                UPDATE relay_breaker SET probe_at = clock_timestamp()
                                                    + make_interval(secs => :probe),
                                         updated = clock_timestamp()
                WHERE relay = :relay AND state = 'open'
                  AND (probe_at IS NULL OR probe_at <= clock_timestamp())
                RETURNING relay
            """), {"relay": relay, "probe": float(policy.probe_seconds)}).first() is not None


class RelayBreaker:
    """The breaker of one relay as one shard's sessions see it (thread-safe).

    ``store`` is shared (database) or local (memory); calls to it that fail (the
    database is down) are logged once and fall back to this process's own view, so a
    database outage never holds delivery back.
    """

    def __init__(self, relay: str, channel: str, store: BreakerStore | None = None,
                 policy: BreakerPolicy | None = None) -> None:
        self.relay, self.channel = relay, channel
        self.policy = policy or BreakerPolicy()
        self.store: BreakerStore = store or MemoryBreakerStore()
        self._local = MemoryBreakerStore()
        self._lock = threading.Lock()
        self._view = BreakerView()
        self._seen_at = -1e18  # monotonic time of the last read
        self._store_failed = False

    def _call(self, what: Callable[[BreakerStore], Any], fallback: Callable[
            [MemoryBreakerStore], Any]) -> Any:
        try:
            result = what(self.store)
        except Exception as exc:  # the database may be down: carry on locally
            if not self._store_failed:
                log.warning("relay %s: breaker state not shared (%s: %s); using this "
                            "worker's own view", self.relay, type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "")
                self._store_failed = True
            return fallback(self._local)
        self._store_failed = False
        return result

    def _remember(self, view: BreakerView) -> BreakerView:
        with self._lock:
            self._view, self._seen_at = view, time.monotonic()
        return view

    def view(self, max_age: float | None = None) -> BreakerView:
        """The relay's state, read again when older than ``max_age`` (default
        ``refresh_seconds``); times are from the moment of the read."""
        age = self.policy.refresh_seconds if max_age is None else max_age
        with self._lock:
            fresh = time.monotonic() - self._seen_at < age
            view, seen = self._view, self._seen_at
        if fresh:
            elapsed = time.monotonic() - seen
            return BreakerView(view.state, view.failures, max(view.pause_left - elapsed, 0),
                               max(view.probe_in - elapsed, 0), view.last_error)
        return self._remember(self._call(lambda s: s.read(self.relay),
                                         lambda s: s.read(self.relay)))

    def failure(self, error: str, pause: float = 0.0) -> BreakerView:
        """The relay could not be reached (or asked to wait ``pause`` seconds)."""
        return self._remember(self._call(
            lambda s: s.failure(self.relay, self.channel, error, pause=pause,
                                policy=self.policy),
            lambda s: s.failure(self.relay, self.channel, error, pause=pause,
                                policy=self.policy)))

    def success(self) -> None:
        """The relay answered: close the breaker (written only when there is something
        to reset, as far as this worker knows)."""
        with self._lock:
            view = self._view
        if view.state == "closed" and view.failures == 0:
            return
        self._remember(self._call(lambda s: s.success(self.relay),
                                  lambda s: s.success(self.relay)))

    def pause(self, error: str, seconds: float) -> None:
        """The relay asked to slow down: every worker waits ``seconds`` (not a failure)."""
        self._remember(self._call(
            lambda s: s.pause(self.relay, self.channel, error, seconds),
            lambda s: s.pause(self.relay, self.channel, error, seconds)))

    def take_probe(self) -> bool:
        """While open: may this session try one message now (one somewhere per
        ``probe_seconds``)? Either way the shared state is read again."""
        won = self._call(lambda s: s.take_probe(self.relay, self.policy),
                         lambda s: s.take_probe(self.relay, self.policy))
        self.view(max_age=0)
        if won:
            log.info("relay %s: probing (breaker open)", self.relay)
        return bool(won)
