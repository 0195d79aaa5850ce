"""Shared fixtures: the test deployment's real PostgreSQL databases, a real SMTP sink on
loopback, the DagBag, and (on demand) a real Airflow API server + scheduler.

`make test` runs `mc setup --profile test` first, so the databases exist and are migrated;
this file only points every process at them. Connections come from ``AIRFLOW_CONN_*``
variables, as Airflow resolves them in plain pytest and in ``dag.test()`` alike.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mc_local.localenv import PROJECT_ROOT, deployment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# MC_TEST_PROFILE lets several suites run side by side on separate databases; under
# pytest-xdist (`mc test` runs MC_TEST_WORKERS workers) each worker has its own deployment
# profile, set up by `mc test` beforehand: gw0 the base one, gwN `<base>_wN`.
_BASE_PROFILE = os.environ.get("MC_TEST_PROFILE", "test")
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
PROFILE = _BASE_PROFILE if _WORKER == 0 else f"{_BASE_PROFILE}_w{_WORKER}"
os.environ["MC_DEPLOYMENT_PROFILE"] = PROFILE
# One user per simple-auth-manager role, named after it (passwords in .mc/secrets/).
ROLE_USERS = ("admin", "viewer", "user", "op")
os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = ",".join(
    f"{role}:{role}" for role in ROLE_USERS)


def port_variable(name: str) -> int:
    """A port of this test process: ``$name`` when set, else a free one. A pytest-xdist
    worker always takes a free one: the workers inherit the controller's environment, where
    this file ran first, and one value for every worker would collide."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        os.environ[name] = str(free_port())
    return int(os.environ.setdefault(name, str(free_port())))


port_variable("MC_API_PORT")
port_variable("MC_SMTP_PORT")
port_variable("MC_TRACKING_PORT")
if "PYTEST_XDIST_WORKER" in os.environ:  # each worker's Airflow stack has log servers
    port_variable("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT")
    port_variable("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")
DEPLOYMENT = deployment(PROFILE)
os.environ.update(DEPLOYMENT.environment())
for _role, _conn_id in (("execution", "MC_EXECUTION"), ("control", "MC_CONTROL"),
                        ("execution2", "MC_EXECUTION2")):
    os.environ[f"AIRFLOW_CONN_{_conn_id}"] = DEPLOYMENT.database_url(_role).replace(
        "postgresql://", "postgres://", 1)
os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps({
    "conn_type": "smtp", "host": "127.0.0.1", "port": DEPLOYMENT.smtp_port,
    "extra": {"disable_tls": True, "disable_ssl": True,
              "from_email": "Message Center <no-reply@message-center.test>"},
})

from sqlalchemy import Engine, text  # noqa: E402

from mc_local.smtp_sink import SmtpSink  # noqa: E402
from message_center import dag_ids  # noqa: E402
from message_center.db import engine_for  # noqa: E402

EXECUTION_TABLES = ("rt_event", "batch_event", "delivery_log", "published_template", "bounce",
                    "quarantine", "api_idempotency", "mc_watermark", "relay_breaker",
                    "webhook_subscription", "webhook_outbox", "webhook_attempt",
                    "tracking_log", "tracking_first", "suppression", "event_recycling",
                    "bulk_action", "bulk_action_event", "audit_log", "event_attachment")
CONTROL_TABLES = ("archived_event", "archived_delivery_log", "template_version", "template",
                  "quarantine", "quarantine_sync", "webhook_subscription",
                  "event_stats_hourly", "flow_stats_hourly", "event_stats_dirty",
                  "archived_tracking_log", "tracking_stats_hourly", "tracking_stats_dirty",
                  "suppression", "suppression_sync", "audit_log")


#: Fixtures that need the test deployment's databases, servers or Airflow processes: a
#: test marked ``fast`` (``make test-fast``, run without ``mc setup``) must not use them.
NOT_FAST_FIXTURES = frozenset({"test_deployment", "execution_db", "execution2_db", "control_db",
                               "urls", "smtp_sink", "sms_sink", "dagbag", "airflow_stack",
                               "bounce_mailbox", "webpush_sink", "browser"})


