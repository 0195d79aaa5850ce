"""``mc setup``, ``mc run``, ``mc airflow`` and ``mc env``: the local deployment."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from mc_local import celery_mode, execution2, launcher
from mc_local.localenv import deployment


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


def _test(args: argparse.Namespace) -> int:
    """Set up the test deployment, run pytest, and stop the embedded PostgreSQL again
    unless it was already running (a `make run` in another terminal keeps its server)."""
    target = deployment(args.profile or "test")
    was_running = target.uses_embedded and target.embedded.is_ready()
    launcher.prepare(target)
    pytest_args = list(args.pytest_args)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
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


def _airflow(args: argparse.Namespace) -> int:
    target = deployment(args.profile)
    env = {**os.environ, **target.environment(), **_mode_environment(target)}
    binary = str(Path(sys.executable).parent / "airflow")
    os.execve(binary, [binary, *args.airflow_args], env)
    return 0  # not reached


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
    parser = add("airflow", _airflow, "Run any airflow CLI command against the local deployment.")
    parser.add_argument("airflow_args", nargs=argparse.REMAINDER)
    add("env", _env, "Print the environment of the local deployment as shell exports.")
