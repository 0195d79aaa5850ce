"""Who may do what in the Message Center: every endpoint and page asks Airflow's auth manager
here, so the rules are the deployment's own whatever auth manager it runs (simple, FAB,
Keycloak, AWS, ...). No separate user store, no Message Center role.

| Message Center action | Airflow permission asked (= the equivalent Airflow action) |
| --- | --- |
| push real-time (batch) events | create DAG runs of rtEventsProcessing (batchEventsProcessing) |
| read events of a queue, reports | read DAG runs of that queue's DAG |
| test an account's connection | create connections (Airflow's *Test connection*) |
| register an execution account | create connections, edit DAGs (its `mcSynch_<name>`) |
| enable / disable an account | edit its `mcSynch_<name>` DAG (pause / unpause) |
| publish / unpublish templates | create DAG runs of mcPublishTemplates |
| read the quarantine | read DAG runs of a queue's DAG (like reading events) |
| quarantine / release an address | edit the DAGs rtEventsProcessing and batchEventsProcessing |
| read webhook subscriptions | read DAG runs of a queue's DAG (like reading events) |
| manage webhooks (create, change, test, replay) | edit both processing DAGs (as above) |
| bulk actions (dry run, cancel, retry, replay), the audit trail | edit both processing DAGs |
| health | a valid token (or nothing with `MC_HEALTH_PUBLIC=true`) |

Simple auth manager: `viewer` reads, `user` also pushes, enables/disables archiving,
publishes and quarantines / releases addresses, `op` and `admin` also test and register
accounts.

Why editing the processing DAGs for the quarantine: a quarantine changes what the delivery
does for every later event of an address (like pausing the DAG changes what it does),
and it is not the right to push: an application account that may only push (create DAG
runs) cannot release an address a bounce put in quarantine.

Why DAG permissions rather than a Message Center resource (``is_authorized_custom_view``):
every auth manager implements DAG permissions and administrators already grant them per DAG
(FAB roles, Keycloak policies, AWS Verified Permissions), whereas custom resources are
interpreted differently by each one -- the simple auth manager grants every custom
resource, for every method, to every role including ``viewer``, which would let read-only
users push again. "May trigger the DAG that sends the mail" is the rule Airflow itself
applies to ``POST /api/v2/dags/rtEventsProcessing/dagRuns``.

Three ways to use it, all raising or returning the same decisions:

- FastAPI dependencies: ``Depends(require_push("rt"))``, ``require_read()``,
  ``require_accounts_admin()``, ``require_account_change(name)``,
  ``require_templates_publish()``, ``require(action, *permissions)``; each resolves the
  user with :func:`authenticated_user` (401: no, bad or expired token) and answers 403
  :class:`Forbidden` naming the missing permission; it returns the user (``require_read``
  an :class:`EventReadAccess`).
- Checks for code that already has the user: ``check(user, action, *permissions)`` and
  ``check_push(user, kind)`` raise :class:`Forbidden`; ``may_push``, ``may_read``,
  ``readable_kinds``, ``capabilities`` answer booleans (pages hide buttons with them).
- :data:`PUSH_API_AUTHORIZATION`: what the push APIs take (``message_center.api.
  Authorization``: the JSON push API, ACC's SOAP API, the Campaign REST API), so the domain
  never imports Airflow.

:class:`AirflowSessions` authenticates ACC's SOAP clients (``xtk:session#Logon``,
``login/password`` session tokens) as Airflow users with Airflow's own ``POST /auth/token``.

Plugin modules are imported by every Airflow process, task runners included: Airflow's API
server modules are imported on the first check, not here.
"""

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, OAuth2PasswordBearer
from starlette.concurrency import run_in_threadpool

from message_center import dag_ids
from message_center.api.app import Authorization
from message_center.api.sessions import SessionRefused

Method = Literal["GET", "POST", "PUT", "DELETE"]

QUEUE_DAGS: dict[str, str] = dag_ids.PROCESSING
"""The DAG whose run rights govern pushing events into (reading events of) each queue."""
KIND_LABELS = {"rt": "real-time events", "batch": "batch events"}
PUBLISH_DAG = dag_ids.PUBLISH_TEMPLATES

