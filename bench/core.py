"""What every stage shares: results and the table, sizes, the deployment, the processes.

A stage is a function ``stage(ctx) -> list[Result]``. It builds its own data, measures
the real code path and its *bare limit* (the cheapest way to do the same work on the same
machine in the same run), and returns rows for the table. Nothing here asserts a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from mc_local.localenv import PROJECT_ROOT, STATE_DIR, Deployment
from mc_local.supervisor import session_members
from message_center.db import engine_for

EXECUTION_TABLES = ("rt_event", "batch_event", "delivery_log", "api_idempotency",
                    "mc_watermark", "quarantine", "tracking_log", "tracking_first",
                    "suppression", "webhook_subscription", "webhook_outbox",
                    "webhook_attempt")
ARCHIVE_TABLES = ("archived_event", "archived_delivery_log", "event_stats_hourly",
                  "flow_stats_hourly", "event_stats_dirty", "archived_tracking_log",
                  "tracking_stats_hourly", "tracking_stats_dirty")


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- results and the table -------------------------------------------------------
@dataclass
class Result:
    """One row of the table.

    ``higher_is_better``: throughputs (ratio = measured / bare, the share of the bare
    speed reached); latencies and memory (ratio = measured / bare, how many times the bare
    cost). ``ok`` is the verdict against the target (None: not measured).
    """

    figure: str
    target: str
    measured: float | None
    unit: str
    ok: bool | None
    bare: float | None = None
    bare_label: str = ""
    higher_is_better: bool = True
    note: str = ""
    state: str = ""  # "" (measured), "skipped" or "ERROR"

    def measured_text(self) -> str:
        return "-" if self.measured is None else f"{fmt(self.measured)} {self.unit}"

    def bare_text(self) -> str:
        if self.bare is None:
            return "-"
        return f"{fmt(self.bare)} {self.unit} ({self.bare_label})" if self.bare_label \
            else f"{fmt(self.bare)} {self.unit}"

    def ratio_text(self) -> str:
        if self.bare is None or self.measured is None or self.bare == 0:
            return "-"
        ratio = self.measured / self.bare
        if self.higher_is_better:
            return f"{ratio:.0%} of bare"
        return f"{ratio:.1f}x bare"

    def verdict(self) -> str:
        return self.state or {True: "ok", False: "MISSED", None: "n/a"}[self.ok]


def fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(results: Sequence[Result]) -> str:
    header = ("figure", "target", "measured", "bare limit (same run)", "ratio to limit",
              "verdict")
    rows = [(r.figure, r.target, r.measured_text(), r.bare_text(), r.ratio_text(),
             r.verdict()) for r in results]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = [f"- {r.figure}: {r.note}" for r in results if r.note]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def machine_line() -> str:
    """``Python 3.11, 2 cores, 24 GB, <cpu>``: the line the README quotes with the table."""
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {round(int(line.split()[1]) / 1024 / 1024)} GB"
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = ", " + line.split(":", 1)[1].strip()
                break
    version = ".".join(platform.python_version_tuple()[:2])
    return f"Python {version}, {os.cpu_count()} cores{memory}{cpu}, {platform.system()}"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed: ...; elapsed()`` (seconds, frozen at exit)."""
    started = time.perf_counter()
    ended: list[float] = []
    yield lambda: (ended[0] if ended else time.perf_counter()) - started
    ended.append(time.perf_counter())


