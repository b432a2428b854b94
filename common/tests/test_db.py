"""Pooled PostgreSQL connections: dead ones are replaced on checkout, live ones are not pinged.

The web apps' engines ping a pooled connection only when it may be dead (its
server hung up, or it sat idle), not on every checkout. A connection the
server ended while it sat in the pool, as a restart or a failover does, must
still never reach a request.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from common.db import make_engine
from common.testing import POSTGRES_ADMIN_URL, fresh_postgres_database


@pytest.fixture
def postgres_url():
    with fresh_postgres_database("common_pool") as url:
        yield url


def end_every_connection(url: str) -> int:
    """End every session of the database, waiting until each backend has exited."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": make_url(url).database},
                ).all()
            )
    finally:
        admin.dispose()


def count_pings(engine, monkeypatch) -> list:
    """Record each ping the engine's dialect sends (the ping itself still runs)."""
    pings = []
    real_ping = engine.dialect.do_ping

    def counted(dbapi_connection):
        pings.append(dbapi_connection)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_connections_in_steady_use_are_not_pinged(postgres_url, monkeypatch):
    engine = make_engine(postgres_url, ping_idle_after=60)
    try:
        pings = count_pings(engine, monkeypatch)
        pids = {backend_pid(engine) for _ in range(20)}
        assert len(pids) == 1
        assert pings == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("ping_idle_after", [60, None], ids=["when-suspect", "every-checkout"])
def test_a_connection_the_server_ended_in_the_pool_is_replaced_on_checkout(
    postgres_url, ping_idle_after
):
    engine = make_engine(postgres_url, ping_idle_after=ping_idle_after)
    try:
        before = backend_pid(engine)
        assert end_every_connection(postgres_url) == 1
        # The very next checkout works: the dead connection never reaches the caller.
        after = backend_pid(engine)
        assert after != before
    finally:
        engine.dispose()


def test_a_connection_idle_too_long_is_pinged_first(postgres_url, monkeypatch):
    engine = make_engine(postgres_url, ping_idle_after=0)
    try:
        pings = count_pings(engine, monkeypatch)
        first = backend_pid(engine)
        assert pings == []  # a fresh connection needs no ping
        assert backend_pid(engine) == first
        assert len(pings) == 1
    finally:
        engine.dispose()


def test_a_connection_that_fails_its_ping_is_replaced(postgres_url):
    # Idle past the limit and dead: found by the ping, not by the caller's statement.
    engine = make_engine(postgres_url, ping_idle_after=0)
    try:
        before = backend_pid(engine)
        end_every_connection(postgres_url)
        assert backend_pid(engine) != before
    finally:
        engine.dispose()
