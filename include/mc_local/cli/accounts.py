"""``mc accounts``: the execution accounts of this control instance (ACC's "Message Center
execution instance" external accounts) and their archiving DAGs ``mcSynch_<name>``.

``add`` is ACC's "Create the archiving workflow" button: it tests the instance, creates its
Airflow connection and writes the registry entry; the DAG appears at the next parse of
``dags/mc_synch.py`` (about 30 s) and starts unpaused. ``test`` is "Test the connection".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mc_airflow.defaults import ACCOUNT_REGISTRY
from mc_local.localenv import deployment
from message_center import accounts
from message_center.accounts import AccountRefused, ConnectionConflict, register_account
from message_center.archiving import ArchivingError, InstanceInfo, check_instance, safe_url
from message_center.registry import (
    ExecutionAccount,
    RegistryError,
    load_registry,
    parse_account,
    registry_path,
    remove_account,
    set_enabled,
)

EXIT_NOT_FOUND = 2  # mc_airflow.connection_admin's codes
EXIT_CONFLICT = 3


class CommandError(Exception):
    """A refusal with a message for the user (exit code 1, nothing changed)."""


def _connection_admin(profile: str | None, *args: str,
                      stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the Airflow side (connections live in Airflow) with the deployment's environment."""
    env = {**os.environ, **deployment(profile).environment()}
    return subprocess.run([sys.executable, "-m", "mc_airflow.connection_admin", *args],
                          env=env, input=stdin, capture_output=True, text=True, check=False)


def resolve_connection(profile: str | None, conn_id: str) -> str | None:
    """The URI of an Airflow connection, or None when it does not exist."""
    result = _connection_admin(profile, "get", conn_id)
    if result.returncode == EXIT_NOT_FOUND:
        return None
    if result.returncode != 0:
        raise CommandError(f"cannot read connection {conn_id} from Airflow: "
                           f"{_last_line(result.stderr)}")
    return result.stdout.strip()


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _registry(args: argparse.Namespace) -> Path:
    return Path(args.registry) if args.registry else registry_path(ACCOUNT_REGISTRY)


def _tested(account: ExecutionAccount, url: str, info: InstanceInfo) -> str:
    return (f"{account.name}: connection {account.conn_id} reaches {safe_url(url)} "
            f"(PostgreSQL {info.server_version}); cell id {info.cell_id} matches")


def _test_url(account: ExecutionAccount, url: str) -> str:
    info = check_instance(url, account.cell_id,
                          name=f"account {account.name} (connection {account.conn_id})")
    return _tested(account, url, info)


def _list(args: argparse.Namespace) -> int:
    registry = load_registry(_registry(args))
    print(f"Registry: {registry.path}")
    if registry.accounts:
        rows = [("NAME", "LABEL", "CONNECTION", "CELL", "ENABLED", "SCHEDULE", "DAG")]
        rows += [(a.name, a.label, a.conn_id, str(a.cell_id), "yes" if a.enabled else "no",
                  a.cron, a.dag_id if a.enabled else "-") for a in registry.accounts]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                      strict=True)).rstrip())
    else:
        print("No execution account registered.")
    for error in registry.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if registry.errors else 0


def _test(args: argparse.Namespace) -> int:
    registry = load_registry(_registry(args))
    account = registry.get(args.name)
    if account is None:
        known = ", ".join(a.name for a in registry.accounts) or "none"
        raise CommandError(f"no account named {args.name!r} in {registry.path} "
                           f"(accounts: {known})")
    url = resolve_connection(args.profile, account.conn_id)
    if url is None:
        raise CommandError(f"{account.name}: Airflow connection {account.conn_id} does not "
                           "exist (create it with `mc accounts add ... --conn-uri -`)")
    print(_test_url(account, url))
    return 0


