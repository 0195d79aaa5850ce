"""Sets up and runs a local deployment: embedded PostgreSQL, schemas, Airflow, SMTP sink.

``make run`` owns what it starts, and only that: it refuses ports already taken (naming
the variable that moves each) and an embedded PostgreSQL port served by another
checkout's data; it supervises each component and starts again whatever dies.

Airflow itself is only ever started as a subprocess here, with the environment from
:mod:`mc_local.localenv`, so this module stays free of Airflow imports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

from mc_airflow.defaults import templates_dir
from mc_local.embedded_pg import NotOurServer, ensure_database
from mc_local.localenv import PROJECT_ROOT, Deployment
from mc_local.supervisor import Component, Supervisor
from mc_local.supervisor import stop_session as stop_session  # used by tests and scripts
from message_center import channel as channels
from message_center import migrations, templates
from message_center.channel import LocalSink

# Cell ids of the two demo execution instances (high byte of every event id).
DEMO_CELLS = {"execution": 0, "execution2": 1}


def log(message: str) -> None:
    print(f"[mc] {message}", flush=True)


def set_cell_id(url: str, cell_id: int) -> int:
    """Record this execution database's cell id once; an existing one is kept and returned."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO mc_instance (cell_id) VALUES (%s) ON CONFLICT DO NOTHING", (cell_id,)
            )
            cur.execute("SELECT cell_id FROM mc_instance")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


def publish_to_deployment(deployment: Deployment) -> str:
    """``mc setup``: version the repository's templates on the local control database and
    publish the changed ones to both local execution databases (idempotent). Returns a
    line for the set-up log; a template problem is reported, not raised, so the rest of
    the set-up goes on."""
    urls = {deployment.database(role): deployment.database_url(role)
            for role in ("execution", "execution2")}
    try:
        report = templates.publish_repository(deployment.database_url("control"), urls,
                                              templates_dir())
    except (templates.TemplateValidationError, ValueError) as exc:
        return f"message templates NOT published: {exc}"
    lines = [f"message templates: {report.plan.summary()}"]
    lines += [f"{name}: {result.summary()}" for name, result in report.results.items()
              if result.changed]
    lines += [f"{name}: NOT published: {error}" for name, error in report.errors.items()]
    return "; ".join(lines)


def airflow(deployment: Deployment, *args: str, check: bool = True,
            quiet: bool = False) -> subprocess.CompletedProcess[bytes]:
    """Run the ``airflow`` CLI of this virtualenv against ``deployment``."""
    env = {**os.environ, **deployment.environment()}
    binary = Path(sys.executable).parent / "airflow"
    output = subprocess.DEVNULL if quiet else None
    return subprocess.run([str(binary), *args], env=env, check=check, stdout=output)


def prepare(deployment: Deployment) -> None:
    """Everything before the processes start; each step is idempotent and fast when done."""
    started = time.monotonic()
    try:
        deployment.users()  # a bad AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS stops here
    except ValueError as exc:
        raise SystemExit(f"[mc] {exc}") from None
    if deployment.uses_embedded:
        try:
            deployment.embedded.start()
        except NotOurServer as exc:
            raise SystemExit(f"[mc] {exc}") from None
        log(f"PostgreSQL (embedded) on {deployment.embedded.url()} "
            f"with data in {deployment.embedded.data_dir}")
    for role in ("airflow", "control", "execution", "execution2"):
        ensure_database(deployment.server_url, deployment.database(role))
    migrations.upgrade("control", deployment.database_url("control"))
    for role, cell_id in DEMO_CELLS.items():
        url = deployment.database_url(role)
        migrations.upgrade("execution", url)
        set_cell_id(url, cell_id)
    log("message center schemas are up to date")
    log(publish_to_deployment(deployment))
    deployment.write_password_file()
    deployment.mail_dir.mkdir(parents=True, exist_ok=True)
    airflow(deployment, "db", "migrate", quiet=True)
    env = {**os.environ, **deployment.environment()}
    subprocess.run(
        [sys.executable, "-m", "mc_airflow.settings_loader",
         str(PROJECT_ROOT / "airflow_settings.yaml")],
        env=env, check=False,
    )
    log(f"set-up done in {time.monotonic() - started:.1f}s")


