"""Running a service's Alembic migrations from a test, on an engine, as the CLI runs them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(connection: Connection, service: str) -> Config:
    """alembic.ini's section of ``service`` (``auth`` or ``user``), run on ``connection``."""
    config = Config(str(ROOT / "alembic.ini"), ini_section=service)
    config.attributes["connection"] = connection
    return config


def migrate(
    engine: Engine, service: str, step: Callable[[Config, str], None], revision: str
) -> None:
    """``alembic -n service upgrade|downgrade revision`` on ``engine``, as the CLI runs it.

    Alembic runs its own transaction on the connection: a migration that
    builds an index CONCURRENTLY steps out of it (``autocommit_block``).
    """
    with engine.connect() as connection:
        step(alembic_config(connection, service), revision)
        connection.commit()
