"""The auth service's settings, read from the environment once per process.

Every value has a name in the contract (or below) and a default that works on a
developer's machine. A malformed value raises ConfigError naming the variable;
``create_app``, the CLI and the workers turn that into one line and a non-zero
exit.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import formataddr, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common.config import (
    ConfigError,
    Env,
    RedisSentinel,
    WebSettings,
    build_settings,
    database_url,
    redis_sentinel,
    redis_url,
    web_settings_values,
)

# A fixed, public development pepper, used only with APP_ENV=development (which
# `make run` sets). Anywhere else PASSWORD_PEPPER must be a secret of its own, and
# this value or none stops the process (changing it invalidates every stored hash).
DEV_PASSWORD_PEPPER = "auth-app-development-pepper"
DEVELOPMENT = "development"
DEFAULT_CLIENT_ID = "auth_app"
DEFAULT_MAIL_FROM = "authsvc <no-reply@localhost>"
DEFAULT_FRONTEND_URL = "http://localhost:3000"
EMAIL_VERIFICATION_MODES = ("off", "optional", "required")
#: ``KEY_STORE``: signing keys in files or PEM variables (one node), or in the auth database.
KEY_STORES = ("file", "database")
KEY_ENCRYPTION_KEY_BYTES = 32
# The development Kubernetes overlay's key encryption key: public, so refused,
# like the development pepper, anywhere but APP_ENV=development.
DEV_KEY_ENCRYPTION_KEY = base64.b64decode("YXV0aHN2YyBkZXZlbG9wbWVudCBrZXk7IHB1YmxpYyE=")
KEY_ENCRYPTION_KEY_HINT = (
    f"{KEY_ENCRYPTION_KEY_BYTES} random bytes in base64 or base64url, "
    "such as `openssl rand -base64 32` prints"
)
#: How much later than every node's next key check a rotated-in key starts signing:
#: room for the rotating host's clock to run behind the nodes' by that much.
KEY_ACTIVATION_MARGIN_SECONDS = 3.0


@dataclass(frozen=True, kw_only=True)
class AuthSettings(WebSettings):
    """Everything the auth service is configured with."""

    #: ``REDIS_URL`` (or its parts): the one Redis server, unless Sentinel names it.
    redis_url: str = "redis://localhost:6379/0"
    #: ``REDIS_SENTINELS`` with ``REDIS_SENTINEL_MASTER``: the primary is whichever server
    #: the sentinels name now; ``redis_url`` is then not used.
    redis_sentinel: RedisSentinel | None = None
    redis_key_prefix: str = "auth:"
    private_key_path: Path | None = Path("keys/private.pem")
    public_key_path: Path | None = Path("keys/public.pem")
    jwt_private_key: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = None
    #: ``KEY_STORE``: ``file`` (the paths or PEM variables above) or ``database``.
    key_store: str = "file"
    #: ``KEY_ENCRYPTION_KEY``: seals the private keys of the database key store.
    key_encryption_key: str = field(default="", repr=False)
    #: ``KEY_CHECK_INTERVAL_SECONDS``: how often a process asks the database key store
    #: whether the keys changed (one indexed ``SELECT max(id)``).
    key_check_interval_seconds: float = 2.0
    jwt_client_id: str = DEFAULT_CLIENT_ID
    refresh_token_expire_days: int = 30
    refresh_reuse_grace_seconds: int = 10
    session_max_age_days: int = 90
    bcrypt_rounds: int = 12
    password_min_length: int = 8
    #: ``APP_ENV``: only ``development`` may run on the public development pepper.
    app_env: str = "production"
    #: ``PASSWORD_PEPPER``; empty means the development pepper, where that is allowed.
    #: Secrets stay out of the settings' repr, so a logged settings object shows none.
    password_pepper: str = field(default="", repr=False)
    login_max_failures: int = 5
    login_failure_window_seconds: int = 900
    ratelimit_enabled: bool = True
    ratelimit_auth: str = "20/minute"
    ratelimit_key_prefix: str = "auth-limiter"
    #: ``INTROSPECTION_CLIENTS``: ``(client_id, secret)`` of each client allowed to introspect.
    introspection_clients: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: ``EMAIL_VERIFICATION``: ``off`` (no mail), ``optional`` or ``required`` (no login before).
    email_verification: str = "optional"
    #: ``MAIL_FROM``: the From of every mail.
    mail_from: str = DEFAULT_MAIL_FROM
    #: ``FRONTEND_URL``: where the links in mails point (``/reset-password?token=...``).
    frontend_url: str = DEFAULT_FRONTEND_URL
    reset_token_ttl_minutes: int = 30
    verify_token_ttl_hours: int = 24
    #: ``TOTP_ISSUER``: the name authenticator apps show beside the account.
    totp_issuer: str = "authsvc"
    #: ``SECURITY_EVENT_RETENTION_DAYS``: how long security events are kept.
    security_event_retention_days: int = 90
    #: How long a refresh token lives.
    refresh_token_ttl: timedelta = field(init=False)
    #: How long a login lives, however often it is refreshed.
    session_max_age: timedelta = field(init=False)
    #: How long after its rotation a refresh token still answers (two tabs refreshing at once).
    refresh_reuse_grace: timedelta = field(init=False)
    #: How long a password reset link works.
    reset_token_ttl: timedelta = field(init=False)
    #: How long an email verification or email change link works.
    verify_token_ttl: timedelta = field(init=False)
    #: The 32 bytes of ``KEY_ENCRYPTION_KEY`` (``None`` when it is not set).
    key_sealing_key: bytes | None = field(init=False, repr=False)
    #: Seconds from a key's creation in the database store to its first signature:
    #: by then every node has read it and publishes it.
    key_activation_seconds: float = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._derive("password_pepper", checked_pepper(self.password_pepper, self.app_env))
        self._derive("refresh_token_ttl", timedelta(days=self.refresh_token_expire_days))
        self._derive("session_max_age", timedelta(days=self.session_max_age_days))
        self._derive("refresh_reuse_grace", timedelta(seconds=self.refresh_reuse_grace_seconds))
        self._derive("reset_token_ttl", timedelta(minutes=self.reset_token_ttl_minutes))
        self._derive("verify_token_ttl", timedelta(hours=self.verify_token_ttl_hours))
        self._derive("frontend_url", checked_frontend_url(self.frontend_url))
        self._derive("key_sealing_key", checked_key_store(self))
        self._derive(
            "key_activation_seconds",
            self.key_check_interval_seconds + KEY_ACTIVATION_MARGIN_SECONDS,
        )


def checked_pepper(pepper: str, app_env: str) -> str:
    """The pepper to hash with; the public development one only under ``APP_ENV=development``.

    Anywhere else a missing or empty ``PASSWORD_PEPPER``, or the development
    value itself, is a configuration error: hashes keyed with a published
    pepper can be tested against guesses by whoever steals the database.
    """
    if pepper and pepper != DEV_PASSWORD_PEPPER:
        return pepper
    if app_env.lower() == DEVELOPMENT:
        return DEV_PASSWORD_PEPPER
    if not pepper:
        raise ConfigError(
            "PASSWORD_PEPPER must be set to a secret of its own (APP_ENV is "
            f"{app_env!r}; only APP_ENV=development runs on the public development pepper)"
        )
    raise ConfigError(
        "PASSWORD_PEPPER is the public development pepper; set a secret of its own "
        f"(APP_ENV is {app_env!r}; the development pepper needs APP_ENV=development)"
    )


def key_encryption_key(value: str) -> bytes:
    """The bytes of a ``KEY_ENCRYPTION_KEY``: 32, in base64 or base64url, padded or not.

    The error never quotes the value: it is a secret.
    """
    text = value.strip()
    standard = text.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_ENCRYPTION_KEY_BYTES:
        raise ConfigError(f"KEY_ENCRYPTION_KEY must be {KEY_ENCRYPTION_KEY_HINT}")
    return raw


def checked_key_store(settings: AuthSettings) -> bytes | None:
    """The key encryption key's bytes, once the key store settings agree with each other.

    ``KEY_STORE=database`` needs ``KEY_ENCRYPTION_KEY`` and excludes
    ``JWT_PRIVATE_KEY`` (two sources of the signing key would leave it unclear
    which one signs). A malformed ``KEY_ENCRYPTION_KEY`` is refused whatever the
    store, like any other bad value.
    """
    if settings.key_store not in KEY_STORES:
        raise ConfigError(
            f"KEY_STORE must be one of {', '.join(KEY_STORES)}, got {settings.key_store!r}"
        )
    if not 0.1 <= settings.key_check_interval_seconds <= 60:
        raise ConfigError(
            "KEY_CHECK_INTERVAL_SECONDS must be between 0.1 and 60, "
            f"got {settings.key_check_interval_seconds}"
        )
    sealing_key = (
        key_encryption_key(settings.key_encryption_key) if settings.key_encryption_key else None
    )
    if sealing_key == DEV_KEY_ENCRYPTION_KEY and settings.app_env.lower() != DEVELOPMENT:
        raise ConfigError(
            "KEY_ENCRYPTION_KEY is the public development key; set a secret of its own "
            f"(APP_ENV is {settings.app_env!r}; the development key needs APP_ENV=development)"
        )
    if settings.key_store != "database":
        return sealing_key
    if sealing_key is None:
        raise ConfigError(
            "KEY_ENCRYPTION_KEY must be set with KEY_STORE=database "
            f"(it encrypts the signing keys in the auth database): {KEY_ENCRYPTION_KEY_HINT}"
        )
    if settings.jwt_private_key:
        raise ConfigError(
            "JWT_PRIVATE_KEY is set, but KEY_STORE=database keeps the signing keys in the "
            "auth database: unset one of them"
        )
    return sealing_key


def checked_frontend_url(url: str) -> str:
    """``FRONTEND_URL`` without a trailing slash; an absolute http(s) URL with no query.

    Every link a mail carries is this plus a path and the token: anything else
    would send users (and their tokens) somewhere unintended.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            f"FRONTEND_URL must be an absolute http(s) URL without query or fragment, got {url!r}"
        )
    return url.rstrip("/")


