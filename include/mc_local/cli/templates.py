"""``mc templates``: validate, preview, proof and publish the message templates.

Works on the template files of the repository (``include/message_templates``) without
Airflow running: validation and previews are local, proofs go through the
``smtp_default`` connection, ``publish`` writes the local deployment's databases.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from mc_airflow.defaults import SMTP_CONN_ID, templates_dir
from mc_local.localenv import STATE_DIR, deployment
from message_center import templates as tpl
from message_center.delivery.smtp import SmtpSettings, smtp_settings_from_connection


def _directory(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else templates_dir()


def _load(args: argparse.Namespace) -> tpl.TemplateSet:
    return tpl.load_templates(_directory(args))


def _print_problems(template_set: tpl.TemplateSet) -> None:
    for problem in template_set.problems:
        print(problem, file=sys.stderr)
    count = len(template_set.problems)
    where = tpl.display_path(template_set.directory)
    print(f"{count} problem{'s' if count != 1 else ''} in {where}", file=sys.stderr)


def _one(args: argparse.Namespace) -> tuple[tpl.MessageTemplate, list[tpl.Seed]] | None:
    """The template named on the command line, its selected seeds; None after an error."""
    template_set = _load(args)
    if not template_set.ok:
        _print_problems(template_set)
        return None
    try:
        template = template_set.find(args.name)
        seeds = ([tpl.pick_seed(template, which) for which in args.seed] if args.seed
                 else list(template.seeds))
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return None
    return template, seeds


def _validate(args: argparse.Namespace) -> int:
    template_set = _load(args)
    if not template_set.ok:
        _print_problems(template_set)
        return 1
    for template in template_set.templates:
        print(f"ok  {tpl.display_path(template.path)}: {template.internal_name} "
              f"({template.event_type}, {template.channel}), "
              f"{len(template.seeds)} seed(s) rendered")
    print(f"{len(template_set.templates)} templates valid")
    return 0


def _preview(args: argparse.Namespace) -> int:
    chosen = _one(args)
    if chosen is None:
        return 1
    template, seeds = chosen
    out_dir = Path(args.out) if args.out else STATE_DIR / "previews" / template.internal_name
    for seed in seeds:
        for path in tpl.write_preview(template, seed, out_dir):
            print(path)
    return 0


def _proof(args: argparse.Namespace) -> int:
    chosen = _one(args)
    if chosen is None:
        return 1
    template, seeds = chosen
    try:
        settings = smtp_settings(args)
        results = tpl.send_proofs(template, settings, seeds, recipients=args.to or None)
    except (ValueError, OSError) as exc:
        print(f"error: proof not sent: {exc}", file=sys.stderr)
        return 1
    for result in results:
        if result.sent:
            print(f"proof of {template.internal_name} (seed {result.seed}) sent to "
                  f"{result.address} via {settings.host}:{settings.port}")
        else:
            print(f"error: proof of {template.internal_name} (seed {result.seed}) to "
                  f"{result.address} not sent ({result.outcome.status}): "
                  f"{result.outcome.error}", file=sys.stderr)
    return 0 if all(result.sent for result in results) else 1


def _publish(args: argparse.Namespace) -> int:
    target = deployment(args.profile)
    urls = {role: target.database_url(role) for role in ("execution", "execution2")}
    try:
        report = tpl.publish_repository(
            target.database_url("control"), urls,
            directory=_directory(args),
            only_changed=False, names=args.names, unpublish_names=args.unpublish or (),
            audited_by=f"{getpass.getuser()} (mc templates publish)")
    except tpl.TemplateValidationError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"control: {report.plan.summary()}")
    for role, result in report.results.items():
        print(f"{target.database(role)}: {result.summary()}")
    for role, error in report.errors.items():
        print(f"error: {target.database(role)} not published: {error}", file=sys.stderr)
    return 1 if report.errors else 0


def smtp_settings(args: argparse.Namespace) -> SmtpSettings:
    """``--smtp-host``/``--smtp-port``, else the ``smtp_default`` connection: from
    ``AIRFLOW_CONN_SMTP_DEFAULT`` or, failing that, the local deployment's Airflow."""
    if args.smtp_host:
        return SmtpSettings(host=args.smtp_host, port=args.smtp_port or 25)
    raw = os.environ.get("AIRFLOW_CONN_SMTP_DEFAULT")
    conn = _parse_connection(raw) if raw else _airflow_connection(SMTP_CONN_ID, args.profile)
    settings = smtp_settings_from_connection(conn)
    return replace(settings, port=args.smtp_port) if args.smtp_port else settings


