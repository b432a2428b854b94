"""``python -m common.preflight``: what ``make run`` prints before starting anything."""

from __future__ import annotations

import socket
import subprocess
import sys


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def preflight(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "common.preflight"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_passes_silently_when_redis_and_rabbitmq_answer():
    result = preflight(REDIS_URL="redis://127.0.0.1:6379/0", RABBITMQ_HOST="127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


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
