"""Sets up and runs a local deployment: embedded PostgreSQL, schemas, Airflow, SMTP sink.

``make run`` owns what it starts, and only that: it refuses ports already taken (naming
the variable that moves each) and an embedded PostgreSQL port served by another
checkout's data. Every mode (this one, :mod:`mc_local.celery_mode`,
:mod:`mc_local.execution2`) builds its list of components - the sinks and Airflow
components built here, plus its own - and runs it with :func:`serve`, on the one
:class:`~mc_local.supervisor.Supervisor`.

Airflow itself is only ever started as a subprocess here, with the environment from
:mod:`mc_local.localenv`, so this module stays free of Airflow imports.
"""

from __future__ import annotations

import os
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
PORT_VARIABLES = ("MC_API_PORT", "MC_TRACKING_PORT",
                  *(spec.local_sink.port_env for spec in channels.all_channels()
                    if spec.local_sink is not None))
#: The Airflow components ``make run`` starts (what ``airflow standalone`` runs), each
#: supervised on its own.
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
#: Their keys in the API server's health answer (a component reported unhealthy for
#: long is restarted).
HEALTH_KEYS = {"scheduler": "scheduler", "triggerer": "triggerer",
               "dag-processor": "dag_processor"}


def local_sinks(deployment: Deployment) -> list[tuple[LocalSink, int, Path]]:
    """The local stand-ins for the channels' providers that ``make run`` starts (each
    channel declares its own, :attr:`message_center.channel.Channel.local_sink`): (sink,
    port, folder where it keeps what it receives)."""
    env = {**os.environ, **deployment.environment()}
    return [(spec.local_sink, spec.local_sink.port(env),
             spec.local_sink.directory(deployment.mail_dir))
            for spec in channels.all_channels() if spec.local_sink is not None]


def deployment_ports(deployment: Deployment) -> dict[str, int]:
    return {"MC_API_PORT": deployment.api_port, "MC_TRACKING_PORT": deployment.tracking_port,
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


def sink_components(deployment: Deployment, env: dict[str, str]) -> list[Component]:
    """Each channel's local sink (the SMTP sink, the SMS gateway sink, ...)."""
    return [Component(sink.name, [sys.executable, "-m", sink.module, "--port", str(port),
                                  sink.dir_flag, str(directory)], env)
            for sink, port, directory in local_sinks(deployment)]


def tracking_component(deployment: Deployment, env: dict[str, str]) -> Component:
    """The tracking server (``mc tracking-server``) on ``MC_TRACKING_PORT``."""
    return Component("tracking-server", [
        str(Path(sys.executable).parent / "mc"), "tracking-server", "--profile",
        deployment.profile, "--port", str(deployment.tracking_port)], env)


def tracking_line(deployment: Deployment) -> str:
    return (f"Tracking server (opens, clicks, mirror page, unsubscribe): "
            f"http://127.0.0.1:{deployment.tracking_port} (links use "
            f"{deployment.tracking_base_url})")


def kept_line(deployment: Deployment) -> str:
    """Where the sinks keep what they receive, for the start-up banner."""
    return "Delivered messages are kept in " + ", ".join(
        f"{directory} ({sink.what})" for sink, _port, directory in local_sinks(deployment))


def airflow_component(name: str, env: dict[str, str], *args: str) -> Component:
    """``airflow <name> <args>``, watched through the health endpoint when it has a key."""
    return Component(name, [str(Path(sys.executable).parent / "airflow"), name, *args], env,
                     health_key=HEALTH_KEYS.get(name))


def airflow_components(env: dict[str, str]) -> list[Component]:
    """The Airflow components of :data:`AIRFLOW_COMPONENTS`, each supervised on its own."""
    return [airflow_component(name, env) for name in AIRFLOW_COMPONENTS]


def health_url(deployment: Deployment) -> str:
    return f"http://127.0.0.1:{deployment.api_port}/api/v2/monitor/health"


def refuse_taken_ports(ports: dict[str, int]) -> None:
    if problems := port_problems(ports):
        raise SystemExit("[mc] cannot start:\n  " + "\n  ".join(problems))


def serve(deployment: Deployment, components: list[Component], *, banner: list[str],
          pg_was_running: bool) -> int:
    """Run ``components`` on one :class:`Supervisor` until Ctrl-C (or SIGTERM) stops them
    all, starting again whatever dies or stays unhealthy meanwhile; then stop the embedded
    PostgreSQL if this command started it. The one run loop of every mode."""
    supervisor = Supervisor(
        components, postgres=deployment.embedded if deployment.uses_embedded else None,
        health_url=health_url(deployment), session_file=deployment.session_file)

    def started() -> None:
        for line in banner:
            log(line)
        log(f"A component that stops is started again (and said here); `mc ps --profile "
            f"{deployment.profile}` lists them. Press Ctrl-C to stop everything.")

    def stopped() -> None:
        if deployment.uses_embedded and not pg_was_running:
            deployment.embedded.stop()

    supervisor.run(on_started=started, on_stopped=stopped)
    return 0


def login_lines(deployment: Deployment) -> list[str]:
    return [f"  login: {name} / {deployment.password(name)}  (role {role})"
            for name, role in deployment.users()]


def run(deployment: Deployment) -> int:
    """``make run``: set up, then run the sinks and the Airflow components (LocalExecutor)
    until Ctrl-C stops them all (:func:`serve`)."""
    refuse_taken_ports(deployment_ports(deployment))
    pg_was_running = deployment.uses_embedded and deployment.embedded.owns_port()
    prepare(deployment)
    env = {**os.environ, **deployment.environment()}
    return serve(deployment, [*sink_components(deployment, env),
                              tracking_component(deployment, env), *airflow_components(env)],
                 pg_was_running=pg_was_running, banner=[
                     f"Airflow UI and push API: http://127.0.0.1:{deployment.api_port}",
                     tracking_line(deployment),
                     *login_lines(deployment),
                     kept_line(deployment)])
