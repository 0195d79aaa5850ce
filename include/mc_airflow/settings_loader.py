"""Applies a parsed ``airflow_settings.yaml`` to the Airflow metadata database, idempotently."""

from __future__ import annotations

import sys
from pathlib import Path

from message_center.settings_file import SettingsFile, read_settings


def apply_settings(settings: SettingsFile) -> dict[str, int]:
    """Create or update every entry; an unchanged entry is left alone. Returns counts."""
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session

    counts = {"created": 0, "updated": 0, "unchanged": 0}

    def count(created: bool, changed: bool) -> None:
        counts["created" if created else "updated" if changed else "unchanged"] += 1

    def _unreadable(conn: Connection, attr: str) -> bool:
        """Encrypted with another Fernet key (the key changed): written again from the
        settings file, which holds the value."""
        from cryptography.fernet import InvalidToken

        try:
            getattr(conn, attr)
        except InvalidToken:
            return True
        return False

    with create_session() as session:
        for entry in settings.connections:
            query = session.query(Connection).filter(Connection.conn_id == entry.conn_id)
            conn = query.one_or_none()
            created = conn is None
            if created:
                conn = Connection(conn_id=entry.conn_id)
                session.add(conn)
            wanted = {
                "conn_type": entry.conn_type, "host": entry.host, "schema": entry.schema,
                "login": entry.login, "port": entry.port, "description": entry.description,
            }
            changed = created
            for attr, value in wanted.items():
                if getattr(conn, attr) != value:
                    setattr(conn, attr, value)
                    changed = True
            if _unreadable(conn, "password") or conn.password != entry.password:
                conn.set_password(entry.password)
                changed = True
            if _unreadable(conn, "extra") or conn.extra != entry.extra:
                conn.set_extra(entry.extra)
                changed = True
            count(created, changed)
        for pool in settings.pools:
            row = session.query(Pool).filter(Pool.pool == pool.name).one_or_none()
            created = row is None
            if created:
                row = Pool(pool=pool.name, slots=pool.slots, description=pool.description,
                           include_deferred=pool.include_deferred)
                session.add(row)
                count(True, True)
                continue
            changed = (row.slots, row.description, row.include_deferred) != (
                pool.slots, pool.description, pool.include_deferred)
            row.slots, row.description = pool.slots, pool.description
            row.include_deferred = pool.include_deferred
            count(False, changed)
        for variable in settings.variables:
            row = session.query(Variable).filter(Variable.key == variable.key).one_or_none()
            if row is None:
                session.add(Variable(key=variable.key, val=variable.value,
                                     description=variable.description))
                count(True, True)
                continue
            changed = row.val != variable.value or row.description != variable.description
            if changed:
                row.val, row.description = variable.value, variable.description
            count(False, changed)
    return counts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "airflow_settings.yaml")
    settings = read_settings(path)
    for error in settings.errors:
        print(f"error: {error}", file=sys.stderr)
    counts = apply_settings(settings)
    print(f"{path}: {counts['created']} created, {counts['updated']} updated, "
          f"{counts['unchanged']} unchanged, {len(settings.errors)} rejected")
    return 1 if settings.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
