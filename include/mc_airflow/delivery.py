"""Airflow glue for processing: connections -> delivery settings, params -> settings.

The domain (:mod:`message_center.processing`, :mod:`message_center.delivery`) takes
plain dataclasses; this module turns Airflow connections (read through
:mod:`mc_airflow.connections`) into them. Each channel (:mod:`message_center.channel`)
names its connection and reads it:

* ``smtp_default`` (type ``smtp``, the e-mail channel): host, port, login, password;
  extras as the Airflow SMTP provider reads them: ``disable_ssl`` (default false:
  implicit TLS), ``disable_tls`` (default false: STARTTLS), ``from_email``, ``timeout``
  (opening the connection); the reply timeouts ``greeting_timeout``, ``mail_timeout``,
  ``rcpt_timeout``, ``data_init_timeout``, ``data_block_timeout``,
  ``data_termination_timeout`` and ``after_dot_timeout`` (``unknown`` | ``retry``): see
  ``docs/operations/relay-faults.md``. Required: a missing connection fails the task.
* ``sms_gateway`` (type ``http``, the SMS channel): schema (http/https), host, port,
  login/password (Basic auth; a password without login is sent as a Bearer token);
  extras ``path`` (default ``/messages``), ``sender``, ``timeout``, the gateway's limits
  ``max_concurrent`` and ``max_messages_per_second``. Optional: without it SMS messages
  are retried and eventually expire, e-mail is unaffected.

Quarantine rules come from the Airflow Variable ``mc_quarantine_rules`` (JSON, per
channel: ``{"email": {"soft_threshold": 3, "soft_window_days": 7,
"release_after_days": 30}, "<channel>": {...}}``; missing keys keep these defaults).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any

from sqlalchemy import Engine

from mc_airflow.connections import database_url, get_connection, require_connection
from mc_airflow.defaults import (
    BOUNCE_MAILBOX_CONN_ID,
    EXECUTION_CONN_ID,
    SMTP_CONN_ID,
)
from mc_airflow.sandbox import settings as sandbox_settings
from message_center import channel as channels
from message_center.db import engine_for
from message_center.delivery.bounce_mail import ImapSettings, imap_settings_from_connection
from message_center.delivery.channels import Channels
from message_center.delivery.quarantine import QuarantineRules
from message_center.delivery.smtp import SmtpSettings
from message_center.processing.settings import ProcessingSettings
from message_center.tracking import tokens as tracking_tokens

log = logging.getLogger(__name__)


def channel_settings(channel: str, conn_id: str | None = None) -> Any | None:
    """A channel's sender settings from its Airflow connection (``conn_id``: another
    connection than the channel's own); ``None`` when an optional connection does not
    exist (a required one fails the task: the claimed events wait for their lease)."""
    spec = channels.get(channel)
    conn_id = conn_id or spec.connection_id
    if conn_id is None:
        return None
    conn = require_connection(conn_id) if spec.connection_required else get_connection(conn_id)
    if conn is None:
        return None
    return spec.settings_from_connection({
        "host": conn.host, "port": conn.port, "login": conn.login, "password": conn.password,
        "schema": conn.schema, "extra": conn.extra_dejson or {}})


def _channel_of_connection(conn_id: str) -> str:
    for spec in channels.all_channels():
        if spec.connection_id == conn_id:
            return spec.name
    raise ValueError(f"no channel uses the connection {conn_id}")


def smtp_settings(conn_id: str = SMTP_CONN_ID) -> SmtpSettings:
    """Settings from an SMTP connection (the e-mail channel's by default)."""
    settings = channel_settings(_channel_of_connection(SMTP_CONN_ID), conn_id)
    assert settings is not None
    return settings


def sms_settings(conn_id: str = "sms_gateway") -> Any | None:
    """Settings from an SMS gateway connection, or ``None`` when it does not exist."""
    return channel_settings(_channel_of_connection("sms_gateway"), conn_id)


def bounce_mailbox_settings(conn_id: str = BOUNCE_MAILBOX_CONN_ID) -> ImapSettings | None:
    """The bounce mailbox from its ``imap`` connection (host, port, login, password;
    extras ``use_ssl`` (default true), ``starttls``, ``folder`` (INBOX),
    ``delete_processed`` (false), ``timeout``), or ``None`` when it does not exist."""
    conn = get_connection(conn_id)
    if conn is None:
        return None
    try:
        return imap_settings_from_connection({
            "host": conn.host, "port": conn.port, "login": conn.login,
            "password": conn.password, "extra": conn.extra_dejson or {}})
    except ValueError as exc:
        raise ValueError(f"Airflow connection {conn_id}: {exc}") from None


def execution_engine() -> Engine:
    """The pooled engine of this deployment's execution database."""
    return engine_for(database_url(EXECUTION_CONN_ID))


TRACKING_CONN_ID = "mc_tracking"


def configure_tracking() -> None:
    """The tracking keys and base URL from the ``mc_tracking`` connection when there is
    one (password: the keys, comma-separated, newest first; host: the public base URL,
    e.g. ``https://t.shop.example``); else the environment (``MC_TRACKING_KEYS``,
    ``MC_TRACKING_BASE_URL``) is read when a tracked message is rendered."""
    conn = get_connection(TRACKING_CONN_ID)
    if conn is None or not conn.password:
        tracking_tokens.configure(None)
        return
    base = (conn.host or "").strip().rstrip("/")
    if base and not base.startswith(("http://", "https://")):
        base = f"https://{base}"
    tracking_tokens.configure(tracking_tokens.TrackingConfig(
        base or tracking_tokens.base_url_from_env(),
        tracking_tokens.Signer(tracking_tokens.keys_from_text(conn.password))))


def open_channels(kind: str) -> Channels:
    """The senders of one shard, configured from the Airflow connections, and sandbox
    mode (``MC_SANDBOX`` / Variable ``mc_sandbox``, :mod:`mc_airflow.sandbox`): on an
    instance in sandbox mode no provider connection is read or needed."""
    configure_tracking()
    sandbox = sandbox_settings()
    if sandbox.instance:
        log.info("sandbox mode: nothing is delivered, every message goes to the sandbox "
                 "transport")
        return Channels({}, kind=kind, sandbox=sandbox)
    return Channels({spec.name: channel_settings(spec.name)
                     for spec in channels.all_channels()}, kind=kind, sandbox=sandbox)


def reconcile_channels(kind: str) -> Channels:
    """What the crash recovery asks about messages a dead worker was sending: the
    providers that can be asked (e.g. the SMS gateway; no SMTP connection needed: e-mail
    cannot be asked)."""
    return Channels({name: channel_settings(name) for name in channels.reconciling()},
                    kind=kind)


QUARANTINE_RULES_VARIABLE = "mc_quarantine_rules"


def quarantine_rules() -> QuarantineRules:
    """The rules from the ``mc_quarantine_rules`` Variable (defaults when it is not set;
    a bad value fails the task with the Variable's name and the key at fault)."""
    from airflow.sdk import Variable

    raw = Variable.get(QUARANTINE_RULES_VARIABLE, default=None)
    return QuarantineRules.from_mapping(
        raw, where=f"Airflow Variable {QUARANTINE_RULES_VARIABLE}")


def processing_settings(params: Mapping[str, Any], **defaults: Any) -> ProcessingSettings:
    """Validated settings from a run's params (a bad value fails with its name), with
    the quarantine rules of :func:`quarantine_rules`. The sending timeout covers the
    relays' own timeouts (:meth:`ProcessingSettings.covering`: the DAG's default is a
    floor) unless the run's conf sets it: an explicit value is used as given, with a
    warning when a message may still be waiting for its relay after it."""
    defaults.setdefault("quarantine", quarantine_rules())
    settings = ProcessingSettings.from_mapping(params, **defaults)
    covered = settings.covering(relay_transaction_seconds())
    if "sending_timeout_seconds" not in _run_conf():
        return covered
    if covered.sending_timeout_seconds > settings.sending_timeout_seconds:
        log.warning("sending_timeout_seconds=%d is set by this run, below the %d s the "
                    "relays' timeouts need: a message still waiting for its relay's reply "
                    "may be called unknown by the crash recovery",
                    settings.sending_timeout_seconds, covered.sending_timeout_seconds)
    return settings


def _run_conf() -> Mapping[str, Any]:
    """The running DAG run's conf (empty outside a task)."""
    try:
        from airflow.sdk import get_current_context

        return get_current_context()["dag_run"].conf or {}
    except Exception:
        return {}


def relay_transaction_seconds() -> float:
    """The longest one message may take at a relay, from the connections' timeouts (the
    RFC 5321 defaults when ``smtp_default`` is missing: the recovery errs long)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    longest = 0.0
    for spec in channels.all_channels():
        try:
            settings = channel_settings(spec.name)
        except AirflowNotFoundException:
            settings = None
        longest = max(longest, spec.transaction_seconds(settings))
    return longest


class StopSignal:
    """``should_stop`` for the processing loops, installed in the task process.

    Airflow 3's task runner only calls ``on_kill()`` on SIGTERM (the supervisor SIGKILLs
    later), and a task process whose supervisor died keeps running on its own. A
    real-time shard loops for an hour, so it must notice both and stop cleanly: SIGTERM
    (task marked failed/success, run stopped, worker shutting down) sets a flag, and a
    changed parent pid means the supervisor is gone. Either way the shard finishes the
    message in hand, records it and gives its other events back to the queue.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._parent = os.getppid()
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()
        if callable(self._previous):
            self._previous(signum, frame)

    def __call__(self) -> bool:
        return self._stop.is_set() or os.getppid() != self._parent

    def __enter__(self) -> StopSignal:
        return self

    def __exit__(self, *exc: object) -> None:
        """Put the previous SIGTERM handler back (``dag.test()`` runs tasks in-process)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def copy_event_statuses(params: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Copy final delivery outcomes onto the events (the updateEventStatus step); returns
    the count per status copied (three numbers: a small XCom)."""
    from message_center.status_sync import sync_event_statuses

    options: dict[str, Any] = {}
    if params and "batch_size" in params:
        options["batch_size"] = int(params["batch_size"])
    if params and "overlap_seconds" in params:
        options["overlap_seconds"] = float(params["overlap_seconds"])
    stats = sync_event_statuses(execution_engine(), **options)
    print(f"copied {stats.copied} in {stats.batches} batch(es), "
          f"watermark now {stats.scanned_until}")
    return stats.copied
