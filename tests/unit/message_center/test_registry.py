"""The execution-account registry: good files load sorted, each bad entry is one error that
names the file and the entry while the good entries still load, writes are canonical."""

from __future__ import annotations

from pathlib import Path

import pytest

from mc_airflow.defaults import ACCOUNT_REGISTRY
from mc_local.localenv import PROJECT_ROOT
from message_center.registry import (
    DEFAULT_SCHEDULE,
    REGISTRY_ENV,
    ExecutionAccount,
    RegistryError,
    add_account,
    load_registry,
    registry_path,
    remove_account,
    render_registry,
    set_enabled,
    write_registry,
)

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "execution_accounts.yaml"
    path.write_text(text)
    return path


def test_project_registry_is_the_demo_set_up():
    registry = load_registry(PROJECT_ROOT / "dags" / "execution_accounts.yaml")
    assert registry.errors == []
    assert registry.accounts == [
        ExecutionAccount("mcExec1", "Execution instance 1", "mc_execution", 0),
        ExecutionAccount("mcExec2", "Execution instance 2", "mc_execution2", 1),
    ]
    assert [a.dag_id for a in registry.enabled] == ["mcSynch_mcExec1", "mcSynch_mcExec2"]
    assert registry.accounts[0].dag_display_name == (
        "Message Center archiving Execution instance 1")


def test_registry_path_default_and_env_override(tmp_path, monkeypatch):
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    assert registry_path(ACCOUNT_REGISTRY) == PROJECT_ROOT / "dags" / "execution_accounts.yaml"
    assert registry_path(tmp_path / "x.yaml") == tmp_path / "x.yaml"
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "other.yaml"))
    assert registry_path(ACCOUNT_REGISTRY) == tmp_path / "other.yaml"
    assert registry_path(tmp_path / "x.yaml") == tmp_path / "other.yaml"


@pytest.mark.parametrize("text", ["", "accounts:\n", "accounts: []\n", "# nothing yet\n"])
def test_empty_registries_have_no_account_and_no_error(tmp_path, text):
    registry = load_registry(write(tmp_path, text))
    assert (registry.accounts, registry.errors) == ([], [])


def test_missing_file_is_an_empty_registry(tmp_path):
    registry = load_registry(tmp_path / "absent.yaml")
    assert (registry.accounts, registry.errors) == ([], [])


def test_accounts_are_sorted_and_optional_fields_default(tmp_path):
    registry = load_registry(write(tmp_path, """
accounts:
  - {name: mcExecB, label: Paris, conn_id: paris_db, cell_id: 200, schedule: "*/30 * * * *"}
  - {name: mcExecA, label: Lyon, conn_id: lyon_db, cell_id: 7, enabled: false}
"""))
    assert registry.errors == []
    assert registry.accounts == [
        ExecutionAccount("mcExecA", "Lyon", "lyon_db", 7, enabled=False),
        ExecutionAccount("mcExecB", "Paris", "paris_db", 200, schedule="*/30 * * * *"),
    ]
    assert [a.name for a in registry.enabled] == ["mcExecB"]
    assert registry.accounts[0].cron == DEFAULT_SCHEDULE


BAD = """
accounts:
  - {name: good1, label: Good one, conn_id: db1, cell_id: 0}
  - {name: good1, label: Same name, conn_id: db2, cell_id: 1}
  - {name: other, label: Same cell, conn_id: db3, cell_id: 0}
  - {name: 1bad-name, label: Bad name, conn_id: db4, cell_id: 4}
  - {name: typo, label: Typo, conn_id: db5, cell_id: 5, enabeld: true}
  - {name: bigcell, label: Big cell, conn_id: db6, cell_id: 256}
  - {name: textcell, label: Text cell, conn_id: db7, cell_id: "7"}
  - {name: noconn, label: No connection, cell_id: 8}
  - {name: sameconn, label: Same connection, conn_id: db1, cell_id: 9}
  - {name: badcron, label: Bad cron, conn_id: db10, cell_id: 10, schedule: "every hour"}
  - {name: badflag, label: Bad flag, conn_id: db11, cell_id: 11, enabled: "yes"}
  - just a string
  - {name: good2, label: Good two, conn_id: db12, cell_id: 12}
"""


