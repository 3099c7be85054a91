"""Alembic environment: the URL comes from settings, and DDL never waits long for a lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

import incident.models  # noqa: F401 - registers every table on Base.metadata
from incident.config import get_settings
from incident.db import Base

config = context.config
target_metadata = Base.metadata

# A migration stuck behind a long transaction would block every writer queued
# behind it; fail fast and let the operator retry instead.
LOCK_TIMEOUT = "5s"


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().require_database_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url())
    with engine.connect() as connection:
        connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        connection.commit()
        context.configure(
            connection=connection, target_metadata=target_metadata, compare_type=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
