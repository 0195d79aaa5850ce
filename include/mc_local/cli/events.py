"""``mc push``: push one event, or a JSON-lines file of events, to the push API.

Everything is checked locally with the server's own rules before the first request, so
a bad line in a file stops the command with its line number and nothing is pushed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

from mc_local.client import PushClient, PushError, chunks
from mc_local.localenv import ADMIN_USER, deployment
from message_center import channel as channels
from message_center import events
from message_center.net_guard import WEBPUSH_INSECURE_HOSTS

EVENT_FLAGS = (  # (flag, wire field)
    ("--type", "type"), ("--email", "email"), ("--mobile-phone", "mobilePhone"),
    ("--channel", "wishedChannel"), ("--external-id", "externalId"),
    ("--language", "language"), ("--country", "country"), ("--origin", "origin"),
    ("--scheduled", "scheduled"), ("--expiration", "expiration"),
)


class InputError(ValueError):
    """Bad command-line input or file content (exit code 2, nothing pushed)."""


def _fail_validation(where: str, exc: events.EventValidationError) -> InputError:
    return InputError("\n".join(f"{where}: {error['msg']}" for error in exc.errors))


def event_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``--json`` as the base, the individual flags on top; validated like the server."""
    event: dict[str, Any] = {}
    if args.json:
        try:
            event = json.loads(args.json)
        except ValueError as exc:
            raise InputError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(event, dict):
            raise InputError("--json must be a JSON object (one event)")
    for flag, field in EVENT_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            event[field] = value
    if args.ctx is not None:
        try:
            event["ctx"] = json.loads(args.ctx)
        except ValueError as exc:
            raise InputError(f"--ctx is not valid JSON: {exc}") from None
    for item in getattr(args, "attach", None) or ():
        event.setdefault("attachments", []).append(_attachment(item))
    try:
        events.parse_event(event)
    except events.EventValidationError as exc:
        raise _fail_validation("event", exc) from None
    return event


def _attachment(item: str) -> dict[str, Any]:
    """``--attach``: an http(s) URL (fetched by the server at sending time) or a local file
    (sent as base64); the type is the one its name suggests."""
    if item.startswith(("http://", "https://")):
        return {"name": PurePosixPath(urlsplit(item).path).name or "attachment", "url": item}
    path = Path(item)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"--attach {item}: {exc.strerror or exc}") from None
    return {"name": path.name, "content": base64.b64encode(data).decode("ascii")}


def read_jsonl(stream: TextIO, name: str) -> list[dict[str, Any]]:
    """Every non-blank line an event; any bad line is an ``InputError`` naming it."""
    found, problems = [], []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            event = events.loads(line)
            events.parse_event(event)
        except events.EventValidationError as exc:
            problems.extend(f"{name}:{number}: {error['msg']}".replace(": body is", ": line is")
                            for error in exc.errors)
            if len(problems) >= 20:
                break
            continue
        found.append(event)
    if problems:
        raise InputError("\n".join([*problems, "nothing was pushed"]))
    if not found:
        raise InputError(f"{name}: no events in the file")
    return found


def _client(args: argparse.Namespace) -> PushClient:
    token = args.token or os.environ.get("MC_API_TOKEN")
    password = os.environ.get("MC_API_PASSWORD")
    if token:  # with MC_API_PASSWORD too, an expired token is renewed as --user
        return PushClient(args.url, token=token, username=args.user if password else None,
                          password=password)
    if not password:
        local = deployment(args.profile)
        try:
            users = {name for name, _ in local.users()}
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if args.user not in users:
            raise InputError(f"no password for {args.user!r}: set MC_API_PASSWORD (it is not "
                             "a user of the local deployment), or give --token")
        password = local.password(args.user)
    # With a username and password the client logs in again once if the token expires
    # during a long import, and retries the same request with the same Idempotency-Key.
    return PushClient(args.url, username=args.user, password=password)


def _keys(prefix: str | None) -> Iterator[str | None]:
    number = 0
    while True:
        number += 1
        yield f"{prefix}-{number}" if prefix else None