# --- sizes ------------------------------------------------------------------------
@dataclass
class Sizes:
    """How much each stage does. ``quick`` is a smoke run; ``tiny`` is for the test."""

    ingest_events: int = 100_000
    ingest_clients: int = 4
    push_requests: int = 2_000
    split_events: int = 200_000
    deliver_messages: int = 10_000
    deliver_sessions: int = 1  # SMTP sessions of the deliver stage's one shard
    attach_pdf_messages: int = 500  # messages with a generated PDF each (and without)
    attach_messages: int = 5_000  # messages with a 100 KB attachment (and without)
    status_events: int = 200_000
    archive_events: int = 100_000
    rt_rate: float = 100.0
    rt_seconds: float = 120.0
    rt_bare_seconds: float = 20.0
    memory_events: int = 1_000_000
    memory_drain_seconds: float = 900.0  # a safety cap (0: none); a full drain takes ~8 min
    stats_events: int = 100_000_000  # events the generated hourly statistics stand for
    stats_days: int = 365
    report_days: int = 30
    slow_events: int = 60_000  # batch drain through the slow relay (and the 0 ms one)
    slow_latency: float = 0.05  # seconds the slow relay takes per message
    slow_rt_rate: float = 200.0
    slow_rt_seconds: float = 60.0
    cleanup_events: int = 1_000_000  # expired events (with their delivery logs) purged
    tracking_seconds: float = 15.0  # each tracking server load (pixel, click, bare app)
    tracking_two_workers: bool = True  # also measure mc tracking-server --workers 2
    meta_days: int = 30  # simulated days of DAG runs in the Airflow metadata database
    meta_scale: float = 1.0  # share of the real schedules' runs per simulated day
    webhook_changes: int = 100_000  # status changes sent as webhooks
    webhook_latency_changes: int = 3_000  # bounces at 100/s for the latency figure

    @classmethod
    def preset(cls, name: str) -> Sizes:
        if name == "full":
            return cls()
        if name == "quick":
            return cls(ingest_events=10_000, push_requests=300, split_events=20_000,
                       deliver_messages=1_000, attach_pdf_messages=100,
                       attach_messages=1_000, status_events=20_000, archive_events=10_000,
                       rt_seconds=15.0, rt_bare_seconds=5.0, memory_events=50_000,
                       memory_drain_seconds=60.0, stats_events=25_000_000, stats_days=90,
                       slow_events=10_000, slow_rt_seconds=20.0,
                       cleanup_events=100_000, meta_days=30, meta_scale=0.25,
                       tracking_seconds=5.0,
                       webhook_changes=10_000, webhook_latency_changes=1_000)
        if name == "tiny":
            return cls(ingest_events=2_000, ingest_clients=2, push_requests=40,
                       split_events=2_000, deliver_messages=100, attach_pdf_messages=5,
                       attach_messages=20, status_events=2_000,
                       archive_events=1_000, rt_rate=20.0, rt_seconds=3.0,
                       rt_bare_seconds=2.0, memory_events=2_000, memory_drain_seconds=30.0,
                       stats_events=100_000, stats_days=3, report_days=2,
                       slow_events=200, slow_rt_rate=20.0, slow_rt_seconds=3.0,
                       cleanup_events=2_000, meta_days=16, meta_scale=0.01,
                       tracking_seconds=1.0, tracking_two_workers=False,
                       webhook_changes=500, webhook_latency_changes=100)
        raise ValueError(f"unknown size preset {name!r}")


