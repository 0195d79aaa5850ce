"""Many delivery sessions inside one shard task: a bounded pool, per-relay caps, throttling.

One SMTP session sends one message per round trip: against a relay that takes 50 ms per
message, a shard sending over one connection tops out at 20 msg/s. A shard therefore
hands each chunk the ledger armed to :class:`SessionPool`, which runs ``sessions``
delivery sessions at once. Each session takes the chunk's next message, sends it over an
SMTP connection of its own (borrowed from
:class:`~message_center.delivery.channels.Channels`, kept open between messages) or
posts it to the SMS gateway, and reports the outcome through one callback.

**Coroutines of one event loop** (issue 24), not a thread per session: the sessions
of a shard run on one thread of the pool's own, each SMTP conversation a coroutine of
:class:`~message_center.delivery.smtp.SmtpSession`, and the recorder's barrier before the
final "." is awaited (the writer thread completes the waiting sessions' futures with one
wake-up of the loop per commit). With a thread per session, 16 sessions and the
recorder's writer handed the GIL to one another for every reply and every mark: 0.4-0.5
ms of CPU per message and a third of it in the kernel, more than rendering and the SMTP
exchange together. A channel whose sender is not asynchronous (SMS, Web Push) keeps
sending from worker threads (its sends are run in the loop's executor, ``sessions``
threads at most): same pool, same gates. The chunk's arming (the ledger's SQL) also runs
in a worker thread while the sessions keep sending.

**The ledger's guarantees do not change.** The pool only sends attempts whose ledger row
the caller committed to ``sending``; every outcome goes through the caller's ``report``
(the one place outcomes are recorded); a message a session has not started when the
chunk's sending budget ends or a stop is asked stays in the :class:`Dispatch` and the
caller gives it back to the queue (not counted as an attempt). When a worker dies, at most
one message per open session is in the middle of its SMTP transaction.

**Per-relay limits** (:class:`RelayGate`, one per channel, or one per relay of a channel
whose messages go to many relays, :class:`RelayGates`: Web Push has one per push
service): at most ``max_concurrent`` messages in flight and at most ``per_second``
started per second (paced evenly, no burst). A "slow down" answer (SMTP ``421`` or an
enhanced status ``4.7.x``; HTTP ``429`` from an SMS gateway or a push service) does not
fail the message: the relay's sessions all pause (1 s, doubling up to a minute while the
relay keeps throttling; the first accepted message resets it; a ``Retry-After`` the relay
gave makes it at least that long) and the same message is tried again. Only a relay that
keeps throttling for the chunk's whole sending budget turns it into an ordinary transient
failure (retried later with the ledger's back-off, or the relay's ``Retry-After`` if
longer, so it still expires after ``max_tries``).

**A relay that is down** (connection refused, "service not available" at the greeting,
an SMS gateway's 503 with ``Retry-After``: :meth:`Outcome.unavailable
<message_center.delivery.outcome.Outcome.unavailable>`) is the business of the relay's
circuit breaker (:mod:`message_center.delivery.breaker`), shared by every shard and
worker; the throttle pause above lives in it too. The message that met the failure is
reported at once, not counted (the ledger gives it back to the queue in its place, no
try used); the sessions start nothing on the relay while its breaker is open, except
the one probe every few seconds, and the messages they hold go back to the queue,
uncounted, when the chunk's budget ends. When a probe gets an answer, every session
resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from message_center import channel as channels
from message_center.delivery.breaker import BreakerStore, RelayBreaker
from message_center.delivery.ledger import Attempt
from message_center.delivery.outcome import Outcome

log = logging.getLogger(__name__)

#: Sends one message and returns its outcome, or ``None`` when it turned out not to be
#: this shard's to send any more (nothing to record). Message-level problems are outcomes;
#: an exception stops the pool (the caller's business: the database gone, a bug).
Send = Callable[[Attempt], Outcome | None]
#: The same, as a coroutine function (the sessions of a shard are coroutines of one loop).
AsyncSend = Callable[[Attempt], Awaitable[Outcome | None]]
T = TypeVar("T")
Report = Callable[[Attempt, Outcome], None]
StopCheck = Callable[[], bool]

#: How long an interrupted pool (task timeout, SIGTERM raised in the task's main thread)
#: lets the sessions finish the message in hand, so its outcome is recorded, not unknown.
IN_FLIGHT_GRACE_SECONDS = 15.0
#: Longest single sleep while waiting for a rate slot, a pause or a concurrency slot, so a
#: stop request or the end of the sending budget is noticed promptly.
WAIT_STEP_SECONDS = 0.1
#: How often a session coroutine looks for a free concurrency slot of a relay whose
#: ``max_concurrent`` is taken (only while it is).
SLOT_POLL_SECONDS = 0.002


def throttle_pattern(channel: str) -> re.Pattern[str] | None:
    """A "slow down" answer in the error text of an outcome built without a classified
    answer (tests, older callers): the channel says how it reads."""
    try:
        return channels.get(channel).throttle_pattern
    except channels.UnknownChannelError:
        return None


def is_throttle(channel: str, outcome: Outcome) -> bool:
    """Is ``outcome`` a "slow down" answer (retry the same message after a pause)?"""
    if outcome.status != "retry" or not outcome.error:
        return False
    answer = outcome.classification
    if answer is not None and answer.code is not None:  # a classified SMTP / HTTP answer
        return answer.is_throttle
    pattern = throttle_pattern(channel)
    return pattern is not None and pattern.search(outcome.error) is not None


class RelayGate:
    """The limits of one relay (an SMTP server, an SMS gateway) inside this task.

    * ``max_concurrent`` - messages in flight at once (``None``: the pool's size);
    * ``per_second`` - messages started per second, paced evenly (``None``: no cap);
    * after :meth:`throttled`, nobody starts a message before the pause ends; the pause
      doubles from ``backoff`` to ``backoff_max`` while the relay keeps throttling and is
      reset by the first message accepted after a pause;
    * ``breaker`` - the relay's circuit breaker (shared through the database, or this
      gate's own): the pause is written there for every worker, :meth:`unavailable`
      counts failures, and while it is open :meth:`wait_turn` lets only the probe through.
    """

    def __init__(self, name: str, *, max_concurrent: int | None = None,
                 per_second: float | None = None, backoff: float = 1.0,
                 backoff_max: float = 60.0, breaker: RelayBreaker | None = None,
                 channel: str = "email") -> None:
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError(f"relay {name}: max_concurrent must be at least 1")
        if per_second is not None and per_second <= 0:
            raise ValueError(f"relay {name}: per_second must be positive")
        if not 0 < backoff <= backoff_max:
            raise ValueError(f"relay {name}: backoff must be positive and <= backoff_max")
        self.name = name
        self.max_concurrent, self.per_second = max_concurrent, per_second
        self._slots = threading.Semaphore(max_concurrent) if max_concurrent else None
        self._interval = 1.0 / per_second if per_second else 0.0
        self._backoff, self._backoff_max = backoff, backoff_max
        self._lock = threading.Lock()
        self._next_start = 0.0
        self._paused_until = 0.0
        self._pause = 0.0
        self.throttles = 0
        self.breaker = breaker or RelayBreaker(name, channel)
        self.unavailable_count = 0

    @property
    def pause(self) -> float:
        """The current "slow down" pause (0: the relay is not throttling)."""
        return self._pause

    def __repr__(self) -> str:
        return (f"RelayGate({self.name!r}, max_concurrent={self.max_concurrent}, "
                f"per_second={self.per_second})")

    async def acquire_async(self, deadline: float, should_stop: StopCheck) -> bool:
        """Wait for a concurrency slot without blocking the sessions' loop; False
        (nothing held) at the deadline or on stop."""
        if self._slots is None:
            return True
        while not self._slots.acquire(blocking=False):
            if time.monotonic() > deadline or should_stop():
                return False
            await asyncio.sleep(SLOT_POLL_SECONDS)
        return True

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def _turn(self, deadline: float, should_stop: StopCheck) -> Generator[float, None, bool]:
        """The steps of waiting for a turn: yields each pause to sleep, returns whether
        this caller may start (see :meth:`wait_turn`); the thread and the coroutine
        versions only differ in how they sleep."""
        while (step := self._breaker_step(deadline, should_stop)) is not True:
            if step is False:
                return False
            yield step
        start = self._reserve(deadline)
        if start is None:
            return False
        while (left := start - time.monotonic()) > 0:
            if should_stop():
                return False
            yield min(left, WAIT_STEP_SECONDS)
        return True

    def wait_turn(self, deadline: float, should_stop: StopCheck) -> bool:
        """Wait until this caller may start a message (breaker closed, or this caller
        takes the probe; rate slot; throttle pause); False when that time is past
        ``deadline`` or a stop is asked meanwhile. For a caller in a thread (tools,
        tests); the sessions await :meth:`wait_turn_async`, which shares its steps."""
        steps = self._turn(deadline, should_stop)
        while not isinstance(pause := _advance(steps), bool):
            time.sleep(pause)
        return pause

    async def wait_turn_async(self, deadline: float, should_stop: StopCheck) -> bool:
        """:meth:`wait_turn` for a session coroutine (the loop is never blocked)."""
        steps = self._turn(deadline, should_stop)
        while not isinstance(pause := _advance(steps), bool):
            await asyncio.sleep(pause)
        return pause

    def _reserve(self, deadline: float) -> float | None:
        """The time this caller may start (its rate slot taken), None if past
        ``deadline``."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start, self._paused_until)
            if start > deadline:
                return None
            if self._interval:
                self._next_start = start + self._interval
        return start

    def _breaker_step(self, deadline: float, should_stop: StopCheck) -> bool | float:
        """One look at the relay's breaker (or a pause another worker was asked for):
        True when the caller may go (closed, or it took the probe), False when it must
        give up (deadline, stop), else how long to sleep before looking again."""
        view = self.breaker.view()
        if view.pause_left > 0:
            with self._lock:
                self._paused_until = max(self._paused_until,
                                         time.monotonic() + view.pause_left)
        if not view.is_open:
            return True
        if view.probe_in <= 0 and self.breaker.take_probe():
            return True
        if time.monotonic() > deadline or should_stop():
            return False
        return min(max(view.probe_in, WAIT_STEP_SECONDS),
                   self.breaker.policy.refresh_seconds, 0.5)

    @property
    def is_down(self) -> bool:
        """Is the relay's breaker open (as last seen)?"""
        return self.breaker.view().is_open

    def throttled(self, error: str | None = None, at_least: float | None = None) -> float:
        """The relay said "slow down": pause every session; returns the pause left (s).
        ``at_least``: the relay's own ``Retry-After`` (the pause is never shorter)."""
        with self._lock:
            now = time.monotonic()
            self.throttles += 1
            doubled = now >= self._paused_until  # one doubling per pause, however many
            if doubled:
                self._pause = min(self._backoff_max,
                                  self._pause * 2 if self._pause else self._backoff)
                self._paused_until = now + self._pause
                log.warning("relay %s asks to slow down: pausing its sessions %.1fs",
                            self.name, self._pause)
            if at_least and now + at_least > self._paused_until:
                self._paused_until = now + at_least
                doubled = True  # the longer pause is shared with every worker
            left = self._paused_until - now
        if doubled and error is not None:  # every worker pauses too (not a failure)
            self.breaker.pause(error, left)
        return left

    def unavailable(self, outcome: Outcome) -> None:
        """The relay could not be reached (or asked to come back after ``retry_after``):
        one more failure in a row for its breaker."""
        with self._lock:
            self.unavailable_count += 1
            pause = outcome.retry_after or 0.0
            if pause:
                self._paused_until = max(self._paused_until, time.monotonic() + pause)
        self.breaker.failure(outcome.error or "unavailable", pause)

    def accepted(self) -> None:
        """A message went through after the last pause ended: the relay has recovered."""
        if self._pause and time.monotonic() >= self._paused_until:
            with self._lock:
                if time.monotonic() >= self._paused_until:
                    self._pause = 0.0

    def answered(self) -> None:
        """The relay answered (whatever it said): it is up; closes its breaker."""
        self.breaker.success()


class RelayGates:
    """The gates of a channel whose messages go to many relays (Web Push: each
    subscription's push service): one :class:`RelayGate` per relay, made by ``make(key)``
    on first use (each with the same limits: the provider's caps hold per relay), ``key``
    saying which relay a message goes to. Each gate has its own circuit breaker, in
    ``breakers`` (set by the shard's :class:`~message_center.delivery.channels.Channels`)."""

    #: Relays remembered at once (keys come from event data: stay bounded).
    MAX_GATES = 4096

    def __init__(self, channel: str, key: Callable[[Attempt], str],
                 make: Callable[[str], RelayGate]) -> None:
        self.channel, self._key, self._make = channel, key, make
        self.breakers: BreakerStore | None = None
        self._gates: dict[str, RelayGate] = {}
        self._lock = threading.Lock()
        self._throttles = self._unavailable = 0  # of the gates forgotten

    def gate(self, attempt: Attempt) -> RelayGate:
        """The gate of the relay ``attempt`` goes to."""
        key = self._key(attempt)
        found = self._gates.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._gates.get(key)
            if found is None:
                if len(self._gates) >= self.MAX_GATES:
                    self._forget()
                found = self._make(key)
                found.breaker = RelayBreaker(found.name, self.channel, self.breakers)
                self._gates[key] = found
            return found

    def _forget(self) -> None:
        """Start afresh (a session holding a forgotten gate still releases it)."""
        for gate in self._gates.values():
            self._throttles += gate.throttles
            self._unavailable += gate.unavailable_count
        self._gates.clear()

    def __iter__(self) -> Iterable[RelayGate]:
        return iter(list(self._gates.values()))

    @property
    def throttles(self) -> int:
        return self._throttles + sum(gate.throttles for gate in list(self._gates.values()))

    @property
    def unavailable_count(self) -> int:
        return self._unavailable + sum(gate.unavailable_count
                                       for gate in list(self._gates.values()))


#: The next chunk armed for sending and the time (``time.monotonic()``) its messages must
#: be started by; ``None``: the shard has nothing more.
Refill = Callable[[], "tuple[list[Attempt], float] | None"]


class Dispatch:
    """The messages of a shard the sessions have not started yet.

    Sessions take messages in order. Given ``refill``, the dispatch asks it for the next
    chunk as soon as no more than ``low_water`` messages are waiting (one session arms it
    while the others keep sending: the sessions never wait for the ledger between chunks);
    without it, it holds ``attempts`` only. Each message carries its chunk's deadline.

    Whatever is left when the pool returns (a sending budget ran out, a stop was asked,
    the task was interrupted) is :meth:`unsent`: the caller gives it back to the queue. A
    taken message is either reported or, if the worker dies, in flight.
    """

    def __init__(self, attempts: Iterable[Attempt] = (), deadline: float = float("inf"), *,
                 refill: Refill | None = None, low_water: int = 0) -> None:
        self._pending: deque[tuple[Attempt, float]] = deque(
            (attempt, deadline) for attempt in attempts)
        self._cond = threading.Condition()
        self._halted = False
        self._refill, self._low_water = refill, low_water
        self._refilling = False
        self._arming: asyncio.Future[None] | None = None  # the chunk being armed
        self.exhausted = refill is None  # True once refill said there is nothing more

    async def take(self) -> tuple[Attempt, float] | None:
        """The next message and its deadline; ``None`` when there is none (halted, or
        nothing left and nothing more to come). May arm the next chunk (``refill``, run
        in a worker thread: it is the ledger's SQL) while the other session coroutines
        await it or keep sending."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._halted:
                    return None
                if self._pending and (len(self._pending) > self._low_water
                                      or self.exhausted or self._refilling):
                    return self._pending.popleft()
                if self.exhausted:
                    return None
                arming = self._arming
                mine = arming is None
                if arming is None:
                    self._refilling = True
                    arming = self._arming = loop.create_future()
            if not mine:  # nothing waiting, another session arms the next chunk
                await asyncio.shield(arming)
                continue
            try:
                assert self._refill is not None
                more = await loop.run_in_executor(None, self._refill)
            except BaseException:
                with self._cond:
                    self._refilling, self._halted, self._arming = False, True, None
                    self._cond.notify_all()
                arming.set_result(None)
                raise
            with self._cond:
                self._refilling, self._arming = False, None
                if more is None:
                    self.exhausted = True
                else:
                    attempts, deadline = more
                    self._pending.extend((attempt, deadline) for attempt in attempts)
                self._cond.notify_all()
            arming.set_result(None)

    def put_back(self, attempt: Attempt, deadline: float) -> None:
        with self._cond:
            self._pending.appendleft((attempt, deadline))

    def halt(self) -> None:
        """No session takes another message."""
        with self._cond:
            self._halted = True
            self._cond.notify_all()

    def unsent(self) -> list[Attempt]:
        """Halt, and hand over the messages never started (each at most once)."""
        with self._cond:
            self._halted = True
            left, self._pending = [attempt for attempt, _ in self._pending], deque()
            self._cond.notify_all()
        return left


def _advance(steps: Generator[float, None, bool]) -> float | bool:
    """The next pause of a :meth:`RelayGate._turn`, or its answer once it is done."""
    try:
        return next(steps)
    except StopIteration as done:
        return bool(done.value)


class SessionPool:
    """``sessions`` delivery sessions sharing the chunks of one shard (see module doc).

    ``gates`` maps a channel (``email``, ``sms``) to its relay's :class:`RelayGate` (or
    its relays' :class:`RelayGates`). The sessions are coroutines of one event loop,
    run by one thread of the pool's own (kept between runs: a real-time loop reuses it
    and the connections opened on it); a ``send`` that is a plain function runs in a
    worker thread of the loop (``sessions`` of them at most).
    """

    def __init__(self, gates: Mapping[str, RelayGate | RelayGates], sessions: int = 1) -> None:
        if sessions < 1:
            raise ValueError("a session pool needs at least one session")
        self.gates, self.sessions = dict(gates), sessions
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The sessions' event loop (started on first use)."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            loop.set_default_executor(ThreadPoolExecutor(
                self.sessions + 1, thread_name_prefix="mc-session"))  # + the chunk arming
            thread = threading.Thread(target=loop.run_forever, name="mc-sessions",
                                      daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def close(self) -> None:
        """Stop the loop thread (after what the senders opened on it was closed)."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(),
                                             loop).result(IN_FLIGHT_GRACE_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(IN_FLIGHT_GRACE_SECONDS)
        if not thread.is_alive():
            loop.close()

    def call(self, work: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``work`` on the sessions' loop from another thread and return its result
        (e.g. closing the connections the sessions opened)."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    @property
    def throttles(self) -> int:
        return sum(gate.throttles for gate in self.gates.values())

    @property
    def unavailable(self) -> int:
        """Attempts that found their relay down (not counted as tries)."""
        return sum(gate.unavailable_count for gate in self.gates.values())

    def run(self, dispatch: Dispatch, send: Send | AsyncSend, report: Report, *,
            deadline: float = float("inf"), should_stop: StopCheck = lambda: False) -> None:
        """Deliver the dispatch's messages over the sessions until none is left, a
        message's deadline (its chunk's, or ``deadline``: ``time.monotonic()``) passes or
        ``should_stop()`` turns true; then the dispatch is halted.

        ``send`` is a coroutine function awaited by the sessions (one event loop), or a
        plain function run in worker threads, several at once (it must allow it:
        :meth:`Channels.deliver <message_center.delivery.channels.Channels.deliver>`
        does). Each outcome goes to ``report`` (the one place outcomes are recorded),
        called in the loop: it must not block (the recorder's ``add`` returns at once
        unless the database is down, and then nothing may be sent anyway).

        If the calling thread is interrupted (an exception raised while it waits: task
        timeout, SIGTERM), the sessions take no new message and get
        :data:`IN_FLIGHT_GRACE_SECONDS` to finish and report the one in hand (then the
        ones still running are cancelled: unknown); then the exception propagates.
        Unstarted messages stay in ``dispatch``."""
        if inspect.iscoroutinefunction(send):
            call = send
        else:
            plain = send

            async def call(attempt: Attempt) -> Outcome | None:
                return await asyncio.get_running_loop().run_in_executor(None, plain, attempt)

        future = asyncio.run_coroutine_threadsafe(
            self._run(dispatch, call, report, deadline, should_stop), self.loop)
        try:
            future.result()
        except BaseException as exc:
            dispatch.halt()
            with contextlib.suppress(BaseException):
                future.result(IN_FLIGHT_GRACE_SECONDS)
            future.cancel()
            if isinstance(exc, _Interrupted):  # raised by a send: raised here, as it was
                raise exc.interrupt from None
            raise

    async def _run(self, dispatch: Dispatch, send: AsyncSend, report: Report,
                   deadline: float, should_stop: StopCheck) -> None:
        sessions = [asyncio.create_task(self._session(dispatch, send, report, deadline,
                                                      should_stop))
                    for _ in range(self.sessions)]
        try:
            done, pending = await asyncio.wait(sessions,
                                               return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:  # the caller gave up waiting (after the grace)
            for task in sessions:
                task.cancel()
            raise
        failed = [task for task in done if task.exception() is not None]
        if failed:  # a session died on something other than a message (a bug)
            dispatch.halt()
            if pending:
                await asyncio.wait(pending, timeout=IN_FLIGHT_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            exc = failed[0].exception()
            assert exc is not None
            raise exc

    async def _session(self, dispatch: Dispatch, send: AsyncSend, report: Report,
                       run_deadline: float, should_stop: StopCheck) -> None:
        try:
            await self._messages(dispatch, send, report, run_deadline, should_stop)
        except (KeyboardInterrupt, SystemExit) as exc:  # would stop the loop itself
            raise _Interrupted(exc) from None

    async def _messages(self, dispatch: Dispatch, send: AsyncSend, report: Report,
                        run_deadline: float, should_stop: StopCheck) -> None:
        while (item := await dispatch.take()) is not None:
            attempt, chunk_deadline = item
            deadline = min(run_deadline, chunk_deadline)
            if time.monotonic() > deadline or should_stop():
                dispatch.put_back(attempt, chunk_deadline)
                dispatch.halt()
                return
            try:
                outcome = await self._send(attempt, send, deadline, should_stop)
            except _NotStarted:  # the budget ran out or a stop was asked: give it back
                dispatch.put_back(attempt, chunk_deadline)
                dispatch.halt()
                return
            if outcome is not None:
                report(attempt, outcome)

    async def _send(self, attempt: Attempt, send: AsyncSend, deadline: float,
                    should_stop: StopCheck) -> Outcome | None:
        """Send one message, waiting for its relay's turn and trying it again after each
        "slow down" pause; raises :class:`_NotStarted` if it never went out. A relay found
        unavailable ends the message at once, uncounted (see the module doc)."""
        found = self.gates.get(attempt.channel)
        if found is None or attempt.row.get("sandbox"):  # a sandbox row reaches no relay
            return await send(attempt)
        gate = found.gate(attempt) if isinstance(found, RelayGates) else found
        throttle: Outcome | None = None
        while True:
            if not await gate.acquire_async(deadline, should_stop):
                return _not_sent(throttle, gate)
            try:
                if not await gate.wait_turn_async(deadline, should_stop):
                    return _not_sent(throttle, gate)
                outcome = await send(attempt)
            finally:
                gate.release()
            if outcome is not None and not outcome.counted:
                gate.unavailable(outcome)
                return outcome
            if outcome is None or not is_throttle(attempt.channel, outcome):
                if outcome is not None:
                    gate.answered()
                    if outcome.status == "sent":
                        gate.accepted()
                return outcome
            throttle = outcome
            gate.throttled(outcome.error, outcome.retry_after)


class _NotStarted(Exception):
    """The message was never handed to the relay (deadline, stop)."""


class _Interrupted(Exception):
    """A ``KeyboardInterrupt`` / ``SystemExit`` raised in a session (a send), carried
    out of the event loop to the pool's caller."""

    def __init__(self, interrupt: BaseException) -> None:
        super().__init__(repr(interrupt))
        self.interrupt = interrupt


def _not_sent(throttle: Outcome | None, gate: RelayGate) -> Outcome:
    if throttle is None:
        raise _NotStarted
    if gate.is_down:  # the relay went down meanwhile: not this message's fault
        return Outcome.unavailable(f"the relay is down (circuit breaker open): "
                                   f"{throttle.error}")
    # Refused with "slow down" until the budget ran out or the worker stops: it is known
    # not to have been sent, and counts as one ordinary transient failure (retried later
    # with the ledger's back-off, so a relay that never relents still expires it).
    return replace(Outcome.retry(f"the relay kept asking to slow down: {throttle.error}",
                                 throttle.classification), retry_after=throttle.retry_after)