#: The ports a local deployment listens on, by the variable that moves each.
PORT_VARIABLES = ("MC_API_PORT", *(spec.local_sink.port_env for spec in channels.all_channels()
                                   if spec.local_sink is not None))
#: The Airflow components ``make run`` starts (what ``airflow standalone`` runs), each
#: supervised on its own.
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")


def local_sinks(deployment: Deployment) -> list[tuple[LocalSink, int, Path]]:
    """The local stand-ins for the channels' providers that ``make run`` starts (each
    channel declares its own): (sink, port, folder where it keeps what it receives)."""
    env = {**os.environ, **deployment.environment()}
    return [(spec.local_sink, spec.local_sink.port(env),
             spec.local_sink.directory(deployment.mail_dir))
            for spec in channels.all_channels() if spec.local_sink is not None]


def sink_command(sink: LocalSink, port: int, directory: Path) -> list[str]:
    return [sys.executable, "-m", sink.module, "--port", str(port), sink.dir_flag,
            str(directory)]


def deployment_ports(deployment: Deployment) -> dict[str, int]:
    return {"MC_API_PORT": deployment.api_port,
            **{sink.port_env: port for sink, port, _dir in local_sinks(deployment)}}


def port_problems(ports: dict[str, int], host: str = "127.0.0.1") -> list[str]:
    """What stops these ports from being used (taken by another program, or one port
    given twice), each naming the variable that moves it; empty when all are free."""
    problems = []
    seen: dict[int, str] = {}
    for variable, port in ports.items():
        if port in seen:
            problems.append(f"{variable} and {seen[port]} are both {port}: give "
                            f"{variable} another port")
            continue
        seen[port] = variable
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                problems.append(f"port {port} ({variable}) is already in use by another "
                                f"program (another `make run`?): stop it, or move this "
                                f"deployment with {variable}=<free port>")
    return problems


def run(deployment: Deployment) -> int:
    """Set up, then run the Airflow components and the sinks until Ctrl-C stops them all,
    starting again whatever dies meanwhile (:mod:`mc_local.supervisor`)."""
    if problems := port_problems(deployment_ports(deployment)):
        raise SystemExit("[mc] cannot start:\n  " + "\n  ".join(problems))
    pg_was_running = deployment.uses_embedded and deployment.embedded.owns_port()
    prepare(deployment)
    env = {**os.environ, **deployment.environment()}
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    sinks = local_sinks(deployment)  # each channel's sink (SMTP, SMS gateway, ...)
    components = [
        *(Component(sink.name, sink_command(sink, port, directory), env)
          for sink, port, directory in sinks),
        *(Component(name, [airflow_bin, name], env) for name in AIRFLOW_COMPONENTS),
    ]
    supervisor = Supervisor(
        components, postgres=deployment.embedded if deployment.uses_embedded else None,
        health_url=f"http://127.0.0.1:{deployment.api_port}/api/v2/monitor/health")
    supervisor.start()
    log(f"Airflow UI and push API: http://127.0.0.1:{deployment.api_port}")
    for name, role in deployment.users():
        log(f"  login: {name} / {deployment.password(name)}  (role {role})")
    log("Delivered messages are kept in " + ", ".join(
        f"{directory} ({sink.what})" for sink, _port, directory in sinks))
    log("A component that stops is started again (and said here). Press Ctrl-C to stop "
        "everything.")

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            supervisor.check()
            time.sleep(0.5)
    finally:
        log("stopping ...")
        supervisor.stop()
        if deployment.uses_embedded and not pg_was_running:
            deployment.embedded.stop()
        log("stopped")
    return 0
