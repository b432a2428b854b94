"""The auth service's configuration, read from the environment.

Every value has a name in the contract (or below) and a default that works on a
developer's machine. A malformed value raises ConfigError naming the variable;
``create_app`` turns that into one line and a non-zero exit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from limits import parse_many

from common.config import ConfigError, Env, database_url, redis_url

# A fixed, public development pepper. It only keeps the pre-hash keyed; production
# sets PASSWORD_PEPPER to its own secret (changing it invalidates every stored hash).
DEV_PASSWORD_PEPPER = "auth-app-development-pepper"
DEFAULT_ISSUER = "http://127.0.0.1:5001"
DEFAULT_AUDIENCE = "user-service"
DEFAULT_CLIENT_ID = "auth_app"


def database_url_from_env(env: Env | None = None) -> str:
    """The auth database URL by the contract's precedence (used by Alembic too)."""
    return database_url(env or Env(), "AUTH", "auth")


def _rate_limit(env: Env, name: str, default: str) -> str:
    value = env.str(name, default)
    try:
        if not parse_many(value):
            raise ValueError(value)
    except ValueError:
        raise ConfigError(f"{name} must be a rate limit such as 20/minute, got {value!r}") from None
    return value


def load_config(overrides: Mapping | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """Every setting of the auth service; ``overrides`` (tests) win over the environment."""
    env = Env(environ)
    algorithm = env.str("ALGORITHM", "RS256")
    if algorithm != "RS256":
        raise ConfigError(f"ALGORITHM must be RS256, got {algorithm!r}")
    access_minutes = env.int("ACCESS_TOKEN_EXPIRE_MINUTES", 15, minimum=1, maximum=24 * 60)
    leeway = env.int("JWT_LEEWAY_SECONDS", 10, minimum=1, maximum=300)
    config = {
        "API_TITLE": "Auth service",
        "DATABASE_URL": database_url_from_env(env),
        "REDIS_URL": redis_url(env, "AUTH"),
        "REDIS_KEY_PREFIX": env.str("AUTH_REDIS_KEY_PREFIX", "auth:"),
        "ALGORITHM": algorithm,
        "PRIVATE_KEY_PATH": Path(env.str("PRIVATE_KEY_PATH", "keys/private.pem")),
        "PUBLIC_KEY_PATH": Path(env.str("PUBLIC_KEY_PATH", "keys/public.pem")),
        "JWT_PRIVATE_KEY": env.str("JWT_PRIVATE_KEY"),
        "JWT_PUBLIC_KEY": env.str("JWT_PUBLIC_KEY"),
        "ACCESS_TOKEN_EXPIRE_MINUTES": access_minutes,
        "REFRESH_TOKEN_EXPIRE_DAYS": env.int("REFRESH_TOKEN_EXPIRE_DAYS", 30, minimum=1),
        "JWT_ISSUER": env.str("JWT_ISSUER", DEFAULT_ISSUER),
        "JWT_AUDIENCE": env.str("JWT_AUDIENCE", DEFAULT_AUDIENCE),
        "JWT_CLIENT_ID": env.str("JWT_CLIENT_ID", DEFAULT_CLIENT_ID),
        "JWT_LEEWAY_SECONDS": leeway,
        "BCRYPT_ROUNDS": env.int("BCRYPT_ROUNDS", 12, minimum=4, maximum=31),
        "PASSWORD_MIN_LENGTH": env.int("PASSWORD_MIN_LENGTH", 8, minimum=1, maximum=1024),
        "PASSWORD_PEPPER": env.str("PASSWORD_PEPPER", DEV_PASSWORD_PEPPER),
        "LOGIN_MAX_FAILURES": env.int("LOGIN_MAX_FAILURES", 5, minimum=0),
        "LOGIN_FAILURE_WINDOW_SECONDS": env.int("LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1),
        "RATELIMIT_ENABLED": env.bool("RATELIMIT_ENABLED", True),
        "RATELIMIT_AUTH": _rate_limit(env, "RATELIMIT_AUTH", "20/minute"),
        "RATELIMIT_KEY_PREFIX": env.str("RATELIMIT_KEY_PREFIX", "auth-limiter"),
        "CORS_ORIGINS": env.list("CORS_ORIGINS"),
        "LOG_LEVEL": env.choice(
            "LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
        ),
        "LOG_FORMAT": env.choice("LOG_FORMAT", "json", ("json", "text")),
        "MAX_CONTENT_LENGTH": 64 * 1024,
    }
    config.update(overrides or {})
    return config