_VERBS = {"GET": "read", "POST": "create", "PUT": "edit", "DELETE": "delete"}


@dataclass(frozen=True)
class Permission:
    """One question to the auth manager: ``method`` on a DAG (its runs when ``runs``) or on
    a connection; ``name`` is the DAG or connection id (``None``: any)."""

    resource: Literal["dag", "connection"]
    method: Method
    name: str | None = None
    runs: bool = False

    def __str__(self) -> str:
        verb = _VERBS[self.method]
        if self.resource == "connection":
            return f"{verb} connections" + (f" ({self.name})" if self.name else "")
        if self.runs:
            return f"{verb} DAG runs of {self.name or 'every DAG'}"
        return f"{verb} the DAG {self.name}" if self.name else f"{verb} DAGs"


def dag_runs(dag_id: str, method: Method) -> Permission:
    return Permission("dag", method, dag_id, runs=True)


def push_permission(kind: str) -> Permission:
    """Pushing into ``kind``'s queue = triggering the DAG that processes it."""
    return dag_runs(QUEUE_DAGS[kind], "POST")


def read_permission(kind: str) -> Permission:
    return dag_runs(QUEUE_DAGS[kind], "GET")


def account_dag(name: str | None) -> str | None:
    return dag_ids.archiving(name) if name else None


def register_account_permissions(name: str | None = None,
                                 conn_id: str | None = None) -> tuple[Permission, ...]:
    """Registering an account creates an Airflow connection and an archiving DAG."""
    return (Permission("connection", "POST", conn_id), Permission("dag", "PUT", account_dag(name)))


def change_account_permission(name: str | None = None) -> Permission:
    """Enabling / disabling an account schedules or stops its archiving DAG."""
    return Permission("dag", "PUT", account_dag(name))


def connection_test_permission(conn_id: str | None = None) -> Permission:
    """Airflow's own *Test connection* (``POST /api/v2/connections/test``) asks this."""
    return Permission("connection", "POST", conn_id)


def publish_permission() -> Permission:
    return dag_runs(PUBLISH_DAG, "POST")


def quarantine_change_permissions() -> tuple[Permission, ...]:
    """Quarantining or releasing an address changes the delivery of both queues."""
    return tuple(Permission("dag", "PUT", dag_id) for dag_id in QUEUE_DAGS.values())


CHANGING_QUARANTINE = "quarantining or releasing an address"


def check_quarantine_change(user: Any) -> None:
    check(user, CHANGING_QUARANTINE, *quarantine_change_permissions())


# --- asking the auth manager -------------------------------------------------------------
def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


_TEAMS_TTL = 60.0
_teams: dict[str, tuple[str | None, float]] = {}


def _dag_team(dag_id: str | None) -> str | None:
    """The DAG's team in multi-team deployments (as Airflow's own checks pass it)."""
    if dag_id is None:
        return None
    from airflow.configuration import conf

    if not conf.getboolean("core", "multi_team", fallback=False):
        return None
    cached = _teams.get(dag_id)
    if cached is not None and time.monotonic() - cached[1] < _TEAMS_TTL:
        return cached[0]
    from airflow.models.dag import DagModel

    team = DagModel.get_team_name(dag_id)
    _teams[dag_id] = (team, time.monotonic())
    return team


