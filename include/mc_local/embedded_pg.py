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
PORT_VARIABLE = "MC_EMBEDDED_PG_PORT"
SYSTEM_USER = "pgserver"  # postgres refuses to run as root


class NotOurServer(RuntimeError):
    """A PostgreSQL on our port whose data directory is not ours (another checkout's)."""


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
        """A server answers on our port (ours or not: see :meth:`serving_dir`)."""
        try:
            psycopg2.connect(self.url(), connect_timeout=1).close()
        except psycopg2.OperationalError:
            return False
        return True

    def serving_dir(self) -> Path | None:
        """The data directory of the server answering on our port (None: nobody)."""
        try:
            conn = psycopg2.connect(self.url(), connect_timeout=1)
        except psycopg2.OperationalError:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW data_directory")
                row = cur.fetchone()
        except psycopg2.Error:  # not allowed to ask: certainly not our trust-auth server
            return Path("<unknown: not this checkout's embedded server>")
        finally:
            conn.close()
        return Path(str(row[0])) if row else None

    def owns_port(self) -> bool:
        """The server on our port runs on our data directory."""
        serving = self.serving_dir()
        return serving is not None and _same_dir(serving, self.data_dir)

    def check_port(self) -> bool:
        """True when our server already runs, False when the port is free; raises
        :class:`NotOurServer` when another data directory (another checkout) serves it."""
        serving = self.serving_dir()
        if serving is None:
            return False
        if _same_dir(serving, self.data_dir):
            return True
        raise NotOurServer(
            f"port {self.port} is served by a PostgreSQL whose data directory is {serving}, "
            f"not this checkout's {self.data_dir}. Stop that server (`mc stop` in its "
            f"checkout) or give this checkout another port: export {PORT_VARIABLE}=<free port>")

    def start(self) -> None:
        """Initialise the cluster on first use and start it unless it already runs;
        refuses (:class:`NotOurServer`) a server of another data directory on the port."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.check_port():
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

    def running(self) -> bool:
        """Our server's postmaster is alive (whether or not it accepts connections yet)."""
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        result = subprocess.run([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "status"],
                                capture_output=True, **self._run_as())  # type: ignore[arg-type]
        return result.returncode == 0

    def stop(self) -> bool:
        """Stop our server (fast shutdown) if it runs; True if it was running."""
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        subprocess.run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            capture_output=True, **self._run_as(),  # type: ignore[arg-type]
        )
        return True


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


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
