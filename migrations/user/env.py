"""Alembic environment of the user service: its own metadata, its own database URL."""

from common.migrations import run_migrations
from user_app.config import database_url_from_env
from user_app.models import Base

run_migrations(Base.metadata, database_url_from_env)
