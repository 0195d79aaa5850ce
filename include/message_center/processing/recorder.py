"""Recording delivery as it happens, in grouped commits: marks and outcomes.

A shard tells its :class:`OutcomeRecorder` two things per message: "this one is about
to reach the provider" (:meth:`OutcomeRecorder.handing`, step 2 of
:mod:`message_center.delivery.ledger`) and, when the provider answers, its outcome
(:meth:`OutcomeRecorder.add`, step 4). A writer thread commits whatever is waiting in
one statement (group commit): :func:`~message_center.delivery.ledger.record` (steps
2 and 4, and for real time the copy of final outcomes onto the events).

The sender asks for the mark before it opens the SMTP transaction and waits for it
(the barrier returned by :meth:`~OutcomeRecorder.handing`) only before the point of no
return, the final "." of DATA: MAIL, RCPT, DATA and the content go out while the mark
is committed, so the sender rarely waits. The mark of a message is committed with the
outcome of the previous one. So after a ``kill -9`` exactly what was in flight is
unknown - at most one message per SMTP session - every other handed message has its
outcome in the ledger, and the messages armed but never handed are given back to the
queue (:func:`~message_center.state.release_unhanded`). One commit serves
every message (and every session) waiting at that moment: one per message for a
single session against a slow server, far fewer with several sessions.

**Gathering marks.** A mark is needed only at its sender's final ".", so the writer does
not commit the first mark asked for at once: it gathers marks until a sender is actually
waiting for one (its barrier was called), every session has asked for one (nobody else
can join the group: with one session that is at once, as before) or the oldest has
waited ``gather_seconds``. MAIL, RCPT and DATA (one pipelined round trip) go out
meanwhile; the commit then carries the marks of several sessions instead of one or two
(issue 24: the writer's CPU per commit is most of its cost).

Outcomes alone (no sender waiting) are committed at most every ``min_interval``
seconds or when ``max_batch`` are waiting, whichever comes first.

**Overlapping commits.** A commit waits for its WAL flush; a sender whose mark arrived
just after a group was taken would wait for that commit and then for its own: up to two
flushes. So the recorder has ``writers`` connections (two when there are several
sessions): while one group is being committed, a mark a sender is already waiting for
starts a second group on the other connection at once (and only then: marks nobody
waits for yet, and outcomes alone, wait for the commit in flight and join the next
group, so the number of commits per message barely grows). PostgreSQL flushes the WAL of
concurrent commits together. A row never sits in two groups in flight at once (a mark
and the outcome of the same message wait for each other's commit), so the order of the
writes of one row is the order in which they were asked for (issue 24).

**Database outage.** When a write fails because the database cannot be reached, marks
and outcomes stay in memory and the write is retried with exponential backoff.
Meanwhile :meth:`~OutcomeRecorder.add` and :meth:`~OutcomeRecorder.wait_writable`
block, and the barrier of a new message waits before the point of no return: nothing
new is sent. When the database is back, everything is written and sending resumes. The
recorder gives up - every call raises :class:`RecorderFailed` and the unrecorded
outcomes are logged one per line - ``sending_timeout_seconds`` minus a margin after the
oldest message it holds was handed, never later: the crash recovery only settles rows
handed longer than ``sending_timeout_seconds`` ago
(:func:`~message_center.state.recover_unknown_outcomes`), so it never races a
live worker that is only waiting for the database. (The mark is a compare-and-set on
the shard's claim: a row that was released meanwhile is reported by the barrier with
:class:`NotHanded` and must not be sent.)

Wake-ups: the writer thread waits on a condition of its own, each barrier on an event
of its own (set when its mark is committed) or, awaited in the shard's event loop, on a
future the writer completes (one ``call_soon_threadsafe`` per commit for all the
sessions it releases), and callers of :meth:`~OutcomeRecorder.flush`
or blocked by an outage on a third condition, all sharing one lock. A mark or an outcome
therefore wakes the writer only, and a commit wakes exactly the senders whose marks it
wrote: with one condition for all, every mark, outcome and commit woke every waiting
session (a dozen context switches per message at 16 sessions, issue 24).

Thread safety: every method except :meth:`~OutcomeRecorder.close` may be called from
several sender threads at once (one recorder per shard claim, shared by its SMTP
sessions); :meth:`~OutcomeRecorder.close` once, after the senders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from message_center.claims import ShardClaim
from message_center.delivery.ledger import Attempt, Finalized, RetryPolicy, record
from message_center.delivery.outcome import Outcome
from message_center.delivery.quarantine import DEFAULT_RULES, QuarantineRules

log = logging.getLogger(__name__)


class _Mark:
    """What a barrier waits on: ``done`` once the mark is committed (or the recorder gave
    up), an event for a waiting thread, or the future of a coroutine waiting in an event
    loop (completed by the writer, one wake-up of the loop per commit:
    :meth:`OutcomeRecorder._wake`). The event is made only for a thread that waits (a
    ``threading.Event`` per message was ~2% of a delivering shard's CPU); both are set
    under the recorder's lock."""

    __slots__ = ("done", "event", "future")

    def __init__(self) -> None:
        self.done = False
        self.event: threading.Event | None = None
        self.future: asyncio.Future[None] | None = None


class Barrier:
    """The barrier of one message's mark (:meth:`OutcomeRecorder.handing`): call it from
    a thread, or ``await barrier.wait()`` from the shard's event loop."""

    __slots__ = ("_log_id", "_mark", "_recorder")

    def __init__(self, recorder: OutcomeRecorder, log_id: int, mark: _Mark) -> None:
        self._recorder, self._log_id, self._mark = recorder, log_id, mark

    def __call__(self) -> None:
        if not self._mark.done:
            event = self._recorder._need_thread(self._log_id, self._mark)
            if event is not None:
                event.wait()  # set when the mark is committed, or the recorder gives up
        self._recorder._passed(self._log_id)

    async def wait(self) -> None:
        if not self._mark.done:
            future = self._recorder._need(self._log_id, self._mark,
                                          asyncio.get_running_loop())
            if future is not None:
                await future
        self._recorder._passed(self._log_id)


class RecorderFailed(RuntimeError):
    """The recorder could not write in time (database unreachable for too long) or a
    write failed for good: nothing more may be sent."""


class NotHanded(RuntimeError):
    """The row was released by someone else before it could be handed: do not send it."""


def is_connection_error(exc: BaseException) -> bool:
    """True for "the database cannot be reached right now" (worth retrying), False for a
    bug or a constraint violation (retrying cannot help). A :class:`RecorderFailed`
    counts when a lost connection is what made it give up."""
    if isinstance(exc, RecorderFailed):
        return exc.__cause__ is not None and is_connection_error(exc.__cause__)
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def wait_for_database(engine: Engine, *, timeout: float,
                      should_stop: Callable[[], bool] = lambda: False) -> bool:
    """Wait (backoff 0.1 s doubling to 2 s) until the database answers; False after
    ``timeout`` seconds or when ``should_stop()`` turns true."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception as exc:
            if not is_connection_error(exc):
                raise
        if time.monotonic() + delay > deadline or should_stop():
            return False
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


@dataclass
class _Totals:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    expired: int = 0

    def add(self, done: Finalized) -> None:
        self.sent += done.sent
        self.failed += done.failed
        self.retried += done.retried
        self.expired += done.expired


class OutcomeRecorder:
    """Marks and outcomes of one shard claim, committed in groups (see module doc).

    ``sending_timeout_seconds`` is the processing setting of the same name (how long the
    recorder may keep retrying during an outage); ``on_written`` (optional) is called in
    the writer thread after each commit with the :class:`Finalized` of that group.
    """

    def __init__(self, engine: Engine, claim: ShardClaim, retry: RetryPolicy, *,
                 copy_status: bool, sending_timeout_seconds: float = 600.0,
                 max_batch: int = 500, min_interval: float = 0.002,
                 sessions: int = 1, gather_seconds: float = 0.002,
                 backoff_max_seconds: float = 5.0,
                 on_written: Callable[[Finalized], None] | None = None,
                 rules: QuarantineRules = DEFAULT_RULES, writers: int | None = None) -> None:
        if writers is None:  # one session never has two marks waiting
            writers = 1 if sessions == 1 else 2
        if (max_batch < 1 or min_interval < 0 or sending_timeout_seconds <= 0
                or sessions < 1 or gather_seconds < 0 or writers < 1):
            raise ValueError("max_batch, sessions and writers must be >= 1, min_interval "
                             "and gather_seconds >= 0, sending_timeout_seconds > 0")
        self.engine, self.claim, self.retry = engine, claim, retry
        self.rules = rules  # quarantine rules: bounces recorded with the outcomes
        self.copy_status = copy_status
        self.max_batch, self.min_interval = max_batch, min_interval
        # Marks are gathered until a sender needs one (it reached its final "."), every
        # session asked, or the oldest waited gather_seconds (see module doc).
        self.sessions, self.gather_seconds = sessions, gather_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.sending_timeout_seconds = float(sending_timeout_seconds)
        # Give up this long before the crash recovery may settle a row we hold.
        self.margin = min(max(1.0, 0.05 * self.sending_timeout_seconds),
                          0.5 * self.sending_timeout_seconds)
        self.on_written = on_written
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # the writer's: work to do
        self._state = threading.Condition(self._lock)  # written progress, outage, error
        self._mark_waiters: dict[int, _Mark] = {}  # log id -> what its barrier waits on
        self._marks: list[Attempt] = []
        self._pending_marks: set[int] = set()  # log ids in _marks (not taken yet)
        self._needed: set[int] = set()  # log ids in _marks whose barrier is waiting
        self._inflight = 0  # groups being written
        self._inflight_ids: set[int] = set()  # log ids of the groups being written
        self._first_mark = 0.0  # monotonic time the oldest mark in _marks was asked
        self._outcomes: list[tuple[Attempt, Outcome]] = []
        self._handed_at: dict[int, float] = {}  # log id -> monotonic time of handing()
        self._marked: dict[int, bool] = {}  # log id -> mark committed (True) / refused
        self._added = self._written = 0
        self._urgent = 0  # a flush() is waiting: skip the pacing
        self._last_commit = 0.0
        self._outage = False
        self._closing = False
        self._error: RecorderFailed | None = None
        #: Outcomes known but not written when the recorder gave up (to write later).
        self.unrecorded: list[tuple[Attempt, Outcome]] = []
        self._totals = _Totals()
        self.commits = 0
        self._conns: list[Connection | None] = [None] * writers  # one per writer thread
        self._written_lock = threading.Lock()  # on_written is called by one writer at once
        self._threads = [threading.Thread(target=self._run, args=(index,), daemon=True,
                                          name=f"mc-recorder-{claim.kind}-{claim.shard}"
                                               f"-{index}")
                         for index in range(writers)]
        for thread in self._threads:
            thread.start()

    # -- senders' side ----------------------------------------------------------------
    def handing(self, attempt: Attempt) -> Barrier:
        """Ask for the durable "about to reach the provider" mark of ``attempt`` (step 2)
        and return its barrier: call it (or await its :meth:`Barrier.wait` in an event
        loop) just before the point of no return; it returns once the mark is committed,
        raises :class:`NotHanded` if the row is no longer this claim's,
        :class:`RecorderFailed` if the recorder gave up."""
        log_id = attempt.log_id
        with self._cond:
            self._raise_if_failed()
            if self._closing:
                raise RuntimeError("OutcomeRecorder.handing() after close()")
            now = time.monotonic()
            self._handed_at[log_id] = now
            if not self._marks:
                self._first_mark = now
            self._marks.append(attempt)
            self._pending_marks.add(log_id)
            mark = self._mark_waiters.setdefault(log_id, _Mark())
            if len(self._marks) == 1 or len(self._marks) >= self.sessions:
                self._cond.notify()
        return Barrier(self, log_id, mark)

    def _need(self, log_id: int, mark: _Mark,
              loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[None] | None:
        """A barrier is waiting: commit its mark now if it was not taken yet; in an event
        loop, the future the writer completes (None: committed already)."""
        with self._cond:
            if log_id in self._pending_marks:  # not taken yet: commit now
                self._needed.add(log_id)
                self._cond.notify()
            if loop is None or mark.done:
                return None
            mark.future = loop.create_future()
            return mark.future

    def _need_thread(self, log_id: int, mark: _Mark) -> threading.Event | None:
        """:meth:`_need` for a barrier called from a thread: the event to wait on (None:
        committed already)."""
        self._need(log_id, mark)
        with self._lock:
            if mark.done:
                return None
            if mark.event is None:
                mark.event = threading.Event()
            return mark.event

    def _passed(self, log_id: int) -> None:
        """After the wait: return if the mark was committed, else raise why not."""
        with self._lock:
            if log_id in self._marked:
                if not self._marked.pop(log_id):
                    raise NotHanded(f"delivery log {log_id} is no longer this shard's "
                                    "(released meanwhile): not sent")
                return
            self._raise_if_failed()

    def add(self, attempt: Attempt, outcome: Outcome) -> None:
        """Hand over one outcome; returns at once unless the database is unreachable
        (then it blocks until it is written, or raises :class:`RecorderFailed`)."""
        with self._cond:
            self._raise_if_failed()
            if self._closing:
                raise RuntimeError("OutcomeRecorder.add() after close()")
            self._outcomes.append((attempt, outcome))
            self._added += 1
            # The writer waits without a timeout only when nothing was waiting (or for the
            # group in flight, which wakes it): the first outcome or a full batch wakes
            # it; the others are taken by the wait it timed (min_interval, gather_seconds).
            # One wake-up per message was a system call and a context switch (issue 24).
            if len(self._outcomes) == 1 or len(self._outcomes) >= self.max_batch:
                self._cond.notify()
            if self._outage:
                self._state.wait_for(lambda: not self._outage or self._error is not None)
            self._raise_if_failed()

    def wait_writable(self, timeout: float | None = None) -> bool:
        """Block while the database is unreachable; True when a sender may start a new
        message, False on timeout; raises :class:`RecorderFailed` once given up."""
        with self._lock:
            ok = self._state.wait_for(lambda: not self._outage or self._error is not None,
                                      timeout)
            self._raise_if_failed()
            return ok

    def flush(self) -> None:
        """Return once every outcome added so far is committed."""
        with self._cond:
            target = self._added
            self._urgent += 1
            self._cond.notify()
            try:
                self._state.wait_for(lambda: self._written >= target or self._error is not None)
            finally:
                self._urgent -= 1
            if self._written < target:
                self._raise_if_failed()

    def close(self) -> None:
        """Write everything still waiting and stop the writer thread (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        with self._cond:
            if self._written < self._added:
                self._raise_if_failed()

    def __enter__(self) -> OutcomeRecorder:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.close()
        except RecorderFailed:
            if exc_type is None:
                raise
            # the exception in flight says more; the unrecorded outcomes are in the log

    @property
    def totals(self) -> Finalized:
        """What has been written so far (sent, failed, retried, expired)."""
        with self._cond:
            t = self._totals
            return Finalized(sent=t.sent, failed=t.failed, retried=t.retried,
                             expired=t.expired)

    @property
    def pending(self) -> int:
        """Outcomes handed over and not yet committed."""
        with self._cond:
            return self._added - self._written

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- writer thread ----------------------------------------------------------------
    def _next_group(self) -> tuple[list[Attempt], list[tuple[Attempt, Outcome]]] | None:
        with self._cond:
            while True:
                if self._error is not None:  # another writer gave up
                    return None
                if not self._marks and not self._outcomes:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                hurry = self._urgent or self._closing
                busy = self._inflight > 0
                timeout: float | None = None
                if self._marks:
                    # A mark is due when a sender waits for it, when every session has
                    # asked for one (nobody else can join the group), or after
                    # gather_seconds; until then MAIL, RCPT and DATA go out. While a group
                    # is being written, only a mark a sender waits for starts another.
                    wait = self._first_mark + self.gather_seconds - now
                    if busy:
                        due = bool(self._needed)
                    else:
                        due = bool(hurry or self._needed or wait <= 0
                                   or len(self._marks) >= min(self.sessions, self.max_batch))
                        timeout = wait
                else:
                    wait = self._last_commit + self.min_interval - now
                    due = not busy and (wait <= 0 or len(self._outcomes) >= self.max_batch
                                        or bool(hurry))
                    timeout = None if busy else wait
                if due and (group := self._take(now)) is not None:
                    return group
                self._cond.wait(timeout)

    def _take(self, now: float) -> tuple[list[Attempt], list[tuple[Attempt, Outcome]]] | None:
        """Take the next group (the caller holds the lock): every mark and up to
        ``max_batch`` outcomes, except rows of a group being written (they wait for it);
        None when nothing is left to take."""
        blocked = self._inflight_ids
        if blocked:
            marks = [a for a in self._marks if a.log_id not in blocked]
            self._marks = [a for a in self._marks if a.log_id in blocked]
            ready = [o for o in self._outcomes if o[0].log_id not in blocked]
            outcomes = ready[:self.max_batch]
            taken = {id(o) for o in outcomes}
            self._outcomes = [o for o in self._outcomes if id(o) not in taken]
        else:
            marks, self._marks = self._marks, []
            outcomes = self._outcomes[:self.max_batch]
            del self._outcomes[:self.max_batch]
        if self._marks:
            self._first_mark = now
        if not marks and not outcomes:
            return None
        for attempt in marks:
            self._pending_marks.discard(attempt.log_id)
            self._needed.discard(attempt.log_id)
        self._inflight += 1
        self._inflight_ids.update(a.log_id for a in marks)
        self._inflight_ids.update(a.log_id for a, _ in outcomes)
        return marks, outcomes

    def _run(self, index: int) -> None:
        while True:
            group = self._next_group()
            if group is None:
                self._release_connection(index)
                return
            marks, outcomes = group
            try:
                marked, done = self._write(index, marks, outcomes)
            except BaseException as exc:  # reported to every caller
                self._give_up(marks, outcomes, exc)
                self._release_connection(index)
                return
            with self._lock:
                self._inflight -= 1
                self._inflight_ids.difference_update(a.log_id for a in marks)
                self._inflight_ids.difference_update(a.log_id for a, _ in outcomes)
                if len(self._threads) > 1:
                    self._cond.notify_all()  # another writer may wait for this group
                waiters = []
                for attempt in marks:
                    self._marked[attempt.log_id] = attempt.log_id in marked
                    if (waiter := self._mark_waiters.pop(attempt.log_id, None)) is not None:
                        waiters.append(waiter)
                # Woken under the lock: a barrier registers its future under it too.
                self._wake(waiters)
                for attempt, _ in outcomes:
                    self._handed_at.pop(attempt.log_id, None)
                self._written += len(outcomes)
                self._totals.add(done)
                self._last_commit = time.monotonic()
                self.commits += 1
                self._state.notify_all()
            if self.on_written is not None and outcomes:
                with self._written_lock:
                    self.on_written(done)

    @staticmethod
    def _wake(marks: list[_Mark]) -> None:
        """Wake exactly the senders whose marks were written (the caller holds the lock):
        threads through their events, coroutines through one call per event loop."""
        loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for mark in marks:
            mark.done = True
            if mark.event is not None:
                mark.event.set()
            if mark.future is not None:
                loops.setdefault(mark.future.get_loop(), []).append(mark.future)
        for loop, futures in loops.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_complete, futures)

    def _connection(self, index: int) -> Connection:
        # The writer's own connection, in autocommit: each group is one statement
        # (ledger.record), so one round trip and one commit, no BEGIN/COMMIT trips and
        # no pool checkout or pre-ping per group.
        conn = self._conns[index]
        if conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            # The group statement is prepared (one generic plan per connection) and
            # touches a few rows by primary key. Planned while the ledger looked small (a
            # new or purged table, statistics not yet refreshed), the plan hash-joined a
            # sequential scan of delivery_log, then kept reading the whole table on
            # every group as it grew (issue 24: 3,916 scans reading 33.7M rows for 40,000
            # messages); with sequential scans off it takes the indexes whatever the
            # statistics say.
            conn.exec_driver_sql("SET enable_seqscan = off")
            self._conns[index] = conn
        return conn

    def _release_connection(self, index: int) -> None:
        conn, self._conns[index] = self._conns[index], None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.exec_driver_sql("RESET enable_seqscan")  # back to the pool as it came
                conn.close()

    def _drop_connection(self, index: int) -> None:
        conn, self._conns[index] = self._conns[index], None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    def _deadline(self, attempts: list[Attempt]) -> float:
        now = time.monotonic()
        oldest = min((self._handed_at.get(a.log_id, now) for a in attempts), default=now)
        return oldest + self.sending_timeout_seconds - self.margin

    def _write(self, index: int, marks: list[Attempt], outcomes: list[tuple[Attempt, Outcome]]
               ) -> tuple[set[int], Finalized]:
        with self._cond:
            deadline = self._deadline(marks + [a for a, _ in outcomes])
        delay = 0.05
        while True:
            try:
                conn = self._connection(index)
                marked, done = record(conn, self.claim, marks,
                                      outcomes, self.retry, copy_status=self.copy_status,
                                      rules=self.rules)
                if self._outage:
                    log.warning("database reachable again: %d outcome(s) recorded, sending "
                                "resumes", len(outcomes))
                    with self._lock:
                        self._outage = False
                        self._state.notify_all()
                return marked, done
            except Exception as exc:
                self._drop_connection(index)
                if not is_connection_error(exc):
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RecorderFailed(
                        f"the database stayed unreachable: {len(outcomes)} outcome(s) could "
                        "not be recorded before the sending timeout (the crash recovery "
                        "will mark them 'outcome unknown')") from exc
                if not self._outage:
                    log.warning("cannot record %d outcome(s), database unreachable (%s); "
                                "retrying for up to %.0f s, sending nothing new meanwhile",
                                len(outcomes), type(exc).__name__, remaining)
                    with self._lock:
                        self._outage = True
                        self._state.notify_all()
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, self.backoff_max_seconds)

    def _give_up(self, marks: list[Attempt], outcomes: list[tuple[Attempt, Outcome]],
                 exc: BaseException) -> None:
        with self._cond:
            lost = outcomes + self._outcomes
            self._outcomes, self._marks = [], []
            self._pending_marks.clear()
            self._needed.clear()
            self._inflight -= 1
            self._inflight_ids.difference_update(a.log_id for a in marks)
            self._inflight_ids.difference_update(a.log_id for a, _ in outcomes)
            if isinstance(exc, RecorderFailed):
                error = exc
            else:
                error = RecorderFailed(f"recording outcomes failed: {type(exc).__name__}: "
                                       f"{exc}")
                error.__cause__ = exc
            if self._error is None:  # the first writer to give up says why
                self._error = error
            error = self._error
            self.unrecorded += lost  # another writer may have given up already
            self._outage = False
            self._state.notify_all()
            self._cond.notify_all()  # the other writers stop
            waiters, self._mark_waiters = list(self._mark_waiters.values()), {}
            self._wake(waiters)  # their barriers raise RecorderFailed
        log.error("%s", error)
        for attempt, outcome in lost:  # what the ledger could not be told
            log.error("unrecorded outcome: delivery log %s (event %s): %s %s", attempt.log_id,
                      attempt.event_id, outcome.status,
                      outcome.error or outcome.provider_id or "")


def _complete(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():  # a cancelled waiter (its session was stopped)
            future.set_result(None)
