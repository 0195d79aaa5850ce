"""What a Message Center user may do, asked of Airflow's own auth manager.

Every page and action of the Message Center UI (and, later, every endpoint of the push
API) checks its rights here, so there is one place that maps Message Center actions to
Airflow permissions, whichever auth manager the deployment uses (simple, FAB, Keycloak,
AWS ...):

| Message Center action | Airflow permission asked |
| --- | --- |
| read overview, reports, event lookup | read an execution DAG (:data:`EXECUTION_DAG_IDS`) |
| test an account's connection | read that Airflow connection |
| register an account ("Create the archiving workflow") | create connections, edit DAGs |
| enable / disable an account | edit its `mcSynch_<name>` DAG |

With the simple auth manager that gives: `viewer` reads everything and changes nothing,
`user` may also enable/disable archiving, `op` and `admin` may test and register accounts.

Airflow is imported inside the functions: plugin modules are imported by every Airflow
process (task runners too), which never call these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

EXECUTION_DAG_IDS = ("rtEventsProcessing", "batchEventsProcessing", "updateEventStatus")
ARCHIVING_DAG_PREFIX = "mcSynch_"


def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def can_read(user: Any, dag_ids: Iterable[str] = EXECUTION_DAG_IDS) -> bool:
    """Read the Message Center: read access to at least one execution DAG."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    manager = _auth_manager()
    return any(manager.is_authorized_dag(method="GET", user=user, details=DagDetails(id=dag_id))
               for dag_id in dag_ids)


def can_test_connection(user: Any, conn_id: str | None = None) -> bool:
    """Test an execution account: the test uses the connection's credentials."""
    from airflow.api_fastapi.auth.managers.models.resource_details import ConnectionDetails

    return bool(_auth_manager().is_authorized_connection(
        method="GET", user=user, details=ConnectionDetails(conn_id=conn_id)))


def can_register_account(user: Any, conn_id: str | None = None,
                         dag_id: str | None = None) -> bool:
    """Register an account: it creates an Airflow connection and an archiving DAG."""
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        ConnectionDetails,
        DagDetails,
    )

    manager = _auth_manager()
    return bool(
        manager.is_authorized_connection(method="POST", user=user,
                                         details=ConnectionDetails(conn_id=conn_id))
        and manager.is_authorized_dag(method="PUT", user=user, details=DagDetails(id=dag_id)))


def can_change_account(user: Any, dag_id: str | None = None) -> bool:
    """Enable or disable an account: it schedules or stops its archiving DAG."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return bool(_auth_manager().is_authorized_dag(method="PUT", user=user,
                                                  details=DagDetails(id=dag_id)))


@dataclass(frozen=True)
class Capabilities:
    """What the current user may do, for pages that hide the buttons they may not use."""

    read: bool
    test_connections: bool
    register_accounts: bool
    change_accounts: bool

    @property
    def changes_anything(self) -> bool:
        return self.test_connections or self.register_accounts or self.change_accounts

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


def capabilities(user: Any) -> Capabilities:
    """The user's rights in general (a page then asks per account when it acts)."""
    return Capabilities(
        read=can_read(user),
        test_connections=can_test_connection(user),
        register_accounts=can_register_account(user),
        change_accounts=can_change_account(user),
    )


def user_name(user: Any) -> str:
    getter = getattr(user, "get_name", None)
    return str(getter() if callable(getter) else getattr(user, "username", "?"))
