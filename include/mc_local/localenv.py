"""The local deployment: where its state lives and the environment every process gets.

`mc run`, `mc test-env`, `mc airflow` and the test suite all derive their settings
from here, so the UI, the scheduler, a second terminal's CLI and the tests agree on
one embedded PostgreSQL, one Airflow home and one set of connections.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mc_local.embedded_pg import DEFAULT_PORT, EmbeddedPostgres

PROJECT_ROOT = Path(os.environ.get("MC_PROJECT_ROOT", Path(__file__).resolve().parents[2]))
STATE_DIR = Path(os.environ.get("MC_STATE_DIR", PROJECT_ROOT / ".mc"))
ADMIN_USER = "admin"
USERS_VARIABLE = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"
"""Airflow's own user list (``name:role,...``); ``make run`` keeps ``admin:admin`` unless set."""
SIMPLE_AUTH_ROLES = ("viewer", "user", "op", "admin")
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
JWT_SECRET_BYTES = 64
"""Airflow signs API tokens with HS512: a key of at least 64 bytes (RFC 7518 3.2)."""


def parse_users(spec: str) -> list[tuple[str, str]]:
    """``admin:admin,alice:viewer,app:user`` -> [(name, role), ...]; a bad entry is a
    ValueError naming it (roles: viewer, user, op, admin; a third ``:team|team`` part is
    passed to Airflow as is)."""
    users: list[tuple[str, str]] = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        role = rest.partition(":")[0].strip().lower()
        if not _USER_NAME.fullmatch(name.strip()):
            raise ValueError(f"{USERS_VARIABLE}: bad user name in {entry!r} (letters, digits, "
                             "'.', '_', '@', '-'; at most 64)")
        if role not in SIMPLE_AUTH_ROLES:
            raise ValueError(f"{USERS_VARIABLE}: {entry!r} needs a role, one of "
                             f"{', '.join(SIMPLE_AUTH_ROLES)} (name:role)")
        if any(name.strip() == known for known, _ in users):
            raise ValueError(f"{USERS_VARIABLE}: user {name.strip()!r} is listed twice")
        users.append((name.strip(), role))
    if not users:
        raise ValueError(f"{USERS_VARIABLE} lists no user (expected e.g. admin:admin,app:user)")
    return users


