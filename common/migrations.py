"""Alembic's run loop, shared by ``migrations/auth`` and ``migrations/user``.

The URL comes from the service's own configuration, unless a caller (a test)
hands a connection in ``config.attributes['connection']`` or a URL with
``-x url=...``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alembic import context, op
from sqlalchemy import Column, MetaData, String, text

from common.config import stop_on_config_error
from common.db import make_engine

#: Indexes named so exist on PostgreSQL alone, and in the migrations alone:
#: trigram (pg_trgm GIN) indexes, which SQLite and the models cannot state.
POSTGRESQL_ONLY_SUFFIX = "_trgm"


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's filter: the models' comparison leaves PostgreSQL-only indexes alone."""
    postgresql_only = type_ == "index" and (name or "").endswith(POSTGRESQL_ONLY_SUFFIX)
    return not (postgresql_only and reflected and compare_to is None)


def create_trigram_index(name: str, table: str, expression: str) -> None:
    """On PostgreSQL, a pg_trgm GIN index on ``expression`` (``lower(email)``), built
    ``CONCURRENTLY`` so a live table stays writable meanwhile; nothing elsewhere.

    It serves ``expression LIKE '%part%'`` for parts of 3 characters or more.
    ``name`` must end in :data:`POSTGRESQL_ONLY_SUFFIX`.
    """
    if not name.endswith(POSTGRESQL_ONLY_SUFFIX) or op.get_context().dialect.name != "postgresql":
        return
    with op.get_context().autocommit_block():
        op.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        op.execute(
            text(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} "
                f"USING gin ({expression} gin_trgm_ops)"
            )
        )


def create_index_concurrently(
    name: str, table: str, columns: list[str], *, where: str | None = None
) -> None:
    """A B-tree index (partial with ``where``) that a live table survives.

    On PostgreSQL it is built ``CONCURRENTLY``, outside the migration's
    transaction: writes go on meanwhile, where a plain ``CREATE INDEX`` would
    block every insert into a table of millions of rows for as long as the
    build takes. A build that failed half-way leaves an INVALID index behind,
    which is dropped and built again. SQLite builds it plainly.
    """
    condition: dict[str, Any] = (
        {"postgresql_where": text(where), "sqlite_where": text(where)} if where else {}
    )
    if op.get_context().dialect.name != "postgresql":
        op.create_index(name, table, columns, **condition)
        return
    with op.get_context().autocommit_block():
        if not context.is_offline_mode() and _invalid_index(name):
            op.drop_index(name, table_name=table, postgresql_concurrently=True)
        op.create_index(
            name, table, columns, postgresql_concurrently=True, if_not_exists=True, **condition
        )


#: An index of a migration: ``(name, table, columns, WHERE of a partial index or None)``.
IndexSpec = tuple[str, str, list[str], str | None]


def create_indexes_concurrently(indexes: list[IndexSpec]) -> None:
    """:func:`create_index_concurrently` for each of ``indexes``, in order."""
    for name, table, columns, where in indexes:
        create_index_concurrently(name, table, columns, where=where)


def drop_indexes_concurrently(indexes: list[IndexSpec]) -> None:
    """Undo :func:`create_indexes_concurrently`, last first."""
    for name, table, _, _ in reversed(indexes):
        drop_index_concurrently(name, table)


def _invalid_index(name: str) -> bool:
    found = op.get_bind().execute(
        text(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :name AND NOT i.indisvalid"
        ),
        {"name": name},
    )
    return found.first() is not None


def drop_index_concurrently(name: str, table: str) -> None:
    """Undo :func:`create_index_concurrently`."""
    if op.get_context().dialect.name != "postgresql":
        op.drop_index(name, table_name=table)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def drop_postgresql_only_index(name: str) -> None:
    """Undo :func:`create_trigram_index` (``CONCURRENTLY`` too)."""
    if op.get_context().dialect.name != "postgresql":
        return
    with op.get_context().autocommit_block():
        op.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))


def _run(metadata: MetaData, **target: Any) -> None:
    # Batch mode lets SQLite ALTER tables; it is harmless on PostgreSQL.
    context.configure(
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
        include_object=include_object,
        **target,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations(metadata: MetaData, default_url: Callable[[], str]) -> None:
    """Run offline or online migrations for one service's metadata.

    ``default_url`` is a callable so that configuration is read only when no
    connection or URL was given; a bad value stops the command with one line.
    """
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(metadata, connection=connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        with stop_on_config_error():
            url = default_url()
    if context.is_offline_mode():
        _run(metadata, url=url, literal_binds=True)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(metadata, connection=conn)
    finally:
        engine.dispose()


def add_outbox_property_columns() -> None:
    """Outbox revision 0002 of both services: ``source`` and ``correlation_id`` as columns.

    The relay sets the AMQP ``app_id`` and ``correlation_id`` from them instead
    of parsing every body again. Rows already there are filled from their body
    with one statement, whatever the table's size.
    """
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.add_column(Column("source", String(32), nullable=True))
        batch_op.add_column(Column("correlation_id", String(128), nullable=True))
    if op.get_context().dialect.name == "postgresql":
        fill = (
            "UPDATE outbox SET source = body::json->>'source', "
            "correlation_id = body::json->>'correlation_id'"
        )
    else:
        fill = (
            "UPDATE outbox SET source = json_extract(body, '$.source'), "
            "correlation_id = json_extract(body, '$.correlation_id')"
        )
    op.execute(text(fill))
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.alter_column("source", existing_type=String(32), nullable=False)


def drop_outbox_property_columns() -> None:
    """Undo :func:`add_outbox_property_columns`: the body still holds both values."""
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_column("correlation_id")
        batch_op.drop_column("source")
