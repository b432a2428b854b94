"""Test support shared by every app's tests: real servers, fresh namespaces.

Each test run gets its own PostgreSQL databases, RabbitMQ vhost and Redis key
prefix, so runs never see each other's data. A server that is down fails the
test with a message naming it and how to start it; nothing is skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("TEST_RABBITMQ_PORT", "5672"))

START_HINTS = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
    "RabbitMQ": "rabbitmq-server -detached && rabbitmqctl await_startup",
}


def server_down(name: str, where: str, error: BaseException) -> None:
    """Fail (never skip) with which server is down, where we looked and how to start it."""
    pytest.fail(
        f"{name} is not reachable at {where} ({type(error).__name__}: {error}). "
        f"Start it with: {START_HINTS[name]}",
        pytrace=False,
    )


def run_id() -> str:
    """A short id unique to this test process."""
    return uuid.uuid4().hex[:10]


@contextmanager
def fresh_postgres_database(label: str):
    """Create an empty PostgreSQL database for this run; drop it afterwards. Yields its URL."""
    admin_url = make_url(POSTGRES_ADMIN_URL)
    name = f"test_{label}_{run_id()}"
    admin = create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001 - any failure means the server is unusable
        admin.dispose()
        server_down("PostgreSQL", f"{admin_url.host}:{admin_url.port}", error)
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def check_redis(url: str = REDIS_URL):
    """A connected Redis client, or a failure that says how to start Redis."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        server_down("Redis", url, error)
    return client


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def fresh_vhost(label: str):
    """Create a RabbitMQ vhost for this run (guest may use it); delete it afterwards.

    Yields the AMQP URL of the vhost.
    """
    import pika

    vhost = f"test_{label}_{run_id()}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError) as error:
        server_down("RabbitMQ", f"{RABBITMQ_HOST}:{RABBITMQ_PORT}", error)
    url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{quote(vhost, safe='')}"
    try:
        pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1")).close()
    except Exception as error:  # noqa: BLE001
        server_down("RabbitMQ", f"{RABBITMQ_HOST}:{RABBITMQ_PORT}", error)
    try:
        yield url
    finally:
        try:
            _rabbitmqctl("delete_vhost", vhost)
        except (OSError, subprocess.SubprocessError):
            pass


@contextmanager
def broker_user(vhost_url: str, label: str) -> Iterator[str]:
    """A RabbitMQ user of this run, free to use the vhost of ``vhost_url``; deleted afterwards.

    Yields the AMQP URL of the vhost as that user.
    """
    parts = urlsplit(vhost_url)
    vhost = unquote(parts.path.lstrip("/"))
    name, password = f"test_{label}_{run_id()}", uuid.uuid4().hex
    try:
        _rabbitmqctl("add_user", name, password)
        _rabbitmqctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError) as error:
        server_down("RabbitMQ", f"{RABBITMQ_HOST}:{RABBITMQ_PORT}", error)
    try:
        yield f"amqp://{name}:{password}@{parts.hostname}:{parts.port}{parts.path}"
    finally:
        try:
            _rabbitmqctl("delete_user", name)
        except (OSError, subprocess.SubprocessError):
            pass


def write_test_keys(directory: Path) -> tuple[Path, Path]:
    """A fresh RSA key pair under ``directory``; returns (private, public) paths."""
    from common.keys import generate_key_pair

    private, public = directory / "private.pem", directory / "public.pem"
    generate_key_pair(private, public)
    return private, public


def allow_connections(url: str, allowed: bool) -> None:
    """Open or close a PostgreSQL database to new connections; closing also ends the open ones.

    How the fault tests make a database unreachable, and bring it back.
    """
    name = make_url(url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
            if not allowed:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
    finally:
        admin.dispose()


def free_port() -> int:
    """A TCP port nobody listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of one test on a spare port, stopped and started at will.

    ``persistent`` keeps its data in an append-only file across a restart;
    otherwise it comes back empty, as a Redis without persistence does.
    """

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers."""
        try:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes" if self.persistent else "no",
                    "--appendfsync",
                    "always",
                    "--dir",
                    str(self.directory),
                    "--daemonize",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as error:
            server_down("Redis", "redis-server on PATH", error)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        server_down("Redis", self.url, RuntimeError("redis-server did not start"))

    def stop(self) -> None:
        """Stop it (its data is gone unless it is persistent)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