@dataclass(frozen=True)
class Deployment:
    """One named deployment (``run`` for the demo, ``test`` for the suite) on one server."""

    profile: str = "run"
    api_port: int = 8080
    smtp_port: int = 8025

    @property
    def db_prefix(self) -> str:
        return "" if self.profile == "run" else f"{self.profile}_"

    @property
    def server_url(self) -> str:
        """``MC_POSTGRES_URL`` when given (an existing server), else the embedded one."""
        return os.environ.get("MC_POSTGRES_URL") or self.embedded.url()

    @property
    def uses_embedded(self) -> bool:
        return not os.environ.get("MC_POSTGRES_URL")

    @property
    def embedded(self) -> EmbeddedPostgres:
        port = int(os.environ.get("MC_EMBEDDED_PG_PORT", DEFAULT_PORT))
        return EmbeddedPostgres(STATE_DIR / "postgres", port)

    def database(self, role: str) -> str:
        names = {
            "airflow": "airflow",
            "control": "mc_control",
            "execution": "mc_execution",
            "execution2": "mc_execution2",
        }
        return self.db_prefix + names[role]

    def database_url(self, role: str) -> str:
        parts = urlsplit(self.server_url)
        return parts._replace(path="/" + self.database(role)).geturl()

    @property
    def airflow_home(self) -> Path:
        return STATE_DIR / ("airflow" if self.profile == "run" else f"airflow-{self.profile}")

    @property
    def mail_dir(self) -> Path:
        """Where the local SMTP sink keeps every message it receives (one .eml each)."""
        return STATE_DIR / ("mail" if self.profile == "run" else f"mail-{self.profile}")

    @property
    def session_file(self) -> Path:
        """Where ``mc run`` records the processes it runs (``mc ps``, ``mc stop``)."""
        return STATE_DIR / "sessions" / f"{self.profile}.json"

    def _secret(self, name: str, nbytes: int = 24) -> str:
        """A random secret generated once per deployment and kept out of the repository
        (generated again if an older one is shorter than ``nbytes`` asks)."""
        path = STATE_DIR / "secrets" / f"{self.profile}-{name}"
        minimum = len(secrets.token_urlsafe(nbytes))
        if not path.exists() or len(path.read_text().strip()) < minimum:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(nbytes))
            path.chmod(0o600)
        return path.read_text().strip()

    def vapid_keys(self) -> tuple[str, str]:
        """The Web Push channel's VAPID key pair (private, public), made once per
        deployment and kept in ``.mc/secrets/<profile>-webpush-vapid`` (owner only): a
        new pair would orphan every subscription made with the old public key."""
        from message_center.delivery.webpush import (
            b64url,
            generate_vapid_keys,
            load_vapid_private_key,
            private_key_text,
            public_key_bytes,
        )

        path = STATE_DIR / "secrets" / f"{self.profile}-webpush-vapid"
        try:
            key = load_vapid_private_key(path.read_text())
        except (OSError, ValueError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(generate_vapid_keys().private_key)
            path.chmod(0o600)
            key = load_vapid_private_key(path.read_text())
        return private_key_text(key), b64url(public_key_bytes(key))

    @property
    def webpush_port(self) -> int:
        """The local push service's port (``MC_WEBPUSH_PORT``, default 8027)."""
        return int(os.environ.get("MC_WEBPUSH_PORT") or 8027)

    def fernet_key(self) -> str:
        """Airflow's Fernet key (it encrypts connection passwords and the webhook
        secrets): ``$AIRFLOW__CORE__FERNET_KEY`` when set, else the one kept in
        ``.mc/secrets/fernet-key``, shared by every deployment of the checkout (a secret
        encrypted on the control instance is read by every execution instance). Made once:
        the key Airflow already wrote into this profile's ``airflow.cfg`` (so what it
        encrypted stays readable), or a new one."""
        given = os.environ.get("AIRFLOW__CORE__FERNET_KEY", "").strip()
        if given:
            return given
        path = STATE_DIR / "secrets" / "fernet-key"
        if not path.exists() or len(path.read_text().strip()) != 44:
            key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
            config = self.airflow_home / "airflow.cfg"
            if config.exists():
                found = re.search(r"^fernet_key\s*=\s*(\S{44})\s*$", config.read_text(),
                                  re.MULTILINE)
                key = found.group(1) if found else key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(key)
            path.chmod(0o600)
        return path.read_text().strip()

    def users_spec(self) -> str:
        """The simple auth manager's users: ``$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS``
        when set, else one admin."""
        return os.environ.get(USERS_VARIABLE, "").strip() or f"{ADMIN_USER}:admin"

    def users(self) -> list[tuple[str, str]]:
        """(name, role) of every user of this deployment (ValueError for a bad list)."""
        return parse_users(self.users_spec())

    def password(self, user: str) -> str:
        """``user``'s password, generated once: ``.mc/secrets/<profile>-<user>-password``."""
        if not _USER_NAME.fullmatch(user):
            raise ValueError(f"bad user name {user!r}")
        return self._secret(f"{user}-password")

    def admin_password(self) -> str:
        return self.password(ADMIN_USER)

    def write_password_file(self) -> Path:
        """Airflow's simple auth manager password file, with every listed user's password."""
        path = self.airflow_home / "simple_auth_manager_passwords.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({name: self.password(name) for name, _ in self.users()}))
        path.chmod(0o600)
        return path

    def pg_parts(self) -> dict[str, str]:
        parts = urlsplit(self.server_url)
        return {
            "MC_PG_HOST": parts.hostname or "127.0.0.1",
            "MC_PG_PORT": str(parts.port or 5432),
            "MC_PG_USER": parts.username or "postgres",
            "MC_PG_PASSWORD": parts.password or "",
            "MC_DB_PREFIX": self.db_prefix,
            "MC_SMTP_PORT": str(self.smtp_port),
        }

    def environment(self) -> dict[str, str]:
        """Every variable an Airflow process of this deployment needs."""
        airflow_db = self.database_url("airflow").replace("postgresql://", "postgresql+psycopg2://")
        env = {
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "16",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            USERS_VARIABLE: self.users_spec(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                self.airflow_home / "simple_auth_manager_passwords.json"
            ),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
                f"http://127.0.0.1:{self.api_port}/execution/"
            ),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt", JWT_SECRET_BYTES),
            "AIRFLOW__API__SECRET_KEY": self._secret("api"),
            "AIRFLOW__CORE__FERNET_KEY": self.fernet_key(),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # Airflow standalone starts its components as `airflow ...`: use this venv's.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "")]),
            "MC_DEPLOYMENT_PROFILE": self.profile,
            "MC_MAIL_DIR": str(self.mail_dir),
        }
        # The Web Push channel: its keys (the webpush_default connection reads them), and
        # the local push service, plain http on loopback, allowed as an endpoint host.
        private, public = self.vapid_keys()
        env["MC_WEBPUSH_VAPID_PRIVATE_KEY"] = os.environ.get("MC_WEBPUSH_VAPID_PRIVATE_KEY",
                                                             private)
        if env["MC_WEBPUSH_VAPID_PRIVATE_KEY"] == private:
            env["MC_WEBPUSH_VAPID_PUBLIC_KEY"] = public
        env["MC_WEBPUSH_INSECURE_HOSTS"] = os.environ.get(
            "MC_WEBPUSH_INSECURE_HOSTS", f"127.0.0.1:{self.webpush_port}")
        env.update(self.pg_parts())
        return env


