"""Reads ``airflow_settings.yaml`` (the Astro CLI format) into checked entries.

Parsing is separate from applying so that every bad entry is reported with its
position and reason while the good ones still load. ``${VAR}`` and ``${VAR:-default}``
in values are taken from the environment, so the file itself holds no secrets.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
CONNECTION_KEYS = {
    "conn_id", "conn_type", "conn_host", "conn_schema", "conn_login", "conn_password",
    "conn_port", "conn_extra", "conn_description", "conn_uri",
}
POOL_KEYS = {"pool_name", "pool_slot", "pool_description", "include_deferred"}
VARIABLE_KEYS = {"variable_name", "variable_value", "variable_description"}
_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class ConnectionEntry:
    conn_id: str
    conn_type: str
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    extra: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class PoolEntry:
    name: str
    slots: int
    description: str = ""
    include_deferred: bool = False


@dataclass(frozen=True)
class VariableEntry:
    key: str
    value: str
    description: str | None = None


@dataclass
class SettingsFile:
    connections: list[ConnectionEntry] = field(default_factory=list)
    pools: list[PoolEntry] = field(default_factory=list)
    variables: list[VariableEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def expand(value: Any, env: dict[str, str] | None = None) -> Any:
    """Replace ``${VAR}``/``${VAR:-default}`` in strings; an unset ``${VAR}`` is an error."""
    if not isinstance(value, str):
        return value
    env = os.environ if env is None else env

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ValueError(f"environment variable {name} is not set")

    return _VAR.sub(sub, value)


def _blank(value: Any) -> Any:
    return None if value in ("", None) else value


def _connection(raw: dict[str, Any], env: dict[str, str] | None) -> ConnectionEntry:
    unknown = set(raw) - CONNECTION_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    values = {key: expand(value, env) for key, value in raw.items()}
    conn_id = values.get("conn_id")
    if not conn_id or not isinstance(conn_id, str) or not _ID.match(conn_id):
        raise ValueError(
            f"conn_id must be a non-empty name of letters, digits, _ . -; got {conn_id!r}")
    if not values.get("conn_type"):
        raise ValueError("conn_type is required")
    port = _blank(values.get("conn_port"))
    if port is not None:
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"conn_port must be a whole number; got {port!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"conn_port must be between 1 and 65535; got {port}")
    extra = _blank(values.get("conn_extra"))
    if isinstance(extra, dict):
        extra = json.dumps(extra, sort_keys=True)
    elif extra is not None:
        try:
            if not isinstance(json.loads(extra), dict):
                raise ValueError
        except ValueError:
            raise ValueError("conn_extra must be a mapping or a JSON object") from None
    return ConnectionEntry(
        conn_id=conn_id,
        conn_type=str(values["conn_type"]),
        host=_blank(values.get("conn_host")),
        schema=_blank(values.get("conn_schema")),
        login=_blank(values.get("conn_login")),
        password=_blank(values.get("conn_password")),
        port=port,
        extra=extra,
        description=_blank(values.get("conn_description")),
    )


def _pool(raw: dict[str, Any], env: dict[str, str] | None) -> PoolEntry:
    unknown = set(raw) - POOL_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    name = expand(raw.get("pool_name"), env)
    if not name or not isinstance(name, str):
        raise ValueError("pool_name is required")
    slots = expand(raw.get("pool_slot"), env)
    try:
        slots = int(slots)
    except (TypeError, ValueError):
        raise ValueError(f"pool_slot must be a whole number; got {slots!r}") from None
    if slots < -1:
        raise ValueError(f"pool_slot must be -1 (unlimited) or more; got {slots}")
    return PoolEntry(name, slots, str(expand(raw.get("pool_description") or "", env)),
                     bool(raw.get("include_deferred", False)))


def _variable(raw: dict[str, Any], env: dict[str, str] | None) -> VariableEntry:
    unknown = set(raw) - VARIABLE_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    key = expand(raw.get("variable_name"), env)
    if not key or not isinstance(key, str):
        raise ValueError("variable_name is required")
    if "variable_value" not in raw:
        raise ValueError("variable_value is required")
    value = expand(raw["variable_value"], env)
    if not isinstance(value, str):
        value = json.dumps(value)
    return VariableEntry(key, value, _blank(raw.get("variable_description")))


_SECTIONS = {"connections": _connection, "pools": _pool, "variables": _variable}


def parse_settings(text: str, source: str = "airflow_settings.yaml",
                   env: dict[str, str] | None = None) -> SettingsFile:
    """Parse the Astro-format settings; each bad entry becomes one error naming its place."""
    result = SettingsFile()
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        result.errors.append(f"{source}: not valid YAML: {exc}")
        return result
    root = document.get("airflow", {}) if isinstance(document, dict) else None
    if not isinstance(root, dict):
        result.errors.append(f"{source}: expected a mapping with an 'airflow' key at the top")
        return result
    for key in sorted(set(root) - set(_SECTIONS)):
        result.errors.append(f"{source}: airflow.{key}: unknown section")
    seen: dict[str, set[str]] = {section: set() for section in _SECTIONS}
    for section, build in _SECTIONS.items():
        entries = root.get(section) or []
        if not isinstance(entries, list):
            result.errors.append(f"{source}: airflow.{section}: expected a list")
            continue
        for index, raw in enumerate(entries):
            where = f"{source}: airflow.{section}[{index}]"
            if not isinstance(raw, dict):
                result.errors.append(f"{where}: expected a mapping")
                continue
            try:
                entry = build(raw, env)
            except ValueError as exc:
                name = raw.get("conn_id") or raw.get("pool_name") or raw.get("variable_name")
                result.errors.append(f"{where}{f' ({name})' if name else ''}: {exc}")
                continue
            key = getattr(entry, "conn_id", None) or getattr(entry, "name", None) or entry.key
            if key in seen[section]:
                result.errors.append(f"{where} ({key}): duplicate of an earlier entry; ignored")
                continue
            seen[section].add(key)
            getattr(result, section).append(entry)
    return result


def read_settings(path: Path, env: dict[str, str] | None = None) -> SettingsFile:
    return parse_settings(path.read_text(), str(path), env)