def planned_rows(sizes: Sizes) -> dict[str, list[tuple[str, str]]]:
    """Every stage's rows (figure, target): the table always shows all of them."""
    rt = (f"real time, push to Sent, {sizes.rt_rate:g} events/s for {sizes.rt_seconds:g} s "
          "through the real scheduler")
    return {
        "ingest": [("ingestion over HTTP, 1,000-event batches", ">= 20,000 events/s")],
        "soap_ingest": [("ingestion over ACC SOAP (PushEvents), 1,000-event batches",
                         ">= 50% of JSON batches")],
        "push": [("single real-time push through the API, p50", "<= 10 ms"),
                 ("single real-time push through the API, p99", "<= 50 ms")],
        "split_link": [("split + link to templates",
                        ">= 50,000 events/s and >= 50% of bare")],
        "deliver": [("render + deliver by SMTP to a local sink", ">= 80% of bare pool")],
        "attachments": [
            ("render + deliver with a generated one-page PDF per message (WeasyPrint)",
             "cost stated (no target)"),
            ("render + deliver with a 100 KB attachment per message (template file)",
             "cost stated (no target)"),
            ("render + deliver with a 100 KB attachment given by each event",
             "cost stated (no target)")],
        "status": [("updateEventStatus", ">= 100,000 events/s")],
        "archive": [("archiving, per account", ">= 50,000 rows/s")],
        "reports": [
            (f"service level report, {sizes.report_days} days, all instances "
             f"({sizes.stats_events:,} events in {sizes.stats_days} days of statistics)",
             "< 1,000 ms"),
            (f"processing time report (real-time queue), {sizes.report_days} days",
             "< 1,000 ms"),
            (f"event history report, {sizes.report_days} days, per event type", "< 1,000 ms"),
            ("archiving + hourly statistics, per account", ">= 50,000 rows/s"),
        ],
        "realtime": [(f"{rt}, p50", "<= 500 ms"), (f"{rt}, p99", "<= 2,000 ms")],
        "slow_relay": [
            (f"batch DAG through a relay taking {sizes.slow_latency * 1000:g} ms per message "
             f"({sizes.slow_events:,} events)", ">= 1,000 msg/s and >= 85% of a 0 ms relay"),
            (f"real time, push to Sent, {sizes.slow_rt_rate:g} events/s through the "
             f"{sizes.slow_latency * 1000:g} ms relay, p99", "<= 2,000 ms"),
            ("peak RSS of any task during the slow-relay runs", "<= 300 MB"),
        ],
        "cleanup": [
            (f"cleanup: purge of {sizes.cleanup_events:,} expired events with their delivery "
             "logs, each checked against the archive", ">= 10,000 events/s"),
            (f"{rt}, while the purge runs, p50", "-"),
            (f"{rt}, while the purge runs, p99", "<= 1.5x without the purge"),
            (f"Airflow metadata database after {sizes.meta_days} simulated days of the "
             "Message Center's runs, with the daily clean-up (14 days kept)",
             "< without the clean-up"),
        ],
        "tracking": [
            ("tracking server, open pixel, 64 concurrent clients", ">= 2,000 hits/s"),
            ("tracking server, open pixel, 64 concurrent clients, p99", "<= 50 ms"),
            ("tracking server, click redirect, 64 concurrent clients", ">= 2,000 hits/s"),
            ("tracking server, click redirect, 64 concurrent clients, p99", "<= 50 ms"),
            ("render + deliver with tracking on (opens, clicks, mirror page)",
             ">= 85% of tracking off"),
            ("archiving with tracking logs (an open and a click per sent message)",
             ">= 50% of the rows/s without"),
        ],
        "webhooks": [
            (f"status change -> webhook received at a local receiver, "
             f"{sizes.webhook_changes:,} changes",
             ">= 5,000 webhooks/s and >= 50% of bare"),
            ("status change -> webhook received at 100 changes/s, p99", "<= 1,000 ms"),
            ("webhooks' cost on the delivery: render + deliver with webhooks on (vs off)",
             ">= 90% of off"),
        ],
        "memory": [(f"memory while draining a {sizes.memory_events:,}-event batch backlog, "
                    "peak RSS of any task", "<= 300 MB"),
                   (f"batch backlog of {sizes.memory_events:,} events drained by one "
                    "batchEventsProcessing run", ">= 2,800 events/s and >= 70% of bare pool")],
    }


# --- processes --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None,
                  timeout: float = 60.0, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f}s")
        time.sleep(0.2)


class Managed:
    """A child process in its own session, stopped (group-wide) on exit."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            self.process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=str(PROJECT_ROOT))

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the whole session: Airflow task processes move to process groups of their
        own (a group-wide signal misses them) but stay in the session we started."""
        session = self.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in [self.pid, *session_members(session)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 10)
            while time.monotonic() < deadline:
                if self.process.poll() is not None and not session_members(session):
                    return
                time.sleep(0.2)


