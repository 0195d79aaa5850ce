"""Execution accounts from the UI: ACC's *Test the connection* and *Create the archiving
workflow*, enable/disable, and each account's archiving state.

Registering is :func:`message_center.accounts.register_account`, the same flow as ``mc
accounts add`` (test the instance, store its Airflow connection, write the registry
entry), run in the API server process: the connection is written through Airflow's ORM
(:mod:`mc_airflow.connection_admin`), the registry file is replaced atomically. Every
field is checked before anything is written, and a failure after the connection was
created removes it again, so an error leaves nothing behind; this module words a
refusal for the form's fields.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mc_airflow import connection_admin, dag_state
from mc_airflow.instances import CONNECTIONS, account_registry, connection_url
from message_center import accounts
from message_center.accounts import AccountRefused, ConnectionConflict, register_account
from message_center.archiving import (
    ArchivingError,
    CellIdMismatch,
    InstanceInfo,
    check_instance,
    safe_url,
)
from message_center.db import with_connect_timeout
from message_center.registry import ExecutionAccount, load_registry, parse_account, set_enabled

# Form field (camelCase, as the page posts it) -> registry field.
FORM_FIELDS = {"name": "name", "label": "label", "cellId": "cell_id", "connId": "conn_id",
               "schedule": "schedule"}
_BASELINE = {"name": "a", "label": "a", "conn_id": "a", "cell_id": 0}
TEST_TIMEOUT_SECONDS = 5
_WRITE_LOCK = threading.Lock()


class FormError(ValueError):
    """Refused input: ``errors`` maps each bad form field to a sentence."""

    def __init__(self, errors: dict[str, str], status: int = 422) -> None:
        self.errors, self.status = errors, status
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass
class AccountForm:
    account: ExecutionAccount
    conn_uri: str | None
    replace_connection: bool = False
    notes: list[str] = field(default_factory=list)


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FormError({key: "must be text"})
    value = value.strip()
    return value or None


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise FormError({key: "must be true or false"})
    return value


def parse_form(body: Any) -> AccountForm:
    """Check every field (all problems at once) with the registry's own rules."""
    if not isinstance(body, dict):
        raise FormError({"form": "expected a JSON object"})
    errors: dict[str, str] = {}
    raw: dict[str, Any] = {}
    for key in ("name", "label", "connId", "schedule", "connUri"):
        try:
            raw[key] = _text(body, key)
        except FormError as exc:
            errors.update(exc.errors)
    cell = body.get("cellId")
    if isinstance(cell, str) and cell.strip().lstrip("-").isdigit():
        cell = int(cell.strip())
    if cell is None or cell == "":
        errors["cellId"] = "the cell id is required (0-255, the high byte of the instance's ids)"
    elif isinstance(cell, bool) or not isinstance(cell, int):
        errors["cellId"] = f"the cell id must be a whole number from 0 to 255; got {cell!r}"
    raw["cellId"] = cell
    for key in ("name", "label"):
        if raw.get(key) is None and key not in errors:
            errors[key] = f"the {'internal name' if key == 'name' else 'label'} is required"
    if raw.get("connId") is None:
        raw["connId"] = raw.get("name")
    flags = {}
    for key, default in (("enabled", True), ("replaceConnection", False)):
        try:
            flags[key] = _flag(body, key, default)
        except FormError as exc:
            errors.update(exc.errors)
    # Each field against the registry's rules, alone, so the message names its field.
    for form_key, registry_key in FORM_FIELDS.items():
        if form_key in errors or raw.get(form_key) is None:
            continue
        try:
            parse_account({**_BASELINE, registry_key: raw[form_key]})
        except ValueError as exc:
            errors[form_key] = str(exc)
    uri = raw.get("connUri")
    if uri is not None and "connUri" not in errors:
        problem = _uri_problem(uri)
        if problem:
            errors["connUri"] = problem
    if errors:
        raise FormError(errors)
    account = parse_account({"name": raw["name"], "label": raw["label"],
                             "conn_id": raw["connId"], "cell_id": raw["cellId"],
                             "enabled": flags["enabled"], "schedule": raw["schedule"]})
    return AccountForm(account=account, conn_uri=uri,
                       replace_connection=flags["replaceConnection"])


