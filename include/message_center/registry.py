"""The execution-account registry: which execution instances this control instance archives.

ACC keeps "Message Center execution instance" external accounts in its database; here they
live in a YAML file next to the DAGs, because Airflow generates one ``mcSynch_<name>`` DAG
per account at parse time and parsing must not touch a database or the network. The file
is read with :func:`load_registry`; every bad entry becomes one error naming the file and
the entry, while the good entries stay usable, so one typo never silently takes down the
archiving of the other instances.

Format (``dags/execution_accounts.yaml``)::

    accounts:
      - name: mcExec1                # internal name: DAG id mcSynch_mcExec1
        label: Execution instance 1  # DAG display name "Message Center archiving <label>"
        conn_id: mc_execution        # Airflow postgres connection to its database
        cell_id: 0                   # 0-255, unique: high byte of every id it issues
        enabled: true                # optional, default true
        schedule: "0 * * * *"        # optional cron, default hourly
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from message_center import dag_ids

REGISTRY_ENV = "MC_ACCOUNT_REGISTRY"
DEFAULT_SCHEDULE = "0 * * * *"

_FIELDS = ("name", "label", "conn_id", "cell_id", "enabled", "schedule")
_REQUIRED = ("name", "label", "conn_id", "cell_id")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,249}$")
# Airflow's cron presets (``@once`` is not a schedule for an archiving window).
_CRON_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")

HEADER = """\
# Execution accounts of this control instance: each enabled account gets an archiving
# DAG mcSynch_<name> that copies that execution instance's events and delivery logs into
# the control archive every hour. Managed by `mc accounts add|remove`; hand edits are
# fine: a bad entry shows up as an import error in the Airflow UI and the other accounts
# keep running. Fields: name, label, conn_id (an Airflow postgres connection), cell_id
# (0-255, unique), enabled (default true), schedule (cron, default hourly).
"""


class RegistryError(ValueError):
    """The registry has bad entries (the message lists every one of them)."""


@dataclass(frozen=True)
class ExecutionAccount:
    """One execution instance registered on this control instance."""

    name: str
    label: str
    conn_id: str
    cell_id: int
    enabled: bool = True
    schedule: str | None = None

    @property
    def dag_id(self) -> str:
        return dag_ids.archiving(self.name)

    @property
    def dag_display_name(self) -> str:
        return f"Message Center archiving {self.label}"

    @property
    def cron(self) -> str:
        return self.schedule or DEFAULT_SCHEDULE


@dataclass
class Registry:
    """The parsed registry: valid accounts (sorted by name) and one error per bad entry."""

    path: Path
    accounts: list[ExecutionAccount] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> list[ExecutionAccount]:
        return [account for account in self.accounts if account.enabled]

    def get(self, name: str) -> ExecutionAccount | None:
        return next((account for account in self.accounts if account.name == name), None)

    def raise_for_errors(self) -> None:
        if self.errors:
            raise RegistryError(
                f"{len(self.errors)} bad execution account entr"
                f"{'y' if len(self.errors) == 1 else 'ies'} (the other accounts are "
                "archived as usual):\n" + "\n".join(f"- {error}" for error in self.errors))


def registry_path(default: Path) -> Path:
    """``$MC_ACCOUNT_REGISTRY`` when set (tests, other layouts), else ``default`` (the
    deployment's file: ``mc_airflow.defaults.ACCOUNT_REGISTRY``)."""
    override = os.environ.get(REGISTRY_ENV)
    return Path(override) if override else default


def _check_schedule(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"schedule must be a cron expression; got {value!r}")
    value = value.strip()
    if value.startswith("@"):
        if value not in _CRON_PRESETS:
            raise ValueError(f"schedule {value!r} is not one of {', '.join(_CRON_PRESETS)}")
        return value
    if len(value.split()) != 5:
        raise ValueError(f"schedule {value!r} must be a 5-field cron expression")
    from croniter import croniter  # Airflow's own cron parser (a dependency of Airflow)

    if not croniter.is_valid(value):
        raise ValueError(f"schedule {value!r} is not a valid cron expression")
    return value


def parse_account(raw: Any) -> ExecutionAccount:
    """One entry -> account; ``ValueError`` says what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError("expected a mapping with name, label, conn_id and cell_id")
    unknown = sorted(str(key) for key in set(raw) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed: {', '.join(_FIELDS)}")
    missing = [key for key in _REQUIRED if raw.get(key) is None]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    name, label, conn_id, cell_id = (raw[key] for key in _REQUIRED)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"name {name!r} must start with a letter and hold only letters, digits and _ "
            "(at most 64 characters): it becomes the DAG id mcSynch_<name>")
    if not isinstance(label, str) or not label.strip() or "\n" in label or len(label) > 200:
        raise ValueError("label must be a non-empty single line of at most 200 characters")
    if not isinstance(conn_id, str) or not _CONN_ID.match(conn_id):
        raise ValueError(f"conn_id {conn_id!r} must be an Airflow connection id "
                         "(letters, digits, _ . -)")
    if isinstance(cell_id, bool) or not isinstance(cell_id, int) or not 0 <= cell_id <= 255:
        raise ValueError(f"cell_id must be a whole number from 0 to 255; got {cell_id!r}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be true or false; got {enabled!r}")
    return ExecutionAccount(name=name, label=label.strip(), conn_id=conn_id, cell_id=cell_id,
                            enabled=enabled, schedule=_check_schedule(raw.get("schedule")))


@dataclass(frozen=True)
class Clash:
    """``account`` would reuse ``field`` (name, cell_id or conn_id) of account ``owner``."""

    field: str
    value: Any
    owner: str

    def __str__(self) -> str:
        return f"{self.field} {self.value!r} is already used by account {self.owner}"


def clashes(account: ExecutionAccount, others: Iterable[ExecutionAccount]) -> list[Clash]:
    """What ``account`` shares with ``others``: its name (case-insensitive), its cell id or
    its connection must each be unique in a registry. The one clash check (file parsing,
    ``add_account`` and ``mc accounts add`` before it touches Airflow)."""
    found = []
    for field_name, key in (("name", lambda a: a.name.lower()), ("cell_id", lambda a: a.cell_id),
                            ("conn_id", lambda a: a.conn_id)):
        owner = next((other.name for other in others if key(other) == key(account)), None)
        if owner is not None:
            found.append(Clash(field_name, getattr(account, field_name), owner))
    return found


def parse_registry(text: str, path: Path) -> Registry:
    """Parse registry text; the first of two entries sharing a name, cell id or connection
    wins and the later one is reported (appending a clashing account never stops the
    archiving of the existing one)."""
    registry = Registry(path=path)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        registry.errors.append(f"{path}: not valid YAML: {exc}")
        return registry
    if document is None:
        return registry
    if not isinstance(document, dict):
        registry.errors.append(f"{path}: expected a mapping with an 'accounts' list at the top")
        return registry
    for key in sorted(str(key) for key in set(document) - {"accounts"}):
        registry.errors.append(f"{path}: unknown top-level key {key!r}; expected 'accounts'")
    entries = document.get("accounts") or []
    if not isinstance(entries, list):
        registry.errors.append(f"{path}: 'accounts' must be a list of entries")
        return registry
    for index, raw in enumerate(entries, start=1):
        given = raw.get("name") if isinstance(raw, dict) else None
        where = f"{path}: entry #{index}" + (f" ({given})" if isinstance(given, str) else "")
        try:
            account = parse_account(raw)
        except ValueError as exc:
            registry.errors.append(f"{where}: {exc}; no DAG for it")
            continue
        problems = clashes(account, registry.accounts)
        if problems:
            registry.errors.append(f"{where}: {'; '.join(map(str, problems))}; no DAG for it")
            continue
        registry.accounts.append(account)
    registry.accounts.sort(key=lambda account: account.name)
    return registry


def load_registry(path: Path) -> Registry:
    """Read the registry at ``path`` (see :func:`registry_path`); a missing file is an
    empty registry (a control instance with no execution account yet)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Registry(path=path)
    except OSError as exc:
        return Registry(path=path, errors=[f"{path}: cannot be read: {exc}"])
    return parse_registry(text, path)


def render_registry(accounts: Iterable[ExecutionAccount]) -> str:
    """The canonical file text: header, accounts sorted by name, fields in a fixed order."""
    entries = [_entry(account) for account in sorted(accounts, key=lambda a: a.name)]
    body = yaml.safe_dump({"accounts": entries}, sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=100)
    return HEADER + body


def _entry(account: ExecutionAccount) -> dict[str, Any]:
    return {key: value for key, value in asdict(account).items()
            if not (key == "schedule" and value is None)}


def write_registry(path: Path, accounts: Iterable[ExecutionAccount]) -> None:
    """Atomically replace the registry file (the DAG processor never sees half a file)."""
    text = render_registry(accounts)
    check = parse_registry(text, path)
    check.raise_for_errors()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_account(path: Path, account: ExecutionAccount) -> Registry:
    """Add ``account`` to the registry at ``path``; refuses a clash with an existing account
    or a registry that already has bad entries (a rewrite would drop them)."""
    registry = _load_clean(path, "adding an account")
    parse_account(_entry(account))  # the same checks as a hand-written entry
    problems = clashes(account, registry.accounts)
    if problems:
        raise RegistryError(f"account {account.name} cannot be added: "
                            + "; ".join(map(str, problems)))
    write_registry(path, [*registry.accounts, account])
    return load_registry(path)


def set_enabled(path: Path, name: str, enabled: bool) -> ExecutionAccount:
    """Enable or disable an account: a disabled account's DAG is no longer generated, so
    Airflow stops scheduling it (its runs and the archive stay)."""
    registry = _load_clean(path, "changing an account")
    account = _find(registry, name)
    changed = replace(account, enabled=enabled)
    write_registry(path, [changed if a.name == name else a for a in registry.accounts])
    return changed


def remove_account(path: Path, name: str) -> ExecutionAccount:
    """Remove the account called ``name``; its DAG stops being scheduled, the archive stays."""
    registry = _load_clean(path, "removing an account")
    account = _find(registry, name)
    write_registry(path, [a for a in registry.accounts if a.name != name])
    return account


def _load_clean(path: Path, doing: str) -> Registry:
    registry = load_registry(path)
    if registry.errors:
        raise RegistryError(f"fix {path} before {doing}:\n"
                            + "\n".join(f"- {error}" for error in registry.errors))
    return registry


def _find(registry: Registry, name: str) -> ExecutionAccount:
    account = registry.get(name)
    if account is None:
        known = ", ".join(a.name for a in registry.accounts) or "none"
        raise RegistryError(f"no account named {name!r} in {registry.path} (accounts: {known})")
    return account
