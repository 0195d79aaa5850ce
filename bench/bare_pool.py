"""Bare limits and CPU accounting for the delivery stages (issue 24).

* :func:`bare_pool` - the same number of SMTP sessions as the pipeline under test (spread
  over the same number of processes as its shard tasks) sending one pre-rendered message
  to the same sink with the same SMTP client (``SmtpSession``: the sessions of a process
  coroutines of one event loop, pipelined when the sink offers it), with no database at
  all: the physical limit of the sink + the client on this machine, measured in the same
  run as the figure it is printed next to.
* :class:`CpuMeter` - user and system CPU seconds of a set of processes (the bench
  process or the Airflow task processes, and every PostgreSQL process of the bench
  server), from ``/proc``, with their context switches, so every delivery stage can print
  CPU per message and the share of it spent in the kernel.
* :func:`sink_choice` - which sink a figure used: the bench's own null sink
  (:mod:`bench.sinks`, Python) or Postfix's ``smtp-sink`` (C, negligible CPU) when it is
  installed (Debian package ``postfix``) and ``MC_BENCH_SINK=smtp-sink``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_seconds(pid: int) -> tuple[float, float]:
    """(user, system) seconds of ``pid`` and of its children it has reaped."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + cutime) / TICKS, (stime + cstime) / TICKS


