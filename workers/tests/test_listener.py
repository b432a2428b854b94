"""The LISTEN connection that wakes the relays and the mailer, and how it survives its server.

A restart or a failover ends the connection; the next read finds it gone and
listens again at once, on whichever server now answers. A commit made while
nothing listened woke nobody, so a fresh LISTEN tells the caller to look.
"""

from __future__ import annotations

import select

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from common.db import make_engine
from tests.support.servers import POSTGRES_ADMIN_URL
from workers.listener import Listener

CHANNEL = "listener_test"


@pytest.fixture
def engine(postgres_url):
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


def notify(engine) -> None:
    with engine.begin() as connection:
        connection.execute(text(f"NOTIFY {CHANNEL}"))


def end_listen_session(url: str) -> None:
    """End the database's LISTEN session as a restart would, waiting until it has gone."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            ended = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = :name AND query = :listen"
                ),
                {"name": make_url(url).database, "listen": f"LISTEN {CHANNEL}"},
            ).all()
        assert ended == [(True,)]
    finally:
        admin.dispose()


def readable(fd: int, timeout: float = 5.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_a_first_read_opens_the_listen_and_says_to_look_for_rows(engine):
    listener = Listener(engine, CHANNEL)
    try:
        assert listener.fileno() is None
        assert listener.take() is True  # commits before it were heard by nobody
        assert listener.take() is False
        notify(engine)
        assert readable(listener.fileno())
        assert listener.take() is True
    finally:
        listener.drop()


def test_a_listen_the_server_ended_is_opened_again_on_the_next_read(engine, postgres_url):
    listener = Listener(engine, CHANNEL)
    try:
        listener.take()
        end_listen_session(postgres_url)
        # Found gone and replaced in the same read; it says to look, as a commit
        # may have come while nothing listened.
        assert listener.take() is True
        notify(engine)
        assert readable(listener.fileno()), "the new LISTEN did not hear the commit"
        assert listener.take() is True
    finally:
        listener.drop()


def test_while_the_database_is_unreachable_there_is_nothing_to_wait_on():
    engine = make_engine("postgresql://postgres@127.0.0.1:1/none")
    listener = Listener(engine, CHANNEL)
    try:
        assert listener.take() is False
        assert listener.fileno() is None  # the caller polls
    finally:
        engine.dispose()
