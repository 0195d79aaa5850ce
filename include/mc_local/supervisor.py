"""``make run`` keeps what it starts running: a component that dies is started again.

Each component (the Airflow scheduler, triggerer, DAG processor and API server, the
SMTP and SMS sinks) is a process in a session of its own, its output prefixed with its
name. :meth:`Supervisor.check`, called every half second, starts again whatever exited
- at once the first time, then with a pause that doubles (up to 30 s) while it keeps
dying within a minute of its start - and says so on the terminal. The embedded
PostgreSQL is watched too: when its postmaster is gone it is started again.

A component can also be alive and useless (a triggerer whose database connection broke
and that stopped heartbeating): when the API server's health endpoint reports it
unhealthy for ``unhealthy_seconds`` while the metadata database is healthy, it is
restarted the same way. So after a PostgreSQL restart the UI's health turns green again
by itself.
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
from typing import IO, Protocol

#: Health endpoint keys of the Airflow components we start.
HEALTH_KEYS = {"scheduler": "scheduler", "triggerer": "triggerer",
               "dag-processor": "dag_processor"}


class Postgres(Protocol):
    port: int

    def running(self) -> bool: ...

    def start(self) -> None: ...


def _log(message: str) -> None:
    print(f"[mc] {message}", flush=True)


@dataclass
class Component:
    """One supervised process: ``argv`` with ``env``, restarted when it exits."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
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
                 log: Callable[[str], None] = _log, prefix_output: bool = True) -> None:
        self.components = {c.name: c for c in components}
        self.postgres, self.health_url = postgres, health_url
        self.unhealthy_seconds, self.min_uptime, self.max_pause = (
            unhealthy_seconds, min_uptime, max_pause)
        self.log, self.prefix_output = log, prefix_output
        self._next_pg_check = 0.0
        self._next_health_check = 0.0

    # -- processes --------------------------------------------------------------------
    def start(self, name: str | None = None) -> None:
        for component in ([self.components[name]] if name else self.components.values()):
            self._spawn(component)

    def _spawn(self, component: Component) -> None:
        output = subprocess.PIPE if self.prefix_output else None
        component.process = subprocess.Popen(
            component.argv, env=dict(component.env), stdout=output,
            stderr=subprocess.STDOUT if output else None, start_new_session=True)
        component.started_at = time.monotonic()
        component.unhealthy_since = None
        if output:
            thread = threading.Thread(target=_prefix_lines,
                                      args=(component.name, component.process.stdout),
                                      daemon=True)
            thread.start()
            component.threads = [t for t in component.threads if t.is_alive()] + [thread]

    def check(self) -> list[str]:
        """Start again what died (and PostgreSQL); returns the names restarted."""
        now = time.monotonic()
        restarted: list[str] = []
        if self.postgres is not None and now >= self._next_pg_check:
            self._next_pg_check = now + 2.0
            self._check_postgres()
        if self.health_url and now >= self._next_health_check:
            self._next_health_check = now + 5.0
            self._check_health(now)
        for component in self.components.values():
            if component.alive:
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
                component.next_start = 0.0
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
        """Restart an Airflow component the health endpoint keeps calling unhealthy
        (while the metadata database is fine: then it is the component's own fault)."""
        health = fetch_health(self.health_url or "")
        if not health or health.get("metadatabase", {}).get("status") != "healthy":
            return
        for name, key in HEALTH_KEYS.items():
            component = self.components.get(name)
            if component is None or not component.alive:
                continue
            status = health.get(key, {}).get("status")
            if status != "unhealthy" or now - component.started_at < self.unhealthy_seconds:
                component.unhealthy_since = None
                continue
            if component.unhealthy_since is None:
                component.unhealthy_since = now
            elif now - component.unhealthy_since >= self.unhealthy_seconds:
                self.log(f"{name} is alive but unhealthy for {now - component.unhealthy_since:.0f}s"
                         " (no heartbeat); restarting it")
                terminate(component)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every component (and what it started, in their sessions), and return
        only once every one of those processes is gone (SIGKILL after ``timeout``)."""
        for component in self.components.values():
            if component.process is not None:
                signal_session(component.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for component in self.components.values():
            if component.process is not None:
                stop_session(component.process.pid, deadline)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    component.process.wait(5)


def stop_session(session_id: int, deadline: float) -> None:
    """Stop every process of the session ``session_id`` (a component, and the task
    processes in their own process groups), waiting until they are gone (killed at
    ``deadline``), so "stopped" is only said once nothing runs."""
    import psutil

    def members() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == session_id:
                    found.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return found

    for proc in members():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(members(), timeout=max(0.1, deadline - time.monotonic()))
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


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


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getsid(int(entry)) == sid:
                members.append(int(entry))
    return members


def signal_session(sid: int | None, signum: int) -> None:
    """Send ``signum`` to every process of session ``sid`` (a component and all it
    started: Airflow's task processes have process groups of their own)."""
    if sid is None:
        return
    for pid in _session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def kill_session(sid: int | None) -> None:
    signal_session(sid, signal.SIGKILL)
