"""``mc tracking-server``: the tracking server of a deployment (opens, clicks, the mirror
page, unsubscribe); ``make run`` starts it, supervised, on ``MC_TRACKING_PORT``."""

from __future__ import annotations

import argparse

from mc_local import tracking
from mc_local.localenv import deployment


def _serve(args: argparse.Namespace) -> int:
    if args.workers is not None and not 1 <= args.workers <= tracking.MAX_WORKERS:
        raise SystemExit(f"[mc] tracking server: --workers must be 1 to {tracking.MAX_WORKERS}")
    try:
        return tracking.serve(deployment(args.profile), host=args.host, port=args.port,
                              database_url=args.database_url, workers=args.workers)
    except ValueError as exc:
        raise SystemExit(f"[mc] tracking server: {exc}") from None


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "tracking-server", help="Serve the tracking URLs (pixel, clicks, mirror, unsubscribe).",
        description=__doc__)
    parser.add_argument("--profile", default=None, help="local deployment profile")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: put a reverse proxy "
                             "with TLS in front of it)")
    parser.add_argument("--port", type=int, default=None,
                        help="default: MC_TRACKING_PORT of the deployment (8081)")
    parser.add_argument("--database-url", default=None,
                        help="the execution database (default: the deployment's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes sharing the port (default: "
                             "MC_TRACKING_WORKERS, 1); each keeps its own rate-limit buckets")
    parser.set_defaults(handler=_serve)