def is_allowed(user: Any, permission: Permission) -> bool:
    """The auth manager's answer (may do I/O with FAB or Keycloak: call it off the loop)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        ConnectionDetails,
        DagAccessEntity,
        DagDetails,
    )

    manager = _auth_manager()
    if permission.resource == "connection":
        return bool(manager.is_authorized_connection(
            method=permission.method, user=user,
            details=ConnectionDetails(conn_id=permission.name)))
    return bool(manager.is_authorized_dag(
        method=permission.method, user=user,
        access_entity=DagAccessEntity.RUN if permission.runs else None,
        details=DagDetails(id=permission.name, team_name=_dag_team(permission.name))))


def missing(user: Any, permissions: Iterable[Permission]) -> list[Permission]:
    return [permission for permission in permissions if not is_allowed(user, permission)]


def user_name(user: Any) -> str:
    getter = getattr(user, "get_name", None)
    return str(getter() if callable(getter) else getattr(user, "username", "?"))


class Forbidden(HTTPException):
    """403 whose detail names the action and the Airflow permission it lacks."""

    def __init__(self, user: Any, action: str, lacking: list[Permission]) -> None:
        self.user, self.action, self.lacking = user, action, lacking
        needs = " and ".join(f"the permission to {permission}" for permission in lacking)
        super().__init__(403, f"Forbidden: {action} needs {needs} in Airflow; user "
                              f"{user_name(user)!r} does not have it")


def check(user: Any, action: str, *permissions: Permission) -> None:
    """Raise :class:`Forbidden` unless ``user`` has every permission (``action`` words the
    refusal, e.g. "pushing real-time events")."""
    lacking = missing(user, permissions)
    if lacking:
        raise Forbidden(user, action, lacking)


def pushing(kind: str) -> str:
    """The action words of a push refusal: "pushing real-time events"."""
    return f"pushing {KIND_LABELS[kind]}"


def check_push(user: Any, kind: str) -> None:
    """Raise :class:`Forbidden` unless ``user`` may push events into ``kind``'s queue (what
    :func:`require_push` checks, for a user already known: ACC's SOAP envelope names it)."""
    check(user, pushing(kind), push_permission(kind))


def may_push(user: Any, kind: str) -> bool:
    return is_allowed(user, push_permission(kind))


def may_read(user: Any, kind: str) -> bool:
    return is_allowed(user, read_permission(kind))


def readable_kinds(user: Any) -> frozenset[str]:
    """The queues whose events (and reports) ``user`` may read."""
    return frozenset(kind for kind in QUEUE_DAGS if may_read(user, kind))


def check_register_account(user: Any, name: str | None = None,
                           conn_id: str | None = None) -> None:
    check(user, "registering an execution account",
          *register_account_permissions(name, conn_id))


def check_change_account(user: Any, name: str | None = None) -> None:
    check(user, "enabling or disabling an execution account", change_account_permission(name))


def check_test_connection(user: Any, conn_id: str | None = None) -> None:
    check(user, "testing an execution account's connection", connection_test_permission(conn_id))


@dataclass(frozen=True)
class Capabilities:
    """What a user may do, for pages that only show the buttons they may use (the server
    still checks every action)."""

    push: frozenset[str]
    read: frozenset[str]
    test_connections: bool
    register_accounts: bool
    change_accounts: bool
    publish_templates: bool
    change_quarantine: bool = False
    manage_webhooks: bool = False
    bulk_actions: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {key: sorted(value) if isinstance(value, frozenset) else value
                for key, value in asdict(self).items()}


def capabilities(user: Any) -> Capabilities:
    return Capabilities(
        push=frozenset(kind for kind in QUEUE_DAGS if may_push(user, kind)),
        read=readable_kinds(user),
        test_connections=is_allowed(user, connection_test_permission()),
        register_accounts=not missing(user, register_account_permissions()),
        change_accounts=is_allowed(user, change_account_permission()),
        publish_templates=is_allowed(user, publish_permission()),
        change_quarantine=not missing(user, quarantine_change_permissions()),
        manage_webhooks=not missing(user, quarantine_change_permissions()),
        bulk_actions=not missing(user, quarantine_change_permissions()),
    )


# --- FastAPI dependencies ----------------------------------------------------------------
# The same schemes Airflow's get_user declares, so /docs offers the same login form.
_oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)
_bearer_scheme = HTTPBearer(auto_error=False)


async def authenticated_user(
    request: Request,
    oauth_token: str | None = Depends(_oauth2_scheme),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer_scheme),
) -> Any:
    """Airflow's user for this request (Bearer token, or the UI's session cookie).

    No token, a bad one or an expired one is a 401 (Airflow's ``get_user`` answers 403 for
    a malformed token; a client must log in again either way).
    """
    from airflow.api_fastapi.core_api.security import get_user

    try:
        return await get_user(request, oauth_token, bearer)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            detail = exc.detail if exc.status_code == 401 else "Invalid token"
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"}) from None
        raise


