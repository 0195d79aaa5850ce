"""``mc webpush``: the keys and subscriptions of the Web Push channel.

``keys`` makes an application's VAPID key pair (RFC 8292) and prints what goes into the
``webpush_default`` connection (the private key and a contact) and the public key a web
page passes to ``pushManager.subscribe({applicationServerKey})``.

``subscription`` subscribes, as a browser would, to the local push service that
``make run`` starts on ``MC_WEBPUSH_PORT`` (default 8027): it prints the browser's
``PushSubscription`` JSON, to use as the ``pushSubscription`` of a push event; the
service decrypts what it receives into the deployment's ``webpush`` folder. Its host
must be listed in ``MC_WEBPUSH_INSECURE_HOSTS`` (plain http on loopback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mc_local.localenv import deployment
from mc_local.webpush_sink import DEFAULT_PORT, PORT_VARIABLE, create_subscription
from message_center.delivery.webpush import CONNECTION_ID, generate_vapid_keys
from message_center.net_guard import WEBPUSH_INSECURE_HOSTS

DEFAULT_SUBJECT = "mailto:admin@message-center.local"


def push_dir(profile: str | None = None) -> Path:
    """Where the deployment's local push service keeps subscriptions and messages (next
    to the mail folder: ``.mc/webpush``, ``.mc/webpush-<profile>``)."""
    mail = deployment(profile).mail_dir
    return mail.with_name(mail.name.replace("mail", "webpush", 1))


def service_url(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return f"http://127.0.0.1:{int(env.get(PORT_VARIABLE) or DEFAULT_PORT)}"


def _keys(args: argparse.Namespace) -> int:
    keys = generate_vapid_keys()
    subject = args.subject
    if not subject.lower().startswith(("mailto:", "https://")):
        print(f"error: --subject {subject!r} must be a mailto: address or an https: URL "
              "(RFC 8292)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"privateKey": keys.private_key, "publicKey": keys.public_key,
                          "subject": subject}, indent=2))
        return 0
    extra = json.dumps({"public_key": keys.public_key})
    print(f"""A new VAPID key pair for the {CONNECTION_ID} connection. Keep the private key secret.

  private key (connection password): {keys.private_key}
  subject     (connection login):    {subject}
  public key  (extra public_key, and the page's applicationServerKey):
                                     {keys.public_key}

In the browser:
  registration.pushManager.subscribe({{userVisibleOnly: true,
      applicationServerKey: "{keys.public_key}"}})

As an Airflow connection:
  airflow connections add {CONNECTION_ID} --conn-type generic \\
      --conn-login '{subject}' --conn-password '{keys.private_key}' \\
      --conn-extra '{extra}'

or in airflow_settings.yaml, the key read from the environment (never in the file):
    - conn_id: {CONNECTION_ID}
      conn_type: generic
      conn_description: Web Push channel - VAPID keys
      conn_login: {subject}
      conn_password: ${{MC_WEBPUSH_VAPID_PRIVATE_KEY}}
      conn_extra:
        public_key: {keys.public_key}""")
    return 0


def _subscription(args: argparse.Namespace) -> int:
    folder = Path(args.push_dir) if args.push_dir else push_dir(args.profile)
    url = args.url or service_url()
    try:
        subscription = create_subscription(folder, url, args.application_server_key)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(subscription, indent=2 if args.pretty else None))
    print(f"(the push service at {url} keeps what it receives in {folder}; "
          f"{WEBPUSH_INSECURE_HOSTS} must list {url.split('://', 1)[1]})", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = subparsers.add_parser(
        "webpush", help="Web Push: VAPID keys, subscriptions to the local push service.",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="webpush_command", required=True)

    parser = commands.add_parser(
        "keys", help="Make a VAPID key pair for the webpush_default connection.",
        description="Make a VAPID key pair (P-256) and print what goes into the "
                    "webpush_default connection and the page's applicationServerKey.")
    parser.add_argument("--subject", default=DEFAULT_SUBJECT,
                        help="the contact push services may write to (mailto: or https:; "
                             f"default {DEFAULT_SUBJECT})")
    parser.add_argument("--json", action="store_true",
                        help='print {"privateKey", "publicKey", "subject"} only')
    parser.set_defaults(handler=_keys)

    parser = commands.add_parser(
        "subscription", help="Subscribe to the local push service; print the "
                             "PushSubscription JSON.",
        description="Subscribe to the local push service as a browser would (a P-256 key "
                    "pair and an auth secret, the private half kept by the service) and "
                    "print the PushSubscription JSON for a push event's pushSubscription.")
    parser.add_argument("--profile", default=None, help="local deployment profile")
    parser.add_argument("--push-dir", default=None,
                        help="the push service's folder (default: the deployment's)")
    parser.add_argument("--url", default=None,
                        help=f"the push service's base URL (default http://127.0.0.1:"
                             f"${PORT_VARIABLE}, {DEFAULT_PORT})")
    parser.add_argument("--application-server-key", default=None,
                        help="only this VAPID public key may push to it (as browsers do)")
    parser.add_argument("--pretty", action="store_true", help="indented JSON")
    parser.set_defaults(handler=_subscription)
