"""The dispatcher: sends the webhook outbox of one execution instance (``mcWebhooks``).

One asyncio loop, one **lane** per enabled subscription (endpoint), so a slow or failing
receiver only ever holds up its own messages. A lane is a pipeline of three parts that
never wait for each other's batches:

1. **claims** (one statement, ``FOR UPDATE SKIP LOCKED``; the attempt is counted and the
   row leased, ``claimed_at``) as soon as its queue of claimed rows runs below half a
   claim, while the requests of the previous claim are still in flight - only messages
   whose earlier messages about the same event (lower ``seq``) are no longer pending:
   **per event, a later status is never sent before an earlier one succeeded or was
   given up** (an earlier message is pending until its outcome is recorded);
2. **sends** up to the endpoint's ``max_in_flight`` requests at once (default 4), at most
   ``rate_per_second`` started per second (default 50), both per subscription
   (``maxInFlight`` / ``ratePerSecond``), over one pooled keep-alive HTTP session: one
   sender per in-flight slot takes the next row the moment its request ends, never
   waiting for a batch's slowest (no task and no wake-up of the lane per message). Standard
   Webhooks headers signed with ``standardwebhooks`` (the current secret, and the
   previous one during a rotation's overlap), ``webhook-id`` = ``msg_<outbox id>`` (the
   same on every retry and replay), no redirect followed, the answer's first KiB kept;
   the URL's rules (SSRF) are checked whenever the subscriptions are read (every
   ``refresh_seconds``) and every address a name resolves to at every connect
   (:class:`GuardedResolver`: no DNS rebinding);
3. **records** the outcomes that arrived while the previous write ran, all in one
   statement (the outbox rows and their attempt rows; a group commit): 2xx delivered;
   410 failed and the subscription disabled; anything else (4xx, 5xx, timeout, refused
   connection, refused address) retried after the next delay of the schedule (default
   5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, with +-10 % jitter), or after
   ``Retry-After`` when the receiver asks for longer; after the last one the message is
   failed (replayable). An endpoint whose every attempt failed for ``disable_after``
   (5 days) is disabled with the reason. A write that fails (the database restarts) is
   kept and tried again; claims wait for the database meanwhile.

Crash safety: a message is only ever re-sent with the same id. A dispatcher killed
mid-batch leaves its claimed rows leased; the next start gives them back at once
(:func:`recover`: one dispatcher per instance, ``max_active_runs=1``), so they are sent
again - a duplicate the receiver recognises by its ``webhook-id``, never a loss. A lane
that stops (end of the run, endpoint disabled) gives back what it claimed but did not
send, and records what it sent.

Wake-ups: a statement that writes outbox rows NOTIFYs ``mc_webhooks`` at commit; the
lanes also poll every ``poll_seconds`` for retries that became due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import InterfaceError, OperationalError

from message_center.db import first_line
from message_center.http_util import parse_retry_after
from message_center.net_guard import HostList, UrlRefused, address_problem, normalize_host
from message_center.processing.notify import Listener
from message_center.statuses import WEBHOOK_NOTIFY_CHANNEL, WebhookStatus
from message_center.webhooks.model import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_RATE,
    SecretBox,
    check_webhook_url,
    message_body,
    message_id,
    signed_headers,
)
from message_center.webhooks.store import secrets_of

log = logging.getLogger(__name__)

#: Seconds before retries 1-7 (about a day in all).
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
RESPONSE_BYTES = 1024
#: The GIL switch interval while the dispatcher runs (seconds; Python's default 0.005).
SWITCH_INTERVAL = 0.0005
DAY = 86_400.0


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number; got {raw!r}") from None


@dataclass(frozen=True)
class DispatchSettings:
    """How the dispatcher sends (the environment of the task: ``MC_WEBHOOK_*``)."""

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.1
    timeout: float = 10.0
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    rate_per_second: float = DEFAULT_RATE
    batch: int = 500
    poll_seconds: float = 1.0
    refresh_seconds: float = 5.0
    disable_after: float = 5 * DAY
    max_retry_after: float = DAY

    def __post_init__(self) -> None:
        if any(delay < 0 for delay in self.schedule):
            raise ValueError(f"retry schedule delays must be >= 0; got {self.schedule}")
        if self.timeout <= 0 or self.max_in_flight < 1 or self.rate_per_second <= 0:
            raise ValueError("timeout, max_in_flight and rate_per_second must be > 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any
                 ) -> DispatchSettings:
        """``MC_WEBHOOK_SCHEDULE`` (comma-separated seconds), ``MC_WEBHOOK_TIMEOUT``,
        ``MC_WEBHOOK_MAX_IN_FLIGHT``, ``MC_WEBHOOK_RATE``,
        ``MC_WEBHOOK_DISABLE_AFTER_SECONDS``."""
        env = os.environ if environ is None else environ
        raw = env.get("MC_WEBHOOK_SCHEDULE", "").strip()
        try:
            schedule = tuple(float(p) for p in raw.split(",") if p.strip()) if raw \
                else DEFAULT_SCHEDULE
        except ValueError:
            raise ValueError("MC_WEBHOOK_SCHEDULE must be comma-separated seconds; got "
                             f"{raw!r}") from None
        settings = cls(
            schedule=schedule, timeout=_env_float(env, "MC_WEBHOOK_TIMEOUT", 10.0),
            max_in_flight=int(_env_float(env, "MC_WEBHOOK_MAX_IN_FLIGHT",
                                         DEFAULT_MAX_IN_FLIGHT)),
            rate_per_second=_env_float(env, "MC_WEBHOOK_RATE", DEFAULT_RATE),
            disable_after=_env_float(env, "MC_WEBHOOK_DISABLE_AFTER_SECONDS", 5 * DAY))
        return replace(settings, **overrides)

    def delay(self, attempts: int, retry_after: float | None) -> float | None:
        """Seconds before the next try after ``attempts`` failed tries (None: give up)."""
        if attempts > len(self.schedule):
            return None
        base = self.schedule[attempts - 1]
        delay = base * (1 + random.uniform(-self.jitter, self.jitter))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


# -- SQL ---------------------------------------------------------------------------------
RECOVER = text(f"""
    UPDATE webhook_outbox SET next_attempt = now(), claimed_at = NULL
    WHERE status = '{WebhookStatus.PENDING}' AND claimed_at IS NOT NULL
