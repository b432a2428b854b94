"""The user service's settings, read from the environment once per process (see CONTRACT.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common.config import (
    ConfigError,
    Env,
    WebSettings,
    build_settings,
    database_url,
    web_settings_values,
)

DEFAULT_PUBLIC_KEY_PATH = "keys/public.pem"


@dataclass(frozen=True, kw_only=True)
class UserSettings(WebSettings):
    """Everything the user service is configured with."""

    jwt_public_key: str | None = None
    public_key_path: Path = Path(DEFAULT_PUBLIC_KEY_PATH)
    auth_jwks_url: str | None = None
    jwks_refetch_cooldown_seconds: float = 60.0
    jwks_timeout_seconds: float = 5.0


def database_url_from_env(environ: Mapping[str, str] | None = None) -> str:
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


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> UserSettings:
    """The user service's settings; ``overrides`` (tests) win over the environment.

    Raises ConfigError naming the variable when a value is malformed.
    """
    env = Env(environ)
    public_pem = env.str("JWT_PUBLIC_KEY")
    values = web_settings_values(env, leeway_minimum=0, access_maximum=None)
    values.update(
        # Platforms that cannot hold newlines in a variable often pass "\n" literally.
        jwt_public_key=public_pem.replace("\\n", "\n") if public_pem else None,
        public_key_path=Path(env.str("PUBLIC_KEY_PATH", DEFAULT_PUBLIC_KEY_PATH)),
        auth_jwks_url=_jwks_url(env),
        jwks_refetch_cooldown_seconds=env.float("JWKS_REFETCH_COOLDOWN_SECONDS", 60.0, minimum=0),
        max_content_length=env.int("MAX_CONTENT_LENGTH", 64 * 1024, minimum=1024),
    )
    return build_settings(
        UserSettings, values, overrides, lambda: database_url_from_env(env.environ)
    )
