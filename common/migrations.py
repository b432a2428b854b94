"""Alembic's run loop, shared by ``migrations/auth`` and ``migrations/user``.

The URL comes from the service's own configuration, unless a caller (a test)
hands a connection in ``config.attributes['connection']`` or a URL with
``-x url=...``.
"""

from __future__ import annotations

from alembic import context as alembic_context
from sqlalchemy import MetaData

from common.db import make_engine


def run_migrations(metadata: MetaData, default_url) -> None:
    """Run offline or online migrations for one service's metadata.

    ``default_url`` is a callable so that configuration is read only when no
    connection or URL was given.
    """
    context = alembic_context
    config = context.config
    connection = config.attributes.get("connection")
    render_batch = True  # SQLite needs batch mode for ALTER; harmless elsewhere.
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=render_batch,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or default_url()
    if context.is_offline_mode():
        context.configure(
            url=url,
            target_metadata=metadata,
            literal_binds=True,
            render_as_batch=render_batch,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context.configure(
                connection=conn,
                target_metadata=metadata,
                render_as_batch=render_batch,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()