""")
RELEASE = text("""
    UPDATE webhook_outbox SET claimed_at = NULL, attempts = greatest(attempts - 1, 0)
    WHERE id = ANY(:ids) AND claimed_at IS NOT NULL
""")
CLAIM = text(f"""
    WITH due AS (
        SELECT o.id FROM webhook_outbox o
        WHERE o.subscription_id = :sub AND o.status = '{WebhookStatus.PENDING}'
          AND o.next_attempt <= now() AND o.claimed_at IS NULL
          -- the first message of an event waits for nothing; a later one (a subplan on
          -- the event index, never an anti-join over the whole outbox) for the earlier
          AND (o.seq = 1 OR NOT EXISTS (
              SELECT 1 FROM webhook_outbox p
              WHERE p.event_id = o.event_id AND p.event_kind = o.event_kind
                AND p.subscription_id = o.subscription_id AND p.seq < o.seq
                AND p.status = '{WebhookStatus.PENDING}'))
        ORDER BY o.next_attempt, o.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE webhook_outbox o SET attempts = o.attempts + 1, claimed_at = clock_timestamp()
    FROM due WHERE o.id = due.id
    RETURNING o.id, o.event_kind, o.event_id, o.seq, o.name, o.data, o.occurred_at,
              o.attempts
""")
RECORD = text(f"""
    WITH v AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]),
                             CAST(:delays AS float8[]), CAST(:codes AS integer[]),
                             CAST(:errors AS text[]), CAST(:bodies AS text[]),
                             CAST(:ms AS integer[]), CAST(:at AS timestamptz[]))
             AS v(id, status, delay, code, error, body, ms, at)
    ), done AS (
        UPDATE webhook_outbox o SET status = v.status, claimed_at = NULL,
               next_attempt = CASE WHEN v.delay IS NULL THEN o.next_attempt
                                   ELSE now() + make_interval(secs => v.delay) END,
               last_attempt = v.at, last_code = v.code, last_error = v.error,
               done_at = CASE WHEN v.status = '{WebhookStatus.PENDING}' THEN NULL
                              ELSE now() END
        FROM v WHERE o.id = v.id
        RETURNING o.id
    )
    INSERT INTO webhook_attempt (outbox_id, subscription_id, attempted_at, status_code,
                                 error, response_body, duration_ms)
    SELECT v.id, :sub, v.at, v.code, v.error, v.body, v.ms FROM v
