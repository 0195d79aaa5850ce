"""An embedded PostgreSQL for the default set-up, so a fresh machine needs no server.

It uses the PostgreSQL binaries shipped in the ``pgserver`` wheel, keeps its data in a
git-ignored folder of the project and listens on loopback TCP (not only a socket) so
Airflow, psql and every test reach it with an ordinary URL.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg2

DEFAULT_PORT = 54329
SYSTEM_USER = "pgserver"  # postgres refuses to run as root


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int = DEFAULT_PORT

    @property
    def _bin(self) -> Path:
        with warnings.catch_warnings():  # pgserver warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH

        return POSTGRES_BIN_PATH

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        import stat

        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(self._bin)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self._bin, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self._bin.parent / "lib", read)
        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        return {"user": SYSTEM_USER}

    def is_ready(self) -> bool:
        try:
            psycopg2.connect(self.url(), connect_timeout=1).close()
        except psycopg2.OperationalError:
            return False
        return True

    def start(self) -> None:
        """Initialise the cluster on first use and start it unless it already runs."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.is_ready():
            return
        run_as = self._run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [str(self._bin / "initdb"), "-D", str(self.data_dir), "--auth=trust",
                 "--encoding=utf8", "--locale=C", "-U", "postgres"],
                check=True, capture_output=True, **run_as,  # type: ignore[arg-type]
            )
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} "
            "-c max_connections=300 -c shared_buffers=256MB -c fsync=on"
        )
        log = self.data_dir / "server.log"
        result = subprocess.run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
             "-o", options, "-l", str(log), "start"],
            capture_output=True, text=True, **run_as,  # type: ignore[arg-type]
        )
        if result.returncode != 0 and not self.is_ready():
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"embedded PostgreSQL did not start on port {self.port}: "
                f"{result.stderr.strip()}\n{tail}"
            )
        for _ in range(100):
            if self.is_ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"embedded PostgreSQL on port {self.port} is not accepting connections")

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        subprocess.run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            capture_output=True, **self._run_as(),  # type: ignore[arg-type]
        )


def ensure_database(server_url: str, name: str) -> None:
    """Create database ``name`` on the server of ``server_url`` unless it exists."""
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
