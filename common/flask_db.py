"""An app's database as a Flask extension: its engine, and one session per request.

Views call :func:`get_session`; the session is released at the end of the
request. GET and HEAD requests of an app that asks for it read in autocommit
(see :meth:`Database.init_app`).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import Any, cast

from flask import Flask, current_app, g, has_request_context, request
from flask_smorest import abort
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from common.db import IDLE_PING_SECONDS, make_engine

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
    def _begin_transaction_before_write(
        conn: Connection, _cursor: Any, statement: str, *_args: Any
    ) -> None:
        if conn.info.get(_READS_IN_AUTOCOMMIT) and not _only_reads(statement):
            del conn.info[_READS_IN_AUTOCOMMIT]
            dbapi_connection: Any = conn.connection.dbapi_connection
            dbapi_connection.autocommit = False

    @event.listens_for(engine, "checkin")
    def _end_autocommit(dbapi_connection: Any, record: Any) -> None:
        if record.info.pop(_READS_IN_AUTOCOMMIT, False) and dbapi_connection is not None:
            dbapi_connection.autocommit = False


def _read_in_autocommit(session: Session) -> None:
    """Run the session's reads in autocommit (see :class:`Database`)."""
    connection = session.connection()
    dbapi_connection: Any = connection.connection.dbapi_connection
    dbapi_connection.autocommit = True
    connection.info[_READS_IN_AUTOCOMMIT] = True


class Database:
    """An app's engine and session factory; ``init_app`` keeps it in ``app.extensions``.

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

    def __init__(self, engine: Engine, *, autocommit_reads: bool = False):
        self.engine = engine
        self.sessionmaker = sessionmaker(engine, expire_on_commit=False)
        self.autocommit_reads = autocommit_reads and engine.dialect.name == "postgresql"
        if self.autocommit_reads:
            _begin_before_first_write(engine)

    @classmethod
    def from_url(cls, url: str, *, autocommit_reads: bool = False) -> Database:
        """The engine and session factory for ``url``.

        A web app checks out a connection on every request, so its pooled
        connections are pinged only when they may be dead, not on each checkout.
        """
        return cls(
            make_engine(url, ping_idle_after=IDLE_PING_SECONDS), autocommit_reads=autocommit_reads
        )

    def init_app(self, app: Flask, *, create_schema: type[DeclarativeBase] | None = None) -> None:
        """Serve ``app``'s requests from this database, releasing each request's session.

        ``create_schema`` (tests on in-memory SQLite) creates that base's tables
        from the models; everywhere else Alembic owns the schema.
        """
        app.extensions["database"] = self
        if create_schema is not None:
            create_schema.metadata.create_all(self.engine)
        app.teardown_appcontext(_release_session)


def _release_session(exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        if exc is not None:
            session.rollback()
        session.close()


def get_session() -> Session:
    """The current request's session, opened on first use."""
    if "db_session" not in g:
        database = current_app.extensions["database"]
        g.db_session = database.sessionmaker()
        if database.autocommit_reads and has_request_context() and request.method in READ_METHODS:
            _read_in_autocommit(g.db_session)
    return cast(Session, g.db_session)


@contextlib.contextmanager
def conflict_on_integrity_error(message: str) -> Iterator[None]:
    """Turn a unique-constraint failure into a 409 with ``message``, rolling back first."""
    try:
        yield
    except IntegrityError:
        get_session().rollback()
        abort(409, message=message)
