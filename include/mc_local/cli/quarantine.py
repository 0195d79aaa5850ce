"""``mc quarantine``: the quarantined addresses of an instance - list, add, release.

Works on the database directly (the local deployment's, or ``--database-url``): the
execution instance by default, ``--instance control`` for the control instance, whose
decisions reach every execution instance at the next synchronisation. The push API
offers the same over HTTP (``/message-center/v1/quarantine``) with Airflow's permissions.

The channel is taken from the address (``@``: email, else sms) unless ``--channel`` says.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import OperationalError

from mc_local.localenv import deployment
from message_center import channel as channels
from message_center.channel import guess as guess_channel
from message_center.db import engine_for
from message_center.delivery import quarantine as q

INSTANCES = ("execution", "execution2", "control")


def _url(args: argparse.Namespace) -> str:
    return args.database_url or deployment(args.profile).database_url(args.instance)


def _channel(args: argparse.Namespace) -> str:
    return args.channel or guess_channel(args.address)


def _who() -> str:
    try:
        return f"mc quarantine ({getpass.getuser()})"
    except (KeyError, OSError):
        return "mc quarantine"


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _show(record: dict[str, Any]) -> str:
    state = "active" if record["active"] else "released"
    until = f", until {_time(record['release_at'])}" if record["active"] and record[
        "release_at"] else ""
    return (f"{record['channel']} {record['address']}: {state} "
            f"({record['failure_class']}{until}) - {record['reason']}")


def _list(args: argparse.Namespace) -> int:
    with engine_for(_url(args)).connect() as conn:
        rows, total = q.list_quarantine(conn, channel=args.channel, status=args.status,
                                        address=args.address, failure_class=args.failure_class,
                                        limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps({"items": [q.api_record(r) for r in rows], "total": total}, indent=2))
        return 0
    if not rows:
        print("No address matches." if total == 0 else f"No address on this page ({total} "
              "in all).")
        return 0
    table = [("CHANNEL", "ADDRESS", "STATE", "CLASS", "REASON", "DECIDED", "RELEASE")]
    for r in rows:
        table.append((r["channel"], r["address"], "active" if r["active"] else "released",
                      r["failure_class"] + (f"/{r['failure_reason']}" if r["failure_reason"]
                                            else ""),
                      (r["reason"][:60] + "...") if len(r["reason"]) > 63 else r["reason"],
                      _time(r["updated"]),
                      _time(r["released_at"] or r["release_at"]) if r["released_at"] or r[
                          "release_at"] else "never"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                  strict=True)).rstrip())
    if total > len(rows):
        print(f"({len(rows)} of {total}; --offset {args.offset + len(rows)} for more)")
    return 0


def _add(args: argparse.Namespace) -> int:
    with engine_for(_url(args)).begin() as conn:
        record = q.add(conn, _channel(args), args.address, args.reason or "",
                       decided_by=_who(), release_after_days=args.days)
    print(_show(record))
    return 0


def _release(args: argparse.Namespace) -> int:
    with engine_for(_url(args)).begin() as conn:
        record = q.release(conn, _channel(args), args.address, decided_by=_who())
    if record is None:
        print(f"error: {_channel(args)} address {args.address} is not in quarantine",
              file=sys.stderr)
        return 1
    print(_show(record))
    return 0


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            print(f"error: the {args.instance} database is unavailable: {reason}",
                  file=sys.stderr)
            return 1
    return run


def database_command(commands: argparse._SubParsersAction,  # type: ignore[type-arg]
                     name: str, handler: Callable[[argparse.Namespace], int],
                     help_text: str) -> argparse.ArgumentParser:
    """A subcommand that works on one database of a deployment (``--instance``,
    ``--database-url``, ``--profile``), its errors said in one line: shared by the
    quarantine and suppression commands."""
    parser = commands.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--instance", choices=INSTANCES, default="execution",
                        help="which database of the local deployment (default execution)")
    parser.add_argument("--database-url", default=None,
                        help="a postgresql:// URL instead of the local deployment's")
    parser.add_argument("--profile", default=None, help="local deployment profile")
    parser.set_defaults(handler=_guarded(handler))
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = subparsers.add_parser(
        "quarantine", help="Quarantined addresses: list, add, release.",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="quarantine_command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int],
            help_text: str) -> argparse.ArgumentParser:
        return database_command(commands, name, handler, help_text)

    parser = add("list", _list, "List quarantined addresses, newest decision first.")
    parser.add_argument("--channel", choices=channels.names())
    parser.add_argument("--status", choices=("active", "released", "all"), default="active",
                        help="active (in force, the default), released, all")
    parser.add_argument("--address", help="case-insensitive part of the address")
    parser.add_argument("--class", dest="failure_class", choices=("hard", "soft", "manual"))
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="the push API's JSON")
    parser = add("add", _add, "Quarantine an address by hand (its events are ignored).")
    parser.add_argument("address")
    parser.add_argument("--channel", choices=channels.names(),
                        help="default: the first channel the address is valid for")
    parser.add_argument("--reason", help="shown on the ignored events")
    parser.add_argument("--days", type=float, default=None,
                        help="release automatically after this many days (default: never)")
    parser = add("release", _release, "Release an address: its next event is sent again.")
    parser.add_argument("address")
    parser.add_argument("--channel", choices=channels.names(),
                        help="default: the first channel the address is valid for")
