"""Pooled PostgreSQL connections and the request's session.

The web apps' engines ping a pooled connection only when it may be dead (its
server hung up, or it sat idle), not on every checkout. A connection the
server ended while it sat in the pool, as a restart or a failover does, must
still never reach a request.

With ``autocommit_reads`` a GET or HEAD request reads outside a transaction,
and a transaction begins before its first write, so writes stay atomic.
"""

from __future__ import annotations

import psycopg2.extensions
import pytest
from flask import Flask
from sqlalchemy import String, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.db import make_engine, new_metadata
from common.flask_db import Database, _only_reads, get_session
from tests.support.servers import POSTGRES_ADMIN_URL, free_port, fresh_postgres_database


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


def test_an_engine_on_several_hosts_connects_to_the_first_that_answers(postgres_url):
    # libpq's multi-host URI, which SQLAlchemy cannot parse on its own: a host
    # where nothing listens first, then the real server.
    real = make_url(postgres_url)
    url = (
        f"postgresql://{real.username}@127.0.0.1:{free_port()},"
        f"{real.host}:{real.port}/{real.database}"
    )
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar_one() == real.database
            # What target_session_attrs=read-write (the default with several hosts) chose.
            assert conn.execute(text("SHOW transaction_read_only")).scalar_one() == "off"
    finally:
        engine.dispose()


# -- reads in autocommit -------------------------------------------------------


def transaction_states(engine) -> list[tuple[str, int]]:
    """Each statement's first word and the transaction status it ran in, as psycopg2 saw it."""
    seen: list[tuple[str, int]] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _record(conn, _cursor, statement, *_args):
        status = conn.connection.dbapi_connection.get_transaction_status()
        seen.append((statement.split(None, 1)[0].upper(), status))

    return seen


class Base(DeclarativeBase):
    metadata = new_metadata()


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def probe_app(url: str, *, autocommit_reads: bool = True) -> Flask:
    """A Flask app on ``url`` with a table, reading and writing in several ways."""
    app = Flask("probe")
    Database.from_url(url, autocommit_reads=autocommit_reads).init_app(app, create_schema=Base)

    @app.get("/read")
    def read():
        session = get_session()
        names = [item.name for item in session.scalars(select(Item).order_by(Item.id))]
        return {"names": names}

    @app.get("/lock")
    def lock():
        session = get_session()
        session.scalars(select(Item).with_for_update()).all()
        session.scalars(select(Item)).all()
        session.commit()
        return {}

    @app.route("/add", methods=["GET", "POST"])
    def add():
        session = get_session()
        count = len(session.scalars(select(Item)).all())
        session.add(Item(name=f"item-{count}"))
        session.flush()
        session.add(Item(name=f"item-{count + 1}"))
        session.commit()
        return {}

    @app.get("/add-then-fail")
    def add_then_fail():
        session = get_session()
        session.add(Item(name="never"))
        session.flush()
        raise RuntimeError("after the first write")

    return app


IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
IN_TRANSACTION = psycopg2.extensions.TRANSACTION_STATUS_INTRANS


@pytest.fixture
def probe(postgres_url):
    app = probe_app(postgres_url)
    yield app
    app.extensions["database"].engine.dispose()


def test_a_read_request_runs_its_selects_outside_a_transaction(probe):
    states = transaction_states(probe.extensions["database"].engine)
    client = probe.test_client()
    client.post("/add")
    states.clear()
    assert client.get("/read").json == {"names": ["item-0", "item-1"]}
    assert states == [("SELECT", IDLE)]
    # HEAD is a read too.
    states.clear()
    assert client.head("/read").status_code == 200
    assert states == [("SELECT", IDLE)]


def test_a_write_request_is_one_transaction_as_before(probe):
    states = transaction_states(probe.extensions["database"].engine)
    probe.test_client().post("/add")
    assert [status for _, status in states] == [IN_TRANSACTION] * len(states)


def test_a_write_in_a_read_request_begins_a_transaction_before_it(probe):
    engine = probe.extensions["database"].engine
    states = transaction_states(engine)
    client = probe.test_client()
    client.get("/add")
    first_write = next(i for i, (word, _) in enumerate(states) if word != "SELECT")
    assert states[:first_write] == [("SELECT", IDLE)]
    assert all(status == IN_TRANSACTION for _, status in states[first_write:])
    assert client.get("/read").json == {"names": ["item-0", "item-1"]}


def test_writes_of_a_read_request_that_fails_are_rolled_back_together(probe):
    client = probe.test_client()
    client.post("/add")
    assert client.get("/add-then-fail").status_code == 500
    assert client.get("/read").json == {"names": ["item-0", "item-1"]}


def test_a_locking_select_begins_the_transaction(probe):
    states = transaction_states(probe.extensions["database"].engine)
    probe.test_client().get("/lock")
    assert [status for _, status in states] == [IN_TRANSACTION, IN_TRANSACTION]


def test_connections_go_back_to_the_pool_out_of_autocommit(probe):
    engine = probe.extensions["database"].engine
    client = probe.test_client()
    for path in ("/read", "/add", "/lock"):
        client.get(path)
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection.autocommit is False, path


def test_without_the_option_reads_run_in_a_transaction(postgres_url):
    app = probe_app(postgres_url, autocommit_reads=False)
    try:
        states = transaction_states(app.extensions["database"].engine)
        app.test_client().get("/read")
        assert states == [("SELECT", IN_TRANSACTION)]
    finally:
        app.extensions["database"].engine.dispose()


@pytest.mark.parametrize(
    ("statement", "reads"),
    [
        ("SELECT items.id FROM items WHERE items.id = %(pk)s", True),
        ("  select 1", True),
        ("SELECT items.id FROM items FOR UPDATE", False),
        ("SELECT items.id FROM items FOR NO KEY UPDATE SKIP LOCKED", False),
        ("SELECT items.id FROM items\nFOR SHARE", False),
        ("SELECT items.id FROM items FOR KEY SHARE", False),
        ("INSERT INTO items (name) VALUES (%(name)s)", False),
        ("UPDATE items SET name=%(name)s", False),
        ("DELETE FROM items", False),
        ("WITH gone AS (DELETE FROM items RETURNING id) SELECT count(*) FROM gone", False),
    ],
)
def test_which_statements_count_as_reads(statement, reads):
    assert _only_reads(statement) is reads