#: ``execution2`` names the second execution instance beside ``make run``;
#: ``<base>_execution2`` the one beside the deployment ``<base>``.
SECOND_EXECUTION_SUFFIX = "execution2"
SECOND_EXECUTION_API_PORT_ENV = "MC_EXECUTION2_API_PORT"
ROLES_ENV = "MC_DEPLOYMENT_ROLES"


def is_second_execution(name: str) -> bool:
    return name == SECOND_EXECUTION_SUFFIX or name.endswith(f"_{SECOND_EXECUTION_SUFFIX}")


@dataclass(frozen=True)
class SecondExecution(Deployment):
    """The second execution deployment next to the deployment ``base_profile``
    (``make run-execution2``, :mod:`mc_local.execution2`): its own Airflow and execution
    database, the same PostgreSQL server and SMTP sink."""

    base_profile: str = "run"

    @property
    def db_prefix(self) -> str:
        return "" if self.base_profile == "run" else f"{self.base_profile}_"

    def base(self) -> Deployment:
        return deployment(self.base_profile)

    def database(self, role: str) -> str:
        names = {"airflow": "airflow_execution2", "execution": "mc_execution2"}
        if role not in names:
            raise ValueError(f"the second execution instance has no {role!r} database")
        return self.db_prefix + names[role]

    @property
    def airflow_home(self) -> Path:
        return STATE_DIR / f"airflow-{self.profile.replace('_', '-')}"

    @property
    def mail_dir(self) -> Path:
        return self.base().mail_dir

    def pg_parts(self) -> dict[str, str]:
        parts = super().pg_parts()
        parts["MC_DB_PREFIX"] = self.db_prefix
        return parts

    def environment(self) -> dict[str, str]:
        env = super().environment()
        execution = self.database_url("execution").replace("postgresql://", "postgres://", 1)
        env.update({
            ROLES_ENV: "execution",
            # This deployment's own execution database is its `mc_execution`.
            "AIRFLOW_CONN_MC_EXECUTION": execution,
            # Beside `make run` on one machine: log servers on other ports.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.api_port + 3),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.api_port + 4),
        })
        return env


def second_execution(profile: str) -> SecondExecution:
    """``execution2`` (next to ``make run``) or ``<base>_execution2`` (next to ``<base>``)."""
    base = ("run" if profile == SECOND_EXECUTION_SUFFIX
            else profile.removesuffix(f"_{SECOND_EXECUTION_SUFFIX}"))
    first = deployment(base)
    default_port = 8090 if base == "run" else first.api_port + 10
    return SecondExecution(profile, int(os.environ.get(SECOND_EXECUTION_API_PORT_ENV,
                                                       default_port)),
                           first.smtp_port, base_profile=base)


def deployment(profile: str | None = None) -> Deployment:
    """The deployment named by ``profile`` or ``MC_DEPLOYMENT_PROFILE`` (default ``run``)."""
    name = profile or os.environ.get("MC_DEPLOYMENT_PROFILE", "run")
    if is_second_execution(name):  # the second execution instance (make run-execution2)
        return second_execution(name)
    if name == "run":
        return Deployment("run", int(os.environ.get("MC_API_PORT", 8080)),
                          int(os.environ.get("MC_SMTP_PORT", 8025)))
    return Deployment(name, int(os.environ.get("MC_API_PORT", 18080)),
                      int(os.environ.get("MC_SMTP_PORT", 18025)))
