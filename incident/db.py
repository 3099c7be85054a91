"""One declarative Base, one engine per URL, sessions that commit or roll back as a unit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import sqlalchemy
from sqlalchemy import Engine, MetaData
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from incident.config import get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# A webhook burst must not wait forever behind a long lock (a migration, a purge):
# fail the statement, let the task retry.
_SESSION_OPTIONS = "-c lock_timeout=10s -c statement_timeout=60s"


@lru_cache(maxsize=4)
def engine_for(url: str) -> Engine:
    # Looked up when called, so tracing's SQLAlchemy instrumentation (installed
    # at start-up, after this module was imported) sees the engine.
    return sqlalchemy.create_engine(
        url,
        # A failed statement's error would otherwise quote its parameters (label
        # values, payload text) into logs, Flower and dead letters.
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args={"options": _SESSION_OPTIONS, "connect_timeout": 5},
    )


def get_engine() -> Engine:
    return engine_for(get_settings().require_database_url())


@lru_cache(maxsize=4)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception."""
    session = _sessionmaker(engine or get_engine())()
    try:
        with session.begin():
            yield session
    finally:
        session.close()