async def _check(user: Any, action: str, permissions: tuple[Permission, ...]) -> None:
    await run_in_threadpool(check, user, action, *permissions)


def require(action: str, *permissions: Permission,
            user_dependency: Callable[..., Any] = authenticated_user) -> Callable[..., Any]:
    """A dependency that returns the user if they have every permission, else 403.

    ``user_dependency`` resolves the user (default :func:`authenticated_user`; the UI passes
    its own, which redirects to the login page)."""

    async def dependency(user: Any = Depends(user_dependency)) -> Any:
        await _check(user, action, permissions)
        return user

    dependency.__name__ = f"require_{action.replace(' ', '_')}"
    return dependency


_push_dependencies: dict[tuple[str, Callable[..., Any]], Callable[..., Any]] = {}


def require_push(kind: str, *,
                 user_dependency: Callable[..., Any] = authenticated_user) -> Callable[..., Any]:
    """Pushing events into the ``kind`` ("rt" / "batch") queue."""
    key = (kind, user_dependency)
    if key not in _push_dependencies:  # one callable per kind: FastAPI caches it per request
        _push_dependencies[key] = require(pushing(kind), push_permission(kind),
                                          user_dependency=user_dependency)
    return _push_dependencies[key]


@dataclass(frozen=True)
class EventReadAccess:
    """The caller and the queues whose events they may read (``require_read``)."""

    user: Any
    kinds: frozenset[str]

    def check(self, kind: str) -> None:
        """403 unless events of ``kind`` may be read (once the event's queue is known)."""
        if kind not in self.kinds:
            raise Forbidden(self.user, f"reading {KIND_LABELS[kind]}", [read_permission(kind)])


def require_read(*, user_dependency: Callable[..., Any] = authenticated_user) \
        -> Callable[..., Any]:
    """Reading events or reports: read access to the runs of at least one queue's DAG
    (403 naming both otherwise); returns an :class:`EventReadAccess`."""

    async def dependency(user: Any = Depends(user_dependency)) -> EventReadAccess:
        kinds = await run_in_threadpool(readable_kinds, user)
        if not kinds:
            raise Forbidden(user, "reading events and reports",
                            [read_permission(kind) for kind in QUEUE_DAGS])
        return EventReadAccess(user, kinds)

    return dependency


def require_accounts_admin(*, user_dependency: Callable[..., Any] = authenticated_user) \
        -> Callable[..., Any]:
    """Registering execution accounts (and testing connections): creating connections and
    editing DAGs. Call :func:`check_register_account` again with the account's name and
    connection once the form is read (auth managers may decide per DAG / connection)."""
    return require("registering an execution account", *register_account_permissions(),
                   user_dependency=user_dependency)


def require_account_change(name: str | None = None, *,
                           user_dependency: Callable[..., Any] = authenticated_user) \
        -> Callable[..., Any]:
    """Enabling / disabling archiving for an account (editing its ``mcSynch_<name>``)."""
    return require("enabling or disabling an execution account",
                   change_account_permission(name), user_dependency=user_dependency)


def require_templates_publish(*, user_dependency: Callable[..., Any] = authenticated_user) \
        -> Callable[..., Any]:
    """Publishing or unpublishing message templates: triggering ``mcPublishTemplates``."""
    return require("publishing message templates", publish_permission(),
                   user_dependency=user_dependency)


MANAGING_WEBHOOKS = "managing delivery-status webhooks"


def require_webhooks_manage(*, user_dependency: Callable[..., Any] = authenticated_user) \
        -> Callable[..., Any]:
    """Creating, changing, deleting, testing or replaying webhooks: like the quarantine, it
    changes what the delivery does for every later event (editing both processing DAGs)."""
    return require(MANAGING_WEBHOOKS, *quarantine_change_permissions(),
                   user_dependency=user_dependency)


BULK_ACTIONS = "running bulk actions on events"


