"""``mc setup``, ``mc run``, ``mc airflow`` and ``mc env``: the local deployment."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mc_local import celery_mode, execution2, launcher
from mc_local.localenv import Deployment, deployment
from mc_local.supervisor import session_status, stop_recorded_session


def _setup(args: argparse.Namespace) -> int:
    target = deployment(args.profile)
    if isinstance(target, execution2.SecondExecution):
        execution2.prepare(target)
        return 0
    launcher.prepare(target)
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        mode = celery_mode.executor()
    except ValueError as exc:
        raise SystemExit(f"[mc] {exc}") from None
    target = deployment(args.profile)
    if isinstance(target, execution2.SecondExecution):  # make run-execution2
        return execution2.run(target)
    if mode == "celery":  # MC_EXECUTOR=celery: CeleryExecutor, broker and workers
        return celery_mode.run(target)
    return launcher.run(target)


def test_workers(pytest_args: list[str]) -> int:
    """How many pytest workers ``mc test`` runs: ``MC_TEST_WORKERS``, else 4 on two cores or
    more (most of the suite waits on servers, not on the CPU: one worker per Airflow stack
    scope, two for the rest, so the rest is done by the time the longer stack scope ends);
    the caller's own ``-n N`` (one deployment per worker it starts); 1 when the caller
    selected tests (a path, a node id or ``-k``'s expression), so a narrow run sets up one
    deployment."""
    chosen = _explicit_workers(pytest_args)
    if chosen is not None:
        return chosen
    value = os.environ.get("MC_TEST_WORKERS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"[mc] MC_TEST_WORKERS={value!r}: expected a whole number >= 1")
        return int(value)
    if _selects_tests(pytest_args):
        return 1
    return 4 if (os.cpu_count() or 1) >= 2 else 1


def _explicit_workers(pytest_args: list[str]) -> int | None:
    """The worker count of a ``-n`` / ``--numprocesses`` the caller gave, if any (``auto``:
    one per core; ``0``: no xdist, one deployment)."""
    for index, arg in enumerate(pytest_args):
        if arg in ("-n", "--numprocesses"):
            value = pytest_args[index + 1] if index + 1 < len(pytest_args) else ""
        elif arg.startswith("--numprocesses="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-n") and not arg.startswith("--"):
            value = arg[2:].lstrip("=")
        else:
            continue
        if value in ("auto", "logical"):
            return os.cpu_count() or 1
        if not value.isdigit():
            raise SystemExit(f"[mc] -n {value!r}: expected a number of workers or auto")
        return max(int(value), 1)
    return None


#: pytest options whose value is the next argument and selects no test (``-p no:warnings``,
#: ``--tb short``): that value is not a path. (``-k`` and ``-m`` expressions select.)
_VALUE_OPTIONS = frozenset({"-p", "-o", "-c", "-W", "-r", "--tb", "--durations", "--maxfail",
                            "--rootdir", "--basetemp", "--confcutdir", "--log-level",
                            "--deselect", "--ignore", "--ignore-glob", "--override-ini",
                            "--pythonwarnings", "--junit-xml", "--junitxml"})


def _selects_tests(pytest_args: list[str]) -> bool:
    """Whether the arguments name tests: a path, a node id, or an option's expression."""
    skip = False
    for arg in pytest_args:
        if skip:
            skip = False
        elif arg in _VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return True
    return False


def worker_profile(base: str, index: int) -> str:
    """The deployment profile of test worker ``index``: the first uses ``base`` itself, the
    others their own databases (``<base>_w1``, ...), so that workers never share a row."""
    return base if index == 0 else f"{base}_w{index}"


def _prepare_side_by_side(target: Deployment, others: list[str]) -> None:
    """Set up ``target`` and the worker profiles ``others`` at the same time, each other one
    as an `mc setup` process of its own (Alembic is not thread-safe) started once ``target``
    has the embedded server up."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(launcher.prepare, target)
        deadline = time.monotonic() + 120
        while target.uses_embedded and not target.embedded.is_ready() and not first.done():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        setups = [subprocess.Popen([str(Path(sys.executable).parent / "mc"), "setup",
                                    "--profile", profile]) for profile in others]
        first.result()
        failed = [profile for profile, setup in zip(others, setups, strict=True)
                  if setup.wait() != 0]
    if failed:
        raise SystemExit(f"[mc] set-up of the test profile(s) {', '.join(failed)} failed")


def _test(args: argparse.Namespace) -> int:
    """Set up the test deployment (one per pytest worker), run pytest, and stop the embedded
    PostgreSQL again unless it was already running (a `make run` in another terminal keeps
    its server)."""
    target = deployment(args.profile or "test")
    was_running = target.uses_embedded and target.embedded.is_ready()
    pytest_args = list(args.pytest_args)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    workers = test_workers(pytest_args)
    _prepare_side_by_side(target, [worker_profile(target.profile, index)
                                   for index in range(1, workers)])
    if workers > 1 and _explicit_workers(pytest_args) is None:
        # One unit of work per module, and one for every module that uses the Airflow stack
        # (tests/conftest.py's scheduler): a module's tests share a worker and its order.
        pytest_args = ["-n", str(workers), "--dist", "loadscope", "--no-loadscope-reorder",
                       *pytest_args]
    try:
        return subprocess.call([str(Path(sys.executable).parent / "pytest"), *pytest_args],
                               env={**os.environ, "MC_TEST_PROFILE": target.profile})
    finally:
        if target.uses_embedded and not was_running:
            target.embedded.stop()


def _mode_environment(target: object) -> dict[str, str]:
    try:
        return celery_mode.mode_environment(target)  # type: ignore[arg-type]
    except ValueError as exc:
        raise SystemExit(f"[mc] {exc}") from None


def _ps(args: argparse.Namespace) -> int:
    """List the processes of the deployment's running session (`mc run` in any mode)."""
    target = deployment(args.profile)
    rows = session_status(target.session_file)
    if not rows:
        print(f"[mc] no session of profile {target.profile} is recorded "
              f"({target.session_file})")
        return 0
    print(f"{'COMPONENT':<14} {'PID':>8}  STATE")
    for name, pid, running in rows:
        print(f"{name:<14} {pid:>8}  {'running' if running else 'gone'}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    """Stop the deployment's running session (`mc run` in any mode, also one whose
    supervisor was killed hard), then this checkout's embedded PostgreSQL (a leftover of
    `make bench`, ...); never a server of another checkout."""
    target = deployment(args.profile)
    if stop_recorded_session(target.session_file):
        print(f"[mc] stopped the session of profile {target.profile}")
    if not target.uses_embedded:
        print("[mc] MC_POSTGRES_URL is set: that server is not ours to stop")
        return 0
    server = target.embedded
    if server.stop():
        print(f"[mc] stopped the embedded PostgreSQL on port {server.port} "
              f"(data in {server.data_dir})")
        return 0
    serving = server.serving_dir()
    if serving is not None:
        print(f"[mc] port {server.port} is served by another checkout's PostgreSQL (data in "
              f"{serving}); stop it with `mc stop` there")
        return 1
    print(f"[mc] no embedded PostgreSQL of this checkout is running (port {server.port})")
    return 0


def _airflow(args: argparse.Namespace) -> int:
    target = deployment(args.profile)
    env = {**os.environ, **target.environment(), **_mode_environment(target)}
    binary = str(Path(sys.executable).parent / "airflow")
    os.execve(binary, [binary, *args.airflow_args], env)
    return 0  # not reached


def _backfill_wait(args: argparse.Namespace) -> int:
    """Wait until Airflow marks every backfill of a DAG complete (it does so some seconds
    after the backfill's runs end; until then a new backfill of the DAG is refused with
    AlreadyRunningBackfill). Asks the Airflow REST API as the local admin."""
    import httpx

    from mc_local.client import PushClient, PushError
    from mc_local.localenv import ADMIN_USER

    local = deployment(args.profile)
    base = f"http://127.0.0.1:{local.api_port}"
    deadline = time.monotonic() + args.timeout
    try:
        with PushClient(base, username=ADMIN_USER, password=local.admin_password()) as client:
            token = client.token()
            while True:
                response = httpx.get(f"{base}/api/v2/backfills", timeout=30,
                                     params={"dag_id": args.dag_id, "limit": 100},
                                     headers={"Authorization": f"Bearer {token}"})
                if response.status_code != 200:
                    print(f"mc backfill-wait: {response.status_code} {response.text[:300]}",
                          file=sys.stderr)
                    return 1
                running = [b for b in response.json()["backfills"]
                           if b.get("completed_at") is None]
                if not running:
                    print(f"{args.dag_id}: no backfill running")
                    return 0
                if time.monotonic() > deadline:
                    print(f"mc backfill-wait: {args.dag_id} still has backfill "
                          f"{running[0]['id']} running after {args.timeout:.0f} s",
                          file=sys.stderr)
                    return 1
                time.sleep(2)
    except (PushError, httpx.HTTPError, OSError) as exc:
        print(f"mc backfill-wait: cannot ask {base}: {exc}", file=sys.stderr)
        return 1


def _demo_data(args: argparse.Namespace) -> int:
    """A day of past traffic in execution instance 1 (cell 0): history for the archiving
    DAG, the README's backfill examples and the report pages."""
    from mc_local.demo_data import add_demo_traffic
    from message_center.db import engine_for

    local = deployment(args.profile)
    ids = add_demo_traffic(engine_for(local.database_url("execution")))
    print(f"added {len(ids)} events (with their delivery logs) over the 23 hours before this "
          f"one to {local.database('execution')} (instance 1, cell 0)")
    return 0


