"""What an auth app makes once and every request shares, attached by :func:`init_app`.

The database, the Redis client and the stores on it (revocations, the login
throttle per account and address), the password hasher, the signing keys (key
files or PEM variables, or the database key store) and the token issuer live
in ``app.extensions``; the functions below hand the
current app's to views, the CLI and the access check. The per-address rate
limiter is flask-limiter's, one per process (flask-limiter keeps one app's
storage and switches; a process serves one app), so views can name it in
``@limiter.limit``.
"""

from __future__ import annotations

import time
from typing import Any, cast

import click
import redis
from flask import Flask, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError

from auth_app.access import AccessCheck
from auth_app.config import AuthSettings
from auth_app.introspection import IntrospectionClients
from auth_app.key_store import DatabaseKeyRing, KeySealer
from auth_app.login_throttle import LoginThrottle
from auth_app.mfa import MfaKeys
from auth_app.models import Base
from auth_app.passwords import PasswordHasher
from auth_app.revocation import REDIS_TIMEOUT_SECONDS, RevocationStore
from auth_app.security_events import bind_client, unbind_client
from auth_app.tokens import TokenIssuer
from common.auth import BearerAuth
from common.config import ConfigError
from common.flask_db import Database
from common.http_metrics import install_metrics
from common.keys import KeyRing, SigningKeys
from common.metrics import AuthRecorder
from common.tokens import TokenVerifier
from common.web import ServiceApi, client_address

TOO_MANY_REQUESTS = "Too many requests from this address; try again later"


def _limited_client() -> str:
    # The app's own prefix goes into the key: flask-limiter keeps the prefix of
    # the first app it served, and test processes build many apps. The address
    # is the client's behind TRUSTED_PROXY_COUNT proxies (common.web).
    return f"{settings().ratelimit_key_prefix}:{client_address()}"


#: Per-client-address limits on the endpoints anyone may call (register, login, refresh),
#: each endpoint its own bucket (flask-limiter scopes a limit to its endpoint).
limiter = Limiter(key_func=_limited_client, default_limits=[], headers_enabled=False)


def auth_rate_limit() -> str:
    """The configured limit of each rate-limited endpoint (``RATELIMIT_AUTH``)."""
    return settings().ratelimit_auth


class _DeferredKeyRing:
    """Loads the key ring on first use: lets ``flask keys generate`` run before keys exist."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._ring: KeyRing | None = None

    def __getattr__(self, name: str) -> Any:
        if self._ring is None:
            self._ring = signing_keys(self._settings)
        return getattr(self._ring, name)


def signing_keys(settings: AuthSettings) -> KeyRing:
    """The key ring the service signs with: PEM variables, else key files."""
    return KeyRing(
        private_path=settings.private_key_path,
        public_path=settings.public_key_path,
        private_pem=settings.jwt_private_key,
        public_pem=settings.jwt_public_key,
        retain_seconds=settings.key_retention_seconds,
        need_private=True,
    )


def database_signing_keys(settings: AuthSettings, database: Database) -> DatabaseKeyRing:
    """The key ring of ``KEY_STORE=database``: the keys every auth node shares, unread yet."""
    assert settings.key_sealing_key is not None  # the settings refuse the store without it
    return DatabaseKeyRing(
        database.sessionmaker,
        KeySealer(settings.key_sealing_key),
        retain_seconds=settings.key_retention_seconds,
        activation_seconds=settings.key_activation_seconds,
        check_interval=settings.key_check_interval_seconds,
    )


def _keys_for(settings: AuthSettings, database: Database) -> SigningKeys:
    # Under the flask CLI the keys may not exist yet (`keys generate` makes
    # them): they are read on first use. A web process, with no click context,
    # reads them at once and stops if it cannot use them.
    under_cli = click.get_current_context(silent=True) is not None
    if settings.key_store == "database":
        ring = database_signing_keys(settings, database)
        if not under_cli:
            ring.load_at_start()
        return ring
    try:
        return signing_keys(settings)
    except ConfigError:
        if not under_cli:
            raise
        return cast(KeyRing, _DeferredKeyRing(settings))


def init_app(app: Flask, api: ServiceApi, settings: AuthSettings) -> None:
    """Make the app's shared objects and attach them to ``app``."""
    app.extensions["settings"] = settings
    database = Database.from_url(settings.database_url)
    database.init_app(app, create_schema=Base if settings.create_schema else None)
    keys = _keys_for(settings, database)
    revocation = RevocationStore.connect(settings, database.sessionmaker)
    client = revocation.client
    app.extensions["redis"] = client
    app.extensions["revocation"] = revocation
    app.extensions["login_throttle"] = LoginThrottle(
        client,
        settings.redis_key_prefix,
        max_failures=settings.login_max_failures,
        window=settings.login_failure_window_seconds,
    )
    app.extensions["password_hasher"] = PasswordHasher(
        settings.bcrypt_rounds, settings.password_pepper
    )
    app.extensions["token_issuer"] = TokenIssuer(keys, revocation, settings)
    verifier = TokenVerifier(
        keys,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
    )
    recorder = AuthRecorder(settings.metrics_enabled)
    install_metrics(app, api, recorder)
    BearerAuth(
        verifier, AccessCheck(revocation), realm="auth", on_outcome=recorder.token_check
    ).init_app(app)
    app.extensions["introspection_clients"] = IntrospectionClients(settings.introspection_clients)
    app.extensions["mfa_keys"] = MfaKeys(settings.password_pepper)
    _bind_clients(app)
    api.map_errors(
        app,
        {
            OperationalError: (503, "Database unavailable"),
            # A pooled connection found closed by the time it was used (a failover).
            InterfaceError: (503, "Database unavailable"),
            redis.exceptions.ConnectionError: (503, "Redis unavailable"),
            redis.exceptions.TimeoutError: (503, "Redis unavailable"),
            # A primary demoted to a replica (REDIS_URL naming it still), refusing writes.
            redis.exceptions.ReadOnlyError: (503, "Redis unavailable"),
            ConfigError: (503, "Signing keys unavailable"),
        },
    )
    _init_limiter(app, api, settings)


