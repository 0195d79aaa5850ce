"""``mc tracking-server`` as ``make run`` starts it: a real process on its port, with the
deployment's key; an unknown token gets the plain 404, a route it does not have too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port

from mc_local import launcher

MC = str(Path(sys.executable).parent / "mc")


def test_the_tracking_server_runs_as_its_own_process(test_deployment):
    port = free_port()
    process = subprocess.Popen([MC, "tracking-server", "--profile", test_deployment.profile,
                                "--port", str(port)], env=os.environ.copy(),
                               start_new_session=True)
    try:
        answer = None
        for _ in range(300):
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/o/not-a-token")
                break
            except httpx.TransportError:
                assert process.poll() is None, "the tracking server stopped"
                time.sleep(0.1)
        assert answer is not None and answer.status_code == 404
        assert answer.text == "Not found\n"
        assert httpx.get(f"http://127.0.0.1:{port}/api/v2/version").status_code == 404
        assert "server" not in answer.headers
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_make_run_supervises_it_on_its_own_port(test_deployment, monkeypatch):
    # By default the links point at the deployment's own port (an earlier test of the
    # worker may have exported another deployment's MC_TRACKING_BASE_URL).
    monkeypatch.delenv("MC_TRACKING_BASE_URL", raising=False)
    env = {**os.environ, **test_deployment.environment()}
    component = launcher.tracking_component(test_deployment, env)
    assert component.name == "tracking-server"
    assert component.argv[-2:] == ["--port", str(test_deployment.tracking_port)]
    assert launcher.deployment_ports(test_deployment)["MC_TRACKING_PORT"] == \
        test_deployment.tracking_port
    assert env["MC_TRACKING_BASE_URL"] == f"http://127.0.0.1:{test_deployment.tracking_port}"
    assert env["MC_TRACKING_KEYS"]  # generated once for the deployment
