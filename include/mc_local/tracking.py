"""``mc tracking-server``: the tracking server of a local deployment (or of any execution
database), served by uvicorn. ``make run`` starts it, supervised, on ``MC_TRACKING_PORT``.

The keys and the base URL come from the deployment (``MC_TRACKING_KEYS``,
``MC_TRACKING_BASE_URL``, generated and local by default), so the messages the deployment
sends and the server that answers their URLs agree.
"""

from __future__ import annotations

import os

from mc_local.localenv import Deployment
from message_center.tracking import tokens
from message_center.tracking_server import ServerSettings, create_app


def settings(deployment: Deployment, database_url: str | None = None) -> ServerSettings:
    env = {**os.environ, **deployment.environment()}
    config = tokens.TrackingConfig(env["MC_TRACKING_BASE_URL"].rstrip("/"),
                                   tokens.Signer(tokens.keys_from_text(env["MC_TRACKING_KEYS"])))
    return ServerSettings.from_env(database_url or deployment.database_url("execution"),
                                   config, env)


def serve(deployment: Deployment, *, host: str = "127.0.0.1", port: int | None = None,
          database_url: str | None = None, workers: int = 1) -> int:
    """Run the tracking server until stopped (SIGINT / SIGTERM)."""
    import uvicorn  # the server is only needed here

    app = create_app(settings(deployment, database_url))
    uvicorn.run(app, host=host, port=port or deployment.tracking_port, log_level="warning",
                access_log=False, proxy_headers=False, server_header=False)
    return 0
