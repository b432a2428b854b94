"""``python -m common.preflight``: check Redis and RabbitMQ before ``make run`` starts.

Prints one line per unreachable server: which one, where it looked and how to
start it, then exits 1. Reads the same variables as the services.
"""

from __future__ import annotations

import socket
import sys
from urllib.parse import urlsplit

from common.config import ConfigError, Env, exit_on_config_error, rabbitmq_url, redis_url

HINTS = {
    "Redis": "start it with `docker compose up -d redis` (or `redis-server`), or set REDIS_URL",
    "RabbitMQ": "start it with `docker compose up -d rabbitmq` (or `rabbitmq-server -detached`), "
    "or set RABBITMQ_URL",
}


def _reachable(url: str, default_port: int) -> tuple[bool, str]:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(f"bad port in {parts.scheme} URL") from None
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=3):
            return True, where
    except OSError:
        return False, where


@exit_on_config_error
def main() -> int:
    """Check every server ``make run`` needs; print how to start any that is down."""
    env = Env()
    problems = []
    for name, url, port in (
        ("Redis", redis_url(env), 6379),
        ("RabbitMQ", rabbitmq_url(env), 5672),
    ):
        ok, where = _reachable(url, port)
        if not ok:
            problems.append(f"{name} is not reachable at {where}: {HINTS[name]}")
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
