"""Alembic's run loop, shared by ``migrations/auth`` and ``migrations/user``.

The URL comes from the service's own configuration, unless a caller (a test)
hands a connection in ``config.attributes['connection']`` or a URL with
``-x url=...``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData

from common.db import make_engine


def _run(metadata: MetaData, **target) -> None:
    # Batch mode lets SQLite ALTER tables; it is harmless on PostgreSQL.
    context.configure(target_metadata=metadata, render_as_batch=True, compare_type=True, **target)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations(metadata: MetaData, default_url) -> None:
    """Run offline or online migrations for one service's metadata.

    ``default_url`` is a callable so that configuration is read only when no
    connection or URL was given.
    """
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(metadata, connection=connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or default_url()
    if context.is_offline_mode():
        _run(metadata, url=url, literal_binds=True)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(metadata, connection=conn)
    finally:
        engine.dispose()
