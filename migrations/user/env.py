"""Alembic environment of the user service: its own metadata, its own database URL."""

from common.config import ConfigError, fail
from common.migrations import run_migrations
from user_app.config import user_database_url
from user_app.models import Base


def _url() -> str:
    try:
        return user_database_url()
    except ConfigError as error:
        fail(error)


run_migrations(Base.metadata, _url)