def _uri_problem(uri: str) -> str | None:
    if not uri.startswith(("postgres://", "postgresql://")):
        return "the connection URI must start with postgres:// or postgresql://"
    from airflow.models.connection import Connection

    try:
        conn = Connection(conn_id="check", uri=uri)
    except Exception as exc:  # Airflow's parser raises several types
        return f"the connection URI cannot be parsed: {exc}"
    if not conn.host:
        return "the connection URI has no host (postgres://user:password@host:5432/database)"
    if not conn.schema:
        return "the connection URI names no database (.../database at the end)"
    return None


_FIELD_OF = {"name": "name", "cell_id": "cellId", "conn_id": "connId"}


def _tested(url: str, account: ExecutionAccount, info: InstanceInfo) -> str:
    return (f"connection {account.conn_id} reaches {safe_url(url)} (PostgreSQL "
            f"{info.server_version}, database {info.database}); cell id {info.cell_id} matches")


def _test(url: str, account: ExecutionAccount, field_for_unreachable: str) -> str:
    try:
        info = check_instance(with_connect_timeout(url, TEST_TIMEOUT_SECONDS), account.cell_id,
                              name=f"account {account.name}")
    except CellIdMismatch as exc:
        raise FormError({"cellId": str(exc)}) from None
    except ArchivingError as exc:
        raise FormError({field_for_unreachable: str(exc)}) from None
    return _tested(url, account, info)


def test_form(body: Any) -> dict[str, Any]:
    """*Test the connection* for an account that is not registered yet."""
    form = parse_form(body)
    CONNECTIONS.forget(form.account.conn_id)
    url = form.conn_uri or connection_url(form.account.conn_id, connect_timeout=False)
    if url is None:
        raise FormError({"connUri": f"Airflow connection {form.account.conn_id} does not "
                                    "exist: give the instance's postgres:// URI"})
    return {"ok": True, "message": _test(url, form.account,
                                         "connUri" if form.conn_uri else "connId")}


def test_account(name: str) -> dict[str, Any]:
    """*Test the connection* of a registered account."""
    account = get_account(name)
    CONNECTIONS.forget(account.conn_id)
    url = connection_url(account.conn_id, connect_timeout=False)
    if url is None:
        return {"ok": False, "message": f"Airflow connection {account.conn_id} does not exist"}
    try:
        return {"ok": True, "message": _test(url, account, "connId")}
    except FormError as exc:
        return {"ok": False, "message": next(iter(exc.errors.values()))}


def get_account(name: str) -> ExecutionAccount:
    account = load_registry(account_registry()).get(name)
    if account is None:
        raise LookupError(f"no execution account named {name!r}")
    return account


class _AirflowConnections:
    """The connections as this API server sees them (:mod:`mc_airflow.connection_admin`),
    read afresh and forgotten by the page cache after every change."""

    def get_uri(self, conn_id: str) -> str | None:
        CONNECTIONS.forget(conn_id)
        return connection_url(conn_id, connect_timeout=False)

    def put(self, conn_id: str, uri: str, description: str, *, replace: bool) -> str:
        try:
            return connection_admin.put(conn_id, uri, description, replace=replace)
        except FileExistsError as exc:
            raise ConnectionConflict(str(exc)) from None
        finally:
            CONNECTIONS.forget(conn_id)

    def delete(self, conn_id: str) -> None:
        connection_admin.delete(conn_id)
        CONNECTIONS.forget(conn_id)


