"""``mc suppressions``: addresses that unsubscribed from a category - list, add, remove.

Beside ``mc quarantine`` (which blocks an address for every message), a suppression only
stops the templates whose ``unsubscribe`` category it names. Works on the database
directly (the local deployment's execution instance, or ``--database-url``); the push API
offers the same over HTTP (``/message-center/v1/suppressions``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable

from mc_local.cli.quarantine import database_command
from mc_local.localenv import deployment
from message_center import channel as channels
from message_center.channel import guess as guess_channel
from message_center.db import engine_for
from message_center.delivery import suppression as s


def _url(args: argparse.Namespace) -> str:
    return args.database_url or deployment(args.profile).database_url(args.instance)


def _who() -> str:
    try:
        return f"mc suppressions ({getpass.getuser()})"
    except (KeyError, OSError):
        return "mc suppressions"


def _list(args: argparse.Namespace) -> int:
    with engine_for(_url(args)).connect() as conn:
        rows, total = s.list_suppressions(conn, channel=args.channel, category=args.category,
                                          address=args.address, status=args.status,
                                          limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps({"items": [s.api_record(r) for r in rows], "total": total}, indent=2))
        return 0
    if not rows:
        print("No suppression matches.")
        return 0
    table = [("ID", "CHANNEL", "ADDRESS", "CATEGORY", "STATE", "SOURCE", "DECIDED")]
    for r in rows:
        table.append((str(r["id"]), r["channel"], r["address"], r["category"],
                      "active" if r["status"] == "suppressed" else "removed", r["source"],
                      r["updated"].strftime("%Y-%m-%d %H:%M")))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if total > len(rows):
        print(f"({len(rows)} of {total}; --offset {args.offset + len(rows)} for more)")
    return 0


def _add(args: argparse.Namespace) -> int:
    with engine_for(_url(args)).begin() as conn:
        row = s.suppress(conn, args.channel or guess_channel(args.address), args.address,
                         args.category, source="manual", decided_by=_who())
    print(f"suppression {row['id']}: {row['channel']} {row['address']} from {row['category']}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    with engine_for(_url(args)).begin() as conn:
        row = s.remove(conn, args.id, decided_by=_who())
    if row is None:
        print(f"error: no suppression {args.id}", file=sys.stderr)
        return 1
    print(f"suppression {row['id']}: {row['channel']} {row['address']} from "
          f"{row['category']}: {row['status']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = subparsers.add_parser(
        "suppressions", help="Unsubscribed addresses per category: list, add, remove.",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="suppressions_command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int],
            help_text: str) -> argparse.ArgumentParser:
        return database_command(commands, name, handler, help_text)

    parser = add("list", _list, "List suppressions, newest decision first.")
    parser.add_argument("--channel", choices=channels.names())
    parser.add_argument("--category")
    parser.add_argument("--status", choices=("active", "removed", "all"), default="active")
    parser.add_argument("--address", help="case-insensitive part of the address")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="the push API's JSON")
    parser = add("add", _add, "Suppress an address for a category by hand.")
    parser.add_argument("address")
    parser.add_argument("category")
    parser.add_argument("--channel", choices=channels.names(),
                        help="default: the first channel the address is valid for")
    parser = add("remove", _remove, "Lift a suppression: that category is sent again.")
    parser.add_argument("id", type=int)
