"""Alembic environment of the auth service: its own metadata, its own database URL."""

from auth_app.config import database_url_from_env
from auth_app.models import Base
from common.migrations import run_migrations

run_migrations(Base.metadata, database_url_from_env)
