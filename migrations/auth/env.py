"""Alembic environment of the auth service: its own metadata, its own database URL."""

from auth_app.config import database_url_from_env
from auth_app.models import Base
from common.config import ConfigError, fail
from common.migrations import run_migrations


def _url() -> str:
    try:
        return database_url_from_env()
    except ConfigError as error:
        fail(error)


run_migrations(Base.metadata, _url)
