"""Registering an execution account (the flow of ``mc accounts add`` and the UI's *Create the
archiving workflow*) against the test deployment's real second execution database (cell 1):
every check refuses before anything is written, and a failure after the connection was
stored removes it again. Airflow's connections are an in-memory store here (the command
line's and the UI's stores are tested through ``mc accounts`` and the UI's tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from message_center import accounts
from message_center.accounts import (
    AccountRefused,
    ConnectionConflict,
    connection_description,
    register_account,
)
from message_center.registry import ExecutionAccount, add_account, load_registry


class MemoryConnections:
    """Airflow connections as a dict; ``on_put`` runs after a put (to race a writer)."""

    def __init__(self, **uris: str) -> None:
        self.uris = dict(uris)
        self.descriptions: dict[str, str] = {}
        self.on_put = lambda: None

    def get_uri(self, conn_id: str) -> str | None:
        return self.uris.get(conn_id)

    def put(self, conn_id: str, uri: str, description: str, *, replace: bool) -> str:
        existing = self.uris.get(conn_id)
        if existing is not None and existing != uri and not replace:
            raise ConnectionConflict(f"connection {conn_id} already exists with other settings")
        self.uris[conn_id], self.descriptions[conn_id] = uri, description
        self.on_put()
        return "created" if existing is None else ("unchanged" if existing == uri else "updated")

    def delete(self, conn_id: str) -> None:
        self.uris.pop(conn_id, None)


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "execution_accounts.yaml"
    add_account(path, ExecutionAccount("mcExec1", "One", "mc_execution", 0))
    return path


@pytest.fixture
def uri(test_deployment) -> str:
    return test_deployment.database_url("execution2")


def test_registers_after_testing_the_instance_and_storing_its_connection(registry, uri):
    store = MemoryConnections()
    account = ExecutionAccount("mcExec2", "Two", "mc_two", 1)
    done = register_account(registry, account, store, conn_uri=uri)
    assert (done.connection, done.tested is not None, done.connection_existed) == (
        "created", True, False)
    assert done.tested is not None and done.tested.cell_id == 1
    assert store.uris == {"mc_two": uri}
    assert store.descriptions["mc_two"] == connection_description(account)
    assert load_registry(registry).get("mcExec2") == account


def test_an_existing_connection_is_tested_and_kept(registry, uri):
    store = MemoryConnections(mc_two=uri)
    done = register_account(registry, ExecutionAccount("mcExec2", "Two", "mc_two", 1), store)
    assert (done.connection, done.connection_existed, done.tested_url) == (None, True, uri)


@pytest.mark.parametrize(("account", "conn_uri", "reason"), [
    (ExecutionAccount("mcExec2", "Two", "mc_two", 0), "postgres://h/db", accounts.CLASH),
    (ExecutionAccount("mcExec2", "Two", "mc_two", 2), "mysql://h/db", accounts.BAD_URI),
    (ExecutionAccount("mcExec2", "Two", "mc_two", 2), None, accounts.NO_CONNECTION),
    (ExecutionAccount("mcExec2", "Two", "mc_two", 7), "uri", accounts.WRONG_CELL),
    (ExecutionAccount("mcExec2", "Two", "mc_two", 2), "postgres://nobody@127.0.0.1:1/none",
     accounts.UNREACHABLE),
])
def test_each_check_refuses_before_anything_is_written(registry, uri, account, conn_uri,
                                                       reason):
    before = registry.read_text()
    store = MemoryConnections()
    with pytest.raises(AccountRefused) as refused:
        register_account(registry, account, store,
                         conn_uri=uri if conn_uri == "uri" else conn_uri, connect_timeout=3)
    assert refused.value.reason == reason
    assert store.uris == {} and registry.read_text() == before


def test_a_clash_names_every_field_and_its_owner(registry):
    with pytest.raises(AccountRefused) as refused:
        register_account(registry, ExecutionAccount("MCEXEC1", "Again", "mc_execution", 0),
                         MemoryConnections())
    assert [str(clash) for clash in refused.value.clashes] == [
        "name 'MCEXEC1' is already used by account mcExec1",
        "cell_id 0 is already used by account mcExec1",
        "conn_id 'mc_execution' is already used by account mcExec1"]


def test_a_registry_with_bad_entries_is_refused_whole(tmp_path, uri):
    path = tmp_path / "execution_accounts.yaml"
    path.write_text("accounts:\n  - {name: a, label: A, conn_id: a, cell_id: 1, x: 1}\n")
    with pytest.raises(AccountRefused) as refused:
        register_account(path, ExecutionAccount("mcExec2", "Two", "mc_two", 1),
                         MemoryConnections(), conn_uri=uri)
    assert refused.value.reason == accounts.REGISTRY_HAS_ERRORS
    assert "unknown field(s) ['x']" in refused.value.registry_errors[0]


def test_a_connection_with_other_settings_is_replaced_only_when_asked(registry, uri):
    store = MemoryConnections(mc_two=uri + "?application_name=other")
    account = ExecutionAccount("mcExec2", "Two", "mc_two", 1)
    with pytest.raises(AccountRefused) as refused:
        register_account(registry, account, store, conn_uri=uri)
    assert refused.value.reason == accounts.CONNECTION_CONFLICT
    assert refused.value.tested is not None  # the instance answered; the store refused
    assert load_registry(registry).get("mcExec2") is None
    done = register_account(registry, account, store, conn_uri=uri, replace_connection=True)
    assert done.connection == "updated" and store.uris["mc_two"] == uri


def test_a_failed_registration_removes_the_connection_it_created(registry, uri):
    """Another writer registers cell 1 between the checks and the write: the registry
    refuses, and the connection this call created is deleted again."""
    store = MemoryConnections()
    store.on_put = lambda: add_account(registry, ExecutionAccount("mcOther", "Other",
                                                                  "mc_other", 1))
    with pytest.raises(AccountRefused) as refused:
        register_account(registry, ExecutionAccount("mcExec2", "Two", "mc_two", 1), store,
                         conn_uri=uri)
    assert refused.value.reason == accounts.NOT_REGISTERED
    assert "cell_id 1 is already used by account mcOther" in str(refused.value)
    assert "mc_two" not in store.uris
    assert load_registry(registry).get("mcExec2") is None


def test_without_a_test_an_instance_not_up_yet_can_be_registered(registry):
    done = register_account(registry, ExecutionAccount("mcExec3", "Three", "mc_three", 3),
                            MemoryConnections(), test=False)
    assert (done.tested, done.connection, done.connection_existed) == (None, None, False)
    assert load_registry(registry).get("mcExec3") is not None
