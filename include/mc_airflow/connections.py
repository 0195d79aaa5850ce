"""Reading Airflow connections: the one place the project does it.

Two kinds of process read them, and Airflow resolves them differently in each:

* a **task** asks the Task SDK, which asks the worker's supervisor (a task never reaches the
  metadata database; ``AIRFLOW_CONN_*`` and secrets backends still come first);
* the **API server** (pages, push APIs) and ``python -m mc_airflow.connection_admin`` ask
  Airflow's server-side lookup, like ``airflow connections get``: ``AIRFLOW_CONN_*``,
  secrets backends, then the metadata database.

:func:`get_connection` picks the lookup of the process it runs in (Airflow's own test: the
task runner's ``SUPERVISOR_COMMS``). Pages and push requests read connections on every
request, so they go through a :class:`ConnectionCache` (a few seconds to a minute old).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any


def _in_task() -> bool:
    """Whether this is a task process (or ``dag.test()``): Airflow's own check."""
    return hasattr(sys.modules.get("airflow.sdk.execution_time.task_runner"),
                   "SUPERVISOR_COMMS")


def get_connection(conn_id: str) -> Any | None:
    """The Airflow connection ``conn_id`` as this process resolves it; None when it is not
    defined."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        if _in_task():
            from airflow.sdk import BaseHook

            return BaseHook.get_connection(conn_id)
        from airflow.models.connection import Connection

        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None


def require_connection(conn_id: str) -> Any:
    """The connection; a missing one raises ``AirflowNotFoundException`` naming it (a task
    that cannot work without it fails, and says why)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn = get_connection(conn_id)
    if conn is None:
        raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined")
    return conn


def database_url(conn_id: str) -> str:
    """The SQLAlchemy URL of a postgres connection (secrets stay in the connection)."""
    conn = require_connection(conn_id)
    if conn.conn_type not in ("postgres", "postgresql"):
        raise ValueError(f"connection {conn_id!r} is of type {conn.conn_type!r}, not postgres")
    return str(conn.get_uri())


class ConnectionCache:
    """Connections read at most once per ``ttl`` seconds each (a missing one too), for the
    API server, where every page and push request needs one. One lookup at a time per
    connection: a burst of requests after expiry reads it once. ``remember_missing=False``
    reads a missing connection again at each call (it may be created any moment)."""

    def __init__(self, ttl: float, *, remember_missing: bool = True) -> None:
        self.ttl, self.remember_missing = ttl, remember_missing
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, tuple[Any | None, float]] = {}

    def _fresh(self, conn_id: str) -> tuple[Any | None, float] | None:
        entry = self._entries.get(conn_id)
        if entry is not None and time.monotonic() - entry[1] < self.ttl:
            return entry
        return None

    def get(self, conn_id: str) -> Any | None:
        """The connection, or None when it does not exist."""
        entry = self._fresh(conn_id)
        if entry is not None:
            return entry[0]
        with self._lock:
            lock = self._locks.setdefault(conn_id, threading.Lock())
        with lock:
            entry = self._fresh(conn_id)
            if entry is not None:
                return entry[0]
            conn = get_connection(conn_id)
            if conn is not None or self.remember_missing:
                self._entries[conn_id] = (conn, time.monotonic())
            return conn

    def url(self, conn_id: str) -> str | None:
        """The connection's URI (``get_uri()``), or None when it does not exist."""
        conn = self.get(conn_id)
        return None if conn is None else str(conn.get_uri())

    def forget(self, conn_id: str | None = None) -> None:
        """Read ``conn_id`` (every connection when None) afresh next time: after a change."""
        with self._lock:
            if conn_id is None:
                self._entries.clear()
            else:
                self._entries.pop(conn_id, None)
