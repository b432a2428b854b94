"""The whole system as its users run it: the Procfile's processes under honcho.

One system per test module: fresh PostgreSQL databases for both services, a fresh
RabbitMQ vhost, a Redis key prefix of its own and a key pair made by the real
CLI. The Procfile's ``release`` line migrates, then ``honcho start`` runs both
web apps under gunicorn and every relay and worker on free local ports. The
tests speak HTTP to it; at the end honcho gets the Ctrl-C a developer would
send and no process it started may be left running.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, parse_procfile
from tests.e2e.client import call
from tests.e2e.processes import MARKER, alive, free_port, processes_with_marker, tail
from tests.support.servers import (
    REDIS_URL,
    check_redis,
    fresh_postgres_database,
    fresh_vhost,
    run_id,
)
from tests.support.smtp import SmtpServer

# The virtual environment's bin directory: the Procfile names bare commands
# (gunicorn, python, alembic) that must resolve to it, as under `make run`.
BIN = Path(sys.executable).parent
PROCESSES = (
    "auth",
    "user",
    "auth_relay",
    "user_relay",
    "auth_worker",
    "user_worker",
    "mailer",
    "auth_janitor",
    "user_janitor",
)
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# Variables of the contract that must not leak in from the caller's shell and
# point a process somewhere other than this run's fresh servers.
INHERITED_OUT = (
    "APP",
    "PORT",
    "DATABASE_URL",
    "AUTH_DATABASE_URL",
    "USER_DATABASE_URL",
    "CLOUDAMQP_URL",
    "JWT_PRIVATE_KEY",
    "JWT_PUBLIC_KEY",
    "AUTH_JWKS_URL",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "SMTP_URL",
    "FRONTEND_URL",
    "EMAIL_VERIFICATION",
)

# How long a rotated refresh token still answers in the story's system.
REUSE_GRACE_SECONDS = 1
# Where the links in the system's mails point.
FRONTEND_URL = "https://app.example"
# The resource server allowed to introspect tokens (its secret is made per run).
INTROSPECTION_CLIENT = "e2e-resource-server"


@dataclass
class RunningSystem:
    """The started system: its URLs, environment, log, and how to stop it."""

    auth: str
    user: str
    env: dict[str, str]
    log_path: Path
    marker: str
    honcho: subprocess.Popen | None = None
    log_file: object = None
    leftovers: dict[int, str] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``flask --app auth_app ARGS`` as an operator would, in the services' environment."""
        return subprocess.run(
            [str(BIN / "flask"), "--app", "auth_app", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def started_pids(self) -> list[int]:
        """The pids honcho reported starting (``name.1 started (pid=N)``)."""
        return [
            int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", tail(self.log_path, 10**6))
        ]

    def stop(self) -> dict[int, str]:
        """Ctrl-C honcho, wait for it, and return every process of this run still running."""
        if self.honcho is not None and self.honcho.poll() is None:
            self.honcho.send_signal(signal.SIGINT)
            try:
                self.honcho.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while True:
            left = processes_with_marker(self.marker)
            left.update({pid: "(started by honcho)" for pid in self.started_pids() if alive(pid)})
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.leftovers = left
        return left

    def kill_leftovers(self) -> None:
        """SIGKILL what a failed stop left behind, so one bad run cannot break the next."""
        if self.honcho is not None and self.honcho.poll() is None:
            os.killpg(self.honcho.pid, signal.SIGKILL)
        for pid in list(self.leftovers) + list(processes_with_marker(self.marker)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def wait_ready(system: RunningSystem) -> None:
    """Wait for both services' ``/health/ready`` to answer 200; fail with the log tail if not."""
    deadline = time.monotonic() + READY_TIMEOUT
    pending = {"auth": system.auth, "user": system.user}
    while pending:
        if system.honcho.poll() is not None:
            pytest.fail(
                f"honcho exited with {system.honcho.returncode} before the services were ready:\n"
                f"{tail(system.log_path)}",
                pytrace=False,
            )
        for name, base in list(pending.items()):
            try:
                if call("GET", f"{base}/health/ready", timeout=2).status == 200:
                    del pending[name]
            except OSError:
                pass  # not listening yet
        if pending and time.monotonic() > deadline:
            pytest.fail(
                f"{', '.join(pending)} not ready within {READY_TIMEOUT:.0f}s; log tail:\n"
                f"{tail(system.log_path)}",
                pytrace=False,
            )
        time.sleep(0.2)


def run_release(procfile: dict[str, str], env: dict[str, str]) -> None:
    """Run the Procfile's ``release`` line, as a platform does before a deploy."""
    result = subprocess.run(
        ["sh", "-c", procfile["release"]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"release failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def e2e_durations() -> dict[str, float]:
    """Wall-clock seconds of the suite's phases, printed at the end of the session."""
    durations: dict[str, float] = {}
    yield durations
    print("\ne2e durations: " + ", ".join(f"{k} {v:.1f}s" for k, v in durations.items()))


@pytest.fixture(scope="module")
def system_env() -> dict[str, str]:
    """Settings a test module adds to the system's environment (override it in the module)."""
    return {}


@pytest.fixture(scope="module")
def smtp_server():
    """The SMTP server the system's mailer sends to: a real one, recording what it gets."""
    with SmtpServer() as server:
        yield server


@pytest.fixture(scope="module")
def system(tmp_path_factory, e2e_durations, system_env, smtp_server):
    """Start the whole system from the Procfile on fresh servers; yield it; stop it."""
    started = time.monotonic()
    check_redis()
    tmp = tmp_path_factory.mktemp("e2e")
    marker = run_id()
    prefix = f"test:e2e:{marker}:"
    auth_bind = f"127.0.0.1:{free_port()}"
    user_bind = f"127.0.0.1:{free_port()}"
    (tmp / "keys").mkdir()
    with (
        fresh_postgres_database("e2e_auth") as auth_db,
        fresh_postgres_database("e2e_user") as user_db,
        fresh_vhost("e2e") as amqp_url,
    ):
        env = {k: v for k, v in os.environ.items() if k not in INHERITED_OUT}
        env.update(
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            AUTH_DATABASE_URL=auth_db,
            USER_DATABASE_URL=user_db,
            RABBITMQ_URL=amqp_url,
            REDIS_URL=REDIS_URL,
            AUTH_REDIS_KEY_PREFIX=prefix,
            RATELIMIT_KEY_PREFIX=prefix + "limiter",
            # The story logs in a few dozen times from one address; the limiter
            # stays on (in Redis) with room for that.
            RATELIMIT_AUTH="600/minute",
            PRIVATE_KEY_PATH=str(tmp / "keys" / "private.pem"),
            PUBLIC_KEY_PATH=str(tmp / "keys" / "public.pem"),
            BCRYPT_ROUNDS="4",
            # Production-like: a pepper of its own (the development one is refused).
            APP_ENV="production",
            PASSWORD_PEPPER=f"e2e-pepper-{uuid.uuid4().hex}",
            INTROSPECTION_CLIENTS=f"{INTROSPECTION_CLIENT}:{uuid.uuid4().hex}",
            # A short grace, so the story can replay a refresh token past it.
            REFRESH_REUSE_GRACE_SECONDS=str(REUSE_GRACE_SECONDS),
            SMTP_URL=smtp_server.url(),
            FRONTEND_URL=FRONTEND_URL,
            LOG_FORMAT="json",
            LOG_LEVEL="info",
            WEB_CONCURRENCY="2",
            AUTH_BIND=auth_bind,
            USER_BIND=user_bind,
            PYTHONUNBUFFERED="1",
            **{MARKER: marker},
        )
        env.update(system_env)
        system = RunningSystem(
            auth=f"http://{auth_bind}",
            user=f"http://{user_bind}",
            env=env,
            log_path=tmp / "honcho.log",
            marker=marker,
        )
        generated = system.cli("keys", "generate")
        assert generated.returncode == 0, generated.stderr
        run_release(parse_procfile((ROOT / "Procfile").read_text()), env)
        system.log_file = open(system.log_path, "w")  # noqa: SIM115 - closed in the finally below
        # A developer's .env must not point this run at other servers.
        command = [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), "-e", os.devnull]
        command.extend(PROCESSES)
        system.log_file.write(f"$ {shlex.join(command)}\n")
        system.log_file.flush()
        system.honcho = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=system.log_file,
            stderr=subprocess.STDOUT,
            # Its own process group, so the cleanup below can reach it whole.
            start_new_session=True,
        )
        try:
            wait_ready(system)
            e2e_durations["start"] = time.monotonic() - started
            yield system
        finally:
            stopping = time.monotonic()
            left = system.stop()
            e2e_durations.setdefault("stop", time.monotonic() - stopping)
            if left:
                system.kill_leftovers()
            system.log_file.close()
            e2e_durations["total"] = time.monotonic() - started
        assert not left, f"processes left running after Ctrl-C: {left}\n{tail(system.log_path)}"


@pytest.fixture(scope="module")
def process_log(system) -> Path:
    """The file holding every process's stdout and stderr (honcho's combined output)."""
    return system.log_path
