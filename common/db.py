"""Database plumbing: naming convention, engines, one session per request.

Each app declares its own ``Base`` with :data:`NAMING_CONVENTION` so that its
tables, and Alembic's view of them, stay its own. Data functions take a session
and never commit; the view, the job or the message handler does.
"""

from __future__ import annotations

import contextlib
import functools
import re
import select
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import Flask, current_app, g, has_request_context, request
from flask_smorest import abort
from sqlalchemy import DateTime, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, InvalidatePoolError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import StaticPool

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    """A MetaData with the shared naming convention, one per app."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite keeps no zone; PostgreSQL's ``timestamptz`` does. Both read back as
    aware UTC datetimes, so comparisons never mix naive and aware values.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value, dialect):
        if value is not None:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


# How long a pooled connection may sit unused before its next checkout pings it.
# Under load connections come back within milliseconds and are never pinged.
IDLE_PING_SECONDS = 10.0


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    ping_idle_after: float | None = None,
) -> Engine:
    """An engine with pooling and dead-connection checks; in-memory SQLite shares one connection.

    On PostgreSQL a pooled connection is checked before it is handed out. By
    default with a ``SELECT 1`` round trip on every checkout (pre-ping). With
    ``ping_idle_after`` set, only when it may be dead: its socket shows that the
    server hung up (a restart, a failover, ``pg_terminate_backend``), or it has
    been idle at least that many seconds (a firewall may have dropped it). A
    connection that fails the ping invalidates the pool, as pre-ping does, and
    the checkout gets a fresh one. A connection that dies while in use fails
    its statement, which SQLAlchemy also reports as a disconnect and answers by
    invalidating the pool.
    """
    if url.startswith("sqlite"):
        kwargs: dict = {"connect_args": {"check_same_thread": False}}
        if url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url:
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            if "memory" not in url and url != "sqlite://":
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        return engine
    # SQLAlchemy 2.1 reads a bare postgresql:// (the form platforms and compose
    # hand out) as psycopg 3, which is not installed; the project ships psycopg2.
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    engine = create_engine(
        parsed,
        pool_pre_ping=ping_idle_after is None,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5},
    )
    if ping_idle_after is not None:
        _ping_suspect_connections(engine, ping_idle_after)
    return engine


def _server_hung_up(dbapi_connection) -> bool:
    """Whether an idle connection's socket has something to read: the server closed it.

    An idle PostgreSQL connection receives nothing unless the server is going
    away (it sends a FATAL error, then closes). No round trip: one ``poll``
    with no timeout. A closed connection counts as hung up.
    """
    if dbapi_connection.closed:
        return True
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _ping_suspect_connections(engine: Engine, idle_after: float) -> None:
    """Ping a pooled connection on checkout only when it may be dead (see make_engine)."""

    @event.listens_for(engine, "checkin")
    def _note_checkin(dbapi_connection, record):
        if dbapi_connection is not None:
            record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check_alive(dbapi_connection, record, _proxy):
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None:  # just connected
            return
        if time.monotonic() - checked_in_at < idle_after and not _server_hung_up(dbapi_connection):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # Whatever killed this one (a restart) killed its pool-mates too.
            raise InvalidatePoolError(f"connection found dead on checkout: {error}") from error


# Requests that only read, as HTTP defines them; their statements run in autocommit.
READ_METHODS = frozenset({"GET", "HEAD"})
_READS_IN_AUTOCOMMIT = "reads_in_autocommit"
_LOCKING_CLAUSE = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b", re.I)


@functools.lru_cache(maxsize=512)
def _only_reads(statement: str) -> bool:
    """Whether a statement is a plain SELECT: no write, no row lock (statements repeat: cached)."""
    return statement.lstrip()[:6].upper() == "SELECT" and not _LOCKING_CLAUSE.search(statement)


def _begin_before_first_write(engine: Engine) -> None:
    """Reads in autocommit last until the first statement that is not a plain SELECT.

    That statement and every one after it run in one transaction (psycopg2
    sends BEGIN before it), which the view commits as usual. A connection goes
    back to the pool with autocommit off.
    """

    @event.listens_for(engine, "before_cursor_execute")
    def _begin_transaction_before_write(conn, _cursor, statement, *_args):
        if conn.info.get(_READS_IN_AUTOCOMMIT) and not _only_reads(statement):
            del conn.info[_READS_IN_AUTOCOMMIT]
            conn.connection.dbapi_connection.autocommit = False

    @event.listens_for(engine, "checkin")
    def _end_autocommit(dbapi_connection, record):
        if record.info.pop(_READS_IN_AUTOCOMMIT, False) and dbapi_connection is not None:
            dbapi_connection.autocommit = False


def _read_in_autocommit(session: Session) -> None:
    """Run the session's reads in autocommit (see init_database)."""
    connection = session.connection()
    connection.connection.dbapi_connection.autocommit = True
    connection.info[_READS_IN_AUTOCOMMIT] = True


@dataclass
class Database:
    """An app's engine and session factory, kept in ``app.extensions['database']``."""

    engine: Engine
    sessionmaker: sessionmaker[Session]
    # Whether GET and HEAD requests read in autocommit (see init_database).
    autocommit_reads: bool = False

    @classmethod
    def from_url(cls, url: str) -> Database:
        """Build the engine and session factory for ``url``.

        A web app checks out a connection on every request, so its pooled
        connections are pinged only when they may be dead, not on each checkout.
        """
        engine = make_engine(url, ping_idle_after=IDLE_PING_SECONDS)
        return cls(engine, sessionmaker(engine, expire_on_commit=False))


def init_database(
    app: Flask, base: type[DeclarativeBase], *, autocommit_reads: bool = False
) -> Database:
    """Attach a Database to ``app`` and release the request's session at teardown.

    With ``CREATE_SCHEMA`` set (tests on in-memory SQLite) the tables are
    created from the models; everywhere else Alembic owns the schema.

    With ``autocommit_reads`` (PostgreSQL only), a GET or HEAD request's
    session reads in autocommit: no BEGIN before its first SELECT and no
    COMMIT or ROLLBACK after its last, two round trips fewer per read. Under
    READ COMMITTED, PostgreSQL's default and the level the project runs at,
    each statement of a transaction sees its own snapshot anyway, so the reads
    see what they would have seen inside one.
    Should such a request write after all (or lock rows with ``FOR UPDATE``),
    a transaction begins before that statement and holds everything after it,
    so the writes stay atomic; the view commits them as usual.
    """
    database = Database.from_url(app.config["DATABASE_URL"])
    if autocommit_reads and database.engine.dialect.name == "postgresql":
        _begin_before_first_write(database.engine)
        database.autocommit_reads = True
    app.extensions["database"] = database
    if app.config.get("CREATE_SCHEMA"):
        base.metadata.create_all(database.engine)

    @app.teardown_appcontext
    def _release_session(exc):
        session = g.pop("db_session", None)
        if session is not None:
            if exc is not None:
                session.rollback()
            session.close()

    return database


def get_session() -> Session:
    """The current request's session, opened on first use."""
    if "db_session" not in g:
        database = current_app.extensions["database"]
        g.db_session = database.sessionmaker()
        if database.autocommit_reads and has_request_context() and request.method in READ_METHODS:
            _read_in_autocommit(g.db_session)
    return g.db_session


@contextlib.contextmanager
def conflict_on_integrity_error(message: str):
    """Turn a unique-constraint failure into a 409 with ``message``, rolling back first."""
    try:
        yield
    except IntegrityError:
        get_session().rollback()
        abort(409, message=message)
