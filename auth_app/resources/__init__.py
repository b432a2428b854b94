"""The auth service's HTTP resources, one blueprint per module."""

from __future__ import annotations

from sqlalchemy import text

from auth_app.components import components
from auth_app.resources import account, auth, jwks
from common.db import get_session
from common.web import ServiceApi, health_blueprint


def _database_ready() -> None:
    get_session().execute(text("SELECT 1"))


def _redis_ready() -> None:
    components().redis.ping()


def register_blueprints(api: ServiceApi) -> None:
    """Register every blueprint of the auth service, health checks included."""
    api.register_blueprint(auth.blp)
    api.register_blueprint(account.blp)
    api.register_blueprint(jwks.blp)
    api.register_blueprint(health_blueprint({"database": _database_ready, "redis": _redis_ready}))
