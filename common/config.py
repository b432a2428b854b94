"""Configuration read from the environment.

Every getter names the variable it read, so a bad value stops the process with
one line such as ``configuration error: BCRYPT_ROUNDS must be an integer``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn, TypeVar
from urllib.parse import quote

T = TypeVar("T")

# gunicorn's APP_LOAD_ERROR: its arbiter stops instead of respawning a worker
# that can never boot; any other caller just sees a non-zero exit.
EXIT_CONFIG_ERROR = 4

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


def fail(error: ConfigError) -> NoReturn:
    """Stop the process with one line naming the bad variable, never a traceback."""
    sys.stderr.write(f"configuration error: {error}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_CONFIG_ERROR)


def exit_on_config_error(func: Callable[..., T]) -> Callable[..., T]:
    """Decorate an entry point so a ConfigError ends the process with one clear line."""

    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as error:
            fail(error)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


class Env:
    """Typed access to an environment mapping (``os.environ`` unless given)."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        """The value of ``name`` with surrounding blanks removed, or None when unset or empty."""
        value = self.environ.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def str(self, name: str, default: str | None = None) -> str | None:
        """A string variable."""
        value = self.raw(name)
        return default if value is None else value

    def int(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        """An integer variable, optionally bounded."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{name} must be at most {maximum}, got {number}")
        return number

    def float(self, name: str, default: float, *, minimum: float | None = None) -> float:
        """A number variable, optionally bounded below."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {number}")
        return number

    def bool(self, name: str, default: bool) -> bool:
        """A boolean variable: 1/0, true/false, yes/no, on/off."""
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """A variable limited to a few values (compared case-insensitively)."""
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return lowered

    def list(self, name: str) -> list[str]:
        """A comma-separated list variable."""
        value = self.raw(name)
        if value is None:
            return []
        return [item.strip() for item in value.split(",") if item.strip()]


def normalise_database_url(url: str, variable: str) -> str:
    """Accept the URL forms platforms hand out (``postgres://``) and check the scheme."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not (scheme.startswith("postgresql") or scheme.startswith("sqlite")):
        raise ConfigError(f"{variable} must be a postgresql:// or sqlite:// URL")
    return url


def database_url(env: Env, prefix: str, service: str) -> str:
    """The database URL of one service, by the contract's precedence.

    ``<PREFIX>_DATABASE_URL``, else ``DATABASE_URL``, else built from
    ``<PREFIX>_POSTGRES_*``, else a SQLite file ``var/<service>.db`` under the
    working directory.
    """
    for name in (f"{prefix}_DATABASE_URL", "DATABASE_URL"):
        url = env.str(name)
        if url:
            return normalise_database_url(url, name)
    host = env.str(f"{prefix}_POSTGRES_HOST")
    dbname = env.str(f"{prefix}_POSTGRES_DB")
    if host or dbname:
        port = env.int(f"{prefix}_POSTGRES_PORT", 5432, minimum=1, maximum=65535)
        user = env.str(f"{prefix}_POSTGRES_USER", "postgres")
        password = env.str(f"{prefix}_POSTGRES_PASSWORD")
        credentials = quote(user, safe="")
        if password:
            credentials += ":" + quote(password, safe="")
        return (
            f"postgresql+psycopg2://{credentials}@{host or 'localhost'}:{port}/"
            f"{quote(dbname or service, safe='')}"
        )
    var = Path.cwd() / "var"
    var.mkdir(exist_ok=True)
    return f"sqlite:///{var / f'{service}.db'}"


def rabbitmq_url(env: Env) -> str:
    """The broker URL: ``RABBITMQ_URL`` or ``CLOUDAMQP_URL``, else ``RABBITMQ_*`` parts."""
    for name in ("RABBITMQ_URL", "CLOUDAMQP_URL"):
        url = env.str(name)
        if url:
            if not url.startswith(("amqp://", "amqps://")):
                raise ConfigError(f"{name} must be an amqp:// or amqps:// URL")
            return url
    host = env.str("RABBITMQ_HOST", "localhost")
    port = env.int("RABBITMQ_PORT", 5672, minimum=1, maximum=65535)
    user = quote(env.str("RABBITMQ_USER", "guest"), safe="")
    password = quote(env.str("RABBITMQ_PASSWORD", "guest"), safe="")
    vhost = quote(env.str("RABBITMQ_VHOST", "/"), safe="")
    return f"amqp://{user}:{password}@{host}:{port}/{vhost}"


def redis_url(env: Env, prefix: str = "AUTH") -> str:
    """The Redis URL: ``REDIS_URL``, else ``<PREFIX>_REDIS_*`` parts, else localhost."""
    url = env.str("REDIS_URL")
    if url:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return url
    host = env.str(f"{prefix}_REDIS_HOST", "localhost")
    port = env.int(f"{prefix}_REDIS_PORT", 6379, minimum=1, maximum=65535)
    db = env.int(f"{prefix}_REDIS_DB", 0, minimum=0)
    password = env.str(f"{prefix}_REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"
