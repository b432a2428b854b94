"""The Procfile's ``web`` line, started for real as a PaaS starts it: ``sh -c`` with PORT and APP.

One repository serves either app: ``APP=auth`` or ``APP=user`` picks it, and
gunicorn binds the ``PORT`` the platform hands out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.client import call
from tests.e2e.processes import MARKER, free_port, processes_with_marker, tail
from tests.support.servers import REDIS_URL, run_id, write_test_keys

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
# What a PaaS waits after SIGTERM before SIGKILL (Heroku: 30 s).
STOP_BUDGET = 30.0

# What each app must answer to prove it is the one running.
PROOF = {
    "auth": ("/.well-known/jwks.json", 200),
    "user": ("/api/v1/users/me", 401),
}


def web_environ(tmp_path: Path, marker: str) -> dict[str, str]:
    """A platform-like environment: SQLite files and keys under ``tmp_path``, no APP or PORT."""
    private, public = write_test_keys(tmp_path)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("APP", "PORT", "DATABASE_URL", "JWT_PRIVATE_KEY", "JWT_PUBLIC_KEY")
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        AUTH_DATABASE_URL=f"sqlite:///{tmp_path / 'auth.db'}",
        USER_DATABASE_URL=f"sqlite:///{tmp_path / 'user.db'}",
        REDIS_URL=REDIS_URL,
        AUTH_REDIS_KEY_PREFIX=f"test:web:{marker}:",
        RATELIMIT_KEY_PREFIX=f"test:web:{marker}:limiter",
        PRIVATE_KEY_PATH=str(private),
        PUBLIC_KEY_PATH=str(public),
        BCRYPT_ROUNDS="4",
        WEB_CONCURRENCY="1",
        LOG_FORMAT="text",
        **{MARKER: marker},
    )
    return env


def migrate(app: str, env: dict[str, str]) -> None:
    """Build the app's SQLite schema with its real migrations."""
    result = subprocess.run(
        [str(BIN / "alembic"), "-n", app, "upgrade", "head"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def stop(process: subprocess.Popen, marker: str) -> dict[int, str]:
    """SIGTERM the whole process group (the platform's stop); return what is still running.

    A platform gives the group STOP_BUDGET seconds before it kills what is
    left; gunicorn's graceful_timeout (10 s) fits in it with room to spare.
    ``sh`` dies at once on the signal: what counts is gunicorn, found by its marker.
    """
    deadline = time.monotonic() + STOP_BUDGET
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    while (left := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)
    return left


def start_line(command: str, env: dict, log_path: Path) -> subprocess.Popen:
    """Start one Procfile line in a process group of its own, its output to ``log_path``."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            ["sh", "-c", command],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_health(process: subprocess.Popen, base: str):
    """The first answer of ``base``/health, or None if the process ends or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        try:
            return call("GET", f"{base}/health", timeout=2)
        except OSError:
            time.sleep(0.1)
    return None


@pytest.mark.parametrize("app", ["auth", "user"])
def test_the_web_line_serves_the_app_named_by_APP_on_PORT(tmp_path, procfile, app):  # noqa: N802
    marker = run_id()
    env = web_environ(tmp_path, marker)
    migrate(app, env)
    port = free_port()
    env.update(APP=app, PORT=str(port))
    log_path = tmp_path / "web.log"
    process = start_line(procfile["web"], env, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_for_health(process, base)
        assert health is not None and health.status == 200, tail(log_path)
        assert health.json == {"status": "ok"}
        # gunicorn.conf.py hides the server's name (gunicorn.http.wsgi.SERVER).
        assert health.headers["server"] == "authsvc"

        path, status = PROOF[app]
        assert call("GET", base + path).status == status
        other = PROOF["user" if app == "auth" else "auth"][0]
        assert call("GET", base + other).status == 404
    finally:
        left = stop(process, marker)
    assert left == {}, f"still running after SIGTERM: {left}"


def test_the_web_line_without_APP_stops_with_a_clear_message(tmp_path, procfile):  # noqa: N802
    env = web_environ(tmp_path, run_id())
    env["PORT"] = str(free_port())
    result = subprocess.run(
        ["sh", "-c", procfile["web"]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "set APP=auth or APP=user" in result.stderr
    assert "Traceback" not in result.stderr