def test_bad_entries_are_named_and_good_ones_kept(tmp_path):
    path = write(tmp_path, BAD)
    registry = load_registry(path)
    assert [a.name for a in registry.accounts] == ["good1", "good2"]
    errors = registry.errors
    assert len(errors) == 11, errors
    assert all(error.startswith(f"{path}: entry #") for error in errors)
    text = "\n".join(errors)
    assert "entry #2 (good1): name 'good1' is already used by account good1" in text
    assert "entry #3 (other): cell_id 0 is already used by account good1" in text
    assert "entry #4 (1bad-name): name '1bad-name' must start with a letter" in text
    assert "entry #5 (typo): unknown field(s) ['enabeld']" in text
    assert "entry #6 (bigcell): cell_id must be a whole number from 0 to 255; got 256" in text
    assert "entry #7 (textcell): cell_id must be a whole number" in text
    assert "entry #8 (noconn): missing field(s) ['conn_id']" in text
    assert "entry #9 (sameconn): conn_id 'db1' is already used by account good1" in text
    assert "entry #10 (badcron): schedule 'every hour' must be a 5-field cron" in text
    assert "entry #11 (badflag): enabled must be true or false" in text
    assert "entry #12: expected a mapping" in text
    with pytest.raises(RegistryError, match=r"11 bad execution account entries") as raised:
        registry.raise_for_errors()
    assert "entry #3 (other)" in str(raised.value)


def test_names_clash_case_insensitively(tmp_path):
    registry = load_registry(write(tmp_path, """
accounts:
  - {name: mcExec1, label: A, conn_id: a, cell_id: 1}
  - {name: MCEXEC1, label: B, conn_id: b, cell_id: 2}
"""))
    assert [a.name for a in registry.accounts] == ["mcExec1"]
    assert "entry #2 (MCEXEC1): name 'MCEXEC1' is already used by account mcExec1" in (
        registry.errors[0])


@pytest.mark.parametrize(("text", "message"), [
    ("accounts: [\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping with an 'accounts' list"),
    ("accounts: {name: x}\n", "'accounts' must be a list"),
    ("accounts: []\nacounts: []\n", "unknown top-level key 'acounts'"),
])
def test_broken_files_are_reported(tmp_path, text, message):
    path = write(tmp_path, text)
    registry = load_registry(path)
    assert registry.accounts == []
    assert len(registry.errors) == 1
    assert registry.errors[0].startswith(str(path))
    assert message in registry.errors[0]


def test_write_is_canonical_and_round_trips(tmp_path):
    path = tmp_path / "accounts.yaml"
    accounts = [ExecutionAccount("mcExecB", "Paris: main", "paris", 2, schedule="@hourly"),
                ExecutionAccount("mcExecA", "Lyon", "lyon", 1, enabled=False)]
    write_registry(path, accounts)
    first = path.read_text()
    assert load_registry(path).accounts == sorted(accounts, key=lambda a: a.name)
    write_registry(path, list(reversed(accounts)))
    assert path.read_text() == first == render_registry(accounts)
    assert first.index("mcExecA") < first.index("mcExecB")
    assert "schedule: '@hourly'" in first and first.count("schedule") == 2  # + header


def test_add_enable_remove(tmp_path):
    path = tmp_path / "accounts.yaml"
    add_account(path, ExecutionAccount("mcExec1", "One", "db1", 0))
    registry = add_account(path, ExecutionAccount("mcExec3", "Three", "db3", 3))
    assert [a.name for a in registry.accounts] == ["mcExec1", "mcExec3"]
    with pytest.raises(RegistryError, match="cell_id 3 is already used by account mcExec3"):
        add_account(path, ExecutionAccount("mcExec4", "Four", "db4", 3))
    with pytest.raises(RegistryError, match="name 'MCEXEC1' is already used"):
        add_account(path, ExecutionAccount("MCEXEC1", "Again", "db9", 9))
    with pytest.raises(ValueError, match="cell_id must be a whole number"):
        add_account(path, ExecutionAccount("mcExec5", "Five", "db5", 300))
    assert set_enabled(path, "mcExec3", False).enabled is False
    assert [a.name for a in load_registry(path).enabled] == ["mcExec1"]
    assert remove_account(path, "mcExec1").conn_id == "db1"
    assert [a.name for a in load_registry(path).accounts] == ["mcExec3"]
    with pytest.raises(RegistryError, match="no account named 'nope'"):
        remove_account(path, "nope")


def test_changes_are_refused_while_the_file_has_bad_entries(tmp_path):
    path = write(tmp_path, BAD)
    before = path.read_text()
    with pytest.raises(RegistryError, match=r"fix .* before adding an account"):
        add_account(path, ExecutionAccount("fresh", "Fresh", "fresh", 99))
    with pytest.raises(RegistryError, match="before removing"):
        remove_account(path, "good1")
    assert path.read_text() == before
