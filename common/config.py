"""Configuration read from the environment.

Every getter names the variable it read, so a bad value stops the process with
one line such as ``configuration error: BCRYPT_ROUNDS must be an integer``.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, overload
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from common.roles import ROLE_NAME, ROLE_NAME_ERROR

if TYPE_CHECKING:
    from redis.sentinel import Sentinel

T = TypeVar("T")
P = ParamSpec("P")
N = TypeVar("N", int, float)

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


@contextmanager
def stop_on_config_error() -> Iterator[None]:
    """End the process with one clear line if the block raises ConfigError."""
    try:
        yield
    except ConfigError as error:
        fail(error)


def exit_on_config_error(func: Callable[P, T]) -> Callable[P, T]:
    """Decorate an entry point so a ConfigError ends the process with one clear line."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with stop_on_config_error():
            return func(*args, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover - fail() never returns

    return wrapper


class Env:
    """Typed access to an environment mapping (``os.environ`` unless given)."""

    def __init__(self, environ: Mapping[builtins.str, builtins.str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def raw(self, name: builtins.str) -> builtins.str | None:
        """The value of ``name`` with surrounding blanks removed, or None when unset or empty."""
        value = self.environ.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    @overload
    def str(self, name: builtins.str, default: builtins.str) -> builtins.str: ...

    @overload
    def str(self, name: builtins.str, default: None = None) -> builtins.str | None: ...

    def str(self, name: builtins.str, default: builtins.str | None = None) -> builtins.str | None:
        """A string variable (None when unset and no default is given)."""
        value = self.raw(name)
        return default if value is None else value

    def int(
        self,
        name: builtins.str,
        default: builtins.int,
        *,
        minimum: builtins.int | None = None,
        maximum: builtins.int | None = None,
    ) -> builtins.int:
        """An integer variable, optionally bounded."""
        return self._number(name, default, builtins.int, "an integer", minimum, maximum)

    def float(
        self, name: builtins.str, default: builtins.float, *, minimum: builtins.float | None = None
    ) -> builtins.float:
        """A number variable, optionally bounded below."""
        return self._number(name, default, builtins.float, "a number", minimum, None)

    def _number(
        self,
        name: builtins.str,
        default: N,
        kind: Callable[[builtins.str], N],
        what: builtins.str,
        minimum: N | None,
        maximum: N | None,
    ) -> N:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = kind(value)
        except ValueError:
            raise ConfigError(f"{name} must be {what}, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{name} must be at most {maximum}, got {number}")
        return number

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
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

    def choice(
        self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]
    ) -> builtins.str:
        """A variable limited to a few values (compared case-insensitively)."""
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return lowered

    def list(self, name: builtins.str) -> builtins.list[builtins.str]:
        """A comma-separated list variable."""
        value = self.raw(name)
        if value is None:
            return []
        return [item.strip() for item in value.split(",") if item.strip()]


#: libpq's ``target_session_attrs`` that never settle for a standby, where nothing can be
#: written (``any``, libpq's default, is kept when given: a single address behind
#: which only the primary answers, such as a pooler, needs nothing more).
WRITABLE_SESSION_ATTRS = ("read-write", "primary", "any")


def _host_and_port(item: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port or None); ValueError."""
    host, port = item, None
    if item.startswith("["):
        host, bracket, rest = item.partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host {item!r} in the host list")
        host, port = host + bracket, rest[1:] if rest else None
    elif item.count(":") == 1:
        host, port = item.split(":")
    if not host:
        raise ValueError("an empty host in the host list")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"bad port {port!r} in the host list")
    return host, port


def postgres_url(url: str) -> str:
    """A PostgreSQL URL SQLAlchemy can read; several hosts (a primary and standbys) allowed.

    libpq's own URI puts several hosts in its authority
    (``postgresql://u@h1:5432,h2:5433/db``), which SQLAlchemy cannot parse:
    they move to the query in libpq's keyword form
    (``?host=h1,h2&port=5432,5433``), which psycopg2 hands to libpq as it is.
    That form, and SQLAlchemy's own (``?host=h1:5432&host=h2:5433``), may
    also be given directly.

    With several hosts ``target_session_attrs`` defaults to ``read-write``:
    libpq, left at ``any``, would settle for the first host that answers, a
    standby included, and every write would fail there. A value that may
    choose a standby raises ValueError, as does a malformed host list. A URL
    of a single host comes back unchanged.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ValueError("not a URL")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    userinfo, at, hostlist = authority.rpartition("@")
    path, _question, query = tail.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    if "," in hostlist:
        items = [_host_and_port(unquote(item)) for item in hostlist.split(",")]
        moved = [("host", ",".join(host.strip("[]") for host, _port in items))]
        if any(port for _host, port in items):
            moved.append(("port", ",".join(port or "" for _host, port in items)))
        if {key for key, _value in moved} & {key for key, _value in params}:
            raise ValueError("hosts or ports both in the authority and in the query")
        params = moved + params
        authority = userinfo + at
    hosts = [item for key, value in params if key == "host" for item in value.split(",")]
    if len(hosts) <= 1:
        return url
    for host in hosts:
        _host_and_port(host)
    attrs = dict(params).get("target_session_attrs")
    if attrs is None:
        params.append(("target_session_attrs", "read-write"))
    elif attrs not in WRITABLE_SESSION_ATTRS:
        raise ValueError(
            f"target_session_attrs={attrs} may choose a standby, where nothing can be written "
            "(use read-write)"
        )
    return f"{scheme}://{authority}{path or '/'}?{urlencode(params, safe=':[],')}"


def normalise_database_url(url: str, variable: str) -> str:
    """Accept the URL forms platforms hand out (``postgres://``) and check the scheme.

    A PostgreSQL URL may name several hosts (see :func:`postgres_url`).
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not (scheme.startswith("postgresql") or scheme.startswith("sqlite")):
        raise ConfigError(f"{variable} must be a postgresql:// or sqlite:// URL")
    if scheme.startswith("postgresql"):
        try:
            url = postgres_url(url)
        except ValueError as error:
            raise ConfigError(f"{variable}: {error}") from None
    return url


def database_url(env: Env, prefix: str, service: str) -> str:
    """The database URL of one service, by the contract's precedence.

    ``<PREFIX>_DATABASE_URL``, else ``DATABASE_URL``, else built from
    ``<PREFIX>_POSTGRES_*``, else a SQLite file ``var/<service>.db`` under the
    working directory. ``<PREFIX>_POSTGRES_HOST`` may list several hosts
    (``db1,db2`` or ``db1:5432,db2:5433``; ``<PREFIX>_POSTGRES_PORT`` for those
    without a port of their own): the service then connects to whichever is
    the primary.
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
        hosts = []
        for item in (host or "localhost").split(","):
            try:
                name, own_port = _host_and_port(item.strip())
            except ValueError as error:
                raise ConfigError(f"{prefix}_POSTGRES_HOST: {error}") from None
            hosts.append(f"{name}:{own_port or port}")
        return normalise_database_url(
            f"postgresql+psycopg2://{credentials}@{','.join(hosts)}/"
            f"{quote(dbname or service, safe='')}",
            f"{prefix}_POSTGRES_HOST",
        )
    var = Path.cwd() / "var"
    var.mkdir(exist_ok=True)
    return f"sqlite:///{var / f'{service}.db'}"


def split_broker_urls(value: str) -> list[str]:
    """The URLs of a broker setting: one, or several comma-separated (the nodes of a cluster).

    A comma in a password must be written ``%2C``, as any reserved character.
    """
    return [url.strip() for url in value.split(",") if url.strip()]


def check_broker_urls(value: str, variable: str) -> str:
    """``value`` with each of its URLs checked: amqp(s)://, a host, a port, one user and vhost.

    Several URLs are the nodes of one cluster, so they must name the same user
    (RabbitMQ checks a message's ``user_id`` against the connection's user) and
    the same virtual host. Returns the URLs joined by commas without blanks.
    Errors name the variable and the URL's position, never its password.
    """
    urls = split_broker_urls(value)
    if not urls:
        raise ConfigError(f"{variable} must be an amqp:// or amqps:// URL")
    several = len(urls) > 1
    identities: set[tuple[str, str]] = set()
    for position, url in enumerate(urls, 1):
        which = f"{variable} (URL {position} of {len(urls)})" if several else variable
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigError(f"{which} must be an amqp:// or amqps:// URL")
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise ConfigError(f"{which} has a bad port") from None
        if not parts.hostname:
            raise ConfigError(f"{which} has no host")
        vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
        identities.add((unquote(parts.username or "guest"), vhost))
    if len(identities) > 1:
        raise ConfigError(
            f"{variable}: every URL must name the same user and virtual host "
            "(the nodes of one cluster)"
        )
    return ",".join(urls)


def rabbitmq_url(env: Env) -> str:
    """The broker URL: ``RABBITMQ_URL`` or ``CLOUDAMQP_URL``, else ``RABBITMQ_*`` parts.

    The variables may list the nodes of a cluster, comma-separated; each is
    checked (:func:`check_broker_urls`) and the workers connect to the first
    that answers (:func:`split_broker_urls` splits them again).
    """
    for name in ("RABBITMQ_URL", "CLOUDAMQP_URL"):
        url = env.str(name)
        if url:
            return check_broker_urls(url, name)
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


# A sentinel is ``host:port`` or ``[v6 address]:port``; a master name goes into
# the rate limiter's storage URI as its path, so it is kept to URL-safe characters.
_SENTINEL_ADDRESS = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d{1,5})"
)
_SENTINEL_MASTER = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class RedisSentinel:
    """A Redis whose primary Redis Sentinel names: the sentinels, the primary's name, passwords.

    Every new connection asks the sentinels which server is the primary now,
    so a process follows a failover without a restart.
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    #: ``<PREFIX>_REDIS_PASSWORD``: the data nodes' (the primary's and the replicas').
    password: str | None = field(default=None, repr=False)
    #: ``REDIS_SENTINEL_PASSWORD``: the sentinels' own ``requirepass``, if they have one.
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def addresses(self) -> str:
        """The sentinels as ``REDIS_SENTINELS`` lists them."""
        return ",".join(_host_port(host, port) for host, port in self.sentinels)

    def connect(self, timeout: float) -> Sentinel:
        """A client of the sentinels; its ``master_for`` connections follow the primary.

        ``timeout`` bounds every connect and read, the sentinels' included (a
        sentinel that does not answer is skipped for the next one).
        """
        from redis.sentinel import Sentinel  # the user service never loads redis

        return Sentinel(
            self.sentinels,
            sentinel_kwargs={
                "password": self.sentinel_password,
                "socket_connect_timeout": timeout,
                "socket_timeout": timeout,
            },
            db=self.db,
            password=self.password,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )

    def storage_uri(self) -> str:
        """The ``limits`` library's URI of this primary: ``redis+sentinel://h:p,h:p/master``.

        Passwords go to the storage as options, never in the URI: ``limits``
        would send the one password of a URI to the sentinels and the data
        nodes alike, without unquoting it.
        """
        return f"redis+sentinel://{self.addresses}/{self.master}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sentinel_addresses(env: Env) -> tuple[tuple[str, int], ...]:
    addresses: dict[tuple[str, int], None] = {}
    for entry in env.list("REDIS_SENTINELS"):
        match = _SENTINEL_ADDRESS.fullmatch(entry)
        port = int(match["port"]) if match else 0
        if match is None or not 1 <= port <= 65535:
            raise ConfigError(
                f"REDIS_SENTINELS entry {entry!r} is not host:port (port 1-65535); "
                "expected e.g. sentinel-1:26379,sentinel-2:26379"
            )
        addresses[(match["v6"] or match["host"], port)] = None
    return tuple(addresses)


def redis_sentinel(env: Env, prefix: str = "AUTH") -> RedisSentinel | None:
    """``REDIS_SENTINELS`` with ``REDIS_SENTINEL_MASTER``, or None when they are unset.

    With them, Redis is wherever the sentinels say the primary is:
    ``REDIS_URL`` and ``<PREFIX>_REDIS_HOST`` / ``PORT`` are not read, while
    ``<PREFIX>_REDIS_PASSWORD`` and ``<PREFIX>_REDIS_DB`` still apply to the
    data nodes. ``REDIS_SENTINEL_PASSWORD`` is the sentinels' own, if any.
    """
    sentinels = _sentinel_addresses(env)
    master = env.str("REDIS_SENTINEL_MASTER")
    if not sentinels:
        for name in ("REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"):
            if env.str(name) is not None:
                raise ConfigError(f"{name} is set but REDIS_SENTINELS (host:port,...) is not")
        return None
    if master is None:
        raise ConfigError(
            "REDIS_SENTINEL_MASTER must name the primary the sentinels monitor "
            "(REDIS_SENTINELS is set)"
        )
    if not _SENTINEL_MASTER.fullmatch(master):
        raise ConfigError(
            f"REDIS_SENTINEL_MASTER must be 1-128 letters, digits, '.', '_' or '-', got {master!r}"
        )
    return RedisSentinel(
        sentinels,
        master,
        db=env.int(f"{prefix}_REDIS_DB", 0, minimum=0),
        password=env.str(f"{prefix}_REDIS_PASSWORD"),
        sentinel_password=env.str("REDIS_SENTINEL_PASSWORD"),
    )


DEFAULT_ISSUER = "http://127.0.0.1:5001"
DEFAULT_ROLES = ("user", "admin")
DEFAULT_AUDIENCE = "user-service"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, kw_only=True)
class WebSettings:
    """What both web apps are configured with: database, token checks, HTTP, logging.

    Each app's settings extend this. Derived values are computed here once,
    for the factory, the CLI and the workers alike.
    """

    database_url: str
    jwt_issuer: str = DEFAULT_ISSUER
    jwt_audience: str = DEFAULT_AUDIENCE
    jwt_leeway_seconds: int = 10
    access_token_expire_minutes: int = 15
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_format: str = "json"
    max_content_length: int = 64 * 1024
    #: Reverse proxies in front (``TRUSTED_PROXY_COUNT``): the client's address is
    #: that many hops from the right of X-Forwarded-For; 0, the connection's peer.
    trusted_proxy_count: int = 0
    #: The role names there are (``ROLES``); ``user`` is every account's, ``admin`` administers.
    roles: tuple[str, ...] = DEFAULT_ROLES
    #: ``METRICS_ENABLED``: record requests and outcomes and serve ``/metrics``.
    metrics_enabled: bool = True
    # Tests on in-memory SQLite: create the tables from the models (Alembic owns them otherwise).
    create_schema: bool = False
    #: Seconds an access token lives.
    access_token_ttl: int = field(init=False)
    #: Seconds a retired signing key stays trusted: as long as a token it signed can live.
    key_retention_seconds: int = field(init=False)

    def __post_init__(self) -> None:
        self._derive("access_token_ttl", self.access_token_expire_minutes * 60)
        self._derive("key_retention_seconds", self.access_token_ttl + self.jwt_leeway_seconds)

    def _derive(self, name: str, value: object) -> None:
        # Frozen: derived fields are set once, here, and never change.
        object.__setattr__(self, name, value)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The settings a caller may give (derived ones are not among them)."""
        return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


