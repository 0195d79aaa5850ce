"""The ``mc`` command: local deployment, event pushing, accounts and templates.

Each sub-module adds its sub-commands through ``register(subparsers)``; the command
names and their help are what ``mc --help`` shows.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("local", "templates", "events", "bulk", "accounts", "quarantine", "suppressions",
                   "tracking", "webpush")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mc", description="Message Center on Apache Airflow: local deployment and tools."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"mc_local.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.handler(args) or 0)
