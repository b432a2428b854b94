"""Test support shared by every app's tests: real servers, fresh namespaces.

Each test run gets its own PostgreSQL databases, RabbitMQ vhost and Redis key
prefix, so runs never see each other's data. A server that is down fails the
test with a message naming it and how to start it; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
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

    def __init__(
        self,
        directory: Path,
        *,
        persistent: bool = False,
        arguments: tuple[str, ...] = (),
        password: str | None = None,
    ) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent
        #: More redis-server options (``--requirepass``, ``--replicaof``, ...).
        self.arguments = arguments
        #: The ``default`` user's password, if ``arguments`` set one.
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A client of this server alone (no Sentinel in between)."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=1
        )

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
                    *self.arguments,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as error:
            server_down("Redis", "redis-server on PATH", error)
        client = self.client()
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

    def kill(self) -> None:
        """SIGKILL it: no shutdown, no last word to its replicas or clients."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


REDIS_SERVER_MISSING = (
    "redis-server is not on PATH: Redis Sentinel tests start their own primary, replica "
    "and sentinels from it (`redis-server <conf> --sentinel`). Install Redis 6.2 or newer "
    "(Debian: apt-get install redis-server)"
)


def redis_server_binary() -> str:
    """The redis-server executable; fails (never skips) naming it when it is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(REDIS_SERVER_MISSING, pytrace=False)
    return binary


class RedisSentinelGroup:
    """A Redis Sentinel deployment of one test: a primary, replicas and sentinels.

    Every process is a redis-server of this test on a spare loopback port,
    sentinels included (``redis-server <conf> --sentinel``). The data nodes
    require a password of this run, and so do the sentinels unless
    ``sentinel_auth`` is false; replicas authenticate to the primary as a user of
    their own (``repl``), so a test can cut replication off at will and make
    the replicas miss writes for certain. ``down_after_ms`` and
    ``failover_timeout_ms`` are the sentinels' (short, for tests).
    """

    MASTER = "authsvc"
    REPLICATION_USER = "repl"

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        sentinel_auth: bool = True,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.password = uuid.uuid4().hex
        self.sentinel_password = uuid.uuid4().hex if sentinel_auth else None
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        replication_password = uuid.uuid4().hex
        self.nodes = []
        for index in range(1 + replicas):
            node_dir = directory / f"node-{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(
                RedisServer(
                    node_dir,
                    password=self.password,
                    arguments=(
                        "--requirepass",
                        self.password,
                        "--user",
                        self.REPLICATION_USER,
                        "on",
                        f">{replication_password}",
                        "+psync",
                        "+replconf",
                        "+ping",
                        "--masteruser",
                        self.REPLICATION_USER,
                        "--masterauth",
                        replication_password,
                        "--logfile",
                        str(node_dir / "redis.log"),
                    ),
                )
            )
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self._sentinels: list[subprocess.Popen] = []

    # -- what the services are given -------------------------------------------
    @property
    def addresses(self) -> str:
        """``REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def environment(self) -> dict[str, str]:
        """The variables that point a service at this deployment."""
        env = {
            "REDIS_SENTINELS": self.addresses,
            "REDIS_SENTINEL_MASTER": self.MASTER,
            "AUTH_REDIS_PASSWORD": self.password,
        }
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    # -- life ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the primary, the replicas, then the sentinels; wait until all see each other."""
        primary, *replicas = self.nodes
        primary.start()
        for replica in replicas:
            replica.arguments += ("--replicaof", "127.0.0.1", str(primary.port))
            replica.start()
        self._wait(lambda: all(_linked(replica) for replica in replicas), "replicas to sync")
        for port in self.sentinel_ports:
            self._start_sentinel(port, primary.port)
        self._wait(self._sentinels_agree, "sentinels to find each other and the replicas")

    def _start_sentinel(self, port: int, primary_port: int) -> None:
        directory = self.directory / f"sentinel-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            "daemonize no",
            f'dir "{directory}"',
            f'logfile "{directory / "sentinel.log"}"',
            f"sentinel monitor {self.MASTER} 127.0.0.1 {primary_port} {self.quorum}",
            f"sentinel down-after-milliseconds {self.MASTER} {self.down_after_ms}",
            f"sentinel failover-timeout {self.MASTER} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.MASTER} 1",
            f"sentinel auth-pass {self.MASTER} {self.password}",
        ]
        if self.sentinel_password:
            lines.append(f"requirepass {self.sentinel_password}")
        config = directory / "sentinel.conf"
        config.write_text("\n".join(lines) + "\n")
        try:
            process = subprocess.Popen(
                [self.binary, str(config), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as error:
            pytest.fail(f"{REDIS_SERVER_MISSING} ({error})", pytrace=False)
        self._sentinels.append(process)

    def sentinel(self, port: int) -> redis.Redis:
        """A client of one sentinel."""
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            password=self.sentinel_password,
            socket_connect_timeout=1,
            socket_timeout=1,
        )

    def _sentinels_agree(self) -> bool:
        others, replicas = len(self.sentinel_ports) - 1, len(self.nodes) - 1
        for port in self.sentinel_ports:
            try:
                state = self.sentinel(port).sentinel_master(self.MASTER)
            except redis.RedisError:
                return False
            if state["num-other-sentinels"] < others or state["num-slaves"] < replicas:
                return False
        return True

    def _wait(self, condition, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"Redis Sentinel test deployment: timed out waiting for {what}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every sentinel and data node still running."""
        for process in self._sentinels:
            process.terminate()
        for process in self._sentinels:
            process.wait(timeout=10)
        self._sentinels = []
        for node in self.nodes:
            node.stop()

    # -- state and faults ---------------------------------------------------------
    def primary_port(self) -> int | None:
        """The port of the primary a majority-reachable sentinel names now, if any answers."""
        for port in self.sentinel_ports:
            try:
                address = self.sentinel(port).sentinel_get_master_addr_by_name(self.MASTER)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def node(self, port: int) -> RedisServer:
        """The data node listening on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def primary(self) -> RedisServer:
        """The data node the sentinels name as the primary now."""
        port = self.primary_port()
        assert port is not None, "no sentinel names a primary"
        return self.node(port)

    def cut_replication(self) -> None:
        """Stop every replica from replicating the primary: they miss every write from now on.

        The replicas' user is switched off on the primary and their links are
        closed; they keep trying to reconnect, and fail to authenticate.
        """
        primary = self.primary().client()
        primary.execute_command("ACL", "SETUSER", self.REPLICATION_USER, "off")
        primary.execute_command("CLIENT", "KILL", "TYPE", "replica")

    def wait_for_new_primary(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names a primary other than ``old_port``; return its port."""

        def moved() -> bool:
            ports = set()
            for port in self.sentinel_ports:
                try:
                    address = self.sentinel(port).sentinel_get_master_addr_by_name(self.MASTER)
                except redis.RedisError:
                    return False
                ports.add(int(address[1]) if address else None)
            return len(ports) == 1 and None not in ports and old_port not in ports

        self._wait(moved, "the sentinels to promote a replica", timeout)
        port = self.primary_port()
        assert port is not None
        return port


def _linked(replica: RedisServer) -> bool:
    try:
        info = replica.client().info("replication")
    except redis.RedisError:
        return False
    return info.get("master_link_status") == "up"