def _push(args: argparse.Namespace) -> int:
    try:
        if args.file:
            if args.file == "-":
                pending = read_jsonl(sys.stdin, "<stdin>")
            else:
                path = Path(args.file)
                if not path.is_file():
                    raise InputError(f"{path}: no such file")
                with path.open(encoding="utf-8") as stream:
                    pending = read_jsonl(stream, str(path))
            if not 1 <= args.batch_size <= events.MAX_BATCH_EVENTS:
                raise InputError(f"--batch-size must be 1-{events.MAX_BATCH_EVENTS}")
        else:
            if not (args.json or args.type):
                raise InputError("give --type (and an address), --json or --file")
            pending = [event_from_args(args)]
    except (InputError, UnicodeDecodeError) as exc:
        print(f"mc push: {exc}", file=sys.stderr)
        return 2

    started, pushed, replayed = time.perf_counter(), 0, 0
    keys = _keys(args.idempotency_key)
    try:
        with _client(args) as client:
            if not args.file:
                event = pending[0]
                if args.batch:
                    ids = client.push_events([event], idempotency_key=next(keys))
                    result: Any = {"id": ids[0], "status": "pending"}
                else:
                    result = client.push_event(event, idempotency_key=next(keys))
                print(json.dumps(result))
                if client.last_replayed:
                    print(f"mc push: already pushed with Idempotency-Key "
                          f"{args.idempotency_key}-1: this is the first answer, nothing new "
                          "was stored", file=sys.stderr)
                return 0
            if args.rt:
                for event in pending:
                    answer = client.push_event(event, idempotency_key=next(keys))
                    pushed += not client.last_replayed
                    replayed += client.last_replayed
                    if args.print_ids:
                        print(answer["id"])
            else:
                for chunk in chunks(pending, args.batch_size):
                    ids = client.push_events(chunk, idempotency_key=next(keys))
                    pushed += 0 if client.last_replayed else len(ids)
                    replayed += len(ids) if client.last_replayed else 0
                    if args.print_ids:
                        print("\n".join(str(i) for i in ids))
    except InputError as exc:
        print(f"mc push: {exc}", file=sys.stderr)
        return 2
    except PushError as exc:
        print(f"mc push: {exc} (after {pushed} events pushed)", file=sys.stderr)
        return 1
    except (httpx.HTTPError, OSError) as exc:  # connection refused, DNS, timeouts, ...
        print(f"mc push: cannot reach {args.url}: {exc} (after {pushed} events pushed)",
              file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    queue = "real-time" if args.rt else "batch"
    if replayed and not pushed:
        print(f"already pushed: all {replayed} events were pushed before with Idempotency-Key "
              f"{args.idempotency_key}-*; nothing new was stored", file=sys.stderr)
        return 0
    already = (f"; {replayed} events already pushed before (Idempotency-Key "
               f"{args.idempotency_key}-*), not stored again" if replayed else "")
    print(f"pushed {pushed} events to the {queue} queue in {elapsed:.2f}s "
          f"({pushed / elapsed if elapsed else 0:.0f} events/s){already}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    help_text = "Push an event (flags or --json), or a JSON-lines file of events, to the API."
    parser = subparsers.add_parser(
        "push", help=help_text, description=help_text,
        epilog="Examples (the demo's templates; their ctx declarations say what each type "
               "needs):\n"
               "  mc push --type ORDER_CONFIRMED --email jane@example.com "
               "--ctx '{\"firstName\": \"Jane\", \"orderId\": \"A-1001\", \"total\": 42.5}'\n"
               "  mc push --type PASSWORD_RESET --channel sms --mobile-phone +33612345678 "
               "--ctx '{\"firstName\": \"Jane\", \"code\": \"4711\", \"expiresMinutes\": 15}'\n"
               "  mc push --file events.jsonl            # batch queue, 1000 per request\n"
               "Password: $MC_API_PASSWORD, else the local deployment's password for --user "
               "(.mc/secrets/); or a token with --token / $MC_API_TOKEN (renewed when it expires "
               "only if $MC_API_PASSWORD is set too).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    event = parser.add_argument_group("one event")
    for flag, field in EVENT_FLAGS:
        extra = {"choices": channels.names()} if flag == "--channel" else {}
        event.add_argument(flag, help=f"the event's {field}", **extra)  # type: ignore[arg-type]
    event.add_argument("--ctx", help="the event's context, a JSON object")
    event.add_argument("--attach", action="append", metavar="FILE_OR_URL",
                       help="a file sent with the e-mail, when its template takes files "
                            "from the event (attachments.from_event): a local file, or an "
                            "http(s) URL the server fetches at sending time; repeatable")
    event.add_argument("--json", help="the whole event as a JSON object (flags override it)")
    event.add_argument("--batch", action="store_true",
                       help="push it to the batch queue instead of the real-time one")
    many = parser.add_argument_group("many events")
    many.add_argument("--file", help="JSON-lines file, one event per line ('-': stdin)")
    many.add_argument("--batch-size", type=int, default=events.MAX_BATCH_EVENTS,
                      help=f"events per request (default and max {events.MAX_BATCH_EVENTS})")
    many.add_argument("--rt", action="store_true",
                      help="push each line as a real-time event (one request each)")
    many.add_argument("--print-ids", action="store_true", help="print every new event id")
    conn = parser.add_argument_group("connection")
    conn.add_argument("--url", default=None,
                      help="API server base URL (default: the local deployment, "
                           "http://127.0.0.1:8080)")
    conn.add_argument("--user", default=ADMIN_USER,
                      help="Airflow user (default admin); it needs the right to create DAG "
                           "runs of rtEventsProcessing / batchEventsProcessing")
    conn.add_argument("--token", help="a Bearer token instead of user and password")
    conn.add_argument("--idempotency-key",
                      help="Idempotency-Key; with --file, KEY-1, KEY-2, ... per request, so "
                           "re-running the same command pushes nothing twice")
    conn.add_argument("--profile", default=None, help="local deployment profile (default run)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.url is None:
        local = deployment(args.profile)
        args.url = f"http://127.0.0.1:{local.api_port}"
        # The local deployment allows its own push service: check events as it will.
        os.environ.setdefault(WEBPUSH_INSECURE_HOSTS, f"127.0.0.1:{local.webpush_port}")
    return _push(args)
