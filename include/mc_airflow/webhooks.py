"""Airflow side of the delivery-status webhooks: the signing secrets encrypted with
Airflow's Fernet key (``[core] fernet_key``, the key that encrypts connection passwords;
several comma-separated keys rotate it as Airflow does), the databases, the settings.

A deployment without a Fernet key cannot store a secret: :class:`FernetBox` refuses
rather than keep it in clear (``make run`` generates one and keeps it in
``.mc/secrets/``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from mc_airflow.connections import database_url
from mc_airflow.defaults import CONTROL_CONN_ID, EXECUTION_CONN_ID
from message_center.db import engine_for


class NoFernetKey(RuntimeError):
    """Airflow has no Fernet key: secrets would be stored in clear."""


class FernetBox:
    """Encrypts and decrypts webhook secrets with Airflow's Fernet key."""

    def __init__(self) -> None:
        from airflow.models.crypto import get_fernet

        fernet: Any = get_fernet()
        if not getattr(fernet, "is_encrypted", False):
            raise NoFernetKey("Airflow has no Fernet key ([core] fernet_key / "
                              "AIRFLOW__CORE__FERNET_KEY): webhook secrets are never stored "
                              "in clear; set one (make run generates one)")
        self._fernet = fernet

    def encrypt(self, value: str) -> str:
        return str(self._fernet.encrypt(value.encode("utf-8")).decode("ascii"))

    def decrypt(self, value: str) -> str:
        return str(self._fernet.decrypt(value.encode("ascii")).decode("utf-8"))


def execution_engine() -> Engine:
    return engine_for(database_url(EXECUTION_CONN_ID))


def control_engine() -> Engine:
    return engine_for(database_url(CONTROL_CONN_ID))
