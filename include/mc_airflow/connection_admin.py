"""Create, read and delete the Airflow connection of an execution account.

``mc accounts`` (which never imports Airflow) runs this module in a subprocess with the
local deployment's environment: ``python -m mc_airflow.connection_admin get|put|delete
CONN_ID``. URIs travel on stdin/stdout, never on a command line (where ``ps`` and shell
history would show the password).

Exit codes: 0 done, 2 no such connection, 3 the connection exists with other settings.
"""

from __future__ import annotations

import argparse
import sys

from mc_airflow.connections import get_connection

EXIT_NOT_FOUND = 2
EXIT_CONFLICT = 3


def get_uri(conn_id: str) -> str | None:
    """The connection's URI as Airflow resolves it (env vars, secrets backends, metadata DB)."""
    conn = get_connection(conn_id)
    return None if conn is None else str(conn.get_uri())


def _same(conn: object, wanted: object) -> bool:
    attrs = ("conn_type", "host", "schema", "login", "password", "port", "extra")
    return all(getattr(conn, attr) == getattr(wanted, attr) for attr in attrs)


def put(conn_id: str, uri: str, description: str | None = None, replace: bool = False) -> str:
    """Store the connection in the metadata DB: ``created``, ``unchanged`` or ``updated``
    (only with ``replace``); raises ``FileExistsError`` when it exists with other settings."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    wanted = Connection(conn_id=conn_id, uri=uri, description=description)
    if wanted.conn_type not in ("postgres", "postgresql"):
        raise ValueError(f"connection {conn_id}: expected a postgres:// URI, "
                         f"got a {wanted.conn_type!r} one")
    with create_session() as session:
        conn = session.query(Connection).filter(Connection.conn_id == conn_id).one_or_none()
        if conn is None:
            session.add(wanted)
            return "created"
        if _same(conn, wanted):
            return "unchanged"
        if not replace:
            raise FileExistsError(f"connection {conn_id} already exists with other settings")
        for attr in ("conn_type", "host", "schema", "login", "port", "description"):
            setattr(conn, attr, getattr(wanted, attr))
        conn.set_password(wanted.password)
        conn.set_extra(wanted.extra)
        return "updated"


def delete(conn_id: str) -> bool:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        deleted = session.query(Connection).filter(Connection.conn_id == conn_id).delete()
    return bool(deleted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mc_airflow.connection_admin")
    parser.add_argument("action", choices=("get", "put", "delete"))
    parser.add_argument("conn_id")
    parser.add_argument("--description", default=None)
    parser.add_argument("--replace", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "get":
        uri = get_uri(args.conn_id)
        if uri is None:
            print(f"connection {args.conn_id} does not exist", file=sys.stderr)
            return EXIT_NOT_FOUND
        sys.stdout.write(uri)
        return 0
    if args.action == "delete":
        if not delete(args.conn_id):
            print(f"connection {args.conn_id} does not exist", file=sys.stderr)
            return EXIT_NOT_FOUND
        print("deleted")
        return 0
    uri = sys.stdin.read().strip()
    try:
        print(put(args.conn_id, uri, args.description, args.replace))
    except FileExistsError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFLICT
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
