"""Alembic's auth migrations build exactly the models' schema, and tear it down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from auth_app.models import Base
from tests.support.migrations import migrate as run_migration
from tests.support.servers import fresh_postgres_database

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC = str(Path(sys.executable).with_name("alembic"))


def schema_diffs(engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def migrate(engine, step, revision: str) -> None:
    """``alembic -n auth upgrade|downgrade revision`` on ``engine``, as the CLI runs it."""
    run_migration(engine, "auth", step, revision)


def test_cli_upgrade_on_a_fresh_sqlite_file_matches_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    env = {**os.environ, "AUTH_DATABASE_URL": url}
    result = subprocess.run(
        [ALEMBIC, "-n", "auth", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    engine = create_engine(url)
    try:
        assert schema_diffs(engine) == []
        migrate(engine, command.downgrade, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_on_a_fresh_postgres_database_matches_the_models():
    with fresh_postgres_database("auth_migrations") as url:
        engine = create_engine(url)
        try:
            migrate(engine, command.upgrade, "head")
            assert schema_diffs(engine) == []
            migrate(engine, command.downgrade, "base")
            assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        finally:
            engine.dispose()
