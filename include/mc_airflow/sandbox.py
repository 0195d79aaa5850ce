"""Sandbox mode's configuration, read from the environment and Airflow Variables.

* ``MC_SANDBOX=1`` or the Variable ``mc_sandbox`` (``true``): this execution instance is in
  sandbox mode: every message it delivers goes to the sandbox transport (nothing leaves the
  machine) and every Message Center page shows a banner. The environment wins when set.
* ``MC_SANDBOX_USERS``: API users (names, comma or space separated) whose pushed events are
  sandbox events, on any instance (the flag is stored on the event at push time).
* ``MC_SANDBOX_RULES`` or the Variable ``mc_sandbox_rules``: failure answers by address
  pattern (JSON, see :mod:`message_center.delivery.sandbox`).

A bad value fails with the name of the setting at fault (a task fails before sending
anything; the push API refuses to start). The domain gets a
:class:`~message_center.delivery.sandbox.SandboxSettings`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from message_center.delivery.sandbox import SandboxSettings, parse_flag, parse_users

log = logging.getLogger(__name__)

SANDBOX_ENV = "MC_SANDBOX"
SANDBOX_USERS_ENV = "MC_SANDBOX_USERS"
SANDBOX_RULES_ENV = "MC_SANDBOX_RULES"
SANDBOX_VARIABLE = "mc_sandbox"
SANDBOX_RULES_VARIABLE = "mc_sandbox_rules"
#: How long the API server keeps what the Variable said (the banner).
CACHE_SECONDS = 30.0


def _variable_in_task(key: str) -> str | None:
    from airflow.sdk import Variable

    value = Variable.get(key, default=None)
    return None if value is None else str(value)


def settings(environ: Mapping[str, str] | None = None,
             variable: Any = _variable_in_task) -> SandboxSettings:
    """The sandbox settings of a task: the environment first, then the Variables
    (``variable(key)``: the Variable's text or None)."""
    env = os.environ if environ is None else environ
    where = {}
    instance: Any = env.get(SANDBOX_ENV)
    if instance is None or not instance.strip():
        instance = variable(SANDBOX_VARIABLE)
        where["instance"] = f"Airflow Variable {SANDBOX_VARIABLE}"
    rules: Any = env.get(SANDBOX_RULES_ENV)
    if rules is None or not rules.strip():
        rules = variable(SANDBOX_RULES_VARIABLE)
        where["rules"] = f"Airflow Variable {SANDBOX_RULES_VARIABLE}"
    return SandboxSettings.parse(instance=instance, users=env.get(SANDBOX_USERS_ENV),
                                 rules=rules, where=where)


def sandbox_users(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """``MC_SANDBOX_USERS``, read once by the push API when it starts."""
    env = os.environ if environ is None else environ
    return parse_users(env.get(SANDBOX_USERS_ENV), SANDBOX_USERS_ENV)


def user_name(user: Any) -> str | None:
    if user is None:
        return None
    if isinstance(user, str):
        return user
    getter = getattr(user, "get_name", None)
    name = getter() if callable(getter) else getattr(user, "username", None)
    return None if name is None else str(name)


def user_sandboxer(environ: Mapping[str, str] | None = None) -> Any:
    """``sandboxed(user)`` for the push APIs (``Authorization.sandboxed``), or None when
    ``MC_SANDBOX_USERS`` names nobody."""
    users = sandbox_users(environ)
    if not users:
        return None

    def sandboxed(user: Any) -> bool:
        return user_name(user) in users

    return sandboxed


def _variable_in_api_server(key: str) -> str | None:
    from airflow.models import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(Variable).filter(Variable.key == key).one_or_none()
        return None if row is None else str(row.val)


class InstanceFlag:
    """Is this instance in sandbox mode? For the API server's pages (the banner): the
    environment, else the Variable, read at most every :data:`CACHE_SECONDS`. A Variable
    that cannot be parsed shows the banner (the delivery fails on it anyway); one that
    cannot be read (no metadata database) does not."""

    def __init__(self, read: Any = _variable_in_api_server,
                 environ: Mapping[str, str] | None = None,
                 cache_seconds: float = CACHE_SECONDS) -> None:
        self._read, self._environ, self.cache_seconds = read, environ, cache_seconds
        self._lock = threading.Lock()
        self._known: tuple[float, bool] | None = None

    def __call__(self) -> bool:
        env = os.environ if self._environ is None else self._environ
        raw = env.get(SANDBOX_ENV)
        if raw is not None and raw.strip():
            try:
                return parse_flag(raw, SANDBOX_ENV)
            except ValueError:
                return True
        now = time.monotonic()
        with self._lock:
            if self._known is not None and self._known[0] > now:
                return self._known[1]
        try:
            raw_variable = self._read(SANDBOX_VARIABLE)
        except Exception:
            log.warning("cannot read the Variable %s", SANDBOX_VARIABLE, exc_info=True)
            raw_variable = None
        try:
            on = parse_flag(raw_variable, f"Variable {SANDBOX_VARIABLE}")
        except ValueError:
            on = True
        with self._lock:
            self._known = (now + self.cache_seconds, on)
        return on


instance_sandboxed = InstanceFlag()
