"""Airflow connections turned into the plain settings the domain package takes."""

from __future__ import annotations


def database_url(conn_id: str) -> str:
    """The SQLAlchemy URL of a postgres connection (secrets stay in the connection)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    if conn.conn_type not in ("postgres", "postgresql"):
        raise ValueError(f"connection {conn_id!r} is of type {conn.conn_type!r}, not postgres")
    return str(conn.get_uri())
