"""Database access shared by every stage: URLs and engines, nothing Airflow-specific."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine


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


def with_connect_timeout(url: str, seconds: int = 10) -> str:
    """A down instance must fail fast, not hang the run (libpq waits forever by default)."""
    if "connect_timeout=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}connect_timeout={seconds}"


def first_line(exc: BaseException) -> str:
    """A one-line reason for a log or a report (driver errors span several lines)."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"[:500]