def checked_mail_from(value: str) -> str:
    """``MAIL_FROM``: one address, with or without a display name (``Name <a@b.example>``)."""
    name, address = parseaddr(value)
    if "@" not in address or any(ch in value for ch in "\r\n"):
        raise ConfigError(f"MAIL_FROM must be an email address such as {DEFAULT_MAIL_FROM!r}")
    return formataddr((name, address)) if name else address


def _totp_issuer(env: Env) -> str:
    """``TOTP_ISSUER``: printable, without the colon that separates it from the account."""
    issuer = env.str("TOTP_ISSUER", "authsvc")
    if ":" in issuer or not issuer.isprintable() or len(issuer) > 64:
        raise ConfigError("TOTP_ISSUER must be up to 64 printable characters without ':'")
    return issuer


def database_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The auth database URL by the contract's precedence (used by Alembic too)."""
    return database_url(Env(environ), "AUTH", "auth")


def _rate_limit(env: Env, name: str, default: str) -> str:
    # Imported here: the workers read these settings too, and never rate-limit.
    from limits import parse_many

    value = env.str(name, default) or default
    try:
        if not parse_many(value):
            raise ValueError(value)
    except ValueError:
        raise ConfigError(f"{name} must be a rate limit such as 20/minute, got {value!r}") from None
    return value


