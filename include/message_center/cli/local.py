"""``mc setup``, ``mc run``, ``mc airflow`` and ``mc env``: the local deployment."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from message_center import launcher
from message_center.localenv import deployment


def _setup(args: argparse.Namespace) -> int:
    launcher.prepare(deployment(args.profile))
    return 0


def _run(args: argparse.Namespace) -> int:
    return launcher.run(deployment(args.profile))


def _airflow(args: argparse.Namespace) -> int:
    env = {**os.environ, **deployment(args.profile).environment()}
    binary = str(Path(sys.executable).parent / "airflow")
    os.execve(binary, [binary, *args.airflow_args], env)
    return 0  # not reached


def _env(args: argparse.Namespace) -> int:
    for key, value in sorted(deployment(args.profile).environment().items()):
        print(f"export {key}={shlex.quote(value)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def add(name: str, handler: object, help_text: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--profile", default=None,
                            help="deployment profile: run (default) or test")
        parser.set_defaults(handler=handler)
        return parser

    add("setup", _setup, "Start PostgreSQL, create and migrate the databases, load settings.")
    add("run", _run, "Set up, then run Airflow (UI, scheduler, DAGs, push API) and the SMTP sink.")
    parser = add("airflow", _airflow, "Run any airflow CLI command against the local deployment.")
    parser.add_argument("airflow_args", nargs=argparse.REMAINDER)
    add("env", _env, "Print the environment of the local deployment as shell exports.")