def _switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of ``pid`` (alive now:
    unlike CPU time, the kernel does not add an exited child's to its parent's)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(x) for x in task.read_text().split()]
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now."""
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += _children(pid)
    return seen


@dataclass
class CpuSample:
    user: float = 0.0
    system: float = 0.0
    switches: int = 0

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.user - other.user, self.system - other.system,
                         self.switches - other.switches)

    @property
    def total(self) -> float:
        return self.user + self.system


def sample(roots: list[int], tree: bool = True) -> CpuSample:
    """CPU of the process trees under ``roots`` (exited children count once reaped by a
    process of the tree, which the Airflow supervisors and the postmaster do); with
    ``tree=False`` of the ``roots`` alone (their threads included)."""
    out = CpuSample()
    seen: set[int] = set()
    for root in roots:
        for pid in process_tree(root) if tree else [root]:
            if pid in seen:
                continue
            seen.add(pid)
            with contextlib.suppress(OSError, ValueError, IndexError):
                user, system = _stat_seconds(pid)
                out.user += user
                out.system += system
                out.switches += _switches(pid)
    return out


def commit_counter(engine: Any) -> Callable[[], int]:
    """Transactions committed in the database of ``engine`` so far (pg_stat_database,
    as the server last flushed its backends' counters)."""
    from sqlalchemy import text

    def commits() -> int:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            return int(conn.execute(text(
                "SELECT xact_commit FROM pg_stat_database "
                "WHERE datname = current_database()")).scalar_one())
    return commits


def postmaster_pid(data_dir: Path) -> int | None:
    """The bench PostgreSQL server's postmaster (first line of ``postmaster.pid``)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    return None


class CpuMeter:
    """``with CpuMeter(app=[pid], db=[postmaster]) as cpu: ...``; then
    :meth:`per_message` for the table's note. ``app`` is what runs the Message Center
    code (the bench process itself for the in-process stages, the Airflow tasks
    otherwise; ``app_tree=False`` for the bench process, whose children are the sinks);
    ``db`` the PostgreSQL server."""

    def __init__(self, app: list[int], db: list[int], *, app_tree: bool = True,
                 commits: Callable[[], int] | None = None) -> None:
        self.app, self.db, self.app_tree = app, db, app_tree
        self.app_cpu = self.db_cpu = CpuSample()
        self.seconds = 0.0
        self._commits, self.commits = commits, 0
        self._c0 = 0

    def __enter__(self) -> CpuMeter:
        self._app0, self._db0 = sample(self.app, self.app_tree), sample(self.db)
        self._c0 = self._commits() if self._commits else 0
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.app_cpu = sample(self.app, self.app_tree) - self._app0
        self.db_cpu = sample(self.db) - self._db0
        if self._commits:
            time.sleep(1.1)  # backends report their counters at most once a second
            self.commits = self._commits() - self._c0

    def per_message(self, messages: int) -> str:
        """``CPU/msg 1.23 ms (app 0.80 + PostgreSQL 0.43; system 21%), 4.1 context
        switches/msg``."""
        if messages <= 0:
            return "CPU/msg: no message"
        total = self.app_cpu.total + self.db_cpu.total
        system = self.app_cpu.system + self.db_cpu.system
        switches = self.app_cpu.switches + self.db_cpu.switches
        share = system / total if total else 0.0
        busy = total / self.seconds if self.seconds else 0.0
        return (f"CPU/msg {total / messages * 1000:.2f} ms (Message Center "
                f"{self.app_cpu.total / messages * 1000:.2f} + PostgreSQL "
                f"{self.db_cpu.total / messages * 1000:.2f}; system {share:.0%}), "
                f"{switches / messages:.1f} context switches/msg, "
                + (f"{self.commits / messages:.2f} commits/msg "
                   f"({self.commits / self.seconds:,.0f}/s), " if self._commits else "")
                + f"{busy:.2f} CPUs busy")


# --- the bare pool ----------------------------------------------------------------------
async def _sessions(port: int, message: bytes, share: list[int],
                    go: multiprocessing.synchronize.Event, ready: multiprocessing.Queue
                    ) -> tuple[float, float]:
    # The project's SMTP client (SmtpSession: MAIL/RCPT/DATA pipelined when the sink
    # offers PIPELINING), its sessions coroutines of one event loop per process, as a
    # shard's are, without its database.
    from message_center.delivery.smtp import SmtpSession, SmtpSettings

    settings = SmtpSettings(host="127.0.0.1", port=port, timeout=60)
    sessions = [SmtpSession(settings) for n in share if n]

    async def send(session: SmtpSession, count: int) -> None:
        for i in range(count):
            outcome = await session.send_bytes(message, None,
                                               "no-reply@message-center.local",
                                               f"customer{i}@example.com")
            if outcome.status != "sent":
                raise RuntimeError(f"bare pool: the sink refused a message: {outcome}")

    try:
        await asyncio.gather(*(send(s, 1) for s in sessions))  # connected before the start
        ready.put(os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        before = os.times()
        await asyncio.gather(*(send(s, n) for s, n in zip(sessions, share, strict=False)))
        after = os.times()
    finally:
        for session in sessions:
            await session.close()
    return after.user - before.user, after.system - before.system


def _process(port: int, message: bytes, sessions: int, count: int,
             go: multiprocessing.synchronize.Event, ready: multiprocessing.Queue,
             done: multiprocessing.Queue) -> None:
    share = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
    done.put(asyncio.run(_sessions(port, message, [n for n in share if n], go, ready)))


def bare_pool(port: int, message: bytes, *, sessions: int, processes: int = 1,
              count: int, cpu: list[str] | None = None) -> float:
    """Messages/s of ``processes`` processes x ``sessions`` SMTP sessions (``SmtpSession``)
    each, sending ``count`` copies of ``message`` in all (no database, no rendering).
    ``cpu``: gets the clients' CPU per message appended (the bare cost of the SMTP
    client itself, to set against the pipeline's)."""
    spawn = multiprocessing.get_context("spawn")
    go, ready, done = spawn.Event(), spawn.Queue(), spawn.Queue()
    per = [count // processes + (1 if i < count % processes else 0)
           for i in range(processes)]
    workers = [spawn.Process(target=_process, args=(port, message, sessions, n, go, ready,
                                                         done))
               for n in per]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=120)
    started = time.perf_counter()
    go.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if any(w.exitcode for w in workers):
        raise RuntimeError("a bare-pool process failed")
    if cpu is not None:
        times = [done.get(timeout=10) for _ in workers]
        user, system = sum(t[0] for t in times), sum(t[1] for t in times)
        share = system / (user + system) if user + system else 0.0
        cpu.append(f"client CPU/msg {(user + system) / count * 1000:.2f} ms "
                   f"(system {share:.0%})")
    return count / elapsed


# --- which sink -----------------------------------------------------------------------
def smtp_sink_binary() -> str | None:
    """Postfix's ``smtp-sink`` if installed (``/usr/sbin/smtp-sink``)."""
    return shutil.which("smtp-sink") or next(
        (p for p in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink")
         if os.access(p, os.X_OK)), None)
