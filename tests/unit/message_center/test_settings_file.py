"""airflow_settings.yaml parsing: good file, bad entries named by position, env expansion."""

from __future__ import annotations

import pytest

from mc_local.localenv import PROJECT_ROOT
from message_center.settings_file import parse_settings, read_settings

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`


def test_project_settings_file_is_valid():
    settings = read_settings(PROJECT_ROOT / "airflow_settings.yaml",
                             env={"MC_PG_PORT": "5432", "MC_DB_PREFIX": "test_"})
    assert settings.errors == []
    ids = {conn.conn_id for conn in settings.connections}
    assert {"mc_execution", "mc_control", "smtp_default"} <= ids
    execution = next(c for c in settings.connections if c.conn_id == "mc_execution")
    assert (execution.port, execution.schema) == (5432, "test_mc_execution")


BAD = """
airflow:
  connections:
    - conn_id: good
      conn_type: postgres
      conn_host: ${DB_HOST}
    - conn_type: postgres
    - conn_id: badport
      conn_type: postgres
      conn_port: eighty
    - conn_id: good
      conn_type: http
    - conn_id: typo
      conn_type: http
      conn_hots: x
  pools:
    - pool_name: p
      pool_slot: many
  variables:
    - variable_name: v
      variable_value: {a: 1}
  colours: []
"""


def test_bad_entries_are_named_and_good_ones_kept():
    settings = parse_settings(BAD, "s.yaml", env={"DB_HOST": "db.local"})
    assert [c.conn_id for c in settings.connections] == ["good"]
    assert settings.connections[0].host == "db.local"
    assert settings.variables[0].value == '{"a": 1}'
    errors = "\n".join(settings.errors)
    assert "s.yaml: airflow.connections[1]: conn_id must be" in errors
    assert "airflow.connections[2] (badport): conn_port must be a whole number" in errors
    assert "airflow.connections[3] (good): duplicate" in errors
    assert "airflow.connections[4] (typo): unknown field(s) ['conn_hots']" in errors
    assert "airflow.pools[0] (p): pool_slot must be a whole number" in errors
    assert "airflow.colours: unknown section" in errors
    assert len(settings.errors) == 6


def test_unset_variable_without_default_is_an_error():
    settings = parse_settings(
        "airflow:\n  connections:\n    - {conn_id: a, conn_type: http, conn_host: '${NOPE}'}\n",
        env={})
    assert settings.connections == []
    assert "environment variable NOPE is not set" in settings.errors[0]


def test_not_yaml():
    assert "not valid YAML" in parse_settings("airflow: [", env={}).errors[0]
