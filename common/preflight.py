"""``python -m common.preflight``: check Redis and RabbitMQ before ``make run`` starts.

A server that answers is left alone. One that does not, on this machine, is
started with ``docker compose up -d <service>`` when Docker can: the ``docker
compose`` plugin is there and a Docker engine answers (``docker info``). The
development compose file publishes the service on this machine at the port
``AUTH_REDIS_PORT`` / ``RABBITMQ_PORT`` names (6379 and 5672 by default), which
the command sets to the port the settings look at. It says so, waits until
the server accepts connections, and ``make run`` goes on. Otherwise it prints
one line per unreachable server: which one, where it looked and how to start
it, then exits 1. Reads the same variables as the services.

With ``REDIS_SENTINELS`` the Redis to check is the primary the sentinels name
for ``REDIS_SENTINEL_MASTER``; neither the sentinels nor that primary are
ever started here (the development compose file has no Sentinel).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from common.config import (
    ConfigError,
    Env,
    RedisSentinel,
    exit_on_config_error,
    rabbitmq_url,
    redis_sentinel,
    redis_url,
    split_broker_urls,
)

HINTS = {
    "Redis": "start it with `docker compose up -d redis` (or `redis-server`), or set REDIS_URL",
    "RabbitMQ": "start it with `docker compose up -d rabbitmq` (or `rabbitmq-server -detached`), "
    "or set RABBITMQ_URL",
}
#: The compose service of each server, and the variable that sets the port the
#: development compose file publishes it on (docker-compose.override.yml).
COMPOSE_SERVICES = {
    "Redis": ("redis", "AUTH_REDIS_PORT"),
    "RabbitMQ": ("rabbitmq", "RABBITMQ_PORT"),
}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
#: How long a server started by compose has to accept connections (RabbitMQ's
#: first boot, definitions imported, takes tens of seconds).
START_TIMEOUT = 120.0
DOCKER_TIMEOUT = 30.0
SENTINEL_TIMEOUT = 3.0


@dataclass(frozen=True)
class Server:
    """A server ``make run`` needs, and where the settings say it is."""

    name: str
    host: str
    port: int
    #: How its address was found when the settings do not name it (Redis Sentinel).
    found_by: str | None = None

    @property
    def where(self) -> str:
        """``host:port``, and how it was found if the settings do not name it."""
        found = f" ({self.found_by})" if self.found_by else ""
        return f"{self.host}:{self.port}{found}"

    @property
    def hint(self) -> str:
        """How to get it answering."""
        if self.found_by:
            return "start that server, or let the sentinels fail over to a replica"
        return HINTS[self.name]

    def reachable(self) -> bool:
        """Whether it accepts a TCP connection now."""
        try:
            with socket.create_connection((self.host, self.port), timeout=3):
                return True
        except OSError:
            return False

    def compose_service(self) -> str | None:
        """The compose service that would answer here, if starting one can help."""
        if self.found_by or self.host not in LOCAL_HOSTS:
            return None
        return COMPOSE_SERVICES[self.name][0]

    def publish_port(self) -> dict[str, str]:
        """The variable that publishes its compose service on this server's port."""
        return {COMPOSE_SERVICES[self.name][1]: str(self.port)}


def _server(name: str, url: str, default_port: int) -> Server:
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(f"bad port in {parts.scheme} URL") from None
    return Server(name, parts.hostname or "localhost", port)


def sentinel_primary(sentinel: RedisSentinel) -> Server | None:
    """The primary the sentinels name now, or None (said on stderr) when none does."""
    try:
        host, port = sentinel.connect(SENTINEL_TIMEOUT).discover_master(sentinel.master)
    except redis.RedisError as error:
        say(
            f"Redis is not reachable: no sentinel of REDIS_SENTINELS ({sentinel.addresses}) "
            f"names a primary for REDIS_SENTINEL_MASTER {sentinel.master!r} "
            f"({type(error).__name__}): check that the sentinels run and monitor it"
        )
        return None
    found_by = f"the primary REDIS_SENTINELS name for {sentinel.master!r}"
    return Server("Redis", str(host), int(port), found_by)


def docker_can_start_services() -> bool:
    """Whether ``docker compose`` is installed and a Docker engine answers."""
    for command in (["docker", "compose", "version"], ["docker", "info"]):
        try:
            result = subprocess.run(command, capture_output=True, timeout=DOCKER_TIMEOUT)
        except (OSError, subprocess.SubprocessError):
            return False
        if result.returncode != 0:
            return False
    return True


def say(line: str) -> None:
    """One line for the developer, on stderr."""
    print(line, file=sys.stderr, flush=True)


def wait_until_reachable(server: Server, timeout: float = START_TIMEOUT) -> bool:
    """Poll ``server`` until it accepts connections or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not server.reachable():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def start_with_compose(servers: list[Server]) -> bool:
    """``docker compose up -d`` the servers' services, saying so; True once all answer."""
    services = [server.compose_service() for server in servers]
    for server, service in zip(servers, services, strict=True):
        say(
            f"{server.name} is not reachable at {server.where}: "
            f"starting it with `docker compose up -d {service}`"
        )
    command = ["docker", "compose", "up", "-d", *[s for s in services if s]]
    environ = dict(os.environ)
    for server in servers:
        environ.update(server.publish_port())
    try:
        # Pulling an image can take minutes; its progress goes to the terminal.
        result = subprocess.run(command, env=environ, timeout=900)
    except (OSError, subprocess.SubprocessError) as error:
        say(f"`{' '.join(command)}` failed: {error}")
        return False
    if result.returncode != 0:
        say(f"`{' '.join(command)}` failed (exit {result.returncode})")
        return False
    for server in servers:
        if not wait_until_reachable(server):
            say(f"{server.name} did not answer at {server.where} within {START_TIMEOUT:.0f}s")
            return False
        say(f"{server.name} is up at {server.where}")
    return True


def _broker(env: Env) -> Server:
    """The broker: the first node that answers when the URL lists a cluster's, else the first."""
    nodes = [_server("RabbitMQ", url, 5672) for url in split_broker_urls(rabbitmq_url(env))]
    return next((node for node in nodes if node.reachable()), nodes[0])


@exit_on_config_error
def main() -> int:
    """Check every server ``make run`` needs; start or say how to start any that is down."""
    env = Env()
    sentinel = redis_sentinel(env)
    redis_server = (
        _server("Redis", redis_url(env), 6379) if sentinel is None else sentinel_primary(sentinel)
    )
    servers = [_broker(env)]
    if redis_server is not None:
        servers.insert(0, redis_server)
    undiscovered = redis_server is None
    down = [server for server in servers if not server.reachable()]
    if not down:
        return 1 if undiscovered else 0
    startable = [server for server in down if server.compose_service() is not None]
    if startable and docker_can_start_services():
        if not start_with_compose(startable):
            return 1
        down = [server for server in down if server not in startable]
    for server in down:
        say(f"{server.name} is not reachable at {server.where}: {server.hint}")
    return 1 if down or undiscovered else 0


if __name__ == "__main__":
    sys.exit(main())
