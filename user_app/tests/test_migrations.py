"""Alembic builds exactly the models' schema, on SQLite and on PostgreSQL, and tears it down."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.orm import sessionmaker

from common.db import make_engine
from common.migrations import include_object
from tests.support.migrations import migrate as run_migration
from tests.support.servers import fresh_postgres_database
from user_app import administration
from user_app.models import Base
from user_app.tests import messages

ROOT = Path(__file__).resolve().parents[2]


def migrate(engine, step, revision: str) -> None:
    """``alembic -n user upgrade|downgrade revision`` on ``engine``, as the CLI runs it."""
    run_migration(engine, "user", step, revision)


def upgrade_compare_downgrade(url: str) -> None:
    engine = make_engine(url)
    try:
        migrate(engine, command.upgrade, "head")
        with engine.connect() as connection:
            opts = {"compare_type": True, "include_object": include_object}
            context = MigrationContext.configure(connection, opts=opts)
            assert compare_metadata(context, Base.metadata) == []
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        migrate(engine, command.downgrade, "base")
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
            migrate(engine, command.upgrade, "head")
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


def test_the_search_is_served_by_the_trigram_indexes_on_postgresql():
    from sqlalchemy import func, insert, select, text

    from user_app.administration import search_conditions
    from user_app.models import Profile

    with fresh_postgres_database("user_search") as url:
        engine = make_engine(url)
        try:
            migrate(engine, command.upgrade, "head")
            now = datetime.now(UTC)
            rows = [
                {
                    "id": str(uuid.uuid4()),
                    "email": f"person{n}@domain{n % 97}.example",
                    "username": f"user{n}",
                    "display_name": f"Person Number {n}",
                    "roles": ["user"],
                    "is_active": True,
                    "email_verified": False,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(20_000)
            ]
            with engine.begin() as connection:
                connection.execute(insert(Profile), rows)
                connection.execute(text("ANALYZE profiles"))
            query = (
                select(func.count()).select_from(Profile).where(*search_conditions("r123", None))
            )
            compiled = query.compile(engine)
            with engine.connect() as connection:
                # Whether the indexes can serve it: on a table this small the
                # planner would rather scan (a million rows: bench --only scale).
                connection.execute(text("SET enable_seqscan = off"))
                explained = connection.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)
                plan = "\n".join(explained.scalars())
                found = connection.execute(query).scalar_one()
        finally:
            engine.dispose()
    assert "ix_profiles_email_trgm" in plan and "ix_profiles_username_trgm" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert found == 111  # user123, user1230-user1239, user12300-user12399 (and their emails)


def _profile_rows(count: int, **overrides) -> list[dict]:
    now = datetime.now(UTC)
    return [
        {
            "id": str(uuid.uuid4()),
            "email": f"counted{n}@example.com",
            "username": f"counted{n}",
            "roles": ["user"],
            "is_active": True,
            "email_verified": False,
            "created_at": now,
            "updated_at": now,
            **overrides,
        }
        for n in range(count)
    ]


def _totals(engine) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(kept, counted) totals for all, active and inactive profiles."""
    from sqlalchemy import text

    with sessionmaker(engine)() as session:
        kept = tuple(
            administration.count_profiles(session, None, flag) for flag in (None, True, False)
        )
    with engine.connect() as connection:
        counted = tuple(
            connection.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE is_active),"
                    " count(*) FILTER (WHERE NOT is_active) FROM profiles"
                )
            ).one()
        )
    return kept, counted


def test_the_listing_total_is_kept_exact_by_the_database_on_postgresql():
    """Inserts, deletes, is_active changes, rollbacks, concurrent writers, truncation."""
    import threading

    from sqlalchemy import delete, insert, text, update

    from user_app.models import Profile

    with fresh_postgres_database("user_counts") as url:
        engine = make_engine(url)
        try:
            # Profiles that exist before the counts do are counted by the migration.
            migrate(engine, command.upgrade, "0005")
            with engine.begin() as connection:
                connection.execute(insert(Profile), _profile_rows(7))
            migrate(engine, command.upgrade, "head")
            assert _totals(engine) == ((7, 7, 0), (7, 7, 0))

            with engine.begin() as connection:
                connection.execute(insert(Profile), _profile_rows(5, is_active=False))
                connection.execute(
                    update(Profile)
                    .where(Profile.id.in_(select_ids(connection, 2, True)))
                    .values(is_active=False)
                )
                connection.execute(
                    delete(Profile).where(Profile.id.in_(select_ids(connection, 1, False)))
                )
                # An update that changes nothing counted changes no count.
                connection.execute(update(Profile).values(bio="unchanged count"))
            assert _totals(engine) == ((11, 5, 6), (11, 5, 6))

            with engine.connect() as connection:
                connection.execute(insert(Profile), _profile_rows(3))
                connection.rollback()
            assert _totals(engine)[0] == (11, 5, 6)

            def churn(seed: int) -> None:
                for _ in range(20):
                    with engine.begin() as connection:
                        rows = _profile_rows(3, is_active=bool(seed % 2))
                        connection.execute(insert(Profile), rows)
                        connection.execute(
                            update(Profile)
                            .where(Profile.id == rows[0]["id"])
                            .values(is_active=not rows[0]["is_active"])
                        )
                        connection.execute(delete(Profile).where(Profile.id == rows[1]["id"]))

            writers = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join()
            kept, counted = _totals(engine)
            assert kept == counted and kept[0] == 11 + 4 * 20 * 2

            with engine.begin() as connection:
                connection.execute(text("TRUNCATE profiles"))
            assert _totals(engine) == ((0, 0, 0), (0, 0, 0))
        finally:
            engine.dispose()


def select_ids(connection, count: int, active: bool) -> list[str]:
    from sqlalchemy import select

    from user_app.models import Profile

    query = select(Profile.id).where(Profile.is_active.is_(active)).limit(count)
    return list(connection.execute(query).scalars())
