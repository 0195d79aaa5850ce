"""Alembic migrations for the two database roles: ``execution`` and ``control``.

Each role has its own script folder and version table, so one PostgreSQL database can
hold either role (or, in tests, both roles live in separate databases of one server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config

Role = Literal["execution", "control"]
ROLES: tuple[Role, ...] = ("execution", "control")
_HERE = Path(__file__).parent


def alembic_config(role: Role, url: str) -> Config:
    if role not in ROLES:
        raise ValueError(f"unknown database role {role!r}; expected one of {ROLES}")
    config = Config()
    config.set_main_option("script_location", str(_HERE / role))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["role"] = role
    return config


def upgrade(role: Role, url: str, revision: str = "head") -> None:
    """Bring the ``role`` schema at ``url`` to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(role, url), revision)


def downgrade(role: Role, url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(role, url), revision)