def _bind_clients(app: Flask) -> None:
    """Each request's client address and user agent, for the sessions and events it writes."""

    @app.before_request
    def bind() -> None:
        g.client_binding = bind_client(client_address(), request.headers.get("User-Agent"))

    @app.teardown_request
    def unbind(_error: BaseException | None) -> None:
        binding = g.pop("client_binding", None)
        if binding is not None:
            unbind_client(binding)


def limiter_storage(settings: AuthSettings) -> tuple[str, dict[str, Any]]:
    """flask-limiter's storage URI and options: the service's Redis, as the stores use it.

    Behind Sentinel it is the ``limits`` library's ``redis+sentinel://`` storage,
    with the data nodes' password and database as options (the sentinels get
    their own password, or none) and every count on the primary: a replica
    would read counts that replication has not caught up with yet.
    """
    timeouts: dict[str, Any] = {
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
    }
    sentinel = settings.redis_sentinel
    if sentinel is None:
        return settings.redis_url, timeouts
    return sentinel.storage_uri(), {
        **timeouts,
        "db": sentinel.db,
        "password": sentinel.password,
        "use_replicas": False,
        "sentinel_kwargs": {"password": sentinel.sentinel_password, **timeouts},
    }


def _init_limiter(app: Flask, api: ServiceApi, settings: AuthSettings) -> None:
    uri, options = limiter_storage(settings)
    app.config.update(
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_STORAGE_URI=uri,
        RATELIMIT_STORAGE_OPTIONS=options,
    )
    # flask-limiter merges each app's storage options into those of the apps
    # before it; a process that builds several apps (tests) must not hand a
    # plain Redis URL the options of a Sentinel one.
    limiter._storage_options = {}
    limiter.init_app(app)

    def too_many_requests(error: RateLimitExceeded) -> Any:
        payload, code, headers = api.handle_http_exception(error)
        current = limiter.current_limit
        retry_after = 60
        if current is not None:
            retry_after = max(1, int(current.reset_at - time.time()))
        headers = dict(headers or {})
        headers["Retry-After"] = str(retry_after)
        return payload, code, headers

    app.register_error_handler(RateLimitExceeded, too_many_requests)


def settings() -> AuthSettings:
    """The current app's settings."""
    return cast(AuthSettings, current_app.extensions["settings"])


def redis_client() -> redis.Redis:
    """The current app's Redis client."""
    return cast(redis.Redis, current_app.extensions["redis"])


def revocation() -> RevocationStore:
    """The current app's revocation store."""
    return cast(RevocationStore, current_app.extensions["revocation"])


def login_throttle() -> LoginThrottle:
    """The current app's failed-login throttle."""
    return cast(LoginThrottle, current_app.extensions["login_throttle"])


def password_hasher() -> PasswordHasher:
    """The current app's password hasher."""
    return cast(PasswordHasher, current_app.extensions["password_hasher"])


def introspection_clients() -> IntrospectionClients:
    """The current app's clients allowed to introspect tokens."""
    return cast(IntrospectionClients, current_app.extensions["introspection_clients"])


def mfa_keys() -> MfaKeys:
    """The current app's keys for second factors at rest."""
    return cast(MfaKeys, current_app.extensions["mfa_keys"])


def metrics() -> AuthRecorder:
    """The current app's metrics recorder."""
    return cast(AuthRecorder, current_app.extensions["metrics"])


def token_issuer() -> TokenIssuer:
    """The current app's token issuer."""
    return cast(TokenIssuer, current_app.extensions["token_issuer"])
