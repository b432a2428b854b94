"""The user service's configuration, read from the environment (see CONTRACT.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from common.config import ConfigError, Env, database_url

DEFAULT_ISSUER = "http://127.0.0.1:5001"
DEFAULT_AUDIENCE = "user-service"
DEFAULT_PUBLIC_KEY_PATH = "keys/public.pem"


def user_database_url(environ: Mapping[str, str] | None = None) -> str:
    """The user service's database URL by the contract's precedence (used by Alembic too)."""
    return database_url(Env(environ), "USER", "user")


def _jwks_url(env: Env) -> str | None:
    url = env.str("AUTH_JWKS_URL")
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("AUTH_JWKS_URL must be an absolute http:// or https:// URL")
    return url


def load_config(overrides: dict | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """The Flask settings of the user service: the environment, then ``overrides`` on top.

    Raises ConfigError naming the variable when a value is malformed.
    """
    overrides = dict(overrides or {})
    env = Env(environ)
    config: dict = {"API_TITLE": "User service"}
    if "DATABASE_URL" not in overrides:
        # Only computed when needed: the SQLite fallback creates var/ in the working directory.
        config["DATABASE_URL"] = database_url(env, "USER", "user")
    public_pem = env.str("JWT_PUBLIC_KEY")
    config.update(
        JWT_ISSUER=env.str("JWT_ISSUER", DEFAULT_ISSUER),
        JWT_AUDIENCE=env.str("JWT_AUDIENCE", DEFAULT_AUDIENCE),
        JWT_LEEWAY_SECONDS=env.int("JWT_LEEWAY_SECONDS", 10, minimum=0, maximum=300),
        # Platforms that cannot hold newlines in a variable often pass "\n" literally.
        JWT_PUBLIC_KEY=public_pem.replace("\\n", "\n") if public_pem else None,
        PUBLIC_KEY_PATH=Path(env.str("PUBLIC_KEY_PATH", DEFAULT_PUBLIC_KEY_PATH)),
        AUTH_JWKS_URL=_jwks_url(env),
        JWKS_REFETCH_COOLDOWN_SECONDS=env.float("JWKS_REFETCH_COOLDOWN_SECONDS", 60.0, minimum=0),
        ACCESS_TOKEN_EXPIRE_MINUTES=env.int("ACCESS_TOKEN_EXPIRE_MINUTES", 15, minimum=1),
        CORS_ORIGINS=env.list("CORS_ORIGINS"),
        LOG_LEVEL=env.choice(
            "LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
        ).upper(),
        LOG_FORMAT=env.choice("LOG_FORMAT", "json", ("json", "text")),
        MAX_CONTENT_LENGTH=env.int("MAX_CONTENT_LENGTH", 64 * 1024, minimum=1024),
    )
    config.update(overrides)
    return config