#: The scopes of the modules that start or use the session's Airflow stack. Each scope runs
#: on one worker, in file order, so that worker starts its stack once: the integration tier's
#: DAG and walk-through modules in one (the archiving DAG's `dag.test()` runs first, before
#: its stack exists), the cluster, browser and plugin (API server) modules in another, on a
#: second worker with a stack (and databases) of its own. The two take about as long; the
#: other workers share the rest of the suite meanwhile.
AIRFLOW_SCOPES = ("airflow-stack", "airflow-stack-2")
_SECOND_SCOPE_FOLDERS = ("tests/cluster/", "tests/browser/", "tests/integration/plugins/")


@functools.cache
def _airflow_scope(module: str, root: Path) -> str | None:
    """The stack scope of a test module (a path relative to the root), None when it does not
    ask for the stack: read from its source, since xdist's controller schedules by node id
    before any worker has collected."""
    try:
        if "airflow_stack" not in (root / module).read_text():
            return None
    except OSError:
        return None
    return AIRFLOW_SCOPES[1] if module.startswith(_SECOND_SCOPE_FOLDERS) else AIRFLOW_SCOPES[0]


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``mc test`` runs ``--dist loadscope`` with these scopes: a module (not a class) is the
    unit of work, and the modules that use the Airflow stack share one of two. (xdist's own
    ``loadgroup`` marks do nothing on pytest 9.2: it renames node ids through an attribute
    pytest no longer reads.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    root = config.rootpath

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return _airflow_scope(module, root) or module

    return ModuleScheduling(config, log)  # type: ignore[arg-type]


#: The unit tier: every test in it runs without a database, server or Airflow process.
UNIT_TIER = Path(__file__).parent / "unit"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:  # the folder is the tier: tests/unit/ is `make test-fast`'s
        if item.path.is_relative_to(UNIT_TIER) and not item.get_closest_marker("fast"):
            item.add_marker(pytest.mark.fast)
    if "PYTEST_XDIST_WORKER" in os.environ:  # the stack scopes first: one worker each
        root = config.rootpath
        ranks = {scope: rank for rank, scope in enumerate(AIRFLOW_SCOPES)}

        def rank(item: pytest.Item) -> tuple[int, bool]:
            module = item.nodeid.split("::", 1)[0]
            scope = _airflow_scope(module, root)
            # In the second scope the cluster tier first: the browser tests then find the
            # stack's UI warm (its first page loads are the slowest).
            return (ranks[scope] if scope else len(ranks), not module.startswith("tests/cluster/"))

        items.sort(key=rank)
    for item in items:
        needs = NOT_FAST_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if needs and item.get_closest_marker("fast"):
            raise pytest.UsageError(f"{item.nodeid} is marked fast but uses {sorted(needs)}")


@pytest.fixture(scope="session")
def test_deployment():
    return DEPLOYMENT


def _truncate(engine: Engine, tables: tuple[str, ...]) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY"))


@pytest.fixture(autouse=True)
def _fresh_ctx_schemas() -> None:
    """The push path caches published ctx declarations for a few seconds: each test starts
    from what its own database holds."""
    from message_center import webhook_outbox
    from message_center.publishing import schema_cache

    schema_cache.clear()
    webhook_outbox.forget()  # whether webhooks are on: asked again


@pytest.fixture
def execution_db() -> Engine:
    """The execution database (cell 0), emptied before the test."""
    engine = engine_for(DEPLOYMENT.database_url("execution"))
    _truncate(engine, EXECUTION_TABLES)
    return engine


@pytest.fixture
def execution2_db() -> Engine:
    """The second execution database (cell 1), emptied before the test."""
    engine = engine_for(DEPLOYMENT.database_url("execution2"))
    _truncate(engine, EXECUTION_TABLES)
    return engine


@pytest.fixture
def control_db() -> Engine:
    """The control database, emptied before the test."""
    engine = engine_for(DEPLOYMENT.database_url("control"))
    _truncate(engine, CONTROL_TABLES)
    return engine


@pytest.fixture
def relay(tmp_path: Path):
    """An SMTP relay on loopback that stalls on cue (``relay_support.StallingRelay``)."""
    from relay_support import StallingRelay  # it imports this module (free_port)

    server = StallingRelay(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def restartable_db(tmp_path: Path, test_deployment):
    """``(server, engine)``: a migrated execution database on a PostgreSQL server of the
    test's own, which the test may stop and start (``pg_ctl stop -m fast`` cuts every
    connection) without disturbing the deployment's server other tests use."""
    from mc_local.embedded_pg import EmbeddedPostgres, ensure_database
    from mc_local.launcher import set_cell_id
    from message_center import migrations

    if not test_deployment.uses_embedded:
        pytest.skip("needs the embedded PostgreSQL binaries (MC_DATABASE_URL is set)")
    server = EmbeddedPostgres(tmp_path / "postgres", free_port())
    server.start()
    try:
        ensure_database(server.url(), "outage_execution")
        url = server.url("outage_execution")
        migrations.upgrade("execution", url)
        set_cell_id(url, 0)
        yield server, engine_for(url)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _smtp_sink_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path_factory.mktemp("mail"), port=DEPLOYMENT.smtp_port) as sink:
        yield sink


@pytest.fixture
def smtp_sink(_smtp_sink_session: SmtpSink) -> SmtpSink:
    """A real SMTP server on loopback (the ``smtp_default`` connection), emptied per test."""
    _smtp_sink_session.clear()
    return _smtp_sink_session


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    """A copy of the repository's templates to change freely."""
    from mc_airflow.defaults import TEMPLATES_DIR

    directory = tmp_path / "message_templates"
    shutil.copytree(TEMPLATES_DIR, directory)
    return directory


@pytest.fixture
def urls(test_deployment):
    """The test deployment's control and execution database URLs."""
    return {
        "control": test_deployment.database_url("control"),
        "executions": {role: test_deployment.database_url(role)
                       for role in ("execution", "execution2")},
    }


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    # include_examples= raises TypeError on 3.3; LOAD_EXAMPLES is off in the environment.
    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


class AirflowStack:
    """A running `airflow standalone` (API server, scheduler, DAG processor, triggerer).

    Users: one per simple-auth-manager role, named after it (:data:`ROLE_USERS`). The
    execution account registry is a copy (``registry``), so UI tests may register accounts."""

    viewer_user = "viewer"

    def __init__(self, base_url: str, password: str, log_path: Path,
                 registry: Path | None = None) -> None:
        self.base_url, self.password, self.log_path = base_url, password, log_path
        self.registry = registry

    def password_of(self, username: str) -> str:
        return DEPLOYMENT.password(username)

    @property
    def viewer_password(self) -> str:
        return self.password_of(self.viewer_user)

    def token(self, username: str = "admin") -> str:
        import httpx

        response = httpx.post(f"{self.base_url}/auth/token", timeout=30, json={
            "username": username, "password": self.password_of(username)})
        response.raise_for_status()
        return str(response.json()["access_token"])

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the real `airflow` CLI against this stack."""
        return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args],
                              env=dict(os.environ), capture_output=True, text=True,
                              timeout=timeout)


#: The running `airflow standalone` of this process, if any: stopped by its fixture's
#: teardown, or earlier by :func:`pytest_runtest_teardown` once no test left needs it.
_STACK_PROCESS: list[subprocess.Popen[bytes]] = []


def _stop_airflow_stack() -> None:
    while _STACK_PROCESS:
        _stop_session(_STACK_PROCESS.pop())


def _uses_stack(item: pytest.Item | None) -> bool:
    return item is not None and "airflow_stack" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the Airflow stack as soon as this process will run no other test that uses it:
    idle, its scheduler, DAG processor, triggerer and API server would take CPU from the
    other workers for the rest of the run. Under xdist a worker's stack tests come as one
    scope (:func:`pytest_xdist_make_scheduler`), so the test after the scope's last never
    needs the stack; in one process, after the session's last test that uses it."""
    if not _STACK_PROCESS:
        return
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = item.config.rootpath
        scope = _airflow_scope(item.nodeid.split("::", 1)[0], root)
        if scope is None or (nextitem is not None and _airflow_scope(
                nextitem.nodeid.split("::", 1)[0], root) == scope):
            return
    else:
        items = item.session.items
        if any(_uses_stack(later) for later in items[items.index(item) + 1:]):
            return
    _stop_airflow_stack()


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    """Real Airflow processes for the test deployment, started once per session (and
    stopped after the last test of this process that needs them)."""
    import httpx

    from mc_airflow.defaults import ACCOUNT_REGISTRY

    DEPLOYMENT.write_password_file()
    registry = tmp_path_factory.mktemp("registry") / ACCOUNT_REGISTRY.name
    shutil.copyfile(ACCOUNT_REGISTRY, registry)
    _pause_workflows_that_consume_queues()
    log_path = tmp_path_factory.mktemp("airflow") / "standalone.log"
    # Tests that need a workflow running unpause it themselves: a continuous real-time
    # loop would otherwise race every other server test for the events it pushes.
    # MC_CTX_SCHEMA_TTL_SECONDS=0: a test that publishes templates may push at once.
    env = {**os.environ, "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
           "MC_ACCOUNT_REGISTRY": str(registry), "MC_CTX_SCHEMA_TTL_SECONDS": "0"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "standalone"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    _STACK_PROCESS.append(process)
    base_url = f"http://127.0.0.1:{DEPLOYMENT.api_port}"
    deadline = time.monotonic() + 600  # a loaded machine: polled, so no longer than needed
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"airflow standalone exited:\n{log_path.read_text()[-3000:]}")
            try:
                health = httpx.get(f"{base_url}/api/v2/monitor/health", timeout=2).json()
                if all(health.get(part, {}).get("status") == "healthy"
                       for part in ("scheduler", "dag_processor")):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"airflow not healthy in time:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield AirflowStack(base_url, DEPLOYMENT.admin_password(), log_path, registry=registry)
    finally:
        _stop_airflow_stack()


QUEUE_CONSUMERS = (*dag_ids.PROCESSING.values(), dag_ids.PUBLISH_TEMPLATES)


def _pause_workflows_that_consume_queues() -> None:
    """DAGs created in an earlier session keep their state: pause them in the metadata DB."""
    engine = engine_for(DEPLOYMENT.database_url("airflow"))
    with engine.begin() as conn:
        exists = conn.execute(text("SELECT to_regclass('dag') IS NOT NULL")).scalar_one()
        if exists:
            conn.execute(text("UPDATE dag SET is_paused = true WHERE dag_id = ANY(:ids)"),
                         {"ids": list(QUEUE_CONSUMERS)})


def _stop_session(process: subprocess.Popen[bytes]) -> None:
    """Stop `airflow standalone` and every task process it started: tasks run in their own
    process groups but stay in its session, so a group kill alone would leave them
    running (and processing the test databases) after the suite."""
    from mc_local.supervisor import stop_session

    stop_session(process.pid, time.monotonic() + 30)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


# --- SMS gateway sink (processing): the `sms_gateway` connection points at it ---------
port_variable("MC_SMS_PORT")
os.environ["AIRFLOW_CONN_SMS_GATEWAY"] = json.dumps({
    "conn_type": "http", "host": "127.0.0.1", "port": int(os.environ["MC_SMS_PORT"]),
    "schema": "http", "extra": {"path": "/messages", "sender": "MsgCenter"},
})


@pytest.fixture(scope="session")
def _sms_sink_session(tmp_path_factory: pytest.TempPathFactory):
    from mc_local.sms_sink import SmsSink

    with SmsSink(tmp_path_factory.mktemp("sms"), port=int(os.environ["MC_SMS_PORT"])) as sink:
        yield sink


@pytest.fixture
def sms_sink(_sms_sink_session):
    """A real SMS gateway (HTTP, JSON) on loopback (the ``sms_gateway`` connection),
    emptied per test; ``.script(to, "503", "always 400")`` scripts replies."""
    _sms_sink_session.clear()
    return _sms_sink_session


# --- Web Push service sink: the `webpush_default` connection's VAPID keys, its host listed
port_variable("MC_WEBPUSH_PORT")
os.environ["MC_WEBPUSH_INSECURE_HOSTS"] = f"127.0.0.1:{os.environ['MC_WEBPUSH_PORT']}"
if "AIRFLOW_CONN_WEBPUSH_DEFAULT" not in os.environ:
    from message_center.delivery.webpush import generate_vapid_keys

    _vapid = generate_vapid_keys()  # made per run: no key in the repository
    os.environ["AIRFLOW_CONN_WEBPUSH_DEFAULT"] = json.dumps({
        "conn_type": "generic", "login": "mailto:ops@message-center.test",
        "password": _vapid.private_key, "extra": {"public_key": _vapid.public_key},
    })


@pytest.fixture(scope="session")
def _webpush_sink_session(tmp_path_factory: pytest.TempPathFactory):
    from mc_local.webpush_sink import WebPushSink

    with WebPushSink(tmp_path_factory.mktemp("webpush"),
                     port=int(os.environ["MC_WEBPUSH_PORT"])) as sink:
        yield sink


@pytest.fixture
def webpush_sink(_webpush_sink_session):
    """A real Web Push service on loopback (RFC 8030/8291/8292: it checks the VAPID token
    and decrypts), emptied per test; ``.create_subscription()`` subscribes to it,
    ``.script(endpoint, "410", "429 retry-after=30")`` scripts answers."""
    _webpush_sink_session.clear()
    return _webpush_sink_session


# --- browser tests: Chromium per module; a loud line when they could not run -------------
BROWSER_SKIP = "no Chromium for the browser tests"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium driven by Playwright (tests/browser_support.py) for the module's
    tests (each opens contexts of its own); closed with the module, so that Playwright's
    event loop never outlives the browser tests."""
    from browser_support import launch
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    """The very last lines of the run (after pytest's counts): browser tests skipped?"""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [report for report in reporter.stats.get("skipped", [])
               if BROWSER_SKIP in str(getattr(report, "longrepr", ""))]
    if skipped:
        from browser_support import CHROMIUM_HELP

        reporter.write_sep("!", f"{len(skipped)} BROWSER TESTS SKIPPED", red=True, bold=True)
        reporter.write_line(CHROMIUM_HELP, red=True, bold=True)


# --- bounce mailbox: a real IMAP server (pymap, in-memory backend) on loopback ----------
class BounceMailbox:
    """The ``mc_bounce_mailbox`` connection's server: ``drop(raw)`` delivers a mail over
    IMAP APPEND, ``unseen()`` lists what is still to read."""

    user, password, folder = "demouser", "demopass", "INBOX"

    def __init__(self, port: int) -> None:
        self.port = port

    def _client(self):
        import imaplib

        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        client.login(self.user, self.password)
        client.select(self.folder)
        return client

    def drop(self, raw: bytes) -> None:
        client = self._client()
        try:
            status, _ = client.append(self.folder, None, None, raw)
            assert status == "OK"
        finally:
            client.logout()

    def unseen(self) -> int:
        client = self._client()
        try:
            return len(client.uid("SEARCH", None, "UNSEEN")[1][0].split())
        finally:
            client.logout()

    def clear(self) -> None:
        client = self._client()
        try:
            uids = client.uid("SEARCH", None, "ALL")[1][0].split()
            if uids:
                client.uid("STORE", b",".join(uids).decode(), "+FLAGS", r"(\Deleted)")
                client.expunge()
        finally:
            client.logout()


@pytest.fixture(scope="session")
def _bounce_mailbox_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BounceMailbox]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("imap") / "pymap.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "pymap"), "--host", "127.0.0.1", "--port",
             str(port), "--no-tls", "dict"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"pymap did not start:\n{log_path.read_text()}") from None
            time.sleep(0.2)
    os.environ["AIRFLOW_CONN_MC_BOUNCE_MAILBOX"] = json.dumps({
        "conn_type": "imap", "host": "127.0.0.1", "port": port, "login": BounceMailbox.user,
        "password": BounceMailbox.password, "extra": {"use_ssl": False}})
    try:
        yield BounceMailbox(port)
    finally:
        os.environ.pop("AIRFLOW_CONN_MC_BOUNCE_MAILBOX", None)
        process.terminate()
        process.wait(10)


@pytest.fixture
def bounce_mailbox(_bounce_mailbox_session: BounceMailbox) -> BounceMailbox:
    """A real IMAP server on loopback holding the bounce mailbox (emptied per test); the
    ``mc_bounce_mailbox`` connection points at it."""
    _bounce_mailbox_session.clear()
    return _bounce_mailbox_session