def _form_error(refusal: AccountRefused, account: ExecutionAccount, path: Path,
                uri_given: bool) -> FormError:
    """A refusal of :func:`register_account`, worded for the form's fields."""
    reason = refusal.reason
    if reason == accounts.REGISTRY_HAS_ERRORS:
        return FormError({"form": f"fix {path.name} first: "
                                  + "; ".join(refusal.registry_errors)}, status=409)
    if reason == accounts.CLASH:
        return FormError({_FIELD_OF[clash.field]: str(clash) for clash in refusal.clashes})
    if reason == accounts.NO_CONNECTION:
        return FormError({"connUri": f"Airflow connection {account.conn_id} does not exist: "
                                     "give the instance's postgres:// URI"})
    if reason == accounts.WRONG_CELL:
        return FormError({"cellId": str(refusal)})
    if reason == accounts.UNREACHABLE:
        return FormError({"connUri" if uri_given else "connId": str(refusal)})
    if reason == accounts.CONNECTION_CONFLICT:
        return FormError({"connId": f"Airflow connection {account.conn_id} already exists "
                                    "with other settings: tick \"replace the connection\" to "
                                    "overwrite it, or leave the URI empty to use it as it is"},
                         status=409)
    if reason == accounts.NOT_REGISTERED:
        return FormError({"form": f"the account was not registered: {refusal}"}, status=409)
    return FormError({"connUri": str(refusal)})  # BAD_URI, CONNECTION_REFUSED


def create_account(body: Any) -> dict[str, Any]:
    """*Create the archiving workflow*: test, store the connection, register the account
    (:func:`message_center.accounts.register_account`, as ``mc accounts add``)."""
    form = parse_form(body)
    account = form.account
    with _WRITE_LOCK:
        path: Path = account_registry()
        try:
            done = register_account(path, account, _AirflowConnections(),
                                    conn_uri=form.conn_uri,
                                    replace_connection=form.replace_connection,
                                    connect_timeout=TEST_TIMEOUT_SECONDS)
        except AccountRefused as refusal:
            raise _form_error(refusal, account, path, form.conn_uri is not None) from None
        finally:
            CONNECTIONS.forget(account.conn_id)
    assert done.tested is not None and done.tested_url is not None
    messages = [_tested(done.tested_url, account, done.tested)]
    if done.connection is not None:
        messages.append(f"Airflow connection {account.conn_id} {done.connection}")
    messages.append(f"registered in {path.name}")
    return {"ok": True, "account": account_dict(account), "dagId": account.dag_id,
            "registeredAt": _now(), "messages": messages,
            "message": (f"{account.name} registered. Its archiving DAG {account.dag_id} "
                        "appears at the next parse of the DAG files (about 30 s), unpaused"
                        if account.enabled else f"{account.name} registered (disabled: no "
                                                "DAG until it is enabled)")}


def set_account_enabled(name: str, enabled: bool) -> dict[str, Any]:
    with _WRITE_LOCK:
        account = set_enabled(account_registry(), name, enabled)
    state = ("enabled: its DAG is generated and scheduled again" if enabled
             else "disabled: its DAG is no longer scheduled (past runs and the archive stay)")
    return {"ok": True, "account": account_dict(account), "message": f"{name} {state}"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def account_dict(account: ExecutionAccount) -> dict[str, Any]:
    return {"name": account.name, "label": account.label, "connId": account.conn_id,
            "cellId": account.cell_id, "enabled": account.enabled, "schedule": account.cron,
            "dagId": account.dag_id}


def accounts_page() -> dict[str, Any]:
    """The registry with, per account, its connection, DAG and archiving lag."""
    registry = load_registry(account_registry())
    states = dag_state.dag_states(a.dag_id for a in registry.accounts)
    now = datetime.now(UTC)
    rows = []
    for account in registry.accounts:
        state = states[account.dag_id]
        success = state.last_success
        lag = None
        if success is not None and success.data_interval_end is not None:
            lag = max(0.0, (now - success.data_interval_end).total_seconds())
        rows.append({"account": account_dict(account),
                     "connectionDefined": CONNECTIONS.get(account.conn_id) is not None,
                     "dag": state.to_dict(), "lagSeconds": lag})
    return {"rows": rows, "registry": str(registry.path), "registryName": registry.path.name,
            "registryErrors": registry.errors}


def dag_status(name: str) -> dict[str, Any]:
    """What the page polls after *Create the archiving workflow*."""
    account = get_account(name)
    state = dag_state.dag_states([account.dag_id])[account.dag_id]
    return {"account": account_dict(account), "dag": state.to_dict()}
