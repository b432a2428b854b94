"""``python -m common.preflight``: what ``make run`` prints, or starts, before starting anything.

No Docker engine runs where these tests run: the path without one is tested
for real, and the path with one through a stand-in ``docker`` executable on
PATH that records how it was called and starts the real server the compose
service would be.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import RedisSentinelGroup


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def preflight(path: str = "/usr/bin:/bin", **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "common.preflight"],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_passes_silently_when_redis_and_rabbitmq_answer():
    result = preflight(REDIS_URL="redis://127.0.0.1:6379/0", RABBITMQ_HOST="127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_broker_url_listing_a_clusters_nodes_passes_when_one_of_them_answers():
    down = f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F"
    up = "amqp://guest:guest@127.0.0.1:5672/%2F"
    result = preflight(REDIS_URL="redis://127.0.0.1:6379/0", RABBITMQ_URL=f"{down},{up}")
    assert result.returncode == 0, result.stderr
    port = closed_port()
    result = preflight(
        REDIS_URL="redis://127.0.0.1:6379/0",
        RABBITMQ_URL=f"amqp://g:g@127.0.0.1:{port}/%2F,amqp://g:g@127.0.0.1:{closed_port()}/%2F",
    )
    assert result.returncode == 1
    assert f"RabbitMQ is not reachable at 127.0.0.1:{port}" in result.stderr


def test_names_the_unreachable_server_where_it_looked_and_how_to_start_it():
    port = closed_port()
    result = preflight(REDIS_URL=f"redis://127.0.0.1:{port}/0", RABBITMQ_HOST="127.0.0.1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"Redis is not reachable at 127.0.0.1:{port}" in lines[0]
    assert "docker compose up -d redis" in lines[0]
    assert "REDIS_URL" in lines[0]


def test_a_bad_variable_stops_it_with_one_line_naming_the_variable():
    result = preflight(RABBITMQ_PORT="many")
    assert result.returncode != 0
    assert (
        result.stderr.strip() == "configuration error: RABBITMQ_PORT must be an integer, got 'many'"
    )


def test_without_a_docker_engine_it_says_how_to_start_the_server_and_starts_nothing():
    # This machine's own PATH: a docker CLI may be there, but no engine answers.
    docker = shutil.which("docker")
    if docker is not None:
        engine = subprocess.run([docker, "info"], capture_output=True, timeout=30)
        assert engine.returncode != 0, "a Docker engine answers here: this test would start Redis"
    port = closed_port()
    result = preflight(
        os.environ["PATH"], REDIS_URL=f"redis://127.0.0.1:{port}/0", RABBITMQ_HOST="127.0.0.1"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Redis is not reachable at 127.0.0.1:{port}: start it with `docker compose up -d redis`"
        " (or `redis-server`), or set REDIS_URL"
    ]


FAKE_DOCKER = """#!/bin/sh
# A stand-in for the docker CLI: records each call, answers as Docker with an
# engine would, and for `compose up -d redis` starts a real redis-server on
# the port the compose file would publish (AUTH_REDIS_PORT).
echo "$* AUTH_REDIS_PORT=$AUTH_REDIS_PORT RABBITMQ_PORT=$RABBITMQ_PORT" >> "$DOCKER_CALLS"
case "$*" in
  "compose version") echo "Docker Compose version v2.29.7"; exit 0 ;;
  "info") echo "Server Version: 27.3.1"; exit 0 ;;
  "compose up -d redis")
    [ -n "$COMPOSE_UP_FAILS" ] && exit 1
    exec redis-server --port "$AUTH_REDIS_PORT" --bind 127.0.0.1 --save "" \\
      --appendonly no --daemonize yes --pidfile "$REDIS_PIDFILE" >/dev/null ;;
esac
[ -n "$COMPOSE_UP_FAILS" ] && exit 1
exit 2
"""


@pytest.fixture
def fake_docker(tmp_path) -> dict[str, str]:
    """A PATH with the stand-in ``docker`` first, and where it records and leaves its pidfile."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    pidfile = tmp_path / "redis.pid"
    yield {
        "path": f"{bin_dir}:/usr/bin:/bin",
        "DOCKER_CALLS": str(tmp_path / "calls"),
        "REDIS_PIDFILE": str(pidfile),
    }
    if pidfile.exists():
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


def calls(fake: dict[str, str]) -> list[str]:
    path = Path(fake["DOCKER_CALLS"])
    return path.read_text().splitlines() if path.exists() else []