class _AirflowConnections:
    """The deployment's Airflow connections, through ``python -m mc_airflow.connection_admin``."""

    def __init__(self, profile: str | None) -> None:
        self.profile = profile

    def get_uri(self, conn_id: str) -> str | None:
        return resolve_connection(self.profile, conn_id)

    def put(self, conn_id: str, uri: str, description: str, *, replace: bool) -> str:
        stored = _connection_admin(self.profile, "put", conn_id, "--description", description,
                                   *(["--replace"] if replace else []), stdin=uri)
        if stored.returncode == EXIT_CONFLICT:
            raise ConnectionConflict(_last_line(stored.stderr))
        if stored.returncode != 0:
            raise CommandError(f"cannot store connection {conn_id} in Airflow: "
                               f"{_last_line(stored.stderr)}")
        return _last_line(stored.stdout)

    def delete(self, conn_id: str) -> None:
        _connection_admin(self.profile, "delete", conn_id)


def _refused(refusal: AccountRefused, account: ExecutionAccount, path: Path) -> CommandError:
    """A refusal of :func:`register_account`, worded for the command line."""
    reason = refusal.reason
    if reason == accounts.REGISTRY_HAS_ERRORS:
        return CommandError(f"fix {path} first:\n" + "\n".join(refusal.registry_errors))
    if reason == accounts.CLASH:
        clash = refusal.clashes[0]
        what = {"cell_id": "cell id", "conn_id": "connection"}.get(clash.field, clash.field)
        return CommandError(f"account {account.name}: {what} {clash.value!r} is already used "
                            f"by account {clash.owner}")
    if reason == accounts.BAD_URI:
        return CommandError("--conn-uri must be a postgres:// or postgresql:// URI")
    if reason == accounts.NO_CONNECTION:
        return CommandError(f"Airflow connection {account.conn_id} does not exist: pass "
                            "--conn-uri (or --conn-uri - to read it from stdin)")
    if reason == accounts.WRONG_CELL:  # the wrong database: --no-test would register it
        return CommandError(f"{refusal}\nnothing registered (check --cell-id and the "
                            "connection: they must name the same instance)")
    if reason == accounts.UNREACHABLE:
        return CommandError(f"{refusal}\nnothing registered (use --no-test to register an "
                            "instance that is not up yet)")
    if reason == accounts.CONNECTION_CONFLICT:
        return CommandError(f"Airflow connection {account.conn_id} already exists with "
                            "other settings; pass --replace-connection to overwrite it")
    if reason == accounts.CONNECTION_REFUSED:
        return CommandError(f"cannot store connection {account.conn_id} in Airflow: "
                            f"{refusal}")
    return CommandError(str(refusal))  # NOT_REGISTERED: the registry's own words


def _add(args: argparse.Namespace) -> int:
    """``mc accounts add``: :func:`message_center.accounts.register_account`, the flow of
    the UI's *Create the archiving workflow*."""
    path = _registry(args)
    raw = {"name": args.name, "label": args.label, "conn_id": args.conn_id or args.name,
           "cell_id": args.cell_id, "enabled": not args.disabled, "schedule": args.schedule}
    try:
        account = parse_account(raw)
    except ValueError as exc:
        raise CommandError(f"account {args.name}: {exc}") from None
    uri = args.conn_uri
    if uri == "-":
        uri = sys.stdin.readline().strip()
    try:
        done = register_account(
            path, account, _AirflowConnections(args.profile), conn_uri=uri,
            replace_connection=args.replace_connection, test=not args.no_test,
            instance_name=f"account {account.name} (connection {account.conn_id})")
    except AccountRefused as refusal:
        if refusal.tested is not None:  # the steps before the refusal, as they went
            print(_tested(account, refusal.tested_url or "", refusal.tested))
        raise _refused(refusal, account, path) from None
    if done.tested is None:
        print(f"{account.name}: connection not tested (--no-test)")
    else:
        print(_tested(account, done.tested_url or "", done.tested))
    if done.connection is not None:
        print(f"{account.name}: Airflow connection {account.conn_id} {done.connection}")
    elif not done.connection_existed:
        print(f"warning: Airflow connection {account.conn_id} does not exist yet; the "
              "archiving runs fail until it is created", file=sys.stderr)
    print(f"{account.name}: registered in {path} (cell {account.cell_id}).")
    if account.enabled:
        print(f"The DAG {account.dag_id} \"{account.dag_display_name}\" appears within a "
              "minute and starts unpaused: every hour it archives the last hour (and, on its "
              "first run, the last 7 days).\nOlder history: mc airflow backfill create "
              f"--dag-id {account.dag_id} --from-date <ISO date> --to-date <ISO date>")
    return 0