def introspection_clients(env: Env) -> tuple[tuple[str, str], ...]:
    """``INTROSPECTION_CLIENTS``: ``id:secret`` pairs, comma-separated; none by default.

    An error names the entry by its position, never its text: that holds a secret.
    """
    clients: dict[str, str] = {}
    for position, entry in enumerate(env.list("INTROSPECTION_CLIENTS"), 1):
        client_id, colon, secret = (part.strip() for part in entry.partition(":"))
        if not (colon and client_id and secret):
            raise ConfigError(
                f"INTROSPECTION_CLIENTS entry {position} is not id:secret (both non-empty)"
            )
        if client_id in clients:
            raise ConfigError(f"INTROSPECTION_CLIENTS names client {client_id!r} twice")
        clients[client_id] = secret
    return tuple(clients.items())


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> AuthSettings:
    """The auth service's settings; ``overrides`` (tests) win over the environment."""
    env = Env(environ)
    algorithm = env.str("ALGORITHM", "RS256")
    if algorithm != "RS256":
        raise ConfigError(f"ALGORITHM must be RS256, got {algorithm!r}")
    values = web_settings_values(env, leeway_minimum=1, access_maximum=24 * 60)
    sentinel = redis_sentinel(env, "AUTH")
    if sentinel is None:
        values["redis_url"] = redis_url(env, "AUTH")
    values.update(
        redis_sentinel=sentinel,
        redis_key_prefix=env.str("AUTH_REDIS_KEY_PREFIX", "auth:"),
        private_key_path=Path(env.str("PRIVATE_KEY_PATH", "keys/private.pem")),
        public_key_path=Path(env.str("PUBLIC_KEY_PATH", "keys/public.pem")),
        jwt_private_key=env.str("JWT_PRIVATE_KEY"),
        jwt_public_key=env.str("JWT_PUBLIC_KEY"),
        key_store=env.choice("KEY_STORE", "file", KEY_STORES),
        key_encryption_key=env.str("KEY_ENCRYPTION_KEY", ""),
        key_check_interval_seconds=env.float("KEY_CHECK_INTERVAL_SECONDS", 2.0, minimum=0.1),
        jwt_client_id=env.str("JWT_CLIENT_ID", DEFAULT_CLIENT_ID),
        refresh_token_expire_days=env.int("REFRESH_TOKEN_EXPIRE_DAYS", 30, minimum=1),
        refresh_reuse_grace_seconds=env.int(
            "REFRESH_REUSE_GRACE_SECONDS", 10, minimum=0, maximum=300
        ),
        session_max_age_days=env.int("SESSION_MAX_AGE_DAYS", 90, minimum=1, maximum=3650),
        bcrypt_rounds=env.int("BCRYPT_ROUNDS", 12, minimum=4, maximum=31),
        password_min_length=env.int("PASSWORD_MIN_LENGTH", 8, minimum=1, maximum=1024),
        app_env=env.str("APP_ENV", "production"),
        password_pepper=env.str("PASSWORD_PEPPER", ""),
        login_max_failures=env.int("LOGIN_MAX_FAILURES", 5, minimum=0),
        login_failure_window_seconds=env.int("LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1),
        ratelimit_enabled=env.bool("RATELIMIT_ENABLED", True),
        ratelimit_auth=_rate_limit(env, "RATELIMIT_AUTH", "20/minute"),
        ratelimit_key_prefix=env.str("RATELIMIT_KEY_PREFIX", "auth-limiter"),
        introspection_clients=introspection_clients(env),
        email_verification=env.choice("EMAIL_VERIFICATION", "optional", EMAIL_VERIFICATION_MODES),
        mail_from=checked_mail_from(env.str("MAIL_FROM", DEFAULT_MAIL_FROM)),
        frontend_url=env.str("FRONTEND_URL", DEFAULT_FRONTEND_URL),
        reset_token_ttl_minutes=env.int("RESET_TOKEN_TTL_MINUTES", 30, minimum=1, maximum=24 * 60),
        verify_token_ttl_hours=env.int("VERIFY_TOKEN_TTL_HOURS", 24, minimum=1, maximum=24 * 30),
        totp_issuer=_totp_issuer(env),
        security_event_retention_days=env.int(
            "SECURITY_EVENT_RETENTION_DAYS", 90, minimum=1, maximum=3650
        ),
    )
    return build_settings(
        AuthSettings, values, overrides, lambda: database_url_from_env(env.environ)
    )