def test_with_docker_it_starts_the_server_with_compose_and_waits_for_it(fake_docker):
    port = closed_port()
    result = preflight(
        fake_docker["path"],
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        RABBITMQ_HOST="127.0.0.1",
        DOCKER_CALLS=fake_docker["DOCKER_CALLS"],
        REDIS_PIDFILE=fake_docker["REDIS_PIDFILE"],
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Redis is not reachable at 127.0.0.1:{port}: starting it with "
        "`docker compose up -d redis`",
        f"Redis is up at 127.0.0.1:{port}",
    ]
    # Compose publishes it at the port the settings look at.
    assert calls(fake_docker) == [
        "compose version AUTH_REDIS_PORT= RABBITMQ_PORT=",
        "info AUTH_REDIS_PORT= RABBITMQ_PORT=",
        f"compose up -d redis AUTH_REDIS_PORT={port} RABBITMQ_PORT=",
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_both_servers_down_are_started_by_one_compose_command(fake_docker):
    redis_port, rabbitmq_port = closed_port(), closed_port()
    result = preflight(
        fake_docker["path"],
        REDIS_URL=f"redis://localhost:{redis_port}/0",
        RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{rabbitmq_port}/%2F",
        DOCKER_CALLS=fake_docker["DOCKER_CALLS"],
        COMPOSE_UP_FAILS="1",
    )
    assert result.returncode == 1
    assert calls(fake_docker)[-1] == (
        f"compose up -d redis rabbitmq AUTH_REDIS_PORT={redis_port} RABBITMQ_PORT={rabbitmq_port}"
    )
    lines = result.stderr.strip().splitlines()
    assert lines[:2] == [
        f"Redis is not reachable at localhost:{redis_port}: starting it with "
        "`docker compose up -d redis`",
        f"RabbitMQ is not reachable at 127.0.0.1:{rabbitmq_port}: starting it with "
        "`docker compose up -d rabbitmq`",
    ]
    assert lines[-1] == "`docker compose up -d redis rabbitmq` failed (exit 1)"


def test_a_server_on_another_host_is_not_started_here(fake_docker):
    result = preflight(
        fake_docker["path"],
        REDIS_URL="redis://redis.invalid:6379/0",
        RABBITMQ_HOST="127.0.0.1",
        DOCKER_CALLS=fake_docker["DOCKER_CALLS"],
    )
    assert result.returncode == 1
    assert calls(fake_docker) == []
    assert result.stderr.strip().splitlines() == [
        "Redis is not reachable at redis.invalid:6379: start it with "
        "`docker compose up -d redis` (or `redis-server`), or set REDIS_URL"
    ]


# -- Redis behind Sentinel: the primary the sentinels name is the Redis to check ------


@pytest.fixture
def sentinels(tmp_path):
    """One primary and one sentinel; the primary is marked down only after a minute."""
    group = RedisSentinelGroup(tmp_path, replicas=0, sentinels=1, quorum=1, down_after_ms=60_000)
    group.start()
    yield group
    group.stop()


def test_passes_silently_when_the_sentinels_name_a_primary_that_answers(sentinels):
    result = preflight(**sentinels.environment(), RABBITMQ_HOST="127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_names_the_primary_the_sentinels_name_when_it_does_not_answer(sentinels, fake_docker):
    port = sentinels.primary().port
    sentinels.primary().kill()
    result = preflight(
        fake_docker["path"],
        **sentinels.environment(),
        RABBITMQ_HOST="127.0.0.1",
        DOCKER_CALLS=fake_docker["DOCKER_CALLS"],
    )
    assert result.returncode == 1
    # Nothing is started: the sentinels, not compose, decide where Redis is.
    assert calls(fake_docker) == []
    assert result.stderr.strip().splitlines() == [
        f"Redis is not reachable at 127.0.0.1:{port} (the primary REDIS_SENTINELS name for "
        "'authsvc'): start that server, or let the sentinels fail over to a replica"
    ]


def test_says_so_when_no_sentinel_answers(fake_docker):
    first, second = closed_port(), closed_port()
    result = preflight(
        fake_docker["path"],
        REDIS_SENTINELS=f"127.0.0.1:{first},127.0.0.1:{second}",
        REDIS_SENTINEL_MASTER="authsvc",
        RABBITMQ_HOST="127.0.0.1",
        DOCKER_CALLS=fake_docker["DOCKER_CALLS"],
    )
    assert result.returncode == 1
    assert calls(fake_docker) == []
    assert result.stderr.strip().splitlines() == [
        f"Redis is not reachable: no sentinel of REDIS_SENTINELS (127.0.0.1:{first},"
        f"127.0.0.1:{second}) names a primary for REDIS_SENTINEL_MASTER 'authsvc' "
        "(MasterNotFoundError): check that the sentinels run and monitor it"
    ]


def test_a_bad_sentinel_variable_stops_it_with_one_line():
    result = preflight(REDIS_SENTINELS="sentinel-1:26379", RABBITMQ_HOST="127.0.0.1")
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "configuration error: REDIS_SENTINEL_MASTER must name the primary the sentinels "
        "monitor (REDIS_SENTINELS is set)"
    )