""")
SUBSCRIPTIONS = text("SELECT * FROM webhook_subscription WHERE enabled AND NOT deleted")
FAIL_ORPHANS = text(f"""
    UPDATE webhook_outbox o SET status = '{WebhookStatus.FAILED}', done_at = now(),
           claimed_at = NULL, last_error = 'the subscription was deleted'
    WHERE o.status = '{WebhookStatus.PENDING}'
      AND NOT EXISTS (SELECT 1 FROM webhook_subscription s
                      WHERE s.id = o.subscription_id AND NOT s.deleted)
""")
ENDPOINT_HEALTH = text("""
    UPDATE webhook_subscription SET
        failing_since = CASE WHEN :ok THEN NULL
                             ELSE coalesce(failing_since, CAST(:first_failure AS timestamptz))
                             END
    WHERE id = :sub
    RETURNING failing_since
""")
DISABLE = text("""
    UPDATE webhook_subscription SET enabled = false, disabled_reason = :reason,
           disabled_at = clock_timestamp(), updated = clock_timestamp()
    WHERE id = :sub AND enabled
""")


def recover(conn: Connection) -> int:
    """Give back what a dead dispatcher had claimed (due at once, same ids)."""
    return conn.execute(RECOVER).rowcount


@dataclass
class Result:
    """The outcome of one request."""

    outbox_id: int
    attempts: int
    code: int | None
    error: str | None
    body: str | None
    ms: int
    at: datetime
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300


@dataclass
class DispatchStats:
    sent: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    disabled: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "delivered": self.delivered, "retried": self.retried,
                "failed": self.failed, "disabled": list(self.disabled)}


class GuardedResolver(AbstractResolver):
    """Resolves names and refuses every address an unlisted host must not have, so the
    address checked is the address connected to (a name cannot resolve to a public
    address at the check and to a private one at the connect)."""

    def __init__(self, hosts: HostList) -> None:
        self._hosts, self._inner = hosts, ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        name = normalize_host(host)
        if self._hosts.lists(name, port):
            return results
        for result in results:
            problem = address_problem(str(result["host"]).split("%", 1)[0])
            if problem:
                raise UrlRefused(f"{host}:{port}", f"{host} resolves to {result['host']}, a "
                                 f"{problem} address, and it is not listed in "
                                 f"{self._hosts.variable}")
        return results

    async def close(self) -> None:
        await self._inner.close()


class _RateLimit:
    """At most ``rate`` starts per second (evenly spaced)."""

    def __init__(self, rate: float) -> None:
        self.rate, self._interval, self._next = rate, 1.0 / rate, 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


@dataclass
class Endpoint:
    """A subscription as the dispatcher uses it (secrets decrypted)."""

    id: str
    url: str
    secrets: list[str]
    max_in_flight: int
    rate: float
    row: dict[str, Any]
    #: Why the URL may not be called (SSRF rules), checked whenever the subscriptions are
    #: read; the addresses a name resolves to are checked at every connect.
    refused: str | None = None


@dataclass
class _Lane:
    """The pipeline state of one endpoint (see the module doc)."""

    id: str
    queue: deque[Mapping[str, Any]] = field(default_factory=deque)
    #: One sender per in-flight slot, each sending one row after the other.
    senders: set[asyncio.Task[None]] = field(default_factory=set)
    results: list[Result] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    rows_ready: asyncio.Event = field(default_factory=asyncio.Event)
    results_ready: asyncio.Event = field(default_factory=asyncio.Event)
    claim_below: int = 0
    claiming: asyncio.Task[None] | None = None
    idle_until: float = 0.0
    limiter: _RateLimit | None = None
    closed: bool = False


class Dispatcher:
    """Sends the outbox of ``engine``'s database until ``loop_seconds`` pass or
    ``should_stop()``; see the module doc."""

    def __init__(self, engine: Engine, settings: DispatchSettings, box: SecretBox,
                 hosts: HostList, *, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.engine, self.settings, self.box, self.hosts = engine, settings, box, hosts
        self.should_stop = should_stop
        self.stats = DispatchStats()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._lanes: dict[str, _Lane] = {}
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None
        # database work runs in threads: a few per lane at most (a claim and a write)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mc-webhooks-db")

    # -- database work, in threads ------------------------------------------------------
    async def _db(self, work: Callable[[Connection], Any]) -> Any:
        def run() -> Any:
            with self.engine.begin() as conn:
                return work(conn)
        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    def _load(self, conn: Connection) -> list[dict[str, Any]]:
        conn.execute(FAIL_ORPHANS)
        return [dict(r) for r in conn.execute(SUBSCRIPTIONS).mappings()]

    async def _refresh(self) -> None:
        rows = await self._db(self._load)
        seen = set()
        for row in rows:
            seen.add(row["id"])
            try:
                endpoint = Endpoint(
                    row["id"], row["url"], secrets_of(row, self.box),
                    int(row["max_in_flight"] or self.settings.max_in_flight),
                    float(row["rate_per_second"] or self.settings.rate_per_second), row)
                check_webhook_url(endpoint.url, self.hosts, resolve_names=False)
            except UrlRefused as exc:
                endpoint.refused = f"URL refused: {exc}"
            except Exception as exc:  # a secret that does not decrypt (Fernet key changed)
                log.error("webhook %s skipped: its secret cannot be read (%s)", row["id"],
                          type(exc).__name__)
                continue
            self._endpoints[row["id"]] = endpoint
            if row["id"] not in self._workers or self._workers[row["id"]].done():
                self._lanes[row["id"]] = _Lane(row["id"])
                self._workers[row["id"]] = asyncio.create_task(self._worker(row["id"]))
        for gone in set(self._workers) - seen:
            self._endpoints.pop(gone, None)
            if gone in self._lanes:
                self._lanes[gone].changed.set()

    def wake_all(self) -> None:
        """New messages were committed: every lane claims now (not at its next poll)."""
        for lane in self._lanes.values():
            lane.idle_until = 0.0
            lane.changed.set()

    # -- one endpoint -------------------------------------------------------------------
    def _claim_size(self, endpoint: Endpoint) -> int:
        """Rows per claim: about two seconds of the endpoint's rate, at most ``batch``."""
        return max(1, min(self.settings.batch, endpoint.max_in_flight * 16,
                          int(endpoint.rate * 2) + endpoint.max_in_flight))

    async def _worker(self, sub_id: str) -> None:
        lane = self._lanes[sub_id]
        recorder = asyncio.create_task(self._recorder(lane))
        try:
            while not self._stopping and sub_id in self._endpoints:
                lane.changed.clear()  # before looking: a later change wakes the wait
                endpoint = self._endpoints[sub_id]
                if lane.limiter is None or lane.limiter.rate != endpoint.rate:
                    lane.limiter = _RateLimit(endpoint.rate)
                # one sender per slot (a sender above the cap ends after its request)
                while len(lane.senders) < endpoint.max_in_flight:
                    task = asyncio.create_task(self._sender(lane))
                    lane.senders.add(task)
                    task.add_done_callback(lane.senders.discard)
                # claim the next rows while these are in flight
                size = self._claim_size(endpoint)
                lane.claim_below = size // 2
                if lane.claiming is None and len(lane.queue) <= lane.claim_below \
                        and time.monotonic() >= lane.idle_until:
                    lane.claiming = asyncio.create_task(
                        self._claim(lane, size - len(lane.queue)))
                if lane.queue or lane.claiming is not None:  # a sender or the claim wakes
                    await lane.changed.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.changed.wait(), self.settings.poll_seconds)
        finally:
            await self._close_lane(lane, recorder)

    async def _sender(self, lane: _Lane) -> None:
        """Send the lane's rows one after the other (one in-flight slot): no task, no
        wake-up of the worker per message; the worker is woken when the queue runs low."""
        while not self._stopping and not lane.closed:
            endpoint = self._endpoints.get(lane.id)
            if endpoint is None or len(lane.senders) > endpoint.max_in_flight:
                return  # disabled, or the cap was lowered: this slot ends
            if not lane.queue:
                lane.rows_ready.clear()
                lane.changed.set()
                await lane.rows_ready.wait()
                continue
            assert lane.limiter is not None
            await lane.limiter.wait()
            if not lane.queue or lane.closed:  # taken or given back meanwhile
                continue
            row = lane.queue.popleft()
            if len(lane.queue) <= lane.claim_below and lane.claiming is None:
                lane.changed.set()
            result = await self.send(endpoint, row)
            lane.results.append(result)  # the list of now (the recorder swaps it)
            lane.results_ready.set()

    async def _claim(self, lane: _Lane, limit: int) -> None:
        try:
            rows = await self._db(lambda conn: conn.execute(
                CLAIM, {"sub": lane.id, "limit": limit}).mappings().all())
        except Exception as exc:  # the database is away: wait, try again
            log.warning("webhook %s: claim failed: %s", lane.id, first_line(exc))
            rows = []
        if lane.closed:  # the lane stopped meanwhile: give them back at once
            await self._release(lane, rows)
        elif rows:
            lane.queue.extend(rows)
            lane.rows_ready.set()
        else:  # nothing due: until a NOTIFY or the next poll
            lane.idle_until = time.monotonic() + self.settings.poll_seconds
        lane.claiming = None
        lane.changed.set()

    async def _recorder(self, lane: _Lane) -> None:
        """Write the outcomes that arrived while the previous write ran, in one
        statement, until the lane is closed and nothing is left."""
        while True:
            if not lane.results:
                if lane.closed:
                    return
                await lane.results_ready.wait()
                lane.results_ready.clear()
                continue
            endpoint = self._endpoints.get(lane.id)
            results, lane.results = lane.results, []
            if endpoint is None:  # disabled meanwhile: still record what was sent
                endpoint = Endpoint(lane.id, "", [], 1, 1.0, {})
            # not recorded (the database stayed away): leased, the next start sends them
            await self._record(endpoint, results, keep=lambda: not lane.closed)
            # a later message of an event these were about may be due now
            lane.idle_until = 0.0
            lane.changed.set()

    async def _release(self, lane: _Lane, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        ids = [int(r["id"]) for r in rows]
        try:
            await self._db(lambda conn: conn.execute(RELEASE, {"ids": ids}))
        except Exception as exc:  # left leased: the next start's recover() frees them
            log.warning("webhook %s: claimed rows not given back (%s)", lane.id,
                        first_line(exc))

    async def _close_lane(self, lane: _Lane, recorder: asyncio.Task[None]) -> None:
        """Give back what was claimed and not sent, let the requests in flight end,
        record them."""
        lane.closed = True
        if lane.claiming is not None:
            with contextlib.suppress(Exception):
                await lane.claiming
        unsent, lane.queue = list(lane.queue), deque()
        lane.rows_ready.set()  # waiting senders end
        await self._release(lane, unsent)
        if lane.senders:
            await asyncio.gather(*lane.senders, return_exceptions=True)
        lane.results_ready.set()
        await recorder

    async def send(self, endpoint: Endpoint, row: Mapping[str, Any]) -> Result:
        """One signed POST of one outbox row; never raises."""
        assert self._session is not None
        started, at = time.monotonic(), datetime.now(UTC)

        def result(code: int | None, error: str | None, body: str | None = None,
                   retry_after: float | None = None) -> Result:
            return Result(int(row["id"]), int(row["attempts"]), code, error, body,
                          int((time.monotonic() - started) * 1000), at, retry_after)

        if endpoint.refused is not None:
            return result(None, endpoint.refused)
        body = message_body(row)
        headers = signed_headers(message_id(int(row["id"])), body, endpoint.secrets)
        try:
            async with self._session.post(endpoint.url, data=body, headers=headers,
                                          allow_redirects=False) as response:
                text_ = (await response.content.read(RESPONSE_BYTES)).decode(
                    "utf-8", "replace")
                code = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except UrlRefused as exc:
            return result(None, f"address refused: {exc.reason}")
        except TimeoutError:
            return result(None, f"no answer within {self.settings.timeout:g} s")
        except aiohttp.ClientError as exc:
            return result(None, f"{type(exc).__name__}: {exc}"[:500])
        except OSError as exc:
            return result(None, f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:  # never lose the outcome of a claimed row
            return result(None, f"{type(exc).__name__}: {exc}"[:500])
        error = None if 200 <= code < 300 else f"HTTP {code}"
        if 300 <= code < 400:
            error = f"HTTP {code} (redirects are not followed)"
        return result(code, error, text_, retry_after)

    async def _record(self, endpoint: Endpoint, results: Sequence[Result], *,
                      keep: Callable[[], bool] = lambda: True) -> bool:
        """Write ``results`` (one statement for the outbox rows and their attempts).
        A failed write is tried again - for as long as the lane runs (``keep``), else
        a few times; False when it never succeeded (the rows stay leased: sent again by
        the next start, with the same ids)."""
        statuses, delays = [], []
        gone = None
        for res in results:
            if res.ok:
                statuses.append(WebhookStatus.DELIVERED.value)
                delays.append(None)
                continue
            if res.code == 410:
                gone = "the endpoint answered 410 Gone"
                statuses.append(WebhookStatus.FAILED.value)
                delays.append(None)
                continue
            delay = self.settings.delay(res.attempts, res.retry_after)
            statuses.append(WebhookStatus.FAILED.value if delay is None
                            else WebhookStatus.PENDING.value)
            delays.append(delay)
        any_ok = any(r.ok for r in results)
        first_failure = min((r.at for r in results if not r.ok), default=None)
        last = results[-1]

        def write(conn: Connection) -> str | None:
            conn.execute(RECORD, {
                "sub": endpoint.id, "ids": [r.outbox_id for r in results],
                "statuses": statuses, "delays": delays, "codes": [r.code for r in results],
                "errors": [r.error for r in results], "bodies": [r.body for r in results],
                "ms": [r.ms for r in results], "at": [r.at for r in results]})
            since = conn.execute(ENDPOINT_HEALTH, {
                "sub": endpoint.id, "ok": any_ok,
                "first_failure": first_failure}).scalar()
            reason = gone
            if reason is None and not any_ok and since is not None and \
                    (datetime.now(UTC) - since).total_seconds() >= self.settings.disable_after:
                reason = (f"every attempt failed since {since:%Y-%m-%d %H:%M} UTC "
                          f"({self.settings.disable_after / DAY:g} days); last: "
                          f"{last.error}")
            if reason is not None:
                conn.execute(DISABLE, {"sub": endpoint.id, "reason": reason})
            return reason

        attempt = 0
        while True:  # the database may be restarting: keep the outcomes
            try:
                disabled = await self._db(write)
                break
            except Exception as exc:
                attempt += 1
                # only a lost or refused connection is worth waiting for; anything else
                # would fail again: the rows stay leased (sent again by the next start)
                transient = isinstance(exc, OperationalError | InterfaceError)
                if not transient or (not keep() and attempt >= 5):
                    log.warning("webhook %s: %d outcomes not recorded (%s); they are sent "
                                "again by the next start", endpoint.id, len(results),
                                first_line(exc))
                    return False
                log.warning("webhook %s: recording failed (%s), retrying", endpoint.id,
                            first_line(exc))
                await asyncio.sleep(min(2.0, 0.1 * attempt))
        self.stats.sent += len(results)
        for status in statuses:
            if status == WebhookStatus.DELIVERED:
                self.stats.delivered += 1
            elif status == WebhookStatus.FAILED:
                self.stats.failed += 1
            else:
                self.stats.retried += 1
        if disabled:
            log.warning("webhook %s disabled: %s", endpoint.id, disabled)
            self.stats.disabled.append(endpoint.id)
            self._endpoints.pop(endpoint.id, None)
            if endpoint.id in self._lanes:
                self._lanes[endpoint.id].changed.set()
        return True

    # -- the loop -----------------------------------------------------------------------
    async def run(self, loop_seconds: float) -> DispatchStats:
        # The database threads hold the GIL while they turn rows into Python objects; the
        # loop, back from each socket call, would wait up to the switch interval (5 ms)
        # for it - per request. A shorter interval hands it back sooner.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, SWITCH_INTERVAL))
        try:
            return await self._run(loop_seconds)
        finally:
            sys.setswitchinterval(switch)
            self._pool.shutdown(wait=False)

    async def _run(self, loop_seconds: float) -> DispatchStats:
        await self._db(recover)
        loop = asyncio.get_running_loop()
        stop_listening = threading.Event()

        def listen() -> None:
            while not stop_listening.is_set():  # a lost connection listens again
                try:
                    with Listener(self.engine, WEBHOOK_NOTIFY_CHANNEL) as listener:
                        while not stop_listening.is_set():
                            if listener.wait(self.settings.poll_seconds):
                                loop.call_soon_threadsafe(self.wake_all)
                except Exception as exc:  # the lanes poll meanwhile
                    log.warning("webhook listener: %s", first_line(exc))
                    stop_listening.wait(self.settings.poll_seconds)

        thread = threading.Thread(target=listen, name="mc-webhooks-listen", daemon=True)
        thread.start()
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.hosts), limit=0,
                                         ttl_dns_cache=10)
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        deadline = time.monotonic() + loop_seconds
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                             trust_env=False, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar()) as session:
                self._session = session
                while time.monotonic() < deadline and not self.should_stop():
                    try:
                        await self._refresh()
                    except Exception as exc:
                        log.warning("webhook subscriptions not read: %s", first_line(exc))
                    end = time.monotonic() + self.settings.refresh_seconds
                    while time.monotonic() < min(end, deadline) and not self.should_stop():
                        await asyncio.sleep(0.2)
                self._stopping = True
                for lane in self._lanes.values():
                    lane.changed.set()
                await asyncio.gather(*self._workers.values(), return_exceptions=True)
        finally:
            stop_listening.set()
        return self.stats


def run_dispatcher(engine: Engine, settings: DispatchSettings, box: SecretBox,
                   hosts: HostList, *, loop_seconds: float,
                   should_stop: Callable[[], bool] = lambda: False) -> DispatchStats:
    """Run the dispatcher (blocking) for ``loop_seconds`` or until ``should_stop()``."""
    dispatcher = Dispatcher(engine, settings, box, hosts, should_stop=should_stop)
    return asyncio.run(dispatcher.run(loop_seconds))