def _env(args: argparse.Namespace) -> int:
    target = deployment(args.profile)
    for key, value in sorted({**target.environment(), **_mode_environment(target)}.items()):
        print(f"export {key}={shlex.quote(value)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def add(name: str, handler: object, help_text: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--profile", default=None,
                            help="deployment profile: run (default), test, or execution2 (the "
                            "second execution instance beside run)")
        parser.set_defaults(handler=handler)
        return parser

    add("setup", _setup, "Start PostgreSQL, create and migrate the databases, load settings.")
    add("run", _run, "Set up, then run Airflow (UI, scheduler, DAGs, push API) and the SMTP sink.")
    parser = add("test", _test, "Set up the test deployment and run pytest (args go to pytest).")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    add("ps", _ps, "List the processes of the running `mc run` session (any mode).")
    add("stop", _stop, "Stop the running `mc run` session, then this checkout's embedded "
                       "PostgreSQL (a leftover server).")
    parser = add("airflow", _airflow, "Run any airflow CLI command against the local deployment.")
    parser.add_argument("airflow_args", nargs=argparse.REMAINDER)
    add("env", _env, "Print the environment of the local deployment as shell exports.")
    add("demo-data", _demo_data, "Add a day of past traffic to execution instance 1 (for "
                                 "archiving, backfills and reports).")
    parser = add("backfill-wait", _backfill_wait,
                 "Wait until Airflow has marked every backfill of a DAG complete.")
    parser.add_argument("dag_id", help="e.g. mcSynch_mcExec1")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds to wait at most (default 600); exit 1 after")
