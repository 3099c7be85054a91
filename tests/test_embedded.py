"""The embedded PostgreSQL and Redis used by `incident dev`: real servers, real data on disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import redis
import sqlalchemy as sa

from incident.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    free_port,
    process_gone,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pg_home(tmp_path: Path) -> Iterator[Path]:
    """A directory for a cluster; outside pytest's temporary root when we are root.

    As root, pgserver runs PostgreSQL as the ``pgserver`` user and opens every parent
    of the data directory to it, but each pytest session (ours or a concurrent one)
    sets /tmp/pytest-of-root back to 0700, which locks that user out mid-run.
    """
    if os.geteuid() != 0:
        yield tmp_path
        return
    home = Path(tempfile.mkdtemp(prefix="incident-embedded-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_postgres_serves_the_incident_database_over_a_unix_socket(pg_home: Path) -> None:
    with EmbeddedPostgres(pg_home / "postgres") as pg:
        assert pg.url.startswith("postgresql+psycopg://postgres@/incident?host=/")
        engine = sa.create_engine(pg.url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("select 1")).scalar_one() == 1
                assert conn.execute(sa.text("select current_database()")).scalar_one() == "incident"
        finally:
            engine.dispose()
        assert os.access(pg.bin_dir / "pg_dump", os.X_OK)
        assert os.access(pg.bin_dir / "pg_restore", os.X_OK)


def test_postgres_keeps_rows_across_a_restart_and_leaves_no_process(pg_home: Path) -> None:
    pg = EmbeddedPostgres(pg_home / "postgres")
    url = pg.start()
    try:
        with psycopg.connect(libpq(url)) as conn:
            conn.execute("create table kept (note text)")
            conn.execute("insert into kept values ('still here')")
        postmaster = pg.pid
        assert postmaster is not None

        pg.stop()
        assert process_gone(postmaster)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(libpq(url), connect_timeout=2)

        assert pg.start() == url
        with psycopg.connect(libpq(pg.url)) as conn:
            assert conn.execute("select note from kept").fetchall() == [("still here",)]
    finally:
        pg.stop()


def test_postgres_starts_past_a_pid_file_that_names_an_unrelated_process(pg_home: Path) -> None:
    # After a crash or a container restart, postmaster.pid may name a pid now reused
    # by something else; that must not be mistaken for a running server.
    pid_file = pg_home / "postgres" / "postmaster.pid"
    pg = EmbeddedPostgres(pg_home / "postgres")
    pg.start()
    _, rest = pid_file.read_text().split("\n", 1)
    pg.stop()
    pid_file.write_text(f"{os.getpid()}\n{rest}")

    with pg, psycopg.connect(libpq(pg.url)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_postgres_socket_moves_out_of_a_data_dir_too_long_for_a_unix_socket(
    pg_home: Path,
) -> None:
    deep = pg_home / ("d" * 60) / ("e" * 60) / "postgres"
    with EmbeddedPostgres(deep) as pg:
        assert str(deep) not in pg.url
        with psycopg.connect(libpq(pg.url)) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        socket_dir = Path(parse_qs(urlsplit(pg.url).query)["host"][0])
    with contextlib.suppress(OSError):
        socket_dir.rmdir()


def test_redis_keeps_keys_in_its_aof_and_comes_back_on_the_same_port(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    try:
        assert url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.set("broker-message", "queued")
        assert client.get("broker-message") == b"queued"
        client.close()
        pid = server.pid
        assert pid is not None

        server.stop()
        assert process_gone(pid)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()

        assert server.start() == url
        client = redis.Redis.from_url(url, socket_timeout=5)
        assert client.get("broker-message") == b"queued"
        client.close()
    finally:
        server.stop()
    assert (tmp_path / "redis" / "appendonly.aof").stat().st_size > 0


def test_redis_takes_further_directives_and_comes_back_after_a_sigkill(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", options={"appendfsync": "always"})
    url = server.start()
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.set("acknowledged", "1")
        pid = server.pid
        server.kill()
        assert pid is not None and process_gone(pid)
        assert server.start() == url
        assert redis.Redis.from_url(url, socket_timeout=5).get("acknowledged") == b"1"
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["appendfsync always", "--dir", "Port", ""])
def test_redis_refuses_an_option_that_is_not_a_directive_name(tmp_path: Path, name) -> None:
    with pytest.raises(ValueError, match=r"is not a redis\.conf directive"):
        EmbeddedRedis(tmp_path / "redis", options={name: "x"})


def test_redis_as_a_context_manager_leaves_no_process(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        pid = server.pid
        assert redis.Redis.from_url(server.url).ping()
    assert pid is not None and process_gone(pid)


def test_redis_stops_a_server_left_running_on_the_same_data_dir(tmp_path: Path) -> None:
    # Two servers appending to one AOF would corrupt it: a new start replaces the old one.
    first = EmbeddedRedis(tmp_path / "redis")
    first.start()
    redis.Redis.from_url(first.url).set("k", "v")
    leftover = first.pid
    assert leftover is not None

    with EmbeddedRedis(tmp_path / "redis") as second:
        assert process_gone(leftover)
        assert redis.Redis.from_url(second.url).get("k") == b"v"
    first.stop()


def test_redis_on_a_taken_port_fails_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = EmbeddedRedis(tmp_path / "redis", port=port)
        with pytest.raises(EmbeddedServerError, match="already in use"):
            server.start()
    assert server.pid is None


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
