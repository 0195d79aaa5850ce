"""The local deployment owns what it starts, and only that: a port another program holds
is named with the variable that moves it; an embedded PostgreSQL port served by another
checkout's data directory is refused; `mc stop` stops this checkout's server only.
Real sockets, real PostgreSQL servers."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

from mc_local import launcher
from mc_local.cli import main as mc
from mc_local.embedded_pg import EmbeddedPostgres, NotOurServer
from mc_local.localenv import Deployment


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.fast
def test_a_port_in_use_is_named_with_its_variable(busy_port):
    free = free_port()
    problems = launcher.port_problems({"MC_API_PORT": free, "MC_SMTP_PORT": busy_port})
    assert problems == [f"port {busy_port} (MC_SMTP_PORT) is already in use by another "
                        "program (another `make run`?): stop it, or move this deployment "
                        "with MC_SMTP_PORT=<free port>"]
    assert launcher.port_problems({"MC_API_PORT": free, "MC_SMS_PORT": free}) == [
        f"MC_SMS_PORT and MC_API_PORT are both {free}: give MC_SMS_PORT another port"]
    assert launcher.port_problems({"MC_API_PORT": free}) == []


@pytest.mark.fast
def test_make_run_refuses_to_start_on_a_taken_port(busy_port, monkeypatch):
    monkeypatch.setenv("MC_SMS_PORT", str(free_port()))
    with pytest.raises(SystemExit, match=rf"port {busy_port} \(MC_API_PORT\) is already in use"):
        launcher.run(Deployment("ports-check", api_port=busy_port, smtp_port=free_port()))


@pytest.fixture
def checkouts() -> Iterator[Path]:
    """A short directory for two checkouts' data: PostgreSQL puts its Unix socket in the
    data directory, and a socket path has at most 107 bytes (pytest's ``tmp_path`` under a
    pytest-xdist worker is deeper than that allows)."""
    path = Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_server(checkouts: Path):
    server = EmbeddedPostgres(checkouts / "checkout-a" / ".mc" / "postgres", free_port())
    server.start()
    yield server
    server.stop()


def test_a_server_of_another_checkout_on_the_port_is_refused(own_server, checkouts):
    other = EmbeddedPostgres(checkouts / "checkout-b" / ".mc" / "postgres", own_server.port)
    with pytest.raises(NotOurServer) as refused:
        other.start()
    message = str(refused.value)
    assert str(own_server.data_dir) in message and str(other.data_dir) in message
    assert "MC_EMBEDDED_PG_PORT" in message and str(own_server.port) in message
    assert not (other.data_dir / "PG_VERSION").exists()  # nothing initialised there
    assert own_server.owns_port() and not other.owns_port()
    own_server.start()  # its own server: fine, nothing to do


def test_mc_stop_stops_this_checkouts_server_only(own_server, checkouts, monkeypatch, capsys):
    monkeypatch.delenv("MC_POSTGRES_URL", raising=False)
    monkeypatch.setenv("MC_EMBEDDED_PG_PORT", str(own_server.port))
    monkeypatch.setattr("mc_local.localenv.STATE_DIR", checkouts / "checkout-b" / ".mc")
    assert mc(["stop"]) == 1  # another checkout's server on our port: left alone
    assert "another checkout's PostgreSQL" in capsys.readouterr().out
    assert own_server.is_ready()
    monkeypatch.setattr("mc_local.localenv.STATE_DIR", own_server.data_dir.parent)
    assert mc(["stop"]) == 0
    assert capsys.readouterr().out.startswith(
        f"[mc] stopped the embedded PostgreSQL on port {own_server.port}")
    assert not own_server.is_ready()
    assert mc(["stop"]) == 0
    assert "no embedded PostgreSQL of this checkout is running" in capsys.readouterr().out