S = TypeVar("S", bound=WebSettings)


def split_overrides(
    overrides: Mapping[str, Any] | None, settings_type: type[WebSettings]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings, Flask config)`` of a ``create_app`` mapping keyed by variable names.

    ``{"DATABASE_URL": "sqlite://", "TESTING": True}`` gives
    ``({"database_url": "sqlite://"}, {"TESTING": True})``.
    """
    names = settings_type.field_names()
    settings: dict[str, Any] = {}
    flask: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key.lower() in names:
            settings[key.lower()] = value
        else:
            flask[key] = value
    return settings, flask


def web_settings_values(env: Env, *, leeway_minimum: int, access_maximum: int | None) -> dict:
    """The :class:`WebSettings` fields both apps read from the environment the same way."""
    return {
        "jwt_issuer": env.str("JWT_ISSUER", DEFAULT_ISSUER),
        "jwt_audience": env.str("JWT_AUDIENCE", DEFAULT_AUDIENCE),
        "jwt_leeway_seconds": env.int(
            "JWT_LEEWAY_SECONDS", 10, minimum=leeway_minimum, maximum=300
        ),
        "access_token_expire_minutes": env.int(
            "ACCESS_TOKEN_EXPIRE_MINUTES", 15, minimum=1, maximum=access_maximum
        ),
        "cors_origins": tuple(env.list("CORS_ORIGINS")),
        "log_level": env.choice("LOG_LEVEL", "info", LOG_LEVELS).upper(),
        "log_format": env.choice("LOG_FORMAT", "json", ("json", "text")),
        "roles": role_names(env),
        "trusted_proxy_count": env.int("TRUSTED_PROXY_COUNT", 0, minimum=0, maximum=10),
        "metrics_enabled": env.bool("METRICS_ENABLED", True),
    }


def role_names(env: Env) -> tuple[str, ...]:
    """``ROLES``: comma-separated role names, ``user`` and ``admin`` among them."""
    names = tuple(dict.fromkeys(env.list("ROLES"))) or DEFAULT_ROLES
    for name in names:
        if not ROLE_NAME.fullmatch(name):
            raise ConfigError(f"ROLES: {name!r} is not a role name ({ROLE_NAME_ERROR})")
    missing = [name for name in DEFAULT_ROLES if name not in names]
    if missing:
        raise ConfigError(f"ROLES must include {' and '.join(missing)}")
    return names


def build_settings(
    settings_type: type[S],
    values: dict[str, Any],
    overrides: Mapping[str, Any] | None,
    database: Callable[[], str],
) -> S:
    """``settings_type`` from values read from the environment, with ``overrides`` on top.

    ``overrides`` are keyed by field or variable name. The database URL is
    only worked out (``database()``) when not given: its SQLite fallback
    creates ``var/`` in the working directory.
    """
    given, unknown = split_overrides(overrides, settings_type)
    if unknown:
        raise ValueError(f"not settings of {settings_type.__name__}: {sorted(unknown)}")
    if "database_url" not in given:
        values["database_url"] = database()
    values.update(given)
    return settings_type(**values)