def _parse_connection(raw: str) -> dict[str, Any]:
    raw = raw.strip()
    if raw.startswith("{"):
        return dict(json.loads(raw))
    parts = urlsplit(raw)
    query = dict(parse_qsl(parts.query))
    extra = json.loads(query.pop("__extra__")) if "__extra__" in query else query
    return {"host": parts.hostname, "port": parts.port,
            "login": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None, "extra": extra}


def _airflow_connection(conn_id: str, profile: str | None) -> dict[str, Any]:
    env = {**os.environ, **deployment(profile).environment()}
    binary = Path(sys.executable).parent / "airflow"
    completed = subprocess.run([str(binary), "connections", "get", conn_id, "-o", "json"],
                               env=env, capture_output=True, text=True, timeout=120)
    if completed.returncode != 0:
        raise ValueError(f"cannot read the {conn_id} connection (run `mc setup` first, or give "
                         f"--smtp-host): {completed.stderr.strip()[-300:]}")
    rows = json.loads(completed.stdout[completed.stdout.index("["):])
    conn = dict(rows[0])
    conn["extra"] = conn.pop("extra_dejson", None) or {}
    return conn


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    help_text = "Validate, preview, proof and publish the message templates."
    parser = subparsers.add_parser("templates", help=help_text, description=help_text)
    commands = parser.add_subparsers(dest="templates_command", required=True)

    def add(name: str, handler: object, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--dir", help="template folder (default: include/message_templates)")
        sub.set_defaults(handler=handler)
        return sub

    add("validate", _validate, "Check every template file: syntax, required fields, "
        "duplicates, and a render of every seed. Exit status 1 on any problem.")

    def add_one(name: str, handler: object, text: str) -> argparse.ArgumentParser:
        sub = add(name, handler, text)
        sub.add_argument("name", help="internal name or file name of the template")
        sub.add_argument("--seed", action="append",
                         help="seed address or 0-based position (repeatable; default: all)")
        return sub

    sub = add_one("preview", _preview, "Render a template with its seed contexts to HTML, "
                  "text and .eml files (SMS: the text and its length).")
    sub.add_argument("--out", help="output folder (default: .mc/previews/<internal name>)")
    sub = add_one("proof", _proof, "Send the rendered template to its seed addresses "
                  "through smtp_default (subject prefixed with [Proof n/m]).")
    sub.add_argument("--to", action="append",
                     help="send to this address instead of the seeds (repeatable; "
                          "required for SMS templates)")
    sub.add_argument("--smtp-host", help="SMTP server instead of the smtp_default connection")
    sub.add_argument("--smtp-port", type=int, help="SMTP port")
    sub.add_argument("--profile", default=None, help="local deployment for smtp_default")
    sub = add("publish", _publish, "Publish to the local deployment without Airflow: store "
              "new versions on its control database and publish to both execution databases. "
              "In production use the mcPublishTemplates DAG.")
    sub.add_argument("names", nargs="*", help="internal names to publish (default: all)")
    sub.add_argument("--unpublish", action="append", metavar="NAME",
                     help="internal name to unpublish (repeatable)")
    sub.add_argument("--profile", default=None, help="deployment profile (default: run)")
