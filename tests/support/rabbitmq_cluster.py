"""A RabbitMQ cluster of a test's own: three nodes of the installed rabbitmq-server on loopback.

Each node has its own node name (``rabbit-t1@localhost``, ...), AMQP and
distribution ports, data and log directories under the test's temporary
directory, and no plugins. They share an Erlang cookie through a ``HOME`` of
their own, which the CLI tools run with too, so the machine's own node (and its
cookie) is never touched. Nodes 2 and 3 join node 1 with ``rabbitmqctl
join_cluster``. Whatever is missing (the server's scripts, a node that does not
start) fails the test with what it is; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import free_port

#: Where the server's own scripts are (Debian's /usr/sbin ones switch to the
#: rabbitmq user and its cookie, which is the machine node's).
RABBITMQ_SBIN = Path(os.environ.get("TEST_RABBITMQ_SBIN", "/usr/lib/rabbitmq/bin"))
START_TIMEOUT = 90.0
USER = "guest"


def _missing(what: str) -> None:
    pytest.fail(f"cannot start a test RabbitMQ cluster: {what}", pytrace=False)


class Node:
    """One node of the cluster: its name, ports and directories, and its server process."""

    def __init__(self, cluster: RabbitCluster, index: int) -> None:
        self.cluster = cluster
        self.name = f"rabbit-t{index}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.directory = cluster.directory / f"node{index}"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The AMQP URL of this node, default vhost."""
        return f"amqp://{USER}:{USER}@127.0.0.1:{self.port}/%2F"

    def environ(self) -> dict[str, str]:
        """The server's environment: everything under the test's directory."""
        config = self.directory / "rabbitmq.conf"
        if not config.exists():
            self.directory.mkdir(parents=True)
            config.write_text(
                f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                "log.console = false\n"
                "log.file.level = warning\n"
            )
        return {
            **self.cluster.cli_environ(),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.directory / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.cluster.directory / "enabled_plugins"),
            "ERL_CRASH_DUMP": str(self.directory / "erl_crash.dump"),
            # Three Erlang VMs on a small machine: no busy-waiting schedulers;
            # distribution on loopback only.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "+sbwt none +sbwtdcpu none +sbwtdio none "
                "-kernel inet_dist_use_interface {127,0,0,1}"
            ),
        }

    def start(self) -> None:
        """Start the server process (its own process group); ``wait_ready`` waits for it."""
        log = (self.directory.parent / f"{self.name}.out").open("ab")
        try:
            self.process = subprocess.Popen(
                [str(RABBITMQ_SBIN / "rabbitmq-server")],
                env=self.environ(),
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def accepts_amqp(self) -> bool:
        """Whether its AMQP port takes a connection now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the node has booted and takes AMQP connections."""
        deadline = time.monotonic() + timeout
        while not self.accepts_amqp():
            if self.process is None or self.process.poll() is not None:
                _missing(f"node {self.name} exited at start; see {self.directory.parent}")
            if time.monotonic() > deadline:
                _missing(f"node {self.name} did not start within {timeout:.0f}s")
            time.sleep(0.2)
        self.cluster.ctl(self, "await_startup")

    def kill(self) -> None:
        """Stop the node at once (SIGKILL to its whole process group), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    @property
    def running(self) -> bool:
        """Whether its server process is alive."""
        return self.process is not None and self.process.poll() is None


class RabbitCluster:
    """Three (or ``size``) RabbitMQ nodes clustered on loopback, under ``directory``."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        for script in ("rabbitmq-server", "rabbitmqctl", "rabbitmq-queues"):
            if not (RABBITMQ_SBIN / script).exists():
                _missing(
                    f"{RABBITMQ_SBIN / script} not found (install rabbitmq-server, or set "
                    "TEST_RABBITMQ_SBIN to the directory of its own scripts)"
                )
        self.directory = directory
        home = directory / "home"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        self.nodes = [Node(self, index) for index in range(1, size + 1)]

    def cli_environ(self) -> dict[str, str]:
        """The environment of the nodes and the CLI tools: the shared cookie, no machine files."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory / "home"),
            "LANG": "C.UTF-8",
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
        }

    def ctl(self, node: Node, *args: str, tool: str = "rabbitmqctl", timeout: float = 60) -> str:
        """Run a CLI tool against ``node``; its output, or a failure naming the command."""
        command = [str(RABBITMQ_SBIN / tool), "-q", "-n", node.name, *args]
        result = subprocess.run(
            command,
            env=self.cli_environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[2:])}: {result.stderr.strip()[:2000]}")
        return result.stdout

    # -- the cluster ---------------------------------------------------------
    def start(self) -> None:
        """Start every node, then join nodes 2.. to node 1."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        running = self.running_nodes(first)
        if sorted(running) != sorted(node.name for node in self.nodes):
            _missing(f"the nodes did not form one cluster: running {running}")

    def running_nodes(self, via: Node) -> list[str]:
        """The cluster's running nodes, as ``via`` sees them."""
        status: dict[str, Any] = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return list(status["running_nodes"])

    def url(self, first: Node | None = None) -> str:
        """Every node's URL, comma-separated, ``first`` (if given) leading."""
        order = sorted(self.nodes, key=lambda node: node is not first)
        return ",".join(node.url for node in order)

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        return next(node for node in self.nodes if node.name == name)

    def any_running(self) -> Node:
        """A node whose process runs, to ask the cluster through."""
        return next(node for node in self.nodes if node.running)

    def queues(self) -> dict[str, dict[str, Any]]:
        """Each queue of the default vhost: its ``leader``, ``members`` and ``online`` nodes."""
        rows = json.loads(
            self.ctl(
                self.any_running(),
                "list_queues",
                "name",
                "leader",
                "members",
                "online",
                "messages",
                "--formatter",
                "json",
            )
        )
        return {row["name"]: row for row in rows}

    def connections(self) -> dict[str, list[str]]:
        """The names clients gave their connections (``connection_name``), by node."""
        rows = json.loads(
            self.ctl(
                self.any_running(),
                "list_connections",
                "port",
                "client_properties",
                "--formatter",
                "json",
            )
        )
        by_port = {node.port: node.name for node in self.nodes}
        held: dict[str, list[str]] = {}
        for row in rows:
            names = [
                value for key, _kind, value in row["client_properties"] if key == "connection_name"
            ]
            held.setdefault(by_port[row["port"]], []).extend(names)
        return {node: sorted(names) for node, names in held.items()}

    def leader(self, queue: str) -> Node:
        """The node that leads quorum queue ``queue`` now."""
        return self.node(self.queues()[queue]["leader"])

    def wait_for(self, predicate: Any, what: str, timeout: float = 60.0) -> None:
        """Poll ``predicate()`` until true; fail naming ``what`` if it never is."""
        deadline = time.monotonic() + timeout
        while True:
            # A node being killed or elected may answer a listing without a queue
            # for a moment: that is "not yet", like a command that fails.
            with contextlib.suppress(RuntimeError, KeyError):
                if predicate():
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"RabbitMQ cluster: {what} within {timeout:.0f}s", pytrace=False)
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop every node that still runs and remove its data (its logs stay)."""
        for node in self.nodes:
            node.kill()
            shutil.rmtree(node.directory / "mnesia", ignore_errors=True)


@contextmanager
def rabbit_cluster(directory: Path, size: int = 3) -> Iterator[RabbitCluster]:
    """A started cluster of ``size`` nodes; every node is stopped afterwards."""
    cluster = RabbitCluster(directory, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
