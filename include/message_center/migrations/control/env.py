"""Alembic environment shared by both roles: online migrations only, one transaction."""

from alembic import context
from sqlalchemy import create_engine, pool

from message_center.db import sqlalchemy_url

config = context.config
role = config.attributes.get("role", "execution")
engine = create_engine(
    sqlalchemy_url(config.get_main_option("sqlalchemy.url")), poolclass=pool.NullPool
)
with engine.connect() as connection:
    context.configure(connection=connection, version_table=f"alembic_version_{role}")
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
