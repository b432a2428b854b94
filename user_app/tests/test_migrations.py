"""Alembic builds exactly the models' schema, on SQLite and on PostgreSQL, and tears it down."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.orm import sessionmaker

from common.db import make_engine
from tests.support.servers import fresh_postgres_database
from user_app import administration
from user_app.models import Base
from user_app.tests import messages

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(connection) -> Config:
    config = Config(str(ROOT / "alembic.ini"), ini_section="user")
    config.set_main_option("script_location", str(ROOT / "migrations" / "user"))
    config.attributes["connection"] = connection
    return config


def upgrade_compare_downgrade(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        assert inspect(engine).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()


def test_migrations_on_a_fresh_sqlite_database(tmp_path):
    upgrade_compare_downgrade(f"sqlite:///{tmp_path / 'user.db'}")


def test_migrations_on_a_fresh_postgresql_database():
    with fresh_postgres_database("user_migrations") as url:
        upgrade_compare_downgrade(url)


def test_the_models_run_on_postgresql():
    """The domain's upserts and searches on PostgreSQL, through the migrated schema."""
    with fresh_postgres_database("user_domain") as url:
        engine = make_engine(url)
        try:
            with engine.begin() as connection:
                command.upgrade(alembic_config(connection), "head")
            sessions = sessionmaker(engine, expire_on_commit=False)
            user_id = str(uuid.uuid4())
            data = {"user_id": user_id, "email": "pg@example.com", "username": "pg_user"}
            now = datetime.now(UTC)
            with sessions() as session:
                messages.apply_sessions_revoked(session, user_id, 1_700_000_000)
                messages.apply_sessions_revoked(session, user_id, 1_700_000_001.5)
                messages.apply_user_created(session, data, now)
                messages.apply_user_created(session, data, now)
                session.commit()
            with sessions() as session:
                total, page = administration.search_profiles(session, q="PG_U")
                assert total == 1 and page[0].tokens_valid_after == 1_700_000_001.5
                administration.update_profile(
                    session, page[0], {"is_active": False}, by="an-admin", roles=("user", "admin")
                )
                messages.apply_user_deleted(session, user_id, now)
                messages.apply_user_deleted(session, user_id, now)
                session.commit()
            with sessions() as session:
                assert messages.apply_user_created(session, data, now) is None
                assert administration.search_profiles(session) == (0, [])
        finally:
            engine.dispose()
