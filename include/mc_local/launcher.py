"""Sets up and runs a local deployment: embedded PostgreSQL, schemas, Airflow, SMTP sink.

Airflow itself is only ever started as a subprocess here, with the environment from
:mod:`mc_local.localenv`, so this module stays free of Airflow imports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

from mc_airflow.defaults import templates_dir
from mc_local.embedded_pg import ensure_database
from mc_local.localenv import PROJECT_ROOT, Deployment
from message_center import migrations, templates

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
        deployment.embedded.start()
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


def stop_session(session_id: int, deadline: float) -> None:
    """Stop every process of the session ``session_id`` (``airflow standalone``, its
    components, and the task processes in their own process groups), waiting until they
    are gone (killed at ``deadline``), so "stopped" is only said once nothing runs."""
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


def run(deployment: Deployment) -> int:
    """Set up, then run Airflow standalone and the SMTP sink until Ctrl-C stops them all."""
    pg_was_running = deployment.uses_embedded and deployment.embedded.is_ready()
    prepare(deployment)
    env = {**os.environ, **deployment.environment()}
    children: list[subprocess.Popen[bytes]] = []
    children.append(subprocess.Popen(
        [sys.executable, "-m", "mc_local.smtp_sink", "--port", str(deployment.smtp_port),
         "--mail-dir", str(deployment.mail_dir)], env=env,
    ))
    # The SMS gateway sink (the `sms_gateway` connection): SMS kept as .json files.
    sms_dir = deployment.mail_dir.with_name(deployment.mail_dir.name.replace("mail", "sms", 1))
    children.append(subprocess.Popen(
        [sys.executable, "-m", "mc_local.sms_sink", "--port",
         os.environ.get("MC_SMS_PORT", "8026"), "--sms-dir", str(sms_dir)], env=env,
    ))
    standalone = subprocess.Popen(
        [str(Path(sys.executable).parent / "airflow"), "standalone"], env=env,
        start_new_session=True,
    )
    children.append(standalone)
    log(f"Airflow UI and push API: http://127.0.0.1:{deployment.api_port}")
    for name, role in deployment.users():
        log(f"  login: {name} / {deployment.password(name)}  (role {role})")
    log(f"Delivered e-mails are kept in {deployment.mail_dir}, SMS in {sms_dir}")
    log("Press Ctrl-C to stop everything.")

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.5)
    finally:
        log("stopping ...")
        for child in children:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    child.terminate()
        deadline = time.monotonic() + 30
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        stop_session(standalone.pid, deadline)  # its scheduler, triggerer, tasks, ...
        if deployment.uses_embedded and not pg_was_running:
            deployment.embedded.stop()
        log("stopped")
    return 0
