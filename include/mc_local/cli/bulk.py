"""``mc events cancel|retry|replay --filter ... [--dry-run]``: bulk actions through the API
(``POST /message-center/v1/actions``, the user's own rights: editing the processing DAGs).

Always two steps: the dry run counts the events and shows a sample; the action is then
sent with that count as its guard (``--expected-count`` to give the count of an earlier
dry run instead) and refused if it moved by more than ``--tolerance``. The action runs
as an ``mcBulkAction`` DAG run, whose id is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mc_local.cli.events import InputError, _client
from mc_local.client import PushError
from mc_local.localenv import ADMIN_USER, deployment


def _body(args: argparse.Namespace) -> dict[str, Any]:
    try:
        filter_ = json.loads(args.filter)
    except ValueError as exc:
        raise InputError(f"--filter is not valid JSON: {exc}") from None
    if not isinstance(filter_, dict):
        raise InputError("--filter must be a JSON object, e.g. '{\"status\": \"failed\"}'")
    body: dict[str, Any] = {"action": args.action, "filter": filter_,
                            "tolerance": args.tolerance}
    if args.confirm_unknown:
        body["confirmUnknown"] = True
    if args.expiration:
        body["expiration"] = args.expiration
    return body


def _show(answer: dict[str, Any], action: str) -> None:
    print(f"{action}: {answer['count']} event(s) match")
    for name, count in (answer.get("excluded") or {}).items():
        if count:
            print(f"  left out: {count} ({name})")
    for row in answer.get("sample") or []:
        print(f"  {row['id']} {row['queue']} {row['type']} {row['status']} "
              f"{row.get('externalId') or ''}")


def _run(args: argparse.Namespace) -> int:
    if args.url is None:
        args.url = f"http://127.0.0.1:{deployment(args.profile).api_port}"
    try:
        body = _body(args)
        with _client(args) as client:
            dry = client.bulk_action({**body, "dryRun": True})
            _show(dry, args.action)
            if args.dry_run:
                return 0
            expected = dry["count"] if args.expected_count is None else args.expected_count
            if expected == 0 and dry["count"] == 0:
                print("nothing to do")
                return 0
            done = client.bulk_action({**body, "expectedCount": expected})
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"started: mcBulkAction run {done['runId']} ({done['count']} event(s))")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = subparsers.add_parser(
        "events", help="Bulk actions on events: cancel, retry, replay (by filter).",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="events_command", required=True)
    helps = {"cancel": "Cancel pending events no shard has claimed (they end expired).",
             "retry": "Retry failed or expired events known not sent.",
             "replay": "Send final events again, as new events linked to them."}
    for action, help_text in helps.items():
        parser = commands.add_parser(action, help=help_text, description=help_text)
        parser.add_argument("--filter", required=True,
                            help="JSON object: instance, queue, eventType, channel, status, "
                                 "failureClass, from, to, externalIdPrefix, ids")
        parser.add_argument("--dry-run", action="store_true",
                            help="count and show a sample; change nothing")
        parser.add_argument("--expected-count", type=int, default=None,
                            help="the count of an earlier dry run (default: this one's)")
        parser.add_argument("--tolerance", type=int, default=0,
                            help="how far the count may have moved (default 0)")
        if action == "retry":
            parser.add_argument("--confirm-unknown", action="store_true",
                                help="retry outcomes unknown too: the recipient may get "
                                     "the message twice")
        else:
            parser.set_defaults(confirm_unknown=False)
        if action != "cancel":
            parser.add_argument("--expiration", help="a new expiration (ISO 8601)")
        else:
            parser.set_defaults(expiration=None)
        parser.add_argument("--url", default=None, help="API server base URL (default: the "
                                                        "local deployment)")
        parser.add_argument("--user", default=ADMIN_USER, help="Airflow user (default admin)")
        parser.add_argument("--token", help="a Bearer token instead of user and password")
        parser.add_argument("--profile", default=None, help="local deployment profile")
        parser.set_defaults(handler=_run, action=action)
