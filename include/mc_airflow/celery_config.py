"""Celery settings of a Message Center deployment on ``CeleryExecutor``.

Point Airflow at it with ``[celery] celery_config_options =
mc_airflow.celery_config.CELERY_CONFIG`` (``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS``);
``MC_EXECUTOR=celery make run`` does. It is Airflow's default Celery configuration plus
one behaviour the real-time DAG needs:

**Warm shutdown ends the real-time loops.** ``SIGTERM`` to a Celery worker is a *warm
shutdown*: the worker takes no new task and waits for the running ones to finish. A
real-time shard (``rtEventsProcessing``) loops for ``loop_seconds`` (one hour by
default), so the worker would wait up to an hour, and a platform that stops it sooner
(Kubernetes' grace period, ``docker stop``) kills it mid-delivery. When the warm shutdown
starts, the worker's main process therefore sends ``SIGTERM`` to every task process it
runs: a shard loop finishes the message in hand, records it, gives its other events back
to the queue and ends successfully (``mc_airflow.delivery.StopSignal``); the next run's
shard on another worker picks them up. Other tasks are not interrupted by it (Airflow's
task runner only calls ``on_kill()``, a no-op for them), so they run to completion as a
warm shutdown promises.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_shutting_down

log = logging.getLogger(__name__)

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)


def task_processes(worker_pid: int) -> list[int]:
    """Pids of the task processes a Celery worker runs: the children of its pool
    processes (each pool process is an Airflow supervisor while it runs a task)."""
    import psutil

    try:
        pool = psutil.Process(worker_pid).children()
    except psutil.Error:
        return []
    pids: list[int] = []
    for process in pool:
        try:
            pids.extend(child.pid for child in process.children())
        except psutil.Error:
            continue
    return sorted(pids)


def stop_task_loops(worker_pid: int) -> list[int]:
    """Ask every task process of the worker to stop its loop (``SIGTERM``); returns the
    pids signalled."""
    signalled = []
    for pid in task_processes(worker_pid):
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return signalled


@worker_shutting_down.connect
def _on_worker_shutting_down(sender: Any = None, sig: Any = None, how: Any = None,
                             exitcode: Any = None, **kwargs: Any) -> None:
    if str(how).lower() != "warm":
        return
    pids = stop_task_loops(os.getpid())
    log.warning("warm shutdown of %s: asked %d task process(es) to finish their loop "
                "(SIGTERM): %s", sender, len(pids), pids)
