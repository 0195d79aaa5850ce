"""The Celery settings' warm-shutdown hook, on real processes shaped like a Celery worker
(main process -> pool process -> task process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A "task" that records SIGTERM (like StopSignal) and stops.
TASK = """
import signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print("ready", flush=True)
deadline = time.monotonic() + 30
while not stop and time.monotonic() < deadline:
    time.sleep(0.01)
print("stopped cleanly" if stop else "timed out", flush=True)
"""
# A "pool process": starts the task, relays its lines, exits with it.
POOL = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {TASK!r}], stdout=subprocess.PIPE, text=True)
for line in child.stdout:
    print(line.strip(), flush=True)
sys.exit(child.wait())
"""
# The worker's main process: runs the hook as Celery would on a cold, then a warm shutdown.
MAIN = f"""
import json, os, subprocess, sys, time
from mc_airflow import celery_config
pool = subprocess.Popen([sys.executable, "-c", {POOL!r}], stdout=subprocess.PIPE, text=True)
assert pool.stdout.readline().strip() == "ready"
tasks = celery_config.task_processes(os.getpid())
celery_config._on_worker_shutting_down(sender="w1@host", sig="SIGQUIT", how="Cold", exitcode=1)
time.sleep(0.5)
after_cold = celery_config.task_processes(os.getpid())
started = time.monotonic()
celery_config._on_worker_shutting_down(sender="w1@host", sig="SIGTERM", how="Warm", exitcode=0)
line = pool.stdout.readline().strip()
print(json.dumps({{"pool": pool.pid, "tasks": tasks, "after_cold": after_cold, "line": line,
                  "seconds": time.monotonic() - started, "pool_exit": pool.wait(10)}}))
"""


@pytest.mark.fast
def test_warm_shutdown_asks_task_processes_to_stop_their_loop():
    result = subprocess.run([sys.executable, "-c", MAIN], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["tasks"]) == 1 and report["tasks"][0] != report["pool"]  # grandchild
    assert report["after_cold"] == report["tasks"]  # a cold shutdown: left alone
    assert report["line"] == "stopped cleanly"  # the warm one: SIGTERM, clean stop
    assert report["seconds"] < 5
    assert report["pool_exit"] == 0  # the pool process itself was not signalled


@pytest.mark.fast
def test_celery_config_is_airflows_default_plus_the_hook():
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    from mc_airflow.celery_config import CELERY_CONFIG

    assert CELERY_CONFIG == DEFAULT_CELERY_CONFIG
    assert CELERY_CONFIG["task_acks_late"] is True
