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
