"""Registering an execution account: ACC's *Create the archiving workflow*, the one flow
behind ``mc accounts add`` and the UI's *Execution accounts* page.

Every check runs before anything is written, in this order: the registry has no bad entry
(a rewrite would drop it), the account shares no name, cell id or connection with another,
the connection URI is a postgres one, and (unless told not to test) the instance answers
and is the one of the account's cell id. Then the Airflow connection is stored (when a URI
is given) and the registry entry written; if writing the entry fails, a connection this
call created is deleted again, so a refusal leaves nothing behind.

Airflow connections sit behind :class:`ConnectionStore` (the command line reaches Airflow
through a subprocess, the API server in process), so this module imports no Airflow. A
refusal is an :class:`AccountRefused` whose ``reason`` says which step refused; each caller
words it for its users (form fields on the page, options on the command line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from message_center.archiving import ArchivingError, CellIdMismatch, InstanceInfo, check_instance
from message_center.db import with_connect_timeout
from message_center.registry import (
    Clash,
    ExecutionAccount,
    RegistryError,
    add_account,
    clashes,
    load_registry,
)

# Why an account was refused (AccountRefused.reason), in the order the checks run.
REGISTRY_HAS_ERRORS = "registry_has_errors"
CLASH = "clash"
BAD_URI = "bad_uri"
NO_CONNECTION = "no_connection"
WRONG_CELL = "wrong_cell"
UNREACHABLE = "unreachable"
CONNECTION_CONFLICT = "connection_conflict"
CONNECTION_REFUSED = "connection_refused"
NOT_REGISTERED = "not_registered"

POSTGRES_SCHEMES = ("postgres://", "postgresql://")


class ConnectionConflict(Exception):
    """The Airflow connection exists with other settings (and replacing was not asked)."""


class ConnectionStore(Protocol):
    """Airflow's connections, as seen by the caller's process."""

    def get_uri(self, conn_id: str) -> str | None:
        """The connection's URI, None when it does not exist (read afresh, not cached)."""

    def put(self, conn_id: str, uri: str, description: str, *, replace: bool) -> str:
        """Store it: ``created``, ``unchanged`` or ``updated``; raises
        :class:`ConnectionConflict`, or ``ValueError`` with the reason it was refused."""

    def delete(self, conn_id: str) -> None:
        """Remove it (after a failed registration)."""


class AccountRefused(Exception):
    """Nothing was registered. ``reason`` is the step that refused (the constants above);
    ``clashes`` / ``registry_errors`` / ``cause`` carry its details, ``tested`` what the
    instance (at ``tested_url``) answered when the refusal came after the test."""

    def __init__(self, reason: str, message: str, *, clashes: Sequence[Clash] = (),
                 registry_errors: Sequence[str] = (), cause: BaseException | None = None,
                 tested: InstanceInfo | None = None, tested_url: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.clashes, self.registry_errors = reason, list(clashes), list(
            registry_errors)
        self.cause, self.tested, self.tested_url = cause, tested, tested_url


@dataclass(frozen=True)
class Registration:
    """What :func:`register_account` did."""

    account: ExecutionAccount
    path: Path
    #: The instance's answer (None when not tested), and the URL it was reached at.
    tested: InstanceInfo | None
    tested_url: str | None
    #: ``created`` / ``unchanged`` / ``updated`` when a URI was given, else None.
    connection: str | None
    #: Whether the Airflow connection existed before (``mc accounts add --no-test`` warns
    #: when it is still missing).
    connection_existed: bool


def connection_description(account: ExecutionAccount) -> str:
    """The description of the Airflow connection an account's registration creates."""
    return f"Message Center execution instance {account.label} (cell {account.cell_id})"


def register_account(path: Path, account: ExecutionAccount, connections: ConnectionStore, *,
                     conn_uri: str | None = None, replace_connection: bool = False,
                     test: bool = True, connect_timeout: int | None = None,
                     instance_name: str | None = None) -> Registration:
    """Check, test, store the connection and register ``account`` in the registry at
    ``path`` (see the module docstring); raises :class:`AccountRefused`."""
    registry = load_registry(path)
    if registry.errors:
        raise AccountRefused(REGISTRY_HAS_ERRORS, f"fix {path} first",
                             registry_errors=registry.errors)
    found = clashes(account, registry.accounts)
    if found:
        raise AccountRefused(CLASH, "; ".join(map(str, found)), clashes=found)
    if conn_uri is not None and not conn_uri.startswith(POSTGRES_SCHEMES):
        raise AccountRefused(BAD_URI, "the connection URI must start with postgres:// or "
                                      "postgresql://")
    # Given a URI, the put below says whether the connection existed ("created" or not):
    # no lookup first (from the command line, each is a process that imports Airflow).
    existing = None if conn_uri is not None else connections.get_uri(account.conn_id)
    url = conn_uri or existing
    tested: InstanceInfo | None = None
    if test:
        if url is None:
            raise AccountRefused(NO_CONNECTION,
                                 f"Airflow connection {account.conn_id} does not exist")
        reach = with_connect_timeout(url, connect_timeout) if connect_timeout else url
        try:
            tested = check_instance(reach, account.cell_id,
                                    name=instance_name or f"account {account.name}")
        except CellIdMismatch as exc:
            raise AccountRefused(WRONG_CELL, str(exc), cause=exc) from None
        except ArchivingError as exc:
            raise AccountRefused(UNREACHABLE, str(exc), cause=exc) from None
    outcome = None
    if conn_uri is not None:
        try:
            outcome = connections.put(account.conn_id, conn_uri,
                                      connection_description(account),
                                      replace=replace_connection)
        except ConnectionConflict as exc:
            raise AccountRefused(CONNECTION_CONFLICT, str(exc), cause=exc, tested=tested,
                                 tested_url=url) from None
        except ValueError as exc:
            raise AccountRefused(CONNECTION_REFUSED, str(exc), cause=exc, tested=tested,
                                 tested_url=url) from None
    try:
        add_account(path, account)
    except BaseException as exc:
        if outcome == "created":
            connections.delete(account.conn_id)
        if isinstance(exc, RegistryError | ValueError | OSError):
            raise AccountRefused(NOT_REGISTERED, str(exc), cause=exc, tested=tested,
                                 tested_url=url) from None
        raise
    return Registration(account=account, path=path, tested=tested,
                        tested_url=url if tested else None, connection=outcome,
                        connection_existed=(outcome != "created" if conn_uri is not None
                                            else existing is not None))
