"""Database access shared by every stage: URLs and engines, nothing Airflow-specific."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

CONNECT_TIMEOUT_SECONDS = 10


def sqlalchemy_url(url: str) -> str:
    """Accept ``postgres://``/``postgresql://`` URLs (Airflow connection style) for psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


@lru_cache(maxsize=32)
def engine_for(url: str) -> Engine:
    """One pooled engine per database URL and process (tasks reuse it across batches)."""
    return create_engine(sqlalchemy_url(url), pool_pre_ping=True, pool_size=5, max_overflow=5)


def with_connect_timeout(url: str, seconds: int = CONNECT_TIMEOUT_SECONDS) -> str:
    """Add libpq's ``connect_timeout`` (unless the URL has one) so an unreachable host
    fails fast instead of hanging the run (libpq waits forever by default)."""
    parsed = make_url(url)
    if "connect_timeout" in parsed.query:
        return url
    return parsed.update_query_dict({"connect_timeout": str(seconds)}).render_as_string(
        hide_password=False)


def first_line(exc: BaseException) -> str:
    """A one-line reason for a log or a report (driver errors span several lines)."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"[:500]
