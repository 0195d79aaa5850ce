"""Schema upgrades outside the local tooling (a deployment job, an init container):

    python -m message_center.migrations upgrade execution postgresql://... --cell-id 0
    python -m message_center.migrations upgrade control postgresql://...

Idempotent. ``--cell-id`` (execution databases) records the instance's cell id (0-255,
the high byte of every event id) the first time; a database that already has another
cell id is an error naming both, never changed.
"""

from __future__ import annotations

import argparse
import sys

from message_center.migrations import ROLES, upgrade


def set_cell_id(url: str, cell_id: int) -> int:
    """Record the cell id once; returns the one the database has."""
    from sqlalchemy import text

    from message_center.db import engine_for

    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO mc_instance (cell_id) VALUES (:c) "
                              "ON CONFLICT DO NOTHING"), {"c": cell_id})
            return int(conn.execute(text("SELECT cell_id FROM mc_instance")).scalar_one())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m message_center.migrations",
                                     description="Upgrade a Message Center database schema.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="bring a database to the newest schema (idempotent)")
    up.add_argument("role", choices=ROLES)
    up.add_argument("url", help="SQLAlchemy URL of the database (postgresql://...)")
    up.add_argument("--cell-id", type=int, default=None,
                    help="execution database: its cell id (0-255), recorded the first time")
    args = parser.parse_args(argv)
    if args.cell_id is not None and (args.role != "execution" or not 0 <= args.cell_id <= 255):
        parser.error("--cell-id is for execution databases, from 0 to 255")
    upgrade(args.role, args.url)
    if args.cell_id is not None:
        cell = set_cell_id(args.url, args.cell_id)
        if cell != args.cell_id:
            print(f"error: the database already has cell id {cell}, not {args.cell_id}",
                  file=sys.stderr)
            return 1
    print(f"{args.role} schema up to date" +
          (f" (cell id {args.cell_id})" if args.cell_id is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
