"""``mc tracking-server``: the tracking server of a local deployment (or of any execution
database), served by uvicorn. ``make run`` starts it, supervised, on ``MC_TRACKING_PORT``.

The keys and the base URL come from the deployment (``MC_TRACKING_KEYS``,
``MC_TRACKING_BASE_URL``, generated and local by default), so the messages the deployment
sends and the server that answers their URLs agree.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mc_local.localenv import Deployment, deployment
from message_center.tracking import tokens
from message_center.tracking_server import ServerSettings, create_app


def settings(deployment: Deployment, database_url: str | None = None) -> ServerSettings:
    env = {**os.environ, **deployment.environment()}
    config = tokens.TrackingConfig(env["MC_TRACKING_BASE_URL"].rstrip("/"),
                                   tokens.Signer(tokens.keys_from_text(env["MC_TRACKING_KEYS"])))
    return ServerSettings.from_env(database_url or deployment.database_url("execution"),
                                   config, env)


#: Worker processes of ``mc tracking-server`` (``--workers``; default 1).
WORKERS_ENV = "MC_TRACKING_WORKERS"
MAX_WORKERS = 32
_SERVE_ENV = "MC_TRACKING_SERVE"


def workers_from_env(environ: dict[str, str] | None = None) -> int:
    raw = (os.environ if environ is None else environ).get(WORKERS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_WORKERS:
        raise ValueError(f"{WORKERS_ENV} must be a whole number from 1 to {MAX_WORKERS}; "
                         f"got {raw!r}")
    return int(raw)


def app_from_environment() -> Any:
    """The app of one worker process (``--workers`` > 1: uvicorn starts the workers,
    each builds its app, with its own hit writer, cache and rate-limit buckets)."""
    spec = json.loads(os.environ[_SERVE_ENV])
    return create_app(settings(deployment(spec["profile"]), spec["database_url"]))


def serve(deployment: Deployment, *, host: str = "127.0.0.1", port: int | None = None,
          database_url: str | None = None, workers: int | None = None) -> int:
    """Run the tracking server until stopped (SIGINT / SIGTERM); ``workers`` processes
    (default ``MC_TRACKING_WORKERS``, 1) share the port."""
    import uvicorn  # the server is only needed here

    workers = workers_from_env() if workers is None else workers
    options: dict[str, Any] = {"host": host, "port": port or deployment.tracking_port,
                               "log_level": "warning", "access_log": False,
                               "proxy_headers": False, "server_header": False}
    if workers == 1:
        uvicorn.run(create_app(settings(deployment, database_url)), **options)
        return 0
    settings(deployment, database_url)  # refuse bad settings here, not in every worker
    os.environ[_SERVE_ENV] = json.dumps({"profile": deployment.profile,
                                         "database_url": database_url})
    uvicorn.run("mc_local.tracking:app_from_environment", factory=True, workers=workers,
                **options)
    return 0