def _remove(args: argparse.Namespace) -> int:
    account = remove_account(_registry(args), args.name)
    print(f"{account.name}: removed from the registry; {account.dag_id} is no longer "
          "scheduled (its runs and the archived rows stay).")
    if args.delete_connection:
        result = _connection_admin(args.profile, "delete", account.conn_id)
        print(f"{account.name}: Airflow connection {account.conn_id} "
              f"{'deleted' if result.returncode == 0 else 'not found'}")
    return 0


def _enable(args: argparse.Namespace) -> int:
    account = set_enabled(_registry(args), args.name, args.enabled)
    state = "enabled: its DAG is generated and scheduled" if account.enabled else (
        "disabled: its DAG is no longer scheduled (runs and archive stay)")
    print(f"{account.name}: {state}")
    return 0


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Refusals end with one clear line on stderr and exit code 1, not a traceback."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except (CommandError, RegistryError, ArchivingError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return run


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = subparsers.add_parser(
        "accounts", help="Execution accounts and their archiving DAGs (mcSynch_<name>).",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="accounts_command", required=True)

    Handler = Callable[[argparse.Namespace], int]

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--profile", default=None,
                            help="deployment profile whose Airflow holds the connections")
        parser.add_argument("--registry", default=None,
                            help="registry file (default: $MC_ACCOUNT_REGISTRY or "
                                 "dags/execution_accounts.yaml)")
        parser.set_defaults(handler=_guarded(handler))
        return parser

    add("list", _list, "List the registered execution accounts (and any bad entry).")
    parser = add("test", _test, "Test an account: connection reachable, cell id as registered.")
    parser.add_argument("name")
    parser = add("add", _add, "Register an execution instance: test it, create its Airflow "
                              "connection and its archiving DAG.")
    parser.add_argument("name", help="internal name, e.g. mcExec3 (DAG mcSynch_<name>)")
    parser.add_argument("--label", required=True, help="label shown in the UI")
    parser.add_argument("--cell-id", type=int, required=True,
                        help="the instance's cell id, 0-255, unique")
    parser.add_argument("--conn-id", default=None,
                        help="Airflow connection id (default: the name)")
    parser.add_argument("--conn-uri", default=None,
                        help="postgres:// URI of its database; '-' reads it from stdin "
                             "(keeps the password out of ps and shell history). Without it, "
                             "the connection must already exist in Airflow")
    parser.add_argument("--replace-connection", action="store_true",
                        help="overwrite an existing connection with other settings")
    parser.add_argument("--schedule", default=None, help="cron (default hourly: 0 * * * *)")
    parser.add_argument("--disabled", action="store_true", help="register it disabled")
    parser.add_argument("--no-test", action="store_true",
                        help="do not test the connection (instance not up yet)")
    parser = add("remove", _remove, "Unregister an account (its DAG stops being scheduled; "
                                    "the archive stays).")
    parser.add_argument("name")
    parser.add_argument("--delete-connection", action="store_true",
                        help="also delete its Airflow connection")
    parser = add("enable", _enable, "Enable an account (its DAG is scheduled again).")
    parser.add_argument("name")
    parser.set_defaults(enabled=True)
    parser = add("disable", _enable, "Disable an account (its DAG stops being scheduled).")
    parser.add_argument("name")
    parser.set_defaults(enabled=False)
