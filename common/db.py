"""Database plumbing without Flask: naming convention, engines, UTC timestamps, upserts.

Each app declares its own ``Base`` with :data:`NAMING_CONVENTION` so that its
tables, and Alembic's view of them, stay its own. Data functions take a session
and never commit; the view, the job or the message handler does. The web
apps' per-request session is in :mod:`common.flask_db`.
"""

from __future__ import annotations

import select as io_select
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    MetaData,
    Select,
    TypeDecorator,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from common.config import postgres_url

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

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store ``value`` as UTC; a naive datetime is a bug, never a guess."""
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """``value`` as an aware UTC datetime, whatever the database kept."""
        if value is not None:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


#: libpq settings of every PostgreSQL connection (a URL may set its own). A
#: server that vanishes without closing its sockets (a host that died, a
#: network that dropped it) is noticed within about a minute, not after the
#: kernel's retransmissions give up (15 minutes or more): keepalives probe an
#: idle connection (a worker's LISTEN), ``tcp_user_timeout`` bounds a statement
#: whose data the server never acknowledges. ``connect_timeout`` is per host.
CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}

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

    Statement parameters are never part of an error's text
    (``hide_parameters``): a failed INSERT's exception, logged or shown, would
    otherwise carry the row, a password hash or a token hash included.

    On PostgreSQL a pooled connection is checked before it is handed out. By
    default with a ``SELECT 1`` round trip on every checkout (pre-ping). With
    ``ping_idle_after`` set, only when it may be dead: its socket shows that the
    server hung up (a restart, a failover, ``pg_terminate_backend``), or it has
    been idle at least that many seconds (a firewall may have dropped it). A
    connection that fails the ping invalidates the pool, as pre-ping does, and
    the checkout gets a fresh one. A connection that dies while in use fails
    its statement, which SQLAlchemy also reports as a disconnect and answers by
    invalidating the pool.

    ``url`` may name several hosts (:func:`common.config.postgres_url`): each
    new connection goes to the one that is the primary now, so after a
    failover the fresh connections land on the promoted standby.
    """
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
        if url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url:
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, hide_parameters=True, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            if "memory" not in url and url != "sqlite://":
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        return engine
    # SQLAlchemy 2.1 reads a bare postgresql:// (the form platforms and compose
    # hand out) as psycopg 3, which is not installed; the project ships psycopg2.
    parsed = make_url(postgres_url(url))
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    engine = create_engine(
        parsed,
        pool_pre_ping=ping_idle_after is None,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        # What the URL sets itself wins.
        connect_args={k: v for k, v in CONNECT_ARGS.items() if k not in parsed.query},
        hide_parameters=True,
    )
    if ping_idle_after is not None:
        _ping_suspect_connections(engine, ping_idle_after)
    return engine


def _server_hung_up(dbapi_connection: Any) -> bool:
    """Whether an idle connection's socket has something to read: the server closed it.

    An idle PostgreSQL connection receives nothing unless the server is going
    away (it sends a FATAL error, then closes). No round trip: one ``poll``
    with no timeout. A closed connection counts as hung up.
    """
    if dbapi_connection.closed:
        return True
    poller = io_select.poll()
    poller.register(dbapi_connection.fileno(), io_select.POLLIN)
    return bool(poller.poll(0))


def _ping_suspect_connections(engine: Engine, idle_after: float) -> None:
    """Ping a pooled connection on checkout only when it may be dead (see make_engine)."""

    @event.listens_for(engine, "checkin")
    def _note_checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check_alive(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
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


def dialect_insert(session: Session) -> Any:
    """The ``insert`` construct that knows ``ON CONFLICT`` on this session's database."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def insert_ignoring_conflict(session: Session, model: type, **values: Any) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING``: two writers creating one row both succeed."""
    session.execute(dialect_insert(session)(model).values(**values).on_conflict_do_nothing())


# Session.info key: the transaction and the channels it has notified already.
_NOTIFIED = "notified_channels"


def notify_at_commit(session: Session, channel: str) -> None:
    """On PostgreSQL, ``NOTIFY channel`` in the session's transaction (delivered at commit).

    Wakes a worker that ``LISTEN``s for new rows (a relay, the mailer) as soon
    as the transaction that wrote them commits, and never for one that rolled
    back. One NOTIFY per channel and transaction is enough (PostgreSQL folds
    repeats anyway), and it goes straight to the connection: through
    ``session.execute`` it would flush the rows pending so far once more.
    Elsewhere (SQLite) it does nothing: those workers poll.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    transaction = session.get_nested_transaction() or session.get_transaction()
    notified: tuple[object, set[str]] | None = session.info.get(_NOTIFIED)
    if notified is None or notified[0] is not transaction:
        notified = session.info[_NOTIFIED] = (transaction, set())
    if channel not in notified[1]:
        session.connection().execute(text(f"NOTIFY {channel}"))
        notified[1].add(channel)


def delete_in_batches(
    engine: Engine,
    key: Any,
    *where: Any,
    order_by: Any = None,
    batch_size: int = 1000,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Delete the rows of ``key``'s table that match ``where``, ``batch_size`` at a time.

    Each batch is its own short transaction: the keys of up to ``batch_size``
    matching rows (``order_by``, oldest first, when given), then one ``DELETE``
    by key. Writers of the table never wait long for a purge, however large.
    On PostgreSQL the batch is taken ``FOR UPDATE SKIP LOCKED``, so several
    purges at once share the rows instead of queueing on them. Stops early when
    ``stop()`` says so; returns how many rows went.
    """
    table = key.table
    removed = 0
    while stop is None or not stop():
        query = select_keys(key, where, order_by, batch_size)
        if engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with engine.begin() as connection:
            keys = list(connection.execute(query).scalars())
            if keys:
                connection.execute(table.delete().where(key.in_(keys)))
        removed += len(keys)
        if len(keys) < batch_size:
            break
    return removed


def select_keys(key: Any, where: tuple[Any, ...], order_by: Any, limit: int) -> Select[Any]:
    """``SELECT key FROM its table WHERE ... ORDER BY ... LIMIT``: a batch to delete."""
    query = select(key).where(*where).limit(limit)
    return query.order_by(order_by) if order_by is not None else query


def backlog_reader(engine: Engine, created: Any, *pending: Any) -> Callable[[], tuple[int, float]]:
    """What a queue table's metrics read: rows ``pending``, and the oldest's age in seconds.

    One ``count`` and ``min(created)`` over the rows matching ``pending`` (an
    index serves it), on ``engine``, which should be the metrics' own so a
    scrape never waits for the worker's connections. The age is 0 when none is.
    """
    query = select(func.count(), func.min(created)).where(*pending)

    def read() -> tuple[int, float]:
        with engine.connect() as connection:
            count, oldest = connection.execute(query).one()
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        return int(count), max(0.0, age)

    return read
