"""The execution instances a control deployment shows, and their Airflow connections.

An instance is this deployment's own execution database (connection ``mc_execution``,
processed by this Airflow's DAGs) plus every account of the registry
(``dags/execution_accounts.yaml``), each through its Airflow connection. In the demo the
first account *is* ``mc_execution``: instances are keyed by connection id, so it is
listed once.

Connections are read in the API server through :mod:`mc_airflow.connections`
(environment variables, secrets backends, metadata DB) and kept for
:data:`CONNECTION_TTL_SECONDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mc_airflow.connections import ConnectionCache
from mc_airflow.defaults import (
    ACCOUNT_REGISTRY,
    CONTROL_CONN_ID,
    EXECUTION_CONN_ID,
    SMTP_CONN_ID,
)
from message_center.db import with_connect_timeout
from message_center.registry import ExecutionAccount, Registry, load_registry, registry_path

__all__ = ["CONTROL_CONN_ID", "EXECUTION_CONN_ID", "SMTP_CONN_ID"]
CONNECTION_TTL_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 3


@dataclass(frozen=True)
class ExecutionInstance:
    conn_id: str
    label: str
    account: ExecutionAccount | None
    local: bool

    @property
    def key(self) -> str:
        return self.conn_id

    @property
    def cell_id(self) -> int | None:
        return self.account.cell_id if self.account else None

    @property
    def name(self) -> str:
        return self.account.name if self.account else self.conn_id


def execution_instances(registry: Registry | None = None) -> list[ExecutionInstance]:
    """``mc_execution`` (when no account uses it) and every account, in registry order."""
    registry = registry if registry is not None else load_registry(account_registry())
    instances = [ExecutionInstance(conn_id=a.conn_id, label=a.label, account=a,
                                   local=a.conn_id == EXECUTION_CONN_ID)
                 for a in registry.accounts]
    if not any(i.conn_id == EXECUTION_CONN_ID for i in instances):
        instances.insert(0, ExecutionInstance(conn_id=EXECUTION_CONN_ID,
                                              label="This deployment (mc_execution)",
                                              account=None, local=True))
    return instances


def account_registry() -> Path:
    """The registry file this deployment uses (``MC_ACCOUNT_REGISTRY`` or the default)."""
    return registry_path(ACCOUNT_REGISTRY)


CONNECTIONS = ConnectionCache(CONNECTION_TTL_SECONDS)


def connection_url(conn_id: str, *, connect_timeout: bool = True) -> str | None:
    """The postgres URL of an Airflow connection (None when it is not defined)."""
    url = CONNECTIONS.url(conn_id)
    if url is None:
        return None
    return with_connect_timeout(url, CONNECT_TIMEOUT_SECONDS) if connect_timeout else url


def default_sender() -> str | None:
    """``smtp_default``'s ``from_email``: the sender of templates that name none."""
    conn = CONNECTIONS.get(SMTP_CONN_ID)
    if conn is None:
        return None
    extra = getattr(conn, "extra_dejson", None) or {}
    value = extra.get("from_email")
    return str(value) if value else None