# --- the run context ----------------------------------------------------------------
@dataclass
class Context:
    """The bench deployment, its databases, its sinks and (on demand) its Airflow."""

    deployment: Deployment
    sizes: Sizes
    work_dir: Path
    smtp_port: int  # the project's SmtpSink (aiosmtpd, keeps .eml files)
    null_smtp_port: int  # bench.sinks null SMTP server (discards; for big drains)
    processes: dict[str, Managed] = field(default_factory=dict)
    # Postfix's smtp-sink (C), started when installed and MC_BENCH_SINK=smtp-sink: the
    # deliver stage's null-sink figure then uses it (bench.bare_pool.smtp_sink_binary).
    smtp_sink_port: int | None = None
    standalone_smtp_port: int | None = None  # where the running standalone's smtp_default points
    token_cache: str | None = None
    started_at: dict[str, datetime] = field(default_factory=dict)  # process name -> UTC

    # databases
    def url(self, role: str) -> str:
        return self.deployment.database_url(role)

    def engine(self, role: str = "execution") -> Engine:
        return engine_for(self.url(role))

    def reset_execution(self, role: str = "execution") -> None:
        """Empty the event queues and ledger (published templates stay) and refresh the
        planner statistics, so no stage plans with the previous stage's data shape."""
        self.cancel_stuck_queries(role)
        with self.engine(role).begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(EXECUTION_TABLES)}"))
        self.vacuum(*EXECUTION_TABLES, role=role)

    def cancel_stuck_queries(self, role: str = "execution", older_than: float = 30.0) -> int:
        """A task process the bench stopped leaves its statement running in PostgreSQL
        until it ends; cancel such long statements (bench databases only) so the next
        stage does not wait behind them."""
        with self.engine(role).connect() as conn:
            cancelled = conn.execute(text("""
                SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                  AND state = 'active'
                  AND query_start < clock_timestamp() - make_interval(secs => :secs)
            """), {"secs": older_than}).scalar_one()
            conn.commit()
        if cancelled:
            log(f"cancelled {cancelled} statement(s) left running by stopped tasks")
        return int(cancelled)

    def db_pids(self) -> list[int]:
        """The bench PostgreSQL server's postmaster (its backends are its children), for
        the CPU accounting of :mod:`bench.bare_pool`; empty for an external server."""
        from bench.bare_pool import postmaster_pid

        if not self.deployment.uses_embedded:
            return []
        pid = postmaster_pid(self.deployment.embedded.data_dir)
        return [pid] if pid else []

    def reset_archive(self) -> None:
        with self.engine("control").begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(ARCHIVE_TABLES)}"))

    def vacuum(self, *tables: str, role: str = "execution") -> None:
        with self.engine(role).connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in tables:
                conn.execute(text(f"VACUUM ANALYZE {table}"))

    # environment of Airflow processes
    def airflow_env(self, smtp_port: int | None = None) -> dict[str, str]:
        env = {**os.environ, **self.deployment.environment()}
        for role, conn_id in (("execution", "MC_EXECUTION"), ("execution2", "MC_EXECUTION2"),
                              ("control", "MC_CONTROL")):
            env[f"AIRFLOW_CONN_{conn_id}"] = self.url(role).replace("postgresql://",
                                                                    "postgres://", 1)
        env["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port or self.smtp_port,
            "extra": {"disable_tls": True, "disable_ssl": True,
                      "from_email": "Message Center <no-reply@message-center.local>"},
        })
        return env

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.deployment.api_port}"

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Managed:
        self.started_at[name] = datetime.now(UTC)
        process = Managed(name, args, env or dict(os.environ), self.work_dir / f"{name}.log")
        self.processes[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            log(f"stopping {name}")
            process.stop()

    def stop_all(self) -> None:
        for name in list(self.processes)[::-1]:
            self.stop(name)

    def ensure_sinks(self) -> None:
        if "smtp_sink" not in self.processes:
            mail_dir = self.work_dir / "mail"
            sink = self.start("smtp_sink", [sys.executable, "-m", "mc_local.smtp_sink",
                                            "--port", str(self.smtp_port),
                                            "--mail-dir", str(mail_dir)])
            wait_for_port(self.smtp_port, sink.process, what="SMTP sink")
        if "null_smtp" not in self.processes:
            sink = self.start("null_smtp", [sys.executable, "-m", "bench.sinks",
                                            "--port", str(self.null_smtp_port)])
            wait_for_port(self.null_smtp_port, sink.process, what="null SMTP sink")
        from bench.bare_pool import smtp_sink_binary

        binary = smtp_sink_binary()
        if (os.environ.get("MC_BENCH_SINK") == "smtp-sink" and binary
                and "postfix_sink" not in self.processes):
            port = free_port()
            user = ["-u", "nobody"] if os.geteuid() == 0 else []
            sink = self.start("postfix_sink", [binary, *user, "-c", f"127.0.0.1:{port}",
                                               "1000"])
            wait_for_port(port, sink.process, what="Postfix smtp-sink")
            self.smtp_sink_port = port

    def clear_mail(self) -> None:
        for path in (self.work_dir / "mail").glob("*.eml"):
            path.unlink()

    def ensure_api(self) -> None:
        """An Airflow API server (push API plugin) unless standalone already serves it."""
        if "standalone" in self.processes or "api_server" in self.processes:
            return
        self.deployment.write_password_file()
        log("starting airflow api-server")
        server = self.start("api_server", [str(Path(sys.executable).parent / "airflow"),
                                           "api-server"], self.airflow_env())
        self._wait_http(server, "/api/v2/version", timeout=120)

    def ensure_standalone(self, smtp_port: int | None = None) -> None:
        """``airflow standalone`` (API server, scheduler, DAG processor, triggerer), its
        ``smtp_default`` on ``smtp_port`` (by default the bench's null sink, whose latency
        the slow-relay stage switches); restarted if it runs with another one."""
        smtp_port = smtp_port or self.null_smtp_port
        if "standalone" in self.processes:
            if self.standalone_smtp_port == smtp_port:
                return
            self.stop("standalone")
        self.stop("api_server")
        self.deployment.write_password_file()
        log(f"starting airflow standalone (smtp_default on port {smtp_port})")
        env = self.airflow_env(smtp_port=smtp_port)
        self.standalone_smtp_port = smtp_port
        server = self.start("standalone", [str(Path(sys.executable).parent / "airflow"),
                                           "standalone"], env)
        self._wait_http(server, "/api/v2/version", timeout=180)
        deadline = time.monotonic() + 180
        import httpx

        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                health = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()
                if all(health.get(part, {}).get("status") == "healthy"
                       for part in ("scheduler", "dag_processor")):
                    return
            if not server.alive():
                raise RuntimeError(f"airflow standalone exited:\n{server.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"airflow standalone not healthy in time:\n{server.tail()}")
            time.sleep(1)

    def _wait_http(self, server: Managed, path: str, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + path, timeout=2).status_code == 200:
                    return
            if not server.alive():
                raise RuntimeError(f"{server.name} exited:\n{server.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not answer in time:\n{server.tail()}")
            time.sleep(0.3)

    def token(self) -> str:
        import httpx

        if self.token_cache is None:
            response = httpx.post(f"{self.base_url}/auth/token", timeout=30, json={
                "username": "admin", "password": self.deployment.admin_password()})
            response.raise_for_status()
            self.token_cache = str(response.json()["access_token"])
        return self.token_cache

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"}


def new_work_dir() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = STATE_DIR / "bench" / stamp
    path.mkdir(parents=True, exist_ok=True)
    return path


def json_dump(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str))
