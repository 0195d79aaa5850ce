"""The one process manager of every local mode: start, keep running, stop.

``make run``, ``MC_EXECUTOR=celery make run`` and ``make run-execution2`` each build a
list of :class:`Component` (command, environment, health check, restart and stop
policy) and hand it to a :class:`Supervisor`; nothing else starts or stops their
processes, so the three modes behave alike.

* Each component is a process in a **session of its own** (what it starts, Airflow's
  task processes included, stays in that session even in process groups of their own),
  its output prefixed with its name or written to ``<log_dir>/<name>.log``. A component
  with a ``ready`` check (the Celery broker) is waited for before the next one starts.
* :meth:`Supervisor.check`, every half second, **starts again whatever exited** - at
  once the first time, then with a pause that doubles (up to 30 s) while it keeps dying
  within a minute of its start - and says so on the terminal. The embedded PostgreSQL
  is watched too: when its postmaster is gone it is started again.
* A component can be alive and useless (a triggerer whose database connection broke
  and that stopped heartbeating): when the API server's health endpoint reports its
  ``health_key`` unhealthy for ``unhealthy_seconds`` while the metadata database is
  healthy, it is **restarted** the same way. So after a PostgreSQL restart the UI's
  health turns green again by itself.
* **Ctrl-C** (SIGINT) or SIGTERM to :meth:`Supervisor.run` stops everything, by stop
  stage: the Celery workers first (a warm shutdown: SIGTERM to the worker alone, which
  lets its tasks end), then the Airflow components and the sinks, the broker last. Each
  stage is SIGKILLed after its timeout; "stopped" is only said once nothing runs.
* The running session is written to a **session file** (``.mc/sessions/<profile>.json``):
  ``mc ps`` lists it (:func:`session_status`) and ``mc stop`` stops it
  (:func:`stop_recorded_session`), also when ``make run`` itself was killed hard.

The session helpers at the end (:func:`session_members`, :func:`signal_session`,
:func:`kill_session`, :func:`stop_session`) are the only code that lists or signals the
processes of a session.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

#: Stop stages: lower stops first.
FIRST, MIDDLE, LAST = 0, 1, 2


class Postgres(Protocol):
    port: int

    def running(self) -> bool: ...

    def start(self) -> None: ...


def _log(message: str) -> None:
    print(f"[mc] {message}", flush=True)


@dataclass
class Component:
    """One supervised process: ``argv`` with ``env``, restarted when it exits.

    ``health_key``: its key in the API server's health answer (restarted when reported
    unhealthy for long). ``ready``: :meth:`Supervisor.start` waits for it before starting
    the next component. ``restart``: False once stopped on purpose (not restarted).
    ``stop_stage``: lower stages stop first. ``warm_shutdown``: SIGTERM goes to the
    process alone (a Celery worker then lets its tasks end), not to its whole session.
    """

    name: str
    argv: list[str]
    env: Mapping[str, str]
    health_key: str | None = None
    ready: Callable[[], bool] | None = None
    restart: bool = True
    stop_stage: int = MIDDLE
    stop_timeout: float = 30.0
    warm_shutdown: bool = False
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    pause: float = 0.0
    next_start: float = 0.0
    unhealthy_since: float | None = None
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Starts, watches and stops the components of a local deployment (see module doc)."""

    def __init__(self, components: list[Component], *, postgres: Postgres | None = None,
                 health_url: str | None = None, unhealthy_seconds: float = 45.0,
                 min_uptime: float = 60.0, max_pause: float = 30.0,
                 log: Callable[[str], None] = _log, prefix_output: bool = True,
                 log_dir: Path | None = None, session_file: Path | None = None) -> None:
        self.components = {c.name: c for c in components}
        self.postgres, self.health_url = postgres, health_url
        self.unhealthy_seconds, self.min_uptime, self.max_pause = (
            unhealthy_seconds, min_uptime, max_pause)
        self.log, self.prefix_output, self.log_dir = log, prefix_output, log_dir
        self.session_file = session_file
        self._next_pg_check = 0.0
        self._next_health_check = 0.0
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- processes --------------------------------------------------------------------
    def add(self, component: Component, *, start: bool = False) -> Component:
        """Supervise one more component (a Celery worker joining), started if asked."""
        with self._lock:
            current = self.components.get(component.name)
            if current is not None and current.alive:
                raise RuntimeError(f"{component.name} is already running")
            self.components[component.name] = component
            if start:
                self._start_one(component)
        return component

    def start(self, name: str | None = None) -> None:
        """Start every component (or ``name``) in list order, waiting for each ``ready``."""
        with self._lock:
            for component in ([self.components[name]] if name else
                              list(self.components.values())):
                self._start_one(component)

    def _start_one(self, component: Component, timeout: float = 30.0) -> None:
        component.restart = True
        if component.alive:
            return
        self._spawn(component)
        if component.ready is None:
            return
        deadline = time.monotonic() + timeout
        while not component.ready():
            if not component.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{component.name} did not become ready within "
                                   f"{timeout:.0f}s (exit code "
                                   f"{component.process.poll() if component.process else None})")
            time.sleep(0.1)

    def _spawn(self, component: Component) -> None:
        output: IO[bytes] | int | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{component.name}.log").open("ab")
        elif self.prefix_output:
            output = subprocess.PIPE
        component.process = subprocess.Popen(
            component.argv, env=dict(component.env), stdout=output,
            stderr=subprocess.STDOUT if output is not None else None, start_new_session=True)
        component.started_at = time.monotonic()
        component.unhealthy_since = None
        component.next_start = 0.0
        if self.log_dir is not None:
            output.close()  # type: ignore[union-attr]
        elif output is not None:
            thread = threading.Thread(target=_prefix_lines,
                                      args=(component.name, component.process.stdout),
                                      daemon=True)
            thread.start()
            component.threads = [t for t in component.threads if t.is_alive()] + [thread]
        self._write_session_file()

    def check(self) -> list[str]:
        """Start again what died (and PostgreSQL); returns the names restarted."""
        with self._lock:
            if self._stopping.is_set():
                return []
            return self._check()

    def _check(self) -> list[str]:
        now = time.monotonic()
        restarted: list[str] = []
        if self.postgres is not None and now >= self._next_pg_check:
            self._next_pg_check = now + 2.0
            self._check_postgres()
        if self.health_url and now >= self._next_health_check:
            self._next_health_check = now + 5.0
            self._check_health(now)
        for component in self.components.values():
            if component.alive or not component.restart:
                continue
            if component.next_start == 0.0:  # just found dead: decide when to restart
                code = component.process.returncode if component.process else None
                lived = now - component.started_at
                component.pause = (min(self.max_pause, max(1.0, component.pause * 2))
                                   if lived < self.min_uptime else 0.0)
                component.next_start = now + component.pause
                kill_session(component.process.pid if component.process else None)
                self.log(f"{component.name} exited (code {code}); restarting it"
                         + (f" in {component.pause:.0f}s" if component.pause else ""))
            if now >= component.next_start:
                component.restarts += 1
                self._spawn(component)
                self.log(f"{component.name} started again (restart {component.restarts})")
                restarted.append(component.name)
        return restarted

    def _check_postgres(self) -> None:
        assert self.postgres is not None
        try:
            if self.postgres.running():
                return
            self.log(f"PostgreSQL (embedded, port {self.postgres.port}) is not running; "
                     "starting it again")
            self.postgres.start()
            self.log("PostgreSQL started again")
        except Exception as exc:  # tried again at the next check
            self.log(f"PostgreSQL could not be started again yet: {exc}")

    def _check_health(self, now: float) -> None:
        """Restart a component the health endpoint keeps calling unhealthy (while the
        metadata database is fine: then it is the component's own fault)."""
        health = fetch_health(self.health_url or "")
        if not health or health.get("metadatabase", {}).get("status") != "healthy":
            return
        for component in self.components.values():
            if component.health_key is None or not component.alive:
                continue
            status = health.get(component.health_key, {}).get("status")
            if status != "unhealthy" or now - component.started_at < self.unhealthy_seconds:
                component.unhealthy_since = None
                continue
            if component.unhealthy_since is None:
                component.unhealthy_since = now
            elif now - component.unhealthy_since >= self.unhealthy_seconds:
                self.log(f"{component.name} is alive but unhealthy for "
                         f"{now - component.unhealthy_since:.0f}s (no heartbeat); restarting it")
                terminate(component)

    # -- running ----------------------------------------------------------------------
    def watch(self, interval: float = 0.5) -> None:
        """Call :meth:`check` every ``interval`` in a background thread until :meth:`stop`
        (for a deployment started by a test or a benchmark rather than by ``mc run``)."""
        def loop() -> None:
            while not self._stopping.wait(interval):
                self.check()

        self._watcher = threading.Thread(target=loop, name="supervisor", daemon=True)
        self._watcher.start()

    def run(self, on_started: Callable[[], None] | None = None,
            on_stopped: Callable[[], None] | None = None, interval: float = 0.5) -> None:
        """Start everything, keep it running until Ctrl-C (SIGINT) or SIGTERM, then stop
        everything (and call ``on_stopped``): the foreground loop of ``mc run`` in every
        mode."""
        stop_requested = threading.Event()

        def request_stop(signum: int, frame: object) -> None:
            stop_requested.set()

        previous = {signum: signal.signal(signum, request_stop)
                    for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            if on_started is not None:
                on_started()
            while not stop_requested.wait(interval):
                self.check()
        finally:
            self.log("stopping ...")
            try:
                self.stop()
                if on_stopped is not None:
                    on_stopped()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
            self.log("stopped")

    def stop(self, timeout: float | None = None) -> None:
        """Stop every component, stage by stage (see module doc), and return only once
        every process of their sessions is gone (SIGKILL after ``timeout``, or each
        component's ``stop_timeout``)."""
        self._stopping.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        with self._lock:
            for stage in sorted({c.stop_stage for c in self.components.values()}):
                members = [c for c in self.components.values()
                           if c.stop_stage == stage and c.process is not None]
                for component in members:
                    _send_stop(component)
                deadline = time.monotonic() + max(
                    (timeout if timeout is not None else c.stop_timeout for c in members),
                    default=0.0)
                for component in members:
                    _stop_and_reap(component, deadline)
            if self.session_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.session_file.unlink()

    def stop_component(self, name: str, timeout: float | None = None) -> int | None:
        """Stop ``name`` on purpose (SIGTERM, or a warm shutdown); it is not restarted.
        Returns its exit code."""
        with self._lock:
            component = self.components[name]
            component.restart = False
        if component.process is None:
            return None
        _send_stop(component)
        _stop_and_reap(component, time.monotonic() + (
            component.stop_timeout if timeout is None else timeout), name=name, log=self.log)
        return component.process.returncode

    def kill_component(self, name: str) -> None:
        """SIGKILL ``name`` and everything it started (a lost machine); not restarted."""
        with self._lock:
            component = self.components[name]
            component.restart = False
        if component.process is not None:
            kill_session(component.process.pid)
            component.process.wait()

    # -- the session file -------------------------------------------------------------
    def _write_session_file(self) -> None:
        if self.session_file is None:
            return
        record = {"supervisor": _identity(os.getpid()), "components": {
            c.name: {**_identity(c.process.pid), "argv": c.argv, "restarts": c.restarts}
            for c in self.components.values() if c.process is not None}}
        self.session_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.session_file.with_suffix(".tmp")
        partial.write_text(json.dumps(record, indent=1))
        partial.replace(self.session_file)


def _send_stop(component: Component) -> None:
    assert component.process is not None
    if component.warm_shutdown:
        with contextlib.suppress(ProcessLookupError):
            component.process.send_signal(signal.SIGTERM)
    else:
        signal_session(component.process.pid, signal.SIGTERM)


def _stop_and_reap(component: Component, deadline: float, name: str = "",
                   log: Callable[[str], None] | None = None) -> None:
    """Wait for ``component`` until ``deadline`` (then SIGKILL), and for what it left
    behind in its session."""
    assert component.process is not None
    try:
        component.process.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        if log is not None:
            log(f"{name}: did not stop in time, killing it")
        kill_session(component.process.pid)
        component.process.wait()
    if component.warm_shutdown:  # task processes that outlived their worker
        kill_session(component.process.pid)
    else:
        stop_session(component.process.pid, max(deadline, time.monotonic() + 5))


def terminate(component: Component, timeout: float = 10.0) -> None:
    """Stop one component (SIGTERM, then SIGKILL): :meth:`Supervisor.check` restarts it."""
    if component.process is None:
        return
    signal_session(component.process.pid, signal.SIGTERM)
    try:
        component.process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_session(component.process.pid)
        component.process.wait()


def fetch_health(url: str, timeout: float = 3.0) -> dict | None:
    """The API server's ``/api/v2/monitor/health`` answer (None when it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _prefix_lines(name: str, stream: IO[bytes] | None) -> None:
    if stream is None:
        return
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{name:>13} | {line.decode(errors='replace')}")
        sys.stdout.flush()


# -- a recorded session: `mc ps`, `mc stop` ----------------------------------------------
def _identity(pid: int) -> dict[str, Any]:
    """A pid and its start time: a later pid of the same number is not mistaken for it."""
    import psutil

    try:
        return {"pid": pid, "create_time": psutil.Process(pid).create_time()}
    except psutil.Error:
        return {"pid": pid, "create_time": None}


def _still_running(identity: Mapping[str, Any]) -> bool:
    import psutil

    try:
        process = psutil.Process(int(identity["pid"]))
        return (process.create_time() == identity.get("create_time")
                and process.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def read_session(path: Path) -> dict[str, Any] | None:
    """The session recorded in ``path`` (None when there is none or it cannot be read)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def session_status(path: Path) -> list[tuple[str, int, bool]]:
    """(name, pid, running) of the supervisor and each component recorded in ``path``;
    empty when no session is recorded."""
    record = read_session(path)
    if record is None:
        return []
    rows = [("supervisor", int(record["supervisor"]["pid"]),
             _still_running(record["supervisor"]))]
    for name, identity in record.get("components", {}).items():
        rows.append((name, int(identity["pid"]), _still_running(identity)))
    return rows


def stop_recorded_session(path: Path, timeout: float = 120.0,
                          log: Callable[[str], None] = _log) -> bool:
    """Stop the session recorded in ``path``: SIGTERM to its supervisor, which stops
    everything in order; if the supervisor is gone (killed hard), each component's
    session directly. True if anything was running. Only processes whose start time
    matches the record are signalled."""
    record = read_session(path)
    if record is None:
        return False
    found = False
    supervisor = record["supervisor"]
    if _still_running(supervisor):
        found = True
        log(f"stopping the session of pid {supervisor['pid']} (its supervisor) ...")
        os.kill(int(supervisor["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _still_running(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
    deadline = time.monotonic() + 30
    for name, identity in record.get("components", {}).items():
        if _still_running(identity):
            found = True
            log(f"stopping {name} (pid {identity['pid']}), left behind")
            stop_session(int(identity["pid"]), deadline)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return found


# -- process sessions: the one place that lists and signals them ----------------------
def session_members(sid: int) -> list[int]:
    """Pids of the live processes (zombies excluded) of session ``sid``: a component and
    all it started."""
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(entry))
    return members


def signal_session(sid: int | None, signum: int) -> None:
    """Send ``signum`` to every process of session ``sid`` (a component and all it
    started: Airflow's task processes have process groups of their own)."""
    if sid is None:
        return
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def kill_session(sid: int | None) -> None:
    """SIGKILL every process of session ``sid``."""
    signal_session(sid, signal.SIGKILL)


def terminate_session(sid: int | None) -> None:
    """SIGTERM every process of session ``sid``."""
    signal_session(sid, signal.SIGTERM)


def stop_session(session_id: int, deadline: float) -> None:
    """Stop every process of the session ``session_id`` (a component, and the task
    processes in their own process groups), waiting until they are gone (killed at
    ``deadline``), so "stopped" is only said once nothing runs."""
    import psutil

    def members() -> list[psutil.Process]:
        found = []
        for pid in session_members(session_id):
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(pid))
        return found

    for proc in members():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(members(), timeout=max(0.1, deadline - time.monotonic()))
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
