"""What a user app makes once and every request shares, attached by :func:`init_app`.

The database, and the bearer guard: a token verifier over the keys the service
trusts (the auth service's JWKS, or its public key as PEM or file) followed by
the user service's own account check (:func:`user_app.access.check_account`).
"""

from __future__ import annotations

from typing import cast

from flask import Flask, current_app
from sqlalchemy.exc import InterfaceError, OperationalError

from common.auth import BearerAuth
from common.flask_db import Database
from common.http_metrics import install_metrics
from common.jwks import JWKSKeySet
from common.keys import KeyRing
from common.metrics import UserRecorder
from common.tokens import KeySet, TokenVerifier
from common.web import ServiceApi
from user_app.access import check_account
from user_app.config import UserSettings
from user_app.models import Base

DATABASE_UNAVAILABLE = (503, "The user database is unavailable, try again shortly")


def key_set(settings: UserSettings) -> KeySet:
    """The keys tokens are verified with: the auth service's JWKS if configured, else PEM keys.

    Raises ConfigError when the configured key cannot be read.
    """
    if settings.auth_jwks_url:
        return JWKSKeySet(
            settings.auth_jwks_url,
            cooldown=settings.jwks_refetch_cooldown_seconds,
            timeout=settings.jwks_timeout_seconds,
        )
    # Retired keys stay trusted as long as a token they signed can be alive.
    retain = settings.key_retention_seconds
    if settings.jwt_public_key:
        return KeyRing(public_pem=settings.jwt_public_key, retain_seconds=retain)
    return KeyRing(public_path=settings.public_key_path, retain_seconds=retain)


def init_app(app: Flask, api: ServiceApi, settings: UserSettings) -> None:
    """Make the app's shared objects and attach them to ``app``."""
    app.extensions["settings"] = settings
    # Reading a profile is the common request: no transaction around it.
    Database.from_url(settings.database_url, autocommit_reads=True).init_app(
        app, create_schema=Base if settings.create_schema else None
    )
    verifier = TokenVerifier(
        key_set(settings),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
    )
    recorder = UserRecorder(settings.metrics_enabled)
    install_metrics(app, api, recorder)
    BearerAuth(
        verifier, check=check_account, realm="user-service", on_outcome=recorder.token_check
    ).init_app(app)
    api.map_errors(
        app, {OperationalError: DATABASE_UNAVAILABLE, InterfaceError: DATABASE_UNAVAILABLE}
    )


def settings() -> UserSettings:
    """The current app's settings."""
    return cast(UserSettings, current_app.extensions["settings"])
