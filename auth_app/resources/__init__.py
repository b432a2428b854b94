"""The auth service's HTTP resources: one package per resource, ``routes.py`` + ``schemas.py``."""

from __future__ import annotations

from sqlalchemy import text

from auth_app.config import AuthSettings
from auth_app.extensions import redis_client
from auth_app.resources.account.routes import blp as account
from auth_app.resources.auth.routes import INTROSPECTION_SCHEME
from auth_app.resources.auth.routes import blp as auth
from auth_app.resources.auth.schemas import MfaRequiredSchema
from auth_app.resources.discovery.routes import blp as discovery
from auth_app.resources.events.routes import blp as events
from auth_app.resources.jwks.routes import blp as jwks
from auth_app.resources.mfa.routes import blp as mfa
from auth_app.resources.recovery.routes import blp as recovery
from auth_app.resources.sessions.routes import blp as sessions
from common.flask_db import get_session
from common.web import ServiceApi, health_blueprint


def _database_ready() -> None:
    get_session().execute(text("SELECT 1"))


def _redis_ready() -> None:
    redis_client().ping()


def _document_body_rules(api: ServiceApi, password_min_length: int) -> None:
    # What the bodies' marshmallow schemas cannot say in the document by themselves:
    # login takes exactly one of email or username, and a new password's minimum
    # length is this service's PASSWORD_MIN_LENGTH. (The rest of the password
    # policy, common passwords and the account's own email or username, is the
    # documented 422.)
    schemas = api.spec.components.schemas
    schemas["Login"]["oneOf"] = [{"required": ["email"]}, {"required": ["username"]}]
    schemas["LoginMfa"]["oneOf"] = [{"required": ["code"]}, {"required": ["recovery_code"]}]

    for name, field in (
        ("Register", "password"),
        ("PasswordChange", "new_password"),
        ("ResetPassword", "new_password"),
    ):
        schemas[name]["properties"][field]["minLength"] = password_min_length


def register_resources(api: ServiceApi, settings: AuthSettings) -> None:
    """Register every blueprint of the auth service, health checks included."""
    api.spec.components.security_scheme(
        INTROSPECTION_SCHEME,
        {
            "type": "http",
            "scheme": "basic",
            "description": "A client of INTROSPECTION_CLIENTS: its id and secret",
        },
    )
    # The other shape a login or a password reset answers (auth.routes.LOGIN_ANSWER).
    api.spec.components.schema("MfaRequired", schema=MfaRequiredSchema)
    for blueprint in (auth, account, recovery, mfa, sessions, events, jwks, discovery):
        api.register_blueprint(blueprint)
    api.register_blueprint(health_blueprint({"database": _database_ready, "redis": _redis_ready}))
    _document_body_rules(api, settings.password_min_length)