def require_bulk_actions(*, user_dependency: Callable[..., Any] = authenticated_user) \
        -> Callable[..., Any]:
    """Cancelling, retrying or replaying events by filter (and its dry run, which shows
    events of both queues), and reading the audit trail: editing both processing DAGs,
    like the quarantine (it changes what the delivery does). The ``mcBulkAction`` run is
    triggered by the server for that user."""
    return require(BULK_ACTIONS, *quarantine_change_permissions(),
                   user_dependency=user_dependency)


def check_bulk_actions(user: Any) -> None:
    check(user, BULK_ACTIONS, *quarantine_change_permissions())


def require_quarantine_change(*, user_dependency: Callable[..., Any] = authenticated_user) \
        -> Callable[..., Any]:
    """Quarantining or releasing an address: editing both processing DAGs."""
    return require(CHANGING_QUARANTINE, *quarantine_change_permissions(),
                   user_dependency=user_dependency)


PUSH_API_AUTHORIZATION = Authorization(push=require_push, read=require_read(),
                                       check_push=check_push,
                                       change_quarantine=require_quarantine_change())
"""What the push APIs check, backed by Airflow: the JSON push API
(``message_center.api.create_app``), ACC's SOAP API and the Campaign REST API."""


# --- ACC SOAP sessions -------------------------------------------------------------------
LOGON_CACHE_SECONDS = 60.0
"""A ``login/password`` sent with every SOAP call reuses its JWT this long (the password is
not re-checked within that time; the JWT is verified on every call)."""


class AirflowSessions:
    """ACC-style logins and session tokens (``message_center.api.sessions.Sessions``) as
    Airflow users and JWTs: a ``Logon`` (or a ``login/password`` session token) is turned
    into a JWT by Airflow's own ``POST /auth/token``, called in-process on the API server
    (whatever auth manager is configured); a session token is verified like any Airflow API
    token, and ``Logoff`` revokes it with the auth manager."""

    def __init__(self, cache_seconds: float = LOGON_CACHE_SECONDS) -> None:
        self.cache_seconds = cache_seconds
        self._secret = os.urandom(32)
        self._tokens: dict[bytes, tuple[str, float]] = {}

    async def logon(self, request: Any, login: str, password: str) -> str:
        key = hmac.new(self._secret, f"{login}\0{password}".encode(), hashlib.sha256).digest()
        cached = self._tokens.get(key)
        if cached is not None and time.monotonic() - cached[1] < self.cache_seconds:
            return cached[0]
        token = await self._token(request, login, password)
        now = time.monotonic()
        if len(self._tokens) > 1000:  # bounded: drop the expired entries
            self._tokens = {k: v for k, v in self._tokens.items()
                            if now - v[1] < self.cache_seconds}
        self._tokens[key] = (token, now)
        return token

    @staticmethod
    async def _token(request: Any, login: str, password: str) -> str:
        """Airflow's ``POST /auth/token``, through the API server's own router (no network),
        so the configured auth manager checks the password exactly as for any API client."""
        import httpx

        router = request.scope.get("router")
        if router is None:
            raise SessionRefused("Logon is only available on the Airflow API server")
        root_path = request.scope.get("root_path", "")
        transport = httpx.ASGITransport(app=router, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://airflow") as client:
            answer = await client.post(f"{root_path}/auth/token",
                                       json={"username": login, "password": password})
        if answer.status_code not in (200, 201):
            raise SessionRefused("Invalid login or password. Connection denied.")
        return str(answer.json()["access_token"])

    async def user(self, request: Any, token: str) -> Any:
        from airflow.api_fastapi.core_api.security import resolve_user_from_token

        try:
            return await resolve_user_from_token(token)
        except HTTPException as exc:
            raise SessionRefused(f"Invalid session token: {exc.detail}") from None

    async def logoff(self, request: Any, token: str) -> None:
        await self.user(request, token)  # only a valid token can be revoked
        await run_in_threadpool(_auth_manager().revoke_token, token)
        self._tokens = {k: v for k, v in self._tokens.items() if v[0] != token}
