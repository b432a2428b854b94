"""The auth service: accounts, RS256 access tokens, rotating refresh tokens.

``create_app()`` builds the Flask app (gunicorn serves ``'auth_app:create_app()'``);
nothing is created at import time.
"""

from __future__ import annotations

import logging
import time

import click
import redis
from flask import Flask
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from sqlalchemy.exc import OperationalError

from auth_app.cli import keys_cli, users_cli
from auth_app.components import Components, check_access_token
from auth_app.config import load_config
from auth_app.login_throttle import LoginThrottle
from auth_app.models import Base
from auth_app.passwords import PasswordHasher
from auth_app.resources import register_blueprints
from auth_app.resources.auth import RATE_LIMITED_ENDPOINTS
from auth_app.revocation import RevocationStore
from auth_app.tokens import AccessTokenIssuer
from common.auth import BearerAuth
from common.config import ConfigError, fail
from common.db import init_database
from common.keys import KeyRing
from common.logging import configure_logging
from common.tokens import TokenVerifier
from common.web import create_api

log = logging.getLogger("auth_app")

REDIS_TIMEOUT_SECONDS = 2


class _DeferredKeyRing:
    """Loads the key ring on first use: lets ``flask keys generate`` run before keys exist."""

    def __init__(self, factory):
        self._factory = factory
        self._ring = None

    def __getattr__(self, name):
        if self._ring is None:
            self._ring = self._factory()
        return getattr(self._ring, name)


def _key_ring(config: dict):
    def build():
        return KeyRing(
            private_path=config["PRIVATE_KEY_PATH"],
            public_path=config["PUBLIC_KEY_PATH"],
            private_pem=config["JWT_PRIVATE_KEY"],
            public_pem=config["JWT_PUBLIC_KEY"],
            retain_seconds=config["ACCESS_TOKEN_EXPIRE_MINUTES"] * 60
            + config["JWT_LEEWAY_SECONDS"],
            need_private=True,
        )

    try:
        return build()
    except ConfigError:
        # Under the flask CLI the keys may not exist yet (`keys generate` makes
        # them); a web process, with no click context, stops at once instead.
        if click.get_current_context(silent=True) is None:
            raise
        return _DeferredKeyRing(build)


def _rate_limiter(app: Flask, api) -> Limiter | None:
    config = app.config
    if not config["RATELIMIT_ENABLED"]:
        return None
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=config["REDIS_URL"],
        storage_options={
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
        },
        key_prefix=config["RATELIMIT_KEY_PREFIX"],
        headers_enabled=False,
        default_limits=[],
    )
    limit = limiter.limit(
        lambda: app.config["RATELIMIT_AUTH"],
        error_message="Too many requests from this address; try again later",
    )
    for endpoint in RATE_LIMITED_ENDPOINTS:
        app.view_functions[endpoint] = limit(app.view_functions[endpoint])

    def too_many_requests(error: RateLimitExceeded):
        payload, code, headers = api.handle_http_exception(error)
        current = limiter.current_limit
        retry_after = 60
        if current is not None:
            retry_after = max(1, int(current.reset_at - time.time()))
        headers = dict(headers or {})
        headers["Retry-After"] = str(retry_after)
        return payload, code, headers

    app.register_error_handler(RateLimitExceeded, too_many_requests)
    return limiter


def _build(config: dict | None) -> Flask:
    settings = load_config(config)
    app = Flask(__name__)
    app.config.update(settings)
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    keys = _key_ring(app.config)
    api = create_api(app)
    init_database(app, Base)
    client = redis.Redis.from_url(
        app.config["REDIS_URL"],
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    access_ttl = app.config["ACCESS_TOKEN_EXPIRE_MINUTES"] * 60
    leeway = app.config["JWT_LEEWAY_SECONDS"]
    prefix = app.config["REDIS_KEY_PREFIX"]
    verifier = TokenVerifier(
        keys, issuer=app.config["JWT_ISSUER"], audience=app.config["JWT_AUDIENCE"], leeway=leeway
    )
    BearerAuth(verifier, check_access_token, realm="auth").init_app(app)
    api.map_errors(
        app,
        {
            OperationalError: (503, "Database unavailable"),
            redis.exceptions.ConnectionError: (503, "Redis unavailable"),
            redis.exceptions.TimeoutError: (503, "Redis unavailable"),
            ConfigError: (503, "Signing keys unavailable"),
        },
    )
    register_blueprints(api)
    app.extensions["auth_app"] = Components(
        redis=client,
        hasher=PasswordHasher(app.config["BCRYPT_ROUNDS"], app.config["PASSWORD_PEPPER"]),
        revocation=RevocationStore(client, prefix, access_ttl=access_ttl, leeway=leeway),
        throttle=LoginThrottle(
            client,
            prefix,
            max_failures=app.config["LOGIN_MAX_FAILURES"],
            window=app.config["LOGIN_FAILURE_WINDOW_SECONDS"],
        ),
        issuer=AccessTokenIssuer(
            keys,
            issuer=app.config["JWT_ISSUER"],
            audience=app.config["JWT_AUDIENCE"],
            client_id=app.config["JWT_CLIENT_ID"],
            ttl=access_ttl,
        ),
        verifier=verifier,
        limiter=_rate_limiter(app, api),
    )
    app.cli.add_command(keys_cli)
    app.cli.add_command(users_cli)
    return app


def create_app(config: dict | None = None) -> Flask:
    """Build the auth service; a configuration error ends the process with one line."""
    try:
        return _build(config)
    except ConfigError as error:
        fail(error)
