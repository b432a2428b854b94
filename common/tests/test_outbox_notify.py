"""The outbox's NOTIFY: a relay listening is woken by every transaction that wrote rows."""

from __future__ import annotations

import select

import pytest
from sqlalchemy.orm import DeclarativeBase, Session

from common.db import make_engine, new_metadata
from common.outbox import OutboxMixin, emit, notify_channel
from tests.support.events import NUMBERED
from tests.support.servers import fresh_postgres_database


class Base(DeclarativeBase):
    metadata = new_metadata()


class Outbox(OutboxMixin, Base):
    __tablename__ = "notify_outbox"


@pytest.fixture
def engine():
    with fresh_postgres_database("common_notify") as url:
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        yield engine
        engine.dispose()


@pytest.fixture
def listener(engine):
    raw = engine.raw_connection()
    connection = raw.driver_connection
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"LISTEN {notify_channel(Outbox.__tablename__)}")
    yield connection
    raw.close()


def received(connection, wait: float = 2.0) -> int:
    """How many notifications arrive within ``wait`` seconds of quiet."""
    count = 0
    while select.select([connection], [], [], wait)[0]:
        connection.poll()
        count += len(connection.notifies)
        connection.notifies.clear()
        wait = 0.2
    return count


def write(session: Session, count: int) -> None:
    for n in range(count):
        emit(session, Outbox, NUMBERED, {"n": n})


def test_each_committed_transaction_of_one_session_wakes_the_listener(engine, listener):
    with Session(engine) as session:
        for _ in range(3):
            with session.begin():
                write(session, 5)
    assert received(listener) == 3


def test_a_rolled_back_transaction_wakes_nobody(engine, listener):
    with Session(engine) as session:
        with session.begin():
            write(session, 2)
            session.rollback()
    assert received(listener, wait=0.5) == 0


def test_rows_written_after_a_rolled_back_savepoint_still_wake_the_listener(engine, listener):
    with Session(engine) as session, session.begin():
        savepoint = session.begin_nested()
        write(session, 1)
        savepoint.rollback()
        write(session, 1)
    assert received(listener) == 1
