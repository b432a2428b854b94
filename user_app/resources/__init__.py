"""The user service's HTTP resources: one package per resource, ``routes.py`` + ``schemas.py``."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import text

from common.web import ServiceApi, health_blueprint
from user_app.resources.users.routes import blp as users


def _database_ready() -> None:
    with current_app.extensions["database"].engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def register_resources(api: ServiceApi) -> None:
    """Register every blueprint of the user service, health checks included."""
    api.register_blueprint(users)
    api.register_blueprint(health_blueprint({"database": _database_ready}))
