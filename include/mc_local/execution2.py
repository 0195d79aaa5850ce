"""``make run-execution2``: the demo's second execution instance, beside ``make run``.

Adobe Campaign's topology is several execution instances (each its own server, database
and cell id, behind a load balancer) and one control instance that archives them all.
The demo registers two execution accounts (``dags/execution_accounts.yaml``); ``make run``
is the control instance plus the first execution instance (cell 0, ``mc_execution``).
This module runs the second one as a deployment of its own:

* its own Airflow (home ``.mc/airflow-execution2``, metadata database
  ``airflow_execution2``, API server and push API on port ``MC_EXECUTION2_API_PORT``,
  default 8090), with only the execution DAGs (``MC_DEPLOYMENT_ROLES=execution``);
* its execution database ``mc_execution2`` (cell id 1: every event id starts with
  byte 1), which is its ``mc_execution`` connection;
* the same embedded PostgreSQL server and SMTP sink as ``make run``.

The control instance (``make run``) archives it through its ``mcSynch_mcExec2`` DAG and
the account's ``mc_execution2`` connection, like any other execution account.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mc_local.localenv import PROJECT_ROOT, STATE_DIR, Deployment

PROFILE_SUFFIX = "execution2"
API_PORT_ENV = "MC_EXECUTION2_API_PORT"
CELL_ID = 1
ROLES_ENV = "MC_DEPLOYMENT_ROLES"


def is_profile(name: str) -> bool:
    return name == PROFILE_SUFFIX or name.endswith(f"_{PROFILE_SUFFIX}")


@dataclass(frozen=True)
class SecondExecution(Deployment):
    """The second execution deployment next to the deployment ``base_profile``."""

    base_profile: str = "run"

    @property
    def db_prefix(self) -> str:
        return "" if self.base_profile == "run" else f"{self.base_profile}_"

    def base(self) -> Deployment:
        from mc_local.localenv import deployment

        return deployment(self.base_profile)

    def database(self, role: str) -> str:
        names = {"airflow": "airflow_execution2", "execution": "mc_execution2"}
        if role not in names:
            raise ValueError(f"the second execution instance has no {role!r} database")
        return self.db_prefix + names[role]

    @property
    def airflow_home(self) -> Path:
        return STATE_DIR / f"airflow-{self.profile.replace('_', '-')}"

    @property
    def mail_dir(self) -> Path:
        return self.base().mail_dir

    def pg_parts(self) -> dict[str, str]:
        parts = super().pg_parts()
        parts["MC_DB_PREFIX"] = self.db_prefix
        return parts

    def environment(self) -> dict[str, str]:
        env = super().environment()
        execution = self.database_url("execution").replace("postgresql://", "postgres://", 1)
        env.update({
            ROLES_ENV: "execution",
            # This deployment's own execution database is its `mc_execution`.
            "AIRFLOW_CONN_MC_EXECUTION": execution,
            # Beside `make run` on one machine: log servers on other ports.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.api_port + 3),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.api_port + 4),
        })
        return env


def second_execution(profile: str) -> SecondExecution:
    """``execution2`` (next to ``make run``) or ``<base>_execution2`` (next to ``<base>``)."""
    base = "run" if profile == PROFILE_SUFFIX else profile.removesuffix(f"_{PROFILE_SUFFIX}")
    from mc_local.localenv import deployment

    first = deployment(base)
    default_port = 8090 if base == "run" else first.api_port + 10
    return SecondExecution(profile, int(os.environ.get(API_PORT_ENV, default_port)),
                           first.smtp_port, base_profile=base)


def log(message: str) -> None:
    print(f"[mc execution2] {message}", flush=True)


def prepare(deployment: SecondExecution) -> None:
    """Databases, schema, cell id 1, templates, Airflow metadata and settings (idempotent)."""
    from mc_local import launcher
    from mc_local.embedded_pg import ensure_database
    from message_center import migrations

    started = time.monotonic()
    try:
        deployment.users()
    except ValueError as exc:
        raise SystemExit(f"[mc] {exc}") from None
    base = deployment.base()
    if deployment.uses_embedded:
        deployment.embedded.start()
    # The control instance's databases come from `make run` / `mc setup`; set them up if
    # this is the first command run here.
    if not _database_exists(base.server_url, base.database("control")):
        launcher.prepare(base)
    for role in ("airflow", "execution"):
        ensure_database(deployment.server_url, deployment.database(role))
    url = deployment.database_url("execution")
    migrations.upgrade("execution", url)
    cell = launcher.set_cell_id(url, CELL_ID)
    if cell != CELL_ID:
        raise SystemExit(f"[mc] {deployment.database('execution')} has cell id {cell}, "
                         f"expected {CELL_ID}")
    log(f"execution database {deployment.database('execution')} (cell id {cell}) is up to date")
    log(launcher.publish_to_deployment(base))
    deployment.write_password_file()
    env = {**os.environ, **deployment.environment()}
    binary = Path(sys.executable).parent / "airflow"
    subprocess.run([str(binary), "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "mc_airflow.settings_loader",
                    str(PROJECT_ROOT / "airflow_settings.yaml")], env=env, check=False)
    log(f"set-up done in {time.monotonic() - started:.1f}s")


def _database_exists(server_url: str, name: str) -> bool:
    import psycopg2

    conn = psycopg2.connect(server_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def standalone(deployment: SecondExecution, **popen: object) -> subprocess.Popen[bytes]:
    """``airflow standalone`` of the second execution deployment (its own session)."""
    env = {**os.environ, **deployment.environment()}
    env.update(popen.pop("env", {}))  # type: ignore[arg-type]
    return subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone"],
                            env=env, start_new_session=True, **popen)  # type: ignore[call-overload]


def run(deployment: SecondExecution) -> int:
    """Set up and run the second execution instance until Ctrl-C."""
    import signal

    from mc_local import celery_mode

    try:
        settings = (celery_mode.CelerySettings.from_env()
                    if celery_mode.executor() == "celery" else None)
    except ValueError as exc:
        raise SystemExit(f"[mc] {exc}") from None
    pg_was_running = deployment.uses_embedded and deployment.embedded.is_ready()
    prepare(deployment)
    if not _listening(deployment.smtp_port):
        log(f"nothing listens on the SMTP port {deployment.smtp_port}: start `make run` "
            "(its SMTP sink) first, or messages wait in the queue for it")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # Ctrl-C, or SIGTERM from a script or a service manager: stop what we started.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if settings is not None:
        cluster = celery_mode.Cluster(deployment, settings)
        try:
            cluster.start()
            _banner(deployment)
            while not stopping and all(cluster.running().values()):
                time.sleep(0.5)
        finally:
            log("stopping ...")
            cluster.stop()
            _stop_postgres(deployment, pg_was_running)
        return 0
    process = standalone(deployment)
    _banner(deployment)
    try:
        while not stopping and process.poll() is None:
            time.sleep(0.5)
    finally:
        log("stopping ...")
        celery_mode.terminate_session(process.pid)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            celery_mode.kill_session(process.pid)
            process.wait()
        celery_mode.kill_session(process.pid)  # task processes left behind
        _stop_postgres(deployment, pg_was_running)
        log("stopped")
    return 0


def _stop_postgres(deployment: SecondExecution, was_running: bool) -> None:
    """The embedded PostgreSQL is stopped only if this command started it (without
    `make run` beside it)."""
    if deployment.uses_embedded and not was_running:
        deployment.embedded.stop()


def _banner(deployment: SecondExecution) -> None:
    log(f"second execution instance (cell {CELL_ID}, database "
        f"{deployment.database('execution')}): UI and push API on "
        f"http://127.0.0.1:{deployment.api_port}")
    for name, role in deployment.users():
        log(f"  login: {name} / {deployment.password(name)}  (role {role})")
    log(f"push to it: .venv/bin/mc push --profile {deployment.profile} ...; the control "
        "instance (make run) archives it hourly (DAG mcSynch_mcExec2)")
    log("Press Ctrl-C to stop it.")
