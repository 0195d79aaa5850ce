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
* the same embedded PostgreSQL server and SMTP sink as ``make run``;
* its processes (scheduler, DAG processor, triggerer, API server; with
  ``MC_EXECUTOR=celery`` the broker and workers too) on the same supervisor as ``make
  run``'s (:mod:`mc_local.supervisor`): one that dies is started again, Ctrl-C stops all.

The control instance (``make run``) archives it through its ``mcSynch_mcExec2`` DAG and
the account's ``mc_execution2`` connection, like any other execution account.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mc_local import celery_mode, launcher
from mc_local.embedded_pg import ensure_database
from mc_local.localenv import PROJECT_ROOT, ROLES_ENV, SecondExecution, second_execution
from mc_local.localenv import SECOND_EXECUTION_API_PORT_ENV as API_PORT_ENV
from mc_local.localenv import SECOND_EXECUTION_SUFFIX as PROFILE_SUFFIX
from mc_local.localenv import is_second_execution as is_profile
from mc_local.supervisor import Component
from message_center import migrations

__all__ = ["API_PORT_ENV", "CELL_ID", "PROFILE_SUFFIX", "ROLES_ENV", "SecondExecution",
           "components", "is_profile", "prepare", "run", "second_execution"]

CELL_ID = 1


def log(message: str) -> None:
    print(f"[mc execution2] {message}", flush=True)


def prepare(deployment: SecondExecution) -> None:
    """Databases, schema, cell id 1, templates, Airflow metadata and settings (idempotent)."""
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


def components(deployment: SecondExecution,
               settings: celery_mode.CelerySettings | None = None) -> list[Component]:
    """The processes of the second execution instance: its Airflow components
    (LocalExecutor), or with ``settings`` its Celery deployment (broker, components,
    workers). No sink: it delivers to ``make run``'s."""
    env = {**os.environ, **deployment.environment()}
    tracking = launcher.tracking_component(deployment, env)
    if settings is not None:
        return [tracking, *celery_mode.Cluster(deployment, settings).components()]
    return [tracking, *launcher.airflow_components(env)]


def run(deployment: SecondExecution) -> int:
    """``make run-execution2``: set up, then run :func:`components` on the one supervisor
    (:func:`mc_local.launcher.serve`) until Ctrl-C stops them all."""
    try:
        settings = (celery_mode.CelerySettings.from_env()
                    if celery_mode.executor() == "celery" else None)
    except ValueError as exc:
        raise SystemExit(f"[mc] {exc}") from None
    launcher.refuse_taken_ports({API_PORT_ENV: deployment.api_port,
                                 "MC_EXECUTION2_TRACKING_PORT": deployment.tracking_port})
    pg_was_running = deployment.uses_embedded and deployment.embedded.owns_port()
    prepare(deployment)
    if not _listening(deployment.smtp_port):
        log(f"nothing listens on the SMTP port {deployment.smtp_port}: start `make run` "
            "(its SMTP sink) first, or messages wait in the queue for it")
    return launcher.serve(deployment, components(deployment, settings),
                          pg_was_running=pg_was_running, banner=_banner(deployment))


def _banner(deployment: SecondExecution) -> list[str]:
    return [f"second execution instance (cell {CELL_ID}, database "
            f"{deployment.database('execution')}): UI and push API on "
            f"http://127.0.0.1:{deployment.api_port}",
            *launcher.login_lines(deployment),
            f"push to it: .venv/bin/mc push --profile {deployment.profile} ...; the control "
            "instance (make run) archives it hourly (DAG mcSynch_mcExec2)"]
