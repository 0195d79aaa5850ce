"""Reading Airflow connections (``mc_airflow.connections``, the one reader of tasks, pages,
push APIs and ``mc accounts``): Airflow's own lookup, here from ``AIRFLOW_CONN_*`` and the
test deployment's metadata database, and the cache the API server keeps."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowNotFoundException

from mc_airflow.connections import (
    ConnectionCache,
    database_url,
    get_connection,
    require_connection,
)


def test_database_url_of_a_postgres_connection(test_deployment):
    url = database_url("mc_execution")
    assert url.startswith(("postgres://", "postgresql://"))
    assert url.rsplit("/", 1)[1] == test_deployment.database_url("execution").rsplit("/", 1)[1]


def test_database_url_refuses_another_type_and_names_it(test_deployment):
    with pytest.raises(ValueError, match="connection 'smtp_default' is of type 'smtp', "
                                         "not postgres"):
        database_url("smtp_default")


def test_a_missing_connection_is_none_or_an_error_naming_it(test_deployment):
    assert get_connection("mc_no_such_connection") is None
    with pytest.raises(AirflowNotFoundException, match="mc_no_such_connection"):
        require_connection("mc_no_such_connection")
    with pytest.raises(AirflowNotFoundException, match="mc_no_such_connection"):
        database_url("mc_no_such_connection")


def _define(monkeypatch, conn_id: str, host: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "postgres", "host": host, "schema": "db", "login": "u"}))


def test_the_cache_keeps_a_connection_until_told_it_changed(test_deployment, monkeypatch):
    cache = ConnectionCache(3600)
    _define(monkeypatch, "mc_cached", "first.example")
    assert "first.example" in (cache.url("mc_cached") or "")
    _define(monkeypatch, "mc_cached", "second.example")
    assert "first.example" in (cache.url("mc_cached") or "")  # kept for the ttl
    cache.forget("mc_cached")
    assert "second.example" in (cache.url("mc_cached") or "")


def test_the_cache_remembers_a_missing_connection_unless_told_not_to(test_deployment,
                                                                     monkeypatch):
    remembering, asking = ConnectionCache(3600), ConnectionCache(3600, remember_missing=False)
    assert remembering.get("mc_later") is None and asking.get("mc_later") is None
    _define(monkeypatch, "mc_later", "later.example")
    assert remembering.get("mc_later") is None  # the pages: a missing one is kept too
    assert "later.example" in (asking.url("mc_later") or "")  # the push API sees it at once
    remembering.forget()
    assert remembering.get("mc_later") is not None
